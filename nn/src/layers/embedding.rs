//! Lookup table from integer indices (stored as floats) to learned vectors.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

/// Configuration of an [`Embedding`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Size of the table (valid indices are `0..num_embeddings`).
    pub num_embeddings: usize,
    /// Length of each vector.
    pub embedding_dim: usize,
    /// Index whose vector stays zero and gets no gradient (default none).
    #[serde(default)]
    pub padding_idx: Option<usize>,
}

impl EmbeddingConfig {
    /// A table without a padding index.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        EmbeddingConfig {
            num_embeddings,
            embedding_dim,
            padding_idx: None,
        }
    }

    /// Sets the padding index.
    pub fn with_padding_idx(mut self, padding_idx: usize) -> Self {
        self.padding_idx = Some(padding_idx);
        self
    }

    /// Validates the configuration and draws the table from N(0, 1) like
    /// PyTorch (the padding row is zero).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Embedding<F>> {
        if self.num_embeddings == 0 || self.embedding_dim == 0 {
            return Err(Error::config("Embedding", "sizes must be positive"));
        }
        if let Some(p) = self.padding_idx {
            if p >= self.num_embeddings {
                return Err(Error::config(
                    "Embedding",
                    format!("padding_idx {p} is outside 0..{}", self.num_embeddings),
                ));
            }
        }
        let mut weight = init::normal(rng, &[self.num_embeddings, self.embedding_dim], 0.0, 1.0);
        if let Some(p) = self.padding_idx {
            weight.index_axis_mut(ndarray::Axis(0), p).fill(F::zero());
        }
        Ok(Embedding {
            config: self.clone(),
            weight: Param::new(weight),
        })
    }
}

/// Maps every index of an input of any shape to a row of `weight`: the
/// output shape is the input shape followed by `embedding_dim`.
#[derive(Debug, Clone)]
pub struct Embedding<F> {
    config: EmbeddingConfig,
    /// The table, `[num_embeddings, embedding_dim]`.
    pub weight: Param<F>,
}

impl<F: Float> Embedding<F> {
    fn indices(&self, input: &Tensor<F>) -> Result<Vec<usize>> {
        let n = self.config.num_embeddings;
        input
            .iter()
            .map(|&v| {
                let f = v.as_f64();
                if f >= 0.0 && f.fract() == 0.0 && f < n as f64 {
                    Ok(f as usize)
                } else {
                    Err(Error::invalid(
                        self.name(),
                        format!("index {f} is not an integer in 0..{n}"),
                    ))
                }
            })
            .collect()
    }

    fn dim(&self) -> usize {
        self.config.embedding_dim
    }
}

impl<F: Float> Module<F> for Embedding<F> {
    fn name(&self) -> String {
        format!(
            "Embedding({}, {})",
            self.config.num_embeddings, self.config.embedding_dim
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let idx = self.indices(input)?;
        let d = self.dim();
        let table = self
            .weight
            .value
            .as_slice()
            .ok_or_else(|| Error::invalid(self.name(), "weight is not contiguous"))?;
        let mut out = Vec::with_capacity(idx.len() * d);
        for &i in &idx {
            out.extend_from_slice(&table[i * d..(i + 1) * d]);
        }
        let mut shape = input.shape().to_vec();
        shape.push(d);
        Tensor::from_shape_vec(ndarray::IxDyn(&shape), out)
            .map_err(|_| Error::invalid(self.name(), format!("cannot build output {shape:?}")))
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = self.name();
        let idx = self.indices(input)?;
        let d = self.dim();
        let mut want = input.shape().to_vec();
        want.push(d);
        if grad_output.shape() != want.as_slice() {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output {want:?}"),
                grad_output.shape(),
            ));
        }
        let gy = grad_output.as_standard_layout();
        let gy = gy
            .as_slice()
            .ok_or_else(|| Error::invalid(&name, "grad_output is not contiguous"))?;
        let gw = self
            .weight
            .grad
            .as_slice_mut()
            .ok_or_else(|| Error::invalid(&name, "weight gradient is not contiguous"))?;
        for (&i, g) in idx.iter().zip(gy.chunks_exact(d)) {
            if Some(i) == self.config.padding_idx {
                continue;
            }
            for (a, &b) in gw[i * d..(i + 1) * d].iter_mut().zip(g) {
                *a += b;
            }
        }
        Ok(Tensor::zeros(input.raw_dim()))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Embedding(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::module::ModuleExt;
    use rand::SeedableRng;

    fn indices(shape: &[usize], v: &[f64]) -> Tensor<f64> {
        Tensor::from_shape_vec(ndarray::IxDyn(shape), v.to_vec()).unwrap()
    }

    #[test]
    fn lookup_shape_and_padding_row() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut e = EmbeddingConfig::new(5, 3)
            .with_padding_idx(1)
            .init::<f64>(&mut rng)
            .unwrap();
        assert!(e
            .weight
            .value
            .index_axis(ndarray::Axis(0), 1)
            .iter()
            .all(|&v| v == 0.0));
        let x = indices(&[2, 2], &[0.0, 4.0, 1.0, 4.0]);
        let y = e.forward(&x).unwrap();
        assert_eq!(y.shape(), [2, 2, 3]);
        for k in 0..3 {
            assert_eq!(y[[0, 1, k]], e.weight.value[[4, k]]);
            assert_eq!(y[[1, 0, k]], 0.0);
        }
    }

