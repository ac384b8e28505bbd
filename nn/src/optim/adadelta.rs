//! Adadelta (`torch.optim.Adadelta`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, Core, Grads, Optimizer};
use crate::error::{Error, Result};
use crate::tensor::Float;

/// Configuration of [`Adadelta`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdadeltaConfig {
    /// Scale of the delta (default 1.0).
    pub lr: f64,
    /// Decay rate of the running averages, in `[0, 1]` (default 0.9).
    pub rho: f64,
    /// Added inside the square roots (default 1e-6).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

impl AdadeltaConfig {
    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "Adadelta";
        check_non_negative(w, "lr", self.lr)?;
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::config(
                w,
                format!("rho = {} must lie in [0, 1]", self.rho),
            ));
        }
        check_non_negative(w, "eps", self.eps)?;
        check_non_negative(w, "weight_decay", self.weight_decay)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Adadelta<F>> {
        self.validate()?;
        Ok(Adadelta {
            cfg: self.clone(),
            core: Core::new("Adadelta", vec![("square_avg", 0.0), ("acc_delta", 0.0)]),
        })
    }
}

/// Adadelta: `g += wd·p; sq = ρ·sq + (1-ρ)·g²; δ = √(acc+eps)/√(sq+eps)·g;
/// acc = ρ·acc + (1-ρ)·δ²; p -= lr·δ`. State: `square_avg`, `acc_delta`.
#[derive(Debug, Clone)]
pub struct Adadelta<F> {
    cfg: AdadeltaConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for Adadelta<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "Adadelta(lr={}, rho={}, eps={}, weight_decay={})",
            c.lr, c.rho, c.eps, c.weight_decay
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        self.core.run(params, grads, |p, g, s| {
            let g = g + c.weight_decay * *p;
            s[0] = c.rho * s[0] + (1.0 - c.rho) * g * g;
            let delta = (s[1] + c.eps).sqrt() / (s[0] + c.eps).sqrt() * g;
            s[1] = c.rho * s[1] + (1.0 - c.rho) * delta * delta;
            *p -= c.lr * delta;
        })
    }

    optimizer_common!();
}
