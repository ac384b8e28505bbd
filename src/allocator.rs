//! Allocator settings for Kiln's processes: a call into glibc's `mallopt`
//! (FFI, hence the module-level `unsafe_code` allowance).
#![allow(unsafe_code)]

/// Largest block glibc may serve from its heap instead of a fresh `mmap`
/// (glibc's ceiling for this setting on 64-bit targets, 32 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory glibc keeps at the top of its heap before giving it back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// Keeps the activations and gradients of one training step in the process
/// for the next one instead of returning them to the kernel.
///
/// By default glibc serves blocks of 128 KiB and up with fresh `mmap`s
/// (raising that threshold only as such blocks are freed) and trims its
/// heap top at 128 KiB, so every step of a small model page-faulted and
/// zeroed its layer outputs again: ~10 % of a LeNet-5 step (batch 64), as
/// jemalloc or tcmalloc avoid for PyTorch. Returns whether the settings
/// were applied: not on other C libraries, and not when `GLIBC_TUNABLES`
/// is set (the user's own allocator settings win).
pub fn keep_freed_buffers() -> bool {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: `mallopt` only changes two of glibc's allocator parameters
    // (under the allocator's own lock, so concurrent allocations are fine);
    // the parameter numbers are glibc's and out-of-range values are refused
    // with a 0, not undefined behaviour.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings_unless_the_user_set_tunables() {
        // mallopt refuses an out-of-range threshold, so a `true` here means
        // both values were accepted.
        assert_eq!(
            keep_freed_buffers(),
            std::env::var_os("GLIBC_TUNABLES").is_none()
        );
    }
}
