//! Optimizers over flat parameter buffers. An optimizer updates a slice of
//! parameters from the matching slice of gradients, and keeps its state
//! (momentum, moment estimates, …) as flat buffers aligned with the
//! parameters, so a parameter actor that owns elements `a..b` can own
//! exactly the state of those elements ([`OptimizerState::slice`]).

use crate::error::{Error, Result};
use crate::tensor::Float;

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
