//! Single-process SSD training: seeded augmented batches, the training step
//! (forward, MultiBox loss with its gradients, backward through the graph),
//! SGD with momentum and weight decay under a warm-up then multi-step or
//! cosine learning rate, progress through `tracing`, and the model written with
//! [`Ssd::save`]. The pieces are public so a cluster trainer can reuse them
//! (it replaces only the optimizer step by the parameter actors' one).

use std::ops::Bound;
use std::path::Path;
use std::time::Instant;

use kiln_nn::bad_files::check_share;
use kiln_nn::bounds::{check, check_number, check_number_f32, open_closed, OutOfRange};
use kiln_nn::optim::schedule::LrSchedule as Schedule;
use kiln_nn::optim::{Optimizer, SgdConfig};
use kiln_nn::{Float, ModuleExt, Tensor};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{Sample, SsdAugment};
use crate::error::{Error, Result};
use crate::infer::stack_images;
use crate::model::{Backbone, SmallBackbone, Ssd, SsdConfig, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE};
use crate::multibox::{encode_targets, multibox_loss, GroundTruth, MultiBoxConfig, MultiBoxOutput};
use crate::voc::{load_annotated_image, Annotation, VocDataset};

/// Most epochs of a run.
pub const MAX_EPOCHS: usize = 100_000;
/// Largest batch, in images.
pub const MAX_BATCH_SIZE: usize = 1024;
/// Longest warm-up, in iterations.
pub const MAX_WARMUP_ITERS: usize = 10_000_000;

/// Training settings (a JSON file for `kiln detect train --config`; every
/// field has a default; unknown keys are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset: `tiny` (default), `small`, `ssd300` or `ssd512`.
    pub preset: String,
    /// Replaces the small backbone's widths (presets `small` and `tiny`).
    pub small_backbone: Option<SmallBackbone>,
    /// Input side in pixels for the small backbone presets (`tiny` 128,
    /// `small` 300 by default): the feature maps follow the backbone and
    /// the priors keep their share of the image.
    pub image_size: Option<usize>,
    /// Image set to train on (`ImageSets/Main/<split>.txt`).
    pub split: String,
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Iterations of linear warm-up from `warmup_factor · lr`.
    pub warmup_iters: usize,
    /// Starting fraction of the learning rate during warm-up.
    pub warmup_factor: f64,
    /// Epochs after which the rate is multiplied by `gamma`; empty means
    /// after two thirds and five sixths of all iterations.
    pub milestones: Vec<usize>,
    /// Multi-step decay factor.
    pub gamma: f64,
    /// How the rate falls after warm-up: `multistep` (default: ×`gamma`
    /// after each milestone) or `cosine` (half a cosine from `lr` to 0 over
    /// the rest of the run; `milestones` and `gamma` are then unused).
    pub lr_schedule: LrSchedule,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Photometric distortion in augmentation.
    pub photometric: bool,
    /// Largest zoom-out ratio of augmentation (1 disables zoom-out).
    pub max_expand: f32,
    /// IoU at which a prior matches a ground-truth box.
    pub overlap_threshold: f32,
    /// Hard negatives per positive.
    pub neg_pos_ratio: usize,
    /// Log the loss every this many iterations.
    pub log_every: usize,
    /// Share of the split's images (annotation or image file unusable)
    /// that may be skipped, in [0, 1]; more fails the run before it
    /// starts. 0 by default: one bad file fails it.
    pub max_bad_share: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: "tiny".into(),
            small_backbone: None,
            image_size: None,
            split: "train".into(),
            epochs: 60,
            batch_size: 16,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_iters: 100,
            warmup_factor: 0.1,
            milestones: Vec::new(),
            gamma: 0.1,
            lr_schedule: LrSchedule::MultiStep,
            seed: 0,
            photometric: true,
            max_expand: 2.0,
            overlap_threshold: 0.5,
            neg_pos_ratio: 3,
            log_every: 10,
            max_bad_share: 0.0,
        }
    }
}

