//! Weight initialisation.

use rand::rngs::StdRng;
use rand::Rng;

use crate::tensor::{Float, Tensor};

/// A tensor of values drawn uniformly from `[-bound, bound)`.
pub fn uniform<F: Float>(rng: &mut StdRng, shape: &[usize], bound: f64) -> Tensor<F> {
    Tensor::from_shape_simple_fn(shape, || {
        if bound > 0.0 {
            F::of(rng.random_range(-bound..bound))
        } else {
            F::zero()
        }
    })
}

/// A tensor of values from a normal distribution with the given mean and standard deviation.
pub fn normal<F: Float>(rng: &mut StdRng, shape: &[usize], mean: f64, std: f64) -> Tensor<F> {
    use rand_distr::{Distribution, Normal};
    match Normal::new(mean, std) {
        Ok(d) => Tensor::from_shape_simple_fn(shape, || F::of(d.sample(rng))),
        Err(_) => Tensor::from_elem(shape, F::of(mean)),
    }
}

/// Xavier/Glorot uniform initialisation for a weight with the given fan-in and fan-out.
pub fn xavier_uniform<F: Float>(
    rng: &mut StdRng,
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
) -> Tensor<F> {
    let bound = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    uniform(rng, shape, bound)
}
