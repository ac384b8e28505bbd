//! Recurrent layers over time-major `(T, N, F)` sequences: [`Recurrent`]
//! (Elman RNN with tanh or ReLU, LSTM, GRU, with PyTorch's gate order,
//! weight layout and parameter names), [`BiRecurrent`] (forward and
//! backward-in-time copies merged by sum or concatenation),
//! [`SequenceBatchNorm`] (DS2's sequence-wise batch norm) and
//! [`TimeDistributed`].
//!
//! # Variable lengths
//!
//! Padded batches are handled like PyTorch's `pack_padded_sequence`: the
//! layers implementing [`SequenceModule`] take one length per sequence
//! (`lengths[n] <= T`). Step `t` of sequence `n` is *valid* when
//! `t < lengths[n]`. On invalid steps the output is zero and the hidden
//! state stops updating; the backward pass gives zero gradient to padded
//! inputs. The reverse direction of a [`BiRecurrent`] reverses each
//! sequence within its own length. The plain [`Module::forward`] /
//! [`Module::backward`] mean "every length is `T`".
//!
//! Batches sorted by decreasing length (as DS2's SortaGrad loaders give)
//! are the fast case: each step's recurrent GEMM then covers only the rows
//! still active, as PyTorch's packed sequences do. Unsorted batches are
//! correct but compute every row at every step.
//!
//! # Importing PyTorch weights
//!
//! A one-layer `nn.RNN`/`nn.LSTM`/`nn.GRU` `state_dict` loads into a
//! [`Recurrent`] (or, with `bidirectional=True`, a [`BiRecurrent`] with
//! concat merge) name for name. Layer `k` of a multi-layer module goes into
//! its own layer after renaming `_l{k}` to `_l0`.

mod bidirectional;
mod cell;
mod rnn;
mod seq_batch_norm;
mod time_distributed;

pub use bidirectional::{BiRecurrent, BiRecurrentConfig, MergeMode};
pub use cell::CellKind;
pub use rnn::{Recurrent, RecurrentConfig};
pub use seq_batch_norm::SequenceBatchNorm;
pub use time_distributed::TimeDistributed;

use crate::error::{Error, Result};
use crate::module::Module;
use crate::tensor::{Float, Tensor};

/// A module over `(T, N, …)` sequences that honours per-sequence lengths.
pub trait SequenceModule<F: Float>: Module<F> {
    /// The output for `input` of shape `(T, N, …)` where sequence `n` is
    /// `lengths[n] <= T` steps long; outputs at padded steps are zero (or,
    /// for per-step layers, computed but meaningless).
    fn forward_with_lengths(&mut self, input: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>>;

    /// Accumulates parameter gradients and returns dLoss/dInput for the last
    /// [`SequenceModule::forward_with_lengths`] on the same `input` and
    /// `lengths`. Gradients arriving at padded output steps are ignored.
    fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>>;
}

/// Checks `lengths` against a `(T, N, …)` shape: one length per sequence,
/// none above `T`.
pub fn check_lengths(op: &str, shape: &[usize], lengths: &[usize]) -> Result<()> {
    if shape.len() < 2 {
        return Err(Error::shape(op, "a (T, N, ...) sequence", shape));
    }
    let (t, n) = (shape[0], shape[1]);
    if lengths.len() != n {
        return Err(Error::invalid(
            op,
            format!(
                "{} lengths for a batch of {n} sequences (input shape {shape:?})",
                lengths.len()
            ),
        ));
    }
    if let Some((i, &l)) = lengths.iter().enumerate().find(|(_, &l)| l > t) {
        return Err(Error::invalid(
            op,
            format!("length {l} of sequence {i} exceeds T = {t} (input shape {shape:?})"),
        ));
    }
    Ok(())
}

/// `lengths` all equal to `T` for a `(T, N, …)` shape (`[]` if not 2-D+).
pub fn full_lengths(shape: &[usize]) -> Vec<usize> {
    if shape.len() < 2 {
        return Vec::new();
    }
    vec![shape[0]; shape[1]]
}

/// Reverses every sequence of a `(T, N, …)` tensor within its own length:
/// `out[t, n] = x[lengths[n] - 1 - t, n]` for `t < lengths[n]`, zero
/// beyond. Its own inverse on the valid steps (and its own adjoint, so the
/// backward pass uses it too).
pub fn reverse_within<F: Float>(op: &str, x: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
    check_lengths(op, x.shape(), lengths)?;
    let shape = x.shape().to_vec();
    let (t_len, n) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let src = contiguous(x);
    let mut out = vec![F::zero(); src.len()];
    for (b, &len) in lengths.iter().enumerate() {
        for t in 0..len.min(t_len) {
            let from = ((len - 1 - t) * n + b) * inner;
            let to = (t * n + b) * inner;
            out[to..to + inner].copy_from_slice(&src[from..from + inner]);
        }
    }
    Tensor::from_shape_vec(ndarray::IxDyn(&shape), out)
        .map_err(|_| Error::shape(op, "a contiguous (T, N, ...) tensor", &shape))
}

/// The elements of `t` in row-major order, borrowed when already contiguous.
pub(crate) fn contiguous<F: Float>(t: &Tensor<F>) -> std::borrow::Cow<'_, [F]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

/// Test helper: a sequence module run with fixed lengths, as a plain
/// [`Module`] (what `gradcheck::check_module` takes).
#[cfg(test)]
pub(crate) struct WithLengths<M> {
    pub(crate) inner: M,
    pub(crate) lengths: Vec<usize>,
}

#[cfg(test)]
impl<M: SequenceModule<f64>> Module<f64> for WithLengths<M> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn forward(&mut self, input: &Tensor<f64>) -> Result<Tensor<f64>> {
        self.inner.forward_with_lengths(input, &self.lengths)
    }
    fn backward(&mut self, input: &Tensor<f64>, g: &Tensor<f64>) -> Result<Tensor<f64>> {
        self.inner.backward_with_lengths(input, &self.lengths, g)
    }
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &crate::Param<f64>)) {
        self.inner.visit_params(prefix, f)
    }
    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut crate::Param<f64>)) {
        self.inner.visit_params_mut(prefix, f)
    }
    fn config(&self) -> crate::layers::LayerConfig {
        self.inner.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_within_reverses_each_valid_prefix() {
        let x = Tensor::from_shape_vec(
            ndarray::IxDyn(&[3, 2, 1]),
            vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0],
        )
        .unwrap();
        let r = reverse_within("t", &x, &[3, 2]).unwrap();
        assert_eq!(
            r.iter().copied().collect::<Vec<f64>>(),
            [3.0, 20.0, 2.0, 10.0, 1.0, 0.0]
        );
        let back = reverse_within("t", &r, &[3, 2]).unwrap();
        assert_eq!(
            back.iter().copied().collect::<Vec<f64>>(),
            [1.0, 10.0, 2.0, 20.0, 3.0, 0.0]
        );
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(check_lengths("t", &[3, 2, 4], &[3]).is_err());
        assert!(check_lengths("t", &[3, 2, 4], &[4, 1]).is_err());
        assert!(check_lengths("t", &[3], &[3]).is_err());
        assert!(check_lengths("t", &[3, 2, 4], &[3, 0]).is_ok());
    }
}
