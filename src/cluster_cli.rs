//! The cluster subcommands: `kiln local`, `kiln driver`, `kiln executor`,
//! `kiln status`. Every role registers the same named functions
//! ([`registry`]) so driver and executors agree on what a name means.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use kiln::digits_cluster::{train_on_cluster, ClusterDigitsJob};
use kiln::digits_job::{default_data_path, DigitsJob, DigitsModel};
use kiln::local_run::{
    core_share, executor_process, local_config, tokio_runtime, ExecutorThreadsArgs,
    DEFAULT_EXECUTORS,
};
use kiln::run_checkpoints::{CheckpointArgs, CheckpointOptions, KEEP_CHECKPOINTS};
use kiln::train_cli::TrainArgs;
use kiln_runtime::{
    query_status, run_executor, transport, CertificateFiles, ClusterStatus, Driver, DriverConfig,
    ExecutorConfig, ExecutorMode, LocalCluster, LocalConfig, Registry,
};
use std::path::PathBuf;

/// Named functions of the `kiln` binary, identical in every role.
pub(crate) fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_flat_map("wc.words", |line: String| {
        line.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    })
    .register_map("wc.pair_one", |w: String| (w, 1u64))
    .register_reduce_by_key::<String, u64>("wc.sum", |a, b| a + b)
    // Lines of files, sleeping `ms` per partition: long enough jobs for
    // fault-injection tests and demos.
    .register_source(
        "kiln.slow_text_lines",
        |args: &(Vec<String>, u64), p: u32, n: u32| {
            let (files, ms) = args;
            let mut out = Vec::new();
            for f in files.iter().skip(p as usize).step_by(n.max(1) as usize) {
                let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
                out.extend(text.lines().map(str::to_owned));
            }
            std::thread::sleep(Duration::from_millis(*ms));
            Ok(out)
        },
    )
    .register_map("kiln.panic_on_every_element", |x: u64| -> u64 {
        panic!("injected failure on element {x}")
    });
    kiln::cluster_train::register(&mut r);
    kiln::digits_cluster::register(&mut r);
    kiln::speech_cluster::register(&mut r);
    kiln::detect_cluster::register(&mut r);
    Arc::new(r)
}

/// Options shared by `kiln local` and `kiln driver` for the built-in jobs.
#[derive(Args, Debug, Clone)]
pub(crate) struct JobArgs {
    /// Built-in job to run once the executors are up: `word-count`
    /// (needs --input) or `panic-then-count`. Without it, serve until Ctrl-C.
    #[arg(long)]
    job: Option<String>,
    /// File or directory of text files for `word-count`.
    #[arg(long)]
    input: Option<String>,
    /// Partitions for the job's source (default: 8; for `digits`, one per
    /// executor task slot at the start, since a training iteration sends
    /// one task per partition).
    #[arg(long)]
    partitions: Option<u32>,
    /// Sleep this long in each source partition (fault-injection demos).
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// Write the job's result here (`word<TAB>count` lines, sorted by word)
    /// instead of printing the top words.
    #[arg(long)]
    output: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// Executor silence after which it is declared lost, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    executor_timeout_ms: u64,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    #[command(flatten)]
    digits: DigitsArgs,
}

/// Options of the `digits` job (data-parallel training of the digits
/// network on the executors).
#[derive(Args, Debug, Clone)]
pub(crate) struct DigitsArgs {
    /// Network to train.
    #[arg(long, value_enum, default_value_t = DigitsModel::Cnn)]
    model: DigitsModel,
    /// Epochs.
    #[arg(long, default_value_t = 15)]
    epochs: u64,
    /// Global mini-batch size (the same on any number of executors).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate (SGD, momentum 0.9).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Seed of the weights and the data order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Parameter actors (shards of the flattened parameters).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    #[command(flatten)]
    placement: kiln::shard_placement::ShardArgs,
    /// The digits CSV (gzip); defaults to data/digits/digits.csv.gz.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    /// Save the trained model here (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl DigitsArgs {
    fn job(&self, partitions: u32) -> ClusterDigitsJob {
        ClusterDigitsJob {
            job: DigitsJob {
                data: self.data.clone().unwrap_or_else(default_data_path),
                model: self.model,
                epochs: self.epochs,
                batch_size: self.batch_size,
                learning_rate: self.lr,
                seed: self.seed,
                progress: !self.no_progress,
                ..DigitsJob::default()
            },
            partitions,
            shards: self.shards,
            shard_replicas: self.placement.replicas(),
        }
    }
}

