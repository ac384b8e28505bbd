//! SSD detection output (as Caffe's `DetectionOutput` / ssd.pytorch's
//! `Detect`): decode locations against the priors, softmax the class
//! logits, and per class keep scores above a threshold, at most
//! `nms_top_k` candidates, non-maximum suppressed at an IoU; then keep the
//! `keep_top_k` best detections per image.

use kiln_nn::{Float, Tensor};
use serde::{Deserialize, Serialize};

use crate::boxes::{decode, BBox, Prior, DEFAULT_VARIANCES};
use crate::error::{Error, Result};

/// One detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Index of the image in the batch.
    pub image: usize,
    /// Foreground class index (model label minus one: 0 is the first real class).
    pub class: usize,
    /// Softmax score.
    pub score: f32,
    /// Box in normalised corners (multiply by the image size for pixels).
    pub bbox: BBox,
}

impl Detection {
    /// The box in VOC 1-based pixel coordinates for a `width x height`
    /// image (`xmin * w + 1, ymin * h + 1, xmax * w, ymax * h`), clipped to the image.
    pub fn voc_box(&self, width: usize, height: usize) -> BBox {
        let (w, h) = (width as f32, height as f32);
        let b = self.bbox.clip(1.0, 1.0);
        BBox::new(b.xmin * w + 1.0, b.ymin * h + 1.0, b.xmax * w, b.ymax * h)
    }
}

/// Detection output settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectConfig {
    /// Classes including background (class 0, never output).
    pub num_classes: usize,
    /// Minimum score (0.01).
    pub conf_threshold: f32,
    /// NMS IoU (0.45).
    pub nms_threshold: f32,
    /// Candidates per class before NMS (`None`: all).
    pub nms_top_k: Option<usize>,
    /// Detections kept per image (200).
    pub keep_top_k: usize,
    /// Decoding variances.
    pub variances: [f32; 4],
}

impl DetectConfig {
    /// SSD's evaluation settings: threshold 0.01, NMS 0.45, 400 candidates, keep 200.
    pub fn new(num_classes: usize) -> Self {
        DetectConfig {
            num_classes,
            conf_threshold: 0.01,
            nms_threshold: 0.45,
            nms_top_k: Some(400),
            keep_top_k: 200,
            variances: DEFAULT_VARIANCES,
        }
    }
}

/// Greedy non-maximum suppression: indices of `boxes` kept, best score
/// first; a box is dropped when its IoU with a kept box exceeds `threshold`.
pub fn nms(boxes: &[BBox], scores: &[f32], threshold: f32, top_k: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if let Some(k) = top_k {
        order.truncate(k);
    }
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| boxes[k].iou(&boxes[i]) <= threshold) {
            keep.push(i);
        }
    }
    keep
}

/// Softmax over the last axis of a `[P, C]` row-major slice, row by row.
fn softmax_rows<F: Float>(x: &[F], c: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let m = row.iter().copied().fold(F::neg_infinity(), F::max);
        let e: Vec<f64> = row.iter().map(|&v| (v - m).as_f64().exp()).collect();
        let z: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / z) as f32));
    }
    out
}

