//! Layers that only move data around: Reshape (View), Flatten, Transpose, Identity.

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{reshape, Float, Tensor};

/// Reshapes every sample, keeping the batch dimension: `[N, …] -> [N, shape…]`.
/// One entry of `shape` may be -1 (inferred). `View` in Torch terms.
#[derive(Debug, Clone)]
pub struct Reshape {
    shape: Vec<isize>,
}

impl Reshape {
    /// A reshape to the per-sample `shape`; at most one -1, no other negative or zero entry.
    pub fn new(shape: Vec<isize>) -> Result<Self> {
        let inferred = shape.iter().filter(|&&d| d == -1).count();
        if inferred > 1 || shape.iter().any(|&d| d == 0 || d < -1) {
            return Err(Error::config(
                "Reshape",
                format!("bad target shape {shape:?}: positive sizes and at most one -1"),
            ));
        }
        Ok(Reshape { shape })
    }
}

fn reshape_target(op: &str, spec: &[isize], input_shape: &[usize]) -> Result<Vec<usize>> {
    let Some((&n, rest)) = input_shape.split_first() else {
        return Err(Error::shape(op, "[N, …]", input_shape));
    };
    let per_sample: usize = rest.iter().product();
    let known: usize = spec
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    let mut out = vec![n];
    for &d in spec {
        if d == -1 {
            if known == 0 || !per_sample.is_multiple_of(known) {
                return Err(Error::shape(
                    op,
                    format!("a sample size divisible into {spec:?}"),
                    input_shape,
                ));
            }
            out.push(per_sample / known);
        } else {
            out.push(d as usize);
        }
    }
    if out[1..].iter().product::<usize>() != per_sample {
        return Err(Error::shape(
            op,
            format!("{per_sample} elements per sample to fit {spec:?}"),
            input_shape,
        ));
    }
    Ok(out)
}

impl<F: Float> Module<F> for Reshape {
    fn name(&self) -> String {
        format!("Reshape({:?})", self.shape)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        let target = reshape_target(&name, &self.shape, input.shape())?;
        reshape(&name, input, &target)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        reshape(&format!("{name} backward"), grad_output, input.shape())
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Reshape {
            shape: self.shape.clone(),
        }
    }
}

/// Flattens dimensions `start_dim..` into one (`start_dim = 1` keeps the batch).
#[derive(Debug, Clone, Copy)]
pub struct Flatten {
    start_dim: usize,
}

impl Flatten {
    /// Flattens from `start_dim` on.
    pub fn new(start_dim: usize) -> Self {
        Flatten { start_dim }
    }
}

impl<F: Float> Module<F> for Flatten {
    fn name(&self) -> String {
        format!("Flatten({})", self.start_dim)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        if input.ndim() < self.start_dim.max(1) {
            return Err(Error::shape(
                &name,
                format!("at least {} dimensions", self.start_dim.max(1)),
                input.shape(),
            ));
        }
        let mut target: Vec<usize> = input.shape()[..self.start_dim].to_vec();
        target.push(input.shape()[self.start_dim..].iter().product());
        reshape(&name, input, &target)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        reshape(&format!("{name} backward"), grad_output, input.shape())
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Flatten {
            start_dim: self.start_dim,
        }
    }
}

/// Swaps two dimensions (the result is made contiguous).
#[derive(Debug, Clone, Copy)]
pub struct Transpose {
    dim0: usize,
    dim1: usize,
}

impl Transpose {
    /// Swaps `dim0` and `dim1`.
    pub fn new(dim0: usize, dim1: usize) -> Self {
        Transpose { dim0, dim1 }
    }

    fn apply<F: Float>(&self, op: &str, t: &Tensor<F>) -> Result<Tensor<F>> {
        if self.dim0 >= t.ndim() || self.dim1 >= t.ndim() {
            return Err(Error::shape(
                op,
                format!("a tensor with dimensions {} and {}", self.dim0, self.dim1),
                t.shape(),
            ));
        }
        let mut v = t.view();
        v.swap_axes(self.dim0, self.dim1);
        Ok(v.as_standard_layout().into_owned())
    }
}

impl<F: Float> Module<F> for Transpose {
    fn name(&self) -> String {
        format!("Transpose({}, {})", self.dim0, self.dim1)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.apply(&Module::<F>::name(self), input)
    }
    fn backward(&mut self, _input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        self.apply(
            &format!("{} backward", Module::<F>::name(self)),
            grad_output,
        )
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Transpose {
            dim0: self.dim0,
            dim1: self.dim1,
        }
    }
}

/// Returns its input unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl<F: Float> Module<F> for Identity {
    fn name(&self) -> String {
        "Identity".into()
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(input.clone())
    }
    fn backward(&mut self, _input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(grad_output.clone())
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Identity
    }
}
