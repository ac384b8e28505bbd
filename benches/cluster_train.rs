//! Distributed-training benchmarks (issue 4), side by side with torch gloo
//! in one run where a peer exists:
//!
//! * parameter synchronisation (reduce into the parameter actors + weights
//!   back to the executors) of 4, 64 and 256 MB of f32 between 2 executor
//!   processes, against `torch.distributed` gloo `all_reduce` of the same
//!   sizes (benches/peers/gloo_allreduce.py, run from here);
//! * recovery time from `kill -9` of an executor to the next completed
//!   iteration;
//! * checkpoint write time of 100 MB of state, and a checkpoint's share of
//!   a digits epoch;
//! * digits training throughput on 1 and 2 executors, and the LeNet-5
//!   digits job (28x28, batch 128, SGD) in samples/s;
//! * the dashboard's cost to that LeNet-5 job (`ui`, issue 24; not run by
//!   default): with `--ui` and a page open against without, alternating
//!   (`--ui-pairs P`, `--ui-epochs E`).
//!
//! ```text
//! cargo build --release && cargo bench --bench cluster_train -- \
//!     [--kiln target/release/kiln] [--python ~/.cache/kiln-anchors/venv/bin/python] [--only sync,recovery,checkpoint,throughput]
//!     [--sync-sizes 4,64,256] [--sync-placements driver,executors,executors_replicated]
//!     [--ui-pairs 6] [--ui-epochs 100]
//! ```
//! Prints one JSON line per measurement.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::cli::cluster::{core_share, executor_args};
use kiln::digits::DigitsModel;
use kiln::jobs::digits::{
    ClassifierConfig, DigitsSettings, DigitsSource, CLASSIFIER_TRAINER, DIGITS_SOURCE,
};
use kiln::jobs::{JobEnv, JobKinds};
use kiln::nn::objective::LabelledSample;
use kiln::nn::optim::{OptimizerConfig, SgdConfig};
use kiln::runtime::checkpoint::{CheckpointRecord, CheckpointStore};
use kiln::runtime::jobs::JobEvent;
use kiln::runtime::train::{ParameterShards, ShardPlacement};
use kiln::runtime::{
    ClusterClient, DistributedTrainer, Driver, DriverConfig, ExecutorMode, JobState, LocalCluster,
    LocalConfig, Registry, TrainSpec,
};
use kiln::training::{
    optimizer_factory, placement, CheckpointSettings, RunSettings, TrainingSettings,
    SYNC_BENCH_TRAINER,
};

const MB: usize = 1 << 20;

struct Opts {
    kiln: PathBuf,
    python: Option<PathBuf>,
    only: Vec<String>,
    /// Sizes (MB) and placements the sync measurement runs.
    sync_sizes: Vec<usize>,
    sync_placements: Vec<String>,
    /// Pairs of runs and epochs per run of the dashboard's cost.
    ui_pairs: usize,
    ui_epochs: u64,
}

#[path = "cluster_train/ui_cost.rs"]
mod ui_cost;

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let mut o = Opts {
        kiln: PathBuf::from("target/release/kiln"),
        python: std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/kiln-anchors/venv/bin/python"))
            .filter(|p| p.exists()),
        only: vec![
            "sync".into(),
            "recovery".into(),
            "checkpoint".into(),
            "throughput".into(),
        ],
        sync_sizes: vec![4, 64, 256],
        sync_placements: vec![
            "driver".into(),
            "executors".into(),
            "executors_replicated".into(),
        ],
        ui_pairs: 6,
        ui_epochs: 100,
    };
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--kiln" => o.kiln = PathBuf::from(&v),
            "--python" => o.python = Some(PathBuf::from(&v)),
            "--only" => o.only = v.split(',').map(str::to_string).collect(),
            "--sync-sizes" => o.sync_sizes = v.split(',').filter_map(|s| s.parse().ok()).collect(),
            "--sync-placements" => o.sync_placements = v.split(',').map(str::to_string).collect(),
            "--ui-pairs" => o.ui_pairs = v.parse().unwrap_or(o.ui_pairs).max(1),
            "--ui-epochs" => o.ui_epochs = v.parse().unwrap_or(o.ui_epochs).max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// A local cluster of `executors` processes with the driver's default
