//! Learning-rate schedules: pure functions of the base learning rate and a
//! counter, plus reduce-on-plateau, which is fed a metric.
//!
//! Which counter each schedule takes ([`LrSchedule::counter`]):
//! - epochs (the number of completed epochs, starting at 0): `Constant`,
//!   `Step`, `MultiStep`, `Exponential`, `Cosine` (PyTorch's closed forms
//!   with `last_epoch = epoch`);
//! - iterations (optimizer steps taken, starting at 0): `Poly` (BigDL's) and
//!   `Warmup`, whose wrapped schedule is then evaluated at
//!   `iteration - warmup_steps`, so its sizes (step sizes, milestones,
//!   `t_max`) are in iterations too;
//! - `Plateau` ignores the counter: the trainer calls
//!   [`LrScheduler::observe`] with a validation metric once per epoch.

use serde::{Deserialize, Serialize};

use crate::bounds::{check, check_number, open, open_closed, OutOfRange};
use crate::error::{Error, Result};

/// Which counter a schedule is a function of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// Completed epochs.
    Epoch,
    /// Optimizer steps taken.
    Iteration,
}

/// Whether a [`LrSchedule::Plateau`] metric should go down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlateauMode {
    /// Lower is better (a loss).
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How [`PlateauConfig::threshold`] measures a significant improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    /// Relative: better than `best · (1 ∓ threshold)`.
    #[default]
    Rel,
    /// Absolute: better than `best ∓ threshold`.
    Abs,
}

/// Configuration of reduce-on-plateau (PyTorch's `ReduceLROnPlateau`, same defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlateauConfig {
    /// Whether the metric is minimised or maximised.
    pub mode: PlateauMode,
    /// Multiplier applied to the learning rate on a plateau, in `(0, 1)` (default 0.1).
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing (default 10).
    pub patience: u64,
    /// Minimum improvement that counts (default 1e-4).
    pub threshold: f64,
    /// Whether `threshold` is relative or absolute.
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction before counting bad epochs again (default 0).
    pub cooldown: u64,
    /// Lower bound on the learning rate (default 0).
    pub min_lr: f64,
    /// Reductions smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        PlateauConfig {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }
}

/// A learning-rate schedule; see the module documentation for the counter each takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// `base_lr` throughout.
    Constant,
    /// `base_lr · gamma^⌊epoch / step_size⌋` (PyTorch's `StepLR`).
    Step {
        /// Epochs between decays (positive).
        step_size: u64,
        /// Multiplicative decay.
        gamma: f64,
    },
    /// `base_lr · gamma^(number of milestones <= epoch)` (PyTorch's `MultiStepLR`).
    MultiStep {
        /// Epochs at which to decay, increasing.
        milestones: Vec<u64>,
        /// Multiplicative decay.
        gamma: f64,
    },
    /// `base_lr · gamma^epoch` (PyTorch's `ExponentialLR`).
    Exponential {
        /// Multiplicative decay per epoch.
        gamma: f64,
    },
    /// `base_lr · (1 - iteration / max_iteration)^power`, and 0 after
    /// `max_iteration` (BigDL's `Poly`).
    Poly {
        /// Exponent.
        power: f64,
        /// Iteration at which the rate reaches 0 (positive).
        max_iteration: u64,
    },
    /// `eta_min + (base_lr - eta_min) · (1 + cos(π · epoch / t_max)) / 2`
    /// (PyTorch's `CosineAnnealingLR`, closed form).
    Cosine {
        /// Half period in epochs (positive).
        t_max: u64,
        /// Minimum learning rate.
        eta_min: f64,
    },
    /// Linear warm-up over `warmup_steps` iterations from
    /// `start_factor · base_lr` to `base_lr` (PyTorch's `LinearLR`), then
    /// `after` evaluated at `iteration - warmup_steps`.
    Warmup {
        /// Iterations of warm-up.
        warmup_steps: u64,
        /// Fraction of `base_lr` at iteration 0, in `[0, 1]`.
        start_factor: f64,
        /// The schedule that follows.
        after: Box<LrSchedule>,
    },
    /// Multiplies the rate by `factor` when the metric stops improving
    /// (PyTorch's `ReduceLROnPlateau`); needs an [`LrScheduler`].
    Plateau(PlateauConfig),
}

