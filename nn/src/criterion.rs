//! Criterions (loss functions): a scalar loss from an input and a target,
//! and the loss's gradient with respect to the input.
//!
//! All criterions follow PyTorch's semantics (`torch.nn.functional`), including
//! how `mean` reductions are normalised when class weights or ignored targets
//! are involved. Criterions are stateless: `backward` recomputes what it needs
//! from `input` and `target`.

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

mod bce;
mod class_nll;
mod cross_entropy;
/// Connectionist temporal classification loss.
pub mod ctc;
mod kl_div;
mod l1;
mod mse;
mod smooth_l1;

pub use bce::Bce;
pub use class_nll::ClassNll;
pub use cross_entropy::CrossEntropy;
pub use ctc::{CtcLoss, CtcReduction};
pub use kl_div::{KlDiv, KlReduction};
pub use l1::L1;
pub use mse::Mse;
pub use smooth_l1::SmoothL1;

/// How per-element (or per-sample) losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Average (PyTorch's default).
    #[default]
    Mean,
    /// Sum.
    Sum,
}

/// A loss function.
pub trait Criterion<F: Float>: Send {
    /// A short description for error messages.
    fn name(&self) -> String;

    /// The loss of `input` against `target`.
    fn forward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<F>;

    /// dLoss/dInput for the same `input` and `target` as the last `forward`.
    fn backward(&mut self, input: &Tensor<F>, target: &Tensor<F>) -> Result<Tensor<F>>;
}

/// Checks that `input` and `target` have the same shape, naming the criterion.
pub(crate) fn same_shape<F: Float>(op: &str, input: &Tensor<F>, target: &Tensor<F>) -> Result<()> {
    if input.shape() != target.shape() {
        return Err(Error::ShapeMismatch {
            op: format!("{op}: input and target"),
            lhs: input.shape().to_vec(),
            rhs: target.shape().to_vec(),
        });
    }
    Ok(())
}

/// Applies an elementwise loss `f(x, t) -> (loss, dloss/dx)` with a reduction.
pub(crate) fn pointwise<F: Float>(
    op: &str,
    input: &Tensor<F>,
    target: &Tensor<F>,
    reduction: Reduction,
    f: impl Fn(f64, f64) -> (f64, f64),
) -> Result<(F, Tensor<F>)> {
    same_shape(op, input, target)?;
    let n = input.len();
    let scale = match reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum => 1.0,
    };
    let mut total = 0.0;
    let mut grad = Tensor::zeros(input.raw_dim());
    ndarray::Zip::from(&mut grad)
        .and(input)
        .and(target)
        .for_each(|g, &x, &t| {
            let (l, d) = f(x.as_f64(), t.as_f64());
            total += l;
            *g = F::of(d * scale);
        });
    let loss = if n == 0 && reduction == Reduction::Mean {
        f64::NAN
    } else {
        total * scale
    };
    Ok((F::of(loss), grad))
}

/// The layout of a class-scored input: `[N, C]` with target `[N]`, or
/// `[N, C, d1, ..]` with target `[N, d1, ..]`.
pub(crate) struct ClassLayout {
    /// Batch size N.
    pub n: usize,
    /// Number of classes C.
    pub c: usize,
    /// Product of the trailing dimensions (1 for `[N, C]`).
    pub inner: usize,
}

/// Checks the input/target shapes of a class-index criterion.
pub(crate) fn class_layout<F: Float>(
    op: &str,
    input: &Tensor<F>,
    target: &Tensor<F>,
) -> Result<ClassLayout> {
    let s = input.shape();
    let t = target.shape();
    let ok = s.len() >= 2 && t.len() == s.len() - 1 && t[0] == s[0] && t[1..] == s[2..];
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "input [N, C] with target [N] (or [N, C, d1..] with target [N, d1..]); target shape is {t:?}"
            ),
            s,
        ));
    }
    Ok(ClassLayout {
        n: s[0],
        c: s[1],
        inner: s[2..].iter().product(),
    })
}

/// Resolves the class of one target value: `None` when it equals
/// `ignore_index`, an error when it is not a valid class.
pub(crate) fn target_class<F: Float>(
    op: &str,
    v: F,
    classes: usize,
    ignore_index: Option<i64>,
) -> Result<Option<usize>> {
    if let Some(ii) = ignore_index {
        if v.as_f64() == ii as f64 {
            return Ok(None);
        }
    }
    crate::tensor::class_index(op, v, classes).map(Some)
}

