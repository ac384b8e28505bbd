//! BLAS backend (OpenBLAS or MKL) through the cblas interface.
#![allow(unsafe_code)]

use std::any::TypeId;

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::tensor::Float;

#[cfg(feature = "mkl")]
extern crate intel_mkl_src as _;

/// A BLAS-compatible operand: unit stride in one dimension.
struct Operand<'a, F> {
    view: ArrayView2<'a, F>,
    trans: cblas_sys::CBLAS_TRANSPOSE,
    ld: i32,
}

/// Describes a view as a row-major operand (possibly transposed), copying
/// it to standard layout when neither dimension has unit stride.
fn operand<'a, F: Float>(v: ArrayView2<'a, F>, owned: &'a mut Option<Array2<F>>) -> Operand<'a, F> {
    let (rows, cols) = v.dim();
    let [rs, cs] = [v.strides()[0], v.strides()[1]];
    if cs == 1 && rs >= cols.max(1) as isize {
        return Operand {
            view: v,
            trans: cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
            ld: rs as i32,
        };
    }
    if rs == 1 && cs >= rows.max(1) as isize {
        return Operand {
            view: v,
            trans: cblas_sys::CBLAS_TRANSPOSE::CblasTrans,
            ld: cs as i32,
        };
    }
    let copy = owned.insert(v.as_standard_layout().into_owned());
    Operand {
        view: copy.view(),
        trans: cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
        ld: cols.max(1) as i32,
    }
}

/// MKL is linked sequential (no OpenMP runtime to ship), so with several
/// threads the rows of the output are split across rayon tasks. OpenBLAS
/// threads itself (OPENBLAS_NUM_THREADS) and is called once.
pub(super) fn gemm<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
    threads: usize,
) {
    let m = a.nrows();
    if cfg!(feature = "mkl") && threads > 1 && m >= 2 * threads {
        let rows = m.div_ceil(threads);
        let a_parts: Vec<_> = a.axis_chunks_iter(ndarray::Axis(0), rows).collect();
        let c_parts: Vec<_> = c.axis_chunks_iter_mut(ndarray::Axis(0), rows).collect();
        rayon::scope(|s| {
            for (ap, mut cp) in a_parts.into_iter().zip(c_parts) {
                s.spawn(move |_| gemm_once(alpha, ap, b, beta, &mut cp));
            }
        });
        return;
    }
    gemm_once(alpha, a, b, beta, c);
}

fn gemm_once<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let (mut ao, mut bo) = (None, None);
    let a = operand(a, &mut ao);
    let b = operand(b, &mut bo);
    let c_ok = c.strides()[1] == 1 && c.strides()[0] >= n.max(1) as isize;
    let mut c_tmp = if c_ok {
        None
    } else {
        Some(c.view().as_standard_layout().into_owned())
    };
    let (c_ptr, ldc) = match c_tmp.as_mut() {
        Some(t) => (t.as_mut_ptr(), n.max(1) as i32),
        None => (c.as_mut_ptr(), c.strides()[0] as i32),
    };
    let layout = cblas_sys::CBLAS_LAYOUT::CblasRowMajor;
    // SAFETY: operands are row-major (or transposed row-major) views with
    // leading dimensions taken from their own strides, shapes checked by the
    // caller; the output pointer is either the caller's exclusively borrowed
    // row-major view or our own temporary. F is f32 or f64 (checked by
    // TypeId), so the pointer casts are to the same type.
    unsafe {
        if TypeId::of::<F>() == TypeId::of::<f32>() {
            cblas_sys::cblas_sgemm(
                layout,
                a.trans,
                b.trans,
                m as i32,
                n as i32,
                k as i32,
                alpha.as_f64() as f32,
                a.view.as_ptr() as *const f32,
                a.ld,
                b.view.as_ptr() as *const f32,
                b.ld,
                beta.as_f64() as f32,
                c_ptr as *mut f32,
                ldc,
            );
        } else {
            cblas_sys::cblas_dgemm(
                layout,
                a.trans,
                b.trans,
                m as i32,
                n as i32,
                k as i32,
                alpha.as_f64(),
                a.view.as_ptr() as *const f64,
                a.ld,
                b.view.as_ptr() as *const f64,
                b.ld,
                beta.as_f64(),
                c_ptr as *mut f64,
                ldc,
            );
        }
    }
    if let Some(t) = c_tmp {
        c.assign(&t);
    }
}
