//! The `detection` job kind: SSD trained with the MultiBox loss on a
//! PASCAL VOC-layout split. Executors read their partitions' annotations
//! and, batch by batch, decode and augment the images (seeded per image,
//! so the batches do not depend on which executor runs them); SGD with
//! warm-up and multi-step or cosine decay runs in the parameter shards.

use std::path::{Path, PathBuf};

use kiln_detection::model::Ssd;
use kiln_detection::objective::{SsdObjective, SsdObjectiveConfig};
use kiln_detection::train::{TrainConfig, VocSample};
use kiln_detection::voc::{Annotation, VocDataset};
use kiln_nn::optim::{OptimizerConfig, SgdConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::staging::FileRef;
use kiln_runtime::train::BatchStats;
use kiln_runtime::transport::encode;
use kiln_runtime::{DistributedTrainer, JobContext, Registry};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::jobs::staged::{local, partition_range, publish_all, publish_manifest, read_manifest};
use crate::jobs::{JobEnv, JobError, Result};
use crate::training::{
    register_objective, LearningRate, Metric, RunSettings, TrainingJob, TrainingPlan,
    TrainingReport,
};

/// The kind's name.
pub const KIND: &str = "detection";
/// Name of the VOC source in the registry.
pub const VOC_SOURCE: &str = "kiln.voc_samples";
/// Name of the SSD trainer in the registry.
pub const SSD_TRAINER: &str = "kiln.ssd";

/// Settings of an SSD run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSettings {
    /// VOC-layout directory (JPEGImages, Annotations, ImageSets/Main) on
    /// the driver's host.
    pub voc: PathBuf,
    /// Class names (default: the dataset's `classes.txt`, else VOC's 20);
    /// recorded so a checkpoint rebuilds its model without the data.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Model, schedule, augmentation and loss settings.
    pub train: TrainConfig,
}

/// One image of the training split as the driver lists it: its index in
/// the split, its annotation (parsed on the driver) and its file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocItem {
    /// Index in the split (seeds its augmentation).
    pub index: u32,
    /// Its annotation.
    pub annotation: Annotation,
    /// The image on the driver's host.
    pub image: FileRef,
}

/// Arguments of the VOC source: the split's images (a staged manifest of
/// [`VocItem`]s) and whether to stage even where the paths exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VocSource {
    /// The manifest.
    pub images: FileRef,
    /// Stage the images even where the paths exist.
    pub stage: bool,
}

/// Partition `p` of `n` of the split: a contiguous range of its images,
/// each staged where the executor lacks it (they are decoded when a batch
/// needs them).
pub fn read_voc_partition(
    a: &VocSource,
    p: u32,
    n: u32,
) -> std::result::Result<Vec<VocSample>, kiln_runtime::BoxError> {
    let items: Vec<VocItem> = read_manifest(&a.images, a.stage)?;
    let range = partition_range(items.len(), p, n);
    items[range]
        .iter()
        .map(|it| {
            Ok(VocSample {
                index: it.index,
                image: local(&it.image, a.stage)?,
                annotation: it.annotation.clone(),
            })
        })
        .collect()
}

/// The detection kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detection;

/// The free fields of a resumed run: its length and learning-rate plan.
const FREE_ON_RESUME: [&str; 9] = [
    "train.epochs",
    "train.log_every",
    "train.lr",
    "train.warmup_iters",
    "train.warmup_factor",
    "train.milestones",
    "train.gamma",
    "train.lr_schedule",
    "train.max_bad_share",
];

impl TrainingJob for Detection {
    type Settings = DetectionSettings;
    type Sample = VocSample;
    type Eval = ();

