//! The cluster commands: `kiln local` (a driver and N executors on this
//! machine, plus the same submission path as a real cluster), `kiln
//! driver`, `kiln executor` and `kiln status`. Every role builds the same
//! registry from [`JobKinds`], so driver and executors agree on what a
//! name means.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser as _;
use clap::Args;
use kiln_runtime::{
    query_status, run_executor, transport, CertificateFiles, ClusterStatus, Driver, DriverConfig,
    ExecutorConfig, ExecutorMode, LocalCluster, LocalConfig,
};

use super::job_args::{JobCommand, Submission};
use super::submit::{connect, submit_and_follow};
use super::tokio_runtime;
use super::ui::{self, UiArgs};
use crate::jobs::{JobEnv, JobKinds};

/// Executors of a local cluster unless told otherwise.
pub const DEFAULT_EXECUTORS: usize = 2;
/// Most executors of a local cluster.
pub const MAX_EXECUTORS: usize = 1024;
/// Most compute threads of an executor.
pub const MAX_THREADS: usize = 1024;

/// A clap value parser for a thread count in `[0, 1024]` (0: all cores).
pub fn threads(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    kiln_nn::bounds::check("value", n, 0..=MAX_THREADS)
        .map_err(|e| format!("must be {} (0: all cores)", e.expected))
}

/// The driver's TLS identity: generated (default) or the user's own.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) for the driver instead of a
    /// generated cluster CA; the join token then pins this leaf.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --cert's leaf.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<CertificateFiles> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// Failure detection and retry settings of a driver.
#[derive(Args, Debug, Clone)]
pub struct DriverTimingArgs {
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
    /// Executor silence after which it is declared lost, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub executor_timeout_ms: u64,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
}

impl DriverTimingArgs {
    /// The driver's settings with these timings.
    pub fn driver_config(&self, listen: SocketAddr, tls: &TlsArgs) -> anyhow::Result<DriverConfig> {
        if self.executor_timeout_ms <= self.heartbeat_ms {
            bail!(
                "--executor-timeout-ms ({}) must exceed --heartbeat-ms ({}): executors would be declared lost between two heartbeats",
                self.executor_timeout_ms,
                self.heartbeat_ms
            );
        }
        Ok(DriverConfig {
            listen,
            tls: tls.files(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            executor_timeout: Duration::from_millis(self.executor_timeout_ms),
            max_task_attempts: self.max_attempts,
            ..DriverConfig::default()
        })
    }
}

impl Default for DriverTimingArgs {
    fn default() -> Self {
        DriverTimingArgs {
            heartbeat_ms: 200,
            executor_timeout_ms: 5000,
            max_attempts: 4,
        }
    }
}

/// How a local cluster is made.
#[derive(Args, Debug, Clone)]
pub struct LocalClusterArgs {
    /// Number of executors.
    #[arg(long, default_value_t = DEFAULT_EXECUTORS, value_parser = clap::value_parser!(u64).range(1..=MAX_EXECUTORS as u64).map(|n| n as usize))]
    pub executors: usize,
    /// Task slots per executor.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cores: u32,
    /// Run executors as tasks of this process instead of child processes.
    #[arg(long)]
    pub in_process: bool,
    /// With --in-process: connect the executors to the driver in memory
    /// instead of over QUIC on loopback.
    #[arg(long, requires = "in_process")]
    pub in_memory: bool,
    /// Compute threads (the rayon pool for tensor work) of each executor
    /// process; 0 means all of the machine's cores. Default: `kiln local`
    /// shares the cores out among its executors (small models such as
    /// LeNet-5 lose to oversubscription), `kiln detect train` and `kiln
    /// speech train` give each executor all of them (their large
    /// convolutions gain from it). At most 1024.
    #[arg(long, value_parser = threads)]
    pub executor_threads: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub timing: DriverTimingArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ui: UiArgs,
}

impl LocalClusterArgs {
    /// `n` executor processes with default settings.
    pub fn with_executors(n: usize) -> Self {
        LocalClusterArgs {
            executors: n,
            cores: 1,
            in_process: false,
            in_memory: false,
            executor_threads: None,
            tls: TlsArgs::default(),
            timing: DriverTimingArgs::default(),
            ui: UiArgs::default(),
        }
    }

    /// The threads asked for, or `default` (`None`: all cores).
    pub fn threads_or(&self, default: Option<usize>) -> Option<usize> {
        match self.executor_threads {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        }
    }

