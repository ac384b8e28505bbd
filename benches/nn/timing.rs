//! Median-of-a-second timing with background-load accounting.

use std::time::Instant;

/// CPU seconds (busy, total) over all CPUs from /proc/stat.
fn machine_cpu() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let total: f64 = v.iter().sum();
    Some(((total - idle) / 100.0, total / 100.0))
}

/// This process's CPU seconds (all threads).
fn own_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((f.get(11)? + f.get(12)?) / 100.0)
}

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
        let (b0, own0) = (machine_cpu(), own_cpu());
        let mut ts = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            f();
            ts.push(t.elapsed().as_secs_f64());
        }
        let bg = match (b0, own0, machine_cpu(), own_cpu()) {
            (Some((busy0, tot0)), Some(o0), Some((busy1, tot1)), Some(o1)) if tot1 > tot0 => {
                (((busy1 - busy0) - (o1 - o0)).max(0.0) / (tot1 - tot0) * 100.0).min(100.0)
            }
            _ => 0.0,
        };
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
