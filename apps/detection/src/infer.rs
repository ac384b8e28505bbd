//! Inference with a trained [`Ssd`]: batched detection on raw images,
//! VOC evaluation of a split (per-class AP and mAP through [`crate::eval`]),
//! and prediction on image files.

use std::path::{Path, PathBuf};

use kiln_nn::Float;
use ndarray::{Array3, Array4, ArrayD, Axis};
use rayon::prelude::*;

use crate::augment::{Sample, SsdAugment};
use crate::detect::{detect, DetectConfig, Detection};
use crate::error::{Error, Result};
use crate::eval::{self, FileDetection, Metric, Report};
use crate::model::Ssd;
use crate::voc::{load_annotated_image, load_image, Verified};

/// Stacks `[3, S, S]` images into one `[N, 3, S, S]` tensor.
pub fn stack_images<F: Float>(images: &[Array3<f32>], size: usize) -> Result<ArrayD<F>> {
    let mut out = Array4::<F>::zeros((images.len(), 3, size, size));
    for (mut dst, img) in out.axis_iter_mut(Axis(0)).zip(images) {
        if img.shape() != [3, size, size] {
            return Err(Error::shape(
                "stack_images",
                format!("[3, {size}, {size}]"),
                img.shape(),
            ));
        }
        dst.zip_mut_with(img, |d, &s| *d = F::of(f64::from(s)));
    }
    Ok(out.into_dyn())
}

/// The evaluation transform of every image (resize to the model's side and
/// subtract its mean), in parallel.
fn eval_inputs(model: &Ssd<f32>, images: Vec<Array3<f32>>) -> Result<Vec<Array3<f32>>> {
    let aug = SsdAugment {
        mean: model.config().mean,
        ..SsdAugment::new(model.config().image_size())
    };
    images
        .into_par_iter()
        .map(|image| {
            aug.eval(Sample {
                image,
                boxes: Vec::new(),
                labels: Vec::new(),
            })
            .map(|s| s.image)
        })
        .collect()
}

/// Detections for raw RGB images (`[3, H, W]`, values `0..=255`, any
/// size), one list per image with normalised boxes; `Detection::image` is
/// the index into `images`. The model is switched to evaluation mode.
pub fn detect_images(
    model: &mut Ssd<f32>,
    images: Vec<Array3<f32>>,
    cfg: &DetectConfig,
) -> Result<Vec<Vec<Detection>>> {
    let n = images.len();
    let mut per_image = vec![Vec::new(); n];
    if n == 0 {
        return Ok(per_image);
    }
    model.set_training(false);
    let inputs = eval_inputs(model, images)?;
    let batch = stack_images::<f32>(&inputs, model.config().image_size())?;
    drop(inputs);
    let out = model.infer(batch)?;
    for d in detect(&out.loc, &out.conf, model.priors(), cfg)? {
        if let Some(list) = per_image.get_mut(d.image) {
            list.push(d);
        }
    }
    Ok(per_image)
}

/// Detection settings for a model: SSD's evaluation defaults with the
/// model's class count.
pub fn detect_config(model: &Ssd<f32>) -> DetectConfig {
    let mut cfg = DetectConfig::new(model.config().num_classes());
    cfg.variances = model.config().priors.variances;
    cfg
}

/// Runs the model over the verified split `split` in batches of
/// `batch_size` and scores the detections with the VOC devkit's rules.
/// Class names are matched by name between the model and the dataset.
pub fn evaluate(
    model: &mut Ssd<f32>,
    split: &Verified,
    metric: Metric,
    cfg: &DetectConfig,
    batch_size: usize,
) -> Result<Report> {
    let ds = &split.dataset;
    let annotations = &split.annotations;
    let mut dets: Vec<FileDetection> = Vec::new();
    let batch_size = batch_size.max(1);
    for (b, chunk) in annotations.chunks(batch_size).enumerate() {
        let images = chunk
            .par_iter()
            .map(|a| load_annotated_image(&ds.image_path(&a.id), a))
            .collect::<Result<Vec<_>>>()?;
        let ids: Vec<String> = chunk.iter().map(|a| a.id.clone()).collect();
        let sizes: Vec<(usize, usize)> = images
            .iter()
            .map(|im| (im.shape()[2], im.shape()[1]))
            .collect();
        let found = detect_images(model, images, cfg)?;
        let flat: Vec<Detection> = found.into_iter().flatten().collect();
        dets.extend(eval::to_file_detections(
            &flat,
            &ids,
            &sizes,
            &model.config().classes,
        )?);
        tracing::debug!(batch = b, images = chunk.len(), "evaluated");
    }
    let source = ds.root.join("(model detections)");
    eval::evaluate(annotations, &ds.classes, &dets, metric, &source)
}

/// The detections of one image file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The image file.
    pub path: PathBuf,
    /// Its id: the file name without extension.
    pub id: String,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Detections in VOC 1-based pixel coordinates, best first.
    pub detections: Vec<FileDetection>,
}

/// The id of an image file: its name without extension.
pub fn image_id(path: &Path) -> Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::invalid("predict", format!("{}: no file name", path.display())))
}

/// Detections for image files, in batches of `batch_size`.
pub fn predict(
    model: &mut Ssd<f32>,
    paths: &[PathBuf],
    cfg: &DetectConfig,
    batch_size: usize,
) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size.max(1)) {
        let images = chunk
            .par_iter()
            .map(|p| load_image(p))
            .collect::<Result<Vec<_>>>()?;
        let sizes: Vec<(usize, usize)> = images
            .iter()
            .map(|im| (im.shape()[2], im.shape()[1]))
            .collect();
        let found = detect_images(model, images, cfg)?;
        for ((path, (w, h)), dets) in chunk.iter().zip(sizes).zip(found) {
            let id = image_id(path)?;
            // Detections of one image: index 0 into one-element id/size lists.
            let single: Vec<Detection> = dets
                .into_iter()
                .map(|d| Detection { image: 0, ..d })
                .collect();
            let detections = eval::to_file_detections(
                &single,
                std::slice::from_ref(&id),
                &[(w, h)],
                &model.config().classes,
            )?;
            out.push(Prediction {
                path: path.to_path_buf(),
                id,
                width: w,
                height: h,
                detections,
            });
        }
    }
    Ok(out)
}
