//! The digits job: the UCI handwritten digits (8x8), a fixed stratified
//! 80/20 split, a small CNN trained with SGD + momentum, held-out accuracy.
//! It is the README's main job and the end-to-end check of kiln-nn.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_nn::criterion::ClassNll;
use kiln_nn::data::{digits, resize_bilinear, LabeledData};
use kiln_nn::layers::{Conv2dConfig, LayerConfig, LinearConfig, Pool2dConfig};
use kiln_nn::metrics::Evaluation;
use kiln_nn::optim::{OptimizerConfig, SgdConfig};
use kiln_nn::train::{evaluate, TrainConfig, TrainSummary, Trainer, Trigger};
use kiln_nn::{Module, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::training::summaries::Summaries;

/// Seed of the fixed held-out split (never changes, so accuracies compare across runs).
pub const SPLIT_SEED: u64 = 20_240_229;
/// Share of every class held out for testing.
pub const HOLDOUT: f64 = 0.2;

/// Which network to train.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum DigitsModel {
    /// Two 3x3 conv layers on the native 8x8 images (fast; the default).
    Cnn,
    /// LeNet-5 on the images upsampled to 28x28 (the cluster benchmark's model).
    Lenet5,
}

/// Settings of a digits run (in one process, or the `digits` job kind on
/// a cluster).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DigitsSettings {
    /// `digits.csv.gz` (on a cluster: on the driver's host; default: the
    /// copy in `data/digits/`).
    pub data: PathBuf,
    /// The network.
    pub model: DigitsModel,
    /// Epochs.
    pub epochs: u64,
    /// Global mini-batch size (the same on any number of executors).
    pub batch_size: usize,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Seed of the weights and the data order.
    pub seed: u64,
}

impl Default for DigitsSettings {
    fn default() -> Self {
        DigitsSettings {
            data: default_data_path(),
            model: DigitsModel::Cnn,
            epochs: 15,
            batch_size: 32,
            learning_rate: 0.05,
            momentum: 0.9,
            seed: 1,
        }
    }
}

impl DigitsSettings {
    /// Checks the settings' ranges (`epochs` in `[1, 100000]`,
    /// `batch_size` in `[1, 65536]`, `learning_rate` in `(0, 10]`,
    /// `momentum` in `[0, 1)`); errors name the setting as
    /// `<prefix><name>` for job kind `kind`.
    pub fn check(&self, kind: &str, prefix: &str) -> crate::jobs::Result<()> {
        use crate::jobs::{bounded, in_range, positive_number};
        let name = |n: &str| format!("{prefix}{n}");
        bounded(
            kind,
            &name("epochs"),
            self.epochs,
            1..=crate::jobs::MAX_EPOCHS,
        )?;
        bounded(
            kind,
            &name("batch_size"),
            self.batch_size,
            1..=crate::jobs::MAX_BATCH_SIZE,
        )?;
        positive_number(
            kind,
            &name("learning_rate"),
            self.learning_rate,
            crate::jobs::MAX_LEARNING_RATE,
        )?;
        in_range(kind, &name("momentum"), self.momentum, 0.0..1.0)
    }

    /// The network to train.
    pub fn network(&self) -> LayerConfig {
        match self.model {
            DigitsModel::Cnn => digits_cnn(),
            DigitsModel::Lenet5 => lenet5(),
        }
    }

    /// One sample's shape.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self.model {
            DigitsModel::Cnn => vec![1, 8, 8],
            DigitsModel::Lenet5 => vec![1, 28, 28],
        }
    }
}

/// `data/digits/digits.csv.gz` under the current directory if present,
/// else the copy in this source tree.
pub fn default_data_path() -> PathBuf {
    let local = PathBuf::from("data/digits/digits.csv.gz");
    if local.exists() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv.gz")
    }
}

/// The small CNN for 8x8 digits: conv(1→32) ReLU conv(32→64) ReLU maxpool
/// → 64x4x4 → FC 128 ReLU dropout FC 10 → log-softmax.
pub fn digits_cnn() -> LayerConfig {
    LayerConfig::Sequential {
        layers: vec![
            LayerConfig::Conv2d(Conv2dConfig::new(1, 32, [3, 3]).with_padding([1, 1])),
            LayerConfig::Relu,
            LayerConfig::Conv2d(Conv2dConfig::new(32, 64, [3, 3]).with_padding([1, 1])),
            LayerConfig::Relu,
            LayerConfig::MaxPool2d(Pool2dConfig::new([2, 2])),
            LayerConfig::Flatten { start_dim: 1 },
            LayerConfig::Linear(LinearConfig::new(64 * 4 * 4, 128)),
            LayerConfig::Relu,
            LayerConfig::Linear(LinearConfig::new(128, 10)),
            LayerConfig::LogSoftMax { dim: 1 },
        ],
    }
}

/// LeNet-5 for 28x28 inputs (as ../shared/anchors/conv_lenet.py): conv5x5
/// 1→6 tanh maxpool2, conv5x5 6→16 tanh maxpool2, FC 256→120→84→10, log-softmax.
pub fn lenet5() -> LayerConfig {
    LayerConfig::Sequential {
        layers: vec![
            LayerConfig::Conv2d(Conv2dConfig::new(1, 6, [5, 5])),
            LayerConfig::Tanh,
            LayerConfig::MaxPool2d(Pool2dConfig::new([2, 2])),
            LayerConfig::Conv2d(Conv2dConfig::new(6, 16, [5, 5])),
            LayerConfig::Tanh,
            LayerConfig::MaxPool2d(Pool2dConfig::new([2, 2])),
            LayerConfig::Flatten { start_dim: 1 },
            LayerConfig::Linear(LinearConfig::new(256, 120)),
            LayerConfig::Tanh,
            LayerConfig::Linear(LinearConfig::new(120, 84)),
            LayerConfig::Tanh,
            LayerConfig::Linear(LinearConfig::new(84, 10)),
            LayerConfig::LogSoftMax { dim: 1 },
        ],
    }
}

