//! CTC loss alone, as ../shared/anchors/ctc.py: T=200 (and 100, DS2's output
//! length), batch 8, 29 symbols (blank 0), 30 labels per sample, f32,
//! forward + gradient w.r.t. the log-probs (mean reduction), and forward only.

use kiln_nn::criterion::CtcLoss;
use kiln_nn::layers::LogSoftMax;
use kiln_nn::{Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::timing::time_n;

const N: usize = 8;
const C: usize = 29;
const L: usize = 30;

fn one(t_len: usize, threads: usize, tries: usize) {
    let mut rng = StdRng::seed_from_u64(0);
    let logits = kiln_nn::init::normal::<f32>(&mut rng, &[t_len, N, C], 0.0, 1.0);
    let lp: Tensor<f32> = LogSoftMax::new(-1)
        .forward(&logits)
        .expect("log_softmax of (T, N, C)");
    let targets: Vec<Vec<usize>> = (0..N)
        .map(|_| (0..L).map(|_| rng.random_range(1..C)).collect())
        .collect();
    let lens = vec![t_len; N];
    let ctc = CtcLoss::new(0);
    let fb = time_n(
        || {
            let _ = ctc.loss_and_grad_log_probs(&lp, &targets, &lens);
        },
        5,
        20,
        tries,
    );
    let fused = time_n(
        || {
            let _ = ctc.loss_and_grad_logits(&logits, &targets, &lens);
        },
        5,
        20,
        tries,
    );
    let fwd = time_n(
        || {
            let _ = ctc.forward(&lp, &targets, &lens);
        },
        5,
        20,
        tries,
    );
    println!(
        "{{\"bench\":\"ctc\",\"impl\":\"kiln\",\"threads\":{threads},\"T\":{t_len},\"N\":{N},\"C\":{C},\"L\":{L},\"fwd_bwd_ms\":{:.4},\"fwd_bwd_min_ms\":{:.4},\"with_log_softmax_ms\":{:.4},\"fwd_ms\":{:.4},\"bg_pct\":{:.1}}}",
        fb.median_s * 1e3,
        fb.min_s * 1e3,
        fused.median_s * 1e3,
        fwd.median_s * 1e3,
        fb.bg_pct.max(fused.bg_pct).max(fwd.bg_pct)
    );
}

/// CTC at T = 200 and T = 100.
pub(crate) fn run(threads: usize, tries: usize) {
    one(200, threads, tries);
    one(100, threads, tries);
}
