//! sgemm GFLOP/s: kiln's matmul (default backend) against `matrixmultiply`
//! (what ndarray's own `dot` uses), square sizes 256..2048.

use kiln_nn::matmul::{gemm_threads, Threads};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::timing::time_it;

pub(crate) fn run(threads: usize) {
    let mut rng = StdRng::seed_from_u64(0);
    for n in [256usize, 512, 1024, 2048] {
        let a = Array2::<f32>::from_shape_simple_fn((n, n), || rng.random_range(-1.0..1.0));
        let b = Array2::<f32>::from_shape_simple_fn((n, n), || rng.random_range(-1.0..1.0));
        let mut c = Array2::<f32>::zeros((n, n));
        let flop = 2.0 * (n as f64).powi(3);
        let t = time_it(
            || {
                let _ = gemm_threads(
                    1.0,
                    a.view(),
                    b.view(),
                    0.0,
                    &mut c.view_mut(),
                    Threads::Count(threads),
                );
            },
            5,
        );
        println!(
            "{{\"bench\":\"sgemm\",\"impl\":\"kiln ({})\",\"threads\":{threads},\"n\":{n},\"median_s\":{:.6},\"gflops\":{:.2},\"bg_pct\":{:.1}}}",
            kiln_nn::matmul::backend_name(),
            t.median_s,
            flop / t.median_s / 1e9,
            t.bg_pct
        );
        let t = time_it(
            || {
                // matrixmultiply, as ndarray's dot without BLAS calls it; threads from MATMUL_NUM_THREADS.
                ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut c);
            },
            5,
        );
        println!(
            "{{\"bench\":\"sgemm\",\"impl\":\"matrixmultiply\",\"threads\":{threads},\"n\":{n},\"median_s\":{:.6},\"gflops\":{:.2},\"bg_pct\":{:.1}}}",
            t.median_s,
            flop / t.median_s / 1e9,
            t.bg_pct
        );
    }
}
