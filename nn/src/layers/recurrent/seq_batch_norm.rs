//! Sequence-wise batch normalisation (Deep Speech 2, Amodei et al. 2016,
//! section 3.2): batch norm over the feature axis of `(T, N, F)` with
//! statistics over all valid `(t, n)` steps of the mini-batch. Padded steps
//! take no part in the statistics and give zero outputs.

use super::{check_lengths, contiguous, full_lengths, SequenceModule};
use crate::error::{Error, Result};
use crate::layers::norm::{BatchNorm, BatchNormConfig};
use crate::layers::LayerConfig;
use crate::module::{Module, Param};
use crate::tensor::{Float, Tensor};

/// Batch norm over `(T, N, F)` sequences; parameters and buffers are those
/// of the inner [`BatchNorm`] (`weight`, `bias`, `running_mean`, `running_var`).
#[derive(Debug, Clone)]
pub struct SequenceBatchNorm<F> {
    inner: BatchNorm<F>,
    config: BatchNormConfig,
}

impl<F: Float> SequenceBatchNorm<F> {
    /// A sequence-wise batch norm of `config.num_features` features.
    pub fn new(config: &BatchNormConfig) -> Result<Self> {
        Ok(SequenceBatchNorm {
            inner: config.init()?,
            config: config.clone(),
        })
    }

    fn check(&self, input: &Tensor<F>, lengths: &[usize]) -> Result<()> {
        let s = input.shape();
        if s.len() != 3 || s[2] != self.config.num_features {
            return Err(Error::shape(
                self.name(),
                format!("(T, N, {})", self.config.num_features),
                s,
            ));
        }
        check_lengths(&self.name(), s, lengths)
    }

    /// Valid rows `(t, n)` of a `(T, N, F)` tensor as one `(M, F)` tensor.
    fn gather(&self, x: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
        let (t_len, n, f) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let src = contiguous(x);
        let mut out = Vec::with_capacity(src.len());
        for t in 0..t_len {
            for (b, &l) in lengths.iter().enumerate().take(n) {
                if t < l {
                    let o = (t * n + b) * f;
                    out.extend_from_slice(&src[o..o + f]);
                }
            }
        }
        let m = out.len() / f;
        Tensor::from_shape_vec(ndarray::IxDyn(&[m, f]), out)
            .map_err(|_| Error::invalid(self.name(), "gather layout"))
    }

    /// Inverse of `gather`: `(M, F)` rows back into a zero `(T, N, F)` tensor.
    fn scatter(&self, rows: &Tensor<F>, shape: &[usize], lengths: &[usize]) -> Result<Tensor<F>> {
        let (t_len, n, f) = (shape[0], shape[1], shape[2]);
        let src = contiguous(rows);
        let mut out = vec![F::zero(); t_len * n * f];
        let mut r = 0;
        for t in 0..t_len {
            for (b, &l) in lengths.iter().enumerate().take(n) {
                if t < l {
                    let o = (t * n + b) * f;
                    out[o..o + f].copy_from_slice(&src[r * f..(r + 1) * f]);
                    r += 1;
                }
            }
        }
        Tensor::from_shape_vec(ndarray::IxDyn(shape), out)
            .map_err(|_| Error::invalid(self.name(), "scatter layout"))
    }
}

impl<F: Float> SequenceModule<F> for SequenceBatchNorm<F> {
    fn forward_with_lengths(&mut self, input: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
        self.check(input, lengths)?;
        if lengths.iter().all(|&l| l == 0) {
            // No valid step: nothing to normalise (and no statistics to update).
            return Ok(Tensor::zeros(input.raw_dim()));
        }
        let rows = self.gather(input, lengths)?;
        let y = self.inner.forward(&rows)?;
        self.scatter(&y, input.shape(), lengths)
    }

    fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>> {
        self.check(input, lengths)?;
        if grad_output.shape() != input.shape() {
            return Err(Error::shape(
                format!("{} backward", self.name()),
                format!("grad_output {:?}", input.shape()),
                grad_output.shape(),
            ));
        }
        if lengths.iter().all(|&l| l == 0) {
            return Ok(Tensor::zeros(input.raw_dim()));
        }
        let rows = self.gather(input, lengths)?;
        let g = self.gather(grad_output, lengths)?;
        let dx = self.inner.backward(&rows, &g)?;
        self.scatter(&dx, input.shape(), lengths)
    }
}

impl<F: Float> Module<F> for SequenceBatchNorm<F> {
    fn name(&self) -> String {
        format!("SequenceBatchNorm({})", self.config.num_features)
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
        LayerConfig::SequenceBatchNorm(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use crate::layers::recurrent::WithLengths;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn passes_gradcheck_with_and_without_lengths() {
        let x = init::uniform(&mut StdRng::seed_from_u64(2), &[4, 3, 5], 2.0);
        let mut bn = SequenceBatchNorm::<f64>::new(&BatchNormConfig::new(5)).unwrap();
        check_module(&mut bn, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
        let inner = SequenceBatchNorm::<f64>::new(&BatchNormConfig::new(5)).unwrap();
        let mut m = WithLengths {
            inner,
            lengths: vec![4, 1, 3],
        };
        check_module(&mut m, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
    }

    #[test]
    fn statistics_ignore_padding() {
        let mut bn = SequenceBatchNorm::<f64>::new(&BatchNormConfig::new(1)).unwrap();
        // Valid values 1, 3 (mean 2, biased var 1); padding 100 is ignored.
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[2, 2, 1]), vec![1.0, 3.0, 100.0, 100.0])
            .unwrap();
        let y = bn.forward_with_lengths(&x, &[1, 1]).unwrap();
        assert!((y[[0, 0, 0]] + 1.0).abs() < 1e-4 && (y[[0, 1, 0]] - 1.0).abs() < 1e-4);
        assert_eq!(y[[1, 0, 0]], 0.0);
        assert!(bn
            .forward(&Tensor::zeros(ndarray::IxDyn(&[2, 2, 3])))
            .is_err());
    }
}
