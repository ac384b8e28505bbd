//! Inverted dropout with its own seeded random-number generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{Float, Tensor};

fn default_p() -> f64 {
    0.5
}

/// Configuration of a [`Dropout`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutConfig {
    /// Probability of zeroing an element (default 0.5).
    #[serde(default = "default_p")]
    pub p: f64,
    /// Seed of the layer's mask generator (default 0).
    #[serde(default)]
    pub seed: u64,
}

impl DropoutConfig {
    /// Dropout with probability `p` and seed 0.
    pub fn new(p: f64) -> Self {
        DropoutConfig { p, seed: 0 }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates `p` (in `[0, 1]`); the layer starts in training mode.
    pub fn init<F: Float>(&self) -> Result<Dropout<F>> {
        if !(0.0..=1.0).contains(&self.p) {
            return Err(Error::config(
                "Dropout",
                format!("p {} must be in [0, 1]", self.p),
            ));
        }
        Ok(Dropout {
            config: self.clone(),
            rng: StdRng::seed_from_u64(self.seed),
            training: true,
            mask: None,
        })
    }
}

/// In training mode zeroes each element with probability `p` and scales
/// the rest by `1 / (1 - p)` (a fresh mask every forward, reused by
/// backward); the identity in evaluation mode.
#[derive(Debug, Clone)]
pub struct Dropout<F> {
    config: DropoutConfig,
    rng: StdRng,
    training: bool,
    /// `0` or `1 / (1 - p)` per element, from the last training-mode forward.
    mask: Option<Tensor<F>>,
}

impl<F: Float> Dropout<F> {
    /// The mask of the last training-mode forward (`0` or `1 / (1 - p)` per element).
    pub fn mask(&self) -> Option<&Tensor<F>> {
        self.mask.as_ref()
    }
}

impl<F: Float> Module<F> for Dropout<F> {
    fn name(&self) -> String {
        format!("Dropout({})", self.config.p)
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        if !self.training || self.config.p == 0.0 {
            self.mask = None;
            return Ok(input.clone());
        }
        let p = self.config.p;
        let keep = if p >= 1.0 {
            F::zero()
        } else {
            F::of(1.0 / (1.0 - p))
        };
        let rng = &mut self.rng;
        let mask = Tensor::from_shape_simple_fn(input.raw_dim(), || {
            if rng.random::<f64>() < p {
                F::zero()
            } else {
                keep
            }
        });
        let y = input * &mask;
        self.mask = Some(mask);
        Ok(y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = self.name();
        if grad_output.shape() != input.shape() {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output {:?}", input.shape()),
                grad_output.shape(),
            ));
        }
        if !self.training || self.config.p == 0.0 {
            return Ok(grad_output.clone());
        }
        match &self.mask {
            Some(m) if m.shape() == input.shape() => Ok(grad_output * m),
            Some(m) => Err(Error::shape(
                format!("{name} backward"),
                format!("the input shape of the last forward {:?}", m.shape()),
                input.shape(),
            )),
            None => Err(Error::NoForward { op: name }),
        }
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Dropout(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use crate::module::ModuleExt;

    fn x() -> Tensor<f64> {
        let mut rng = StdRng::seed_from_u64(1);
        init::uniform::<f64>(&mut rng, &[40, 50], 1.0).mapv(|v| v + 2.0)
    }

    #[test]
    fn training_mode_drops_and_rescales_with_a_new_mask_each_time() {
        let mut d = DropoutConfig::new(0.3).with_seed(7).init::<f64>().unwrap();
        let x = x();
        let y1 = d.forward(&x).unwrap();
        let zeros = y1.iter().filter(|&&v| v == 0.0).count() as f64 / x.len() as f64;
        assert!((zeros - 0.3).abs() < 0.05, "{zeros}");
        for (a, b) in y1.iter().zip(x.iter()) {
            assert!(*a == 0.0 || (a - b / 0.7).abs() < 1e-12);
        }
        let y2 = d.forward(&x).unwrap();
        assert_ne!(y1, y2);
        // same seed, same masks
        let mut d2 = DropoutConfig::new(0.3).with_seed(7).init::<f64>().unwrap();
        assert_eq!(d2.forward(&x).unwrap(), y1);
    }

    #[test]
    fn backward_uses_the_cached_mask() {
        let mut d = DropoutConfig::new(0.5).with_seed(3).init::<f64>().unwrap();
        let x = x();
        let y = d.forward(&x).unwrap();
        let gy = x.mapv(|v| v * 0.25 - 0.1);
        let gx = d.backward(&x, &gy).unwrap();
        let mask = d.mask().unwrap().clone();
        assert!(mask.iter().all(|&m| m == 0.0 || m == 2.0));
        assert_eq!(gx, &gy * &mask);
        // y is linear in x with slope mask: the gradient is exact
        assert_eq!(y, &x * &mask);
    }

    #[test]
    fn eval_mode_is_the_identity_and_passes_gradcheck() {
        let mut d = DropoutConfig::new(0.5).init::<f64>().unwrap();
        d.eval_mode();
        let x = x();
        assert_eq!(d.forward(&x).unwrap(), x);
        check_module(
            &mut d,
            &x.slice(ndarray::s![..3, ..4]).to_owned().into_dyn(),
            1e-6,
        )
        .unwrap()
        .within(1e-6)
        .unwrap();
    }

    #[test]
    fn bad_p_and_bad_grad_are_errors() {
        assert!(DropoutConfig::new(1.5).init::<f32>().is_err());
        let mut d = DropoutConfig::new(0.5).init::<f64>().unwrap();
        let x = x();
        d.forward(&x).unwrap();
        let err = d
            .backward(&x, &Tensor::zeros(ndarray::IxDyn(&[2, 2])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Dropout") && err.contains("[40, 50]") && err.contains("[2, 2]"),
            "{err}"
        );
    }
}
