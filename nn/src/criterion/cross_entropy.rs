//! Cross entropy over logits (`nn.CrossEntropyLoss` with class-index targets).

use super::class_nll::nll_core;
use super::{class_layout, tensor_of, values, Criterion, Reduction};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Cross entropy of class targets given unnormalised scores (logits): a
/// log-softmax over dimension 1 fused with [`super::ClassNll`], like
/// PyTorch's `CrossEntropyLoss` with class-index targets, including class
/// weights, `ignore_index` and label smoothing (with PyTorch's exact
/// normalisation of the smoothing term).
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropy<F> {
    /// Optional per-class weights (length C).
    pub weight: Option<Vec<F>>,
    /// Target value whose entries contribute nothing (PyTorch's default is -100).
    pub ignore_index: Option<i64>,
    /// How the per-target losses are combined.
    pub reduction: Reduction,
    /// Label smoothing in `[0, 1]` (0 disables it).
    pub label_smoothing: f64,
}

impl<F: Float> Default for CrossEntropy<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> CrossEntropy<F> {
    /// Unweighted, mean reduction, ignore_index -100, no label smoothing (PyTorch's defaults).
    pub fn new() -> Self {
        CrossEntropy {
            weight: None,
            ignore_index: Some(-100),
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
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

    /// Sets label smoothing; values outside `[0, 1]` are refused at `forward`.
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    fn compute(&self, input: &Tensor<F>, target: &Tensor<F>) -> Result<(F, Tensor<F>)> {
        let op = Criterion::<F>::name(self);
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::config(
                op,
                format!("label_smoothing {} is not in [0, 1]", self.label_smoothing),
            ));
        }
        let layout = class_layout(&op, input, target)?;
        let (c, inner) = (layout.c, layout.inner);
        let x = values(input);
        // log-softmax over the class dimension.
        let mut lp = vec![0.0; x.len()];
        let mut sm = vec![0.0; x.len()];
        for b in 0..layout.n {
            for k in 0..inner {
                let base = b * c * inner + k;
                let idx = |j: usize| base + j * inner;
                let m = (0..c).map(|j| x[idx(j)]).fold(f64::NEG_INFINITY, f64::max);
                let lse = m + (0..c).map(|j| (x[idx(j)] - m).exp()).sum::<f64>().ln();
                for j in 0..c {
                    lp[idx(j)] = x[idx(j)] - lse;
                    sm[idx(j)] = lp[idx(j)].exp();
                }
            }
        }
        let (loss, glp) = nll_core(
            &op,
            &lp,
            &layout,
            target,
            self.weight.as_deref(),
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
        )?;
        // Back through log-softmax: gx = glp - softmax * Σ_j glp_j.
        let mut gx = glp.clone();
        for b in 0..layout.n {
            for k in 0..inner {
                let base = b * c * inner + k;
                let s: f64 = (0..c).map(|j| glp[base + j * inner]).sum();
                for j in 0..c {
                    gx[base + j * inner] -= sm[base + j * inner] * s;
                }
            }
        }
        Ok((F::of(loss), tensor_of(input.shape(), gx)?))
    }
}

impl<F: Float> Criterion<F> for CrossEntropy<F> {
    fn name(&self) -> String {
        "CrossEntropy".to_string()
    }

    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F> {
        Ok(self.compute(input, target)?.0)
    }

    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(self.compute(input, target)?.1)
    }
}
