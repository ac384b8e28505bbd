//! Optimizers over flat parameter buffers. An optimizer updates a slice of
//! parameters from the matching slice of gradients, and keeps its state
//! (momentum, moment estimates, …) as flat buffers aligned with the
//! parameters, so a parameter actor that owns elements `a..b` can own
//! exactly the state of those elements ([`OptimizerState::slice`]).
//!
//! The update rules match `torch.optim` exactly (single-tensor code path,
//! `maximize=False`); state buffers carry PyTorch's names. Arithmetic is done
//! in `f64` per element and stored back as `F`. [`Lbfgs`] needs to
//! re-evaluate the loss, so it has its own closure-based API instead of
//! [`Optimizer`]. Learning-rate schedules are in [`schedule`], gradient
//! clipping in [`clip`].

use crate::error::{Error, Result};
use crate::tensor::Float;

/// Implements the parts of [`Optimizer`] every elementwise optimizer
/// shares (its struct has `cfg` with an `lr` field, and `core`).
macro_rules! optimizer_common {
    () => {
        fn learning_rate(&self) -> f64 {
            self.cfg.lr
        }

        fn set_learning_rate(&mut self, lr: f64) {
            self.cfg.lr = lr;
        }

        fn state(&self) -> crate::optim::OptimizerState<F> {
            self.core.state()
        }

        fn load_state(&mut self, state: crate::optim::OptimizerState<F>) -> crate::error::Result<()> {
            self.core.load(state)
        }
    };
}

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
pub mod clip;
mod lbfgs;
mod rmsprop;
pub mod schedule;
mod sgd;

pub use adadelta::{Adadelta, AdadeltaConfig};
pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use adamax::{Adamax, AdamaxConfig};
pub use lbfgs::{Lbfgs, LbfgsClosure, LbfgsConfig, LineSearch};
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use sgd::{Sgd, SgdConfig};

/// An optimizer's state: a step counter and named buffers, each as long as
/// the parameter slice the optimizer updates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerState<F> {
    /// Number of steps taken.
    pub step: u64,
    /// Named per-element buffers (e.g. `momentum_buffer`, `exp_avg`).
    pub buffers: Vec<(String, Vec<F>)>,
}

impl<F: Float> OptimizerState<F> {
    /// The state of elements `start..end` (what one parameter shard owns).
    pub fn slice(&self, start: usize, end: usize) -> Result<Self> {
        let buffers = self
            .buffers
            .iter()
            .map(|(name, b)| {
                b.get(start..end)
                    .map(|s| (name.clone(), s.to_vec()))
                    .ok_or_else(|| {
                        Error::invalid(
                            "OptimizerState::slice",
                            format!(
                                "range {start}..{end} outside buffer {name:?} of {}",
                                b.len()
                            ),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        Ok(OptimizerState {
            step: self.step,
            buffers,
        })
    }

    /// Joins shard states back into one (the inverse of [`OptimizerState::slice`]).
    pub fn concat(parts: &[Self]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid("OptimizerState::concat", "no parts"));
        };
        let mut out = first.clone();
        for p in &parts[1..] {
            if p.step != out.step || p.buffers.len() != out.buffers.len() {
                return Err(Error::invalid(
                    "OptimizerState::concat",
                    "parts disagree on step or buffers",
                ));
            }
            for ((name, dst), (pname, src)) in out.buffers.iter_mut().zip(&p.buffers) {
                if name != pname {
                    return Err(Error::invalid(
                        "OptimizerState::concat",
                        format!("buffer {name:?} vs {pname:?}"),
                    ));
                }
                dst.extend_from_slice(src);
            }
        }
        Ok(out)
    }
}

/// An optimizer that updates parameters elementwise from their gradients.
pub trait Optimizer<F: Float>: Send {
    /// A short description (e.g. `SGD(lr=0.1, momentum=0.9)`).
    fn name(&self) -> String;

    /// Applies one update to `params` from `grads` (same length). The first
    /// call fixes the length; later calls with another length are errors.
    fn step(&mut self, params: &mut [F], grads: &[F]) -> Result<()>;

    /// The current learning rate.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate (learning-rate schedules call this).
    fn set_learning_rate(&mut self, lr: f64);

    /// The state as flat buffers aligned with the parameters.
    fn state(&self) -> OptimizerState<F>;

    /// Restores a state produced by [`Optimizer::state`] (or a slice of one).
    fn load_state(&mut self, state: OptimizerState<F>) -> Result<()>;
}

/// The configuration of any elementwise optimizer, tagged by `"type"` in
/// serialized form, e.g. `{"type": "sgd", "lr": 0.1, "momentum": 0.9}`.
/// Omitted fields take PyTorch's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd(SgdConfig),
    /// Adam (L2 weight decay added to the gradient).
    Adam(AdamConfig),
    /// AdamW (decoupled weight decay).
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// Adagrad.
    Adagrad(AdagradConfig),
    /// Adadelta.
    Adadelta(AdadeltaConfig),
    /// RMSprop.
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
    /// Adamax.
    Adamax(AdamaxConfig),
}

impl OptimizerConfig {
    /// Validates the configuration and builds the optimizer.
    pub fn build<F: Float>(&self) -> Result<Box<dyn Optimizer<F>>> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::Adam(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::AdamW(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::Adagrad(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::Adadelta(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::RmsProp(c) => Box::new(c.build::<F>()?),
            OptimizerConfig::Adamax(c) => Box::new(c.build::<F>()?),
        })
    }

    /// The configured learning rate.
    pub fn learning_rate(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
            OptimizerConfig::Adagrad(c) => c.lr,
            OptimizerConfig::Adadelta(c) => c.lr,
            OptimizerConfig::RmsProp(c) => c.lr,
            OptimizerConfig::Adamax(c) => c.lr,
        }
    }
}

/// Checks that a hyper-parameter is a finite number `>= 0`.
pub(crate) fn check_non_negative(what: &str, name: &str, v: f64) -> Result<()> {
    if !(v >= 0.0 && v.is_finite()) {
        return Err(Error::config(what, format!("{name} = {v} must be a finite number >= 0")));
    }
    Ok(())
}

/// Checks that a coefficient (beta, rho, alpha, …) lies in `[0, 1)`.
pub(crate) fn check_unit(what: &str, name: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        return Err(Error::config(what, format!("{name} = {v} must lie in [0, 1)")));
    }
    Ok(())
}

/// Shared machinery of the elementwise optimizers: the step counter, the
/// parameter length fixed by the first step, and the named state buffers.
#[derive(Debug, Clone)]
pub(crate) struct Core<F> {
    /// Optimizer name for errors.
    op: &'static str,
    /// Steps taken.
    pub(crate) step: u64,
    /// Length of the parameter slice, once known.
    len: Option<usize>,
    /// Buffer names with their initial values.
    names: Vec<(&'static str, f64)>,
    /// The buffers (empty until the first step or a loaded state).
    bufs: Vec<Vec<F>>,
}

/// Most buffers any optimizer keeps per element.
const MAX_BUFFERS: usize = 4;

impl<F: Float> Core<F> {
    /// A core with the given buffers (name, initial value).
    pub(crate) fn new(op: &'static str, names: Vec<(&'static str, f64)>) -> Self {
        Core {
            op,
            step: 0,
            len: None,
            names,
            bufs: Vec::new(),
        }
    }

