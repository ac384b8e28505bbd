//! Finite-difference gradient checks (in f64) for modules and criterions.
//!
//! The module check uses the scalar `L = Σ output ⊙ R` for a fixed random
//! `R`, so `dL/doutput = R`; it compares `backward`'s input gradient and
//! every parameter gradient with central differences of `L`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::criterion::Criterion;
use crate::error::{Error, Result};
use crate::module::{Module, ModuleExt};
use crate::tensor::Tensor;

/// The worst disagreement found by a check.
#[derive(Debug, Clone)]
pub struct GradReport {
    /// Largest `|analytic - numeric| / max(1, |analytic|, |numeric|)`.
    pub max_error: f64,
    /// Where it occurred (`input[i]` or `<param>[i]`).
    pub worst: String,
    /// Number of scalars checked.
    pub checked: usize,
}

impl GradReport {
    /// Fails with a description of the worst element when `max_error > tol`.
    pub fn within(self, tol: f64) -> Result<Self> {
        if self.max_error > tol {
            return Err(Error::invalid(
                "gradcheck",
                format!(
                    "error {:.3e} at {} exceeds {tol:e}",
                    self.max_error, self.worst
                ),
            ));
        }
        Ok(self)
    }
}

fn rel_err(a: f64, n: f64) -> f64 {
    (a - n).abs() / 1f64.max(a.abs()).max(n.abs())
}

fn weighted_sum(out: &Tensor<f64>, r: &Tensor<f64>) -> f64 {
    out.iter().zip(r.iter()).map(|(a, b)| a * b).sum()
}

/// Checks a module's input and parameter gradients at `input` with step `eps`.
/// The module must be deterministic between calls (e.g. evaluation-mode
/// dropout, or training-mode batch norm, whose output depends only on the batch).
pub fn check_module(
    module: &mut dyn Module<f64>,
    input: &Tensor<f64>,
    eps: f64,
) -> Result<GradReport> {
    let out = module.forward(input)?;
    let mut rng = StdRng::seed_from_u64(0x6ead);
    let r = Tensor::from_shape_simple_fn(out.raw_dim(), || rng.random_range(-1.0..1.0));
    module.zero_grad();
    let gx = module.backward(input, &r)?;
    let param_grads = module.flat_grads();
    let base_params = module.flat_params();

    let mut report = GradReport {
        max_error: 0.0,
        worst: String::new(),
        checked: 0,
    };
    let note = |report: &mut GradReport, a: f64, n: f64, place: String| {
        let e = rel_err(a, n);
        report.checked += 1;
        if e > report.max_error || report.worst.is_empty() {
            report.max_error = e;
            report.worst = format!("{place} (analytic {a:.6e}, numeric {n:.6e})");
        }
    };

    let mut x = input.clone();
    for i in 0..x.len() {
        let orig = x.as_slice_memory_order().map(|s| s[i]).unwrap_or(0.0);
        set(&mut x, i, orig + eps);
        let plus = weighted_sum(&module.forward(&x)?, &r);
        set(&mut x, i, orig - eps);
        let minus = weighted_sum(&module.forward(&x)?, &r);
        set(&mut x, i, orig);
        let a = gx.as_slice_memory_order().map(|s| s[i]).unwrap_or(f64::NAN);
        note(
            &mut report,
            a,
            (plus - minus) / (2.0 * eps),
            format!("input[{i}]"),
        );
    }

    let layout = module.param_layout();
    let mut p = base_params.clone();
    for slot in &layout {
        let n: usize = slot.shape.iter().product();
        for j in 0..n {
            let k = slot.offset + j;
            p[k] = base_params[k] + eps;
            module.set_flat_params(&p)?;
            let plus = weighted_sum(&module.forward(input)?, &r);
            p[k] = base_params[k] - eps;
            module.set_flat_params(&p)?;
            let minus = weighted_sum(&module.forward(input)?, &r);
            p[k] = base_params[k];
            note(
                &mut report,
                param_grads[k],
                (plus - minus) / (2.0 * eps),
                format!("{}[{j}]", slot.name),
            );
        }
    }
    module.set_flat_params(&base_params)?;
    Ok(report)
}

