//! Recycled large `f32` buffers for the data plane.
//!
//! Every training iteration of a large model moves buffers of the same few
//! sizes through an executor: the gathered weights, the gradient, the
//! published weights of its shards (blocks fetched from peers stay in the
//! pieces quinn received, see `shuffle::Block`). Fresh
//! allocations of that size come from `mmap` and are returned with
//! `munmap`, so each iteration page-faulted and zeroed them all over again
//! (~38 % of an executor's time in a profile of the sync benchmark). The pool
//! keeps buffers of at least [`MIN_POOLED_BYTES`] that were given back, up
//! to a bound on idle bytes, and hands them out again for requests of a
//! similar size. Smaller requests are ordinary allocations.

use std::sync::Mutex;

/// Buffers smaller than this are not pooled (the allocator reuses them
/// cheaply on its own).
pub(crate) const MIN_POOLED_BYTES: usize = 1 << 20;

/// Idle bytes the process-wide pool keeps at most; buffers given back
/// beyond it are freed (largest first).
const MAX_IDLE_BYTES: usize = 1 << 30;

/// A pool of idle `f32` buffers.
pub(crate) struct BufferPool {
    idle: Mutex<Vec<Vec<f32>>>,
    max_idle_bytes: usize,
}

static POOL: BufferPool = BufferPool::new(MAX_IDLE_BYTES);

/// The process-wide pool.
pub(crate) fn pool() -> &'static BufferPool {
    &POOL
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

impl BufferPool {
    /// An empty pool keeping at most `max_idle_bytes` of idle buffers.
    pub(crate) const fn new(max_idle_bytes: usize) -> Self {
        BufferPool {
            idle: Mutex::new(Vec::new()),
            max_idle_bytes,
        }
    }

    /// A buffer of `len` values whose contents are unspecified (left over
    /// from an earlier use, or zero): for callers that overwrite it all.
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        if len.saturating_mul(std::mem::size_of::<f32>()) < MIN_POOLED_BYTES {
            return vec![0.0; len];
        }
        let reused = self.idle.lock().ok().and_then(|mut idle| {
            // The smallest idle buffer that holds `len`, if it is at most a
            // quarter larger (a big one is kept for a big request).
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len && v.capacity() - len <= len / 4)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)?;
            Some(idle.swap_remove(best))
        });
        match reused {
            Some(mut v) => {
                // Keeps what is there; zero-fills only a grown tail.
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    /// A buffer of `len` zeros.
    pub(crate) fn take_zeroed(&self, len: usize) -> Vec<f32> {
        let mut v = self.take(len);
        v.fill(0.0);
        v
    }

    /// Give a buffer back for reuse (small ones are simply freed).
    pub(crate) fn give(&self, v: Vec<f32>) {
        if bytes_of(&v) < MIN_POOLED_BYTES {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.push(v);
        let mut total: usize = idle.iter().map(bytes_of).sum();
        while total > self.max_idle_bytes {
            let Some(largest) = idle
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
            else {
                break;
            };
            total -= bytes_of(&idle.swap_remove(largest));
        }
    }

    /// Free every idle buffer (a run ended).
    pub(crate) fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Bytes held idle.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.iter().map(bytes_of).sum())
            .unwrap_or(0)
    }
}

/// A buffer of the process-wide pool that goes back to it when dropped
/// (also when an error abandons it half-filled).
pub(crate) struct Pooled(Vec<f32>);

impl Pooled {
    /// Wrap `v` (taken from [`pool`], or any buffer worth keeping).
    pub(crate) fn new(v: Vec<f32>) -> Self {
        Pooled(v)
    }

    /// A pooled buffer of at least `len` bytes (contents unspecified).
    pub(crate) fn with_bytes(len: usize) -> Self {
        Pooled(pool().take(len.div_ceil(std::mem::size_of::<f32>())))
    }

    /// The values.
    pub(crate) fn values(&self) -> &[f32] {
        &self.0
    }

    /// The values, to write into.
    pub(crate) fn values_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }

    /// The values as bytes, to write into.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.0)
    }

    /// Share the first `len` bytes (at most the whole buffer) without a
    /// copy; the buffer returns to the pool when the last view drops.
    pub(crate) fn into_bytes(self, len: usize) -> bytes::Bytes {
        let len = len.min(self.0.len() * std::mem::size_of::<f32>());
        bytes::Bytes::from_owner(PooledBytes { buf: self, len })
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        pool().give(std::mem::take(&mut self.0));
    }
}

/// The first `len` bytes of a pooled buffer (the owner behind
/// [`Pooled::into_bytes`]).
struct PooledBytes {
    buf: Pooled,
    len: usize,
}

impl AsRef<[u8]> for PooledBytes {
    fn as_ref(&self) -> &[u8] {
        let bytes: &[u8] = bytemuck::cast_slice(self.buf.values());
        &bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = MIN_POOLED_BYTES / 4;

    #[test]
    fn large_buffers_are_reused_small_ones_are_not() {
        let pool = BufferPool::new(64 << 20);
        let a = pool.take(BIG * 2);
        let at = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.idle_bytes(), BIG * 2 * 4);
        // A request of a similar size gets the same memory back.
        let b = pool.take(BIG * 2 - 10);
        assert_eq!((b.as_ptr(), b.len()), (at, BIG * 2 - 10));
        pool.give(b);
        // Too small for it: a buffer over a quarter larger is kept.
        let c = pool.take(BIG + BIG / 2);
        assert_ne!(c.as_ptr(), at);
        pool.give(c);
        assert_eq!(pool.idle_bytes(), (BIG * 2 + BIG + BIG / 2) * 4);
        // Buffers under the threshold are not kept.
        pool.give(vec![0.0; BIG - 1]);
        assert_eq!(pool.idle_bytes(), (BIG * 2 + BIG + BIG / 2) * 4);
        pool.clear();
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn reused_buffers_are_zeroed_on_request_and_grown_tails_are_zero() {
        let pool = BufferPool::new(64 << 20);
        let mut a = pool.take(BIG * 2);
        a.fill(7.0);
        a.truncate(BIG);
        pool.give(a);
        let b = pool.take(BIG * 2);
        assert!(b[BIG..].iter().all(|&x| x == 0.0));
        assert_eq!(b[0], 7.0);
        pool.give(b);
        let c = pool.take_zeroed(BIG * 2);
        assert!(c.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn idle_bytes_stay_under_the_bound() {
        let pool = BufferPool::new(3 * MIN_POOLED_BYTES);
        for len in [BIG, BIG * 2, BIG] {
            pool.give(vec![1.0; len]);
        }
        // 1 + 2 + 1 MiB is over 3 MiB: the largest went.
        assert_eq!(pool.idle_bytes(), 2 * MIN_POOLED_BYTES);
    }

    #[test]
    fn pooled_bytes_show_what_was_written() {
        let mut p = Pooled::with_bytes(5);
        p.bytes_mut()[..5].copy_from_slice(&[1, 2, 3, 4, 5]);
        let b = p.into_bytes(5);
        assert_eq!(&b[..], &[1, 2, 3, 4, 5]);
        assert_eq!(b.slice(1..3), &[2u8, 3][..]);
        // A length past the buffer is cut to it.
        assert_eq!(Pooled::with_bytes(3).into_bytes(100).len(), 4);
    }
}
