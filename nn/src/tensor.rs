//! Tensors: n-dimensional ndarray arrays over a [`Float`] element type, and
//! the small helpers every layer uses to check and reshape them.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{ArrayD, IxDyn, LinalgScalar, ScalarOperand};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A dynamically-shaped tensor.
pub type Tensor<F> = ArrayD<F>;

/// Element types a model can be computed in: `f32` for training and
/// inference, `f64` for finite-difference gradient checks.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + LinalgScalar
    + ScalarOperand
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + serde::Serialize
    + for<'de> serde::Deserialize<'de>
    + 'static
{
    /// The safetensors dtype of this element type.
    const DTYPE: safetensors::Dtype;
    /// Converts from `f64` (rounding for `f32`).
    fn of(v: f64) -> Self;
    /// Converts to `f64`.
    fn as_f64(self) -> f64;
    /// Converts from `usize`.
    fn of_usize(v: usize) -> Self {
        Self::of(v as f64)
    }
    /// Little-endian bytes of a slice (safetensors layout).
    fn to_le_bytes_vec(values: &[Self]) -> Vec<u8>;
    /// Parses little-endian bytes; `None` if the length is not a multiple of the size.
    fn from_le_bytes_vec(bytes: &[u8]) -> Option<Vec<Self>>;
    /// `tanh(self)`, through a branch-free approximation that vectorises
    /// where that keeps the type's precision (f32); exact libm otherwise.
    fn fast_tanh(self) -> Self {
        self.tanh()
    }
    /// `dst[i] = src[i].fast_tanh()` over the shorter slice; f32 runs the
    /// loop at the CPU's widest vector width (same bits).
    fn fast_tanh_slice(src: &[Self], dst: &mut [Self]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x.fast_tanh();
        }
    }
    /// The slice as `f32`s when `Self` is `f32` (kernels written for one
    /// type only), else `None`.
    fn as_f32(_s: &[Self]) -> Option<&[f32]> {
        None
    }
    /// [`Float::as_f32`] for a mutable slice.
    fn as_f32_mut(_s: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    /// `dst[i] = g[i] * (1 - y[i]^2)`, tanh's backward pass from its output,
    /// over the shortest slice; f32 as [`Float::fast_tanh_slice`].
    fn tanh_grad_slice(y: &[Self], g: &[Self], dst: &mut [Self]) {
        for ((d, &y), &g) in dst.iter_mut().zip(y).zip(g) {
            *d = g * (Self::one() - y * y);
        }
    }
}

