//! Batch normalisation over the channel dimension of `[N, C]`, `[N, C, L]`
//! (PyTorch `BatchNorm1d`) and `[N, C, H, W]` (`BatchNorm2d`) inputs.

use serde::{Deserialize, Serialize};

use super::{contiguous, slice_of, slice_of_mut, tensor_of};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

fn default_eps() -> f64 {
    1e-5
}

fn default_momentum() -> f64 {
    0.1
}

fn default_true() -> bool {
    true
}

/// Configuration of a [`BatchNorm`] layer (PyTorch defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the variance before the square root (default 1e-5).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Running-statistics update rate: `running = (1 - m) * running + m * batch` (default 0.1).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Whether to learn a per-channel scale (`weight`) and shift (`bias`) (default true).
    #[serde(default = "default_true")]
    pub affine: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine.
    pub fn new(num_features: usize) -> Self {
        BatchNormConfig {
            num_features,
            eps: default_eps(),
            momentum: default_momentum(),
            affine: true,
        }
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the momentum.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Enables or disables the affine parameters.
    pub fn with_affine(mut self, affine: bool) -> Self {
        self.affine = affine;
        self
    }

    /// Validates the configuration; weight starts at 1, bias at 0, running
    /// mean at 0 and running variance at 1 (as in PyTorch). Starts in training mode.
    pub fn init<F: Float>(&self) -> Result<BatchNorm<F>> {
        if self.num_features == 0 {
            return Err(Error::config("BatchNorm", "num_features must be positive"));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config(
                "BatchNorm",
                format!("eps {} must be positive", self.eps),
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::config(
                "BatchNorm",
                format!("momentum {} must be in [0, 1]", self.momentum),
            ));
        }
        let c = self.num_features;
        let affine = self.affine.then(|| {
            (
                Param::new(Tensor::from_elem(ndarray::IxDyn(&[c]), F::one())),
                Param::new(Tensor::zeros(ndarray::IxDyn(&[c]))),
            )
        });
        Ok(BatchNorm {
            config: self.clone(),
            affine,
            running_mean: Tensor::zeros(ndarray::IxDyn(&[c])),
            running_var: Tensor::from_elem(ndarray::IxDyn(&[c]), F::one()),
            training: true,
            cache: None,
        })
    }
}

/// Statistics used by the last forward.
#[derive(Debug, Clone)]
struct Cache<F> {
    mean: Vec<F>,
    invstd: Vec<F>,
    /// Whether they were batch statistics (training) or running ones (eval).
    batch_stats: bool,
}

/// Batch normalisation: `y = (x - mean) / sqrt(var + eps) * weight + bias`
/// per channel (dimension 1). Training mode normalises with the batch
/// statistics and updates the running ones (the variance unbiased); eval
/// mode uses the running statistics.
#[derive(Debug, Clone)]
pub struct BatchNorm<F> {
    config: BatchNormConfig,
    /// `(weight, bias)`, each `[C]`, when affine.
    affine: Option<(Param<F>, Param<F>)>,
    /// Running mean, `[C]` (a buffer).
    pub running_mean: Tensor<F>,
    /// Running (unbiased) variance, `[C]` (a buffer).
    pub running_var: Tensor<F>,
    training: bool,
    cache: Option<Cache<F>>,
}

impl<F: Float> BatchNorm<F> {
    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// `(N, C, spatial size)` of an input, or a shape error.
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let c = self.config.num_features;
        if !(2..=4).contains(&shape.len()) || shape[1] != c {
            return Err(Error::shape(
                self.name(),
                format!("[N, {c}], [N, {c}, L] or [N, {c}, H, W]"),
                shape,
            ));
        }
        Ok((shape[0], c, shape[2..].iter().product()))
    }
}

