//! [`IterationTiming`]: where one iteration's wall time went, for the
//! dashboard and `/metrics`. Tasks report their own forward/backward and
//! synchronisation time ([`super::TaskTiming`]); the driver adds the time
//! it spent stepping parameter shards itself or waiting for the holders'
//! step round. The critical path is the slowest share, so a phase counts
//! its slowest task; what is left of the wall time (sending tasks and
//! reports, waiting for slots, stragglers' other work) is `waiting`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::TaskTiming;
use crate::monitor::view::IterationPoint;

/// Times gathered during one iteration (atomics: rounds are run from
/// `&self` methods).
#[derive(Debug, Default)]
pub(crate) struct IterationTiming {
    compute_us: AtomicU64,
    task_sync_us: AtomicU64,
    driver_sync_us: AtomicU64,
}

impl IterationTiming {
    /// Forgets the previous iteration.
    pub(crate) fn reset(&self) {
        self.compute_us.store(0, Ordering::Relaxed);
        self.task_sync_us.store(0, Ordering::Relaxed);
        self.driver_sync_us.store(0, Ordering::Relaxed);
    }

    /// A training task's report (the slowest of a round counts).
    pub(crate) fn task(&self, t: &TaskTiming) {
        self.compute_us.fetch_max(t.compute_us, Ordering::Relaxed);
        self.task_sync_us.fetch_max(t.sync_us, Ordering::Relaxed);
    }

    /// Time the driver spent on parameter synchronisation itself.
    pub(crate) fn driver_sync(&self, d: Duration) {
        self.driver_sync_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The iteration's point: `seconds` of wall time, of which
    /// `checkpoint_seconds` writing a checkpoint.
    pub(crate) fn point(
        &self,
        seconds: f64,
        checkpoint_seconds: f64,
        samples: u64,
    ) -> IterationPoint {
        let us = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-6;
        let budget = (seconds - checkpoint_seconds).max(0.0);
        let compute = us(&self.compute_us).min(budget);
        let sync = (us(&self.task_sync_us) + us(&self.driver_sync_us)).min(budget - compute);
        IterationPoint {
            seconds,
            checkpoint_seconds,
            compute_seconds: compute,
            sync_seconds: sync,
            waiting_seconds: (budget - compute - sync).max(0.0),
            samples,
            samples_per_second: samples as f64 / seconds.max(1e-9),
            ..IterationPoint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_wall_time_and_the_slowest_task_counts() {
        let t = IterationTiming::default();
        t.task(&TaskTiming {
            compute_us: 300_000,
            sync_us: 10_000,
        });
        t.task(&TaskTiming {
            compute_us: 400_000,
            sync_us: 5_000,
        });
        t.driver_sync(Duration::from_millis(90));
        let p = t.point(1.0, 0.2, 50);
        assert!((p.compute_seconds - 0.4).abs() < 1e-9);
        assert!((p.sync_seconds - 0.1).abs() < 1e-9);
        assert!((p.waiting_seconds - 0.3).abs() < 1e-9);
        assert!((p.samples_per_second - 50.0).abs() < 1e-9);
        // Never more than the wall time, whatever the tasks claim.
        t.task(&TaskTiming {
            compute_us: 5_000_000,
            sync_us: 0,
        });
        let p = t.point(1.0, 0.0, 1);
        assert_eq!(
            (p.compute_seconds, p.sync_seconds, p.waiting_seconds),
            (1.0, 0.0, 0.0)
        );
        t.reset();
        assert_eq!(t.point(1.0, 0.0, 1).waiting_seconds, 1.0);
    }
}