impl Float for f32 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    /// Eigen's rational approximation (`generic_fast_tanh_float`): a 13/6
    /// odd/even polynomial ratio on x clamped to ±7.905, accurate to a few
    /// ulp, with no branches, so loops over slices vectorise (libm's
    /// `tanhf` took a third of a LeNet-5 step). Plain multiply-adds, not
    /// `mul_add`: without the `fma` target feature (the default x86-64
    /// build) `mul_add` is a call into libm's `fmaf` per term, which stops
    /// the loop from vectorising.
    #[inline]
    fn fast_tanh(self) -> Self {
        const CLAMP: f32 = 7.905_311;
        let x = self.clamp(-CLAMP, CLAMP);
        let x2 = x * x;
        let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
        p = x2 * p + -8.604_672e-11;
        p = x2 * p + 5.122_297e-8;
        p = x2 * p + 1.485_722_4e-5;
        p = x2 * p + 6.372_619e-4;
        p = x2 * p + 4.893_524_6e-3;
        p *= x;
        let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
        q = x2 * q + 2.268_434_6e-3;
        q = x2 * q + 4.893_525e-3;
        let y = p / q;
        if self.is_nan() {
            self
        } else {
            y
        }
    }
    fn fast_tanh_slice(src: &[Self], dst: &mut [Self]) {
        crate::simd::tanh(src, dst)
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn tanh_grad_slice(y: &[Self], g: &[Self], dst: &mut [Self]) {
        crate::simd::tanh_grad(y, g, dst)
    }
    fn of(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn to_le_bytes_vec(values: &[Self]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(bytes: &[u8]) -> Option<Vec<Self>> {
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

impl Float for f64 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    fn of(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn to_le_bytes_vec(values: &[Self]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(bytes: &[u8]) -> Option<Vec<Self>> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        )
    }
}

/// Checks that `t` has exactly `ndim` dimensions; `expected` describes the
/// layout for the error message (e.g. `"[N, C, H, W]"`).
pub fn expect_ndim<F>(op: &str, t: &Tensor<F>, ndim: usize, expected: &str) -> Result<()> {
    if t.ndim() != ndim {
        return Err(Error::shape(op, expected, t.shape()));
    }
    Ok(())
}

/// Checks that `a` and `b` have identical shapes.
pub fn expect_same_shape<F>(op: &str, a: &Tensor<F>, b: &Tensor<F>) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op: op.to_string(),
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    Ok(())
}

/// A zero tensor of the given shape.
pub fn zeros<F: Float>(shape: &[usize]) -> Tensor<F> {
    ArrayD::zeros(IxDyn(shape))
}

/// Builds a tensor from a shape and row-major data, checking the length.
pub fn from_vec<F: Float>(shape: &[usize], data: Vec<F>) -> Result<Tensor<F>> {
    let n = data.len();
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|_| Error::invalid("tensor", format!("{n} values do not fill shape {shape:?}")))
}

/// Returns a standard-layout (row-major, contiguous) copy of `t` reshaped to
/// `shape`, or an error naming `op` when the element counts differ.
pub fn reshape<F: Float>(op: &str, t: &Tensor<F>, shape: &[usize]) -> Result<Tensor<F>> {
    let count: usize = shape.iter().product();
    if count != t.len() {
        return Err(Error::shape(
            op,
            format!("{count} elements to reshape into {shape:?}"),
            t.shape(),
        ));
    }
    let data: Vec<F> = match t.as_slice() {
        Some(s) => s.to_vec(),
        None => {
            // A strided view (e.g. permuted axes): `assign` copies lane by
            // lane through `Zip`, several times faster than one element at
            // a time through the view's index iterator.
            let mut dense = Tensor::<F>::zeros(t.raw_dim());
            dense.assign(t);
            dense.into_raw_vec_and_offset().0
        }
    };
    from_vec(shape, data)
}

/// Converts a tensor between element types (used by gradient checks and
/// when loading f32 weights into an f64 model).
pub fn cast<A: Float, B: Float>(t: &Tensor<A>) -> Tensor<B> {
    t.mapv(|v| B::of(v.as_f64()))
}

/// Reads a class index stored as a float, checking it is a whole number in `0..classes`.
pub fn class_index<F: Float>(op: &str, v: F, classes: usize) -> Result<usize> {
    let f = v.as_f64();
    if !(f >= 0.0 && f.fract() == 0.0 && (f as usize) < classes) {
        return Err(Error::invalid(
            op,
            format!("class index {f} is not an integer in 0..{classes}"),
        ));
    }
    Ok(f as usize)
}

/// Element counts below which elementwise work stays on the calling thread.
pub const PAR_MIN_LEN: usize = 1 << 15;

/// `f` applied to every element, in parallel for large tensors.
pub fn par_map<F: Float>(t: &Tensor<F>, f: impl Fn(F) -> F + Sync + Send) -> Tensor<F> {
    if t.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
        let mut out = Tensor::zeros(t.raw_dim());
        ndarray::Zip::from(&mut out)
            .and(t)
            .par_for_each(|o, &x| *o = f(x));
        out
    } else {
        t.mapv(f)
    }
}

/// Rayon chunk length for slice kernels over large tensors (a multiple of
/// every vector width).
const PAR_CHUNK: usize = 1 << 14;

