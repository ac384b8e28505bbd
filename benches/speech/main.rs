//! kiln-speech benchmarks (issue 5, Deep Speech 2), printed as one JSON line
//! per measurement so that `benches/compare_speech.py` can put them beside
//! PyTorch's (`benches/peers/torch_speech.py`) in one run.
//!
//! ```text
//! cargo bench --bench speech -- [--threads T] [--only ds2,ctc,layers] [--tries K]
//! ```
//! `--threads` sizes the rayon pool (and matrixmultiply's) before any work.
//! Shapes and method follow ../shared/anchors/ds2_step.py and ctc.py: a
//! fixed number of timed calls after a warm-up, median; every line carries
//! the share of the machine other processes used during the loop (`bg_pct`),
//! and a loop is retried (up to `--tries` times) while that is above 10 %.

mod ctc;
mod ds2;
mod layers;
mod timing;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`;
        // the measurements take minutes, so only `cargo bench` (or the
        // compare script, which passes `--bench`) runs them.
        println!("speech bench: run with `cargo bench --bench speech`; skipped under cargo test");
        return;
    }
    let mut threads = 0usize;
    let mut tries = 2usize;
    let mut only: Vec<String> = vec!["ds2".into(), "ctc".into(), "layers".into()];
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1);
        match args[i].as_str() {
            "--threads" => {
                threads = value.and_then(|v| v.parse().ok()).unwrap_or(0);
                i += 1;
            }
            "--tries" => {
                tries = value.and_then(|v| v.parse().ok()).unwrap_or(2);
                i += 1;
            }
            "--only" => {
                only = value
                    .map(|v| v.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                i += 1;
            }
            _ => {} // cargo passes --bench; ignore unknown flags
        }
        i += 1;
    }
    if threads > 0 {
        std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
        {
            eprintln!("could not size the thread pool: {e}");
        }
    }
    let threads = rayon::current_num_threads();
    for what in &only {
        match what.as_str() {
            "ds2" => ds2::run(threads, tries),
            "ctc" => ctc::run(threads, tries),
            "layers" => layers::run(threads, tries),
            other => eprintln!("unknown benchmark {other:?}"),
        }
    }
}
