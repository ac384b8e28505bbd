//! Box geometry: corner and centre-size boxes, IoU (jaccard), SSD box
//! encoding with variances, and ground-truth-to-prior matching as in
//! ssd.pytorch's `match`.
//!
//! Boxes here are continuous (no +1 pixel convention): for normalised SSD
//! coordinates in `[0, 1]` and for continuous pixel coordinates alike. The
//! VOC devkit's 1-based inclusive convention lives in [`crate::eval`].

use serde::{Deserialize, Serialize};

/// A box in corner form `(xmin, ymin, xmax, ymax)`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge.
    pub xmin: f32,
    /// Top edge.
    pub ymin: f32,
    /// Right edge.
    pub xmax: f32,
    /// Bottom edge.
    pub ymax: f32,
}

impl BBox {
    /// A box from its corners.
    pub fn new(xmin: f32, ymin: f32, xmax: f32, ymax: f32) -> Self {
        BBox {
            xmin,
            ymin,
            xmax,
            ymax,
        }
    }

    /// Width (`xmax - xmin`, may be negative for an invalid box).
    pub fn width(&self) -> f32 {
        self.xmax - self.xmin
    }

    /// Height (`ymax - ymin`).
    pub fn height(&self) -> f32 {
        self.ymax - self.ymin
    }

    /// Area, 0 for an empty or inverted box.
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// Centre `(cx, cy)`.
    pub fn center(&self) -> (f32, f32) {
        ((self.xmin + self.xmax) / 2.0, (self.ymin + self.ymax) / 2.0)
    }

    /// Intersection area with `other`.
    pub fn intersection(&self, other: &BBox) -> f32 {
        let w = (self.xmax.min(other.xmax) - self.xmin.max(other.xmin)).max(0.0);
        let h = (self.ymax.min(other.ymax) - self.ymin.max(other.ymin)).max(0.0);
        w * h
    }

    /// Intersection over union with `other` (0 when both are empty).
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    /// The box as `[xmin, ymin, xmax, ymax]`.
    pub fn to_array(&self) -> [f32; 4] {
        [self.xmin, self.ymin, self.xmax, self.ymax]
    }

    /// The box clipped to `[0, w] x [0, h]`.
    pub fn clip(&self, w: f32, h: f32) -> BBox {
        BBox::new(
            self.xmin.clamp(0.0, w),
            self.ymin.clamp(0.0, h),
            self.xmax.clamp(0.0, w),
            self.ymax.clamp(0.0, h),
        )
    }

    /// The box's corners scaled by `sx` horizontally and `sy` vertically.
    pub fn scale(&self, sx: f32, sy: f32) -> BBox {
        BBox::new(
            self.xmin * sx,
            self.ymin * sy,
            self.xmax * sx,
            self.ymax * sy,
        )
    }

    /// The box shifted by `(dx, dy)`.
    pub fn shift(&self, dx: f32, dy: f32) -> BBox {
        BBox::new(
            self.xmin + dx,
            self.ymin + dy,
            self.xmax + dx,
            self.ymax + dy,
        )
    }
}

/// A prior (default) box in centre-size form `(cx, cy, w, h)`, normalised.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prior {
    /// Centre x.
    pub cx: f32,
    /// Centre y.
    pub cy: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl Prior {
    /// The prior in corner form (ssd.pytorch's `point_form`).
    pub fn corners(&self) -> BBox {
        BBox::new(
            self.cx - self.w / 2.0,
            self.cy - self.h / 2.0,
            self.cx + self.w / 2.0,
            self.cy + self.h / 2.0,
        )
    }
}

/// SSD's variances: `[0.1, 0.1, 0.2, 0.2]` (centre, then size).
pub const DEFAULT_VARIANCES: [f32; 4] = [0.1, 0.1, 0.2, 0.2];

/// The IoU matrix `[a.len()][b.len()]` of two box lists.
pub fn iou_matrix(a: &[BBox], b: &[BBox]) -> Vec<Vec<f32>> {
    a.iter()
        .map(|x| b.iter().map(|y| x.iou(y)).collect())
        .collect()
}

/// Encodes a ground-truth box against a prior: `((gcx - pcx) / (v0 pw),
/// (gcy - pcy) / (v1 ph), ln(gw / pw) / v2, ln(gh / ph) / v3)`.
pub fn encode(gt: &BBox, prior: &Prior, variances: [f32; 4]) -> [f32; 4] {
    let (cx, cy) = gt.center();
    [
        (cx - prior.cx) / (variances[0] * prior.w),
        (cy - prior.cy) / (variances[1] * prior.h),
        (gt.width() / prior.w).ln() / variances[2],
        (gt.height() / prior.h).ln() / variances[3],
    ]
}

