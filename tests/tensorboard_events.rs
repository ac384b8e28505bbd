//! TensorBoard event files: the committed fixture is what Kiln's writer
//! makes today and what TensorBoard's own reader read from it
//! (tests/fixtures/tensorboard/check_events.py, rerun command inside);
//! and a training job with `--tensorboard DIR` writes its loss, learning
//! rate, throughput and evaluation metrics into a run directory of its
//! own.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use helpers::{kiln_output, root, s};
use kiln::tensorboard::{read_scalars, EventWriter, Scalar};

fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/tensorboard")
}

/// The fixture's scalars: steps, tags and values as a training run
/// writes them, with values TensorBoard must keep exactly (f32).
fn write_fixture_events(dir: &Path) -> PathBuf {
    let mut w = EventWriter::create_with_clock(dir, || 1_765_000_000.25).expect("writer");
    for step in 1..=6u64 {
        let loss = 2.5 / step as f64;
        w.scalars(
            step,
            &[
                ("train/loss", loss),
                ("train/learning_rate", 0.01 * 0.5f64.powi((step / 3) as i32)),
            ],
        )
        .expect("write");
        if step % 3 == 0 {
            w.scalars(
                step,
                &[
                    ("epoch/loss", loss * 1.1),
                    ("epoch/samples_per_second", 12_345.5),
                    ("eval/accuracy", 0.5 + step as f64 / 20.0),
                    ("eval/dev_wer", -0.0),
                ],
            )
            .expect("write");
        }
    }
    w.flush().expect("flush");
    w.path().to_path_buf()
}

#[test]
#[ignore = "rewrites the fixture; see check_events.py"]
fn write_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_fixture_events(dir.path());
    std::fs::copy(path, fixture_dir().join("kiln.tfevents")).expect("copy");
}

#[test]
fn the_fixture_is_what_kiln_writes_and_what_tensorboard_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = std::fs::read(write_fixture_events(dir.path())).expect("read");
    let committed = fixture_dir().join("kiln.tfevents");
    assert_eq!(
        written,
        std::fs::read(&committed).expect("the committed fixture"),
        "the writer's output changed: rerun the commands in check_events.py"
    );
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json"),
    )
    .expect("JSON");
    let (version, scalars) = read_scalars(&committed).expect("Kiln reads it");
    assert_eq!(version.as_deref(), expected["file_version"].as_str());
    let theirs = expected["scalars"].as_array().expect("scalars");
    assert_eq!(scalars.len(), theirs.len());
    for (ours, t) in scalars.iter().zip(theirs) {
        assert_eq!(ours.tag, t["tag"].as_str().expect("tag"));
        assert_eq!(ours.step, t["step"].as_i64().expect("step"));
        assert_eq!(ours.wall_time, t["wall_time"].as_f64().expect("wall_time"));
        assert_eq!(
            ours.value as f64,
            t["value"].as_f64().expect("value"),
            "{}",
            ours.tag
        );
    }
    // What `tensorboard --logdir` shows: each tag's series.
    let shown = expected["shown"].as_object().expect("shown");
    for (tag, series) in shown {
        let ours: Vec<(i64, f64)> = scalars
            .iter()
            .filter(|s| &s.tag == tag)
            .map(|s| (s.step, f64::from(s.value)))
            .collect();
        let theirs: Vec<(i64, f64)> = series
            .as_array()
            .expect("series")
            .iter()
            .map(|p| (p[0].as_i64().expect("step"), p[1].as_f64().expect("value")))
            .collect();
        assert_eq!(ours, theirs, "{tag}");
    }
    assert_eq!(shown["train/loss"].as_array().expect("series").len(), 6);
    assert_eq!(shown["eval/accuracy"].as_array().expect("series").len(), 2);
}

/// The one run directory under `logdir` and its one event file, which
/// the command's output (`out`) named on its `TENSORBOARD` line.
fn the_one_run(logdir: &Path, out: &str) -> (String, PathBuf) {
    let runs: Vec<PathBuf> = std::fs::read_dir(logdir)
        .expect("the log directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let name = runs[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let files: Vec<PathBuf> = std::fs::read_dir(&runs[0])
        .expect("the run directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        out.contains(&format!("TENSORBOARD {}", files[0].display())),
        "{out}"
    );
    (name, files[0].clone())
}

/// A run of `kiln ARGS --tensorboard DIR` that must succeed: its output,
/// its run directory's name, and the event file's version and scalars.
struct SummarisedRun {
    out: String,
    run_name: String,
    version: Option<String>,
    scalars: Vec<Scalar>,
}

fn run_with_tensorboard(args: &[&str]) -> SummarisedRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let logdir = dir.path().join("tb");
    let mut all = args.to_vec();
    all.extend(["--tensorboard", s(&logdir)]);
    let (ok, out, err) = kiln_output(&all, Duration::from_secs(240));
    assert!(ok, "{out}\n{err}");
    let (run_name, file) = the_one_run(&logdir, &out);
    let (version, scalars) = read_scalars(&file).expect("a valid event file");
    SummarisedRun {
        out,
        run_name,
        version,
        scalars,
    }
}