    fn kind(&self) -> &'static str {
        KIND
    }

    fn trainer(&self) -> &'static str {
        SSD_TRAINER
    }

    fn free_on_resume(&self) -> &'static [&'static str] {
        &FREE_ON_RESUME
    }

    fn default_shards(&self) -> usize {
        2
    }

    fn register(&self, r: &mut Registry) {
        r.register_source(VOC_SOURCE, read_voc_partition);
        register_objective::<VocSample, SsdObjectiveConfig, _, _>(
            r,
            SSD_TRAINER,
            SsdObjective::new,
        );
    }

    fn validate(&self, s: &mut DetectionSettings, env: &JobEnv) -> Result<String> {
        s.voc = env.existing(KIND, "job.voc", &s.voc)?;
        s.train.validate()?;
        let images = VocDataset::open(&s.voc, &s.train.split, s.classes.clone())?;
        if images.is_empty() {
            return Err(JobError::invalid(
                KIND,
                "job.train.split",
                &s.train.split,
                format!("the image set of {} is empty", s.voc.display()),
            ));
        }
        // Builds the model's configuration: an unknown preset or a bad
        // image size is refused here.
        s.train.model_config(images.classes.clone())?;
        let n = images.len();
        s.classes = Some(images.classes);
        Ok(format!(
            "SSD {} on {} images of {} ({}), {} epochs, batch {}",
            s.train.preset,
            n,
            s.voc.display(),
            s.train.split,
            s.train.epochs,
            s.train.batch_size
        ))
    }

    async fn plan(
        &self,
        s: &DetectionSettings,
        run: &RunSettings,
        partitions: u32,
        ctx: &JobContext,
    ) -> Result<TrainingPlan<VocSample, ()>> {
        let cfg = &s.train;
        let images = VocDataset::open(&s.voc, &cfg.split, s.classes.clone())?;
        let model_cfg = cfg.model_config(images.classes.clone())?;
        let model = Ssd::<f32>::new(model_cfg.clone(), &mut StdRng::seed_from_u64(cfg.seed))?;
        let checking = std::time::Instant::now();
        let split = {
            let share = cfg.max_bad_share;
            tokio::task::spawn_blocking(move || images.verify(share, "job.train.max_bad_share"))
                .await
                .map_err(|e| JobError::step("reading the annotations and images", e))??
        };
        ctx.line(format!(
            "CHECKED {} training images of {} ({}) in {:.1} s (decoded in full)",
            split.annotations.len(),
            s.voc.display(),
            cfg.split,
            checking.elapsed().as_secs_f64()
        ));
        if let Some(line) = split.skipped {
            ctx.line(line);
        }
        let (images, annotations) = (split.dataset, split.annotations);
        let paths = annotations
            .iter()
            .map(|a| images.image_path(&a.id))
            .collect();
        let files = publish_all(ctx, paths).await?;
        let items: Vec<VocItem> = annotations
            .into_iter()
            .zip(files)
            .enumerate()
            .map(|(i, (annotation, image))| VocItem {
                index: i as u32,
                annotation,
                image,
            })
            .collect();
        let source = VocSource {
            images: publish_manifest(ctx, "train-images.rmp", &items).await?,
            stage: run.stage,
        };
        let data = ctx.driver().source(VOC_SOURCE, &source, partitions)?;
        let worker = SsdObjectiveConfig {
            model: model_cfg,
            train: cfg.clone(),
        };
        let iters_per_epoch = images.len().div_ceil(cfg.batch_size.max(1));
        Ok(TrainingPlan {
            data,
            worker_config: encode(&worker)?,
            params: model.graph().flat_params(),
            buffers: model.graph().flat_buffers(),
            optimizer: OptimizerConfig::Sgd(SgdConfig {
                lr: cfg.lr,
                momentum: cfg.momentum,
                weight_decay: cfg.weight_decay,
                ..SgdConfig::default()
            }),
            learning_rate: LearningRate {
                base: cfg.lr,
                schedule: cfg.lr_schedule(iters_per_epoch),
            },
            epochs: cfg.epochs as u64,
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            sorted_epochs: None,
            eval: (),
        })
    }

    async fn evaluate(
        &self,
        _s: &DetectionSettings,
        _eval: &mut (),
        _epoch: &BatchStats,
        _trainer: &mut DistributedTrainer<VocSample>,
    ) -> Result<Vec<Metric>> {
        // Scored by mAP with `kiln detect eval` on the saved model.
        Ok(Vec::new())
    }

    async fn finish(
        &self,
        _s: &DetectionSettings,
        _eval: &mut (),
        report: &TrainingReport,
        _trainer: &mut DistributedTrainer<VocSample>,
    ) -> Result<Vec<String>> {
        Ok(vec![format!(
            "trained {} epochs ({} iterations) on {} executors in {:.1} s, last epoch loss {:.4}",
            report.epochs,
            report.iterations,
            report.executors,
            report.training_seconds,
            report.last_epoch_loss
        )])
    }

    fn save_model(
        &self,
        s: &DetectionSettings,
        params: &[f32],
        buffers: &[f32],
        path: &Path,
    ) -> Result<()> {
        let classes = s.classes.clone().ok_or_else(|| {
            JobError::invalid(KIND, "job.classes", "none", "needed to build the model")
        })?;
        let mut model = Ssd::<f32>::new(
            s.train.model_config(classes)?,
            &mut StdRng::seed_from_u64(0),
        )?;
        model.graph_mut().set_flat_params(params)?;
        if !buffers.is_empty() {
            model.graph_mut().set_flat_buffers(buffers)?;
        }
        model.set_training(false);
        model.save(path)?;
        Ok(())
    }
}