impl TrainConfig {
    /// Reads and validates a JSON config file: unknown keys (at any
    /// level), values of the wrong type and values out of range are
    /// errors naming the file and the setting.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let in_file = |e: Error| Error::ConfigFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        };
        let de = &mut serde_json::Deserializer::from_str(&text);
        let cfg: TrainConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            in_file(Error::Json {
                what: if at == "." { "TrainConfig".into() } else { at },
                reason: e.into_inner().to_string(),
            })
        })?;
        cfg.validate().map_err(in_file)?;
        Ok(cfg)
    }

    /// The model configuration for `classes`.
    pub fn model_config(&self, classes: Vec<String>) -> Result<SsdConfig> {
        let mut cfg = SsdConfig::preset(&self.preset, classes)?;
        if let (Some(b), Backbone::Small(_)) = (&self.small_backbone, &cfg.backbone) {
            cfg.backbone = Backbone::Small(b.clone());
        }
        match self.image_size {
            Some(size) => cfg.with_image_size(size),
            None => Ok(cfg),
        }
    }

    /// The learning-rate schedule for `iters_per_epoch` iterations an
    /// epoch, as one of kiln-nn's schedules counted in iterations (evaluate
    /// it with [`Schedule::lr_at`]`(lr, iteration)`): a linear warm-up over
    /// `warmup_iters` from `warmup_factor · lr`, then the multi-step decay
    /// (milestones in epochs, default two thirds and five sixths of the
    /// run, counted from the start of the run) or half a cosine from `lr`
    /// to 0 at the end of the run. A milestone inside the warm-up takes
    /// effect when the warm-up ends.
    pub fn lr_schedule(&self, iters_per_epoch: usize) -> Schedule {
        let total = self.epochs * iters_per_epoch;
        let warmup = self.warmup_iters as u64;
        let after = match self.lr_schedule {
            LrSchedule::MultiStep => {
                let milestones: Vec<usize> = if self.milestones.is_empty() {
                    vec![total * 2 / 3, total * 5 / 6]
                } else {
                    self.milestones
                        .iter()
                        .map(|m| m * iters_per_epoch)
                        .collect()
                };
                Schedule::MultiStep {
                    milestones: milestones
                        .into_iter()
                        .map(|m| (m as u64).saturating_sub(warmup))
                        .collect(),
                    gamma: self.gamma,
                }
            }
            LrSchedule::Cosine => Schedule::Cosine {
                t_max: (total as u64).saturating_sub(warmup).max(1),
                eta_min: 0.0,
            },
        };
        Schedule::Warmup {
            warmup_steps: warmup,
            start_factor: self.warmup_factor,
            after: Box::new(after),
        }
    }

    /// Checks every setting against its range (see [`TrainConfig`]'s
    /// bounds: `epochs` in `[1, 100000]`, `batch_size` in `[1, 1024]`,
    /// `image_size` in `[32, 2048]`, `lr` in `(0, 10]`, `momentum` in `[0,
    /// 1)`, `weight_decay` in `[0, 1]`, `warmup_iters` at most 10^7,
    /// `warmup_factor` in `[0, 1]`, milestones increasing and at most
    /// `epochs`, `gamma` in `(0, 1]`, `max_expand` in `[1, 16]`,
    /// `overlap_threshold` in `(0, 1]`, `neg_pos_ratio` in `[0, 100]`,
    /// `log_every` at most 10^6 (0: never)), the preset's name and the
    /// small backbone's widths. NaN and infinities are refused.
    pub fn validate(&self) -> Result<()> {
        self.check_ranges()
            .map_err(|e| Error::range("TrainConfig", e))?;
        if !["tiny", "small", "ssd300", "ssd512"].contains(&self.preset.as_str()) {
            return Err(Error::config(
                "TrainConfig",
                format!(
                    "preset = {:?}: must be tiny, small, ssd300 or ssd512",
                    self.preset
                ),
            ));
        }
        if let Some(b) = &self.small_backbone {
            b.validate()?;
        }
        self.lr_schedule(1).validate()?;
        Ok(())
    }

    fn check_ranges(&self) -> std::result::Result<(), OutOfRange> {
        check("epochs", self.epochs, 1..=MAX_EPOCHS)?;
        check("batch_size", self.batch_size, 1..=MAX_BATCH_SIZE)?;
        if let Some(size) = self.image_size {
            check("image_size", size, MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE)?;
        }
        check_number("lr", self.lr, open_closed(0.0, 10.0))?;
        check_number("momentum", self.momentum, 0.0..1.0)?;
        check_number("weight_decay", self.weight_decay, 0.0..=1.0)?;
        check("warmup_iters", self.warmup_iters, 0..=MAX_WARMUP_ITERS)?;
        check_number("warmup_factor", self.warmup_factor, 0.0..=1.0)?;
        for (i, &m) in self.milestones.iter().enumerate() {
            check(&format!("milestones[{i}]"), m, 0..=self.epochs)?;
        }
        check_number("gamma", self.gamma, open_closed(0.0, 1.0))?;
        check_number_f32("max_expand", self.max_expand, 1.0..=16.0)?;
        check_number_f32(
            "overlap_threshold",
            self.overlap_threshold,
            (Bound::Excluded(0.0), Bound::Included(1.0)),
        )?;
        check("neg_pos_ratio", self.neg_pos_ratio, 0..=100)?;
        check_share("max_bad_share", self.max_bad_share)?;
        check("log_every", self.log_every, 0..=1_000_000)?;
        Ok(())
    }
}

