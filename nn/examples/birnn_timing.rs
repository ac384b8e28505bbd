//! Times forward + backward of a stack of bidirectional GRU layers (DS2's
//! recurrent part): `cargo run --release -p kiln-nn --example birnn_timing
//! -- [T] [N] [F] [H] [layers]` (defaults 100 16 1312 256 3).

use std::time::Instant;

use kiln_nn::layers::{BiRecurrent, BiRecurrentConfig, MergeMode, RecurrentConfig, SequenceModule};
use kiln_nn::{init, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn main() -> kiln_nn::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (t, n, f, h, layers) = (
        arg(0, 100),
        arg(1, 16),
        arg(2, 1312),
        arg(3, 256),
        arg(4, 3),
    );
    let mut rng = StdRng::seed_from_u64(0);
    let mut stack: Vec<BiRecurrent<f32>> = (0..layers)
        .map(|i| {
            let input = if i == 0 { f } else { h };
            BiRecurrentConfig::new(RecurrentConfig::gru(input, h), MergeMode::Sum).init(&mut rng)
        })
        .collect::<kiln_nn::Result<_>>()?;
    let x: Tensor<f32> = init::uniform(&mut rng, &[t, n, f], 1.0);
    let lengths: Vec<usize> = (0..n).map(|i| t - i * t / (2 * n)).collect();
    for rep in 0..4 {
        let start = Instant::now();
        let mut inputs = vec![x.clone()];
        for l in &mut stack {
            let y = l.forward_with_lengths(&inputs[inputs.len() - 1], &lengths)?;
            inputs.push(y);
        }
        let fwd = start.elapsed();
        let mut g = Tensor::<f32>::ones(inputs[layers].raw_dim());
        for (i, l) in stack.iter_mut().enumerate().rev() {
            g = l.backward_with_lengths(&inputs[i], &lengths, &g)?;
        }
        println!(
            "rep {rep}: T={t} N={n} F={f} H={h} x{layers} bi-GRU: forward {:.1} ms, forward+backward {:.1} ms",
            fwd.as_secs_f64() * 1e3,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
