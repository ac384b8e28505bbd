//! `kiln checkpoint list|show|export`: inspect a checkpoint store and turn
//! a training checkpoint (or the average of several) into the model file of
//! the job that wrote it. (`resume` needs a cluster and lives with the
//! cluster commands.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use kiln_nn::layers::LayerConfig;
use kiln_nn::ModuleExt;
use kiln_runtime::checkpoint::{CheckpointRecord, CheckpointStore};
use kiln_runtime::train::{bytes_to_f32, BUFFERS_BLOB};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::detect_cluster::ssd_from_checkpoint;
use crate::digits_cluster::META_MODEL;
use crate::speech_cluster::ds2_from_checkpoint;

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

/// Opens a store to inspect; while a running job holds it, a snapshot of
/// its manifest (said on stderr).
fn open(dir: &Path) -> anyhow::Result<CheckpointStore> {
    let store = CheckpointStore::open_for_reading(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    if store.is_snapshot() {
        eprintln!(
            "{} is in use by a running job: reading a snapshot of its checkpoints as of now",
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

/// Writes the model of the job that wrote `record` (digits, SSD or DS2),
/// with `params` and `buffers`, to `out`.
fn write_model(
    record: &CheckpointRecord,
    params: &[f32],
    buffers: &[f32],
    out: &Path,
) -> anyhow::Result<()> {
    let writing = || format!("writing {}", out.display());
    if let Some(model) = ssd_from_checkpoint(&record.meta, params, buffers)
        .with_context(|| format!("checkpoint {} does not fit its SSD model", record.id))?
    {
        return model.save(out).with_context(writing);
    }
    if let Some(model) = ds2_from_checkpoint(&record.meta, params, buffers)
        .with_context(|| format!("checkpoint {} does not fit its DS2 model", record.id))?
    {
        return model.save(out).with_context(writing);
    }
    let config: LayerConfig = serde_json::from_str(record.meta.get(META_MODEL).with_context(
        || {
            format!(
                "checkpoint {} does not record its model (not written by a digits, SSD or speech job)",
                record.id
            )
        },
    )?)
    .context("decoding the model config of the checkpoint")?;
    let mut model = config.build::<f32>(&mut StdRng::seed_from_u64(0))?;
    model
        .set_flat_params(params)
        .with_context(|| format!("checkpoint {} does not fit its model", record.id))?;
    if !buffers.is_empty() {
        model
            .set_flat_buffers(buffers)
            .with_context(|| format!("checkpoint {} does not fit its model", record.id))?;
    }
    let mut meta = HashMap::new();
    if let Some(job) = record.meta.get(kiln_runtime::train::META_JOB) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(job) {
            if let Some(m) = v.pointer("/job/model").and_then(|m| m.as_str()) {
                meta.insert("kiln.digits_model".to_string(), m.to_string());
            }
        }
    }
    meta.insert("kiln.checkpoint".to_string(), record.id.to_string());
    kiln_nn::serialize::save(model.as_ref(), out, &meta).with_context(writing)
}

/// `kiln checkpoint export`: the checkpoint's weights (or the average of a
/// range of checkpoints) as the model file of the job that wrote it: a
/// digits model for `kiln eval --model`, an SSD model for `kiln detect
/// eval|predict`, a DS2 model for `kiln speech`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let store = open(&args.store.dir)?;
    let r = pick(&store, args.store.id)?;
    let (params, buffers, used) = checkpoint_state(&store, &r, args.average_from)?;
    write_model(&r, &params, &buffers, &args.out)?;
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
        let store = CheckpointStore::open(dir, 0).unwrap();
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
    fn a_checkpoint_of_no_known_job_is_refused_on_export() {
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
        let err = format!("{:#}", export(&args).unwrap_err());
        assert!(
            err.contains("checkpoint 3 does not record its model"),
            "{err}"
        );
        assert!(!args.out.exists());
    }
}