/// heartbeat and loss timeout (5 s), each executor with its share of the
/// machine's cores (as `kiln local` starts them).
fn cluster_config(o: &Opts, executors: usize) -> LocalConfig {
    cluster_with_threads(o, executors, core_share(executors))
}

/// [`cluster_config`] with `threads` compute threads per executor.
fn cluster_with_threads(o: &Opts, executors: usize, threads: usize) -> LocalConfig {
    LocalConfig {
        executors,
        cores_per_executor: 1,
        mode: ExecutorMode::Processes {
            program: o.kiln.clone(),
            args: executor_args(Some(threads)),
        },
        driver: DriverConfig::default(),
        startup_timeout: Duration::from_secs(30),
    }
}

/// As [`cluster_config`], with a 100 ms heartbeat and a 1 s loss timeout:
/// for the recovery measurement only (on a loaded machine a busy driver
/// can miss a 1 s deadline, so the other measurements keep the default).
fn quick_loss_config(o: &Opts, executors: usize) -> LocalConfig {
    LocalConfig {
        driver: DriverConfig {
            heartbeat: Duration::from_millis(100),
            executor_timeout: Duration::from_millis(1000),
            ..DriverConfig::default()
        },
        ..cluster_config(o, executors)
    }
}

fn registry() -> Arc<Registry> {
    JobKinds::builtin().registry()
}

/// A local cluster whose driver runs the built-in job kinds (its jobs'
/// directories in the returned temporary directory).
async fn job_cluster(config: LocalConfig) -> anyhow::Result<(LocalCluster, tempfile::TempDir)> {
    let work = tempfile::tempdir()?;
    let cluster = LocalCluster::start(config, registry()).await?;
    cluster
        .driver()?
        .accept_jobs(JobKinds::builtin().runner(JobEnv::here()), work.path())?;
    Ok((cluster, work))
}

/// Submits a job as `kiln submit` does and returns its output lines.
async fn run_job(d: &Driver, kind: &str, settings: &str) -> anyhow::Result<Vec<String>> {
    let client = ClusterClient::connect(d.addr(), d.token(), Duration::from_secs(30)).await?;
    let job = client.submit(kind, settings).await?;
    let mut lines = Vec::new();
    let info = client
        .follow(job.id, 0, true, |e| {
            if let JobEvent::Line { text, .. } = e {
                lines.push(text.clone());
            }
        })
        .await?;
    anyhow::ensure!(
        info.state == JobState::Succeeded,
        "job {} {}: {lines:?}",
        job.id,
        info.state
    );
    Ok(lines)
}

/// The value of `key=` on the line starting with `prefix`.
fn field(lines: &[String], prefix: &str, key: &str) -> anyhow::Result<f64> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no {key}= on a {prefix} line: {lines:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig {
        lr: 0.01,
        ..SgdConfig::default()
    })
}

async fn sync(o: &Opts) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(cluster_config(o, 2), registry()).await?;
    let d = cluster.driver()?;
    let data = d.parallelize(vec![0u64, 1], 2)?;
    let placements = [
        ("driver", ShardPlacement::Driver),
        ("executors", placement(&sgd(), 1)?),
        ("executors_replicated", placement(&sgd(), 2)?),
    ];
    for &mb in &o.sync_sizes {
        for (placement, where_) in &placements {
            if !o.sync_placements.iter().any(|p| p == placement) {
                continue;
            }
            let n = mb * MB / 4;
            let mut spec = TrainSpec::new(SYNC_BENCH_TRAINER, &n, 2, 1_000, 1, 0.01)?;
            spec.shards = 2;
            spec.placement = where_.clone();
            let mut t =
                DistributedTrainer::start(&data, spec, vec![0.0; n], optimizer_factory(sgd()))
                    .await?;
            t.step().await?;
            let iters = if mb <= 4 {
                20
            } else if mb <= 64 {
                6
            } else {
                3
            };
            let mut ts = Vec::new();
            for _ in 0..iters {
                let s = Instant::now();
                t.step().await?;
                ts.push(s.elapsed().as_secs_f64());
            }
            t.finish().await?;
            let secs = median(ts);
            println!(
            "{{\"bench\":\"param_sync\",\"placement\":\"{placement}\",\"mb\":{mb},\"executors\":2,\"seconds\":{secs:.5},\"algbw_gb_s\":{:.3}}}",
            (mb * MB) as f64 / secs / 1e9
        );
        }
    }
    cluster.shutdown().await;
    if let Some(py) = &o.python {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/peers/gloo_allreduce.py"
        );
        let out = Command::new(py)
            .arg(script)
            .args(o.sync_sizes.iter().map(|s| s.to_string()))
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("gloo peer failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    } else {
        eprintln!("no python with torch: gloo peer skipped (--python PATH)");
    }
    Ok(())
}

