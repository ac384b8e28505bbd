//! Mean squared error (`nn.MSELoss`).

use super::{pointwise, Criterion, Reduction};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// Squared error `(x - t)²` per element, reduced; input and target have the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Mse {
    /// How the per-element losses are combined.
    pub reduction: Reduction,
}

impl Mse {
    /// A criterion with the given reduction.
    pub fn new(reduction: Reduction) -> Self {
        Mse { reduction }
    }
}

impl<F: Float> Criterion<F> for Mse {
    fn name(&self) -> String {
        "MSE".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(pointwise("MSE", input, target, self.reduction, |x, t| {
            ((x - t) * (x - t), 2.0 * (x - t))
        })?
        .0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(pointwise("MSE", input, target, self.reduction, |x, t| {
            ((x - t) * (x - t), 2.0 * (x - t))
        })?
        .1)
    }
}
