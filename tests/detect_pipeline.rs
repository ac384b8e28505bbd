//! `kiln detect train → eval → predict → score` on six committed shapes
//! images (tests/data/shapes-tiny), as a user would run them, and cluster
//! training with checkpoints then resumed; each command bounded in time and
//! killed by pid if it overruns.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use helpers::s;

/// Runs `kiln args…`, killing it after `limit`.
fn kiln(args: &[&str], limit: Duration) -> Output {
    helpers::kiln_process(args, &[], limit)
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn train_eval_predict_score() {
    let voc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/shapes-tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("ssd.safetensors");
    let config = dir.path().join("train.json");
    std::fs::write(
        &config,
        r#"{"preset": "tiny", "batch_size": 2, "warmup_iters": 2, "lr": 0.005, "log_every": 1}"#,
    )
    .expect("write config");
    let limit = Duration::from_secs(120);
    let out = ok(&kiln(
        &[
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--config",
            s(&config),
            "--out",
            s(&model),
            "--epochs",
            "2",
            "--executors",
            "2",
        ],
        limit,
    ));
    assert!(
        out.contains("trained 2 epochs (4 iterations) on 2 executors"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("EPOCH ")).count(),
        2,
        "{out}"
    );
    assert!(model.exists());
    // The same in one process.
    let single = dir.path().join("single.safetensors");
    let out = ok(&kiln(
        &[
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--config",
            s(&config),
            "--out",
            s(&single),
            "--epochs",
            "1",
        ],
        limit,
    ));
    assert!(out.contains("trained 1 epochs (2 iterations) in"), "{out}");
    assert!(single.exists());

    let out = ok(&kiln(
        &[
            "detect",
            "eval",
            "--voc",
            s(&voc),
            "--model",
            s(&model),
            "--json",
        ],
        limit,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let classes = v["classes"].as_array().expect("classes");
    assert_eq!(classes.len(), 6);
    let map = v["map"].as_f64().expect("map");
    assert!((0.0..=1.0).contains(&map), "{out}");
    let out = ok(&kiln(
        &[
            "detect",
            "eval",
            "--voc",
            s(&voc),
            "--model",
            s(&model),
            "--metric",
            "area",
        ],
        limit,
    ));
    assert!(out.contains("mAP"), "{out}");

    let pred = dir.path().join("pred");
    let images: Vec<PathBuf> = ["000040", "000374"]
        .iter()
        .map(|id| voc.join("JPEGImages").join(format!("{id}.jpg")))
        .collect();
    let out = ok(&kiln(
        &[
            "detect",
            "predict",
            "--model",
            s(&model),
            "--out",
            s(&pred),
            "--threshold",
            "0.01",
            s(&images[0]),
            s(&images[1]),
        ],
        limit,
    ));
    assert!(out.contains("detections written"), "{out}");
    assert!(pred.join("000040.png").exists() && pred.join("000374.png").exists());
    let dets = pred.join("detections.txt");
    let text = std::fs::read_to_string(&dets).expect("detections file");
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert!(fields[0] == "000040" || fields[0] == "000374", "{line}");
    }
    // The file is what `kiln detect score` reads.
    let out = ok(&kiln(
        &[
            "detect",
            "score",
            "--voc",
            s(&voc),
            "--detections",
            s(&dets),
            "--json",
        ],
        limit,
    ));
    assert!(out.contains("\"map\""), "{out}");

    // A missing model is an error naming the file.
    let o = kiln(
        &[
            "detect",
            "eval",
            "--voc",
            s(&voc),
            "--model",
            "/nonexistent/m.safetensors",
        ],
        limit,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/m.safetensors"));
}

/// Weights and batch-norm statistics of an SSD model file.
fn state(path: &Path) -> (Vec<f32>, Vec<f32>) {
    use kiln::nn::ModuleExt;
    let model = kiln::detection::model::Ssd::<f32>::load(path).expect("an SSD model file");
    (model.graph().flat_params(), model.graph().flat_buffers())
}

fn epoch_lines(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("EPOCH "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn cluster_training_checkpoints_every_epoch_and_resumes_from_the_last() {
    let voc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/shapes-tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("ssd.safetensors");
    let ckpt = dir.path().join("ckpt");
    let config = dir.path().join("train.json");
    let settings = r#""preset": "tiny", "batch_size": 2, "warmup_iters": 2, "lr": 0.005"#;
    std::fs::write(&config, format!("{{{settings}}}")).expect("write config");
    let limit = Duration::from_secs(120);
    let train = |epochs: &str, config: &Path, extra: &[&str]| {
        let mut args = vec![
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--config",
            s(config),
            "--out",
            s(&model),
            "--epochs",
            epochs,
            "--executors",
            "2",
            "--checkpoint-dir",
            s(&ckpt),
        ];
        args.extend_from_slice(extra);
        kiln(&args, limit)
    };

    // 2 epochs of 2 iterations, a checkpoint after each.
    let out = ok(&train("2", &config, &[]));
    assert_eq!(epoch_lines(&out), [1, 2], "{out}");
    let checkpoints: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("CHECKPOINT "))
        .collect();
    assert_eq!(checkpoints.len(), 2, "{out}");
    assert!(checkpoints[1].ends_with(" iteration=4"), "{out}");

    // Resumed for a third epoch: it continues after epoch 2.
    // (with the shards in the driver this time: either placement resumes
    // the other's checkpoints)
    let out = ok(&train("3", &config, &["--resume", "--shards-on", "driver"]));
    let resumed = out
        .lines()
        .find(|l| l.starts_with("RESUMED "))
        .unwrap_or_else(|| panic!("no resume report: {out}"));
    assert!(resumed.ends_with(" iteration=4 epoch=2"), "{resumed}");
    assert_eq!(epoch_lines(&out), [3], "{out}");
    assert!(
        out.contains("trained 3 epochs (6 iterations) on 2 executors"),
        "{out}"
    );
    assert!(model.exists());

    // Every epoch's checkpoint is there and verifies.
    let list = ok(&kiln(&["checkpoint", "list", "--dir", s(&ckpt)], limit));
    let rows: Vec<Vec<&str>> = list
        .lines()
        .skip(1)
        .map(|r| r.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{list}");
    for (row, epoch) in rows.iter().zip(["1", "2", "3"]) {
        assert_eq!((row[2], row[4]), (epoch, "ok"), "{list}");
    }

    // Exporting the last checkpoint gives the model training wrote, bit
    // for bit (weights and batch-norm statistics); averaging checkpoints 2
    // and 3 gives the element-wise mean of their exports.
    let export = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["checkpoint", "export", "--dir", s(&ckpt), "--out", s(&out)];
        args.extend_from_slice(extra);
        let text = ok(&kiln(&args, limit));
        (state(&out), text)
    };
    let (last, _) = export("last.safetensors", &[]);
    assert_eq!(last, state(&model));
    let (second, _) = export("second.safetensors", &["--id", "2"]);
    assert_ne!(second, last);
    let (mean, text) = export("mean.safetensors", &["--average-from", "2"]);
    assert!(
        text.contains("exported the average of checkpoints [2, 3]"),
        "{text}"
    );
    let expected = |a: &[f32], b: &[f32]| -> Vec<f32> {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((f64::from(*x) + f64::from(*y)) / 2.0) as f32)
            .collect()
    };
    assert_eq!(mean.0, expected(&second.0, &last.0));
    assert_eq!(mean.1, expected(&second.1, &last.1));
    assert!(!mean.1.is_empty(), "the tiny preset has batch norm");
    // The averaged model is a working SSD model file.
    let eval = ok(&kiln(
        &[
            "detect",
            "eval",
            "--voc",
            s(&voc),
            "--split",
            "train",
            "--model",
            s(&dir.path().join("mean.safetensors")),
        ],
        limit,
    ));
    assert!(eval.contains("mAP"), "{eval}");

    // Resuming with another augmentation is refused, naming the setting.
    let other = dir.path().join("other.json");
    std::fs::write(&other, format!("{{{settings}, \"photometric\": false}}")).expect("write");
    let o = train("4", &other, &["--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("detection.train.photometric = true, this run has false"),
        "{err}"
    );

    // Checkpoints need the cluster; --resume needs a store.
    let o = kiln(
        &[
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--checkpoint-dir",
            s(&ckpt),
        ],
        limit,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("need --executors"));
    let o = kiln(&["detect", "train", "--voc", s(&voc), "--resume"], limit);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--checkpoint-dir"));
}