/// A digits job's settings (shards on the executors, 2 copies: the
/// default of `kiln local`), as JSON.
fn digits(
    model: DigitsModel,
    epochs: u64,
    batch: usize,
    lr: f64,
    partitions: u32,
    replicas: usize,
    checkpoint_dir: Option<PathBuf>,
) -> anyhow::Result<String> {
    let settings = TrainingSettings {
        job: DigitsSettings {
            model,
            epochs,
            batch_size: batch,
            learning_rate: lr,
            ..DigitsSettings::default()
        },
        run: RunSettings {
            partitions: Some(partitions),
            shards: Some(4),
            shard_replicas: replicas,
            checkpoint: CheckpointSettings {
                dir: checkpoint_dir,
                keep_last: 2,
                ..CheckpointSettings::default()
            },
            stage: false,
            tensorboard: None,
        },
    };
    Ok(serde_json::to_string(&settings)?)
}

async fn recovery(o: &Opts) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(quick_loss_config(o, 3), registry()).await?;
    let d = cluster.driver()?;
    let job = DigitsSettings::default();
    let data = d.source::<_, LabelledSample>(
        DIGITS_SOURCE,
        &DigitsSource {
            file: d.publish(&job.data)?,
            stage: false,
            model: DigitsModel::Cnn,
            held_out: false,
        },
        3,
    )?;
    let config = ClassifierConfig {
        model: kiln::digits::digits_cnn(),
        sample_shape: vec![1, 8, 8],
    };
    let init = kiln::nn::ModuleExt::flat_params(
        kiln::digits::digits_cnn()
            .build::<f32>(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1))?
            .as_ref(),
    );
    let spec = TrainSpec::new(CLASSIFIER_TRAINER, &config, 32, 3, 1, 0.05)?;
    let mut t = DistributedTrainer::start(&data, spec, init, optimizer_factory(sgd())).await?;
    let mut normal = Vec::new();
    for _ in 0..20 {
        normal.push(t.step().await?.seconds);
    }
    let victim = cluster.child_pids()[1];
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()?;
    t.step().await?;
    let recovery = killed.elapsed().as_secs_f64();
    t.finish().await?;
    cluster.shutdown().await;
    println!(
        "{{\"bench\":\"recovery\",\"executors\":3,\"executor_timeout_s\":1.0,\"normal_iteration_s\":{:.4},\"kill_to_next_iteration_s\":{recovery:.3}}}",
        median(normal)
    );
    Ok(())
}

