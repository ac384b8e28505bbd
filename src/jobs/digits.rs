//! The `digits` job kind: a small CNN (or LeNet-5) on the UCI handwritten
//! digits, data-parallel on the cluster. The executors read their
//! partitions of the fixed 80/20 split themselves; the held-out split is
//! cached on them and evaluated after every epoch.

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::layers::LayerConfig;
use kiln_nn::objective::{Classifier, LabelledSample};
use kiln_nn::optim::{OptimizerConfig, SgdConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::staging::FileRef;
use kiln_runtime::train::BatchStats;
use kiln_runtime::transport::encode;
use kiln_runtime::{Dataset, DistributedTrainer, JobContext, Registry};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use crate::digits::DigitsSettings;
use crate::digits::{self, DigitsModel};
use crate::jobs::staged::{local, partition_range};
use crate::jobs::{JobEnv, Result};
use crate::training::{
    register_objective, LearningRate, Metric, RunSettings, TrainingJob, TrainingPlan,
    TrainingReport,
};

/// The kind's name.
pub const KIND: &str = "digits";
/// Name of the digits source in the registry.
pub const DIGITS_SOURCE: &str = "kiln.digits";
/// Name of the classifier trainer in the registry.
pub const CLASSIFIER_TRAINER: &str = "kiln.nn_classifier";

/// Arguments of the digits source: which file, which split, which size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigitsSource {
    /// `digits.csv.gz` on the driver's host (read in place where the
    /// executor has it, else staged).
    pub file: FileRef,
    /// Stage it even where the path exists.
    pub stage: bool,
    /// Decides the image size (LeNet-5 upsamples to 28x28).
    pub model: DigitsModel,
    /// The held-out split instead of the training split.
    pub held_out: bool,
}

/// Partition `p` of `n` of a split: a contiguous range, so the global
/// index of a sample is its index in the split and the cluster sees the
/// batches single-process training sees.
pub fn read_digits_partition(
    a: &DigitsSource,
    p: u32,
    n: u32,
) -> std::result::Result<Vec<LabelledSample>, kiln_runtime::BoxError> {
    let path = local(&a.file, a.stage)?;
    let (train, test) = digits::load_split(&path, a.model)
        .map_err(|e| format!("{}: {e}", a.file.path.display()))?;
    let set = if a.held_out { test } else { train };
    let per: usize = set.sample_shape().iter().product();
    let flat = set.features.as_standard_layout();
    let values = flat
        .as_slice()
        .ok_or_else(|| "digits features are not contiguous".to_string())?;
    Ok(partition_range(set.len(), p, n)
        .map(|i| {
            (
                values[i * per..(i + 1) * per].to_vec(),
                set.labels[i] as u32,
            )
        })
        .collect())
}

/// What builds the classifier on an executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// The network (ends in log-probabilities).
    pub model: LayerConfig,
    /// Shape of one sample's features (e.g. `[1, 8, 8]`).
    pub sample_shape: Vec<usize>,
}

/// The digits kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Digits;

/// What the kind keeps on the driver: the held-out split, cached on the
/// executors.
pub struct DigitsEval {
    held_out: Dataset<LabelledSample>,
}

