//! `kiln checkpoint list|show|export`: inspect a checkpoint store and turn
//! a training checkpoint into a safetensors model file. (`resume` needs a
//! cluster and lives with the cluster commands.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use kiln_nn::layers::LayerConfig;
use kiln_nn::ModuleExt;
use kiln_runtime::checkpoint::{CheckpointRecord, CheckpointStore};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::digits_cluster::META_MODEL;

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
}

fn open(dir: &Path) -> anyhow::Result<CheckpointStore> {
    if !dir.join("manifest").exists() {
        bail!("{} is not a checkpoint store (no manifest)", dir.display());
    }
    CheckpointStore::open(dir, 0).with_context(|| format!("opening {}", dir.display()))
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
        params.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok(params)
}

/// `kiln checkpoint export`: the checkpoint's weights as a model file that
/// `kiln eval --model` (or `kiln_nn::serialize::load`) reads.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let store = open(&args.store.dir)?;
    let r = pick(&store, args.store.id)?;
    let config: LayerConfig = serde_json::from_str(
        r.meta
            .get(META_MODEL)
            .with_context(|| format!("checkpoint {} does not record its model", r.id))?,
    )
    .context("decoding the model config of the checkpoint")?;
    let mut model = config.build::<f32>(&mut StdRng::seed_from_u64(0))?;
    let params = checkpoint_params(&store, &r)?;
    model
        .set_flat_params(&params)
        .with_context(|| format!("checkpoint {} does not fit its model", r.id))?;
    let mut meta = HashMap::new();
    if let Some(job) = r.meta.get(kiln_runtime::train::META_JOB) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(job) {
            if let Some(m) = v.pointer("/job/model").and_then(|m| m.as_str()) {
                meta.insert("kiln.digits_model".to_string(), m.to_string());
            }
        }
    }
    meta.insert("kiln.checkpoint".to_string(), r.id.to_string());
    kiln_nn::serialize::save(model.as_ref(), &args.out, &meta)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "exported checkpoint {} (iteration {}, epoch {}) to {}",
        r.id,
        r.iteration,
        r.epoch,
        args.out.display()
    );
    Ok(())
}
