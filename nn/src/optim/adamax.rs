//! Adamax (`torch.optim.Adamax`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, check_unit, Core, Grads, Optimizer};
use crate::error::Result;
use crate::tensor::Float;

/// Configuration of [`Adamax`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamaxConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Decay rates of the first moment and the infinity norm (default (0.9, 0.999)), each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to `|g|` in the infinity norm (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
}

impl Default for AdamaxConfig {
    fn default() -> Self {
        AdamaxConfig {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamaxConfig {
    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "Adamax";
        check_non_negative(w, "lr", self.lr)?;
        check_unit(w, "betas.0", self.betas.0)?;
        check_unit(w, "betas.1", self.betas.1)?;
        check_non_negative(w, "eps", self.eps)?;
        check_non_negative(w, "weight_decay", self.weight_decay)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Adamax<F>> {
        self.validate()?;
        Ok(Adamax {
            cfg: self.clone(),
            core: Core::new("Adamax", vec![("exp_avg", 0.0), ("exp_inf", 0.0)]),
        })
    }
}

/// Adamax: `g += wd·p; m = β1·m + (1-β1)·g; u = max(β2·u, |g| + eps);
/// p -= lr/(1-β1ᵗ) · m/u`. State: `exp_avg`, `exp_inf`.
#[derive(Debug, Clone)]
pub struct Adamax<F> {
    cfg: AdamaxConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for Adamax<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "Adamax(lr={}, betas={:?}, eps={}, weight_decay={})",
            c.lr, c.betas, c.eps, c.weight_decay
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        let (b1, b2) = c.betas;
        let t = (self.core.step + 1) as f64;
        let clr = c.lr / (1.0 - b1.powf(t));
        self.core.run(params, grads, |p, g, s| {
            let g = g + c.weight_decay * *p;
            s[0] += (g - s[0]) * (1.0 - b1);
            s[1] = (b2 * s[1]).max(g.abs() + c.eps);
            *p -= clr * s[0] / s[1];
        })
    }

    optimizer_common!();
}
