//! A bidirectional recurrent layer: one [`Recurrent`] reads each sequence
//! forward, a second reads it backward in time (within its own length, as
//! PyTorch's bidirectional packed sequences do), and the two outputs are
//! summed (Deep Speech 2) or concatenated (PyTorch's `bidirectional=True`).

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{contiguous, full_lengths, reverse_within, Recurrent, RecurrentConfig, SequenceModule};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{Module, Param};
use crate::tensor::{Float, Tensor};

/// How the two directions' outputs are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// `forward + backward`, `(T, N, H)` (Deep Speech 2).
    Sum,
    /// `[forward, backward]` along the feature axis, `(T, N, 2H)` (PyTorch).
    #[default]
    Concat,
}

/// Configuration of a [`BiRecurrent`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiRecurrentConfig {
    /// The cell of both directions.
    pub layer: RecurrentConfig,
    /// How the directions are merged (default concat).
    #[serde(default)]
    pub merge: MergeMode,
}

impl BiRecurrentConfig {
    /// Two directions of `layer`, merged by `merge`.
    pub fn new(layer: RecurrentConfig, merge: MergeMode) -> Self {
        BiRecurrentConfig { layer, merge }
    }

    /// The same layer merged by sum.
    pub fn with_merge_sum(mut self) -> Self {
        self.merge = MergeMode::Sum;
        self
    }

    /// Output features: `H` (sum) or `2H` (concat).
    pub fn output_size(&self) -> usize {
        match self.merge {
            MergeMode::Sum => self.layer.hidden_size,
            MergeMode::Concat => 2 * self.layer.hidden_size,
        }
    }

    /// Builds both directions (forward first, as PyTorch initialises them).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<BiRecurrent<F>> {
        Ok(BiRecurrent {
            config: self.clone(),
            forward: self.layer.init(rng)?,
            backward: self.layer.init(rng)?,
            reversed: None,
        })
    }
}

/// Bidirectional recurrent layer over `(T, N, F)`. Parameters are named as
/// in a one-layer bidirectional PyTorch module: `weight_ih_l0`, …,
/// `weight_ih_l0_reverse`, ….
#[derive(Debug, Clone)]
pub struct BiRecurrent<F> {
    config: BiRecurrentConfig,
    /// The forward-in-time direction.
    pub forward: Recurrent<F>,
    /// The backward-in-time direction.
    pub backward: Recurrent<F>,
    /// The reversed input of the last forward pass.
    reversed: Option<Tensor<F>>,
}

impl<F: Float> BiRecurrent<F> {
    /// The layer's configuration.
    pub fn bi_config(&self) -> &BiRecurrentConfig {
        &self.config
    }
}

impl<F: Float> SequenceModule<F> for BiRecurrent<F> {
    fn forward_with_lengths(&mut self, input: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
        let name = self.name();
        let xr = reverse_within(&name, input, lengths)?;
        // The directions are independent: one rayon task each, so each
        // direction's per-step products run on a core of their own instead
        // of splitting every small product over the pool.
        let (forward, backward) = (&mut self.forward, &mut self.backward);
        let (yf, yr) = rayon::join(
            || forward.forward_with_lengths(input, lengths),
            || backward.forward_with_lengths(&xr, lengths),
        );
        let (yf, yb) = (yf?, reverse_within(&name, &yr?, lengths)?);
        self.reversed = Some(xr);
        match self.config.merge {
            MergeMode::Sum => Ok(yf + yb),
            MergeMode::Concat => ndarray::concatenate(ndarray::Axis(2), &[yf.view(), yb.view()])
                .map_err(|_| Error::ShapeMismatch {
                    op: name,
                    lhs: yf.shape().to_vec(),
                    rhs: yb.shape().to_vec(),
                }),
        }
    }

    fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>> {
        let name = self.name();
        let s = input.shape();
        let h = self.config.layer.hidden_size;
        let want = [
            s.first().copied().unwrap_or(0),
            s.get(1).copied().unwrap_or(0),
            self.config.output_size(),
        ];
        if s.len() != 3 || grad_output.shape() != want {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output {want:?}"),
                grad_output.shape(),
            ));
        }
        let (gf, gb) = match self.config.merge {
            MergeMode::Sum => (grad_output.to_owned(), grad_output.to_owned()),
            MergeMode::Concat => {
                let g = contiguous(grad_output);
                let rows = want[0] * want[1];
                let mut a = Vec::with_capacity(rows * h);
                let mut b = Vec::with_capacity(rows * h);
                for r in 0..rows {
                    a.extend_from_slice(&g[r * 2 * h..r * 2 * h + h]);
                    b.extend_from_slice(&g[r * 2 * h + h..(r + 1) * 2 * h]);
                }
                let shape = ndarray::IxDyn(&[want[0], want[1], h]);
                let err = |_| Error::invalid(&name, "gradient layout");
                (
                    Tensor::from_shape_vec(shape.clone(), a).map_err(err)?,
                    Tensor::from_shape_vec(shape, b).map_err(err)?,
                )
            }
        };
        let xr = self
            .reversed
            .take()
            .ok_or_else(|| Error::NoForward { op: name.clone() })?;
        let gbr = reverse_within(&name, &gb, lengths)?;
        let (forward, backward) = (&mut self.forward, &mut self.backward);
        let (dxf, dxr) = rayon::join(
            || forward.backward_with_lengths(input, lengths, &gf),
            || backward.backward_with_lengths(&xr, lengths, &gbr),
        );
        self.reversed = Some(xr);
        let dxb = reverse_within(&name, &dxr?, lengths)?;
        Ok(dxf? + dxb)
    }
}

impl<F: Float> Module<F> for BiRecurrent<F> {
    fn name(&self) -> String {
        format!("Bi{}", self.forward.name())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.forward_with_lengths(input, &full_lengths(input.shape()))
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        self.backward_with_lengths(input, &full_lengths(input.shape()), grad_output)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        self.forward.visit_named(prefix, "", f);
        self.backward.visit_named(prefix, "_reverse", f);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        self.forward.visit_named_mut(prefix, "", f);
        self.backward.visit_named_mut(prefix, "_reverse", f);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::BiRecurrent(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use crate::layers::recurrent::{CellKind, WithLengths};
    use rand::SeedableRng;

    #[test]
    fn bidirectional_layers_pass_gradcheck_with_lengths() {
        for (i, (kind, merge)) in [
            (CellKind::Gru, MergeMode::Sum),
            (CellKind::Lstm, MergeMode::Concat),
            (CellKind::RnnTanh, MergeMode::Sum),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let cfg = BiRecurrentConfig::new(RecurrentConfig::new(kind, 3, 2), merge);
            let x = init::uniform(&mut rng, &[4, 3, 3], 1.0);
            let mut full = cfg.init::<f64>(&mut rng).unwrap();
            check_module(&mut full, &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap();
            let inner = cfg.init::<f64>(&mut rng).unwrap();
            let mut m = WithLengths {
                inner,
                lengths: vec![2, 4, 1],
            };
            check_module(&mut m, &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn output_size_and_errors() {
        let cfg = BiRecurrentConfig::new(RecurrentConfig::gru(3, 2), MergeMode::Concat);
        let mut m = cfg.init::<f32>(&mut StdRng::seed_from_u64(0)).unwrap();
        let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[4, 2, 3]));
        assert_eq!(m.forward(&x).unwrap().shape(), [4, 2, 4]);
        assert!(m
            .backward(&x, &Tensor::zeros(ndarray::IxDyn(&[4, 2, 2])))
            .is_err());
        assert!(m.forward_with_lengths(&x, &[4, 9]).is_err());
        assert_eq!(cfg.with_merge_sum().output_size(), 2);
    }
}
