//! Convolutions: [`Conv2d`] over NCHW images and [`Conv1d`] over `[N, C, L]`
//! sequences, sharing one im2col + gemm engine.

mod conv1d;
mod conv2d;
mod im2col;

pub use conv1d::{Conv1d, Conv1dConfig};
pub use conv2d::{Conv2d, Conv2dConfig};

use ndarray::IxDyn;

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

fn default_true() -> bool {
    true
}

fn default_one() -> usize {
    1
}

/// A contiguous row-major slice of `t` (copying only when `t` is not already
/// in standard layout).
fn contiguous<F: Float>(t: &Tensor<F>) -> std::borrow::Cow<'_, [F]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

/// Wraps a flat buffer as a tensor of `shape`.
fn tensor_of<F: Float>(op: &str, shape: &[usize], data: Vec<F>) -> Result<Tensor<F>> {
    let n = data.len();
    Tensor::from_shape_vec(IxDyn(shape), data)
        .map_err(|_| Error::invalid(op, format!("{n} values do not fill shape {shape:?}")))
}

/// Validates the channel/group/kernel settings shared by both convolutions.
fn validate(
    what: &str,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    sizes: &[(&str, usize)],
) -> Result<()> {
    if in_channels == 0 || out_channels == 0 {
        return Err(Error::config(what, "channel counts must be positive"));
    }
    if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        return Err(Error::config(
            what,
            format!(
                "groups {groups} must divide in_channels {in_channels} and out_channels {out_channels}"
            ),
        ));
    }
    for (name, v) in sizes {
        if *v == 0 {
            return Err(Error::config(what, format!("{name} must be positive")));
        }
    }
    Ok(())
}