impl TrainingJob for Digits {
    type Settings = DigitsSettings;
    type Sample = LabelledSample;
    type Eval = DigitsEval;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn trainer(&self) -> &'static str {
        CLASSIFIER_TRAINER
    }

    fn free_on_resume(&self) -> &'static [&'static str] {
        &["epochs"]
    }

    fn default_shards(&self) -> usize {
        4
    }

    fn save_each_epoch(&self) -> bool {
        false
    }

    fn register(&self, r: &mut Registry) {
        r.register_source(DIGITS_SOURCE, read_digits_partition);
        register_objective::<LabelledSample, ClassifierConfig, _, _>(
            r,
            CLASSIFIER_TRAINER,
            |c: &ClassifierConfig| Classifier::new(&c.model, &c.sample_shape),
        );
    }

    fn validate(&self, s: &mut DigitsSettings, env: &JobEnv) -> Result<String> {
        s.data = env.existing(KIND, "job.data", &s.data)?;
        s.check(KIND, "job.")?;
        // Read here, as the executors will: a bad file is refused before
        // the job is queued (the file is small).
        digits::load_split(&s.data, s.model)?;
        Ok(format!(
            "{:?} on {}, {} epochs, batch {}, lr {}",
            s.model,
            s.data.display(),
            s.epochs,
            s.batch_size,
            s.learning_rate
        ))
    }

    async fn plan(
        &self,
        s: &DigitsSettings,
        run: &RunSettings,
        partitions: u32,
        ctx: &JobContext,
    ) -> Result<TrainingPlan<LabelledSample, DigitsEval>> {
        let network = s.network();
        let built = network.build::<f32>(&mut StdRng::seed_from_u64(s.seed))?;
        let file = ctx.driver().publish(&s.data)?;
        let source = |held_out| DigitsSource {
            file: file.clone(),
            stage: run.stage,
            model: s.model,
            held_out,
        };
        let driver = ctx.driver();
        let data = driver.source(DIGITS_SOURCE, &source(false), partitions)?;
        // Cached on the executors: the held-out split is evaluated after
        // every epoch, and reloading (parse, upsample, split) costs several
        // times the evaluation itself.
        let held_out = driver
            .source(DIGITS_SOURCE, &source(true), partitions)?
            .cache();
        let worker = ClassifierConfig {
            model: network,
            sample_shape: s.sample_shape(),
        };
        Ok(TrainingPlan {
            data,
            worker_config: encode(&worker)?,
            params: built.flat_params(),
            buffers: built.flat_buffers(),
            optimizer: OptimizerConfig::Sgd(SgdConfig {
                lr: s.learning_rate,
                momentum: s.momentum,
                ..SgdConfig::default()
            }),
            learning_rate: LearningRate::constant(s.learning_rate),
            epochs: s.epochs,
            batch_size: s.batch_size,
            seed: s.seed,
            sorted_epochs: None,
            eval: DigitsEval { held_out },
        })
    }

    async fn evaluate(
        &self,
        _s: &DigitsSettings,
        eval: &mut DigitsEval,
        epoch: &BatchStats,
        trainer: &mut DistributedTrainer<LabelledSample>,
    ) -> Result<Vec<Metric>> {
        let held = trainer.evaluate(&eval.held_out).await?;
        Ok(vec![
            ("train_acc".into(), epoch.accuracy()),
            ("held_out_acc".into(), held.accuracy()),
        ])
    }

    async fn finish(
        &self,
        s: &DigitsSettings,
        eval: &mut DigitsEval,
        report: &TrainingReport,
        trainer: &mut DistributedTrainer<LabelledSample>,
    ) -> Result<Vec<String>> {
        let held = trainer.evaluate(&eval.held_out).await?;
        Ok(vec![
            format!("HELD-OUT-ACCURACY {:.4}", held.accuracy()),
            format!(
                "trained {:?} on {} executors: {:.0} samples/s ({:.0} without the per-epoch evaluations), held-out accuracy {:.2}%",
                s.model,
                report.executors,
                report.samples_per_second,
                report.iteration_samples_per_second,
                held.accuracy() * 100.0
            ),
        ])
    }

    fn save_model(
        &self,
        s: &DigitsSettings,
        params: &[f32],
        _buffers: &[f32],
        path: &Path,
    ) -> Result<()> {
        let mut model = s.network().build::<f32>(&mut StdRng::seed_from_u64(0))?;
        model.set_flat_params(params)?;
        let meta = HashMap::from([("kiln.digits_model".to_string(), format!("{:?}", s.model))]);
        kiln_nn::serialize::save(model.as_ref(), path, &meta)?;
        Ok(())
    }
}