/// Loads the digits and returns the fixed (train, held-out) split, with
/// images upsampled to 28x28 for LeNet-5.
pub fn load_split(path: &Path, model: DigitsModel) -> Result<(LabeledData<f32>, LabeledData<f32>)> {
    let mut data = digits::load(path)?;
    if model == DigitsModel::Lenet5 {
        data.features = resize_bilinear(&data.features, 28, 28)?;
    }
    data.split(HOLDOUT, SPLIT_SEED)
}

/// What a digits run produced.
#[derive(Debug, Clone)]
pub struct DigitsReport {
    /// The trained model.
    pub model_config: LayerConfig,
    /// Held-out evaluation of the final model.
    pub held_out: Evaluation,
    /// Training counters and throughput.
    pub summary: TrainSummary,
}

/// Trains the chosen network on the training split in this process
/// (with a progress bar when `progress`) and evaluates it on the held-out
/// split; returns the trained model and the report.
pub fn run(job: &DigitsSettings, progress: bool) -> Result<(Box<dyn Module<f32>>, DigitsReport)> {
    run_summarised(job, progress, None)
}

/// One epoch's running sums for its TensorBoard scalars.
struct EpochSums {
    summaries: Summaries,
    /// Sample-weighted loss sum and samples of the epoch so far.
    loss_sum: f64,
    samples: usize,
    /// When the epoch's first batch started and its last one ended.
    started: Instant,
    last_batch: Instant,
    /// The latest held-out evaluation.
    held_out: Option<Evaluation>,
}

/// Hooks writing `summaries` for a run over `train_len` samples in
/// batches of `batch`: per iteration the batch loss and learning rate;
/// per epoch the mean loss, throughput (validation left out) and the
/// held-out loss and accuracy (`eval/held_out_loss`, `eval/held_out_acc`).
fn summary_hooks(
    mut trainer: Trainer<f32>,
    summaries: Summaries,
    train_len: usize,
    batch: usize,
) -> Trainer<f32> {
    let sums = Arc::new(Mutex::new(EpochSums {
        summaries,
        loss_sum: 0.0,
        samples: 0,
        started: Instant::now(),
        last_batch: Instant::now(),
        held_out: None,
    }));
    let per_epoch = train_len.div_ceil(batch) as u64;
    let on_batch = sums.clone();
    trainer = trainer.with_hook(
        Trigger::EveryIterations(1),
        Box::new(move |state, _| {
            if let Ok(mut s) = on_batch.lock() {
                let k = ((state.iteration - 1) % per_epoch) as usize;
                let n = batch.min(train_len - k * batch);
                s.loss_sum += state.loss * n as f64;
                s.samples += n;
                s.last_batch = Instant::now();
                s.summaries
                    .iteration(state.iteration, state.loss, state.learning_rate);
            }
            Ok(())
        }),
    );
    let on_validation = sums.clone();
    trainer = trainer.with_validation_hook(Box::new(move |_, e| {
        if let Ok(mut s) = on_validation.lock() {
            s.held_out = Some(*e);
        }
        Ok(())
    }));
    trainer.with_hook(
        Trigger::EveryEpochs(1),
        Box::new(move |state, _| {
            if let Ok(mut s) = sums.lock() {
                let secs = s.last_batch.duration_since(s.started).as_secs_f64();
                let metrics: Vec<(String, f64)> = s
                    .held_out
                    .take()
                    .map(|e| {
                        vec![
                            ("held_out_loss".to_string(), e.loss),
                            ("held_out_acc".to_string(), e.top1),
                        ]
                    })
                    .unwrap_or_default();
                let (loss, sps) = (
                    s.loss_sum / s.samples.max(1) as f64,
                    s.samples as f64 / secs.max(1e-9),
                );
                s.summaries.epoch(state.iteration, loss, sps, &metrics);
                s.loss_sum = 0.0;
                s.samples = 0;
                s.started = Instant::now();
            }
            Ok(())
        }),
    )
}

/// [`run`], writing TensorBoard scalars into `summaries` when given (see
/// `summary_hooks`).
pub fn run_summarised(
    job: &DigitsSettings,
    progress: bool,
    summaries: Option<Summaries>,
) -> Result<(Box<dyn Module<f32>>, DigitsReport)> {
    let (train, test) = load_split(&job.data, job.model)?;
    let config = job.network();
    let mut model = config.build::<f32>(&mut StdRng::seed_from_u64(job.seed))?;
    let optimizer = OptimizerConfig::Sgd(SgdConfig {
        lr: job.learning_rate,
        momentum: job.momentum,
        ..SgdConfig::default()
    })
    .build::<f32>()?;
    let train_config = TrainConfig {
        batch_size: job.batch_size,
        epochs: job.epochs,
        seed: job.seed,
        validate: Trigger::EVERY_EPOCH,
        log: Trigger::EveryEpochs(1),
        progress,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(Box::new(ClassNll::default()), optimizer, train_config)?;
    if let Some(s) = summaries {
        trainer = summary_hooks(trainer, s, train.len(), job.batch_size);
    }
    let summary = trainer.fit(model.as_mut(), &train, Some(&test))?;
    let held_out = evaluate(model.as_mut(), &mut ClassNll::default(), &test, 512)?;
    Ok((
        model,
        DigitsReport {
            model_config: config,
            held_out,
            summary,
        },
    ))
}
