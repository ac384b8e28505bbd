//! SSD's MultiBox loss (as ssd.pytorch's `MultiBoxLoss`) with a
//! hand-written backward: smooth-L1 on the positives' locations plus softmax
//! cross-entropy on positives and hard-mined negatives (3:1), both divided
//! by the number of positives in the batch.

use kiln_nn::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::boxes::{match_priors, BBox, Prior, DEFAULT_VARIANCES};
use crate::error::{Error, Result};

/// MultiBox loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MultiBoxConfig {
    /// Number of classes including background (class 0).
    pub num_classes: usize,
    /// IoU at or above which a prior is positive.
    pub overlap_threshold: f32,
    /// Negatives kept per positive in hard negative mining.
    pub neg_pos_ratio: usize,
    /// Encoding variances.
    pub variances: [f32; 4],
}

impl MultiBoxConfig {
    /// SSD's defaults: threshold 0.5, 3:1 mining, variances 0.1/0.2.
    pub fn new(num_classes: usize) -> Self {
        MultiBoxConfig {
            num_classes,
            overlap_threshold: 0.5,
            neg_pos_ratio: 3,
            variances: DEFAULT_VARIANCES,
        }
    }
}

/// Matched training targets for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Encoded location targets, `[image][prior]`.
    pub loc: Vec<Vec<[f32; 4]>>,
    /// Class targets (0 = background), `[image][prior]`.
    pub labels: Vec<Vec<usize>>,
}

/// One image's ground truth: boxes (normalised corners) and labels in the
/// model's label space (1.., 0 is background).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Boxes in normalised corner form.
    pub boxes: Vec<BBox>,
    /// Labels, `1..num_classes`.
    pub labels: Vec<usize>,
}

/// The loss and its gradients.
#[derive(Debug, Clone)]
pub struct MultiBoxOutput<F: Float> {
    /// Location loss (smooth L1 over positives / #positives).
    pub loss_loc: F,
    /// Confidence loss (cross-entropy over positives and mined negatives / #positives).
    pub loss_conf: F,
    /// dLoss/dLoc, `[N, P, 4]`.
    pub grad_loc: Tensor<F>,
    /// dLoss/dConf, `[N, P, C]`.
    pub grad_conf: Tensor<F>,
    /// Positives in the batch.
    pub num_pos: usize,
}

impl<F: Float> MultiBoxOutput<F> {
    /// `loss_loc + loss_conf`.
    pub fn loss(&self) -> F {
        self.loss_loc + self.loss_conf
    }
}

/// Matches every image's ground truth to the priors.
pub fn encode_targets(
    gts: &[GroundTruth],
    priors: &[Prior],
    cfg: &MultiBoxConfig,
) -> Result<Targets> {
    let mut loc = Vec::with_capacity(gts.len());
    let mut labels = Vec::with_capacity(gts.len());
    for gt in gts {
        if let Some(&l) = gt.labels.iter().find(|&&l| l >= cfg.num_classes) {
            return Err(Error::invalid(
                "encode_targets",
                format!("label {l} >= num_classes {}", cfg.num_classes),
            ));
        }
        let m = match_priors(
            &gt.boxes,
            &gt.labels,
            priors,
            cfg.overlap_threshold,
            cfg.variances,
        )?;
        loc.push(m.loc);
        labels.push(m.labels);
    }
    Ok(Targets { loc, labels })
}

/// Per-prior softmax cross-entropy `logsumexp(x) - x[label]` of one row.
fn cross_entropy<F: Float>(row: &[F], label: usize) -> F {
    let m = row.iter().copied().fold(F::neg_infinity(), F::max);
    let lse = row.iter().map(|&v| (v - m).exp()).sum::<F>().ln() + m;
    lse - row[label]
}

