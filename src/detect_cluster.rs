//! SSD on the cluster: the training split's image indices become a dataset
//! (executors read and augment the images themselves, seeded per share so
//! the batches do not depend on which executor runs them), a
//! [`GradientWorker`] runs the MultiBox step, batch-norm statistics travel
//! as buffers, and SGD with warm-up and multi-step decay runs in the
//! parameter actors, with checkpoints and resume. Used by `kiln detect
//! train --executors N`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use kiln_detection::augment::SsdAugment;
use kiln_detection::model::{Ssd, SsdConfig};
use kiln_detection::multibox::MultiBoxConfig;
use kiln_detection::train::{augmented_batch, train_step, TrainConfig, TrainSummary};
use kiln_detection::voc::VocDataset;
use kiln_nn::optim::{OptimizerConfig, SgdConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::train::{BatchStats, GradientWorker, META_JOB};
use kiln_runtime::{Dataset, DistributedTrainer, Driver, Registry, TrainSpec};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::cluster_train::optimizer_factory;
use crate::run_checkpoints::{fixed_settings, CheckpointOptions};
use crate::run_output::{iteration_bar, out_line, report_checkpoint};
use crate::shard_placement::place_shards;

/// Name of the VOC image-index source in the registry.
pub const VOC_SOURCE: &str = "kiln.voc_indices";
/// Name of the SSD trainer in the registry.
pub const SSD_TRAINER: &str = "kiln.ssd";

/// Arguments of the VOC source: which directory and image set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocSource {
    /// VOC-layout directory, readable by every executor.
    pub voc: PathBuf,
    /// Image set (`ImageSets/Main/<split>.txt`).
    pub split: String,
}

/// Partition `p` of `n` of the split: a contiguous range of image indices.
fn read_voc_partition(a: &VocSource, p: u32, n: u32) -> Result<Vec<u32>, String> {
    let ds = VocDataset::open(&a.voc, &a.split, None).map_err(|e| e.to_string())?;
    let (n, p) = (n.max(1) as usize, p as usize);
    let (lo, hi) = (p * ds.len() / n, (p + 1) * ds.len() / n);
    Ok((lo as u32..hi as u32).collect())
}

/// What an executor needs to build the SSD worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsdWorkerConfig {
    /// Where the images are.
    pub source: VocSource,
    /// The network.
    pub model: SsdConfig,
    /// Augmentation and loss settings.
    pub train: TrainConfig,
}

/// SSD trained with the MultiBox loss on image indices.
pub struct SsdWorker {
    model: Ssd<f32>,
    data: VocDataset,
    augment: SsdAugment,
    loss: MultiBoxConfig,
    params: usize,
}

impl SsdWorker {
    /// Opens the image set and builds the network (its weights and buffers
    /// are replaced every task).
    pub fn new(c: &SsdWorkerConfig) -> Result<Self, String> {
        let data = VocDataset::open(
            &c.source.voc,
            &c.source.split,
            Some(c.model.classes.clone()),
        )
        .map_err(|e| e.to_string())?;
        let model = Ssd::<f32>::new(c.model.clone(), &mut StdRng::seed_from_u64(0))
            .map_err(|e| e.to_string())?;
        let params = model.graph().num_params();
        Ok(SsdWorker {
            augment: SsdAugment {
                size: c.model.image_size(),
                mean: c.model.mean,
                max_expand: c.train.max_expand,
                photometric: c.train.photometric,
            },
            loss: MultiBoxConfig {
                num_classes: c.model.num_classes(),
                overlap_threshold: c.train.overlap_threshold,
                neg_pos_ratio: c.train.neg_pos_ratio,
                variances: c.model.priors.variances,
            },
            model,
            data,
            params,
        })
    }
}

impl GradientWorker<u32> for SsdWorker {
    fn num_params(&self) -> usize {
        self.params
    }

