//! A single-process trainer: epochs of shuffled mini-batches, an optimizer
//! over the flat parameter buffer, triggers (every N iterations, every N
//! epochs) for validation, logging and user hooks such as checkpoints, a
//! terminal progress bar and tracing logs.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::criterion::Criterion;
use crate::data::{epoch_order, LabeledData};
use crate::error::{Error, Result};
use crate::metrics::{top_k_correct, Evaluation};
use crate::module::{Module, ModuleExt};
use crate::optim::clip::{clip_by_norm, clip_by_value};
use crate::optim::schedule::{Counter, LrSchedule, LrScheduler};
use crate::optim::Optimizer;
use crate::tensor::Float;

/// When something happens during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// After every `n`-th iteration (mini-batch) counted over the whole run.
    EveryIterations(u64),
    /// At the end of every `n`-th epoch.
    EveryEpochs(u64),
    /// Never.
    Never,
}

impl Trigger {
    /// At the end of every epoch.
    pub const EVERY_EPOCH: Trigger = Trigger::EveryEpochs(1);

    /// Whether the trigger fires after `state`; `epoch_end` says whether an epoch just ended.
    pub fn fires(&self, state: &TrainState, epoch_end: bool) -> bool {
        match *self {
            Trigger::EveryIterations(n) => n > 0 && !epoch_end && state.iteration.is_multiple_of(n),
            Trigger::EveryEpochs(n) => n > 0 && epoch_end && state.epoch.is_multiple_of(n),
            Trigger::Never => false,
        }
    }
}

/// Training settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Samples per mini-batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Number of epochs.
    pub epochs: u64,
    /// Seed of the per-epoch sample order.
    pub seed: u64,
    /// When to evaluate on the validation set.
    pub validate: Trigger,
    /// When to log the training loss.
    pub log: Trigger,
    /// Clip the gradient to this global L2 norm before each step.
    pub clip_norm: Option<f64>,
    /// Clamp every gradient element to ±this before each step.
    pub clip_value: Option<f64>,
    /// Learning-rate schedule (epoch- or iteration-based, see [`LrSchedule::counter`]);
    /// a plateau schedule observes the validation loss.
    #[serde(default)]
    pub lr_schedule: Option<LrSchedule>,
    /// Show a progress bar on the terminal.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 32,
            epochs: 10,
            seed: 0,
            validate: Trigger::EVERY_EPOCH,
            log: Trigger::EveryIterations(50),
            clip_norm: None,
            clip_value: None,
            lr_schedule: None,
            progress: true,
        }
    }
}

/// Counters of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Completed epochs (during an epoch: the 1-based epoch in progress).
    pub epoch: u64,
    /// Iterations completed over the whole run.
    pub iteration: u64,
    /// Loss of the latest mini-batch.
    pub loss: f64,
    /// Learning rate of the latest step.
    pub learning_rate: f64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Final counters.
    pub state: TrainState,
    /// Validation results with the state at which each was taken.
    pub validations: Vec<(TrainState, Evaluation)>,
    /// Wall-clock seconds spent training (including validation).
    pub seconds: f64,
    /// Training samples processed per second (excluding validation).
    pub samples_per_second: f64,
}

/// A user hook (e.g. save a checkpoint) run when its trigger fires.
pub type Hook<F> = Box<dyn FnMut(&TrainState, &dyn Module<F>) -> Result<()> + Send>;

/// A user hook run after each validation with its result (e.g. write it
/// to TensorBoard).
pub type ValidationHook = Box<dyn FnMut(&TrainState, &Evaluation) -> Result<()> + Send>;

/// Trains one model in this process.
pub struct Trainer<F: Float> {
    criterion: Box<dyn Criterion<F>>,
    optimizer: Box<dyn Optimizer<F>>,
    config: TrainConfig,
    scheduler: Option<LrScheduler>,
    hooks: Vec<(Trigger, Hook<F>)>,
    validation_hooks: Vec<ValidationHook>,
}