/// Decodes a location prediction against its prior (the inverse of [`encode`]).
pub fn decode(loc: [f32; 4], prior: &Prior, variances: [f32; 4]) -> BBox {
    let cx = prior.cx + loc[0] * variances[0] * prior.w;
    let cy = prior.cy + loc[1] * variances[1] * prior.h;
    let w = prior.w * (loc[2] * variances[2]).exp();
    let h = prior.h * (loc[3] * variances[3]).exp();
    BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
}

/// The matching of one image's ground truth to the priors.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// Encoded location target per prior (meaningful for positives only).
    pub loc: Vec<[f32; 4]>,
    /// Class target per prior: 0 for background, the gt label otherwise.
    pub labels: Vec<usize>,
}

/// Matches ground truth to priors as ssd.pytorch's `match`: each prior takes
/// the gt it overlaps most; it is positive when that IoU is at least
/// `threshold`; and every gt's best prior is forced positive for that gt
/// (later gts win a shared best prior). `labels` are the gt classes in the
/// model's label space (1.., since 0 is background). With no ground truth
/// every prior is background.
pub fn match_priors(
    gt: &[BBox],
    labels: &[usize],
    priors: &[Prior],
    threshold: f32,
    variances: [f32; 4],
) -> crate::Result<Matched> {
    if gt.len() != labels.len() {
        return Err(crate::Error::invalid(
            "match_priors",
            format!("{} boxes but {} labels", gt.len(), labels.len()),
        ));
    }
    if let Some(&l) = labels.iter().find(|&&l| l == 0) {
        return Err(crate::Error::invalid(
            "match_priors",
            format!("gt label {l} is the background class"),
        ));
    }
    let p = priors.len();
    if gt.is_empty() {
        return Ok(Matched {
            loc: vec![[0.0; 4]; p],
            labels: vec![0; p],
        });
    }
    let corners: Vec<BBox> = priors.iter().map(Prior::corners).collect();
    let ov = iou_matrix(gt, &corners);
    // Best prior per gt (first maximum, as torch's argmax).
    let best_prior: Vec<usize> = ov
        .iter()
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect();
    // Best gt per prior.
    let mut best_gt = vec![0usize; p];
    let mut best_ov = vec![0f32; p];
    for j in 0..p {
        let mut b = 0;
        for g in 1..gt.len() {
            if ov[g][j] > ov[b][j] {
                b = g;
            }
        }
        best_gt[j] = b;
        best_ov[j] = ov[b][j];
    }
    for &j in &best_prior {
        best_ov[j] = 2.0;
    }
    for (g, &j) in best_prior.iter().enumerate() {
        best_gt[j] = g;
    }
    let mut loc = Vec::with_capacity(p);
    let mut out_labels = Vec::with_capacity(p);
    for j in 0..p {
        let g = best_gt[j];
        loc.push(encode(&gt[g], &priors[j], variances));
        out_labels.push(if best_ov[j] < threshold { 0 } else { labels[g] });
    }
    Ok(Matched {
        loc,
        labels: out_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_hand_boxes() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        let b = BBox::new(1.0, 1.0, 3.0, 3.0);
        assert!((a.iou(&b) - 1.0 / 7.0).abs() < 1e-6);
        assert_eq!(a.iou(&BBox::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn encode_decode_round_trip() {
        let p = Prior {
            cx: 0.5,
            cy: 0.4,
            w: 0.2,
            h: 0.3,
        };
        let g = BBox::new(0.3, 0.2, 0.6, 0.7);
        let e = encode(&g, &p, DEFAULT_VARIANCES);
        // cx = 0.45: (0.45 - 0.5) / (0.1 * 0.2) = -2.5
        assert!((e[0] + 2.5).abs() < 1e-5);
        let d = decode(e, &p, DEFAULT_VARIANCES);
        for (x, y) in d.to_array().iter().zip(g.to_array()) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn match_forces_best_prior() {
        let priors = [
            Prior {
                cx: 0.25,
                cy: 0.25,
                w: 0.5,
                h: 0.5,
            },
            Prior {
                cx: 0.75,
                cy: 0.75,
                w: 0.5,
                h: 0.5,
            },
            Prior {
                cx: 0.5,
                cy: 0.5,
                w: 0.1,
                h: 0.1,
            },
        ];
        // A gt overlapping prior 0 by IoU 0.25 only: still matched by the best-prior rule.
        let gt = [BBox::new(0.0, 0.0, 0.25, 0.25)];
        let m = match_priors(&gt, &[3], &priors, 0.5, DEFAULT_VARIANCES).unwrap();
        assert_eq!(m.labels, vec![3, 0, 0]);
        assert!(match_priors(&gt, &[0], &priors, 0.5, DEFAULT_VARIANCES).is_err());
    }
}
