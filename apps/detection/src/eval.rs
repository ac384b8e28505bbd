//! PASCAL VOC detection metric, with exactly the devkit's rules
//! (`voc_eval.py`): per class, detections sorted by descending score are
//! greedily matched to the not-yet-matched ground truth of their image with
//! the highest IoU, using the devkit's +1 pixel convention for 1-based
//! inclusive boxes; IoU > 0.5 with a non-difficult gt is a true positive, a
//! second match of the same gt a false positive (duplicate), a match of a
//! difficult gt neither; anything else is a false positive. AP is the
//! VOC2007 11-point interpolation or the VOC2010+ area under the
//! monotone precision envelope.
//!
//! Also the detections text format `<image-id> <class> <score> <xmin> <ymin>
//! <xmax> <ymax>` (VOC 1-based pixel coordinates) and [`score`], which scores
//! such a file against a VOC split.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::boxes::BBox;
use crate::error::{Error, Result};
use crate::voc::{Annotation, VocDataset};

/// Which AP interpolation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// VOC2007: mean of the interpolated precision at recall 0, 0.1, ..., 1.
    #[default]
    Voc07,
    /// VOC2010+: area under the monotone precision envelope (all points).
    Area,
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "voc07" | "11point" => Ok(Metric::Voc07),
            "area" | "voc10" => Ok(Metric::Area),
            _ => Err(Error::config(
                "metric",
                format!("{s:?} is not voc07 or area"),
            )),
        }
    }
}

/// IoU with the devkit's +1 convention (1-based inclusive pixel boxes).
pub fn voc_iou(a: &BBox, b: &BBox) -> f64 {
    let iw = f64::from(a.xmax.min(b.xmax)) - f64::from(a.xmin.max(b.xmin)) + 1.0;
    let ih = f64::from(a.ymax.min(b.ymax)) - f64::from(a.ymin.max(b.ymin)) + 1.0;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let area = |x: &BBox| {
        (f64::from(x.xmax) - f64::from(x.xmin) + 1.0)
            * (f64::from(x.ymax) - f64::from(x.ymin) + 1.0)
    };
    let inter = iw * ih;
    inter / (area(a) + area(b) - inter)
}

/// A ground-truth box of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GtBox {
    /// Box in 1-based inclusive pixels.
    pub bbox: BBox,
    /// Difficult objects are neither required nor penalised.
    pub difficult: bool,
}

/// A scored detection of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoredBox {
    /// Index of the image (into the ground-truth list).
    pub image: usize,
    /// Confidence.
    pub score: f32,
    /// Box in 1-based inclusive pixels.
    pub bbox: BBox,
}

/// Counts and AP of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    /// Class name.
    pub class: String,
    /// Average precision (0 when the class has no non-difficult gt).
    pub ap: f64,
    /// Non-difficult ground-truth objects.
    pub num_gt: usize,
    /// Detections.
    pub num_det: usize,
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
}

/// AP from a precision/recall curve (recall ascending, as the devkit's `voc_ap`).
pub fn ap_from_curve(rec: &[f64], prec: &[f64], metric: Metric) -> f64 {
    match metric {
        Metric::Voc07 => {
            let mut ap = 0.0;
            for i in 0..=10 {
                // np.arange(0., 1.1, 0.1) computes i * 0.1 (so 0.30000000000000004).
                let t = i as f64 * 0.1;
                let p = rec
                    .iter()
                    .zip(prec)
                    .filter(|(r, _)| **r >= t)
                    .map(|(_, p)| *p)
                    .fold(0.0, f64::max);
                ap += p / 11.0;
            }
            ap
        }
        Metric::Area => {
            let mut mrec = vec![0.0];
            mrec.extend_from_slice(rec);
            mrec.push(1.0);
            let mut mpre = vec![0.0];
            mpre.extend_from_slice(prec);
            mpre.push(0.0);
            for i in (0..mpre.len() - 1).rev() {
                mpre[i] = mpre[i].max(mpre[i + 1]);
            }
            (0..mrec.len() - 1)
                .filter(|&i| mrec[i + 1] != mrec[i])
                .map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1])
                .sum()
        }
    }
}

