//! kiln-speech benchmarks (issue 5, Deep Speech 2), printed as one JSON line
//! per measurement so that `benches/compare_speech.py` can put them beside
//! PyTorch's (`benches/peers/torch_speech.py`) in one run.
//!
//! ```text
//! cargo bench --bench speech -- [--threads T] [--only ds2,ctc,layers] [--tries K]
//! cargo bench --bench speech -- --threads 1 --only decode --model M --data SPLIT --lm LM
//! ```
//! `--threads` sizes the rayon pool (and matrixmultiply's) before any work.
//! Shapes and method follow ../shared/anchors/ds2_step.py and ctc.py: a
//! fixed number of timed calls after a warm-up, median; every line carries
//! the share of the machine other processes used during the loop (`bg_pct`),
//! and a loop is retried (up to `--tries` times) while that is above 10 %.

#[path = "../common/args.rs"]
mod args;
mod ctc;
mod decode;
mod ds2;
mod layers;
#[path = "../common/load.rs"]
mod load;
#[path = "../common/timing.rs"]
mod timing;

fn main() {
    let Some(a) = args::parse("speech", &["ds2", "ctc", "layers"]) else {
        return;
    };
    for what in &a.only {
        match what.as_str() {
            "ds2" => ds2::run(a.threads, a.tries),
            "ctc" => ctc::run(a.threads, a.tries),
            "layers" => layers::run(a.threads, a.tries),
            "decode" => decode::run(a.threads),
            other => eprintln!("unknown benchmark {other:?}"),
        }
    }
}
