//! Connectionist temporal classification (CTC) loss, forward and backward in
//! log space, with PyTorch's `F.ctc_loss` semantics.
//!
//! Layout: log-probabilities (or logits) are time-major `(T, N, C)`; targets
//! are one unpadded label sequence per sample; each sample has its own input
//! length (frames `t >= input_lengths[n]` are ignored and get zero gradient).
//! The loss of a sample is its negative log-likelihood `-ln p(target | x)`.
//!
//! Three gradients are offered:
//! - [`CtcLoss::backward`]: the *exact* gradient with respect to the
//!   log-probabilities treated as free inputs;
//! - [`CtcLoss::backward_torch`]: what PyTorch's autograd returns for the
//!   log-probabilities (it folds the log-softmax Jacobian in: exact +
//!   `exp(log_probs)` on the valid frames of finite samples);
//! - [`CtcLoss::loss_and_grad_logits`]: log-softmax and CTC fused, the
//!   gradient with respect to the unnormalised logits.
//!
//! Samples are independent and computed in parallel (rayon) over the batch.
//! An infeasible sample (its target cannot fit in its input length) has loss
//! `+inf`; with `zero_infinity` its loss becomes 0. Its gradient is zero in
//! both cases (PyTorch returns NaN without `zero_infinity`).

use ndarray::{s, Array2, ArrayView2, ArrayView3, Axis, Ix3};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

const OP: &str = "CtcLoss";

/// How the per-sample CTC losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CtcReduction {
    /// No reduction: [`CtcLoss::forward_per_sample`] gives the losses;
    /// [`CtcLoss::forward`] returns their sum and the gradients are those of
    /// the sum (each sample's gradient is that of its own loss).
    None,
    /// The sum of the per-sample losses.
    Sum,
    /// PyTorch's `'mean'`: each loss divided by its target length (clamped
    /// to at least 1), then the mean over the batch.
    #[default]
    Mean,
}

/// CTC loss over time-major `(T, N, C)` log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CtcLoss {
    /// Index of the blank symbol (default 0).
    pub blank: usize,
    /// How the per-sample losses are combined.
    pub reduction: CtcReduction,
    /// Replace infinite losses (infeasible alignments) by 0.
    pub zero_infinity: bool,
}

impl Default for CtcLoss {
    fn default() -> Self {
        CtcLoss {
            blank: 0,
            reduction: CtcReduction::Mean,
            zero_infinity: false,
        }
    }
}

/// Which gradient a pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GradKind {
    /// d loss / d log_probs, log_probs free.
    Exact,
    /// PyTorch's autograd convention: exact + exp(log_probs) on valid frames.
    Torch,
}

/// Result of one sample: its loss and, if asked, its gradient over its
/// first `input_length` frames (`(T_n, C)`, unscaled, of the raw loss).
struct Sample<F> {
    loss: F,
    grad: Option<Array2<F>>,
}

