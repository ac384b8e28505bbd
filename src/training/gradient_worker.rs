//! The one gradient worker of every training kind: a kiln-nn
//! [`Objective`] behind the runtime's [`GradientWorker`] (flat weights in,
//! summed gradients out, buffers in and out).

use kiln_nn::objective::{BatchLoss, Objective};
use kiln_nn::ModuleExt;
use kiln_runtime::train::{BatchStats, GradientWorker};
use kiln_runtime::{BoxError, Data, Registry};
use serde::de::DeserializeOwned;

/// An [`Objective`] as a [`GradientWorker`].
pub struct ObjectiveWorker<O> {
    objective: O,
    params: usize,
}

impl<O> ObjectiveWorker<O> {
    /// Wraps `objective` (its network's size is read once).
    pub fn new<S>(objective: O) -> Self
    where
        O: Objective<S>,
    {
        let params = objective.network().num_params();
        ObjectiveWorker { objective, params }
    }
}

fn stats(loss: BatchLoss) -> BatchStats {
    BatchStats {
        loss_sum: loss.loss_sum,
        samples: loss.samples,
        correct: loss.correct,
    }
}

impl<S, O> GradientWorker<S> for ObjectiveWorker<O>
where
    S: 'static,
    O: Objective<S> + 'static,
{
    fn num_params(&self) -> usize {
        self.params
    }

    fn gradients(
        &mut self,
        params: &[f32],
        samples: &[&S],
        seed: u64,
        grads: &mut [f32],
    ) -> Result<BatchStats, BoxError> {
        let net = self.objective.network_mut();
        net.set_flat_params(params)?;
        net.zero_grad();
        let loss = self.objective.loss_and_gradients(samples, seed)?;
        // Straight into the caller's buffer: no flat copy of the gradient.
        let mut offset = 0;
        let mut fits = true;
        let mut non_finite: Option<String> = None;
        self.objective.network().visit_params("", &mut |name, p| {
            let n = p.grad.len();
            match grads.get_mut(offset..offset + n) {
                Some(out) => {
                    match p.grad.as_slice() {
                        Some(g) => out.copy_from_slice(g),
                        None => out.iter_mut().zip(p.grad.iter()).for_each(|(o, g)| *o = *g),
                    }
                    if non_finite.is_none() && !out.iter().all(|g| g.is_finite()) {
                        non_finite = Some(name.to_string());
                    }
                }
                None => fits = false,
            }
            offset += n;
        });
        if !fits || offset != grads.len() {
            return Err(format!(
                "the network has {offset} gradient values, the buffer {}",
                grads.len()
            )
            .into());
        }
        // A non-finite loss is the driver's to report (it names the
        // iteration); a finite loss with non-finite gradients is refused
        // here, before anything is applied.
        if let (Some(name), true) = (non_finite, loss.loss_sum.is_finite()) {
            return Err(format!(
                "non-finite gradient values in {name:?} (the loss was {}): training diverged or the data holds extreme values; nothing was applied",
                loss.loss_sum
            )
            .into());
        }
        Ok(stats(loss))
    }

    fn evaluate(&mut self, params: &[f32], samples: &[&S]) -> Result<BatchStats, BoxError> {
        self.objective.network_mut().set_flat_params(params)?;
        Ok(self.objective.evaluate(samples).map(stats)?)
    }

    fn num_buffers(&self) -> usize {
        self.objective.network().num_buffers()
    }

    fn buffers(&self) -> Vec<f32> {
        self.objective.network().flat_buffers()
    }

    fn set_buffers(&mut self, buffers: &[f32]) -> Result<(), BoxError> {
        if buffers.is_empty() && self.num_buffers() == 0 {
            return Ok(());
        }
        Ok(self.objective.network_mut().set_flat_buffers(buffers)?)
    }
}

/// Registers the objective `build` makes from its configuration `C` as the
/// trainer `name`, training on samples `S`.
pub fn register_objective<S, C, O, E>(
    registry: &mut Registry,
    name: &str,
    build: impl Fn(&C) -> Result<O, E> + Send + Sync + 'static,
) where
    S: Data,
    C: DeserializeOwned,
    O: Objective<S> + 'static,
    E: Into<BoxError>,
{
    registry.register_trainer::<S, C, ObjectiveWorker<O>>(name, move |c| {
        build(c).map(ObjectiveWorker::new::<S>).map_err(Into::into)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_nn::layers::{LayerConfig, LinearConfig};
    use kiln_nn::objective::{Classifier, LabelledSample};

    #[test]
    fn the_worker_loads_weights_zeroes_and_returns_the_summed_gradient() {
        let config = LayerConfig::Sequential {
            layers: vec![
                LayerConfig::Linear(LinearConfig::new(3, 4)),
                LayerConfig::LogSoftMax { dim: 1 },
            ],
        };
        let mut w = ObjectiveWorker::new(Classifier::new(&config, &[3]).unwrap());
        let n = GradientWorker::<LabelledSample>::num_params(&w);
        let params: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let samples: Vec<LabelledSample> = (0..5)
            .map(|i| (vec![i as f32, 1.0 - i as f32, 0.5], (i % 4) as u32))
            .collect();
        let refs: Vec<&LabelledSample> = samples.iter().collect();
        let mut all = vec![0.0; n];
        w.gradients(&params, &refs, 0, &mut all).unwrap();
        // Twice in a row: gradients are zeroed in between, not accumulated.
        let mut again = vec![0.0; n];
        w.gradients(&params, &refs, 0, &mut again).unwrap();
        assert_eq!(all, again);
        let mut a = vec![0.0; n];
        let mut b = vec![0.0; n];
        w.gradients(&params, &refs[..2], 0, &mut a).unwrap();
        w.gradients(&params, &refs[2..], 0, &mut b).unwrap();
        for i in 0..n {
            assert!((all[i] - (a[i] + b[i])).abs() < 1e-5, "{i}");
        }
        let mut short = vec![0.0; n - 1];
        assert!(w.gradients(&params, &refs, 0, &mut short).is_err());
        assert!(w.set_buffers(&[]).is_ok());
        assert!(w.set_buffers(&[1.0]).is_err());
    }
}
