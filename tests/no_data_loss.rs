//! Nothing a user has is lost to a careless command: a checkpoint store
//! belongs to the run that created it (another run or kind is refused and
//! the store is left as it was), reading commands create nothing, an
//! output that cannot be written is refused before any training, and a
//! corrupt manifest is rebuilt from the checkpoints' own records.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use helpers::{kiln_output, root, s};

const LIMIT: Duration = Duration::from_secs(180);

/// Every file under `dir` with its length and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable") {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().expect("mtime")));
        }
    }
    out.sort();
    out
}

/// A one-epoch digits run on a local cluster of one executor.
fn digits(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "local",
        "--executors",
        "1",
        "digits",
        "--epochs",
        "1",
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    kiln_output(&args, LIMIT)
}

#[test]
fn a_store_belongs_to_its_run_and_other_runs_are_refused_without_touching_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    let (ok, out, err) = digits(&["--checkpoint-dir", s(&ckpt)]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("CHECKPOINT 1 "), "{out}");
    let before = listing(&ckpt);

    // Another digits run, then a speech run, pointed at the store.
    let (ok, out, err) = digits(&["--checkpoint-dir", s(&ckpt)]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("belongs to a digits run") && err.contains("run id"),
        "{err}"
    );
    assert!(!out.contains("TRAINING"), "{out}");
    let corpus = root().join("apps/speech/tests/fixtures/librispeech");
    let (ok, out, err) = kiln_output(
        &[
            "speech",
            "train",
            "--data",
            s(&corpus),
            "--train-split",
            "mini",
            "--executors",
            "1",
            "--epochs",
            "1",
            "--checkpoint-dir",
            s(&ckpt),
            "--out",
            s(&dir.path().join("ds2.safetensors")),
            "--no-progress",
        ],
        LIMIT,
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("belongs to a digits run") && err.contains("a new speech run"),
        "{err}"
    );
    // Said once, not repeated by the error's causes.
    assert_eq!(err.matches("belongs to").count(), 1, "{err}");
    assert_eq!(listing(&ckpt), before, "the store was changed");

    // Its own run continues it.
    let (ok, out, err) = kiln_output(
        &[
            "checkpoint",
            "resume",
            "--dir",
            s(&ckpt),
            "--executors",
            "1",
            "--no-progress",
        ],
        LIMIT,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("RESUMED 1 "), "{out}");
}

#[test]
fn reading_commands_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    std::fs::write(plain.join("notes.txt"), "mine").expect("write");
    let missing = dir.path().join("missing");
    for d in [&plain, &missing] {
        for args in [
            vec!["checkpoint", "resume", "--dir", s(d), "--executors", "1"],
            vec!["checkpoint", "list", "--dir", s(d)],
            vec!["checkpoint", "show", "--dir", s(d)],
        ] {
            let (ok, out, err) = kiln_output(&args, LIMIT);
            assert!(!ok, "{args:?}: {out}");
            assert!(err.contains(s(d)), "{args:?}: {err}");
        }
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&plain).expect("dir").count(), 1);
    // A new store does not go into a directory holding other files.
    let (ok, _, err) = digits(&["--checkpoint-dir", s(&plain)]);
    assert!(!ok);
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read_dir(&plain).expect("dir").count(), 1);
}

#[test]
fn an_output_that_cannot_be_written_is_refused_before_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let into_missing = dir.path().join("no-such-dir/model.safetensors");
    let (ok, out, err) = digits(&["--out", s(&into_missing)]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("--out") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!out.contains("TRAINING") && !out.contains("EPOCH"), "{out}");
    // A checkpoint store where nothing can be created (even by root).
    let (ok, out, err) = digits(&["--checkpoint-dir", "/proc/kiln-store"]);
    assert!(!ok, "{out}");
    assert!(err.contains("run.checkpoint.dir"), "{err}");
    assert!(!out.contains("TRAINING"), "{out}");
}

#[test]
fn a_corrupt_manifest_is_rebuilt_from_the_checkpoints_and_the_run_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    let (ok, out, err) = digits(&["--checkpoint-dir", s(&ckpt)]);
    assert!(ok, "{out}\n{err}");
    for e in std::fs::read_dir(ckpt.join("manifest")).expect("manifest") {
        let p = e.expect("entry").path();
        if p.is_file() {
            let mut bytes = std::fs::read(&p).expect("read");
            let n = bytes.len();
            bytes[n / 4..n * 3 / 4].fill(0xa5);
            std::fs::write(&p, bytes).expect("write");
        }
    }
    let (ok, out, err) = kiln_output(&["checkpoint", "list", "--dir", s(&ckpt)], LIMIT);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("is corrupt") && err.contains("intact: [1]"),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.ends_with("ok")),
        "{out}"
    );
    let (ok, out, err) = kiln_output(
        &[
            "checkpoint",
            "resume",
            "--dir",
            s(&ckpt),
            "--executors",
            "1",
            "--no-progress",
        ],
        LIMIT,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("RECOVERED "), "{out}");
    assert!(out.contains("RESUMED 1 "), "{out}");
    let kept = std::fs::read_dir(&ckpt)
        .expect("store")
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("manifest.corrupt-")
        });
    assert!(kept, "the corrupt manifest is kept");
}

#[test]
fn every_command_that_writes_checks_its_output_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let model = s(&missing.join("m.safetensors")).to_string();
    let voc = root().join("tests/data/shapes-tiny");
    let trans =
        root().join("apps/speech/tests/fixtures/librispeech/mini/4490/90921/4490-90921.trans.txt");
    for args in [
        vec!["train", "--epochs", "1", "--out", &model],
        vec![
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--epochs",
            "1",
            "--out",
            &model,
        ],
        vec!["speech", "lm", "--order", "2", "--out", &model, s(&trans)],
        vec![
            "checkpoint",
            "export",
            "--dir",
            s(dir.path()),
            "--out",
            &model,
        ],
    ] {
        let (ok, out, err) = kiln_output(&args, LIMIT);
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.contains("--out") && err.contains("does not exist"),
            "{args:?}: {err}"
        );
    }
    // A predictions folder where nothing can be created.
    let (ok, _, err) = kiln_output(
        &[
            "detect",
            "predict",
            "--model",
            s(&dir.path().join("none.safetensors")),
            "--out",
            "/proc/kiln-predictions",
            s(&voc.join("JPEGImages/000040.jpg")),
        ],
        LIMIT,
    );
    assert!(!ok);
    assert!(err.contains("--out") && err.contains("/proc"), "{err}");
    assert!(!missing.exists());
}