/// How the learning rate falls after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Multiplied by `gamma` after each milestone (the SSD paper's plan).
    MultiStep,
    /// Cosine annealing from the base rate to 0 at the end of the run
    /// (PyTorch's `CosineAnnealingLR` with `eta_min = 0`, one half period).
    Cosine,
}

/// Forward, MultiBox loss and backward for one batch; parameter gradients
/// are accumulated (call `zero_grad` on the graph first).
pub fn train_step<F: Float>(
    model: &mut Ssd<F>,
    images: &Tensor<F>,
    gts: &[GroundTruth],
    loss_cfg: &MultiBoxConfig,
) -> Result<MultiBoxOutput<F>> {
    train_step_scaled(model, images, gts, loss_cfg, F::one())
}

/// [`train_step`] with the gradient of `scale` times the loss accumulated
/// (the returned losses are not scaled): a data-parallel share scales by
/// its image count, so that adding the shares' gradients and dividing by
/// the batch size averages the shares' normalised losses, as DDP does.
pub fn train_step_scaled<F: Float>(
    model: &mut Ssd<F>,
    images: &Tensor<F>,
    gts: &[GroundTruth],
    loss_cfg: &MultiBoxConfig,
    scale: F,
) -> Result<MultiBoxOutput<F>> {
    let targets = encode_targets(gts, model.priors(), loss_cfg)?;
    let out = model.forward(images)?;
    let mut loss = multibox_loss(&out.loc, &out.conf, &targets, loss_cfg)?;
    let mut grad_loc = std::mem::take(&mut loss.grad_loc);
    let mut grad_conf = std::mem::take(&mut loss.grad_conf);
    if scale != F::one() {
        grad_loc.mapv_inplace(|g| g * scale);
        grad_conf.mapv_inplace(|g| g * scale);
    }
    model.backward(grad_loc, grad_conf)?;
    Ok(loss)
}

/// A deterministic per-sample seed: the same image in the same epoch is
/// augmented identically whatever the batching or thread count.
fn sample_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [epoch as u64, index as u64] {
        x = (x ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
    }
    x
}