impl<F: Float> Module<F> for BatchNorm<F> {
    fn name(&self) -> String {
        format!("BatchNorm({})", self.config.num_features)
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let (n, c, s) = self.dims(input.shape())?;
        let name = self.name();
        let x = contiguous(input);
        let eps = F::of(self.config.eps);
        let (mean, invstd) = if self.training {
            let m = n * s;
            if m <= 1 {
                return Err(Error::shape(
                    name,
                    "more than one value per channel in training mode",
                    input.shape(),
                ));
            }
            let mut mean = vec![F::zero(); c];
            for img in x.chunks_exact(c * s) {
                for (mc, plane) in mean.iter_mut().zip(img.chunks_exact(s)) {
                    *mc += plane.iter().copied().sum::<F>();
                }
            }
            let mf = F::of_usize(m);
            mean.iter_mut().for_each(|v| *v /= mf);
            let mut var = vec![F::zero(); c];
            for img in x.chunks_exact(c * s) {
                for ((vc, &mc), plane) in var.iter_mut().zip(&mean).zip(img.chunks_exact(s)) {
                    *vc += plane.iter().map(|&v| (v - mc) * (v - mc)).sum::<F>();
                }
            }
            let mom = F::of(self.config.momentum);
            let unbias = mf / F::of_usize(m - 1);
            let rm = slice_of_mut(&name, &mut self.running_mean)?;
            for (r, &mc) in rm.iter_mut().zip(&mean) {
                *r = (F::one() - mom) * *r + mom * mc;
            }
            let rv = slice_of_mut(&name, &mut self.running_var)?;
            let mut invstd = vec![F::zero(); c];
            for ((r, vc), is) in rv.iter_mut().zip(&var).zip(invstd.iter_mut()) {
                let biased = *vc / mf;
                *r = (F::one() - mom) * *r + mom * biased * unbias;
                *is = F::one() / (biased + eps).sqrt();
            }
            (mean, invstd)
        } else {
            let mean = slice_of(&name, &self.running_mean)?.to_vec();
            let invstd = slice_of(&name, &self.running_var)?
                .iter()
                .map(|&v| F::one() / (v + eps).sqrt())
                .collect();
            (mean, invstd)
        };
        let (scale, shift): (Vec<F>, Vec<F>) = match &self.affine {
            Some((w, b)) => {
                let (w, b) = (slice_of(&name, &w.value)?, slice_of(&name, &b.value)?);
                (0..c)
                    .map(|i| (w[i] * invstd[i], b[i] - mean[i] * invstd[i] * w[i]))
                    .unzip()
            }
            None => (0..c).map(|i| (invstd[i], -mean[i] * invstd[i])).unzip(),
        };
        let mut y = x.into_owned();
        for img in y.chunks_exact_mut(c * s) {
            for ((plane, &a), &b) in img.chunks_exact_mut(s).zip(&scale).zip(&shift) {
                plane.iter_mut().for_each(|v| *v = *v * a + b);
            }
        }
        self.cache = Some(Cache {
            mean,
            invstd,
            batch_stats: self.training,
        });
        tensor_of(&name, input.shape(), y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let (n, c, s) = self.dims(input.shape())?;
        let name = self.name();
        if grad_output.shape() != input.shape() {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output {:?}", input.shape()),
                grad_output.shape(),
            ));
        }
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| Error::NoForward { op: name.clone() })?;
        let x = contiguous(input);
        let gy = contiguous(grad_output);
        let mut sum_gy = vec![F::zero(); c];
        let mut sum_gy_xhat = vec![F::zero(); c];
        for (img, gimg) in x.chunks_exact(c * s).zip(gy.chunks_exact(c * s)) {
            for (ch, (plane, gplane)) in img.chunks_exact(s).zip(gimg.chunks_exact(s)).enumerate() {
                let (mc, is) = (cache.mean[ch], cache.invstd[ch]);
                let mut a = F::zero();
                let mut b = F::zero();
                for (&v, &g) in plane.iter().zip(gplane) {
                    a += g;
                    b += g * (v - mc) * is;
                }
                sum_gy[ch] += a;
                sum_gy_xhat[ch] += b;
            }
        }
        let gamma: Vec<F> = match &self.affine {
            Some((w, _)) => slice_of(&name, &w.value)?.to_vec(),
            None => vec![F::one(); c],
        };
        let mf = F::of_usize(n * s);
        let batch_stats = cache.batch_stats;
        let mut gx = gy.into_owned();
        for (img, ximg) in gx.chunks_exact_mut(c * s).zip(x.chunks_exact(c * s)) {
            for (ch, (gplane, plane)) in img
                .chunks_exact_mut(s)
                .zip(ximg.chunks_exact(s))
                .enumerate()
            {
                let (mc, is) = (cache.mean[ch], cache.invstd[ch]);
                let k = gamma[ch] * is;
                if batch_stats {
                    let (mg, mgx) = (sum_gy[ch] / mf, sum_gy_xhat[ch] / mf);
                    for (g, &v) in gplane.iter_mut().zip(plane) {
                        *g = k * (*g - mg - (v - mc) * is * mgx);
                    }
                } else {
                    gplane.iter_mut().for_each(|g| *g *= k);
                }
            }
        }
        if let Some((w, b)) = &mut self.affine {
            for (g, &d) in slice_of_mut(&name, &mut w.grad)?
                .iter_mut()
                .zip(&sum_gy_xhat)
            {
                *g += d;
            }
            for (g, &d) in slice_of_mut(&name, &mut b.grad)?.iter_mut().zip(&sum_gy) {
                *g += d;
            }
        }
        tensor_of(&name, input.shape(), gx)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        if let Some((w, b)) = &self.affine {
            f(&qualified(prefix, "weight"), w);
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        if let Some((w, b)) = &mut self.affine {
            f(&qualified(prefix, "weight"), w);
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        f(&qualified(prefix, "running_mean"), &self.running_mean);
        f(&qualified(prefix, "running_var"), &self.running_var);
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        f(&qualified(prefix, "running_mean"), &mut self.running_mean);
        f(&qualified(prefix, "running_var"), &mut self.running_var);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::BatchNorm(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use crate::module::ModuleExt;
    use rand::{rngs::StdRng, SeedableRng};

    fn rand_input(shape: &[usize], seed: u64) -> Tensor<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        init::uniform(&mut rng, shape, 1.0)
    }

    fn randomised(cfg: BatchNormConfig, seed: u64) -> BatchNorm<f64> {
        let mut bn = cfg.init::<f64>().unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let n = bn.num_params();
        let p: Vec<f64> = (0..n)
            .map(|_| rand::Rng::random_range(&mut rng, 0.5..1.5))
            .collect();
        bn.set_flat_params(&p).unwrap();
        bn
    }

    #[test]
    fn batch_norm_passes_gradcheck_in_training_mode() {
        for shape in [&[5usize, 3][..], &[3, 3, 4], &[2, 3, 3, 2]] {
            let mut bn = randomised(BatchNormConfig::new(3), 1);
            check_module(&mut bn, &rand_input(shape, 2), 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        }
        let mut bn = BatchNormConfig::new(3)
            .with_affine(false)
            .init::<f64>()
            .unwrap();
        check_module(&mut bn, &rand_input(&[2, 3, 3, 2], 3), 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
    }

    #[test]
    fn batch_norm_passes_gradcheck_in_eval_mode() {
        let mut bn = randomised(BatchNormConfig::new(3).with_momentum(0.5), 4);
        for seed in 0..3 {
            bn.forward(&rand_input(&[4, 3, 2, 2], 10 + seed).mapv(|v| 2.0 * v + 1.0))
                .unwrap();
        }
        bn.set_training(false);
        let rm = bn.running_mean.clone();
        check_module(&mut bn, &rand_input(&[2, 3, 2, 3], 5), 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
        assert_eq!(
            bn.running_mean, rm,
            "eval mode must not touch running stats"
        );
    }

    #[test]
    fn running_stats_follow_pytorch_convention() {
        let mut bn = BatchNormConfig::new(1)
            .with_momentum(0.25)
            .init::<f64>()
            .unwrap();
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[4, 1]), vec![1.0, 2.0, 3.0, 6.0]).unwrap();
        let y = bn.forward(&x).unwrap();
        // mean 3, biased var 3.5, unbiased 14/3
        assert!((bn.running_mean[[0]] - 0.75).abs() < 1e-12);
        assert!((bn.running_var[[0]] - (0.75 + 0.25 * 14.0 / 3.0)).abs() < 1e-12);
        assert!((y[[0, 0]] - (1.0 - 3.0) / (3.5f64 + 1e-5).sqrt()).abs() < 1e-12);
        let mut names = Vec::new();
        bn.visit_buffers("bn", &mut |n, _| names.push(n.to_string()));
        assert_eq!(names, ["bn.running_mean", "bn.running_var"]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut bn = BatchNormConfig::new(3).init::<f32>().unwrap();
        for shape in [&[4usize][..], &[2, 4, 5], &[1, 3, 2, 2, 2]] {
            let err = bn
                .forward(&Tensor::zeros(ndarray::IxDyn(shape)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("BatchNorm(3)")
                    && err.contains("[N, 3, H, W]")
                    && err.contains(&format!("{shape:?}")),
                "{err}"
            );
        }
        let err = bn
            .forward(&Tensor::zeros(ndarray::IxDyn(&[1, 3])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BatchNorm(3)") && err.contains("[1, 3]"),
            "{err}"
        );
        assert!(BatchNormConfig::new(3)
            .with_momentum(2.0)
            .init::<f32>()
            .is_err());
    }
}
