//! Crash points for crash tests, as sled's own tests use: the environment
//! variable `KILN_CRASH_AT=<point>:<n>` aborts the process (as a kill -9
//! would stop it, with no unwinding and no flush) the `n`th time it
//! reaches `<point>` in a checkpoint write. Unset, a crash point costs one
//! relaxed atomic load.
//!
//! Points: `blob-partial` (half of a blob's payload written to its
//! temporary file), `blobs-written` (every blob in place, no record yet),
//! `record-written` (the record file beside the blobs, the manifest not
//! yet updated), `committed` (the manifest flushed, retention not yet
//! run) and `retention` (an old checkpoint's record removed from the
//! manifest, its blobs not yet deleted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const CRASH_AT_ENV: &str = "KILN_CRASH_AT";

/// The crash points, in the order a checkpoint write reaches them.
pub const CRASH_POINTS: [&str; 5] = [
    "blob-partial",
    "blobs-written",
    "record-written",
    "committed",
    "retention",
];

struct Armed {
    point: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(CRASH_AT_ENV).ok()?;
            let (point, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            let at = n.parse().ok().filter(|&n| n > 0)?;
            CRASH_POINTS.contains(&point).then(|| Armed {
                point: point.to_string(),
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `KILN_CRASH_AT` names `point` and this is the
/// time it asked for.
pub(crate) fn crash_point(point: &str) {
    if let Some(a) = armed() {
        if a.point == point && a.seen.fetch_add(1, Ordering::Relaxed) + 1 == a.at {
            eprintln!("{CRASH_AT_ENV}: aborting at crash point {point}");
            std::process::abort();
        }
    }
}