/// Loads and augments images `indices` of `ds` (in parallel) into a batch
/// `[N, 3, S, S]` and its ground truth (labels shifted by one: 0 is
/// background; difficult objects are left out).
pub fn augmented_batch(
    ds: &VocDataset,
    indices: &[usize],
    aug: &SsdAugment,
    seed: u64,
    epoch: usize,
) -> Result<(Tensor<f32>, Vec<GroundTruth>)> {
    let samples = indices
        .par_iter()
        .map(|&i| {
            let (image, ann) = ds.sample(i)?;
            augment_one(i, image, &ann, aug, seed, epoch)
        })
        .collect::<Result<Vec<_>>>()?;
    stack_samples(samples, aug.size)
}

/// Loads and augments the images of `samples` (in parallel) into a batch
/// `[N, 3, S, S]` and its ground truth, as [`augmented_batch`] does for
/// images of a dataset: sample `s` is augmented from the stream of
/// `(seed, epoch, s.index)`.
pub fn augmented_samples(
    samples: &[&VocSample],
    aug: &SsdAugment,
    seed: u64,
    epoch: usize,
) -> Result<(Tensor<f32>, Vec<GroundTruth>)> {
    let augmented = samples
        .par_iter()
        .map(|s| {
            let image = load_annotated_image(&s.image, &s.annotation)?;
            augment_one(s.index as usize, image, &s.annotation, aug, seed, epoch)
        })
        .collect::<Result<Vec<_>>>()?;
    stack_samples(augmented, aug.size)
}

/// One image of a split with its annotation, by path: what a training
/// dataset of SSD holds (the image is decoded when a batch needs it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocSample {
    /// Index of the image in its split (seeds its augmentation).
    pub index: u32,
    /// The image file.
    pub image: std::path::PathBuf,
    /// Its annotation.
    pub annotation: Annotation,
}

/// Augments one decoded image (labels shifted by one: 0 is background;
/// difficult objects are left out).
fn augment_one(
    index: usize,
    image: Array3<f32>,
    ann: &Annotation,
    aug: &SsdAugment,
    seed: u64,
    epoch: usize,
) -> Result<Sample> {
    let kept: Vec<_> = ann.objects.iter().filter(|o| !o.difficult).collect();
    let sample = Sample {
        image,
        boxes: kept.iter().map(|o| o.pixel_box()).collect(),
        labels: kept.iter().map(|o| o.class + 1).collect(),
    };
    let mut rng = StdRng::seed_from_u64(sample_seed(seed, epoch, index));
    aug.apply(sample, &mut rng)
}

fn stack_samples(samples: Vec<Sample>, size: usize) -> Result<(Tensor<f32>, Vec<GroundTruth>)> {
    let mut images: Vec<Array3<f32>> = Vec::with_capacity(samples.len());
    let mut gts = Vec::with_capacity(samples.len());
    for s in samples {
        images.push(s.image);
        gts.push(GroundTruth {
            boxes: s.boxes,
            labels: s.labels,
        });
    }
    Ok((stack_images(&images, size)?, gts))
}

/// What a training run reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Epochs run.
    pub epochs: usize,
    /// Optimizer steps taken.
    pub iterations: usize,
    /// Mean loss over the last epoch.
    pub last_epoch_loss: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The `SKIPPING` line naming the split's unusable files, if any were
    /// left out (within `max_bad_share`).
    pub skipped: Option<String>,
}