/// AP of one class: `gts[image]` are that class's gt boxes per image.
/// Detections referring to an image beyond `gts` are false positives.
pub fn average_precision(
    class: &str,
    gts: &[Vec<GtBox>],
    dets: &[ScoredBox],
    metric: Metric,
) -> ClassAp {
    let num_gt = gts.iter().flatten().filter(|g| !g.difficult).count();
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    let mut used: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.len()]).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut rec = Vec::new();
    let mut prec = Vec::new();
    for &d in &order {
        let det = &dets[d];
        let mut best = (f64::NEG_INFINITY, None);
        if let Some(g) = gts.get(det.image) {
            for (j, gt) in g.iter().enumerate() {
                let o = voc_iou(&det.bbox, &gt.bbox);
                if o > best.0 {
                    best = (o, Some(j));
                }
            }
        }
        match best {
            (o, Some(j)) if o > 0.5 => {
                if gts[det.image][j].difficult {
                    continue;
                }
                if used[det.image][j] {
                    fp += 1;
                } else {
                    used[det.image][j] = true;
                    tp += 1;
                }
            }
            _ => fp += 1,
        }
        rec.push(if num_gt > 0 {
            tp as f64 / num_gt as f64
        } else {
            0.0
        });
        prec.push(tp as f64 / (tp + fp).max(1) as f64);
    }
    let ap = if num_gt > 0 {
        ap_from_curve(&rec, &prec, metric)
    } else {
        0.0
    };
    ClassAp {
        class: class.to_string(),
        ap,
        num_gt,
        num_det: dets.len(),
        tp,
        fp,
    }
}

/// A detection as written in a detections file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDetection {
    /// Image id.
    pub image_id: String,
    /// Class name.
    pub class: String,
    /// Confidence.
    pub score: f32,
    /// Box in VOC 1-based pixel coordinates.
    pub bbox: BBox,
}

/// Parses detections text (`path` names the file in errors); blank lines
/// and `#` comments are skipped.
pub fn parse_detections(text: &str, path: &Path) -> Result<Vec<FileDetection>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        if f.len() != 7 {
            return Err(Error::line(
                path,
                i + 1,
                format!("expected 7 fields `<image-id> <class> <score> <xmin> <ymin> <xmax> <ymax>`, got {}", f.len()),
            ));
        }
        let mut nums = [0f32; 5];
        for (k, v) in f[2..].iter().enumerate() {
            nums[k] = v
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    Error::line(
                        path,
                        i + 1,
                        format!("field {} is not a finite number: {v:?}", k + 3),
                    )
                })?;
        }
        out.push(FileDetection {
            image_id: f[0].to_string(),
            class: f[1].to_string(),
            score: nums[0],
            bbox: BBox::new(nums[1], nums[2], nums[3], nums[4]),
        });
    }
    Ok(out)
}

/// Converts model detections ([`crate::detect::Detection`], normalised boxes)
/// to file detections: `ids[d.image]` names the image, `sizes[d.image]` is
/// its `(width, height)` in pixels and `classes[d.class]` the class name.
pub fn to_file_detections(
    dets: &[crate::detect::Detection],
    ids: &[String],
    sizes: &[(usize, usize)],
    classes: &[String],
) -> Result<Vec<FileDetection>> {
    dets.iter()
        .map(|d| {
            let (Some(id), Some(&(w, h)), Some(class)) =
                (ids.get(d.image), sizes.get(d.image), classes.get(d.class))
            else {
                return Err(Error::invalid(
                    "to_file_detections",
                    format!(
                        "detection of image {} class {} outside {} images / {} classes",
                        d.image,
                        d.class,
                        ids.len().min(sizes.len()),
                        classes.len()
                    ),
                ));
            };
            Ok(FileDetection {
                image_id: id.clone(),
                class: class.clone(),
                score: d.score,
                bbox: d.voc_box(w, h),
            })
        })
        .collect()
}