    /// The cluster's settings; executor processes get `threads` compute
    /// threads unless `--executor-threads` says otherwise.
    pub fn config(&self, default_threads: Option<usize>) -> anyhow::Result<LocalConfig> {
        // What the flags' parsers check, again for clusters made in code
        // (`kiln checkpoint resume --executors N`): no executor would
        // leave a job waiting forever.
        kiln_nn::bounds::check("--executors", self.executors, 1..=MAX_EXECUTORS).map_err(|e| {
            anyhow::anyhow!("{e} (a local cluster without executors would wait forever)")
        })?;
        if let Some(t) = self.executor_threads {
            kiln_nn::bounds::check("--executor-threads", t, 0..=MAX_THREADS)?;
        }
        let mode = if self.in_memory {
            ExecutorMode::InProcessDirect
        } else if self.in_process {
            ExecutorMode::InProcess
        } else {
            executor_process(self.threads_or(default_threads))?
        };
        Ok(LocalConfig {
            executors: self.executors,
            cores_per_executor: self.cores,
            mode,
            driver: self
                .timing
                .driver_config(SocketAddr::from(([127, 0, 0, 1], 0)), &self.tls)?,
            startup_timeout: Duration::from_secs(30),
        })
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

/// The arguments of an executor child process (after the program).
pub fn executor_args(threads: Option<usize>) -> Vec<String> {
    let mut args = vec!["executor".to_string(), "--exit-on-stdin-eof".to_string()];
    if let Some(t) = threads {
        args.push("--threads".into());
        args.push(t.to_string());
    }
    args
}

fn print_join(driver: &Driver) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "JOIN {}", driver.join_string())?;
    out.flush()?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn until_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Starts a local cluster (`cluster`, executor processes with
/// `default_threads` compute threads each unless told otherwise) whose
/// driver runs `kinds`' jobs, then submits `job` to it through the same
/// client path as `kiln submit` and follows it; without a job, serves
/// until Ctrl-C.
pub fn run_local(
    cluster: &LocalClusterArgs,
    default_threads: Option<usize>,
    job: Option<Submission>,
    kinds: &JobKinds,
) -> anyhow::Result<()> {
    let config = cluster.config(default_threads)?;
    let ui_config = cluster.ui.config()?;
    // Every setting is checked, as the driver will, before the cluster
    // starts: a bad value costs no executor start-up.
    if let Some(sub) = &job {
        sub.check_outputs()?;
        kinds
            .accept(&sub.kind, &sub.settings, &JobEnv::here())
            .with_context(|| match &sub.source {
                Some(file) => format!("{}: job of kind {:?} refused", file.display(), sub.kind),
                None => format!("job of kind {:?} refused", sub.kind),
            })?;
    }
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let work = tempfile::Builder::new()
            .prefix("kiln-local-")
            .tempdir()
            .context("creating the local driver's work directory")?;
        let cluster = LocalCluster::start(config, kinds.registry()).await?;
        let result = async {
            let driver = cluster.driver()?;
            driver.accept_jobs(kinds.runner(JobEnv::here()), work.path())?;
            print_join(driver)?;
            let dashboard = ui::start(driver, ui_config).await?;
            let result = match &job {
                None => {
                    println!("serving; Ctrl-C to stop");
                    until_signal().await;
                    Ok(())
                }
                Some(sub) => {
                    let client = connect(&driver.join_string()).await?;
                    submit_and_follow(&client, sub, false).await
                }
            };
            if let Some(d) = dashboard {
                d.stop().await;
            }
            result
        }
        .await;
        cluster.shutdown().await;
        result
    })
}

/// `kiln local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: LocalClusterArgs,
    /// The job to run (without one: serve until Ctrl-C).
    #[command(subcommand)]
    pub job: Option<JobCommand>,
}

/// Runs `kiln local`.
pub fn local(args: LocalArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    let job = args.job.as_ref().map(JobCommand::submission).transpose()?;
    let share = core_share(args.cluster.executors);
    run_local(&args.cluster, Some(share), job, kinds)
}

/// `kiln driver`.
#[derive(Args, Debug)]
pub struct DriverArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7077")]
    pub listen: SocketAddr,
    /// Where jobs' outputs go on this host (`DIR/jobs/<id>/`).
    #[arg(long, default_value = "kiln-driver")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub timing: DriverTimingArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ui: UiArgs,
}

/// Runs `kiln driver`: serves executors and job submissions until Ctrl-C
/// or SIGTERM.
pub fn driver(args: DriverArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    let config = args.timing.driver_config(args.listen, &args.tls)?;
    let ui_config = args.ui.config()?;
    tokio_runtime()?.block_on(async {
        let driver = Driver::start(config, kinds.registry()).await?;
        driver
            .accept_jobs(kinds.runner(JobEnv::here()), &args.work_dir)
            .with_context(|| format!("work directory {}", args.work_dir.display()))?;
        print_join(&driver)?;
        let dashboard = ui::start(&driver, ui_config).await?;
        println!("serving executors and jobs; Ctrl-C to stop");
        until_signal().await;
        if let Some(d) = dashboard {
            d.stop().await;
        }
        driver.shutdown().await;
        Ok(())
    })
}

