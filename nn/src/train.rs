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

/// A learning-rate rule: `(state, latest validation) -> learning rate`.
pub type LrRule = Box<dyn FnMut(&TrainState, Option<&Evaluation>) -> f64 + Send>;

/// A user hook (e.g. save a checkpoint) run when its trigger fires.
pub type Hook<F> = Box<dyn FnMut(&TrainState, &dyn Module<F>) -> Result<()> + Send>;

/// Trains one model in this process.
pub struct Trainer<F: Float> {
    criterion: Box<dyn Criterion<F>>,
    optimizer: Box<dyn Optimizer<F>>,
    config: TrainConfig,
    lr_rule: Option<LrRule>,
    hooks: Vec<(Trigger, Hook<F>)>,
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
        Ok(Trainer {
            criterion,
            optimizer,
            config,
            lr_rule: None,
            hooks: Vec::new(),
        })
    }

    /// Sets a learning-rate rule, applied before every step.
    pub fn with_lr_rule(mut self, rule: LrRule) -> Self {
        self.lr_rule = Some(rule);
        self
    }

    /// Adds a hook run whenever `trigger` fires.
    pub fn with_hook(mut self, trigger: Trigger, hook: Hook<F>) -> Self {
        self.hooks.push((trigger, hook));
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
        model.backward(x, &g)?;
        let mut grads = model.flat_grads();
        if let Some(v) = self.config.clip_value {
            let v = F::of(v);
            grads.iter_mut().for_each(|g| *g = g.max(-v).min(v));
        }
        if let Some(max_norm) = self.config.clip_norm {
            let norm = grads
                .iter()
                .map(|g| g.as_f64() * g.as_f64())
                .sum::<f64>()
                .sqrt();
            if norm > max_norm {
                let s = F::of(max_norm / (norm + 1e-6));
                grads.iter_mut().for_each(|g| *g *= s);
            }
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
        let mut last_eval: Option<Evaluation> = None;
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
                if let Some(rule) = &mut self.lr_rule {
                    let lr = rule(&state, last_eval.as_ref());
                    self.optimizer.set_learning_rate(lr);
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
                self.run_triggers(
                    model,
                    &state,
                    false,
                    validation,
                    &mut validations,
                    &mut last_eval,
                )?;
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
            self.run_triggers(
                model,
                &state,
                true,
                validation,
                &mut validations,
                &mut last_eval,
            )?;
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
        last_eval: &mut Option<Evaluation>,
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
                *last_eval = Some(e);
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