/// Reads a detections file.
pub fn read_detections(path: &Path) -> Result<Vec<FileDetection>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_detections(&text, path)
}

/// Formats detections, one line each.
pub fn format_detections(dets: &[FileDetection]) -> String {
    let mut s = String::new();
    for d in dets {
        let b = d.bbox;
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "{} {} {:.6} {:.1} {:.1} {:.1} {:.1}",
            d.image_id, d.class, d.score, b.xmin, b.ymin, b.xmax, b.ymax
        );
    }
    s
}

/// Writes a detections file.
pub fn write_detections(path: &Path, dets: &[FileDetection]) -> Result<()> {
    std::fs::write(path, format_detections(dets)).map_err(|e| Error::io(path, e))
}

/// Per-class AP and mAP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The interpolation used.
    pub metric: Metric,
    /// One entry per class, in class-list order.
    pub classes: Vec<ClassAp>,
    /// Mean AP over classes with at least one non-difficult gt.
    pub map: f64,
}

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Json {
            what: "mAP report".into(),
            reason: e.to_string(),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.classes {
            writeln!(
                f,
                "{:<16} AP {:.4}  (gt {}, det {})",
                c.class, c.ap, c.num_gt, c.num_det
            )?;
        }
        write!(f, "mAP ({:?}) {:.4}", self.metric, self.map)
    }
}

/// Scores detections against annotations: `dets` name images by id and
/// classes by name; unknown ids or classes are errors naming `source` (the
/// detections file) and the detection's position.
pub fn evaluate(
    annotations: &[Annotation],
    classes: &[String],
    dets: &[FileDetection],
    metric: Metric,
    source: &Path,
) -> Result<Report> {
    let image_index: HashMap<&str, usize> = annotations
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id.as_str(), i))
        .collect();
    let mut per_class: Vec<Vec<ScoredBox>> = vec![Vec::new(); classes.len()];
    for (k, d) in dets.iter().enumerate() {
        let image = *image_index.get(d.image_id.as_str()).ok_or_else(|| {
            Error::line(
                source,
                k + 1,
                format!("image {:?} is not in the split", d.image_id),
            )
        })?;
        let class = classes
            .iter()
            .position(|c| *c == d.class)
            .ok_or_else(|| Error::line(source, k + 1, format!("unknown class {:?}", d.class)))?;
        per_class[class].push(ScoredBox {
            image,
            score: d.score,
            bbox: d.bbox,
        });
    }
    let mut out = Vec::with_capacity(classes.len());
    for (c, name) in classes.iter().enumerate() {
        let gts: Vec<Vec<GtBox>> = annotations
            .iter()
            .map(|a| {
                a.objects
                    .iter()
                    .filter(|o| o.class == c)
                    .map(|o| GtBox {
                        bbox: o.bbox,
                        difficult: o.difficult,
                    })
                    .collect()
            })
            .collect();
        out.push(average_precision(name, &gts, &per_class[c], metric));
    }
    let with_gt: Vec<f64> = out.iter().filter(|c| c.num_gt > 0).map(|c| c.ap).collect();
    let map = if with_gt.is_empty() {
        0.0
    } else {
        with_gt.iter().sum::<f64>() / with_gt.len() as f64
    };
    Ok(Report {
        metric,
        classes: out,
        map,
    })
}

