//! Starting a local cluster for the application commands (`kiln speech
//! train`, `kiln detect train --executors N`): the tokio runtime and the
//! cluster settings.

use std::time::Duration;

use anyhow::Context;
use kiln_runtime::{DriverConfig, ExecutorMode, LocalConfig};

/// Executors of a local cluster unless told otherwise.
pub const DEFAULT_EXECUTORS: usize = 2;

/// A multi-threaded tokio runtime for a command.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `executors` executors with one slot each: child processes of this
/// binary (`kiln executor --exit-on-stdin-eof`, so they die with it) or,
/// with `in_process`, tasks in this process.
pub fn local_config(executors: usize, in_process: bool) -> anyhow::Result<LocalConfig> {
    if executors == 0 {
        anyhow::bail!("--executors must be at least 1");
    }
    let mode = if in_process {
        ExecutorMode::InProcess
    } else {
        ExecutorMode::Processes {
            program: std::env::current_exe().context("locating the kiln binary")?,
            args: vec!["executor".into(), "--exit-on-stdin-eof".into()],
        }
    };
    Ok(LocalConfig {
        executors,
        cores_per_executor: 1,
        mode,
        driver: DriverConfig::default(),
        startup_timeout: Duration::from_secs(30),
    })
}
