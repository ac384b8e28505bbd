//! `kiln checkpoint list|show|export|resume`: inspect a checkpoint store,
//! turn a training checkpoint (or the average of several) into the model
//! file of the job that wrote it, and continue its run. Every checkpoint
//! records its job kind and settings, so none of this guesses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::builder::TypedValueParser as _;
use clap::Args;
use kiln_runtime::checkpoint::{CheckpointRecord, CheckpointStore};
use kiln_runtime::train::{bytes_to_f32, BUFFERS_BLOB};

use super::cluster::{core_share, run_local, LocalClusterArgs, DEFAULT_EXECUTORS};
use super::job_args::{JobCommand, ResumeArgs as ResumeJobArgs};
use super::submit::{connect, submit_and_follow};
use super::tokio_runtime;
use crate::jobs::JobKinds;
use crate::training::resume::checkpointed_job;

/// Which store (and checkpoint) a command works on.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The checkpoint directory (as given to `--checkpoint-dir`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Checkpoint id; default: the newest one that verifies.
    #[arg(long)]
    pub id: Option<u64>,
}

/// Arguments of `kiln checkpoint export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    /// The store and checkpoint.
    pub store: StoreArgs,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Average the weights and batch-norm statistics of every checkpoint
    /// from this id up to the chosen one (checkpoint averaging, as in
    /// stochastic weight averaging: best over epochs at a constant,
    /// not yet decayed learning rate). Every one of them must verify.
    #[arg(long, value_name = "ID")]
    pub average_from: Option<u64>,
}