/// The driver's TLS identity: generated (default) or the user's own.
#[derive(Args, Debug, Clone)]
pub(crate) struct TlsArgs {
    /// PEM certificate chain (leaf first) for the driver instead of a
    /// generated cluster CA; the join token then pins this leaf.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --cert's leaf.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
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

impl JobArgs {
    fn driver_config(&self, listen: SocketAddr, tls: &TlsArgs) -> DriverConfig {
        DriverConfig {
            listen,
            tls: tls.files(),
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(10)),
            executor_timeout: Duration::from_millis(self.executor_timeout_ms.max(100)),
            max_task_attempts: self.max_attempts.max(1),
            ..DriverConfig::default()
        }
    }
}

/// `kiln local`: a driver and N executors on this machine.
#[derive(Args, Debug)]
pub(crate) struct LocalArgs {
    /// Number of executors.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Task slots per executor.
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// Run executors as tasks of this process instead of child processes.
    #[arg(long)]
    in_process: bool,
    /// With --in-process: connect the executors to the driver in memory
    /// instead of over QUIC on loopback.
    #[arg(long, requires = "in_process")]
    in_memory: bool,
    /// Default: the machine's cores shared out among the executors.
    #[command(flatten)]
    threads: ExecutorThreadsArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// `kiln driver`: the coordinator of a multi-host cluster.
#[derive(Args, Debug)]
pub(crate) struct DriverArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7077")]
    listen: SocketAddr,
    /// Wait for this many executors before running --job.
    #[arg(long, default_value_t = 1)]
    expect_executors: usize,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// `kiln executor`: join a driver and run its tasks.
#[derive(Args, Debug)]
pub(crate) struct ExecutorArgs {
    /// `TOKEN@HOST:PORT` as printed by the driver.
    #[arg(long)]
    join: String,
    /// Concurrent task slots (default: available cores).
    #[arg(long)]
    cores: Option<u32>,
    /// Compute threads: the rayon pool that tensor work runs on (default,
    /// or 0: available cores). `kiln local` gives each of its executors a
    /// share of the machine's cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Name shown in logs and `kiln status`.
    #[arg(long)]
    name: Option<String>,
    /// Exit when stdin reaches end of file (set by `kiln local`, whose pipe
    /// closes when it dies, so executors never outlive it).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

/// `kiln status`: ask a driver about its executors.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// `TOKEN@HOST:PORT` as printed by the driver.
    #[arg(long)]
    join: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn print_join(driver: &Driver) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "JOIN {}", driver.join_string())?;
    out.flush()?;
    Ok(())
}

fn print_status(status: &ClusterStatus) {
    println!(
        "{:>4}  {:<20} {:<22} {:>5} {:>7} {:>9} {:>6} {:>8}",
        "id", "name", "addr", "cores", "running", "completed", "failed", "excluded"
    );
    for e in &status.executors {
        println!(
            "{:>4}  {:<20} {:<22} {:>5} {:>7} {:>9} {:>6} {:>8}",
            e.id, e.name, e.addr, e.cores, e.running, e.completed, e.failed, e.excluded
        );
    }
    println!(
        "lost executors: {}  left: {}  pending tasks: {}  jobs finished: {}  refused connections: {}",
        status.lost, status.left, status.pending_tasks, status.jobs_finished, status.refused_connections
    );
}