/// Checks a criterion's input gradient at (`input`, `target`).
pub fn check_criterion(
    criterion: &mut dyn Criterion<f64>,
    input: &Tensor<f64>,
    target: &Tensor<f64>,
    eps: f64,
) -> Result<GradReport> {
    criterion.forward(input, target)?;
    let gx = criterion.backward(input, target)?;
    let mut report = GradReport {
        max_error: 0.0,
        worst: String::new(),
        checked: 0,
    };
    let mut x = input.clone();
    for i in 0..x.len() {
        let orig = x.as_slice_memory_order().map(|s| s[i]).unwrap_or(0.0);
        set(&mut x, i, orig + eps);
        let plus = criterion.forward(&x, target)?;
        set(&mut x, i, orig - eps);
        let minus = criterion.forward(&x, target)?;
        set(&mut x, i, orig);
        let a = gx.as_slice_memory_order().map(|s| s[i]).unwrap_or(f64::NAN);
        let n = (plus - minus) / (2.0 * eps);
        let e = rel_err(a, n);
        report.checked += 1;
        if e > report.max_error || report.worst.is_empty() {
            report.max_error = e;
            report.worst = format!("input[{i}] (analytic {a:.6e}, numeric {n:.6e})");
        }
    }
    Ok(report)
}

fn set(x: &mut Tensor<f64>, i: usize, v: f64) {
    if let Some(s) = x.as_slice_memory_order_mut() {
        s[i] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init;
    use crate::layers::{
        Flatten, HardTanh, LeakyReLU, LinearConfig, LogSoftMax, ReLU, Reshape, Sequential, Sigmoid,
        SoftMax, Tanh, Transpose,
    };

    fn rand_input(shape: &[usize], seed: u64) -> Tensor<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        init::uniform(&mut rng, shape, 1.0)
    }

    #[test]
    fn linear_and_activations_pass_gradcheck() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut m = Sequential::new()
            .with(LinearConfig::new(5, 7).init::<f64>(&mut rng).unwrap())
            .with(Tanh::default())
            .with(LinearConfig::new(7, 6).init::<f64>(&mut rng).unwrap())
            .with(Sigmoid::default())
            .with(
                LinearConfig {
                    in_features: 6,
                    out_features: 4,
                    bias: false,
                }
                .init::<f64>(&mut rng)
                .unwrap(),
            )
            .with(LeakyReLU::new(0.1))
            .with(SoftMax::new(1))
            .with(LogSoftMax::new(-1));
        let x = rand_input(&[3, 5], 1);
        let r = check_module(&mut m, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
        assert!(r.checked > 100);
    }

    #[test]
    fn piecewise_and_shape_layers_pass_gradcheck() {
        // Inputs kept away from the kinks (0 for ReLU, ±1 for HardTanh).
        let x = rand_input(&[2, 3, 4], 2).mapv(|v| if v.abs() < 0.05 { v + 0.2 } else { v });
        for m in [
            Box::new(ReLU) as Box<dyn Module<f64>>,
            Box::new(HardTanh::new(-0.5, 0.5).unwrap()),
            Box::new(Flatten::new(1)),
            Box::new(Transpose::new(1, 2)),
            Box::new(Reshape::new(vec![4, -1]).unwrap()),
            Box::new(crate::layers::Identity),
        ] {
            let mut m = m;
            let x = x.mapv(|v| {
                if (v.abs() - 0.5).abs() < 0.02 {
                    v * 0.9
                } else {
                    v
                }
            });
            check_module(m.as_mut(), &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap();
        }
    }

    #[test]
    fn a_wrong_gradient_is_caught() {
        struct Wrong;
        impl Module<f64> for Wrong {
            fn name(&self) -> String {
                "Wrong".into()
            }
            fn forward(&mut self, x: &Tensor<f64>) -> Result<Tensor<f64>> {
                Ok(x.mapv(|v| v * v))
            }
            fn backward(&mut self, x: &Tensor<f64>, g: &Tensor<f64>) -> Result<Tensor<f64>> {
                Ok(x * g)
            }
            fn config(&self) -> crate::layers::LayerConfig {
                crate::layers::LayerConfig::Identity
            }
        }
        let x = rand_input(&[4], 9);
        assert!(check_module(&mut Wrong, &x, 1e-6)
            .unwrap()
            .within(1e-4)
            .is_err());
    }
}
