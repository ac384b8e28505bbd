//! Negative log-likelihood over class log-probabilities (`nn.NLLLoss`).

use super::{
    check_weights, class_layout, target_class, tensor_of, values, ClassLayout, Criterion, Reduction,
};
use crate::error::Result;
use crate::tensor::{Float, Tensor};

/// Negative log-likelihood of class targets given log-probabilities, like
/// PyTorch's `NLLLoss`.
///
/// Input `[N, C]` (log-probabilities, e.g. from `LogSoftMax(dim=1)`) with
/// target `[N]`, or `[N, C, d1, ..]` with target `[N, d1, ..]`; targets are
/// 0-based class indices stored as floats. With [`Reduction::Mean`] the sum
/// of `-w[t] * input[t]` is divided by the sum of the weights of the
/// non-ignored targets (the number of non-ignored targets when unweighted),
/// exactly as PyTorch does; when every target is ignored the mean is NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassNll<F> {
    /// Optional per-class weights (length C).
    pub weight: Option<Vec<F>>,
    /// Target value whose entries contribute nothing (PyTorch's default is -100).
    pub ignore_index: Option<i64>,
    /// How the per-target losses are combined.
    pub reduction: Reduction,
}

impl<F: Float> Default for ClassNll<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> ClassNll<F> {
    /// Unweighted, mean reduction, ignoring targets equal to -100 (PyTorch's defaults).
    pub fn new() -> Self {
        ClassNll {
            weight: None,
            ignore_index: Some(-100),
            reduction: Reduction::Mean,
        }
    }

    /// Sets per-class weights (length C, checked at `forward`).
    pub fn with_weight(mut self, weight: Vec<F>) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets the ignored target value (`None`: every target counts).
    pub fn with_ignore_index(mut self, ignore_index: Option<i64>) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    fn compute(&self, input: &Tensor<F>, target: &Tensor<F>) -> Result<(F, Tensor<F>)> {
        let op = Criterion::<F>::name(self);
        let layout = class_layout(&op, input, target)?;
        let lp = values(input);
        let (loss, grad) = nll_core(
            &op,
            &lp,
            &layout,
            target,
            self.weight.as_deref(),
            self.ignore_index,
            self.reduction,
            0.0,
        )?;
        Ok((F::of(loss), tensor_of(input.shape(), grad)?))
    }
}

/// Shared NLL (with optional label smoothing, as in PyTorch's
/// `cross_entropy`) over row-major log-probabilities laid out as
/// `[N, C, inner]`. Returns the loss and dLoss/dLogProb.
#[allow(clippy::too_many_arguments)]
pub(crate) fn nll_core<F: Float>(
    op: &str,
    lp: &[f64],
    layout: &ClassLayout,
    target: &Tensor<F>,
    weight: Option<&[F]>,
    ignore_index: Option<i64>,
    reduction: Reduction,
    smoothing: f64,
) -> Result<(f64, Vec<f64>)> {
    let ClassLayout { n, c, inner } = *layout;
    check_weights(op, weight, c)?;
    let w = |k: usize| weight.map_or(1.0, |w| w[k].as_f64());
    let targets: Vec<F> = target.iter().copied().collect();
    let mut classes = Vec::with_capacity(targets.len());
    for &t in &targets {
        classes.push(target_class(op, t, c, ignore_index)?);
    }
    // Sums of the NLL term and of the smoothing term, and the weight total.
    let (mut nll, mut smooth, mut wsum) = (0.0, 0.0, 0.0);
    for b in 0..n {
        for k in 0..inner {
            let Some(t) = classes[b * inner + k] else {
                continue;
            };
            let base = b * c * inner + k;
            nll -= w(t) * lp[base + t * inner];
            wsum += w(t);
            if smoothing > 0.0 {
                for j in 0..c {
                    smooth -= w(j) * lp[base + j * inner];
                }
            }
        }
    }
    // Normaliser of both terms: the weight total of the non-ignored targets
    // (their count when unweighted), as PyTorch's `cross_entropy`.
    let norm = match reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => wsum,
    };
    let (d_nll, d_smooth) = (norm, norm);
    let eps_c = smoothing / c as f64;
    let loss = (1.0 - smoothing) * nll / d_nll
        + if smoothing > 0.0 {
            eps_c * smooth / d_smooth
        } else {
            0.0
        };
    let mut grad = vec![0.0; lp.len()];
    for b in 0..n {
        for k in 0..inner {
            let Some(t) = classes[b * inner + k] else {
                continue;
            };
            let base = b * c * inner + k;
            grad[base + t * inner] -= (1.0 - smoothing) * w(t) / d_nll;
            if smoothing > 0.0 {
                for j in 0..c {
                    grad[base + j * inner] -= eps_c * w(j) / d_smooth;
                }
            }
        }
    }
    Ok((loss, grad))
}

impl<F: Float> Criterion<F> for ClassNll<F> {
    fn name(&self) -> String {
        "ClassNLL".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(self.compute(input, target)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(self.compute(input, target)?.1)
    }
}
