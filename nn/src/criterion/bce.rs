//! Binary cross entropy on probabilities (`nn.BCELoss`).

use super::{same_shape, Criterion, Reduction};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Binary cross entropy of probabilities `x ∈ [0, 1]` against targets
/// `t ∈ [0, 1]`: `-w (t ln x + (1 - t) ln(1 - x))`, with each log clamped
/// at -100 and the gradient's denominator `x (1 - x)` clamped at 1e-12,
/// exactly as PyTorch's `BCELoss`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bce<F> {
    /// Optional weights, broadcast to the input's shape (PyTorch's `weight`).
    pub weight: Option<Tensor<F>>,
    /// How the per-element losses are combined.
    pub reduction: Reduction,
}

impl<F: Float> Default for Bce<F> {
    fn default() -> Self {
        Self::new(Reduction::Mean)
    }
}

impl<F: Float> Bce<F> {
    /// An unweighted criterion with the given reduction.
    pub fn new(reduction: Reduction) -> Self {
        Bce {
            weight: None,
            reduction,
        }
    }

    /// Sets weights, which must broadcast to the input's shape.
    pub fn with_weight(mut self, weight: Tensor<F>) -> Self {
        self.weight = Some(weight);
        self
    }

    fn run(&self, input: &Tensor<F>, target: &Tensor<F>) -> Result<(F, Tensor<F>)> {
        let op = "BCE";
        same_shape(op, input, target)?;
        let ones;
        let w = match &self.weight {
            Some(w) => w
                .broadcast(input.raw_dim())
                .ok_or_else(|| Error::ShapeMismatch {
                    op: format!("{op}: weight does not broadcast to input"),
                    lhs: w.shape().to_vec(),
                    rhs: input.shape().to_vec(),
                })?,
            None => {
                ones = Tensor::from_elem(input.raw_dim(), F::one());
                ones.view()
            }
        };
        let n = input.len();
        let scale = match self.reduction {
            Reduction::Mean => 1.0 / n as f64,
            Reduction::Sum => 1.0,
        };
        let mut bad = None;
        let mut total = 0.0;
        let mut grad = Tensor::zeros(input.raw_dim());
        ndarray::Zip::from(&mut grad)
            .and(input)
            .and(target)
            .and(&w)
            .for_each(|g, &x, &t, &w| {
                let (x, t, w) = (x.as_f64(), t.as_f64(), w.as_f64());
                if !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&t) {
                    bad.get_or_insert((x, t));
                    return;
                }
                let lx = x.ln().max(-100.0);
                let l1x = (1.0 - x).ln().max(-100.0);
                total -= w * (t * lx + (1.0 - t) * l1x);
                *g = F::of(scale * w * (x - t) / (x * (1.0 - x)).max(1e-12));
            });
        if let Some((x, t)) = bad {
            return Err(Error::invalid(
                op,
                format!(
                    "input {x} and target {t} must both lie in [0, 1] (input shape {:?})",
                    input.shape()
                ),
            ));
        }
        let loss = if n == 0 && self.reduction == Reduction::Mean {
            f64::NAN
        } else {
            total * scale
        };
        Ok((F::of(loss), grad))
    }
}

impl<F: Float> Criterion<F> for Bce<F> {
    fn name(&self) -> String {
        "BCE".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(self.run(input, target)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(self.run(input, target)?.1)
    }
}
