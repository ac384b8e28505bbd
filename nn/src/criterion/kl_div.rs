//! Kullback-Leibler divergence (`nn.KLDivLoss`).

use super::{same_shape, Criterion};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Reductions of [`KlDiv`] (PyTorch's `reduction` argument of `kl_div`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlReduction {
    /// Average over all elements (PyTorch's default, though not the true KL divergence).
    #[default]
    Mean,
    /// Sum over all elements.
    Sum,
    /// Sum divided by the batch size (the first dimension): the mathematically correct KL divergence.
    BatchMean,
}

/// KL divergence with `input` holding log-probabilities and `target`
/// probabilities: per element `t (ln t - x)`, taken as 0 where `t = 0`.
/// The gradient with respect to `input` is `-t` (scaled by the reduction).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KlDiv {
    /// How the per-element losses are combined.
    pub reduction: KlReduction,
}

impl KlDiv {
    /// A criterion with the given reduction.
    pub fn new(reduction: KlReduction) -> Self {
        KlDiv { reduction }
    }

    fn run<F: Float>(&self, input: &Tensor<F>, target: &Tensor<F>) -> Result<(F, Tensor<F>)> {
        let op = "KLDiv";
        same_shape(op, input, target)?;
        let n = input.len();
        let scale = match self.reduction {
            KlReduction::Mean => 1.0 / n as f64,
            KlReduction::Sum => 1.0,
            KlReduction::BatchMean => {
                let b = input.shape().first().copied().unwrap_or(1);
                1.0 / b as f64
            }
        };
        if let Some(t) = target.iter().find(|t| t.as_f64() < 0.0 || t.is_nan()) {
            return Err(Error::invalid(
                op,
                format!(
                    "target probability {t} is negative (shape {:?})",
                    target.shape()
                ),
            ));
        }
        let mut total = 0.0;
        let mut grad = Tensor::zeros(input.raw_dim());
        ndarray::Zip::from(&mut grad)
            .and(input)
            .and(target)
            .for_each(|g, &x, &t| {
                let (x, t) = (x.as_f64(), t.as_f64());
                if t > 0.0 {
                    total += t * (t.ln() - x);
                }
                *g = F::of(-t * scale);
            });
        Ok((F::of(total * scale), grad))
    }
}

impl<F: Float> Criterion<F> for KlDiv {
    fn name(&self) -> String {
        "KLDiv".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(self.run(input, target)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(self.run(input, target)?.1)
    }
}
