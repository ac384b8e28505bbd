//! Elementwise `f32` loops compiled twice, for the baseline x86-64 target
//! (SSE2: 4 lanes) and with AVX2 enabled (8 lanes), the second picked at
//! run time when the CPU has it. Both copies are the same scalar Rust with
//! separate multiplies and adds (Rust never contracts them into FMAs), so
//! they give the same bits; only the vector width differs.
#![allow(unsafe_code)]

use crate::tensor::Float;

/// Calls `$avx2` when the CPU has AVX2, else `$portable`, with the same
/// arguments.
macro_rules! dispatch {
    ($portable:ident, $avx2:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is the only target feature `$avx2` enables,
                // and the CPU has it (checked just above).
                return unsafe { $avx2($($arg),*) };
            }
        }
        $portable($($arg),*)
    }};
}

#[inline(always)]
fn tanh_portable(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x.fast_tanh();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tanh_avx2(src: &[f32], dst: &mut [f32]) {
    tanh_portable(src, dst)
}

/// `dst[i] = src[i].fast_tanh()` over the shorter of the two slices.
pub(crate) fn tanh(src: &[f32], dst: &mut [f32]) {
    dispatch!(tanh_portable, tanh_avx2, src, dst)
}

#[inline(always)]
fn tanh_grad_portable(y: &[f32], g: &[f32], dst: &mut [f32]) {
    for ((d, &y), &g) in dst.iter_mut().zip(y).zip(g) {
        *d = g * (1.0 - y * y);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn tanh_grad_avx2(y: &[f32], g: &[f32], dst: &mut [f32]) {
    tanh_grad_portable(y, g, dst)
}

/// `dst[i] = g[i] * (1 - y[i]^2)` (tanh's backward pass from its output)
/// over the shortest of the three slices.
pub(crate) fn tanh_grad(y: &[f32], g: &[f32], dst: &mut [f32]) {
    dispatch!(tanh_grad_portable, tanh_grad_avx2, y, g, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> Vec<f32> {
        // Every sign, tiny and huge magnitudes, the clamp edge, NaN and infinities.
        let mut v: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.618_034).sin() * 10f32.powi((i % 9) as i32 - 4))
            .collect();
        v.extend([
            0.0,
            -0.0,
            7.905_311,
            -7.905_311,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
        ]);
        v
    }

    #[test]
    fn vector_and_scalar_tanh_agree_bit_for_bit() {
        // 1,000 + 7 values: whole vectors and a ragged tail.
        let x = inputs(1000);
        let mut fast = vec![0f32; x.len()];
        tanh(&x, &mut fast);
        for (&xi, &f) in x.iter().zip(&fast) {
            let s = xi.fast_tanh();
            assert!(
                s.to_bits() == f.to_bits() || (s.is_nan() && f.is_nan()),
                "tanh({xi}): {f} vs {s}"
            );
        }
    }

    #[test]
    fn vector_and_scalar_tanh_grad_agree_bit_for_bit() {
        let y: Vec<f32> = inputs(999).iter().map(|v| v.fast_tanh()).collect();
        let g = inputs(999);
        let mut fast = vec![0f32; y.len()];
        tanh_grad(&y, &g, &mut fast);
        for ((&yi, &gi), &f) in y.iter().zip(&g).zip(&fast) {
            let s = gi * (1.0 - yi * yi);
            assert!(s.to_bits() == f.to_bits() || (s.is_nan() && f.is_nan()));
        }
    }
}