impl<F: Float> Trainer<F> {
    /// A trainer with the given loss, optimizer and settings.
    pub fn new(
        criterion: Box<dyn Criterion<F>>,
        optimizer: Box<dyn Optimizer<F>>,
        config: TrainConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::config("TrainConfig", "batch_size must be positive"));
        }
        let scheduler = match &config.lr_schedule {
            Some(s) => Some(LrScheduler::new(s.clone(), optimizer.learning_rate())?),
            None => None,
        };
        Ok(Trainer {
            criterion,
            optimizer,
            config,
            scheduler,
            hooks: Vec::new(),
            validation_hooks: Vec::new(),
        })
    }

    /// Adds a hook run whenever `trigger` fires.
    pub fn with_hook(mut self, trigger: Trigger, hook: Hook<F>) -> Self {
        self.hooks.push((trigger, hook));
        self
    }

    /// Adds a hook run after every validation, with its result (before
    /// the hooks of [`Trainer::with_hook`] at the same point).
    pub fn with_validation_hook(mut self, hook: ValidationHook) -> Self {
        self.validation_hooks.push(hook);
        self
    }

    /// One optimisation step on a mini-batch; returns the batch loss.
    pub fn step(
        &mut self,
        model: &mut dyn Module<F>,
        x: &crate::Tensor<F>,
        y: &crate::Tensor<F>,
    ) -> Result<f64> {
        model.zero_grad();
        let out = model.forward(x)?;
        let loss = self.criterion.forward(&out, y)?;
        let g = self.criterion.backward(&out, y)?;
        model.backward_params(x, &g)?;
        let mut grads = model.flat_grads();
        if let Some(v) = self.config.clip_value {
            clip_by_value(&mut grads, v)?;
        }
        if let Some(max_norm) = self.config.clip_norm {
            clip_by_norm(&mut grads, max_norm)?;
        }
        let mut params = model.flat_params();
        self.optimizer.step(&mut params, &grads)?;
        model.set_flat_params(&params)?;
        Ok(loss.as_f64())
    }

    /// Trains `model` on `train`, validating on `validation` when the trigger fires.
    pub fn fit(
        &mut self,
        model: &mut dyn Module<F>,
        train: &LabeledData<F>,
        validation: Option<&LabeledData<F>>,
    ) -> Result<TrainSummary> {
        if train.is_empty() {
            return Err(Error::invalid("Trainer::fit", "the training set is empty"));
        }
        let bs = self.config.batch_size;
        let per_epoch = train.len().div_ceil(bs) as u64;
        let bar = if self.config.progress {
            ProgressBar::new(per_epoch * self.config.epochs)
        } else {
            ProgressBar::with_draw_target(
                Some(per_epoch * self.config.epochs),
                ProgressDrawTarget::hidden(),
            )
        };
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} it {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        let start = Instant::now();
        let mut train_seconds = 0.0;
        let mut samples = 0usize;
        let mut state = TrainState {
            learning_rate: self.optimizer.learning_rate(),
            ..TrainState::default()
        };
        let mut validations = Vec::new();
        tracing::info!(
            params = model.num_params(),
            samples = train.len(),
            batch = bs,
            epochs = self.config.epochs,
            "training started"
        );
        for epoch in 1..=self.config.epochs {
            state.epoch = epoch;
            model.train_mode();
            let order = epoch_order(train.len(), self.config.seed, epoch);
            let t0 = Instant::now();
            for chunk in order.chunks(bs) {
                if let Some(sched) = &self.scheduler {
                    let t = match sched.schedule().counter() {
                        Counter::Epoch => epoch - 1,
                        Counter::Iteration => state.iteration,
                    };
                    self.optimizer.set_learning_rate(sched.lr(t));
                }
                let (x, y) = train.batch(chunk);
                state.loss = self.step(model, &x, &y)?;
                state.iteration += 1;
                state.learning_rate = self.optimizer.learning_rate();
                samples += chunk.len();
                bar.inc(1);
                bar.set_message(format!("epoch {epoch} loss {:.4}", state.loss));
                if !state.loss.is_finite() {
                    return Err(Error::invalid(
                        "Trainer::fit",
                        format!(
                            "loss became {} at iteration {}",
                            state.loss, state.iteration
                        ),
                    ));
                }
                if self.config.log.fires(&state, false) {
                    tracing::info!(
                        epoch,
                        iteration = state.iteration,
                        loss = state.loss,
                        lr = state.learning_rate,
                        "train"
                    );
                }
                self.run_triggers(model, &state, false, validation, &mut validations)?;
            }
            train_seconds += t0.elapsed().as_secs_f64();
            if self.config.log.fires(&state, true)
                || matches!(self.config.log, Trigger::EveryIterations(_))
            {
                tracing::info!(
                    epoch,
                    iteration = state.iteration,
                    loss = state.loss,
                    "epoch done"
                );
            }
            self.run_triggers(model, &state, true, validation, &mut validations)?;
        }
        bar.finish_and_clear();
        Ok(TrainSummary {
            state,
            validations,
            seconds: start.elapsed().as_secs_f64(),
            samples_per_second: samples as f64 / train_seconds.max(1e-9),
        })
    }

    fn run_triggers(
        &mut self,
        model: &mut dyn Module<F>,
        state: &TrainState,
        epoch_end: bool,
        validation: Option<&LabeledData<F>>,
        validations: &mut Vec<(TrainState, Evaluation)>,
    ) -> Result<()> {
        if let Some(val) = validation {
            if self.config.validate.fires(state, epoch_end) {
                let e = evaluate(
                    model,
                    self.criterion.as_mut(),
                    val,
                    self.config.batch_size.max(256),
                )?;
                tracing::info!(
                    epoch = state.epoch,
                    iteration = state.iteration,
                    "validation: {e}"
                );
                validations.push((*state, e));
                for hook in &mut self.validation_hooks {
                    hook(state, &e)?;
                }
                if let Some(sched) = &mut self.scheduler {
                    sched.observe(e.loss);
                }
                model.train_mode();
            }
        }
        for (trigger, hook) in &mut self.hooks {
            if trigger.fires(state, epoch_end) {
                hook(state, &*model)?;
            }
        }
        Ok(())
    }
}

