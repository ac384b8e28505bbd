//! Stochastic gradient descent with momentum (`torch.optim.SGD`).

use serde::{Deserialize, Serialize};

use super::{check_non_negative, Core, Grads, Optimizer};
use crate::error::{Error, Result};
use crate::tensor::Float;

/// Configuration of [`Sgd`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Dampening of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        SgdConfig {
            lr,
            ..Default::default()
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "SGD";
        check_non_negative(w, "lr", self.lr)?;
        check_non_negative(w, "momentum", self.momentum)?;
        check_non_negative(w, "dampening", self.dampening)?;
        check_non_negative(w, "weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::config(
                w,
                format!(
                    "nesterov momentum requires momentum > 0 and dampening = 0 (got momentum {}, dampening {})",
                    self.momentum, self.dampening
                ),
            ));
        }
        Ok(())
    }

    /// Validates and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Sgd<F>> {
        self.validate()?;
        let names = if self.momentum != 0.0 {
            vec![("momentum_buffer", 0.0)]
        } else {
            Vec::new()
        };
        Ok(Sgd {
            cfg: self.clone(),
            core: Core::new("SGD", names),
        })
    }
}

/// SGD: `g += wd·p; buf = μ·buf + (1-dampening)·g` (`buf = g` on the first
/// step); `g = g + μ·buf` (Nesterov) or `buf`; `p -= lr·g`.
/// State: `momentum_buffer` when `momentum != 0`.
#[derive(Debug, Clone)]
pub struct Sgd<F> {
    cfg: SgdConfig,
    core: Core<F>,
}

impl<F: Float> Optimizer<F> for Sgd<F> {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "SGD(lr={}, momentum={}, dampening={}, weight_decay={}, nesterov={})",
            c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov
        )
    }

    fn step_from(&mut self, params: &mut [F], grads: Grads<'_, F>) -> Result<()> {
        let SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        } = self.cfg;
        let first = self.core.step == 0;
        // One closure per case, so no loop carries the settings' branches
        // (which kept the momentum loop from vectorising); the arithmetic
        // is the same in every case.
        match (momentum != 0.0, first, nesterov) {
            (false, _, _) => self.core.run(params, grads, |p, g, _| {
                let d = g + weight_decay * *p;
                *p -= lr * d;
            }),
            (true, true, false) => self.core.run(params, grads, |p, g, s| {
                s[0] = g + weight_decay * *p;
                *p -= lr * s[0];
            }),
            (true, true, true) => self.core.run(params, grads, |p, g, s| {
                let d = g + weight_decay * *p;
                s[0] = d;
                *p -= lr * (d + momentum * s[0]);
            }),
            (true, false, false) => self.core.run(params, grads, |p, g, s| {
                let d = g + weight_decay * *p;
                s[0] = momentum * s[0] + (1.0 - dampening) * d;
                *p -= lr * s[0];
            }),
            (true, false, true) => self.core.run(params, grads, |p, g, s| {
                let d = g + weight_decay * *p;
                s[0] = momentum * s[0] + (1.0 - dampening) * d;
                *p -= lr * (d + momentum * s[0]);
            }),
        }
    }

    optimizer_common!();
}