async fn checkpoint(o: &Opts) -> anyhow::Result<()> {
    // 100 MB of state: 12.5M parameters + SGD momentum buffers.
    let n = 100 * MB / 8;
    let momentum = OptimizerConfig::Sgd(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..SgdConfig::default()
    });
    let shards = ParameterShards::spawn(&vec![0.5; n], 4, &optimizer_factory(momentum)).await?;
    shards.accumulate(Arc::new(vec![1e-3; n]))?;
    shards.step(1.0, 0.01).await?;
    let dir = tempfile::tempdir()?;
    let claim = kiln::runtime::checkpoint::StoreClaim::NewRun {
        kind: "bench".into(),
    };
    let store = CheckpointStore::claim(dir.path(), &claim, 2)?;
    let mut ts = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        let id = store.next_id()?;
        let blobs = shards.snapshot(dir.path(), id).await?;
        let mut r = CheckpointRecord::new(id, 0, 0);
        r.blobs = blobs;
        store.commit(&r)?;
        ts.push(s.elapsed().as_secs_f64());
    }
    shards.stop().await;
    let secs = median(ts);
    println!(
        "{{\"bench\":\"checkpoint_write\",\"mb\":100,\"seconds\":{secs:.3},\"mb_s\":{:.0}}}",
        100.0 / secs
    );
    // A checkpoint's share of a digits epoch (the README's job): one
    // warm-up run (connections, trainer pools), then runs with and without
    // a checkpoint at every epoch, alternating, medians compared.
    let (cluster, _work) = job_cluster(cluster_config(o, 2)).await?;
    let d = cluster.driver()?;
    let dir = tempfile::tempdir()?;
    let epochs = 3;
    let with = digits(
        DigitsModel::Cnn,
        epochs,
        32,
        0.05,
        2,
        2,
        Some(dir.path().to_path_buf()),
    )?;
    let without = digits(DigitsModel::Cnn, epochs, 32, 0.05, 2, 2, None)?;
    run_job(d, "digits", &without).await?;
    let (mut with_ts, mut without_ts, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        // A fresh store each time: every run writes all its checkpoints.
        std::fs::remove_dir_all(dir.path())?;
        let s = Instant::now();
        let lines = run_job(d, "digits", &with).await?;
        with_ts.push(s.elapsed().as_secs_f64());
        // Measured inside the run: the checkpoints' share of the epochs.
        shares.push(
            field(&lines, "TIMES", "checkpoint_s")? / field(&lines, "TIMES", "training_s")? * 100.0,
        );
        let s = Instant::now();
        run_job(d, "digits", &without).await?;
        without_ts.push(s.elapsed().as_secs_f64());
    }
    cluster.shutdown().await;
    let (with_s, without_s) = (median(with_ts), median(without_ts));
    println!(
        "{{\"bench\":\"checkpoint_overhead\",\"job\":\"digits cnn, {epochs} epochs, checkpoint every epoch, median of 3 alternating runs\",\"with_s\":{with_s:.3},\"without_s\":{without_s:.3},\"overhead_pct\":{:.2},\"checkpoint_share_pct\":{:.2}}}",
        (with_s - without_s) / without_s * 100.0,
        median(shares)
    );
    Ok(())
}

async fn throughput(o: &Opts) -> anyhow::Result<()> {
    for (model, batch, lr, epochs) in [
        (DigitsModel::Cnn, 32usize, 0.05, 3u64),
        (DigitsModel::Lenet5, 128, 0.1, 20),
    ] {
        // Shards on the executors with 2 copies (the default) and in the
        // driver (0), side by side; each executor with its share of the
        // cores (the default of `kiln local`) and, for comparison, with
        // all of them.
        let share = core_share;
        // share(1): all of the machine's cores
        for (executors, replicas, threads) in [
            (1usize, 2usize, share(1)),
            (2, 2, share(2)),
            (2, 0, share(2)),
            (2, 2, share(1)),
        ] {
            let config = cluster_with_threads(o, executors, threads);
            let (cluster, _work) = job_cluster(config).await?;
            let d = cluster.driver()?;
            let run = digits(model, epochs, batch, lr, executors as u32, replicas, None)?;
            let s = Instant::now();
            let lines = run_job(d, "digits", &run).await?;
            let secs = s.elapsed().as_secs_f64();
            cluster.shutdown().await;
            let accuracy = lines
                .iter()
                .find_map(|l| l.strip_prefix("HELD-OUT-ACCURACY "))
                .and_then(|a| a.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            println!(
                "{{\"bench\":\"digits_throughput\",\"model\":\"{model:?}\",\"batch\":{batch},\"epochs\":{epochs},\"executors\":{executors},\"executor_threads\":{threads},\"shard_replicas\":{replicas},\"samples_per_s\":{:.0},\"iteration_samples_per_s\":{:.0},\"seconds\":{secs:.2},\"held_out_accuracy\":{accuracy:.4}}}",
                field(&lines, "TIMES", "samples_per_s")?,
                field(&lines, "TIMES", "iteration_samples_per_s")?,
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`:
        // these need a release build and minutes of machine time, so only
        // `cargo bench` runs them.
        println!(
            "cluster_train: run with `cargo bench --bench cluster_train`; skipped under cargo test"
        );
        return Ok(());
    }
    let o = opts();
    if !o.kiln.exists() {
        anyhow::bail!(
            "{} not found: cargo build --release first, or pass --kiln PATH",
            o.kiln.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for b in &o.only {
            match b.as_str() {
                "sync" => sync(&o).await?,
                "recovery" => recovery(&o).await?,
                "checkpoint" => checkpoint(&o).await?,
                "throughput" => throughput(&o).await?,
                "ui" => ui_cost::ui_cost(&o, o.ui_pairs, o.ui_epochs).await?,
                other => eprintln!("unknown benchmark {other}"),
            }
        }
        Ok(())
    })
}
