//! Criterions (loss functions): a scalar loss from an input and a target,
//! and the loss's gradient with respect to the input.

use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// How per-element (or per-sample) losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Average (PyTorch's default).
    #[default]
    Mean,
    /// Sum.
    Sum,
}

/// A loss function.
pub trait Criterion<F: Float>: Send {
    /// A short description for error messages.
    fn name(&self) -> String;

    /// The loss of `input` against `target`.
    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F>;

    /// dLoss/dInput for the same `input` and `target` as the last `forward`.
    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>>;
}

/// Connectionist temporal classification loss.
pub mod ctc;
