//! Gradient clipping on flat gradient buffers.
//!
//! [`clip_by_norm`] follows PyTorch's `clip_grad_norm_` (L2 norm): the
//! gradients are multiplied by `min(1, max_norm / (norm + 1e-6))` and the
//! pre-clip norm is returned. A sharded owner computes the global norm from
//! partial sums: each shard reports [`squared_norm`] of its slice, the sum's
//! square root is the total norm, and every shard scales its slice by
//! [`scale_for_norm`]`(total, max_norm)` with [`scale`].

use crate::error::{Error, Result};
use crate::tensor::Float;

fn check(what: &str, name: &str, v: f64) -> Result<()> {
    if v.is_nan() || v < 0.0 {
        return Err(Error::config(what, format!("{name} = {v} must be >= 0")));
    }
    Ok(())
}

/// Clamps every gradient to `[-clip_value, clip_value]` (PyTorch's
/// `clip_grad_value_`); a negative or NaN `clip_value` is an error.
pub fn clip_by_value<F: Float>(grads: &mut [F], clip_value: f64) -> Result<()> {
    check("clip_by_value", "clip_value", clip_value)?;
    let (lo, hi) = (F::of(-clip_value), F::of(clip_value));
    for g in grads {
        // NaN gradients stay NaN, like torch.clamp.
        if *g < lo {
            *g = lo;
        } else if *g > hi {
            *g = hi;
        }
    }
    Ok(())
}

/// Sum of squares of `grads`, accumulated in `f64`.
pub fn squared_norm<F: Float>(grads: &[F]) -> f64 {
    grads
        .iter()
        .map(|g| {
            let v = g.as_f64();
            v * v
        })
        .sum()
}

/// The factor `min(1, max_norm / (total_norm + 1e-6))` that
/// `clip_grad_norm_` multiplies the gradients by.
pub fn scale_for_norm(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// Multiplies every gradient by `factor`.
pub fn scale<F: Float>(grads: &mut [F], factor: f64) {
    if factor != 1.0 {
        for g in grads {
            *g = F::of(g.as_f64() * factor);
        }
    }
}

/// Rescales `grads` so their L2 norm is at most `max_norm` and returns the
/// norm before clipping (PyTorch's `clip_grad_norm_` with `norm_type=2`).
pub fn clip_by_norm<F: Float>(grads: &mut [F], max_norm: f64) -> Result<f64> {
    clip_slices_by_norm(&mut [grads], max_norm)
}

/// [`clip_by_norm`] over several slices treated as one vector (the global norm).
pub fn clip_slices_by_norm<F: Float>(slices: &mut [&mut [F]], max_norm: f64) -> Result<f64> {
    check("clip_by_norm", "max_norm", max_norm)?;
    let total = slices.iter().map(|s| squared_norm(s)).sum::<f64>().sqrt();
    let factor = scale_for_norm(total, max_norm);
    for s in slices.iter_mut() {
        scale(s, factor);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_clipping_clamps_each_element() {
        let mut g = vec![-3.0f32, -0.5, 0.0, 0.7, 2.0];
        clip_by_value(&mut g, 1.0).unwrap();
        assert_eq!(g, vec![-1.0, -0.5, 0.0, 0.7, 1.0]);
        assert!(clip_by_value(&mut g, -1.0).is_err());
    }

    #[test]
    fn norm_clipping_matches_clip_grad_norm() {
        let mut g = vec![3.0f64, 4.0];
        let n = clip_by_norm(&mut g, 1.0).unwrap();
        assert_eq!(n, 5.0);
        let f = 1.0 / (5.0 + 1e-6);
        assert!((g[0] - 3.0 * f).abs() < 1e-15 && (g[1] - 4.0 * f).abs() < 1e-15);
        // Below the threshold nothing changes.
        let mut h = vec![0.3f64, 0.4];
        assert!((clip_by_norm(&mut h, 1.0).unwrap() - 0.5).abs() < 1e-15);
        assert_eq!(h, vec![0.3, 0.4]);
        assert!(clip_by_norm(&mut h, f64::NAN).is_err());
    }

    #[test]
    fn sharded_norm_clipping_equals_whole_buffer() {
        let whole: Vec<f32> = (0..10).map(|i| (i as f32 - 4.5) * 0.7).collect();
        let mut a = whole.clone();
        let na = clip_by_norm(&mut a, 2.0).unwrap();
        let mut b = whole.clone();
        let (x, y) = b.split_at_mut(3);
        let nb = clip_slices_by_norm(&mut [x, y], 2.0).unwrap();
        assert_eq!(na, nb);
        assert_eq!(a, b);
        // Manual protocol of a sharded owner.
        let mut c = whole.clone();
        let total = (squared_norm(&c[..4]) + squared_norm(&c[4..])).sqrt();
        let f = scale_for_norm(total, 2.0);
        let (l, r) = c.split_at_mut(4);
        scale(l, f);
        scale(r, f);
        for (u, v) in a.iter().zip(&c) {
            assert!((u - v).abs() < 1e-6);
        }
    }
}