    #[test]
    fn embedding_param_grads_pass_gradcheck() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut e = EmbeddingConfig::new(6, 4)
            .with_padding_idx(2)
            .init::<f64>(&mut rng)
            .unwrap();
        let x = indices(&[3, 2], &[0.0, 2.0, 5.0, 0.0, 2.0, 3.0]);
        // the input gradient is zero; perturbing an index changes which row
        // is read, so check only the parameters: the numeric gradient of the
        // input is meaningless here. check_module compares the input too, but
        // indices perturbed by eps are not integers: compare by hand instead.
        let y = e.forward(&x).unwrap();
        let gy = y.mapv(|v| v * 0.5 + 0.25);
        e.zero_grad();
        let gx = e.backward(&x, &gy).unwrap();
        assert!(gx.iter().all(|&v| v == 0.0) && gx.shape() == x.shape());
        // loss = Σ y ⊙ gy is linear in the table: its gradient is exact
        let base = e.flat_params();
        let grads = e.flat_grads();
        let loss = |e: &mut Embedding<f64>| -> f64 {
            e.forward(&x)
                .unwrap()
                .iter()
                .zip(gy.iter())
                .map(|(a, b)| a * b)
                .sum()
        };
        let mut p = base.clone();
        for k in 0..p.len() {
            p[k] = base[k] + 1e-6;
            e.set_flat_params(&p).unwrap();
            let plus = loss(&mut e);
            p[k] = base[k] - 1e-6;
            e.set_flat_params(&p).unwrap();
            let minus = loss(&mut e);
            p[k] = base[k];
            let num = if k / 4 == 2 {
                0.0
            } else {
                (plus - minus) / 2e-6
            };
            assert!(
                (num - grads[k]).abs() < 1e-6,
                "weight[{k}]: {num} vs {}",
                grads[k]
            );
        }
        assert!(
            grads[8..12].iter().all(|&g| g == 0.0),
            "no gradient for padding_idx"
        );
        // check_module runs too when the input is nudged by less than the
        // index resolution: it must then reject the non-integer index.
        assert!(check_module(&mut e, &x, 1e-6).is_err());
    }

    #[test]
    fn bad_indices_are_errors() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut e = EmbeddingConfig::new(4, 2).init::<f32>(&mut rng).unwrap();
        for bad in [4.0f32, -1.0, 1.5, f32::NAN] {
            let x = Tensor::from_elem(ndarray::IxDyn(&[2]), bad);
            let err = e.forward(&x).unwrap_err().to_string();
            assert!(err.contains("Embedding(4, 2)"), "{err}");
        }
        let x = Tensor::from_elem(ndarray::IxDyn(&[2]), 1.0f32);
        let err = e
            .backward(&x, &Tensor::zeros(ndarray::IxDyn(&[2, 3])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Embedding(4, 2)") && err.contains("[2, 2]") && err.contains("[2, 3]"),
            "{err}"
        );
        assert!(EmbeddingConfig::new(4, 2)
            .with_padding_idx(4)
            .init::<f32>(&mut rng)
            .is_err());
    }
}
