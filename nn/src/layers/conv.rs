//! Convolutions: [`Conv2d`] over NCHW images and [`Conv1d`] over `[N, C, L]`
//! sequences, sharing one im2col + gemm engine; small stride-1 `f32`
//! layers (LeNet-5's) take direct AVX2/FMA kernels instead when the CPU
//! has them.

mod conv1d;
mod conv2d;
mod direct;
mod im2col;

pub use conv1d::{Conv1d, Conv1dConfig};
pub use conv2d::{Conv2d, Conv2dConfig};

use ndarray::IxDyn;

use crate::error::{Error, Result};
use crate::module::Param;
use crate::tensor::{Float, Tensor};
use im2col::{ColumnCache, Geom};

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

/// Forward pass of a convolution of geometry `g` over `n` inputs; keeps the
/// columns in `cache` for the backward pass when given.
fn conv_forward<F: Float>(
    g: &Geom,
    n: usize,
    input: &Tensor<F>,
    weight: &Param<F>,
    bias: Option<&Param<F>>,
    cache: Option<&mut ColumnCache<F>>,
) -> Result<Vec<F>> {
    let x = contiguous(input);
    let w = contiguous(&weight.value);
    let b = bias.map(|b| contiguous(&b.value));
    im2col::forward(g, n, &x, &w, b.as_deref(), cache)
}

/// Backward pass of a convolution named `name`: checks `grad_output`
/// against `out_shape`, adds the parameter gradients and returns the input
/// gradient (empty unless `want_gx`).
#[allow(clippy::too_many_arguments)]
fn conv_backward<F: Float>(
    name: &str,
    g: &Geom,
    n: usize,
    input: &Tensor<F>,
    grad_output: &Tensor<F>,
    out_shape: &[usize],
    weight: &mut Param<F>,
    bias: Option<&mut Param<F>>,
    cache: &ColumnCache<F>,
    want_gx: bool,
) -> Result<Vec<F>> {
    if grad_output.shape() != out_shape {
        return Err(Error::shape(
            format!("{name} backward"),
            format!("grad_output {out_shape:?}"),
            grad_output.shape(),
        ));
    }
    let x = contiguous(input);
    let gy = contiguous(grad_output);
    let w = contiguous(&weight.value);
    let gw = weight
        .grad
        .as_slice_mut()
        .ok_or_else(|| Error::invalid(name, "weight gradient is not contiguous"))?;
    let gb = match bias {
        Some(b) => Some(
            b.grad
                .as_slice_mut()
                .ok_or_else(|| Error::invalid(name, "bias gradient is not contiguous"))?,
        ),
        None => None,
    };
    im2col::backward(g, n, &x, &w, &gy, gw, gb, Some(cache), want_gx)
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