/// Detections for a batch from `loc` `[N, P, 4]` and class logits `conf`
/// `[N, P, C]`, sorted per image by descending score.
pub fn detect<F: Float>(
    loc: &Tensor<F>,
    conf: &Tensor<F>,
    priors: &[Prior],
    cfg: &DetectConfig,
) -> Result<Vec<Detection>> {
    let op = "detect";
    let p = priors.len();
    let c = cfg.num_classes;
    if loc.ndim() != 3 || loc.shape()[1] != p || loc.shape()[2] != 4 {
        return Err(Error::shape(op, format!("loc [N, {p}, 4]"), loc.shape()));
    }
    let n = loc.shape()[0];
    if conf.shape() != [n, p, c] {
        return Err(Error::shape(
            op,
            format!("conf [{n}, {p}, {c}]"),
            conf.shape(),
        ));
    }
    let loc = loc.as_standard_layout();
    let conf = conf.as_standard_layout();
    let (Some(loc_s), Some(conf_s)) = (loc.as_slice(), conf.as_slice()) else {
        return Err(Error::invalid(op, "non-contiguous input"));
    };
    let mut out = Vec::new();
    for b in 0..n {
        let boxes: Vec<BBox> = (0..p)
            .map(|j| {
                let l = &loc_s[(b * p + j) * 4..(b * p + j + 1) * 4];
                let l = [l[0], l[1], l[2], l[3]].map(|v| v.as_f64() as f32);
                decode(l, &priors[j], cfg.variances)
            })
            .collect();
        let scores = softmax_rows(&conf_s[b * p * c..(b + 1) * p * c], c);
        let mut dets = Vec::new();
        for class in 1..c {
            let cand: Vec<usize> = (0..p)
                .filter(|&j| scores[j * c + class] > cfg.conf_threshold)
                .collect();
            let cb: Vec<BBox> = cand.iter().map(|&j| boxes[j]).collect();
            let cs: Vec<f32> = cand.iter().map(|&j| scores[j * c + class]).collect();
            for k in nms(&cb, &cs, cfg.nms_threshold, cfg.nms_top_k) {
                dets.push(Detection {
                    image: b,
                    class: class - 1,
                    score: cs[k],
                    bbox: cb[k],
                });
            }
        }
        dets.sort_by(|a, b| b.score.total_cmp(&a.score));
        dets.truncate(cfg.keep_top_k);
        out.extend(dets);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::encode;

    #[test]
    fn nms_suppresses_overlaps() {
        let boxes = [
            BBox::new(0.0, 0.0, 1.0, 1.0),
            BBox::new(0.05, 0.0, 1.05, 1.0),
            BBox::new(2.0, 2.0, 3.0, 3.0),
            BBox::new(0.5, 0.0, 1.5, 1.0),
        ];
        let keep = nms(&boxes, &[0.9, 0.95, 0.5, 0.6], 0.45, None);
        // Box 1 wins; box 0 overlaps it at 0.9 (dropped); box 3 at IoU 0.55/1.45 = 0.38 (kept).
        assert_eq!(keep, vec![1, 3, 2]);
        assert_eq!(nms(&boxes, &[0.9, 0.95, 0.5, 0.6], 0.45, Some(1)), vec![1]);
    }

    #[test]
    fn detect_decodes_thresholds_and_keeps_top_k() {
        let priors = [
            Prior {
                cx: 0.25,
                cy: 0.25,
                w: 0.5,
                h: 0.5,
            },
            Prior {
                cx: 0.45,
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
        ];
        let target = BBox::new(0.1, 0.1, 0.5, 0.4);
        let mut loc = vec![0f32; 12];
        loc[..4].copy_from_slice(&encode(&target, &priors[0], DEFAULT_VARIANCES));
        let loc = Tensor::from_shape_vec(ndarray::IxDyn(&[1, 3, 4]), loc).unwrap();
        // 3 classes; prior 0 strongly class 1, prior 1 class 1 weaker, prior 2 class 2.
        let conf = Tensor::from_shape_vec(
            ndarray::IxDyn(&[1, 3, 3]),
            vec![0.0f32, 5.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 4.0],
        )
        .unwrap();
        let mut cfg = DetectConfig::new(3);
        cfg.conf_threshold = 0.2;
        let d = detect(&loc, &conf, &priors, &cfg).unwrap();
        // Class-1 boxes: prior 0 decodes to `target`, prior 1 to its own box
        // (IoU with target 0.09 / 0.28 = 0.32 < 0.45, kept); class 2: prior 2. Low scores (< 0.2) dropped.
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].class, d[1].class, d[2].class), (0, 1, 0));
        for (x, y) in d[0].bbox.to_array().iter().zip(target.to_array()) {
            assert!((x - y).abs() < 1e-5);
        }
        assert!(d[0].score > d[1].score && d[1].score > d[2].score);
        cfg.keep_top_k = 2;
        assert_eq!(detect(&loc, &conf, &priors, &cfg).unwrap().len(), 2);
        let px = d[0].voc_box(100, 50);
        assert!((px.xmin - 11.0).abs() < 1e-4 && (px.ymax - 20.0).abs() < 1e-4);
    }
}