fn bad(reason: String) -> Error {
    Error::config("LrSchedule", reason)
}

impl LrSchedule {
    /// Checks the schedule's parameters: step sizes and periods of at
    /// least 1, decay factors (`gamma`) in `(0, 1]` (a rate that only
    /// falls and never changes sign), `start_factor` in `[0, 1]`, `power`
    /// in `[0, 100]`, `eta_min` and the plateau's `min_lr`, `threshold`
    /// and `eps` finite and `>= 0`, its `factor` in `(0, 1)`, milestones
    /// increasing. NaN and infinities are refused everywhere.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|e| Error::range("LrSchedule", e))
    }

    fn check(&self) -> std::result::Result<(), OutOfRange> {
        let gamma = |g: f64| check_number("gamma", g, open_closed(0.0, 1.0)).map(drop);
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step {
                step_size,
                gamma: g,
            } => {
                check("step_size", *step_size, 1..)?;
                gamma(*g)
            }
            LrSchedule::MultiStep {
                milestones,
                gamma: g,
            } => {
                if milestones.windows(2).any(|w| w[0] > w[1]) {
                    return Err(OutOfRange::new(
                        "milestones",
                        format!("{milestones:?}"),
                        "increasing",
                    ));
                }
                gamma(*g)
            }
            LrSchedule::Exponential { gamma: g } => gamma(*g),
            LrSchedule::Poly {
                power,
                max_iteration,
            } => {
                check("max_iteration", *max_iteration, 1..)?;
                check_number("power", *power, 0.0..=100.0)?;
                Ok(())
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                check("t_max", *t_max, 1..)?;
                check_number("eta_min", *eta_min, 0.0..)?;
                Ok(())
            }
            LrSchedule::Warmup {
                start_factor,
                after,
                ..
            } => {
                check_number("start_factor", *start_factor, 0.0..=1.0)?;
                after.check().map_err(|e| e.within("after"))
            }
            LrSchedule::Plateau(c) => {
                check_number("factor", c.factor, open(0.0, 1.0))?;
                check_number("threshold", c.threshold, 0.0..)?;
                check_number("min_lr", c.min_lr, 0.0..)?;
                check_number("eps", c.eps, 0.0..)?;
                Ok(())
            }
        }
    }

    /// The counter this schedule is a function of (see the module documentation).
    pub fn counter(&self) -> Counter {
        match self {
            LrSchedule::Poly { .. } | LrSchedule::Warmup { .. } => Counter::Iteration,
            _ => Counter::Epoch,
        }
    }

    /// The learning rate at counter value `t` for base rate `base_lr`.
    /// `Plateau` returns `base_lr` here; its reductions are tracked by [`LrScheduler`].
    pub fn lr_at(&self, base_lr: f64, t: u64) -> f64 {
        self.lr_with(base_lr, t, None)
    }

    fn lr_with(&self, base_lr: f64, t: u64, plateau_lr: Option<f64>) -> f64 {
        match self {
            LrSchedule::Constant => base_lr,
            LrSchedule::Step { step_size, gamma } => {
                base_lr * gamma.powf((t / (*step_size).max(1)) as f64)
            }
            LrSchedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= t).count();
                base_lr * gamma.powi(passed as i32)
            }
            LrSchedule::Exponential { gamma } => base_lr * gamma.powf(t as f64),
            LrSchedule::Poly {
                power,
                max_iteration,
            } => {
                if t > *max_iteration {
                    0.0
                } else {
                    base_lr * (1.0 - t as f64 / *max_iteration as f64).powf(*power)
                }
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let x = std::f64::consts::PI * t as f64 / (*t_max).max(1) as f64;
                eta_min + (base_lr - eta_min) * (1.0 + x.cos()) / 2.0
            }
            LrSchedule::Warmup {
                warmup_steps,
                start_factor,
                after,
            } => {
                if t < *warmup_steps {
                    base_lr
                        * (start_factor + (1.0 - start_factor) * t as f64 / *warmup_steps as f64)
                } else {
                    after.lr_with(base_lr, t - warmup_steps, plateau_lr)
                }
            }
            LrSchedule::Plateau(_) => plateau_lr.unwrap_or(base_lr),
        }
    }

    fn plateau(&self) -> Option<&PlateauConfig> {
        match self {
            LrSchedule::Plateau(c) => Some(c),
            LrSchedule::Warmup { after, .. } => after.plateau(),
            _ => None,
        }
    }
}