/// Evaluates `model` (in evaluation mode) on `data`: mean loss, top-1 and top-5 accuracy.
pub fn evaluate<F: Float>(
    model: &mut dyn Module<F>,
    criterion: &mut dyn Criterion<F>,
    data: &LabeledData<F>,
    batch_size: usize,
) -> Result<Evaluation> {
    model.eval_mode();
    let (mut loss, mut top1, mut top5) = (0.0, 0usize, 0usize);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = data.batch(chunk);
        let out = model.forward(&x)?;
        loss += criterion.forward(&out, &y)?.as_f64() * chunk.len() as f64;
        top1 += top_k_correct(&out, &y, 1)?;
        top5 += top_k_correct(&out, &y, 5)?;
    }
    let n = data.len().max(1) as f64;
    Ok(Evaluation {
        loss: loss / n,
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        samples: data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criterion::CrossEntropy;
    use crate::layers::LinearConfig;
    use crate::optim::{OptimizerConfig, SgdConfig};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Two Gaussian blobs: a linear model must separate them.
    fn blobs(n: usize, seed: u64) -> LabeledData<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = crate::init::normal::<f64>(&mut rng, &[n, 2], 0.0, 0.5);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let x = crate::Tensor::from_shape_fn(ndarray::IxDyn(&[n, 2]), |i| {
            let c = if labels[i[0]] == 0 { -1.5 } else { 1.5 };
            c + noise[[i[0], i[1]]]
        });
        LabeledData::new(x, labels, 2).unwrap()
    }

    fn trainer(config: TrainConfig) -> Trainer<f64> {
        let opt = OptimizerConfig::Sgd(SgdConfig {
            lr: 0.5,
            ..SgdConfig::default()
        })
        .build::<f64>()
        .unwrap();
        Trainer::new(Box::new(CrossEntropy::new()), opt, config).unwrap()
    }

    #[test]
    fn fit_learns_triggers_fire_and_schedule_applies() {
        let train = blobs(200, 1);
        let val = blobs(100, 2);
        let mut model = LinearConfig::new(2, 2)
            .init::<f64>(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let config = TrainConfig {
            batch_size: 16,
            epochs: 4,
            validate: Trigger::EveryIterations(10),
            lr_schedule: Some(LrSchedule::Step {
                step_size: 2,
                gamma: 0.1,
            }),
            progress: false,
            ..TrainConfig::default()
        };
        let hook_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = hook_calls.clone();
        let mut t = trainer(config).with_hook(
            Trigger::EVERY_EPOCH,
            Box::new(move |state, _| {
                assert!(state.epoch >= 1);
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }),
        );
        let summary = t.fit(&mut model, &train, Some(&val)).unwrap();
        assert_eq!(summary.state.iteration, 4 * 13);
        assert_eq!(hook_calls.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(summary.validations.len(), (4 * 13) / 10);
        assert!(
            (summary.state.learning_rate - 0.05).abs() < 1e-12,
            "epochs 3-4 run at lr * 0.1"
        );
        let e = evaluate(&mut model, &mut CrossEntropy::new(), &val, 64).unwrap();
        assert!(e.top1 > 0.95, "{e}");
    }

    #[test]
    fn a_model_that_does_not_fit_the_data_and_a_zero_batch_are_errors() {
        let train = blobs(20, 3);
        let mut wrong = LinearConfig::new(3, 2)
            .init::<f64>(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let err = trainer(TrainConfig {
            progress: false,
            ..TrainConfig::default()
        })
        .fit(&mut wrong, &train, None)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("Linear(3->2)") && err.contains("[N, 3]") && err.contains("[20, 2]"),
            "{err}"
        );
        assert!(Trainer::new(
            Box::new(CrossEntropy::<f64>::new()),
            OptimizerConfig::Sgd(SgdConfig::default())
                .build::<f64>()
                .unwrap(),
            TrainConfig {
                batch_size: 0,
                ..TrainConfig::default()
            }
        )
        .is_err());
    }
}