/// `kiln executor`.
#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// `TOKEN@HOST:PORT` as printed by the driver.
    #[arg(long)]
    pub join: String,
    /// Concurrent task slots (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cores: Option<u32>,
    /// Compute threads: the rayon pool that tensor work runs on (default,
    /// or 0: available cores). `kiln local` gives each of its executors a
    /// share of the machine's cores. At most 1024.
    #[arg(long, value_parser = threads)]
    pub threads: Option<usize>,
    /// Name shown in logs and `kiln status`.
    #[arg(long)]
    pub name: Option<String>,
    /// Exit when stdin reaches end of file (set by `kiln local`, whose pipe
    /// closes when it dies, so executors never outlive it).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// Where data staged from the driver's host is cached, by content
    /// (default: $KILN_CACHE_DIR, else ~/.cache/kiln/staged).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Runs `kiln executor`.
pub fn executor(args: ExecutorArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    if args.exit_on_stdin_eof {
        std::thread::spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => {
                        tracing::warn!("stdin closed: parent is gone, exiting");
                        std::process::exit(0);
                    }
                    Ok(_) => {}
                }
            }
        });
    }
    if let Some(threads) = args.threads.filter(|&t| t > 0) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("sizing the compute thread pool")?;
    }
    let (token, addr) = transport::parse_join(&args.join)?;
    let mut config = ExecutorConfig::new(addr, token);
    config.name = args.name;
    if let Some(dir) = args.cache_dir {
        config.cache_dir = dir;
    }
    if let Some(c) = args.cores {
        config.cores = c;
    }
    let leave = Arc::new(tokio::sync::Notify::new());
    config.leave = Some(leave.clone());
    let registry = kinds.registry();
    tokio_runtime()?.block_on(async {
        // SIGTERM or Ctrl-C: leave gracefully (finish running tasks, hand
        // the partitions back); a second signal is not waited for.
        tokio::spawn(async move {
            until_signal().await;
            tracing::info!("signal received: leaving the cluster gracefully");
            leave.notify_one();
        });
        run_executor(config, registry).await
    })?;
    Ok(())
}

/// `kiln status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// `TOKEN@HOST:PORT` as printed by the driver.
    #[arg(long, alias = "cluster")]
    pub join: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn print_status(status: &ClusterStatus) {
    println!(
        "{:>4}  {:<20} {:<22} {:>5} {:>7} {:>9} {:>6} {:>8} {:>10}",
        "id", "name", "addr", "cores", "running", "completed", "failed", "excluded", "peer drops"
    );
    for e in &status.executors {
        println!(
            "{:>4}  {:<20} {:<22} {:>5} {:>7} {:>9} {:>6} {:>8} {:>10}",
            e.id,
            e.name,
            e.addr,
            e.cores,
            e.running,
            e.completed,
            e.failed,
            e.excluded,
            e.dropped_peer_links
        );
    }
    println!(
        "lost executors: {}  left: {}  pending tasks: {}  jobs finished: {}  refused connections: {}",
        status.lost, status.left, status.pending_tasks, status.jobs_finished, status.refused_connections
    );
    println!(
        "dropped links: {} at the driver, {} at executors' peer endpoints",
        status.dropped_links, status.dropped_peer_links
    );
}

/// Runs `kiln status`.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (token, addr) = transport::parse_join(&args.join)?;
    let status = tokio_runtime()?.block_on(query_status(addr, &token, Duration::from_secs(10)))?;
    if args.json {
        let v: HashMap<&str, serde_json::Value> = HashMap::from([(
            "status",
            serde_json::to_value(&status).context("encoding status")?,
        )]);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_threads_default_and_override() {
        let mut a = LocalClusterArgs::with_executors(2);
        assert_eq!(a.threads_or(Some(3)), Some(3));
        assert_eq!(a.threads_or(None), None);
        a.executor_threads = Some(0);
        assert_eq!(a.threads_or(Some(3)), None);
        a.executor_threads = Some(2);
        assert_eq!(a.threads_or(None), Some(2));
        assert!(core_share(usize::MAX) >= 1 && core_share(0) >= 1);
        match executor_process(Some(2)).unwrap() {
            ExecutorMode::Processes { args, .. } => {
                assert_eq!(args[args.len() - 2..], ["--threads", "2"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_timeout_shorter_than_the_heartbeat_is_refused() {
        let t = DriverTimingArgs {
            heartbeat_ms: 500,
            executor_timeout_ms: 400,
            max_attempts: 1,
        };
        let err = t
            .driver_config(SocketAddr::from(([127, 0, 0, 1], 0)), &TlsArgs::default())
            .unwrap_err();
        assert!(err.to_string().contains("--executor-timeout-ms"), "{err}");
    }
}
