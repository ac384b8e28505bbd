//! RMSprop (`torch.optim.RMSprop`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, Core, Grads, Optimizer};
use crate::error::{Error, Result};
use crate::tensor::Float;

/// Configuration of [`RmsProp`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmsPropConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average, in `[0, 1]` (default 0.99).
    pub alpha: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalise by the estimated variance instead of the uncentred second moment.
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

impl RmsPropConfig {
    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "RMSprop";
        check_non_negative(w, "lr", self.lr)?;
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::config(
                w,
                format!("alpha = {} must lie in [0, 1]", self.alpha),
            ));
        }
        check_non_negative(w, "eps", self.eps)?;
        check_non_negative(w, "weight_decay", self.weight_decay)?;
        check_non_negative(w, "momentum", self.momentum)
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<RmsProp<F>> {
        self.validate()?;
        let mut names = vec![("square_avg", 0.0)];
        if self.momentum > 0.0 {
            names.push(("momentum_buffer", 0.0));
        }
        if self.centered {
            names.push(("grad_avg", 0.0));
        }
        Ok(RmsProp {
            cfg: self.clone(),
            core: Core::new("RMSprop", names),
        })
    }
}

/// RMSprop: `g += wd·p; sq = α·sq + (1-α)·g²`; centred: `ga = α·ga + (1-α)·g`,
/// `avg = √(sq - ga²) + eps`, else `avg = √sq + eps`; with momentum
/// `buf = μ·buf + g/avg; p -= lr·buf`, else `p -= lr·g/avg`.
/// State: `square_avg`, plus `momentum_buffer` (momentum > 0) and `grad_avg` (centred).
#[derive(Debug, Clone)]
pub struct RmsProp<F> {
    cfg: RmsPropConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for RmsProp<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "RMSprop(lr={}, alpha={}, eps={}, weight_decay={}, momentum={}, centered={})",
            c.lr, c.alpha, c.eps, c.weight_decay, c.momentum, c.centered
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let c = self.cfg.clone();
        let mom = c.momentum > 0.0;
        let ga = if mom { 2 } else { 1 };
        self.core.run(params, grads, |p, g, s| {
            let g = g + c.weight_decay * *p;
            s[0] = c.alpha * s[0] + (1.0 - c.alpha) * g * g;
            let avg = if c.centered {
                s[ga] += (g - s[ga]) * (1.0 - c.alpha);
                (s[0] - s[ga] * s[ga]).sqrt() + c.eps
            } else {
                s[0].sqrt() + c.eps
            };
            if mom {
                s[1] = c.momentum * s[1] + g / avg;
                *p -= c.lr * s[1];
            } else {
                *p -= c.lr * g / avg;
            }
        })
    }

    optimizer_common!();
}
