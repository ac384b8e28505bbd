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

/// Compute threads of each executor process of a local cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExecutorThreadsArgs {
    /// Compute threads (the rayon pool for tensor work) of each executor
    /// process; 0 means all of the machine's cores. Default: `kiln local`
    /// shares the cores out among its executors (small models such as
    /// LeNet-5 lose to oversubscription), `kiln detect train` and `kiln
    /// speech train` give each executor all of them (their large
    /// convolutions gain from it).
    #[arg(long)]
    pub executor_threads: Option<usize>,
}

impl ExecutorThreadsArgs {
    /// The threads asked for, or `default` (`None`: all cores).
    pub fn or(&self, default: Option<usize>) -> Option<usize> {
        match self.executor_threads {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        }
    }
}

/// This machine's cores shared out among `executors` processes (at least
/// one each): what keeps executors on one machine from oversubscribing it.
pub fn core_share(executors: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / executors.max(1)).max(1)
}

/// The command line of an executor child process of `kiln local`: it
/// exits with its parent, and uses `threads` compute threads (`None`: all
/// cores).
pub fn executor_process(threads: Option<usize>) -> anyhow::Result<ExecutorMode> {
    Ok(ExecutorMode::Processes {
        program: std::env::current_exe().context("locating the kiln binary")?,
        args: executor_args(threads),
    })
}

/// The arguments of an executor child process (after the program): it
/// exits with its parent and uses `threads` compute threads (`None`: all
/// cores).
pub fn executor_args(threads: Option<usize>) -> Vec<String> {
    let mut args = vec!["executor".to_string(), "--exit-on-stdin-eof".to_string()];
    if let Some(t) = threads {
        args.push("--threads".into());
        args.push(t.to_string());
    }
    args
}

/// `executors` executors with one slot each: child processes of this
/// binary (`kiln executor --exit-on-stdin-eof`, so they die with it) with
/// `threads` compute threads each (`None`: all cores) or, with
/// `in_process`, tasks in this process (sharing its thread pool).
pub fn local_config(
    executors: usize,
    in_process: bool,
    threads: Option<usize>,
) -> anyhow::Result<LocalConfig> {
    if executors == 0 {
        anyhow::bail!("--executors must be at least 1");
    }
    let mode = if in_process {
        ExecutorMode::InProcess
    } else {
        executor_process(threads)?
    };
    Ok(LocalConfig {
        executors,
        cores_per_executor: 1,
        mode,
        driver: DriverConfig::default(),
        startup_timeout: Duration::from_secs(30),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_threads_default_and_override() {
        let none = ExecutorThreadsArgs::default();
        assert_eq!(none.or(Some(3)), Some(3));
        assert_eq!(none.or(None), None);
        let all = ExecutorThreadsArgs {
            executor_threads: Some(0),
        };
        assert_eq!(all.or(Some(3)), None);
        let two = ExecutorThreadsArgs {
            executor_threads: Some(2),
        };
        assert_eq!(two.or(None), Some(2));
        assert!(core_share(usize::MAX) >= 1 && core_share(0) >= 1);
        match executor_process(Some(2)).unwrap() {
            ExecutorMode::Processes { args, .. } => {
                assert_eq!(args[args.len() - 2..], ["--threads", "2"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
