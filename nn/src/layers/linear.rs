//! Fully connected layer: `y = x Wᵀ + b`, weight `[out, in]` as in PyTorch.

use ndarray::{Array2, Axis, Ix1};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::matmul;
use crate::module::{qualified, Module, Param};
use crate::tensor::{view2, view2_mut, Float, Tensor};

/// Configuration of a [`Linear`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether to learn an additive bias.
    #[serde(default = "default_true")]
    pub bias: bool,
}

fn default_true() -> bool {
    true
}

impl LinearConfig {
    /// A layer with bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        LinearConfig {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// Validates the configuration and initialises weights like PyTorch
    /// (uniform in ±1/√in_features).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Linear<F>> {
        if self.in_features == 0 || self.out_features == 0 {
            return Err(Error::config("Linear", "feature counts must be positive"));
        }
        let bound = 1.0 / (self.in_features as f64).sqrt();
        let weight = init::uniform(rng, &[self.out_features, self.in_features], bound);
        let bias = self
            .bias
            .then(|| Param::new(init::uniform(rng, &[self.out_features], bound)));
        Ok(Linear {
            config: self.clone(),
            weight: Param::new(weight),
            bias,
        })
    }
}

/// Fully connected layer over `[N, in_features]` inputs.
#[derive(Debug, Clone)]
pub struct Linear<F> {
    config: LinearConfig,
    /// Weight, `[out_features, in_features]`.
    pub weight: Param<F>,
    /// Bias, `[out_features]`.
    pub bias: Option<Param<F>>,
}

impl<F: Float> Linear<F> {
    fn check_input(&self, input: &Tensor<F>) -> Result<()> {
        if input.ndim() != 2 || input.shape()[1] != self.config.in_features {
            return Err(Error::shape(
                self.name(),
                format!("[N, {}]", self.config.in_features),
                input.shape(),
            ));
        }
        Ok(())
    }
}

impl<F: Float> Module<F> for Linear<F> {
    fn name(&self) -> String {
        format!(
            "Linear({}->{})",
            self.config.in_features, self.config.out_features
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.check_input(input)?;
        let name = self.name();
        let x = view2(&name, input)?;
        let w = view2(&name, &self.weight.value)?;
        let mut y = Array2::zeros((x.nrows(), self.config.out_features));
        matmul::gemm(F::one(), x, w.t(), F::zero(), &mut y.view_mut())?;
        if let Some(b) = &self.bias {
            let b = b
                .value
                .view()
                .into_dimensionality::<Ix1>()
                .map_err(|_| Error::shape(&name, "bias [out]", b.value.shape()))?;
            y += &b;
        }
        Ok(y.into_dyn())
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        self.backward_params(input, grad_output)?;
        let name = self.name();
        let gy = view2(&name, grad_output)?;
        let w = view2(&name, &self.weight.value)?;
        let mut gx = Array2::zeros((gy.nrows(), self.config.in_features));
        matmul::gemm(F::one(), gy, w, F::zero(), &mut gx.view_mut())?;
        Ok(gx.into_dyn())
    }

    fn backward_params(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
        self.check_input(input)?;
        let name = self.name();
        let n = input.shape()[0];
        if grad_output.shape() != [n, self.config.out_features] {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output [{n}, {}]", self.config.out_features),
                grad_output.shape(),
            ));
        }
        let x = view2(&name, input)?;
        let gy = view2(&name, grad_output)?;
        matmul::gemm(
            F::one(),
            gy.t(),
            x,
            F::one(),
            &mut view2_mut(&name, &mut self.weight.grad)?,
        )?;
        if let Some(b) = &mut self.bias {
            let gb = gy.sum_axis(Axis(0));
            b.grad.zip_mut_with(&gb.into_dyn(), |g, &d| *g += d);
        }
        Ok(())
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Linear(self.config.clone())
    }
}