    /// Checks lengths, allocates buffers on first use, increments the step
    /// counter and applies `f(param, grad, state)` to every element, where
    /// `state` holds the buffers' values in declaration order.
    pub(crate) fn run(
        &mut self,
        params: &mut [F],
        grads: &[F],
        f: impl Fn(&mut f64, f64, &mut [f64]),
    ) -> Result<()> {
        if params.len() != grads.len() {
            return Err(Error::ShapeMismatch {
                op: format!("{}::step: params and grads", self.op),
                lhs: vec![params.len()],
                rhs: vec![grads.len()],
            });
        }
        match self.len {
            Some(n) if n != params.len() => {
                return Err(Error::shape(
                    format!("{}::step", self.op),
                    format!("{n} parameters (fixed by the first step or the loaded state)"),
                    &[params.len()],
                ))
            }
            _ => self.len = Some(params.len()),
        }
        let k = self.names.len();
        if self.bufs.len() != k {
            self.bufs = self
                .names
                .iter()
                .map(|&(_, init)| vec![F::of(init); params.len()])
                .collect();
        }
        self.step += 1;
        let mut s = [0.0f64; MAX_BUFFERS];
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            for (j, b) in self.bufs.iter().enumerate() {
                s[j] = b[i].as_f64();
            }
            let mut pv = p.as_f64();
            f(&mut pv, g.as_f64(), &mut s[..k]);
            *p = F::of(pv);
            for (j, b) in self.bufs.iter_mut().enumerate() {
                b[i] = F::of(s[j]);
            }
        }
        Ok(())
    }

    /// The state (buffers are empty-free: before the first step they hold initial values only if a length is known).
    pub(crate) fn state(&self) -> OptimizerState<F> {
        let buffers = if self.bufs.len() == self.names.len() {
            self.names
                .iter()
                .zip(&self.bufs)
                .map(|((n, _), b)| (n.to_string(), b.clone()))
                .collect()
        } else {
            Vec::new()
        };
        OptimizerState {
            step: self.step,
            buffers,
        }
    }

    /// Loads a state: its buffers must be exactly this optimizer's (any
    /// order) and of equal lengths; a state without buffers (fresh
    /// optimizer) only sets the step counter.
    pub(crate) fn load(&mut self, state: OptimizerState<F>) -> Result<()> {
        let op = format!("{}::load_state", self.op);
        if state.buffers.is_empty() {
            self.step = state.step;
            self.bufs.clear();
            self.len = None;
            return Ok(());
        }
        let expected: Vec<&str> = self.names.iter().map(|(n, _)| *n).collect();
        let mut got: Vec<&str> = state.buffers.iter().map(|(n, _)| n.as_str()).collect();
        got.sort_unstable();
        let mut want = expected.clone();
        want.sort_unstable();
        if got != want {
            return Err(Error::invalid(
                op,
                format!("state has buffers {got:?}, this optimizer keeps {want:?}"),
            ));
        }
        let len = state.buffers[0].1.len();
        if let Some((n, b)) = state.buffers.iter().find(|(_, b)| b.len() != len) {
            return Err(Error::invalid(
                op,
                format!("buffer {n:?} has {} values, others {len}", b.len()),
            ));
        }
        let mut bufs = Vec::with_capacity(expected.len());
        for name in expected {
            if let Some((_, b)) = state.buffers.iter().find(|(n, _)| n == name) {
                bufs.push(b.clone());
            }
        }
        self.bufs = bufs;
        self.len = Some(len);
        self.step = state.step;
        Ok(())
    }
}