/// Trains `model` on `ds` as `cfg` says (SGD, momentum, weight decay,
/// warm-up + multi-step rate), calling `on_epoch(model, epoch, mean_loss)`
/// after every epoch (e.g. to save it).
pub fn train_model(
    model: &mut Ssd<f32>,
    ds: &VocDataset,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&Ssd<f32>, usize, f64) -> Result<()>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if ds.is_empty() {
        return Err(Error::invalid(
            "train",
            format!("{}: the training split is empty", ds.root.display()),
        ));
    }
    let start = Instant::now();
    let aug = SsdAugment {
        size: model.config().image_size(),
        mean: model.config().mean,
        max_expand: cfg.max_expand,
        photometric: cfg.photometric,
    };
    let loss_cfg = MultiBoxConfig {
        num_classes: model.config().num_classes(),
        overlap_threshold: cfg.overlap_threshold,
        neg_pos_ratio: cfg.neg_pos_ratio,
        variances: model.config().priors.variances,
    };
    let iters_per_epoch = ds.len().div_ceil(cfg.batch_size);
    let plan = cfg.lr_schedule(iters_per_epoch);
    let mut opt = SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        ..SgdConfig::default()
    }
    .build::<f32>()?;
    let mut order: Vec<usize> = (0..ds.len()).collect();
    let mut shuffle_rng = StdRng::seed_from_u64(cfg.seed);
    let mut params = model.graph().flat_params();
    let mut iteration = 0;
    let mut last_epoch_loss = f64::NAN;
    model.set_training(true);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut shuffle_rng);
        let (mut sum, mut count) = (0.0, 0usize);
        for batch in order.chunks(cfg.batch_size) {
            let (images, gts) = augmented_batch(ds, batch, &aug, cfg.seed, epoch)?;
            let graph = model.graph_mut();
            graph.zero_grad();
            let out = train_step(model, &images, &gts, &loss_cfg)?;
            let loss = f64::from(out.loss());
            if !loss.is_finite() {
                return Err(Error::invalid(
                    "train",
                    format!("loss became {loss} at epoch {epoch}, iteration {iteration}: lower the learning rate"),
                ));
            }
            let lr = plan.lr_at(cfg.lr, iteration as u64);
            opt.set_learning_rate(lr);
            let grads = model.graph().flat_grads();
            opt.step(&mut params, &grads)?;
            model.graph_mut().set_flat_params(&params)?;
            sum += loss;
            count += 1;
            iteration += 1;
            if cfg.log_every > 0 && iteration % cfg.log_every == 0 {
                tracing::info!(
                    epoch,
                    iteration,
                    lr,
                    loss,
                    loss_loc = f64::from(out.loss_loc),
                    loss_conf = f64::from(out.loss_conf),
                    "ssd train"
                );
            }
        }
        last_epoch_loss = sum / count.max(1) as f64;
        tracing::info!(
            epoch,
            mean_loss = last_epoch_loss,
            seconds = start.elapsed().as_secs_f64(),
            "ssd epoch done"
        );
        on_epoch(model, epoch, last_epoch_loss)?;
    }
    model.set_training(false);
    Ok(TrainSummary {
        epochs: cfg.epochs,
        iterations: iteration,
        last_epoch_loss,
        seconds: start.elapsed().as_secs_f64(),
        skipped: None,
    })
}

/// Trains a fresh model of `cfg.preset` on split `cfg.split` of the VOC
/// directory `voc` (classes from its `classes.txt`, else VOC's 20) and
/// writes it to `out` after every epoch.
pub fn train(voc: &Path, cfg: &TrainConfig, out: &Path) -> Result<(Ssd<f32>, TrainSummary)> {
    let split =
        VocDataset::open(voc, &cfg.split, None)?.verify(cfg.max_bad_share, "max_bad_share")?;
    if let Some(line) = &split.skipped {
        tracing::warn!("{line}");
    }
    let ds = split.dataset;
    let model_cfg = cfg.model_config(ds.classes.clone())?;
    let mut model = Ssd::<f32>::new(model_cfg, &mut StdRng::seed_from_u64(cfg.seed))?;
    tracing::info!(
        images = ds.len(),
        params = model.graph().num_params(),
        priors = model.priors().len(),
        preset = %cfg.preset,
        "ssd training starts"
    );
    // Written after every epoch (atomically), so an interrupted run keeps its last epoch.
    let mut summary = train_model(&mut model, &ds, cfg, |m, _, _| m.save(out))?;
    summary.skipped = split.skipped;
    Ok((model, summary))
}

#[cfg(test)]
mod tests;