/// Checks optional per-class weights against the class count.
pub(crate) fn check_weights<F: Float>(
    op: &str,
    weight: Option<&[F]>,
    classes: usize,
) -> Result<()> {
    if let Some(w) = weight {
        if w.len() != classes {
            return Err(Error::shape(
                op,
                format!("class weights of length C = {classes}"),
                &[w.len()],
            ));
        }
    }
    Ok(())
}

/// Row-major values of a tensor as `f64`.
pub(crate) fn values<F: Float>(t: &Tensor<F>) -> Vec<f64> {
    t.iter().map(|v| v.as_f64()).collect()
}

/// Builds a tensor of `shape` from row-major `f64` values.
pub(crate) fn tensor_of<F: Float>(shape: &[usize], v: Vec<f64>) -> Result<Tensor<F>> {
    crate::tensor::from_vec(shape, v.into_iter().map(F::of).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_criterion;
    use crate::tensor::from_vec;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rand(shape: &[usize], seed: u64, bound: f64) -> Tensor<f64> {
        crate::init::uniform(&mut StdRng::seed_from_u64(seed), shape, bound)
    }

    fn check(c: &mut dyn Criterion<f64>, x: &Tensor<f64>, t: &Tensor<f64>) {
        let name = c.name();
        let r = check_criterion(c, x, t, 1e-6).unwrap();
        assert!(r.max_error <= 1e-6, "{name}: {r:?}");
    }

    fn targets(shape: &[usize], v: &[f64]) -> Tensor<f64> {
        from_vec(shape, v.to_vec()).unwrap()
    }

    #[test]
    fn class_criterions_pass_gradcheck() {
        let x = rand(&[5, 4], 1, 2.0);
        let t = targets(&[5], &[0.0, 3.0, 1.0, 2.0, 3.0]);
        let ti = targets(&[5], &[0.0, -100.0, 1.0, 2.0, -100.0]);
        let w = vec![0.5, 2.0, 1.0, 3.0];
        for red in [Reduction::Mean, Reduction::Sum] {
            check(&mut ClassNll::new().with_reduction(red), &x, &t);
            check(
                &mut ClassNll::new().with_weight(w.clone()).with_reduction(red),
                &x,
                &ti,
            );
            check(&mut CrossEntropy::new().with_reduction(red), &x, &t);
            check(
                &mut CrossEntropy::new()
                    .with_weight(w.clone())
                    .with_label_smoothing(0.2)
                    .with_reduction(red),
                &x,
                &ti,
            );
            check(
                &mut CrossEntropy::new()
                    .with_ignore_index(Some(2))
                    .with_label_smoothing(0.1),
                &x,
                &t,
            );
        }
        // Spatial: [N, C, d] with target [N, d].
        let xs = rand(&[2, 3, 4], 2, 2.0);
        let ts = targets(&[2, 4], &[0.0, 2.0, 1.0, -100.0, 2.0, 2.0, 0.0, 1.0]);
        check(
            &mut ClassNll::new().with_weight(vec![1.0, 0.2, 3.0]),
            &xs,
            &ts,
        );
        check(&mut CrossEntropy::new().with_label_smoothing(0.3), &xs, &ts);
    }

    #[test]
    fn pointwise_criterions_pass_gradcheck() {
        let x = rand(&[3, 4], 3, 1.0);
        let t = rand(&[3, 4], 4, 1.0);
        // Keep |x - t| away from the kinks of L1 and SmoothL1 (0 and beta).
        let x = ndarray::Zip::from(&x).and(&t).map_collect(|&a, &b| {
            let d: f64 = a - b;
            if d.abs() < 0.05 || (d.abs() - 0.5).abs() < 0.05 {
                a + 0.15
            } else {
                a
            }
        });
        for red in [Reduction::Mean, Reduction::Sum] {
            check(&mut Mse::new(red), &x, &t);
            check(&mut L1::new(red), &x, &t);
            check(&mut SmoothL1::new(red, 0.5).unwrap(), &x, &t);
            check(&mut SmoothL1::new(red, 0.0).unwrap(), &x, &t);
        }
        let p = rand(&[3, 4], 5, 0.4).mapv(|v| v + 0.5);
        let y = rand(&[3, 4], 6, 0.5).mapv(|v| v + 0.5);
        check(&mut Bce::new(Reduction::Mean), &p, &y);
        check(
            &mut Bce::new(Reduction::Sum).with_weight(rand(&[4], 7, 1.0).mapv(|v| v + 1.5)),
            &p,
            &y,
        );
        let lp = rand(&[3, 4], 8, 1.0).mapv(|v| v - 1.5);
        let q = rand(&[3, 4], 9, 0.5).mapv(|v| v + 0.5);
        for red in [KlReduction::Mean, KlReduction::Sum, KlReduction::BatchMean] {
            check(&mut KlDiv::new(red), &lp, &q);
        }
    }

    #[test]
    fn pointwise_values_match_pytorch_formulas() {
        let x = targets(&[4], &[0.0, 1.0, 2.0, -3.0]);
        let t = targets(&[4], &[0.5, 1.0, 0.0, 0.0]);
        assert_eq!(
            Criterion::<f64>::forward(&mut Mse::default(), &x, &t).unwrap(),
            (0.25 + 4.0 + 9.0) / 4.0
        );
        assert_eq!(
            Criterion::<f64>::forward(&mut L1::new(Reduction::Sum), &x, &t).unwrap(),
            5.5
        );
        // beta 1: 0.5·0.25, 0, 2 - 0.5, 3 - 0.5.
        let s = Criterion::<f64>::forward(&mut SmoothL1::default(), &x, &t).unwrap();
        assert!((s - (0.125 + 1.5 + 2.5) / 4.0).abs() < 1e-15);
        // BCE clamps log(0) at -100.
        let p = targets(&[2], &[0.0, 1.0]);
        let y = targets(&[2], &[1.0, 1.0]);
        assert_eq!(
            Criterion::<f64>::forward(&mut Bce::new(Reduction::Sum), &p, &y).unwrap(),
            100.0
        );
        // KL batchmean divides the sum by N.
        let lp = targets(&[2, 2], &[(0.5f64).ln(); 4]);
        let q = targets(&[2, 2], &[0.25, 0.75, 0.0, 1.0]);
        let kl_sum = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln() + (2.0f64).ln();
        let got =
            Criterion::<f64>::forward(&mut KlDiv::new(KlReduction::BatchMean), &lp, &q).unwrap();
        assert!((got - kl_sum / 2.0).abs() < 1e-15);
    }

    #[test]
    fn bad_shapes_and_targets_are_errors_naming_the_criterion() {
        let x = rand(&[3, 4], 1, 1.0);
        let err = ClassNll::new()
            .forward(&x, &targets(&[2], &[0.0, 1.0]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ClassNLL") && err.contains("[3, 4]") && err.contains("[2]"),
            "{err}"
        );
        let err = CrossEntropy::new()
            .forward(&x, &targets(&[3], &[0.0, 4.0, 1.0]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CrossEntropy") && err.contains("class index 4"),
            "{err}"
        );
        let err = ClassNll::new()
            .forward(&x, &targets(&[3], &[0.0, 1.5, 1.0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1.5"), "{err}");
        let err = ClassNll::new()
            .with_weight(vec![1.0; 3])
            .forward(&x, &targets(&[3], &[0.0; 3]))
            .unwrap_err();
        assert!(err.to_string().contains("class weights"), "{err}");
        let err = Criterion::<f64>::forward(&mut Mse::default(), &x, &rand(&[4, 3], 2, 1.0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MSE") && err.contains("[3, 4]") && err.contains("[4, 3]"),
            "{err}"
        );
        let p = targets(&[2], &[0.5, 1.5]);
        assert!(Bce::new(Reduction::Mean)
            .forward(&p, &targets(&[2], &[0.0, 1.0]))
            .is_err());
        assert!(Bce::new(Reduction::Mean)
            .with_weight(rand(&[3], 1, 1.0))
            .forward(&targets(&[2], &[0.5; 2]), &targets(&[2], &[0.0; 2]))
            .is_err());
        assert!(SmoothL1::new(Reduction::Mean, -1.0).is_err());
        assert!(CrossEntropy::new()
            .with_label_smoothing(1.5)
            .forward(&x, &targets(&[3], &[0.0; 3]))
            .is_err());
        let err = KlDiv::default()
            .forward(&x, &x.mapv(|v| v - 5.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KLDiv"), "{err}");
        // Every target ignored: NaN mean, as PyTorch.
        let all = ClassNll::new()
            .forward(&x, &targets(&[3], &[-100.0; 3]))
            .unwrap();
        assert!(all.is_nan());
    }
}
