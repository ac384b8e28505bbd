//! Background-load accounting shared by the bench binaries: how much of
//! the machine other processes used while a loop ran (the `bg_pct` column).

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

/// This process's CPU seconds (utime + stime, all threads). Fields after
/// the command name start with the state letter, so utime and stime are
/// the 12th and 13th (proc(5) fields 14 and 15).
fn own_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A CPU snapshot taken before a timed loop.
pub(crate) struct LoadWindow {
    machine: Option<(f64, f64)>,
    own: Option<f64>,
}

impl LoadWindow {
    /// Starts the window.
    pub(crate) fn start() -> Self {
        LoadWindow {
            machine: machine_cpu(),
            own: own_cpu(),
        }
    }

    /// Share (0–100) of the machine used by other processes since `start`.
    pub(crate) fn background_pct(&self) -> f64 {
        match (self.machine, self.own, machine_cpu(), own_cpu()) {
            (Some((busy0, tot0)), Some(o0), Some((busy1, tot1)), Some(o1)) if tot1 > tot0 => {
                (((busy1 - busy0) - (o1 - o0)).max(0.0) / (tot1 - tot0) * 100.0).min(100.0)
            }
            _ => 0.0,
        }
    }
}
