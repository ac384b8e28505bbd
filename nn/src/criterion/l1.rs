//! Mean absolute error (`nn.L1Loss`).

use super::{pointwise, Criterion, Reduction};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// Absolute error `|x - t|` per element, reduced; the gradient at `x == t` is 0 (as PyTorch's `sign`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct L1 {
    /// How the per-element losses are combined.
    pub reduction: Reduction,
}

impl L1 {
    /// A criterion with the given reduction.
    pub fn new(reduction: Reduction) -> Self {
        L1 { reduction }
    }
}

fn sign(d: f64) -> f64 {
    if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn l1(x: f64, t: f64) -> (f64, f64) {
    ((x - t).abs(), sign(x - t))
}

impl<F: Float> Criterion<F> for L1 {
    fn name(&self) -> String {
        "L1".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(pointwise("L1", input, target, self.reduction, l1)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(pointwise("L1", input, target, self.reduction, l1)?.1)
    }
}
