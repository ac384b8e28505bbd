//! kiln-nn benchmarks, printed as one JSON line per measurement so that
//! `benches/compare_nn.py` can put them beside PyTorch's in one run.
//!
//! ```text
//! cargo bench --bench nn -- [--threads T] [--only gemm,conv,lenet,rss]
//! ```
//! `--threads` sets the rayon pool (and matrixmultiply's) before any work.
//! Timing method (same as ../shared/anchors): warm up, pick an iteration
//! count worth about a second, report the median; every line carries the
//! share of the machine other processes used during the loop (`bg_pct`).

mod conv;
mod gemm;
mod lenet;
mod timing;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`;
        // the measurements take minutes, so only `cargo bench` (or the
        // compare script, which passes `--bench`) runs them.
        println!("nn bench: run with `cargo bench --bench nn`; skipped under cargo test");
        return;
    }
    let mut threads = 0usize;
    let mut only: Vec<String> = vec!["gemm".into(), "conv".into(), "lenet".into()];
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--threads" => {
                threads = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0);
                i += 1;
            }
            "--only" => {
                only = args
                    .get(i + 1)
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
            "gemm" => gemm::run(threads),
            "conv" => conv::run(threads),
            "lenet" => lenet::run(threads),
            "rss" => lenet::peak_rss(threads),
            other => eprintln!("unknown benchmark {other:?}"),
        }
    }
}
