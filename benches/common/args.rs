//! Command line of the bench binaries that compare with a PyTorch peer
//! (`speech`, `detection`): `--threads T`, `--tries K`, `--only a,b`.

/// Parsed arguments.
pub(crate) struct BenchArgs {
    /// Rayon (and matrixmultiply) threads actually in use.
    pub(crate) threads: usize,
    /// Retries of a timed loop while the machine is loaded.
    pub(crate) tries: usize,
    /// Benchmarks to run, in order.
    pub(crate) only: Vec<String>,
}

/// Parses the arguments and sizes the thread pool; `None` when `--bench`
/// is absent: `cargo test --all-targets` runs bench targets without it and
/// the measurements take minutes, so only `cargo bench` (or a compare
/// script, which passes `--bench`) runs them.
pub(crate) fn parse(name: &str, default_only: &[&str]) -> Option<BenchArgs> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name} bench: run with `cargo bench --bench {name}`; skipped under cargo test");
        return None;
    }
    let mut threads = 0usize;
    let mut tries = 2usize;
    let mut only: Vec<String> = default_only.iter().map(|s| s.to_string()).collect();
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
    Some(BenchArgs {
        threads: rayon::current_num_threads(),
        tries,
        only,
    })
}