/// Opens a store to inspect (changing nothing); says on stderr what was
/// rebuilt if its manifest is corrupt.
fn open(dir: &Path) -> anyhow::Result<CheckpointStore> {
    let store = CheckpointStore::open_for_reading(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    if let Some(r) = store.recovery() {
        eprintln!(
            "the manifest of {} is corrupt ({}): read the checkpoints' own records instead; intact: {:?}; left out: {}. \
             The next run that continues the store (kiln checkpoint resume --dir {}) rebuilds the manifest and keeps the corrupt one.",
            dir.display(),
            r.reason,
            r.rebuilt,
            if r.left_out.is_empty() {
                "none".to_string()
            } else {
                r.left_out
                    .iter()
                    .map(|s| format!("{} ({})", s.id, s.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            dir.display()
        );
    }
    Ok(store)
}

/// The chosen checkpoint, verified; for the default choice, newer corrupt
/// ones are reported on stderr.
fn pick(store: &CheckpointStore, id: Option<u64>) -> anyhow::Result<CheckpointRecord> {
    match id {
        Some(id) => Ok(store.verify(id)?),
        None => {
            let (record, skipped) = store.latest_valid()?;
            for s in skipped {
                eprintln!("skipped checkpoint {}: {}", s.id, s.reason);
            }
            Ok(record)
        }
    }
}

/// `kiln checkpoint list`: every committed checkpoint and whether it verifies.
pub fn list(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open(&args.dir)?;
    if let Ok((record, _)) = store.latest_valid() {
        if let Ok((kind, _)) = checkpointed_job(&args.dir, &record) {
            eprintln!("{}: the store of a {kind} job", args.dir.display());
        }
    }
    println!(
        "{:>6}  {:>9}  {:>5}  {:>10}  status",
        "id", "iteration", "epoch", "bytes"
    );
    for id in store.ids()? {
        match store.verify(id) {
            Ok(r) => println!(
                "{:>6}  {:>9}  {:>5}  {:>10}  ok",
                r.id,
                r.iteration,
                r.epoch,
                r.total_bytes()
            ),
            Err(e) => println!("{id:>6}  {:>9}  {:>5}  {:>10}  CORRUPT: {e}", "-", "-", "-"),
        }
    }
    Ok(())
}

/// `kiln checkpoint show`: one checkpoint's record as JSON.
pub fn show(args: &StoreArgs) -> anyhow::Result<()> {
    let store = open(&args.dir)?;
    let r = pick(&store, args.id)?;
    let blobs: Vec<serde_json::Value> = r
        .blobs
        .iter()
        .map(|b| serde_json::json!({"name": b.name, "bytes": b.len, "crc32": format!("{:08x}", b.crc32)}))
        .collect();
    let v = serde_json::json!({
        "id": r.id,
        "iteration": r.iteration,
        "epoch": r.epoch,
        "created_unix_ms": r.created_unix_ms,
        "format_version": r.format_version,
        "blobs": blobs,
        "meta": r.meta,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The full parameter vector of a training checkpoint (shards in order).
pub fn checkpoint_params(
    store: &CheckpointStore,
    record: &CheckpointRecord,
) -> anyhow::Result<Vec<f32>> {
    let mut params = Vec::new();
    for i in 0.. {
        let name = format!("params.shard.{i}");
        if record.blob(&name).is_none() {
            if i == 0 {
                bail!("checkpoint {} has no parameter shards", record.id);
            }
            break;
        }
        let bytes = store.read(record, &name)?;
        params.extend(bytes_to_f32(
            &bytes,
            &format!("checkpoint {}: {name}", record.id),
        )?);
    }
    Ok(params)
}

/// The batch-norm statistics of a training checkpoint (empty if the model
/// has none).
pub fn checkpoint_buffers(
    store: &CheckpointStore,
    record: &CheckpointRecord,
) -> anyhow::Result<Vec<f32>> {
    if record.blob(BUFFERS_BLOB).is_none() {
        return Ok(Vec::new());
    }
    let bytes = store.read(record, BUFFERS_BLOB)?;
    Ok(bytes_to_f32(
        &bytes,
        &format!("checkpoint {}: {BUFFERS_BLOB}", record.id),
    )?)
}

/// The element-wise mean (accumulated in f64) of equally long vectors,
/// named by `what` and their checkpoint ids in the error if they differ.
fn mean_of(what: &str, vectors: &[(u64, Vec<f32>)]) -> anyhow::Result<Vec<f32>> {
    let Some((first_id, first)) = vectors.first() else {
        bail!("nothing to average");
    };
    let mut sum: Vec<f64> = vec![0.0; first.len()];
    for (id, v) in vectors {
        if v.len() != first.len() {
            bail!(
                "checkpoint {id} has {} {what} values, checkpoint {first_id} has {}: not the same model",
                v.len(),
                first.len()
            );
        }
        for (s, x) in sum.iter_mut().zip(v) {
            *s += f64::from(*x);
        }
    }
    let n = vectors.len() as f64;
    Ok(sum.into_iter().map(|s| (s / n) as f32).collect())
}

/// Parameters and buffers of `record`, or with `average_from`, their mean
/// over every checkpoint with an id from `average_from` to `record`'s
/// (each verified; a corrupt one is an error naming it). Returns the
/// checkpoints used.
pub fn checkpoint_state(
    store: &CheckpointStore,
    record: &CheckpointRecord,
    average_from: Option<u64>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<u64>)> {
    let Some(from) = average_from else {
        return Ok((
            checkpoint_params(store, record)?,
            checkpoint_buffers(store, record)?,
            vec![record.id],
        ));
    };
    if from > record.id {
        bail!(
            "--average-from {from} is after the chosen checkpoint {}",
            record.id
        );
    }
    let ids: Vec<u64> = store
        .ids()?
        .into_iter()
        .filter(|id| (from..=record.id).contains(id))
        .collect();
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    for &id in &ids {
        let r = store
            .verify(id)
            .with_context(|| format!("checkpoint {id}, one of those to average"))?;
        params.push((id, checkpoint_params(store, &r)?));
        buffers.push((id, checkpoint_buffers(store, &r)?));
    }
    Ok((
        mean_of("parameter", &params)?,
        mean_of("buffer", &buffers)?,
        ids,
    ))
}

/// Writes the model of the job that wrote `record` (as its kind and
/// settings say), with `params` and `buffers`, to `out`.
fn write_model(
    kinds: &JobKinds,
    dir: &Path,
    record: &CheckpointRecord,
    params: &[f32],
    buffers: &[f32],
    out: &Path,
) -> anyhow::Result<()> {
    let (kind, settings) = checkpointed_job(dir, record)?;
    kinds
        .get(&kind)?
        .export(&settings, params, buffers, out)
        .with_context(|| {
            format!(
                "writing checkpoint {}'s {kind} model to {}",
                record.id,
                out.display()
            )
        })
}

/// `kiln checkpoint export`: the checkpoint's weights (or the average of a
/// range of checkpoints) as the model file of the job that wrote it: a
/// digits model for `kiln eval --model`, an SSD model for `kiln detect
/// eval|predict`, a DS2 model for `kiln speech`, or a user kind's.
pub fn export(args: &ExportArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    crate::output_paths::check_output_file("--out", &args.out)?;
    let store = open(&args.store.dir)?;
    let r = pick(&store, args.store.id)?;
    let (params, buffers, used) = checkpoint_state(&store, &r, args.average_from)?;
    write_model(kinds, &args.store.dir, &r, &params, &buffers, &args.out)?;
    if used.len() > 1 {
        println!(
            "exported the average of checkpoints {used:?} (up to iteration {}, epoch {}) to {}",
            r.iteration,
            r.epoch,
            args.out.display()
        );
    } else {
        println!(
            "exported checkpoint {} (iteration {}, epoch {}) to {}",
            r.id,
            r.iteration,
            r.epoch,
            args.out.display()
        );
    }
    Ok(())
}

/// `kiln checkpoint resume` (and `kiln train --resume`): continue the
/// run of a store from its newest valid checkpoint.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The checkpoint store of the run (with `--cluster`: on the driver's
    /// host).
    #[arg(long)]
    pub dir: PathBuf,
    /// Submit the resumed run to this cluster (`TOKEN@HOST:PORT`) instead
    /// of starting a local one.
    #[arg(long, value_name = "TOKEN@HOST:PORT")]
    pub cluster: Option<String>,
    /// Executors of the new local cluster (without --cluster).
    #[arg(long, default_value_t = DEFAULT_EXECUTORS, value_parser = clap::value_parser!(u64).range(1..=1024).map(|n| n as usize))]
    pub executors: usize,
    /// Save the trained model here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// The new local cluster's dashboard (without --cluster).
    #[command(flatten)]
    pub ui: super::ui::UiArgs,
}

/// Runs `kiln checkpoint resume`: the job and its settings come from the
/// checkpoint (nothing to guess, nothing to repeat).
pub fn resume(args: &ResumeArgs, kinds: &JobKinds) -> anyhow::Result<()> {
    let job = JobCommand::Resume(ResumeJobArgs {
        dir: args.dir.clone(),
        out: args.out.clone(),
        no_progress: args.no_progress,
    })
    .submission()?;
    match &args.cluster {
        Some(_) if args.ui.ui.is_some() => {
            anyhow::bail!("--ui serves a new local cluster's dashboard; with --cluster, start the dashboard on that cluster's driver (kiln driver --ui)")
        }
        Some(cluster) => tokio_runtime()?.block_on(async {
            let client = connect(cluster).await?;
            submit_and_follow(&client, &job, false).await
        }),
        None => {
            let mut cluster = LocalClusterArgs::with_executors(args.executors);
            cluster.ui = args.ui.clone();
            run_local(&cluster, Some(core_share(args.executors)), Some(job), kinds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_runtime::checkpoint::write_blob;

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A store with checkpoints 1..=3: parameters `[id, 10 id]` in two
    /// shards and buffers `[-id]`.
    fn store_of_three(dir: &Path) -> CheckpointStore {
        let claim = kiln_runtime::checkpoint::StoreClaim::NewRun {
            kind: "digits".into(),
        };
        let store = CheckpointStore::claim(dir, &claim, 0).unwrap();
        for id in 1..=3u64 {
            let x = id as f32;
            let mut r = CheckpointRecord::new(id, id * 10, id);
            r.blobs = vec![
                write_blob(dir, id, "params.shard.0", &bytes(&[x])).unwrap(),
                write_blob(dir, id, "params.shard.1", &bytes(&[10.0 * x])).unwrap(),
                write_blob(dir, id, BUFFERS_BLOB, &bytes(&[-x])).unwrap(),
            ];
            store.commit(&r).unwrap();
        }
        store
    }

    #[test]
    fn a_range_of_checkpoints_averages_parameters_and_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of_three(dir.path());
        let last = store.verify(3).unwrap();
        let (p, b, used) = checkpoint_state(&store, &last, None).unwrap();
        assert_eq!((p, b, used), (vec![3.0, 30.0], vec![-3.0], vec![3]));
        let (p, b, used) = checkpoint_state(&store, &last, Some(2)).unwrap();
        assert_eq!((p, b, used), (vec![2.5, 25.0], vec![-2.5], vec![2, 3]));
        let (p, _, used) = checkpoint_state(&store, &last, Some(1)).unwrap();
        assert_eq!((p, used), (vec![2.0, 20.0], vec![1, 2, 3]));
        // Up to an older one.
        let second = store.verify(2).unwrap();
        let (p, _, used) = checkpoint_state(&store, &second, Some(1)).unwrap();
        assert_eq!((p, used), (vec![1.5, 15.0], vec![1, 2]));
        // A start after the end is refused.
        let err = checkpoint_state(&store, &second, Some(3)).unwrap_err();
        assert!(
            err.to_string().contains("after the chosen checkpoint 2"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_checkpoint_in_the_range_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of_three(dir.path());
        let blob = dir.path().join(format!("blobs/{:020}/params.shard.1", 2));
        let mut raw = std::fs::read(&blob).unwrap();
        let n = raw.len();
        raw[n - 1] ^= 0x40;
        std::fs::write(&blob, raw).unwrap();
        let last = store.verify(3).unwrap();
        let err = checkpoint_state(&store, &last, Some(1)).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("checkpoint 2"), "{text}");
        // Outside the range it does not matter.
        assert!(checkpoint_state(&store, &last, Some(3)).is_ok());
    }

    #[test]
    fn checkpoints_of_different_models_are_not_averaged() {
        let v = [(4, vec![1.0, 2.0]), (5, vec![1.0])];
        let err = mean_of("parameter", &v).unwrap_err().to_string();
        assert!(
            err.contains("checkpoint 5 has 1 parameter values, checkpoint 4 has 2"),
            "{err}"
        );
        assert!(mean_of("parameter", &[]).is_err());
        // The mean is accumulated in f64: no rounding drift over many.
        let many: Vec<(u64, Vec<f32>)> = (0..1000).map(|i| (i, vec![0.1])).collect();
        assert_eq!(mean_of("parameter", &many).unwrap(), vec![0.1]);
    }

    #[test]
    fn a_checkpoint_that_records_no_job_is_refused_on_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_of_three(dir.path());
        let args = ExportArgs {
            store: StoreArgs {
                dir: dir.path().to_path_buf(),
                id: None,
            },
            out: dir.path().join("model.safetensors"),
            average_from: Some(2),
        };
        drop(store);
        let err = format!("{:#}", export(&args, &JobKinds::builtin()).unwrap_err());
        assert!(err.contains("records no job.kind"), "{err}");
        assert!(!args.out.exists());
    }
}
