//! Smooth L1 (Huber-like) loss (`nn.SmoothL1Loss`).

use super::{pointwise, Criterion, Reduction};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Per element, with `d = x - t`: `0.5 d² / beta` when `|d| < beta`, else
/// `|d| - 0.5 beta`; `beta = 0` gives the L1 loss (PyTorch's `SmoothL1Loss`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothL1 {
    /// How the per-element losses are combined.
    pub reduction: Reduction,
    /// Where the loss changes from quadratic to linear (non-negative).
    pub beta: f64,
}

impl Default for SmoothL1 {
    fn default() -> Self {
        SmoothL1 {
            reduction: Reduction::Mean,
            beta: 1.0,
        }
    }
}

impl SmoothL1 {
    /// A criterion with the given reduction and beta; negative or non-finite beta is refused.
    pub fn new(reduction: Reduction, beta: f64) -> Result<Self> {
        if !(beta >= 0.0 && beta.is_finite()) {
            return Err(Error::config(
                "SmoothL1",
                format!("beta {beta} must be a non-negative number"),
            ));
        }
        Ok(SmoothL1 { reduction, beta })
    }

    fn run<F: Float>(&self, input: &Tensor<F>, target: &Tensor<F>) -> Result<(F, Tensor<F>)> {
        let beta = self.beta;
        if !(beta >= 0.0 && beta.is_finite()) {
            return Err(Error::config(
                "SmoothL1",
                format!("beta {beta} must be a non-negative number"),
            ));
        }
        pointwise("SmoothL1", input, target, self.reduction, |x, t| {
            let d = x - t;
            if d.abs() < beta {
                (0.5 * d * d / beta, d / beta)
            } else {
                let s = if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                (d.abs() - 0.5 * beta, s)
            }
        })
    }
}

impl<F: Float> Criterion<F> for SmoothL1 {
    fn name(&self) -> String {
        format!("SmoothL1(beta={})", self.beta)
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(self.run(input, target)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(self.run(input, target)?.1)
    }
}
