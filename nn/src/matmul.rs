//! Matrix multiply: the one place every dense layer's arithmetic goes
//! through. The backend is chosen by cargo feature; the API never changes.
//!
//! - default: the pure-Rust `gemm` crate (runtime CPU detection, AVX2/FMA
//!   kernels, rayon threads). It was measured against `matrixmultiply` (what
//!   ndarray's own `dot` uses) on this project's machine and is faster at
//!   every size; see BENCHMARKS.md and `benches/benchmarks/matmul.rs`.
//! - `openblas`: cblas `sgemm`/`dgemm` from a system OpenBLAS.
//! - `mkl`: cblas from Intel MKL (see README for supplying MKL).
//!
//! Threading: a call made from outside the rayon pool uses all of its
//! threads when the product is big enough to pay for them; a call made from
//! inside a rayon task (e.g. a batch-parallel convolution) runs on that one
//! thread, so nested parallelism never oversubscribes the cores.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::error::{Error, Result};
use crate::tensor::Float;

#[cfg(any(feature = "openblas", feature = "mkl"))]
mod cblas;
#[cfg(not(any(feature = "openblas", feature = "mkl")))]
mod gemm_crate;

/// How many threads a matrix multiply may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Decide from the call site and the problem size (the default).
    Auto,
    /// Run on the calling thread only.
    Single,
    /// Use up to this many rayon threads.
    Count(usize),
}

/// Products with fewer multiply-adds than this run single-threaded under
/// [`Threads::Auto`]: below it, waking a second thread costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 48 * 48 * 48;

/// The name of the backend compiled in (for logs and benchmark reports).
pub fn backend_name() -> &'static str {
    if cfg!(feature = "mkl") {
        "mkl"
    } else if cfg!(feature = "openblas") {
        "openblas"
    } else {
        "gemm (pure Rust)"
    }
}

fn resolve_threads(threads: Threads, m: usize, n: usize, k: usize) -> usize {
    match threads {
        Threads::Single => 1,
        Threads::Count(c) => c.max(1),
        Threads::Auto => {
            if rayon::current_thread_index().is_some()
                || m.saturating_mul(n).saturating_mul(k) < PARALLEL_MIN_FLOPS
            {
                1
            } else {
                rayon::current_num_threads()
            }
        }
    }
}

/// `c = alpha * a · b + beta * c` for 2-D views of any strides (pass
/// `a.t()` for a transposed operand; no copy is made by the default backend).
pub fn gemm<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) -> Result<()> {
    gemm_threads(alpha, a, b, beta, c, Threads::Auto)
}

/// [`gemm`] with an explicit thread policy.
pub fn gemm_threads<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
    threads: Threads,
) -> Result<()> {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    if k != k2 || c.dim() != (m, n) {
        return Err(Error::ShapeMismatch {
            op: format!("matmul (output {:?})", c.shape()),
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.mapv_inplace(|v| v * beta);
        return Ok(());
    }
    let t = resolve_threads(threads, m, n, k);
    #[cfg(any(feature = "openblas", feature = "mkl"))]
    cblas::gemm(alpha, a, b, beta, c, t);
    #[cfg(not(any(feature = "openblas", feature = "mkl")))]
    gemm_crate::gemm(alpha, a, b, beta, c, t);
    Ok(())
}

/// Returns `a · b` as a new matrix.
pub fn matmul<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Result<Array2<F>> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(F::one(), a, b, F::zero(), &mut c.view_mut())?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn naive(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
        let (m, k) = a.dim();
        let n = b.ncols();
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[[i, p]] * b[[p, j]]).sum())
    }

    fn random(rng: &mut StdRng, r: usize, c: usize) -> Array2<f64> {
        Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0..1.0))
    }

    #[test]
    fn matches_naive_product_for_all_transpositions_and_sizes() {
        let mut rng = StdRng::seed_from_u64(7);
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 2),
            (17, 33, 9),
            (64, 64, 64),
            (130, 70, 129),
        ] {
            let a = random(&mut rng, m, k);
            let b = random(&mut rng, k, n);
            let want = naive(&a, &b);
            // plain
            let got = matmul(a.view(), b.view()).unwrap();
            assert!((&got - &want).iter().all(|d| d.abs() < 1e-9), "{m}x{k}x{n}");
            // transposed operands through views of transposed storage
            let at = a.t().to_owned();
            let bt = b.t().to_owned();
            let got = matmul(at.t(), bt.t()).unwrap();
            assert!((&got - &want).iter().all(|d| d.abs() < 1e-9));
            // alpha/beta accumulate
            let mut c = Array2::from_elem((m, n), 1.0);
            gemm(2.0, a.view(), b.view(), 0.5, &mut c.view_mut()).unwrap();
            let want2 = want.mapv(|v| 2.0 * v + 0.5);
            assert!((&c - &want2).iter().all(|d| d.abs() < 1e-9));
            // transposed output
            let mut ct = Array2::<f64>::zeros((n, m));
            gemm(
                1.0,
                a.view(),
                b.view(),
                0.0,
                &mut ct.view_mut().reversed_axes(),
            )
            .unwrap();
            assert!((&ct.t() - &want).iter().all(|d| d.abs() < 1e-9));
        }
    }

    #[test]
    fn f32_and_threads_agree() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = random(&mut rng, 200, 150).mapv(|v| v as f32);
        let b = random(&mut rng, 150, 120).mapv(|v| v as f32);
        let mut c1 = Array2::<f32>::zeros((200, 120));
        let mut c2 = Array2::<f32>::zeros((200, 120));
        gemm_threads(
            1.0,
            a.view(),
            b.view(),
            0.0,
            &mut c1.view_mut(),
            Threads::Single,
        )
        .unwrap();
        gemm_threads(
            1.0,
            a.view(),
            b.view(),
            0.0,
            &mut c2.view_mut(),
            Threads::Count(2),
        )
        .unwrap();
        assert!((&c1 - &c2).iter().all(|d| d.abs() < 1e-4));
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let a = Array2::<f32>::zeros((3, 4));
        let b = Array2::<f32>::zeros((5, 2));
        let err = matmul(a.view(), b.view()).unwrap_err().to_string();
        assert!(err.contains("[3, 4]") && err.contains("[5, 2]"), "{err}");
    }
}
