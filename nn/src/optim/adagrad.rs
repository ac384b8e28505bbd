//! Adagrad (`torch.optim.Adagrad`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, Core, Grads, Optimizer};
use crate::error::Result;
use crate::tensor::Float;

/// Configuration of [`Adagrad`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay: step `t` uses `lr / (1 + (t-1)·lr_decay)` (default 0).
    pub lr_decay: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Initial value of the `sum` accumulator (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default 1e-10).
    pub eps: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

impl AdagradConfig {
    /// Adagrad with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f64) -> Self {
        AdagradConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "Adagrad";
        check_non_negative(w, "lr", self.lr)?;
        check_non_negative(w, "lr_decay", self.lr_decay)?;
        check_non_negative(w, "weight_decay", self.weight_decay)?;
        check_non_negative(
            w,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        check_non_negative(w, "eps", self.eps)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Adagrad<F>> {
        self.validate()?;
        Ok(Adagrad {
            cfg: self.clone(),
            core: Core::new("Adagrad", vec![("sum", self.initial_accumulator_value)]),
        })
    }
}

/// Adagrad: `g += wd·p; sum += g²; p -= lr/(1 + (t-1)·lr_decay) · g / (√sum + eps)`.
/// State: `sum`.
#[derive(Debug, Clone)]
pub struct Adagrad<F> {
    cfg: AdagradConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for Adagrad<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "Adagrad(lr={}, lr_decay={}, weight_decay={}, initial_accumulator_value={}, eps={})",
            c.lr, c.lr_decay, c.weight_decay, c.initial_accumulator_value, c.eps
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        let clr = c.lr / (1.0 + self.core.step as f64 * c.lr_decay);
        self.core.run(params, grads, |p, g, s| {
            let g = g + c.weight_decay * *p;
            s[0] += g * g;
            *p -= clr * g / (s[0].sqrt() + c.eps);
        })
    }

    optimizer_common!();
}
