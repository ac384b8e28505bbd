//! Normalisation layers: [`BatchNorm`] (BatchNorm1d/2d) and the SSD-style
//! channel-wise L2 [`Normalize`] with a learned per-channel scale.

mod batch_norm;
mod normalize;

pub use batch_norm::{BatchNorm, BatchNormConfig};
pub use normalize::{Normalize, NormalizeConfig};

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

fn contiguous<F: Float>(t: &Tensor<F>) -> std::borrow::Cow<'_, [F]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

fn tensor_of<F: Float>(op: &str, shape: &[usize], data: Vec<F>) -> Result<Tensor<F>> {
    let n = data.len();
    Tensor::from_shape_vec(ndarray::IxDyn(shape), data)
        .map_err(|_| Error::invalid(op, format!("{n} values do not fill shape {shape:?}")))
}

fn slice_of<'a, F: Float>(op: &str, t: &'a Tensor<F>) -> Result<&'a [F]> {
    t.as_slice()
        .ok_or_else(|| Error::invalid(op, "parameter is not contiguous"))
}

fn slice_of_mut<'a, F: Float>(op: &str, t: &'a mut Tensor<F>) -> Result<&'a mut [F]> {
    t.as_slice_mut()
        .ok_or_else(|| Error::invalid(op, "parameter is not contiguous"))
}