async fn run_job(driver: &Driver, job: &JobArgs) -> anyhow::Result<()> {
    match job.job.as_deref() {
        None => {
            println!("serving; Ctrl-C to stop");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
        }
        Some("word-count") => {
            let input = job
                .input
                .as_deref()
                .context("word-count needs --input FILE_OR_DIR")?;
            let files = if std::path::Path::new(input).is_dir() {
                let mut v: Vec<String> = std::fs::read_dir(input)
                    .with_context(|| format!("reading {input}"))?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.path().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            } else {
                vec![input.to_owned()]
            };
            let lines = driver.source::<_, String>(
                "kiln.slow_text_lines",
                &(files, job.slow_ms),
                job.partitions.unwrap_or(8),
            )?;
            let counts = lines
                .flat_map::<String>("wc.words")?
                .map::<(String, u64)>("wc.pair_one")?
                .reduce_by_key("wc.sum", job.partitions.unwrap_or(8))?
                .collect()
                .await?;
            let mut counts: Vec<(String, u64)> = counts;
            counts.sort();
            match &job.output {
                Some(path) => {
                    let mut text = String::new();
                    for (w, c) in &counts {
                        text.push_str(&format!("{w}\t{c}\n"));
                    }
                    std::fs::write(path, text).with_context(|| format!("writing {path}"))?;
                }
                None => {
                    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    for (w, c) in counts.iter().take(20) {
                        println!("{c:>10}  {w}");
                    }
                }
            }
            println!("DONE words={}", counts.len());
        }
        Some("panic-then-count") => {
            let ds =
                driver.parallelize((0..100u64).collect::<Vec<_>>(), job.partitions.unwrap_or(8))?;
            match ds.map::<u64>("kiln.panic_on_every_element")?.count().await {
                Ok(n) => bail!("the panicking job unexpectedly succeeded with {n}"),
                Err(e) => println!("JOB-ERROR {e}"),
            }
            println!("COUNT {}", ds.count().await?);
        }
        Some("digits") => {
            let slots: u32 = driver
                .status()
                .await?
                .executors
                .iter()
                .map(|e| e.cores)
                .sum();
            let run = job.digits.job(job.partitions.unwrap_or(slots.max(1)));
            run_digits(
                driver,
                &run,
                &job.digits.checkpoints.options(),
                job.digits.out.as_deref(),
            )
            .await?;
        }
        Some(other) => bail!("unknown job {other:?} (digits, word-count, panic-then-count)"),
    }
    let status = driver.status().await?;
    for e in &status.executors {
        println!(
            "EXECUTOR {} completed={} failed={}",
            e.name, e.completed, e.failed
        );
    }
    println!("REFUSED {}", status.refused_connections);
    println!("LOST {} LEFT {}", status.lost, status.left);
    std::io::stdout().flush()?;
    Ok(())
}

async fn run_digits(
    driver: &Driver,
    run: &ClusterDigitsJob,
    ckpt: &CheckpointOptions,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let report = train_on_cluster(driver, run, ckpt).await?;
    println!(
        "trained {:?} on {} executors: {:.0} samples/s ({:.0} without the per-epoch evaluations), held-out accuracy {:.2}%",
        run.job.model,
        driver.status().await?.executors.len(),
        report.samples_per_second,
        report.iteration_samples_per_second,
        report.held_out_accuracy * 100.0
    );
    if let Some(out) = out {
        let mut model = report
            .model
            .build::<f32>(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))?;
        kiln::nn::ModuleExt::set_flat_params(model.as_mut(), &report.params)?;
        let mut meta = HashMap::new();
        meta.insert(
            "kiln.digits_model".to_string(),
            format!("{:?}", run.job.model),
        );
        kiln::nn::serialize::save(model.as_ref(), out, &meta)
            .with_context(|| format!("saving {}", out.display()))?;
        println!("model saved to {}", out.display());
    }
    Ok(())
}

/// `kiln checkpoint resume` (and `kiln train --resume`): continue a
/// digits run from its checkpoint store on a fresh local cluster.
#[derive(Args, Debug)]
pub(crate) struct ResumeArgs {
    /// The checkpoint store of the run.
    #[arg(long)]
    dir: PathBuf,
    /// Executors of the new local cluster.
    #[arg(long, default_value_t = DEFAULT_EXECUTORS)]
    executors: usize,
    /// Save the trained model here (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl ResumeArgs {
    /// `kiln train --resume DIR`'s arguments as `kiln checkpoint resume`'s.
    pub(crate) fn from_train(a: &TrainArgs, dir: PathBuf) -> Self {
        ResumeArgs {
            dir,
            executors: a.executors,
            out: a.out.clone(),
            no_progress: a.no_progress,
        }
    }
}