    /// The MultiBox loss is normalised by the share's matched priors, so
    /// the share's gradient is scaled by its image count: the driver's
    /// division by the batch size then averages the shares' normalised
    /// losses (what DDP does with a per-rank normalised loss).
    fn gradients(
        &mut self,
        params: &[f32],
        samples: &[&u32],
        seed: u64,
        grads: &mut [f32],
    ) -> Result<BatchStats, String> {
        let indices: Vec<usize> = samples.iter().map(|&&i| i as usize).collect();
        let (images, gts) = augmented_batch(&self.data, &indices, &self.augment, seed, 0)
            .map_err(|e| e.to_string())?;
        self.model
            .graph_mut()
            .set_flat_params(params)
            .map_err(|e| e.to_string())?;
        self.model.set_training(true);
        self.model.graph_mut().zero_grad();
        let out =
            train_step(&mut self.model, &images, &gts, &self.loss).map_err(|e| e.to_string())?;
        let loss = f64::from(out.loss());
        if !loss.is_finite() {
            return Err(format!(
                "the MultiBox loss became {loss}: lower the learning rate"
            ));
        }
        let n = samples.len() as f32;
        for (g, x) in grads.iter_mut().zip(self.model.graph().flat_grads()) {
            *g = x * n;
        }
        Ok(BatchStats {
            loss_sum: loss * samples.len() as f64,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, _params: &[f32], _samples: &[&u32]) -> Result<BatchStats, String> {
        Err("SSD is evaluated by mAP with `kiln detect eval`, not by a loss on the cluster".into())
    }

    fn num_buffers(&self) -> usize {
        self.model.graph().num_buffers()
    }

    fn buffers(&self) -> Vec<f32> {
        self.model.graph().flat_buffers()
    }

    fn set_buffers(&mut self, buffers: &[f32]) -> Result<(), String> {
        self.model
            .graph_mut()
            .set_flat_buffers(buffers)
            .map_err(|e| e.to_string())
    }
}

/// Registers the VOC source and the SSD trainer (every process of a
/// cluster calls this).
pub fn register(r: &mut Registry) {
    r.register_source(VOC_SOURCE, read_voc_partition)
        .register_trainer(SSD_TRAINER, SsdWorker::new);
}

/// Checkpoint meta entry of an SSD run's class names (JSON): also what
/// marks a checkpoint as an SSD run's.
pub const META_SSD_CLASSES: &str = "ssd.classes";

/// Fields of [`TrainConfig`] a resumed run may change: how long it runs and
/// its learning-rate plan. All the others (model, data, augmentation, loss,
/// optimizer, seed) must match the checkpoint's.
const FREE_ON_RESUME: [&str; 8] = [
    "epochs",
    "log_every",
    "lr",
    "warmup_iters",
    "warmup_factor",
    "milestones",
    "gamma",
    "lr_schedule",
];

/// The settings a run resuming from a checkpoint of this one must share
/// with it: one checkpoint meta entry per field (`ssd.<field>` = its JSON)
/// but the run's length and learning-rate plan (`epochs`, `lr`, warm-up,
/// milestones, `gamma`, `lr_schedule`, `log_every`), plus the classes, so a mismatch
/// names the field.
pub fn fixed_ssd_settings(
    cfg: &TrainConfig,
    classes: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut fixed = fixed_settings("ssd", cfg, &FREE_ON_RESUME)?;
    fixed.insert(META_SSD_CLASSES.into(), serde_json::to_string(classes)?);
    Ok(fixed)
}

/// The SSD model of a checkpoint written by [`train_ssd_on_cluster`], with
/// `params` and `buffers` (batch-norm statistics) loaded; `None` if the
/// checkpoint's settings are not an SSD run's.
pub fn ssd_from_checkpoint(
    meta: &BTreeMap<String, String>,
    params: &[f32],
    buffers: &[f32],
) -> anyhow::Result<Option<Ssd<f32>>> {
    let Some(classes) = meta.get(META_SSD_CLASSES) else {
        return Ok(None);
    };
    let classes: Vec<String> =
        serde_json::from_str(classes).context("decoding the checkpoint's ssd.classes")?;
    let job = meta
        .get(META_JOB)
        .context("the SSD checkpoint does not record its training settings")?;
    let cfg: TrainConfig =
        serde_json::from_str(job).context("decoding the checkpoint's SSD training settings")?;
    let mut model = Ssd::<f32>::new(cfg.model_config(classes)?, &mut StdRng::seed_from_u64(0))?;
    model.graph_mut().set_flat_params(params)?;
    if !buffers.is_empty() {
        model.graph_mut().set_flat_buffers(buffers)?;
    }
    model.set_training(false);
    Ok(Some(model))
}

/// Trains SSD of `cfg.preset` on the driver's executors (`partitions`
/// partitions of the split, 2 parameter shards, each on `shard_replicas`
/// executors or, with 0, in the driver's actors), fresh or, with
/// `ckpt.resume`, from the newest valid checkpoint (whose settings must
/// match `cfg` but for its length and learning-rate plan), and writes the
/// model to `out` after every epoch. Prints `RESUMED`, `SKIPPED`,
/// `CHECKPOINT` and an `EPOCH` line per epoch.
pub async fn train_ssd_on_cluster(
    driver: &Driver,
    voc: &Path,
    cfg: &TrainConfig,
    partitions: u32,
    out: &Path,
    ckpt: &CheckpointOptions,
    shard_replicas: usize,
) -> anyhow::Result<(Ssd<f32>, TrainSummary)> {
    cfg.validate()?;
    let images = VocDataset::open(voc, &cfg.split, None)?;
    let model_cfg = cfg.model_config(images.classes.clone())?;
    let plan = cfg.lr_plan(images.len().div_ceil(cfg.batch_size.max(1)));
    let mut model = Ssd::<f32>::new(model_cfg.clone(), &mut StdRng::seed_from_u64(cfg.seed))?;
    let source = VocSource {
        voc: voc.to_path_buf(),
        split: cfg.split.clone(),
    };
    let data: Dataset<u32> = driver.source(VOC_SOURCE, &source, partitions.max(1))?;
    let worker = SsdWorkerConfig {
        source,
        model: model_cfg,
        train: cfg.clone(),
    };
    let mut spec = TrainSpec::new(
        SSD_TRAINER,
        &worker,
        cfg.batch_size,
        cfg.epochs as u64,
        cfg.seed,
        cfg.lr,
    )?;
    spec.learning_rate = std::sync::Arc::new(move |it, _| plan.lr_at(it as usize));
    spec.shards = 2;
    spec.init_buffers = model.graph().flat_buffers();
    spec.job_meta = BTreeMap::from([(META_JOB.to_string(), serde_json::to_string(cfg)?)]);
    spec.fixed_meta = fixed_ssd_settings(cfg, &images.classes)?;
    ckpt.apply(&mut spec)?;
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        ..SgdConfig::default()
    });
    place_shards(&mut spec, shard_replicas, &sgd)?;
    let optimizer = optimizer_factory(sgd);
    let mut trainer =
        DistributedTrainer::start(&data, spec, model.graph().flat_params(), optimizer).await?;
    ckpt.resume_if_asked(&mut trainer).await?;
    let bar = iteration_bar(&trainer, cfg.epochs as u64, false);
    let started = Instant::now();
    let mut epoch_start = Instant::now();
    let (mut sum, mut count, mut last_epoch_loss) = (0.0, 0u64, f64::NAN);
    while !trainer.is_done() {
        let it = trainer.step().await?;
        sum += it.stats.loss_sum;
        count += it.stats.samples;
        report_checkpoint(&bar, &it);
        if it.epoch_ended {
            last_epoch_loss = sum / count.max(1) as f64;
            out_line(&format!(
                "EPOCH {} loss={last_epoch_loss:.4} lr={:.2e} images_per_s={:.1}",
                it.position.epoch,
                it.learning_rate,
                count as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9)
            ));
            // Gathered from the executors if they host the shards.
            trainer.current_params().await?;
            model.graph_mut().set_flat_params(trainer.params())?;
            model.graph_mut().set_flat_buffers(trainer.buffers())?;
            model
                .save(out)
                .with_context(|| format!("saving {}", out.display()))?;
            (sum, count) = (0.0, 0);
            epoch_start = Instant::now();
        }
    }
    trainer.current_params().await?;
    model.graph_mut().set_flat_params(trainer.params())?;
    model.graph_mut().set_flat_buffers(trainer.buffers())?;
    let done = trainer.position();
    trainer.finish().await?;
    model.set_training(false);
    model
        .save(out)
        .with_context(|| format!("saving {}", out.display()))?;
    Ok((
        model,
        TrainSummary {
            epochs: done.epoch as usize,
            iterations: done.iteration as usize,
            last_epoch_loss,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_config() -> SsdWorkerConfig {
        let voc = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shapes-tiny");
        let cfg = TrainConfig {
            batch_size: 2,
            ..TrainConfig::default()
        };
        let source = VocSource {
            voc: voc.clone(),
            split: cfg.split.clone(),
        };
        let classes = VocDataset::open(&voc, &cfg.split, None).unwrap().classes;
        SsdWorkerConfig {
            source,
            model: cfg.model_config(classes).unwrap(),
            train: cfg,
        }
    }

    #[test]
    fn evaluating_ssd_on_the_cluster_is_an_error_pointing_to_detect_eval() {
        let config = worker_config();
        let mut w = SsdWorker::new(&config).unwrap();
        let params = vec![0.0; w.num_params()];
        let err = w.evaluate(&params, &[&0, &1]).unwrap_err();
        assert!(err.contains("kiln detect eval"), "{err}");
        // Also with no samples at all.
        assert!(w.evaluate(&params, &[]).is_err());
    }

    #[test]
    fn a_worker_on_a_missing_image_set_fails_naming_it() {
        let mut config = worker_config();
        config.source.split = "no_such_split".into();
        let err = SsdWorker::new(&config).err().expect("an error");
        assert!(err.contains("no_such_split"), "{err}");
        let err = read_voc_partition(&config.source, 0, 1).unwrap_err();
        assert!(err.contains("no_such_split"), "{err}");
    }

    #[test]
    fn a_checkpoint_rebuilds_its_ssd_model_or_says_why_not() {
        let cfg = TrainConfig::default();
        let classes = vec!["circle".to_string(), "square".to_string()];
        let mut meta = fixed_ssd_settings(&cfg, &classes).unwrap();
        meta.insert(META_JOB.into(), serde_json::to_string(&cfg).unwrap());
        let model = Ssd::<f32>::new(
            cfg.model_config(classes).unwrap(),
            &mut StdRng::seed_from_u64(3),
        )
        .unwrap();
        let (params, buffers) = (model.graph().flat_params(), model.graph().flat_buffers());
        let rebuilt = ssd_from_checkpoint(&meta, &params, &buffers)
            .unwrap()
            .expect("an SSD checkpoint");
        assert_eq!(rebuilt.graph().flat_params(), params);
        assert_eq!(rebuilt.graph().flat_buffers(), buffers);
        // Weights of another size are an error, not a model.
        assert!(ssd_from_checkpoint(&meta, &params[1..], &buffers).is_err());
        // Another job's checkpoint is not an SSD one.
        let mut other = meta.clone();
        other.remove(META_SSD_CLASSES);
        assert!(ssd_from_checkpoint(&other, &params, &buffers)
            .unwrap()
            .is_none());
        // An SSD checkpoint without its settings says so.
        meta.remove(META_JOB);
        let err = ssd_from_checkpoint(&meta, &params, &buffers)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("training settings"), "{err}");
    }

    #[test]
    fn fixed_settings_leave_out_the_length_and_learning_rate_plan() {
        let cfg = TrainConfig::default();
        let classes = vec!["circle".to_string(), "square".to_string()];
        let fixed = fixed_ssd_settings(&cfg, &classes).unwrap();
        assert_eq!(fixed["ssd.preset"], "\"tiny\"");
        assert_eq!(fixed["ssd.classes"], r#"["circle","square"]"#);
        assert!(fixed.contains_key("ssd.photometric") && fixed.contains_key("ssd.momentum"));
        for free in FREE_ON_RESUME {
            assert!(!fixed.contains_key(&format!("ssd.{free}")), "{free}");
        }
        // A longer run at another rate keeps the same fixed settings.
        let longer = TrainConfig {
            epochs: cfg.epochs + 10,
            lr: cfg.lr * 2.0,
            lr_schedule: kiln_detection::train::LrSchedule::Cosine,
            ..cfg.clone()
        };
        assert_eq!(fixed_ssd_settings(&longer, &classes).unwrap(), fixed);
        let other = TrainConfig {
            max_expand: 1.0,
            ..cfg
        };
        assert_ne!(fixed_ssd_settings(&other, &classes).unwrap(), fixed);
    }
}