/// The state of reduce-on-plateau (PyTorch's `ReduceLROnPlateau.step`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReduceLrOnPlateau {
    config: PlateauConfig,
    lr: f64,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
}

impl ReduceLrOnPlateau {
    /// Starts at learning rate `lr` with no best metric yet.
    pub fn new(config: PlateauConfig, lr: f64) -> Result<Self> {
        LrSchedule::Plateau(config.clone()).validate()?;
        let best = match config.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        };
        Ok(ReduceLrOnPlateau {
            config,
            lr,
            best,
            num_bad_epochs: 0,
            cooldown_counter: 0,
        })
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    fn is_better(&self, a: f64) -> bool {
        let c = &self.config;
        match (c.mode, c.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < self.best * (1.0 - c.threshold),
            (PlateauMode::Min, ThresholdMode::Abs) => a < self.best - c.threshold,
            (PlateauMode::Max, ThresholdMode::Rel) => a > self.best * (1.0 + c.threshold),
            (PlateauMode::Max, ThresholdMode::Abs) => a > self.best + c.threshold,
        }
    }

    /// Feeds one epoch's metric and returns the (possibly reduced) learning rate.
    pub fn step(&mut self, metric: f64) -> f64 {
        if self.is_better(metric) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.config.patience {
            let new_lr = (self.lr * self.config.factor).max(self.config.min_lr);
            if self.lr - new_lr > self.config.eps {
                self.lr = new_lr;
            }
            self.cooldown_counter = self.config.cooldown;
            self.num_bad_epochs = 0;
        }
        self.lr
    }
}

/// What a trainer holds: a schedule, its base rate and any plateau state.
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    schedule: LrSchedule,
    base_lr: f64,
    plateau: Option<ReduceLrOnPlateau>,
}

impl LrScheduler {
    /// Validates `schedule` and starts it at `base_lr`.
    pub fn new(schedule: LrSchedule, base_lr: f64) -> Result<Self> {
        schedule.validate()?;
        if !(base_lr >= 0.0 && base_lr.is_finite()) {
            return Err(bad(format!(
                "base_lr = {base_lr} must be a finite number >= 0"
            )));
        }
        let plateau = match schedule.plateau() {
            Some(c) => Some(ReduceLrOnPlateau::new(c.clone(), base_lr)?),
            None => None,
        };
        Ok(LrScheduler {
            schedule,
            base_lr,
            plateau,
        })
    }

    /// The schedule.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// The learning rate at counter value `t` ([`LrSchedule::counter`] says which counter).
    pub fn lr(&self, t: u64) -> f64 {
        self.schedule
            .lr_with(self.base_lr, t, self.plateau.as_ref().map(|p| p.lr()))
    }

