//! Applies an inner module to every step of a `(T, N, …)` sequence by
//! folding time into the batch: `(T*N, …)` through the module, then back to
//! `(T, N, …)`.

use super::{check_lengths, full_lengths, SequenceModule};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{Module, Param};
use crate::tensor::{reshape, Float, Tensor};

/// Runs `inner` on `(T*N, …)` and reshapes its output to `(T, N, …)`.
/// With lengths, outputs at padded steps are zero and their gradients ignored.
pub struct TimeDistributed<F: Float> {
    /// The per-step module (its parameters keep their own names).
    pub inner: Box<dyn Module<F>>,
}

impl<F: Float> TimeDistributed<F> {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Module<F>>) -> Self {
        TimeDistributed { inner }
    }

    fn folded(&self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let s = input.shape();
        if s.len() < 3 {
            return Err(Error::shape(self.name(), "(T, N, ...)", s));
        }
        let mut shape = vec![s[0] * s[1]];
        shape.extend_from_slice(&s[2..]);
        reshape(&self.name(), input, &shape)
    }

    fn unfold(&self, y: &Tensor<F>, t: usize, n: usize) -> Result<Tensor<F>> {
        let mut shape = vec![t, n];
        shape.extend_from_slice(y.shape().get(1..).unwrap_or(&[]));
        reshape(&self.name(), y, &shape)
    }
}

/// Zeroes the steps `t >= lengths[n]` of a `(T, N, …)` tensor.
fn mask<F: Float>(x: &mut Tensor<F>, lengths: &[usize]) {
    for (b, &l) in lengths.iter().enumerate() {
        for t in l..x.shape()[0] {
            x.index_axis_mut(ndarray::Axis(0), t)
                .index_axis_mut(ndarray::Axis(0), b)
                .fill(F::zero());
        }
    }
}

impl<F: Float> SequenceModule<F> for TimeDistributed<F> {
    fn forward_with_lengths(&mut self, input: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
        let x = self.folded(input)?;
        check_lengths(&self.name(), input.shape(), lengths)?;
        let y = self.inner.forward(&x)?;
        let mut y = self.unfold(&y, input.shape()[0], input.shape()[1])?;
        mask(&mut y, lengths);
        Ok(y)
    }

    fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>> {
        let x = self.folded(input)?;
        check_lengths(&self.name(), input.shape(), lengths)?;
        let mut g = grad_output.to_owned();
        if g.ndim() < 2 || g.shape()[..2] != input.shape()[..2] {
            return Err(Error::shape(
                format!("{} backward", self.name()),
                format!(
                    "grad_output ({}, {}, ...)",
                    input.shape()[0],
                    input.shape()[1]
                ),
                g.shape(),
            ));
        }
        mask(&mut g, lengths);
        let g = self.folded(&g)?;
        let dx = self.inner.backward(&x, &g)?;
        reshape(&self.name(), &dx, input.shape())
    }
}

impl<F: Float> Module<F> for TimeDistributed<F> {
    fn name(&self) -> String {
        format!("TimeDistributed({})", self.inner.name())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.forward_with_lengths(input, &full_lengths(input.shape()))
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        self.backward_with_lengths(input, &full_lengths(input.shape()), grad_output)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        self.inner.visit_params(prefix, f)
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        self.inner.visit_params_mut(prefix, f)
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        self.inner.visit_buffers(prefix, f)
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        self.inner.visit_buffers_mut(prefix, f)
    }

    fn set_training(&mut self, training: bool) {
        self.inner.set_training(training)
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::TimeDistributed {
            inner: Box::new(self.inner.config()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use crate::layers::recurrent::WithLengths;
    use crate::layers::LinearConfig;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn linear_per_step_passes_gradcheck_and_round_trips_config() {
        let mut rng = StdRng::seed_from_u64(4);
        let x = init::uniform(&mut rng, &[3, 2, 4], 1.0);
        let mut m = TimeDistributed::new(Box::new(
            LinearConfig::new(4, 3).init::<f64>(&mut rng).unwrap(),
        ));
        assert_eq!(m.forward(&x).unwrap().shape(), [3, 2, 3]);
        check_module(&mut m, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
        let cfg = m.config();
        assert_eq!(cfg.build::<f64>(&mut rng).unwrap().config(), cfg);
        let inner = TimeDistributed::new(Box::new(
            LinearConfig::new(4, 3).init::<f64>(&mut rng).unwrap(),
        ));
        let mut w = WithLengths {
            inner,
            lengths: vec![3, 1],
        };
        let y = w.forward(&x).unwrap();
        assert!(y.slice(ndarray::s![1.., 1, ..]).iter().all(|&v| v == 0.0));
        check_module(&mut w, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
        assert!(m
            .forward(&Tensor::zeros(ndarray::IxDyn(&[3, 2, 5])))
            .is_err());
    }
}

#[cfg(test)]
mod serialize_tests {
    use crate::layers::{
        BatchNormConfig, BiRecurrentConfig, LayerConfig, LinearConfig, MergeMode, RecurrentConfig,
    };
    use crate::serialize;
    use crate::tensor::Tensor;
    use crate::ModuleExt;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A recurrent stack expressed as a `LayerConfig` tree saves and reloads
    /// through `serialize` with identical outputs.
    #[test]
    fn recurrent_stack_saves_and_reloads() {
        let config = LayerConfig::Sequential {
            layers: vec![
                LayerConfig::BiRecurrent(BiRecurrentConfig::new(
                    RecurrentConfig::lstm(3, 4),
                    MergeMode::Concat,
                )),
                LayerConfig::SequenceBatchNorm(BatchNormConfig::new(8)),
                LayerConfig::Recurrent(RecurrentConfig::gru(8, 2)),
                LayerConfig::TimeDistributed {
                    inner: Box::new(LayerConfig::Linear(LinearConfig::new(2, 5))),
                },
            ],
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut m = config.build::<f32>(&mut rng).unwrap();
        let x: Tensor<f32> = crate::init::uniform(&mut rng, &[4, 2, 3], 1.0);
        m.forward(&x).unwrap();
        m.eval_mode();
        let want = m.forward(&x).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rnn.safetensors");
        serialize::save(m.as_ref(), &path, &Default::default()).unwrap();
        let mut back = serialize::load::<f32>(&path).unwrap();
        assert_eq!(back.config(), config);
        back.eval_mode();
        assert_eq!(back.forward(&x).unwrap(), want);
        assert_eq!(back.flat_params(), m.flat_params());
    }
}
