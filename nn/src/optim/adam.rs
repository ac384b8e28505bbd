//! Adam and AdamW (`torch.optim.Adam`, `torch.optim.AdamW`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, check_unit, Core, Grads, Optimizer};
use crate::error::Result;
use crate::tensor::Float;

/// Configuration of [`Adam`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the first and second moment estimates (default (0.9, 0.999)), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Use the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

/// Configuration of [`AdamW`]; defaults are PyTorch's (weight decay 0.01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay rates of the moment estimates (default (0.9, 0.999)), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr·weight_decay` each step (default 0.01).
    pub weight_decay: f64,
    /// Use the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            amsgrad: false,
        }
    }
}

fn validate(what: &str, lr: f64, betas: (f64, f64), eps: f64, wd: f64) -> Result<()> {
    check_non_negative(what, "lr", lr)?;
    check_unit(what, "betas.0", betas.0)?;
    check_unit(what, "betas.1", betas.1)?;
    check_non_negative(what, "eps", eps)?;
    check_non_negative(what, "weight_decay", wd)
}

fn names(amsgrad: bool) -> Vec<(&'static str, f64)> {
    let mut n = vec![("exp_avg", 0.0), ("exp_avg_sq", 0.0)];
    if amsgrad {
        n.push(("max_exp_avg_sq", 0.0));
    }
    n
}

impl AdamConfig {
    /// Adam with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f64) -> Self {
        AdamConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        validate("Adam", self.lr, self.betas, self.eps, self.weight_decay)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Adam<F>> {
        self.validate()?;
        Ok(Adam {
            cfg: self.clone(),
            core: Core::new("Adam", names(self.amsgrad)),
        })
    }
}

impl AdamWConfig {
    /// AdamW with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f64) -> Self {
        AdamWConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        validate("AdamW", self.lr, self.betas, self.eps, self.weight_decay)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<AdamW<F>> {
        self.validate()?;
        Ok(AdamW {
            cfg: self.clone(),
            core: Core::new("AdamW", names(self.amsgrad)),
        })
    }
}

/// The shared Adam update; `l2` is added to the gradient (Adam), `decoupled`
/// shrinks the parameter first (AdamW).
#[allow(clippy::too_many_arguments)]
fn adam_step<F: Float>(
    core: &mut Core<F>,
    params: &mut [F],
    grads: Grads<'_, F>,
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
    l2: f64,
    decoupled: f64,
    amsgrad: bool,
) -> Result<()> {
    let t = (core.step + 1) as f64;
    let bc1 = 1.0 - b1.powf(t);
    let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
    let step_size = lr / bc1;
    core.run(params, grads, |p, g, s| {
        *p *= 1.0 - lr * decoupled;
        let g = g + l2 * *p;
        s[0] += (g - s[0]) * (1.0 - b1);
        s[1] = b2 * s[1] + (1.0 - b2) * g * g;
        let v = if amsgrad {
            s[2] = s[2].max(s[1]);
            s[2]
        } else {
            s[1]
        };
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p -= step_size * s[0] / denom;
    })
}

/// Adam: `g += wd·p; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²`
/// (`v̂ = max(v̂, v)` with AMSGrad); `p -= lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + eps)`.
/// State: `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq` with AMSGrad).
#[derive(Debug, Clone)]
pub struct Adam<F> {
    cfg: AdamConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for Adam<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "Adam(lr={}, betas={:?}, eps={}, weight_decay={}, amsgrad={})",
            c.lr, c.betas, c.eps, c.weight_decay, c.amsgrad
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        adam_step(
            &mut self.core,
            params,
            grads,
            c.lr,
            c.betas,
            c.eps,
            c.weight_decay,
            0.0,
            c.amsgrad,
        )
    }

    optimizer_common!();
}

/// AdamW: Adam with decoupled weight decay, `p *= 1 - lr·wd` before the Adam update.
/// State: `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq` with AMSGrad).
#[derive(Debug, Clone)]
pub struct AdamW<F> {
    cfg: AdamWConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for AdamW<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "AdamW(lr={}, betas={:?}, eps={}, weight_decay={}, amsgrad={})",
            c.lr, c.betas, c.eps, c.weight_decay, c.amsgrad
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        adam_step(
            &mut self.core,
            params,
            grads,
            c.lr,
            c.betas,
            c.eps,
            0.0,
            c.weight_decay,
            c.amsgrad,
        )
    }

    optimizer_common!();
}