/// Scores the detections file `detections` against split `split` of the VOC
/// dataset at `voc_dir` (classes from its `classes.txt`, else VOC's 20).
pub fn score(voc_dir: &Path, split: &str, detections: &Path, metric: Metric) -> Result<Report> {
    let ds = VocDataset::open(voc_dir, split, None)?;
    let annotations = ds.annotations()?;
    let text = std::fs::read_to_string(detections).map_err(|e| Error::io(detections, e))?;
    // Map detection positions back to file lines for errors.
    let dets = parse_detections(&text, detections)?;
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .map(|(i, _)| i + 1)
        .collect();
    evaluate(&annotations, &ds.classes, &dets, metric, detections).map_err(|e| match e {
        Error::Line { path, line, reason } => Error::Line {
            line: lines.get(line - 1).copied().unwrap_or(line),
            path,
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x0: f32, y0: f32, x1: f32, y1: f32) -> BBox {
        BBox::new(x0, y0, x1, y1)
    }

    fn gt(bb: BBox) -> GtBox {
        GtBox {
            bbox: bb,
            difficult: false,
        }
    }

    fn det(image: usize, score: f32, bbox: BBox) -> ScoredBox {
        ScoredBox { image, score, bbox }
    }

    #[test]
    fn voc_iou_uses_plus_one() {
        // Areas 10x10 = 100 and 10x5 = 50 with the +1 convention; overlap 50: IoU exactly 0.5.
        assert_eq!(
            voc_iou(&b(1.0, 1.0, 10.0, 10.0), &b(1.0, 1.0, 10.0, 5.0)),
            0.5
        );
        // ... which is not > 0.5, so a false positive.
        let r = average_precision(
            "x",
            &[vec![gt(b(1.0, 1.0, 10.0, 10.0))]],
            &[det(0, 0.9, b(1.0, 1.0, 10.0, 5.0))],
            Metric::Area,
        );
        assert_eq!((r.tp, r.fp, r.ap), (0, 1, 0.0));
    }

    #[test]
    fn perfect_set_has_ap_one() {
        let gts = vec![
            vec![gt(b(1.0, 1.0, 20.0, 20.0))],
            vec![gt(b(5.0, 5.0, 30.0, 40.0)), gt(b(50.0, 50.0, 60.0, 60.0))],
        ];
        let dets = [
            det(0, 0.9, b(1.0, 1.0, 20.0, 20.0)),
            det(1, 0.8, b(5.0, 5.0, 30.0, 40.0)),
            det(1, 0.7, b(50.0, 50.0, 60.0, 60.0)),
        ];
        for m in [Metric::Voc07, Metric::Area] {
            let r = average_precision("x", &gts, &dets, m);
            assert!((r.ap - 1.0).abs() < 1e-12, "{m:?}: {}", r.ap);
        }
    }

    #[test]
    fn a_miss_halves_recall() {
        // 2 gts, 1 found: rec 0.5 at prec 1. Area: 0.5; 11-point: t = 0..0.5 (6 points) -> 6/11.
        let gts = vec![vec![
            gt(b(1.0, 1.0, 20.0, 20.0)),
            gt(b(40.0, 40.0, 60.0, 60.0)),
        ]];
        let dets = [det(0, 0.9, b(1.0, 1.0, 20.0, 20.0))];
        assert!((average_precision("x", &gts, &dets, Metric::Area).ap - 0.5).abs() < 1e-12);
        assert!((average_precision("x", &gts, &dets, Metric::Voc07).ap - 6.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn a_duplicate_is_a_false_positive() {
        // 1 gt, 2 detections on it: TP then FP. Recall reaches 1 at precision 1 -> AP 1,
        // but a duplicate ranked first costs: FP then TP -> prec 0.5 at rec 1 -> AP 0.5.
        let gts = vec![vec![gt(b(1.0, 1.0, 20.0, 20.0))]];
        let r = average_precision(
            "x",
            &gts,
            &[
                det(0, 0.9, b(1.0, 1.0, 20.0, 20.0)),
                det(0, 0.8, b(2.0, 1.0, 20.0, 20.0)),
            ],
            Metric::Area,
        );
        assert_eq!((r.tp, r.fp), (1, 1));
        assert!((r.ap - 1.0).abs() < 1e-12);
        let r = average_precision(
            "x",
            &gts,
            &[
                det(0, 0.7, b(1.0, 1.0, 20.0, 20.0)),
                det(0, 0.8, b(100.0, 100.0, 120.0, 120.0)),
            ],
            Metric::Area,
        );
        assert!((r.ap - 0.5).abs() < 1e-12);
    }

    #[test]
    fn difficult_is_neither_tp_nor_fp() {
        let gts = vec![vec![
            gt(b(1.0, 1.0, 20.0, 20.0)),
            GtBox {
                bbox: b(40.0, 40.0, 60.0, 60.0),
                difficult: true,
            },
        ]];
        // The top detection hits the difficult object: ignored, so AP stays 1.
        let dets = [
            det(0, 0.95, b(40.0, 40.0, 60.0, 60.0)),
            det(0, 0.9, b(1.0, 1.0, 20.0, 20.0)),
        ];
        let r = average_precision("x", &gts, &dets, Metric::Voc07);
        assert_eq!((r.num_gt, r.tp, r.fp), (1, 1, 0));
        assert!((r.ap - 1.0).abs() < 1e-12);
    }

    #[test]
    fn mixed_case_hand_computed() {
        // 4 gts over 2 images. Detections by score: TP, FP (background), TP, FP (duplicate), TP.
        // cum tp 1,1,2,2,3; fp 0,1,1,2,2; rec .25,.25,.5,.5,.75; prec 1,.5,2/3,.5,.6.
        // 11-point: t=0,.1,.2 -> 1; t=.3,.4,.5 -> 2/3; t=.6,.7 -> .6; t=.8,.9,1 -> 0:
        //   (3 + 2 + 1.2) / 11 = 6.2 / 11 = 0.563636...
        // Area: envelope 1,2/3,2/3,.6,.6 -> .25*1 + .25*2/3 + .25*.6 = 0.566666...
        let gts = vec![
            vec![gt(b(1.0, 1.0, 20.0, 20.0)), gt(b(30.0, 30.0, 50.0, 50.0))],
            vec![gt(b(1.0, 1.0, 40.0, 40.0)), gt(b(60.0, 60.0, 80.0, 80.0))],
        ];
        let dets = [
            det(0, 0.9, b(1.0, 1.0, 20.0, 20.0)),
            det(1, 0.8, b(100.0, 100.0, 120.0, 120.0)),
            det(1, 0.7, b(2.0, 2.0, 40.0, 40.0)),
            det(0, 0.6, b(1.0, 2.0, 20.0, 20.0)),
            det(0, 0.5, b(30.0, 30.0, 50.0, 49.0)),
        ];
        let r = average_precision("x", &gts, &dets, Metric::Voc07);
        assert!((r.ap - 6.2 / 11.0).abs() < 1e-12, "{}", r.ap);
        let r = average_precision("x", &gts, &dets, Metric::Area);
        assert!(
            (r.ap - (0.25 + 0.25 * 2.0 / 3.0 + 0.15)).abs() < 1e-12,
            "{}",
            r.ap
        );
    }

    #[test]
    fn model_detections_convert_to_voc_pixels() {
        let d = crate::detect::Detection {
            image: 1,
            class: 0,
            score: 0.5,
            bbox: b(0.1, 0.2, 0.5, 1.0),
        };
        let ids = vec!["a".to_string(), "b".to_string()];
        let f =
            to_file_detections(&[d], &ids, &[(10, 10), (100, 50)], &["star".to_string()]).unwrap();
        assert_eq!((f[0].image_id.as_str(), f[0].class.as_str()), ("b", "star"));
        assert_eq!(f[0].bbox, b(11.0, 11.0, 50.0, 50.0));
        assert!(to_file_detections(&[d], &ids[..1], &[(10, 10)], &["star".to_string()]).is_err());
    }

    #[test]
    fn detections_file_round_trip_and_errors() {
        let p = Path::new("dets.txt");
        let d = parse_detections(
            "# c\n000001 circle 0.5 1 2 30 40\n\n000002 star 0.25 3.5 4 5 6\n",
            p,
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].bbox, b(3.5, 4.0, 5.0, 6.0));
        assert_eq!(parse_detections(&format_detections(&d), p).unwrap(), d);
        let e = parse_detections("a b 0.5 1 2 3\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dets.txt:1"), "{e}");
        let e = parse_detections("\na b x 1 2 3 4\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dets.txt:2") && e.contains("field 3"), "{e}");
    }
}
