//! Timing of one optimizer step over a large parameter shard, as an
//! executor hosting a shard of the parameter-sync benchmark runs it: the
//! gradient is the scaled sum of two partitions' slices, built either as a
//! whole buffer in separate passes (zero, add, add, scale) before `step`, or
//! chunk by chunk inside `step_chunked`.
//! `cargo run --release -p kiln-nn --example optimizer_step -- [Mi values] [momentum]`
//! (defaults 32 Mi values, the 128 MB shard of the 256 MB sync row, and
//! momentum 0). Prints the best of 5 steps of each, and of `step` alone.

use kiln_nn::optim::{Optimizer, SgdConfig};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let n = args.next().and_then(|s| s.parse().ok()).unwrap_or(32usize) << 20;
    let momentum: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let config = SgdConfig {
        lr: 0.01,
        momentum,
        ..SgdConfig::default()
    };
    let slices: Vec<Vec<f32>> = (0..2)
        .map(|k| (0..n).map(|i| ((i + k) % 7) as f32 * 0.1 - 0.3).collect())
        .collect();
    let scale = 0.5f32;
    let mut params = vec![0.5f32; n];
    let mut whole = config.build::<f32>().expect("a valid SGD configuration");
    let mut chunked = config.build::<f32>().expect("a valid SGD configuration");
    let mut acc = vec![0.0f32; n];
    let best = |times: &[Duration]| times.iter().min().copied().unwrap_or_default();
    let (mut t_whole, mut t_chunked, mut t_step) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        acc.fill(0.0);
        for s in &slices {
            for (a, x) in acc.iter_mut().zip(s) {
                *a += x;
            }
        }
        for a in &mut acc {
            *a *= scale;
        }
        whole.step(&mut params, &acc).expect("same length");
        t_whole.push(t.elapsed());

        let t = Instant::now();
        chunked
            .step_chunked(&mut params, &mut |offset, out| {
                let len = out.len();
                out.fill(0.0);
                for s in &slices {
                    for (a, x) in out.iter_mut().zip(&s[offset..offset + len]) {
                        *a += x;
                    }
                }
                for a in out.iter_mut() {
                    *a *= scale;
                }
            })
            .expect("same length");
        t_chunked.push(t.elapsed());

        let t = Instant::now();
        whole.step(&mut params, &acc).expect("same length");
        t_step.push(t.elapsed());
    }
    println!(
        "SGD (momentum {momentum}) over {} Mi values: whole-buffer sum + step {:?}, chunked {:?}, step alone {:?}",
        n >> 20,
        best(&t_whole),
        best(&t_chunked),
        best(&t_step)
    );
}