#[test]
fn a_training_job_writes_its_scalars_into_a_run_directory_of_its_own() {
    let SummarisedRun {
        out,
        run_name,
        version,
        scalars,
    } = run_with_tensorboard(&[
        "local",
        "--executors",
        "1",
        "digits",
        "--epochs",
        "2",
        "--no-progress",
    ]);
    assert!(run_name.starts_with("digits-job"), "{run_name}");
    assert_eq!(version.as_deref(), Some("brain.Event:2"));
    let series = |tag: &str| -> Vec<&Scalar> { scalars.iter().filter(|s| s.tag == tag).collect() };
    let losses = series("train/loss");
    assert!(losses.len() >= 4, "{losses:?}");
    assert!(losses.windows(2).all(|w| w[0].step < w[1].step));
    assert!(losses.iter().all(|s| s.value.is_finite() && s.value > 0.0));
    assert_eq!(series("train/learning_rate").len(), losses.len());
    for tag in [
        "epoch/loss",
        "epoch/samples_per_second",
        "eval/train_acc",
        "eval/held_out_acc",
    ] {
        let per_epoch = series(tag);
        assert_eq!(per_epoch.len(), 2, "{tag}: {scalars:?}");
    }
    // The epoch lines and the summaries agree.
    let last_epoch_loss = series("epoch/loss")[1].value;
    let line = out
        .lines()
        .filter(|l| l.starts_with("EPOCH "))
        .nth(1)
        .expect("two EPOCH lines");
    let printed: f32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("loss="))
        .and_then(|v| v.parse().ok())
        .expect("loss= on the EPOCH line");
    assert!(
        (printed - last_epoch_loss).abs() < 1e-4,
        "{line} vs {last_epoch_loss}"
    );
}

#[test]
fn single_process_kiln_train_writes_the_same_scalars() {
    let SummarisedRun {
        out,
        run_name,
        scalars,
        ..
    } = run_with_tensorboard(&["train", "--epochs", "2", "--no-progress"]);
    assert!(run_name.starts_with("digits-"), "{run_name}");
    let series = |tag: &str| -> Vec<&Scalar> { scalars.iter().filter(|s| s.tag == tag).collect() };
    // 1438 training samples in batches of 32: 45 iterations an epoch.
    let losses = series("train/loss");
    assert_eq!(
        losses.iter().map(|s| s.step).collect::<Vec<_>>(),
        (1..=90).collect::<Vec<_>>()
    );
    assert!(series("train/learning_rate")
        .iter()
        .all(|s| s.value == 0.05));
    for tag in [
        "epoch/loss",
        "epoch/samples_per_second",
        "eval/held_out_loss",
        "eval/held_out_acc",
    ] {
        let per_epoch = series(tag);
        assert_eq!(
            per_epoch.iter().map(|s| s.step).collect::<Vec<_>>(),
            vec![45, 90],
            "{tag}: {scalars:?}"
        );
        assert!(per_epoch
            .iter()
            .all(|s| s.value.is_finite() && s.value > 0.0));
    }
    // The held-out accuracy printed at the end is the last epoch's.
    let acc = series("eval/held_out_acc")[1].value;
    assert!(
        out.contains(&format!("held-out accuracy: {:.2}%", acc * 100.0)),
        "{out} vs {acc}"
    );
    // An unwritable directory is refused before training.
    let dir = tempfile::tempdir().expect("tempdir");
    let file_not_dir = dir.path().join("plain-file");
    std::fs::write(&file_not_dir, "x").unwrap();
    let (ok, out, err) = kiln_output(
        &["train", "--epochs", "1", "--tensorboard", s(&file_not_dir)],
        Duration::from_secs(60),
    );
    assert!(!ok && err.contains("--tensorboard"), "{out}\n{err}");
    assert!(!out.contains("trained"), "{out}");
}
