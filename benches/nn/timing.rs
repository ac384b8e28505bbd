//! Median-of-a-second timing with background-load accounting.

use std::time::Instant;

#[path = "../common/load.rs"]
mod load;

use load::LoadWindow;

/// Result of one timed loop.
pub(crate) struct Timing {
    pub(crate) median_s: f64,
    pub(crate) min_s: f64,
    pub(crate) iters: usize,
    pub(crate) bg_pct: f64,
}

/// Warms up, picks about one second of iterations (at least `min_iters`),
/// times each, and retries the loop (up to 4 times) while other processes
/// used more than 10% of the machine; keeps the least-loaded loop.
pub(crate) fn time_it(mut f: impl FnMut(), min_iters: usize) -> Timing {
    for _ in 0..3 {
        f();
    }
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64().max(1e-7);
    let iters = min_iters.max((1.0 / one) as usize).min(10_000);
    let mut best: Option<Timing> = None;
    for _ in 0..4 {
        let window = LoadWindow::start();
        let mut ts = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            f();
            ts.push(t.elapsed().as_secs_f64());
        }
        let bg = window.background_pct();
        ts.sort_by(|a, b| a.total_cmp(b));
        let t = Timing {
            median_s: ts[ts.len() / 2],
            min_s: ts[0],
            iters,
            bg_pct: bg,
        };
        let done = t.bg_pct <= 10.0;
        if best.as_ref().is_none_or(|b| t.bg_pct < b.bg_pct) {
            best = Some(t);
        }
        if done {
            break;
        }
    }
    best.unwrap_or(Timing {
        median_s: f64::NAN,
        min_s: f64::NAN,
        iters: 0,
        bg_pct: 100.0,
    })
}

/// Peak resident set size of this process in MiB (VmHWM).
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