    /// Feeds an epoch's validation metric to a plateau schedule (no effect on others).
    pub fn observe(&mut self, metric: f64) {
        if let Some(p) = &mut self.plateau {
            p.step(metric);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn closed_form_schedules_match_pytorch_values() {
        // StepLR(step_size=3, gamma=0.1), lr 0.1: epochs 0..=6.
        let s = LrSchedule::Step {
            step_size: 3,
            gamma: 0.1,
        };
        let want = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001];
        for (t, w) in want.iter().enumerate() {
            close(s.lr_at(0.1, t as u64), *w);
        }
        // MultiStepLR(milestones=[2, 5], gamma=0.5), lr 1.
        let s = LrSchedule::MultiStep {
            milestones: vec![2, 5],
            gamma: 0.5,
        };
        let want = [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25];
        for (t, w) in want.iter().enumerate() {
            close(s.lr_at(1.0, t as u64), *w);
        }
        let s = LrSchedule::Exponential { gamma: 0.9 };
        close(s.lr_at(0.5, 3), 0.5 * 0.729);
        // CosineAnnealingLR(T_max=10, eta_min=0.001), lr 0.1.
        let s = LrSchedule::Cosine {
            t_max: 10,
            eta_min: 0.001,
        };
        close(s.lr_at(0.1, 0), 0.1);
        close(s.lr_at(0.1, 5), 0.0505);
        close(s.lr_at(0.1, 10), 0.001);
        close(
            s.lr_at(0.1, 3),
            0.001 + 0.099 * (1.0 + (0.3 * std::f64::consts::PI).cos()) / 2.0,
        );
        // BigDL Poly(power=0.5, maxIteration=100).
        let s = LrSchedule::Poly {
            power: 0.5,
            max_iteration: 100,
        };
        close(s.lr_at(0.1, 0), 0.1);
        close(s.lr_at(0.1, 75), 0.05);
        close(s.lr_at(0.1, 100), 0.0);
        close(s.lr_at(0.1, 150), 0.0);
        assert_eq!(s.counter(), Counter::Iteration);
    }

    #[test]
    fn warmup_ramps_then_hands_over() {
        // LinearLR(start_factor=0.25, total_iters=4) then StepLR(2, 0.5).
        let s = LrSchedule::Warmup {
            warmup_steps: 4,
            start_factor: 0.25,
            after: Box::new(LrSchedule::Step {
                step_size: 2,
                gamma: 0.5,
            }),
        };
        let want = [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 0.5, 0.5, 0.25];
        for (t, w) in want.iter().enumerate() {
            close(s.lr_at(1.0, t as u64), *w);
        }
    }

    #[test]
    fn plateau_reduces_after_patience_with_cooldown() {
        let cfg = PlateauConfig {
            factor: 0.5,
            patience: 1,
            cooldown: 1,
            min_lr: 0.2,
            ..Default::default()
        };
        let mut s = LrScheduler::new(LrSchedule::Plateau(cfg), 1.0).unwrap();
        // Hand-traced with torch.optim.lr_scheduler.ReduceLROnPlateau.
        let metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95];
        let want = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25];
        for (m, w) in metrics.iter().zip(want) {
            s.observe(*m);
            close(s.lr(0), w);
        }
        s.observe(0.95);
        s.observe(0.95);
        close(s.lr(0), 0.2);
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(LrSchedule::Step {
            step_size: 0,
            gamma: 0.1
        }
        .validate()
        .is_err());
        assert!(LrSchedule::MultiStep {
            milestones: vec![5, 2],
            gamma: 0.1
        }
        .validate()
        .is_err());
        assert!(LrSchedule::Cosine {
            t_max: 0,
            eta_min: 0.0
        }
        .validate()
        .is_err());
        assert!(LrScheduler::new(LrSchedule::Constant, -1.0).is_err());
        // A rate that grows without bound, changes sign or is not a
        // number is refused, also inside a warm-up.
        for g in [-0.5, 0.0, 1.5, f64::NAN, f64::INFINITY] {
            let e = LrSchedule::Warmup {
                warmup_steps: 1,
                start_factor: 0.1,
                after: Box::new(LrSchedule::Exponential { gamma: g }),
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains("after.gamma") && e.contains("(0, 1]"), "{e}");
        }
        for eta_min in [f64::INFINITY, -1.0, f64::NAN] {
            assert!(LrSchedule::Cosine { t_max: 1, eta_min }.validate().is_err());
        }
        let plateau = |min_lr| {
            LrSchedule::Plateau(PlateauConfig {
                min_lr,
                ..PlateauConfig::default()
            })
            .validate()
        };
        assert!(plateau(f64::INFINITY).is_err());
        assert!(serde_json::from_str::<LrSchedule>(
            r#"{"type":"step","step_size":1,"gamma":0.5,"gama":1}"#
        )
        .is_err());
        let s: LrSchedule = serde_json::from_str(
            r#"{"type":"warmup","warmup_steps":10,"start_factor":0.1,"after":{"type":"cosine","t_max":100,"eta_min":0.0}}"#,
        )
        .unwrap();
        assert_eq!(s.counter(), Counter::Iteration);
    }
}
