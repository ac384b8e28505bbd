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
mod kl_div;
mod l1;
mod mse;
mod smooth_l1;

pub use bce::Bce;
pub use class_nll::ClassNll;
pub use cross_entropy::CrossEntropy;
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
pub(crate) fn check_weights<F: Float>(op: &str, weight: Option<&[F]>, classes: usize) -> Result<()> {
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
