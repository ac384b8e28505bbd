//! Elementwise activations and (log-)softmax.

use ndarray::Axis;

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{
    expect_same_shape, par_map, par_map_inplace, par_map_slices, par_zip_map, par_zip_slices,
    resolve_dim, Float, Tensor,
};

fn check_grad<F: Float>(op: &str, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
    expect_same_shape(&format!("{op} backward"), input, grad_output)
}

/// `max(0, x)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReLU;

impl<F: Float> Module<F> for ReLU {
    fn name(&self) -> String {
        "ReLU".into()
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        Ok(par_map(
            input,
            |x| if x > F::zero() { x } else { F::zero() },
        ))
    }
    fn infer(&mut self, mut input: Tensor<F>) -> Result<Tensor<F>> {
        par_map_inplace(&mut input, |x| if x > F::zero() { x } else { F::zero() });
        Ok(input)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad("ReLU", input, grad_output)?;
        par_zip_map("ReLU backward", input, grad_output, |x, g| {
            if x > F::zero() {
                g
            } else {
                F::zero()
            }
        })
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Relu
    }
}

/// `x` for positive inputs, `slope * x` otherwise.
#[derive(Debug, Clone, Copy)]
pub struct LeakyReLU {
    negative_slope: f64,
}

impl LeakyReLU {
    /// A leaky ReLU with the given negative slope (PyTorch's default is 0.01).
    pub fn new(negative_slope: f64) -> Self {
        LeakyReLU { negative_slope }
    }
}

impl<F: Float> Module<F> for LeakyReLU {
    fn name(&self) -> String {
        format!("LeakyReLU({})", self.negative_slope)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let s = F::of(self.negative_slope);
        Ok(par_map(input, |x| if x > F::zero() { x } else { x * s }))
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad("LeakyReLU", input, grad_output)?;
        let s = F::of(self.negative_slope);
        par_zip_map("LeakyReLU backward", input, grad_output, |x, g| {
            if x > F::zero() {
                g
            } else {
                g * s
            }
        })
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::LeakyRelu {
            negative_slope: self.negative_slope,
        }
    }
}

/// `tanh(x)`; caches its output for backward.
#[derive(Debug, Clone, Default)]
pub struct Tanh<F> {
    output: Option<Tensor<F>>,
}

impl<F: Float> Module<F> for Tanh<F> {
    fn name(&self) -> String {
        "Tanh".into()
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let y = par_map_slices(input, F::fast_tanh_slice);
        self.output = Some(y.clone());
        Ok(y)
    }
    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        Ok(par_map_slices(&input, F::fast_tanh_slice))
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad("Tanh", input, grad_output)?;
        let y = self
            .output
            .as_ref()
            .ok_or_else(|| Error::NoForward { op: "Tanh".into() })?;
        par_zip_slices("Tanh backward", y, grad_output, F::tanh_grad_slice)
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Tanh
    }
}

/// `1 / (1 + exp(-x))`; caches its output for backward.
#[derive(Debug, Clone, Default)]
pub struct Sigmoid<F> {
    output: Option<Tensor<F>>,
}

impl<F: Float> Module<F> for Sigmoid<F> {
    fn name(&self) -> String {
        "Sigmoid".into()
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let half = F::of(0.5);
        // sigmoid(x) = (1 + tanh(x/2)) / 2: stable for large |x| and vectorised for f32.
        let y = par_map(input, |x| half * (x * half).fast_tanh() + half);
        self.output = Some(y.clone());
        Ok(y)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad("Sigmoid", input, grad_output)?;
        let y = self.output.as_ref().ok_or_else(|| Error::NoForward {
            op: "Sigmoid".into(),
        })?;
        par_zip_map("Sigmoid backward", y, grad_output, |y, g| {
            g * y * (F::one() - y)
        })
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::Sigmoid
    }
}

/// Clamps to `[min_val, max_val]` (DS2 uses `HardTanh(0, 20)` as a clipped ReLU).
#[derive(Debug, Clone, Copy)]
pub struct HardTanh {
    min_val: f64,
    max_val: f64,
}

impl HardTanh {
    /// A clamp to `[min_val, max_val]`; `min_val` must be below `max_val`.
    pub fn new(min_val: f64, max_val: f64) -> Result<Self> {
        if min_val >= max_val || min_val.is_nan() || max_val.is_nan() {
            return Err(Error::config(
                "HardTanh",
                format!("min_val {min_val} must be below max_val {max_val}"),
            ));
        }
        Ok(HardTanh { min_val, max_val })
    }
}

impl<F: Float> Module<F> for HardTanh {
    fn name(&self) -> String {
        format!("HardTanh({}, {})", self.min_val, self.max_val)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let (lo, hi) = (F::of(self.min_val), F::of(self.max_val));
        Ok(par_map(input, |x| x.max(lo).min(hi)))
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad("HardTanh", input, grad_output)?;
        let (lo, hi) = (F::of(self.min_val), F::of(self.max_val));
        par_zip_map("HardTanh backward", input, grad_output, |x, g| {
            if x > lo && x < hi {
                g
            } else {
                F::zero()
            }
        })
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::HardTanh {
            min_val: self.min_val,
            max_val: self.max_val,
        }
    }
}

