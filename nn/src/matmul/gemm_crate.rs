//! Default backend: the pure-Rust `gemm` crate.
#![allow(unsafe_code)]

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::tensor::Float;

pub(super) fn gemm<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
    threads: usize,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let [a_rs, a_cs] = [a.strides()[0], a.strides()[1]];
    let [b_rs, b_cs] = [b.strides()[0], b.strides()[1]];
    let [c_rs, c_cs] = [c.strides()[0], c.strides()[1]];
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let read_dst = beta != F::zero();
    // SAFETY: the pointers and strides come from live ndarray views whose
    // shapes were checked by the caller: `a` is m x k, `b` is k x n and `c`
    // is m x n, so every offset row*rs + col*cs the kernel forms stays
    // inside its view. `c` is borrowed mutably and cannot alias `a` or `b`.
    // The gemm crate computes dst = alpha_dst * dst + beta_prod * lhs * rhs,
    // hence the swapped scalar order; it dispatches on F's TypeId (f32/f64).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            read_dst,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}