impl CtcLoss {
    /// A CTC loss with blank index `blank`, PyTorch's mean reduction and no
    /// `zero_infinity`.
    pub fn new(blank: usize) -> Self {
        CtcLoss {
            blank,
            ..CtcLoss::default()
        }
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: CtcReduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets `zero_infinity`.
    pub fn with_zero_infinity(mut self, zero_infinity: bool) -> Self {
        self.zero_infinity = zero_infinity;
        self
    }

    /// The per-sample losses (negative log-likelihoods; `+inf` for an
    /// infeasible sample unless `zero_infinity`, then 0).
    pub fn forward_per_sample<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<Vec<F>> {
        let lp = self.check(log_probs, targets, input_lengths)?;
        let samples = self.run(&lp, targets, input_lengths, None, false);
        Ok(samples.iter().map(|s| self.clean_loss(s.loss)).collect())
    }

    /// The reduced loss (see [`CtcReduction`]).
    pub fn forward<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<F> {
        let losses = self.forward_per_sample(log_probs, targets, input_lengths)?;
        Ok(self.reduce(&losses, targets))
    }

    /// The exact gradient of the reduced loss with respect to `log_probs`
    /// treated as free inputs, shape `(T, N, C)`.
    pub fn backward<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<Tensor<F>> {
        Ok(self
            .loss_and_grad(log_probs, targets, input_lengths, GradKind::Exact, false)?
            .1)
    }

    /// The gradient PyTorch's autograd reports for `log_probs` (exact +
    /// `exp(log_probs)` on the valid frames of finite samples, scaled by the
    /// reduction). Correct as a logits gradient only if `log_probs` came from
    /// a log-softmax; kept for parity with PyTorch.
    pub fn backward_torch<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<Tensor<F>> {
        Ok(self
            .loss_and_grad(log_probs, targets, input_lengths, GradKind::Torch, false)?
            .1)
    }

    /// The reduced loss and its exact gradient with respect to `log_probs`,
    /// in one pass.
    pub fn loss_and_grad_log_probs<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<(F, Tensor<F>)> {
        self.loss_and_grad(log_probs, targets, input_lengths, GradKind::Exact, false)
    }

    /// Log-softmax over the last axis fused with CTC: the reduced loss of
    /// `log_softmax(logits)` and its gradient with respect to `logits`
    /// (`softmax - posterior` on valid frames), shape `(T, N, C)`.
    pub fn loss_and_grad_logits<F: Float>(
        &self,
        logits: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<(F, Tensor<F>)> {
        // Log-softmax of each sample's valid frames inside its own (parallel)
        // pass. d/dlogits = exact + softmax * (-sum_c exact) and
        // sum_c exact = -1 on every valid frame of a finite sample: the
        // Torch convention.
        self.loss_and_grad(logits, targets, input_lengths, GradKind::Torch, true)
    }

    fn loss_and_grad<F: Float>(
        &self,
        log_probs: &Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
        kind: GradKind,
        normalize: bool,
    ) -> Result<(F, Tensor<F>)> {
        let lp = self.check(log_probs, targets, input_lengths)?;
        let samples = self.run(&lp, targets, input_lengths, Some(kind), normalize);
        let losses: Vec<F> = samples.iter().map(|s| self.clean_loss(s.loss)).collect();
        let loss = self.reduce(&losses, targets);
        let mut grad = Tensor::<F>::zeros(log_probs.raw_dim());
        let n = targets.len();
        {
            let mut g3 = grad
                .view_mut()
                .into_dimensionality::<Ix3>()
                .map_err(|_| Error::shape(OP, "[T, N, C]", log_probs.shape()))?;
            for (i, sample) in samples.iter().enumerate() {
                let Some(g) = &sample.grad else { continue };
                let scale = self.scale(targets[i].len(), n);
                let tn = input_lengths[i];
                g3.slice_mut(s![..tn, i, ..])
                    .zip_mut_with(g, |o, &v| *o = v * scale);
            }
        }
        Ok((loss, grad))
    }

    /// Gradient scale of sample with target length `len` in a batch of `n`.
    fn scale<F: Float>(&self, len: usize, n: usize) -> F {
        match self.reduction {
            CtcReduction::None | CtcReduction::Sum => F::one(),
            CtcReduction::Mean => F::one() / (F::of_usize(len.max(1)) * F::of_usize(n.max(1))),
        }
    }

    fn clean_loss<F: Float>(&self, loss: F) -> F {
        if self.zero_infinity && loss.is_infinite() {
            F::zero()
        } else {
            loss
        }
    }

    fn reduce<F: Float>(&self, losses: &[F], targets: &[Vec<usize>]) -> F {
        match self.reduction {
            CtcReduction::None | CtcReduction::Sum => losses.iter().copied().sum(),
            CtcReduction::Mean => {
                if losses.is_empty() {
                    return F::zero();
                }
                let s: F = losses
                    .iter()
                    .zip(targets)
                    .map(|(&l, t)| l / F::of_usize(t.len().max(1)))
                    .sum();
                s / F::of_usize(losses.len())
            }
        }
    }

    fn check<'a, F: Float>(
        &self,
        log_probs: &'a Tensor<F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
    ) -> Result<ArrayView3<'a, F>> {
        let lp = log_probs
            .view()
            .into_dimensionality::<Ix3>()
            .map_err(|_| Error::shape(OP, "[T, N, C] (time-major)", log_probs.shape()))?;
        let (t, n, c) = lp.dim();
        if self.blank >= c {
            return Err(Error::config(
                OP,
                format!("blank index {} is not below the {c} classes", self.blank),
            ));
        }
        if targets.len() != n {
            return Err(Error::shape(
                OP,
                format!("{} target sequences (one per sample)", n),
                &[targets.len()],
            ));
        }
        if input_lengths.len() != n {
            return Err(Error::shape(
                OP,
                format!("{} input lengths (one per sample)", n),
                &[input_lengths.len()],
            ));
        }
        for (i, (&len, target)) in input_lengths.iter().zip(targets).enumerate() {
            if len > t {
                return Err(Error::invalid(
                    OP,
                    format!("sample {i}: input length {len} exceeds the {t} frames"),
                ));
            }
            for (j, &label) in target.iter().enumerate() {
                if label >= c {
                    return Err(Error::invalid(
                        OP,
                        format!("sample {i}: label {label} at position {j} is not below the {c} classes"),
                    ));
                }
                if label == self.blank {
                    return Err(Error::invalid(
                        OP,
                        format!("sample {i}: target contains the blank {label} at position {j}"),
                    ));
                }
            }
        }
        Ok(lp)
    }