/// Numerically stable softmax of every lane along `axis`, written into `out`.
fn softmax_lanes<F: Float>(input: &Tensor<F>, axis: usize, log: bool) -> Tensor<F> {
    let mut out = input.clone();
    for mut lane in out.lanes_mut(Axis(axis)) {
        let max = lane.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
        let max = if max.is_finite() { max } else { F::zero() };
        let sum: F = lane.iter().map(|&v| (v - max).exp()).sum();
        if log {
            let lse = max + sum.ln();
            lane.mapv_inplace(|v| v - lse);
        } else {
            lane.mapv_inplace(|v| (v - max).exp() / sum);
        }
    }
    out
}

/// Softmax over one dimension; caches its output.
#[derive(Debug, Clone)]
pub struct SoftMax<F> {
    dim: isize,
    output: Option<Tensor<F>>,
}

impl<F: Float> SoftMax<F> {
    /// Softmax over `dim` (negative counts from the end).
    pub fn new(dim: isize) -> Self {
        SoftMax { dim, output: None }
    }
}

impl<F: Float> Module<F> for SoftMax<F> {
    fn name(&self) -> String {
        format!("SoftMax(dim={})", self.dim)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let d = resolve_dim(&self.name(), self.dim, input.shape())?;
        let y = softmax_lanes(input, d, false);
        self.output = Some(y.clone());
        Ok(y)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad(&self.name(), input, grad_output)?;
        let d = resolve_dim(&self.name(), self.dim, input.shape())?;
        let y = self.output.as_ref().ok_or_else(|| Error::NoForward {
            op: "SoftMax".into(),
        })?;
        expect_same_shape("SoftMax backward", y, grad_output)?;
        // dx = y * (g - sum(g * y))
        let mut gx = grad_output.clone();
        for (mut gl, yl) in gx.lanes_mut(Axis(d)).into_iter().zip(y.lanes(Axis(d))) {
            let dot: F = gl.iter().zip(yl.iter()).map(|(&g, &y)| g * y).sum();
            gl.zip_mut_with(&yl, |g, &y| *g = y * (*g - dot));
        }
        Ok(gx)
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::SoftMax { dim: self.dim }
    }
}

/// Log-softmax over one dimension; caches its output.
#[derive(Debug, Clone)]
pub struct LogSoftMax<F> {
    dim: isize,
    output: Option<Tensor<F>>,
}

impl<F: Float> LogSoftMax<F> {
    /// Log-softmax over `dim` (negative counts from the end).
    pub fn new(dim: isize) -> Self {
        LogSoftMax { dim, output: None }
    }
}

impl<F: Float> Module<F> for LogSoftMax<F> {
    fn name(&self) -> String {
        format!("LogSoftMax(dim={})", self.dim)
    }
    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let d = resolve_dim(&self.name(), self.dim, input.shape())?;
        let y = softmax_lanes(input, d, true);
        self.output = Some(y.clone());
        Ok(y)
    }
    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        check_grad(&self.name(), input, grad_output)?;
        let d = resolve_dim(&self.name(), self.dim, input.shape())?;
        let y = self.output.as_ref().ok_or_else(|| Error::NoForward {
            op: "LogSoftMax".into(),
        })?;
        expect_same_shape("LogSoftMax backward", y, grad_output)?;
        // dx = g - exp(y) * sum(g)
        let mut gx = grad_output.clone();
        for (mut gl, yl) in gx.lanes_mut(Axis(d)).into_iter().zip(y.lanes(Axis(d))) {
            let sum: F = gl.iter().copied().sum();
            gl.zip_mut_with(&yl, |g, &y| *g -= y.exp() * sum);
        }
        Ok(gx)
    }
    fn config(&self) -> LayerConfig {
        LayerConfig::LogSoftMax { dim: self.dim }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_f32_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -12.0f32;
        while x < 12.0 {
            let (a, b) = (x.fast_tanh(), x.tanh());
            worst = worst.max((a - b).abs() / b.abs().max(1e-30).max(f32::EPSILON));
            x += 0.000_37;
        }
        assert!(worst < 8.0 * f32::EPSILON, "worst relative error {worst:e}");
        assert_eq!(0f32.fast_tanh(), 0.0);
        assert!(f32::NAN.fast_tanh().is_nan());
        assert!((f32::INFINITY.fast_tanh() - 1.0).abs() < 1e-6);
        assert!((f32::NEG_INFINITY.fast_tanh() + 1.0).abs() < 1e-6);
    }

    #[test]
    fn sigmoid_matches_the_logistic_function() {
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[5]), vec![-30.0f64, -2.0, 0.0, 1.5, 40.0])
            .unwrap();
        let y = Sigmoid::default().forward(&x).unwrap();
        for (v, s) in x.iter().zip(y.iter()) {
            assert!((s - 1.0 / (1.0 + (-v).exp())).abs() < 1e-12);
        }
    }
}
