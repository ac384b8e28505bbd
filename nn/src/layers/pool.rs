//! 2-D pooling over NCHW images: [`MaxPool2d`] and [`AvgPool2d`], with
//! PyTorch's output-size rules (padding, `ceil_mode`).

mod avg_pool2d;
mod max_pool2d;

pub use avg_pool2d::{AvgPool2d, AvgPool2dConfig};
pub use max_pool2d::{MaxPool2d, Pool2dConfig};

use ndarray::IxDyn;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor, PAR_MIN_LEN};

fn default_true() -> bool {
    true
}

/// PyTorch's pooled length: floor or ceil of `(len + 2p - k) / s + 1`, where
/// with `ceil_mode` the last window must start inside the input or the left
/// padding. `None` when no window fits.
pub(crate) fn pool_out_len(
    len: usize,
    k: usize,
    s: usize,
    p: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let padded = len + 2 * p;
    if padded < k {
        return None;
    }
    let num = padded - k + if ceil_mode { s - 1 } else { 0 };
    let mut out = num / s + 1;
    if ceil_mode && (out - 1) * s >= len + p {
        out -= 1;
    }
    (out > 0).then_some(out)
}

/// The outputs `o` in `0..n_out` whose input position `o * s + off` lies in `0..len`.
fn valid_range(off: isize, s: usize, len: usize, n_out: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let room = len as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let lo = (lo as usize).min(n_out);
    let hi = (hi as usize).min(n_out).max(lo);
    (lo, hi)
}

/// Validates kernel/stride/padding the way PyTorch does.
fn validate(what: &str, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<()> {
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(Error::config(
            what,
            "kernel_size and stride must be positive",
        ));
    }
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(Error::config(
            what,
            format!("padding {padding:?} must be at most half of kernel_size {kernel:?}"),
        ));
    }
    Ok(())
}

/// The shape of one pooling call.
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
}

impl PoolGeom {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        channels: Option<usize>,
        input: &[usize],
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        ceil_mode: bool,
    ) -> Result<Self> {
        if input.len() != 4 {
            return Err(Error::shape(name, "[N, C, H, W]", input));
        }
        let (n, c, h, w) = (input[0], input[1], input[2], input[3]);
        if let Some(ch) = channels {
            if ch != c {
                return Err(Error::shape(name, format!("[N, {ch}, H, W]"), input));
            }
        }
        match (
            pool_out_len(h, k[0], s[0], p[0], ceil_mode),
            pool_out_len(w, k[1], s[1], p[1], ceil_mode),
        ) {
            (Some(oh), Some(ow)) => Ok(PoolGeom {
                n,
                c,
                h,
                w,
                oh,
                ow,
                k,
                s,
                p,
            }),
            _ => Err(Error::shape(
                name,
                format!(
                    "[N, C, H, W] with H + 2*{} >= {} and W + 2*{} >= {}",
                    p[0], k[0], p[1], k[1]
                ),
                input,
            )),
        }
    }

    fn planes(&self) -> usize {
        self.n * self.c
    }

    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }

    /// Window rows `[start, end)` of output row `o` before clipping to the
    /// input, in padded coordinates shifted so that the input starts at 0.
    fn window(&self, o: usize, axis: usize) -> (isize, isize) {
        let start = (o * self.s[axis]) as isize - self.p[axis] as isize;
        (start, start + self.k[axis] as isize)
    }
}

/// Runs `f(plane_in, plane_out)` over every (image, channel) plane, in
/// parallel when the tensor is large.
fn for_planes<F: Float, T: Send>(
    input: &[F],
    in_plane: usize,
    out: &mut [T],
    out_plane: usize,
    f: impl Fn(&[F], &mut [T]) + Sync + Send,
) {
    if in_plane == 0 || out_plane == 0 {
        return;
    }
    if input.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
        out.par_chunks_mut(out_plane)
            .zip(input.par_chunks(in_plane))
            .for_each(|(o, i)| f(i, o));
    } else {
        out.chunks_mut(out_plane)
            .zip(input.chunks(in_plane))
            .for_each(|(o, i)| f(i, o));
    }
}

fn contiguous<F: Float>(t: &Tensor<F>) -> std::borrow::Cow<'_, [F]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

fn tensor_of<F: Float>(op: &str, shape: &[usize], data: Vec<F>) -> Result<Tensor<F>> {
    let n = data.len();
    Tensor::from_shape_vec(IxDyn(shape), data)
        .map_err(|_| Error::invalid(op, format!("{n} values do not fill shape {shape:?}")))
}

fn check_grad_output(name: &str, g: &PoolGeom, grad_output: &[usize]) -> Result<()> {
    if grad_output != g.out_shape() {
        return Err(Error::shape(
            format!("{name} backward"),
            format!("grad_output {:?}", g.out_shape()),
            grad_output,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_follows_pytorch() {
        // (len, k, s, p, ceil) -> out, values from torch.nn.functional.max_pool2d
        assert_eq!(pool_out_len(5, 2, 2, 0, false), Some(2));
        assert_eq!(pool_out_len(5, 2, 2, 0, true), Some(3));
        assert_eq!(pool_out_len(6, 3, 2, 1, true), Some(4));
        assert_eq!(pool_out_len(6, 3, 2, 1, false), Some(3));
        assert_eq!(pool_out_len(4, 2, 2, 1, true), Some(3));
        // the last window would start in the right padding only: dropped
        assert_eq!(pool_out_len(5, 3, 3, 1, true), Some(2));
        assert_eq!(pool_out_len(1, 2, 2, 0, false), None);
    }
}
