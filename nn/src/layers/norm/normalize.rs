//! SSD's `NormalizeScale`: L2 normalisation across channels at every pixel,
//! then a learned per-channel scale.

use serde::{Deserialize, Serialize};

use super::{contiguous, slice_of, slice_of_mut, tensor_of};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

fn default_eps() -> f64 {
    1e-10
}

fn default_scale() -> f64 {
    20.0
}

/// Configuration of a [`Normalize`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Number of channels `C`.
    pub channels: usize,
    /// Added to the sum of squares before the square root (default 1e-10).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Initial value of every channel's scale (default 20, as in SSD's conv4_3).
    #[serde(default = "default_scale")]
    pub init_scale: f64,
}

impl NormalizeConfig {
    /// Defaults: eps 1e-10, initial scale 20.
    pub fn new(channels: usize) -> Self {
        NormalizeConfig {
            channels,
            eps: default_eps(),
            init_scale: default_scale(),
        }
    }

    /// Validates the configuration and sets every scale to `init_scale`.
    pub fn init<F: Float>(&self) -> Result<Normalize<F>> {
        if self.channels == 0 {
            return Err(Error::config("Normalize", "channels must be positive"));
        }
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(Error::config(
                "Normalize",
                format!("eps {} must be non-negative", self.eps),
            ));
        }
        Ok(Normalize {
            config: self.clone(),
            weight: Param::new(Tensor::from_elem(
                ndarray::IxDyn(&[self.channels]),
                F::of(self.init_scale),
            )),
        })
    }
}

/// `y[n, c, h, w] = x[n, c, h, w] / sqrt(Σ_c' x[n, c', h, w]² + eps) * weight[c]`
/// over `[N, C, H, W]` inputs.
#[derive(Debug, Clone)]
pub struct Normalize<F> {
    config: NormalizeConfig,
    /// Per-channel scale, `[C]`.
    pub weight: Param<F>,
}

impl<F: Float> Normalize<F> {
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize)> {
        let c = self.config.channels;
        if shape.len() != 4 || shape[1] != c {
            return Err(Error::shape(self.name(), format!("[N, {c}, H, W]"), shape));
        }
        Ok((c, shape[2] * shape[3]))
    }

    /// `1 / sqrt(Σ_c x² + eps)` for every pixel of one image `[C, S]`.
    fn inv_norms(&self, img: &[F], c: usize, s: usize) -> Vec<F> {
        let mut sq = vec![F::zero(); s];
        for plane in img.chunks_exact(s).take(c) {
            for (a, &v) in sq.iter_mut().zip(plane) {
                *a += v * v;
            }
        }
        let eps = F::of(self.config.eps);
        sq.iter_mut()
            .for_each(|v| *v = F::one() / (*v + eps).sqrt());
        sq
    }
}

impl<F: Float> Module<F> for Normalize<F> {
    fn name(&self) -> String {
        format!("Normalize({})", self.config.channels)
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let (c, s) = self.dims(input.shape())?;
        let name = self.name();
        let scale = slice_of(&name, &self.weight.value)?;
        let mut y = contiguous(input).into_owned();
        if s > 0 {
            for img in y.chunks_exact_mut(c * s) {
                let inv = self.inv_norms(img, c, s);
                for (plane, &k) in img.chunks_exact_mut(s).zip(scale) {
                    for (v, &r) in plane.iter_mut().zip(&inv) {
                        *v = *v * r * k;
                    }
                }
            }
        }
        tensor_of(&name, input.shape(), y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let (c, s) = self.dims(input.shape())?;
        let name = self.name();
        if grad_output.shape() != input.shape() {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output {:?}", input.shape()),
                grad_output.shape(),
            ));
        }
        let x = contiguous(input);
        let mut gx = contiguous(grad_output).into_owned();
        if s == 0 {
            return tensor_of(&name, input.shape(), gx);
        }
        let scale = slice_of(&name, &self.weight.value)?.to_vec();
        let mut gscale = vec![F::zero(); c];
        let mut dot = vec![F::zero(); s];
        for (gimg, ximg) in gx.chunks_exact_mut(c * s).zip(x.chunks_exact(c * s)) {
            let inv = self.inv_norms(ximg, c, s);
            dot.fill(F::zero());
            // dot = Σ_c g_c k_c x_c; grad scale_c += Σ_s g_c x_c / norm
            for (ch, (gp, xp)) in gimg.chunks_exact(s).zip(ximg.chunks_exact(s)).enumerate() {
                let mut acc = F::zero();
                for (((d, &g), &v), &r) in dot.iter_mut().zip(gp).zip(xp).zip(&inv) {
                    *d += g * scale[ch] * v;
                    acc += g * v * r;
                }
                gscale[ch] += acc;
            }
            // gx_c = k_c g_c / norm - x_c dot / norm³
            for (ch, (gp, xp)) in gimg
                .chunks_exact_mut(s)
                .zip(ximg.chunks_exact(s))
                .enumerate()
            {
                for (((g, &v), &r), &d) in gp.iter_mut().zip(xp).zip(&inv).zip(&dot) {
                    *g = scale[ch] * *g * r - v * d * r * r * r;
                }
            }
        }
        for (g, &d) in slice_of_mut(&name, &mut self.weight.grad)?
            .iter_mut()
            .zip(&gscale)
        {
            *g += d;
        }
        tensor_of(&name, input.shape(), gx)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Normalize(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn output_has_unit_norm_times_scale() {
        let mut m = NormalizeConfig::new(3).init::<f64>().unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let x: Tensor<f64> = init::uniform(&mut rng, &[2, 3, 2, 2], 1.0);
        let y = m.forward(&x).unwrap();
        for n in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    let norm: f64 = (0..3).map(|c| y[[n, c, i, j]].powi(2)).sum::<f64>().sqrt();
                    assert!((norm - 20.0).abs() < 1e-6, "{norm}");
                }
            }
        }
    }

    #[test]
    fn normalize_passes_gradcheck() {
        let mut m = NormalizeConfig {
            channels: 4,
            eps: 1e-3,
            init_scale: 1.5,
        }
        .init::<f64>()
        .unwrap();
        m.weight.value =
            Tensor::from_shape_vec(ndarray::IxDyn(&[4]), vec![1.5, 0.5, -1.0, 2.0]).unwrap();
        let mut rng = StdRng::seed_from_u64(2);
        let x: Tensor<f64> = init::uniform(&mut rng, &[2, 4, 3, 2], 1.0);
        check_module(&mut m, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut m = NormalizeConfig::new(3).init::<f32>().unwrap();
        for shape in [&[2usize, 3][..], &[2, 4, 2, 2]] {
            let err = m
                .forward(&Tensor::zeros(ndarray::IxDyn(shape)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("Normalize(3)")
                    && err.contains("[N, 3, H, W]")
                    && err.contains(&format!("{shape:?}")),
                "{err}"
            );
        }
    }
}
