//! Per-layer forward/backward timing of LeNet-5 (the digits job's model) on
//! one thread, as a one-thread `kiln local` executor runs it (inside its
//! rayon pool, the first layer's input gradient skipped):
//! `cargo run --release -p kiln-nn --example lenet_layers -- [batch]`
//! (default 64, the share of each of 2 executors of a batch of 128).
//! Prints each layer's best time over 200 steps and the median step.

use kiln_nn::init;
use kiln_nn::layers::{Conv2dConfig, Flatten, LinearConfig, LogSoftMax, Pool2dConfig, Tanh};
use kiln_nn::{Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

fn main() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
}

fn run() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut rng = StdRng::seed_from_u64(0);
    let mut layers: Vec<Box<dyn Module<f32>>> = vec![
        Box::new(
            Conv2dConfig::new(1, 6, [5, 5])
                .init::<f32>(&mut rng)
                .unwrap(),
        ),
        Box::new(Tanh::default()),
        Box::new(Pool2dConfig::new([2, 2]).init().unwrap()),
        Box::new(
            Conv2dConfig::new(6, 16, [5, 5])
                .init::<f32>(&mut rng)
                .unwrap(),
        ),
        Box::new(Tanh::default()),
        Box::new(Pool2dConfig::new([2, 2]).init().unwrap()),
        Box::new(Flatten::new(1)),
        Box::new(LinearConfig::new(256, 120).init::<f32>(&mut rng).unwrap()),
        Box::new(Tanh::default()),
        Box::new(LinearConfig::new(120, 84).init::<f32>(&mut rng).unwrap()),
        Box::new(Tanh::default()),
        Box::new(LinearConfig::new(84, 10).init::<f32>(&mut rng).unwrap()),
        Box::new(LogSoftMax::new(1)),
    ];
    let x: Tensor<f32> = init::uniform(&mut rng, &[batch, 1, 28, 28], 1.0);
    let gy: Tensor<f32> = init::uniform(&mut rng, &[batch, 10], 0.01);
    let n = layers.len();
    let mut fwd = vec![f64::MAX; n];
    let mut bwd = vec![f64::MAX; n];
    let mut total = f64::MAX;
    let mut totals = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        let mut acts = vec![x.clone()];
        for (i, l) in layers.iter_mut().enumerate() {
            let t = Instant::now();
            let y = l.forward(acts.last().unwrap()).unwrap();
            fwd[i] = fwd[i].min(t.elapsed().as_secs_f64());
            acts.push(y);
        }
        let mut g = gy.clone();
        for i in (0..n).rev() {
            let t = Instant::now();
            if i == 0 {
                layers[i].backward_params(&acts[i], &g).unwrap();
            } else {
                g = layers[i].backward(&acts[i], &g).unwrap();
            }
            bwd[i] = bwd[i].min(t.elapsed().as_secs_f64());
        }
        total = total.min(t0.elapsed().as_secs_f64());
        totals.push(t0.elapsed().as_secs_f64());
    }
    for i in 0..n {
        println!(
            "{:<28} fwd {:7.3} ms  bwd {:7.3} ms",
            layers[i].name(),
            fwd[i] * 1e3,
            bwd[i] * 1e3
        );
    }
    totals.sort_by(f64::total_cmp);
    println!("median total {:.3} ms", totals[totals.len() / 2] * 1e3);
    println!(
        "sum of bests fwd {:.3} bwd {:.3}; best total {:.3} ms",
        fwd.iter().sum::<f64>() * 1e3,
        bwd.iter().sum::<f64>() * 1e3,
        total * 1e3
    );
}
