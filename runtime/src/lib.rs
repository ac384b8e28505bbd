//! Kiln cluster runtime: driver and executor actors over authenticated
//! QUIC, RDD-like datasets and a fault-tolerant scheduler.
//!
//! Entry points:
//! * [`Registry`]: register named functions at start-up, identically in
//!   every process (same binary everywhere).
//! * [`Driver::start`] / [`run_executor`]: the two roles of a multi-host
//!   cluster; [`LocalCluster::start`] for one machine (in-process executors
//!   over QUIC loopback or in memory, or child processes).
//! * [`Dataset`]: transformations (`map`, `filter`, `flat_map`,
//!   `map_partitions`, `sample`, `union`, `zip`, `cache`, `repartition`,
//!   `reduce_by_key`, `group_by_key`) and async actions (`count`,
//!   `collect`, `take`, `reduce`, `fold`, `foreach`).
//! * [`train`]: data-parallel training (parameter actors, checkpoints,
//!   resume) for any model behind a small trait.
//! * [`transport`]: the QUIC/TLS layer, reusable for bulk transfers.
//!
//! See `docs/runtime-protocol.md` for the wire protocol and failure
//! semantics.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod buffers;
pub mod checkpoint;
mod connection;
pub mod dashboard;
mod dataset;
mod driver;
mod error;
mod executor;
pub mod fuzzing;
pub mod jobs;
mod liveness;
mod local;
pub mod monitor;
mod plan;
mod protocol;
mod registry;
mod shuffle;
pub mod staging;
mod supervise;
pub mod train;
pub mod transport;

pub use dataset::Dataset;
pub use driver::{query_status, Driver, DriverConfig};
pub use error::{error_chain, BoxError, Error, Result};
pub use executor::{run_executor, ExecutorConfig};
pub use jobs::{ClusterClient, JobContext, JobEvent, JobInfo, JobRunner, JobState};
pub use local::{ExecutorMode, LocalCluster, LocalConfig};
pub use monitor::Monitor;
pub use protocol::{ClusterStatus, ExecutorStatus};
pub use registry::{decode_vec, Data, Part, Registry};
pub use train::{DistributedTrainer, GradientWorker, ShardOptimizer, TrainSpec};
pub use transport::{CertificateFiles, JoinToken};