/// A tensor of `t`'s shape whose elements `kernel(src, dst)` writes from
/// `t`'s (in row-major order), chunk by chunk over the rayon pool for large
/// tensors.
pub fn par_map_slices<F: Float>(
    t: &Tensor<F>,
    kernel: impl Fn(&[F], &mut [F]) + Sync + Send,
) -> Tensor<F> {
    let src = t.as_standard_layout();
    let mut out = Tensor::zeros(t.raw_dim());
    if let (Some(s), Some(d)) = (src.as_slice(), out.as_slice_mut()) {
        if s.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
            d.par_chunks_mut(PAR_CHUNK)
                .zip(s.par_chunks(PAR_CHUNK))
                .for_each(|(d, s)| kernel(s, d));
        } else {
            kernel(s, d);
        }
    }
    out
}

/// `kernel(a, b, dst)` over two same-shaped tensors' elements (row-major)
/// into a new tensor, chunk by chunk over the rayon pool for large tensors.
pub fn par_zip_slices<F: Float>(
    op: &str,
    a: &Tensor<F>,
    b: &Tensor<F>,
    kernel: impl Fn(&[F], &[F], &mut [F]) + Sync + Send,
) -> Result<Tensor<F>> {
    expect_same_shape(op, a, b)?;
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    let mut out = Tensor::zeros(a.raw_dim());
    if let (Some(x), Some(y), Some(d)) = (a.as_slice(), b.as_slice(), out.as_slice_mut()) {
        if d.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
            d.par_chunks_mut(PAR_CHUNK)
                .zip(x.par_chunks(PAR_CHUNK))
                .zip(y.par_chunks(PAR_CHUNK))
                .for_each(|((d, x), y)| kernel(x, y, d));
        } else {
            kernel(x, y, d);
        }
    }
    Ok(out)
}

/// Replaces every element `x` of `t` by `f(x)`, in parallel for large tensors.
pub fn par_map_inplace<F: Float>(t: &mut Tensor<F>, f: impl Fn(F) -> F + Sync + Send) {
    if t.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
        ndarray::Zip::from(t).par_for_each(|x| *x = f(*x));
    } else {
        t.mapv_inplace(f);
    }
}

/// `f(a, b)` for every pair of elements of two same-shaped tensors, in
/// parallel for large tensors.
pub fn par_zip_map<F: Float>(
    op: &str,
    a: &Tensor<F>,
    b: &Tensor<F>,
    f: impl Fn(F, F) -> F + Sync + Send,
) -> Result<Tensor<F>> {
    expect_same_shape(op, a, b)?;
    let mut out = Tensor::zeros(a.raw_dim());
    if a.len() >= PAR_MIN_LEN && rayon::current_thread_index().is_none() {
        ndarray::Zip::from(&mut out)
            .and(a)
            .and(b)
            .par_for_each(|o, &x, &y| *o = f(x, y));
    } else {
        ndarray::Zip::from(&mut out)
            .and(a)
            .and(b)
            .for_each(|o, &x, &y| *o = f(x, y));
    }
    Ok(out)
}

/// Resolves a possibly negative dimension index against `ndim`.
pub fn resolve_dim(op: &str, dim: isize, shape: &[usize]) -> Result<usize> {
    let nd = shape.len() as isize;
    let d = if dim < 0 { dim + nd } else { dim };
    if d < 0 || d >= nd {
        return Err(Error::shape(
            op,
            format!("a tensor with dimension {dim}"),
            shape,
        ));
    }
    Ok(d as usize)
}

/// A 2-D view of `t`, or a shape error naming `op`.
pub fn view2<'a, F: Float>(op: &str, t: &'a Tensor<F>) -> Result<ndarray::ArrayView2<'a, F>> {
    t.view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| Error::shape(op, "a 2-D tensor", t.shape()))
}

/// A mutable 2-D view of `t`, or a shape error naming `op`.
pub fn view2_mut<'a, F: Float>(
    op: &str,
    t: &'a mut Tensor<F>,
) -> Result<ndarray::ArrayViewMut2<'a, F>> {
    let shape = t.shape().to_vec();
    t.view_mut()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| Error::shape(op, "a 2-D tensor", &shape))
}
