//! [`Metrics`]: the driver's Prometheus metrics (`GET /metrics`, text
//! exposition format 0.0.4), kept in a `prometheus` crate registry and
//! updated by the monitor's fold task from the same events as the
//! dashboard. Names and labels are listed in `docs/dashboard.md`.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::event::{Event, TaskOutcome};
use super::view::ClusterView;

/// A metric the registry refused (a name clash: a bug, caught by tests).
pub(crate) type MetricsError = prometheus::Error;

/// The driver's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    executors: IntGaugeVec,
    tasks_started: IntCounter,
    tasks_succeeded: IntCounter,
    tasks_failed: IntCounterVec,
    tasks_retried: IntCounter,
    tasks_requeued: IntCounter,
    iteration_seconds: Histogram,
    iteration_phase_seconds: prometheus::CounterVec,
    wire_bytes: IntCounterVec,
    /// What `wire_bytes` was last raised to, by `(kind, direction)`.
    wire_exported: BTreeMap<(String, &'static str), u64>,
    checkpoint_write_seconds: Histogram,
    checkpoint_bytes: Gauge,
    staged_bytes: IntCounter,
    job_loss: GaugeVec,
    job_metric: GaugeVec,
    samples_per_second: GaugeVec,
    pub(crate) unauthorized: IntCounter,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    IntCounter::new(name, help)
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub(crate) fn new() -> Result<Self, MetricsError> {
        let iteration_buckets = prometheus::exponential_buckets(0.001, 2.0, 16)?;
        let m = Metrics {
            registry: Registry::new(),
            executors: IntGaugeVec::new(
                Opts::new("kiln_executors", "Executors by state (live, excluded, lost, left)."),
                &["state"],
            )?,
            tasks_started: counter("kiln_tasks_started_total", "Task attempts started.")?,
            tasks_succeeded: counter("kiln_tasks_succeeded_total", "Task attempts that succeeded.")?,
            tasks_failed: IntCounterVec::new(
                Opts::new(
                    "kiln_tasks_failed_total",
                    "Task attempts that failed, by kind (failed: the task's error; fetch_failed: a peer lost blocks).",
                ),
                &["kind"],
            )?,
            tasks_retried: counter(
                "kiln_tasks_retried_total",
                "Task attempts beyond a task's first.",
            )?,
            tasks_requeued: counter(
                "kiln_tasks_requeued_total",
                "Running tasks put back in the queue because their executor was lost.",
            )?,
            iteration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_iteration_seconds",
                    "Wall time of training iterations on the driver.",
                )
                .buckets(iteration_buckets),
            )?,
            iteration_phase_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "kiln_iteration_phase_seconds_total",
                    "Training iteration time by phase (compute, sync, checkpoint, waiting).",
                ),
                &["phase"],
            )?,
            wire_bytes: IntCounterVec::new(
                Opts::new(
                    "kiln_wire_bytes_total",
                    "Bytes on the wire of the driver's connections, by peer kind and direction.",
                ),
                &["kind", "direction"],
            )?,
            wire_exported: BTreeMap::new(),
            checkpoint_write_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "kiln_checkpoint_write_seconds",
                    "Time to write and commit a checkpoint.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 18)?),
            )?,
            checkpoint_bytes: Gauge::new(
                "kiln_checkpoint_bytes",
                "Size of the latest committed checkpoint's blobs.",
            )?,
            staged_bytes: counter(
                "kiln_staged_bytes_total",
                "Bytes of published data files served to executors.",
            )?,
            job_loss: GaugeVec::new(
                Opts::new("kiln_job_loss", "The latest training iteration's mean loss, by job."),
                &["job"],
            )?,
            job_metric: GaugeVec::new(
                Opts::new(
                    "kiln_job_metric",
                    "The latest evaluation metric of a training job, by job and metric name.",
                ),
                &["job", "metric"],
            )?,
            samples_per_second: GaugeVec::new(
                Opts::new(
                    "kiln_samples_per_second",
                    "Training throughput of the latest iteration, by job.",
                ),
                &["job"],
            )?,
            unauthorized: counter(
                "kiln_ui_unauthorized_requests_total",
                "Dashboard requests refused for want of the UI token.",
            )?,
        };
        let r = &m.registry;
        r.register(Box::new(m.executors.clone()))?;
        r.register(Box::new(m.tasks_started.clone()))?;
        r.register(Box::new(m.tasks_succeeded.clone()))?;
        r.register(Box::new(m.tasks_failed.clone()))?;
        r.register(Box::new(m.tasks_retried.clone()))?;
        r.register(Box::new(m.tasks_requeued.clone()))?;
        r.register(Box::new(m.iteration_seconds.clone()))?;
        r.register(Box::new(m.iteration_phase_seconds.clone()))?;
        r.register(Box::new(m.wire_bytes.clone()))?;
        r.register(Box::new(m.checkpoint_write_seconds.clone()))?;
        r.register(Box::new(m.checkpoint_bytes.clone()))?;
        r.register(Box::new(m.staged_bytes.clone()))?;
        r.register(Box::new(m.job_loss.clone()))?;
        r.register(Box::new(m.job_metric.clone()))?;
        r.register(Box::new(m.samples_per_second.clone()))?;
        r.register(Box::new(m.unauthorized.clone()))?;
        for state in ["live", "excluded", "lost", "left"] {
            m.executors.with_label_values(&[state]).set(0);
        }
        for kind in ["failed", "fetch_failed"] {
            m.tasks_failed.with_label_values(&[kind]).reset();
        }
        Ok(m)
    }

    /// Counts an event (`job`: the submitted job it is attributed to).
    pub(crate) fn observe(&mut self, event: &Event, job: u64) {
        match event {
            Event::TaskStarted(a) => {
                self.tasks_started.inc();
                if a.attempt > 0 {
                    self.tasks_retried.inc();
                }
            }
            Event::TaskEnded(_, outcome) => match outcome {
                TaskOutcome::Succeeded => self.tasks_succeeded.inc(),
                TaskOutcome::Failed(_) => self.tasks_failed.with_label_values(&["failed"]).inc(),
                TaskOutcome::FetchFailed(_) => {
                    self.tasks_failed.with_label_values(&["fetch_failed"]).inc()
                }
                TaskOutcome::Requeued => self.tasks_requeued.inc(),
            },
            Event::Iteration(p) => {
                let job = job.to_string();
                self.iteration_seconds.observe(p.seconds);
                for (phase, s) in [
                    ("compute", p.compute_seconds),
                    ("sync", p.sync_seconds),
                    ("checkpoint", p.checkpoint_seconds),
                    ("waiting", p.waiting_seconds),
                ] {
                    self.iteration_phase_seconds
                        .with_label_values(&[phase])
                        .inc_by(s.max(0.0));
                }
                self.job_loss.with_label_values(&[&job]).set(p.loss);
                self.samples_per_second
                    .with_label_values(&[&job])
                    .set(p.samples_per_second);
            }
            Event::Epoch { job, point } => {
                let job = job.to_string();
                for (name, v) in &point.metrics {
                    self.job_metric.with_label_values(&[&job, name]).set(*v);
                }
            }
            Event::Checkpoint(c) => {
                self.checkpoint_write_seconds.observe(c.write_seconds);
                self.checkpoint_bytes.set(c.bytes as f64);
            }
            _ => {}
        }
    }

    /// Sets the gauges and totals a cluster snapshot carries.
    pub(crate) fn cluster(&mut self, view: &ClusterView, staged_bytes: u64) {
        let excluded = view
            .executors
            .iter()
            .filter(|e| e.state == "excluded")
            .count() as i64;
        let live = view.executors.len() as i64 - excluded;
        for (state, n) in [
            ("live", live),
            ("excluded", excluded),
            ("lost", view.lost as i64),
            ("left", view.left as i64),
        ] {
            self.executors.with_label_values(&[state]).set(n);
        }
        let staged = self.staged_bytes.get();
        if staged_bytes > staged {
            self.staged_bytes.inc_by(staged_bytes - staged);
        }
        for (kind, w) in &view.wire {
            for (direction, total) in [("sent", w.sent), ("received", w.received)] {
                let last = self
                    .wire_exported
                    .entry((kind.clone(), direction))
                    .or_insert(0);
                if total > *last {
                    self.wire_bytes
                        .with_label_values(&[kind.as_str(), direction])
                        .inc_by(total - *last);
                    *last = total;
                }
            }
        }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
