//! CTC forward+backward timing at the anchor's size (T=200, N=8, C=29,
//! L=30, f32); ignored by default: `cargo test -p kiln-nn --test
//! ctc_timing_tests -- --ignored --nocapture`.

use kiln_nn::criterion::ctc::CtcLoss;
use kiln_nn::tensor::from_vec;

#[test]
#[ignore]
fn ctc_timing_t200_n8() {
    let (t, n, c, l) = (200, 8, 29, 30);
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    };
    let logits = from_vec(
        &[t, n, c],
        (0..t * n * c).map(|_| rnd() * 4.0 - 2.0).collect(),
    )
    .unwrap();
    let targets: Vec<Vec<usize>> = (0..n)
        .map(|_| (0..l).map(|_| 1 + (rnd() * 28.0) as usize % 28).collect())
        .collect();
    let lens = vec![t; n];
    let ctc = CtcLoss::default();
    for (name, with_softmax) in [("log-probs", false), ("fused logits", true)] {
        let mut times = Vec::new();
        for _ in 0..25 {
            let start = std::time::Instant::now();
            if with_softmax {
                ctc.loss_and_grad_logits(&logits, &targets, &lens).unwrap();
            } else {
                ctc.loss_and_grad_log_probs(&logits, &targets, &lens)
                    .unwrap();
            }
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "CTC fwd+bwd T=200 N=8 C=29 L=30 ({name}): median {:.3} ms",
            times[12]
        );
    }
}