    fn run<F: Float>(
        &self,
        lp: &ArrayView3<'_, F>,
        targets: &[Vec<usize>],
        input_lengths: &[usize],
        kind: Option<GradKind>,
        normalize: bool,
    ) -> Vec<Sample<F>> {
        let blank = self.blank;
        let zero_inf = self.zero_infinity;
        let one = |i: usize| {
            let view = lp.slice(s![..input_lengths[i], i, ..]);
            sample(view, &targets[i], blank, kind, zero_inf, normalize)
        };
        if targets.len() > 1 && rayon::current_thread_index().is_none() {
            (0..targets.len()).into_par_iter().map(one).collect()
        } else {
            (0..targets.len()).map(one).collect()
        }
    }
}

/// `ln(exp(a) + exp(b))`, exact at `-inf`.
#[inline]
fn lse2<F: Float>(a: F, b: F) -> F {
    let ninf = F::neg_infinity();
    if a == ninf {
        return b;
    }
    if b == ninf {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// `ln(exp(a) + exp(b) + exp(c))`, exact at `-inf`.
#[inline]
fn lse3<F: Float>(a: F, b: F, c: F) -> F {
    let m = a.max(b).max(c);
    if m == F::neg_infinity() {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp() + (c - m).exp()).ln()
}

/// Loss (and gradient) of one sample; `lp` is `(T_n, C)`.
fn sample<F: Float>(
    lp: ArrayView2<'_, F>,
    target: &[usize],
    blank: usize,
    kind: Option<GradKind>,
    zero_infinity: bool,
    normalize: bool,
) -> Sample<F> {
    let (tn, c) = lp.dim();
    let ninf = F::neg_infinity();
    let s_len = 2 * target.len() + 1;
    // extended label sequence: blank, l1, blank, l2, ..., blank
    let ext: Vec<usize> = (0..s_len)
        .map(|s| if s % 2 == 0 { blank } else { target[s / 2] })
        .collect();
    // may s receive from s-2 (skip over a blank)?
    let skip: Vec<bool> = (0..s_len)
        .map(|s| s >= 2 && ext[s] != blank && ext[s] != ext[s - 2])
        .collect();
    if tn == 0 {
        let loss = if target.is_empty() {
            F::zero()
        } else {
            F::infinity()
        };
        return Sample {
            loss,
            grad: kind.map(|_| Array2::zeros((0, c))),
        };
    }
    // contiguous copy of the log-probs, and lp at the extended labels
    let mut lpv: Vec<F> = lp.iter().copied().collect();
    if normalize {
        for row in lpv.chunks_exact_mut(c) {
            log_softmax_in_place(row);
        }
    }
    let mut lpe = vec![ninf; tn * s_len];
    for t in 0..tn {
        for s in 0..s_len {
            lpe[t * s_len + s] = lpv[t * c + ext[s]];
        }
    }
    let mut alpha = vec![ninf; tn * s_len];
    alpha[0] = lpe[0];
    if s_len > 1 {
        alpha[1] = lpe[1];
    }
    for t in 1..tn {
        let (prev, cur) = alpha[(t - 1) * s_len..(t + 1) * s_len].split_at_mut(s_len);
        let lpe_t = &lpe[t * s_len..(t + 1) * s_len];
        for s in 0..s_len {
            let a0 = prev[s];
            let a1 = if s >= 1 { prev[s - 1] } else { ninf };
            let a2 = if skip[s] { prev[s - 2] } else { ninf };
            let a = lse3(a0, a1, a2);
            if a != ninf {
                cur[s] = a + lpe_t[s];
            }
        }
    }
    let row = (tn - 1) * s_len;
    let last = alpha[row + s_len - 1];
    let ll = if s_len > 1 {
        lse2(last, alpha[row + s_len - 2])
    } else {
        last
    };
    let loss = -ll;
    let Some(kind) = kind else {
        return Sample { loss, grad: None };
    };
    let mut grad = Array2::<F>::zeros((tn, c));
    if !ll.is_finite() {
        // infeasible: zero gradient (documented; PyTorch gives NaN unless zero_infinity)
        let _ = zero_infinity;
        return Sample {
            loss,
            grad: Some(grad),
        };
    }
    let mut beta = vec![ninf; tn * s_len];
    beta[row + s_len - 1] = lpe[row + s_len - 1];
    if s_len > 1 {
        beta[row + s_len - 2] = lpe[row + s_len - 2];
    }
    for t in (0..tn - 1).rev() {
        let (cur, next) = beta[t * s_len..(t + 2) * s_len].split_at_mut(s_len);
        let lpe_t = &lpe[t * s_len..(t + 1) * s_len];
        for s in 0..s_len {
            let b0 = next[s];
            let b1 = if s + 1 < s_len { next[s + 1] } else { ninf };
            let b2 = if s + 2 < s_len && skip[s + 2] {
                next[s + 2]
            } else {
                ninf
            };
            let b = lse3(b0, b1, b2);
            if b != ninf {
                cur[s] = b + lpe_t[s];
            }
        }
    }
    let mut lcab = vec![ninf; c];
    for (t, mut g_row) in grad.axis_iter_mut(Axis(0)).enumerate() {
        lcab.iter_mut().for_each(|v| *v = ninf);
        let (a_t, b_t) = (
            &alpha[t * s_len..(t + 1) * s_len],
            &beta[t * s_len..(t + 1) * s_len],
        );
        for s in 0..s_len {
            let ab = a_t[s] + b_t[s];
            if ab != ninf {
                lcab[ext[s]] = lse2(lcab[ext[s]], ab);
            }
        }
        let lp_t = &lpv[t * c..(t + 1) * c];
        for (k, g) in g_row.iter_mut().enumerate() {
            let l = lp_t[k];
            let exact = if lcab[k] == ninf {
                F::zero()
            } else {
                -(lcab[k] - l - ll).exp()
            };
            *g = match kind {
                GradKind::Exact => exact,
                GradKind::Torch => exact + l.exp(),
            };
        }
    }
    Sample {
        loss,
        grad: Some(grad),
    }
}

/// Log-softmax of one row, in place.
fn log_softmax_in_place<F: Float>(row: &mut [F]) {
    let m = row.iter().copied().fold(F::neg_infinity(), F::max);
    if !m.is_finite() {
        return;
    }
    let z: F = row.iter().map(|&v| (v - m).exp()).sum();
    let lz = m + z.ln();
    row.iter_mut().for_each(|v| *v -= lz);
}

/// Log-softmax over the last axis of any tensor.
#[cfg(test)]
fn log_softmax_last<F: Float>(x: &Tensor<F>) -> Tensor<F> {
    let mut out = x.to_owned();
    let last = out.ndim().saturating_sub(1);
    if out.ndim() == 0 {
        return out;
    }
    for mut lane in out.lanes_mut(Axis(last)) {
        let m = lane.iter().copied().fold(F::neg_infinity(), F::max);
        if !m.is_finite() {
            continue;
        }
        let z: F = lane.iter().map(|&v| (v - m).exp()).sum();
        let lz = m + z.ln();
        lane.mapv_inplace(|v| v - lz);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::from_vec;

    fn uniform(t: usize, n: usize, c: usize) -> Tensor<f64> {
        from_vec(&[t, n, c], vec![-(c as f64).ln(); t * n * c]).unwrap()
    }

    #[test]
    fn single_frame_single_label() {
        // p(label 1) = 0.5 at the only frame: loss = ln 2.
        let lp = uniform(1, 1, 2);
        let loss = CtcLoss::new(0)
            .with_reduction(CtcReduction::Sum)
            .forward(&lp, &[vec![1]], &[1])
            .unwrap();
        assert!((loss - 2f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn counts_paths_on_uniform_input() {
        // T=3, C=3, target [1]: alignments of "1" in 3 frames over {0,1}:
        // paths matching (blank* 1+ blank*) = 6 of 27.
        let lp = uniform(3, 1, 3);
        let l = CtcLoss::new(0)
            .with_reduction(CtcReduction::Sum)
            .forward(&lp, &[vec![1]], &[3])
            .unwrap();
        assert!((l - (27.0f64 / 6.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn errors_on_bad_inputs() {
        let lp = uniform(3, 1, 3);
        let ctc = CtcLoss::default();
        assert!(ctc.forward(&lp, &[vec![3]], &[3]).is_err());
        assert!(ctc.forward(&lp, &[vec![0]], &[3]).is_err());
        assert!(ctc.forward(&lp, &[vec![1]], &[4]).is_err());
        assert!(ctc.forward(&lp, &[vec![1], vec![1]], &[3]).is_err());
        assert!(ctc.forward(&lp, &[vec![1]], &[3, 3]).is_err());
        assert!(CtcLoss::new(3).forward(&lp, &[vec![1]], &[3]).is_err());
        let flat = from_vec(&[3, 3], vec![0.0; 9]).unwrap();
        assert!(ctc.forward(&flat, &[vec![1]], &[3]).is_err());
    }

    #[test]
    fn infeasible_is_inf_or_zero() {
        let lp = uniform(1, 1, 3);
        let ctc = CtcLoss::new(0).with_reduction(CtcReduction::Sum);
        assert!(ctc.forward(&lp, &[vec![1, 2]], &[1]).unwrap().is_infinite());
        let zi = ctc.with_zero_infinity(true);
        assert_eq!(zi.forward(&lp, &[vec![1, 2]], &[1]).unwrap(), 0.0);
        let g = zi.backward(&lp, &[vec![1, 2]], &[1]).unwrap();
        assert!(g.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn nonzero_blank_index() {
        // blank = 2 with labels {0, 1} is a relabelling of blank = 0.
        let lp0: Tensor<f64> =
            from_vec(&[2, 1, 3], vec![-1.0, -2.0, -0.5, -0.3, -1.5, -2.5]).unwrap();
        let lp0 = log_softmax_last(&lp0);
        // move column 0 (blank) to column 2
        let mut lp2 = lp0.clone();
        for t in 0..2 {
            lp2[[t, 0, 2]] = lp0[[t, 0, 0]];
            lp2[[t, 0, 0]] = lp0[[t, 0, 1]];
            lp2[[t, 0, 1]] = lp0[[t, 0, 2]];
        }
        let a = CtcLoss::new(0).forward(&lp0, &[vec![1]], &[2]).unwrap();
        let b = CtcLoss::new(2).forward(&lp2, &[vec![0]], &[2]).unwrap();
        assert!((a - b).abs() < 1e-12);
    }
}