/// Hard negative mining for one image: the `min(ratio * #pos, P - 1)`
/// priors with the largest background loss among non-positives (positives
/// rank with loss 0, as ssd.pytorch). `ce` is the per-prior cross-entropy.
pub fn mine_hard_negatives<F: Float>(ce: &[F], positive: &[bool], ratio: usize) -> Vec<bool> {
    let p = ce.len();
    let num_pos = positive.iter().filter(|&&b| b).count();
    let num_neg = (ratio * num_pos).min(p.saturating_sub(1));
    let key: Vec<F> = ce
        .iter()
        .zip(positive)
        .map(|(&c, &pos)| if pos { F::zero() } else { c })
        .collect();
    let mut idx: Vec<usize> = (0..p).collect();
    idx.sort_by(|&a, &b| {
        key[b]
            .partial_cmp(&key[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut neg = vec![false; p];
    for &i in idx.iter().take(num_neg) {
        neg[i] = true;
    }
    neg
}

/// The MultiBox loss of `loc` `[N, P, 4]` and `conf` logits `[N, P, C]`
/// against matched `targets`, with gradients w.r.t. both inputs (the mined
/// negatives are treated as constants, as ssd.pytorch's `no_grad` mining).
pub fn multibox_loss<F: Float>(
    loc: &Tensor<F>,
    conf: &Tensor<F>,
    targets: &Targets,
    cfg: &MultiBoxConfig,
) -> Result<MultiBoxOutput<F>> {
    let op = "multibox_loss";
    if loc.ndim() != 3 || loc.shape()[2] != 4 {
        return Err(Error::shape(op, "loc [N, P, 4]", loc.shape()));
    }
    let (n, p) = (loc.shape()[0], loc.shape()[1]);
    let c = cfg.num_classes;
    if conf.shape() != [n, p, c] {
        return Err(Error::shape(
            op,
            format!("conf [{n}, {p}, {c}]"),
            conf.shape(),
        ));
    }
    if targets.labels.len() != n
        || targets.loc.len() != n
        || targets.labels.iter().any(|l| l.len() != p)
        || targets.loc.iter().any(|l| l.len() != p)
    {
        return Err(Error::invalid(
            op,
            format!("targets are not {n} images x {p} priors"),
        ));
    }
    let loc = loc.as_standard_layout();
    let conf = conf.as_standard_layout();
    let (Some(loc_s), Some(conf_s)) = (loc.as_slice(), conf.as_slice()) else {
        return Err(Error::invalid(op, "non-contiguous input"));
    };
    let mut grad_loc = vec![F::zero(); n * p * 4];
    let mut grad_conf = vec![F::zero(); n * p * c];
    let mut loss_l = F::zero();
    let mut loss_c = F::zero();
    let mut total_pos = 0usize;
    for b in 0..n {
        let labels = &targets.labels[b];
        if let Some(&l) = labels.iter().find(|&&l| l >= c) {
            return Err(Error::invalid(
                op,
                format!("target label {l} >= {c} classes"),
            ));
        }
        let positive: Vec<bool> = labels.iter().map(|&l| l > 0).collect();
        total_pos += positive.iter().filter(|&&x| x).count();
        let rows = |j: usize| &conf_s[(b * p + j) * c..(b * p + j + 1) * c];
        let ce: Vec<F> = (0..p).map(|j| cross_entropy(rows(j), labels[j])).collect();
        let neg = mine_hard_negatives(&ce, &positive, cfg.neg_pos_ratio);
        for j in 0..p {
            if positive[j] {
                for k in 0..4 {
                    let at = (b * p + j) * 4 + k;
                    let d = loc_s[at] - F::of(f64::from(targets.loc[b][j][k]));
                    let ad = d.abs();
                    if ad < F::one() {
                        loss_l += F::of(0.5) * d * d;
                        grad_loc[at] = d;
                    } else {
                        loss_l += ad - F::of(0.5);
                        grad_loc[at] = d.signum();
                    }
                }
            }
            if positive[j] || neg[j] {
                loss_c += ce[j];
                let row = rows(j);
                let m = row.iter().copied().fold(F::neg_infinity(), F::max);
                let z: F = row.iter().map(|&v| (v - m).exp()).sum();
                for k in 0..c {
                    let s = (row[k] - m).exp() / z;
                    let onehot = if k == labels[j] { F::one() } else { F::zero() };
                    grad_conf[(b * p + j) * c + k] = s - onehot;
                }
            }
        }
    }
    let denom = F::of_usize(total_pos.max(1));
    for g in grad_loc.iter_mut().chain(grad_conf.iter_mut()) {
        *g /= denom;
    }
    Ok(MultiBoxOutput {
        loss_loc: loss_l / denom,
        loss_conf: loss_c / denom,
        grad_loc: kiln_nn::tensor::from_vec(&[n, p, 4], grad_loc)?,
        grad_conf: kiln_nn::tensor::from_vec(&[n, p, c], grad_conf)?,
        num_pos: total_pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let priors: Vec<Prior> = (0..12)
            .map(|i| Prior {
                cx: 0.1 + 0.07 * i as f32,
                cy: 0.5,
                w: 0.3,
                h: 0.4,
            })
            .collect();
        let gts = vec![
            GroundTruth {
                boxes: vec![BBox::new(0.1, 0.3, 0.4, 0.7)],
                labels: vec![2],
            },
            GroundTruth {
                boxes: vec![BBox::new(0.5, 0.2, 0.9, 0.8), BBox::new(0.0, 0.3, 0.2, 0.6)],
                labels: vec![1, 3],
            },
        ];
        let cfg = MultiBoxConfig::new(4);
        let t = encode_targets(&gts, &priors, &cfg).unwrap();
        let loc: Tensor<f64> =
            Tensor::from_shape_fn(ndarray::IxDyn(&[2, 12, 4]), |_| rng.random_range(-3.0..3.0));
        let conf: Tensor<f64> =
            Tensor::from_shape_fn(ndarray::IxDyn(&[2, 12, 4]), |_| rng.random_range(-2.0..2.0));
        let out = multibox_loss(&loc, &conf, &t, &cfg).unwrap();
        assert!(out.num_pos >= 3);
        let eps = 1e-6;
        for (x, g, is_loc) in [(&loc, &out.grad_loc, true), (&conf, &out.grad_conf, false)] {
            for i in 0..x.len() {
                let mut xp = x.clone();
                let mut xm = x.clone();
                let (sp, sm) = (xp.as_slice_mut().unwrap(), xm.as_slice_mut().unwrap());
                sp[i] += eps;
                sm[i] -= eps;
                let f = |v: &Tensor<f64>| {
                    let (l, cf) = if is_loc { (v, &conf) } else { (&loc, v) };
                    multibox_loss(l, cf, &t, &cfg).unwrap().loss()
                };
                let num = (f(&xp) - f(&xm)) / (2.0 * eps);
                let ana = g.as_slice().unwrap()[i];
                assert!((num - ana).abs() < 1e-6, "grad {i}: {num} vs {ana}");
            }
        }
    }

    #[test]
    fn mining_keeps_three_per_positive() {
        let ce = [0.5f64, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2];
        let pos = [false, true, false, false, false, false, false];
        let neg = mine_hard_negatives(&ce, &pos, 3);
        // Non-positive losses in order: 0.8 (5), 0.7 (3), 0.5 (0) are the 3 hardest.
        assert_eq!(neg, vec![true, false, false, true, false, true, false]);
    }
}