/// Run `kiln checkpoint resume` (and `kiln train --resume`).
pub(crate) fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let store = kiln::runtime::checkpoint::CheckpointStore::open(&args.dir, 0)
        .with_context(|| format!("opening {}", args.dir.display()))?;
    let (record, _) = store.latest_valid()?;
    let job_json = record
        .meta
        .get(kiln::runtime::train::META_JOB)
        .with_context(|| format!("checkpoint {} records no job to resume", record.id))?;
    let mut run: ClusterDigitsJob = serde_json::from_str(job_json).with_context(|| {
        format!(
            "checkpoint {} does not hold a digits job: SSD and speech runs resume with \
             `kiln detect train --resume` and `kiln speech train --resume`",
            record.id
        )
    })?;
    run.job.progress = !args.no_progress;
    drop(store);
    let config = local_config(args.executors, false, Some(core_share(args.executors)))?;
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let cluster = LocalCluster::start(config, registry()).await?;
        let driver = cluster.driver()?;
        print_join(driver)?;
        let ckpt = CheckpointOptions {
            dir: Some(args.dir.clone()),
            every_iterations: None,
            keep_last: KEEP_CHECKPOINTS,
            resume: true,
        };
        let result = run_digits(driver, &run, &ckpt, args.out.as_deref()).await;
        cluster.shutdown().await;
        result
    })
}

/// Run `kiln local`.
pub(crate) fn local(args: LocalArgs) -> anyhow::Result<()> {
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let mode = if args.in_memory {
            ExecutorMode::InProcessDirect
        } else if args.in_process {
            ExecutorMode::InProcess
        } else {
            executor_process(args.threads.or(Some(core_share(args.executors))))?
        };
        let config = LocalConfig {
            executors: args.executors,
            cores_per_executor: args.cores.max(1),
            mode,
            driver: args
                .job
                .driver_config(SocketAddr::from(([127, 0, 0, 1], 0)), &args.tls),
            startup_timeout: Duration::from_secs(30),
        };
        let cluster = LocalCluster::start(config, registry()).await?;
        let driver = cluster.driver()?;
        print_join(driver)?;
        let result = run_job(driver, &args.job).await;
        cluster.shutdown().await;
        result
    })
}

/// Run `kiln driver`.
pub(crate) fn driver(args: DriverArgs) -> anyhow::Result<()> {
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let driver =
            Driver::start(args.job.driver_config(args.listen, &args.tls), registry()).await?;
        print_join(&driver)?;
        if args.job.job.is_some() {
            driver
                .wait_for_executors(args.expect_executors, Duration::from_secs(120))
                .await?;
        }
        let result = run_job(&driver, &args.job).await;
        driver.shutdown().await;
        result
    })
}

/// Run `kiln executor`.
pub(crate) fn executor(args: ExecutorArgs) -> anyhow::Result<()> {
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
    if let Some(c) = args.cores {
        config.cores = c.max(1);
    }
    let leave = Arc::new(tokio::sync::Notify::new());
    config.leave = Some(leave.clone());
    let rt = tokio_runtime()?;
    rt.block_on(async {
        // SIGTERM or Ctrl-C: leave gracefully (finish running tasks, hand
        // the partitions back); a second signal is not waited for.
        tokio::spawn(async move {
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
            tracing::info!("signal received: leaving the cluster gracefully");
            leave.notify_one();
        });
        run_executor(config, registry()).await
    })?;
    Ok(())
}

/// Run `kiln status`.
pub(crate) fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (token, addr) = transport::parse_join(&args.join)?;
    let rt = tokio_runtime()?;
    let status = rt.block_on(query_status(addr, &token, Duration::from_secs(10)))?;
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
