//! Fixed-count timing with background-load accounting (the method of
//! ../shared/anchors/_common.py: warm-up, a fixed number of timed calls,
//! median; the loop is retried while other processes used more than 10 %
//! of the machine, and the least-loaded loop is kept).

use std::time::Instant;

/// CPU seconds (busy, total) over all CPUs from /proc/stat.
fn machine_cpu() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let total: f64 = v.iter().sum();
    Some(((total - v[3] - v[4]) / 100.0, total / 100.0))
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
    pub(crate) bg_pct: f64,
}

/// `warmup` untimed calls, then up to `tries` loops of `iters` timed calls;
/// stops at the first loop with background load <= 10 %.
pub(crate) fn time_n(mut f: impl FnMut(), warmup: usize, iters: usize, tries: usize) -> Timing {
    for _ in 0..warmup {
        f();
    }
    let mut best: Option<Timing> = None;
    for _ in 0..tries.max(1) {
        let (b0, o0) = (machine_cpu(), own_cpu());
        let mut ts: Vec<f64> = (0..iters.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let bg = match (b0, o0, machine_cpu(), own_cpu()) {
            (Some((busy0, tot0)), Some(o0), Some((busy1, tot1)), Some(o1)) if tot1 > tot0 => {
                (((busy1 - busy0) - (o1 - o0)).max(0.0) / (tot1 - tot0) * 100.0).min(100.0)
            }
            _ => 0.0,
        };
        ts.sort_by(|a, b| a.total_cmp(b));
        let t = Timing {
            median_s: ts[ts.len() / 2],
            min_s: ts[0],
            bg_pct: bg,
        };
        let quiet = t.bg_pct <= 10.0;
        if best.as_ref().is_none_or(|b| t.bg_pct < b.bg_pct) {
            best = Some(t);
        }
        if quiet {
            break;
        }
    }
    best.unwrap_or(Timing {
        median_s: f64::NAN,
        min_s: f64::NAN,
        bg_pct: 100.0,
    })
}
