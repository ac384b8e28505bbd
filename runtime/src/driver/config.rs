//! [`DriverConfig`]: the driver's settings and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::transport::{self, CertificateFiles};

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// UDP address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// How often executors and driver exchange heartbeats.
    pub heartbeat: Duration,
    /// An executor silent this long is declared lost.
    pub executor_timeout: Duration,
    /// Attempts per task before its job fails.
    pub max_task_attempts: u32,
    /// Consecutive task failures after which an executor is excluded.
    /// The last usable executor is never excluded, and failures of a task
    /// that fails its job everywhere are forgiven (the task, not the
    /// executor, was at fault), as in Spark's `excludeOnFailure`.
    pub max_executor_failures: u32,
    /// How long an exclusion lasts before the executor gets tasks again.
    pub exclusion_timeout: Duration,
    /// Stages waiting this long with no usable executor fail (instead of
    /// waiting forever for one to join).
    pub no_executor_timeout: Duration,
    /// Largest control frame accepted.
    pub max_control_frame: u64,
    /// Largest bulk frame (task or result) accepted.
    pub max_bulk_frame: u64,
    /// Time allowed for the TLS handshake and the preamble.
    pub handshake_timeout: Duration,
    /// Shuffle fetch failures (a peer gone or missing a block) tolerated
    /// per task; each one recomputes the lost map outputs and reruns the
    /// task, without counting against `max_task_attempts`.
    pub max_fetch_failures: u32,
    /// A user-supplied certificate chain and key (PEM) instead of a
    /// generated cluster CA; the join token then pins that leaf.
    pub tls: Option<CertificateFiles>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat: Duration::from_millis(200),
            executor_timeout: Duration::from_secs(5),
            max_task_attempts: 4,
            max_executor_failures: 3,
            exclusion_timeout: Duration::from_secs(60),
            no_executor_timeout: Duration::from_secs(120),
            max_control_frame: transport::DEFAULT_MAX_CONTROL_FRAME,
            max_bulk_frame: transport::DEFAULT_MAX_BULK_FRAME,
            handshake_timeout: Duration::from_secs(5),
            max_fetch_failures: 4,
            tls: None,
        }
    }
}
