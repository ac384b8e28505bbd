//! `kiln train --resume DIR`: a digits run on a local cluster of 2
//! executor processes is killed (SIGKILL) after its second epoch, and
//! `kiln train --resume` continues it from its checkpoints to the end; the
//! job flags `--resume` cannot be combined with are refused by the parser.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::{kiln, Guard};

const EPOCHS: u64 = 4;
const LONG: Duration = Duration::from_secs(240);

fn finish(mut g: Guard) -> Vec<String> {
    let lines = g.rest(LONG);
    let status = g.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "failed: {lines:?}");
    lines
}

fn epochs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("EPOCH "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn kiln_train_resume_continues_a_killed_cluster_run_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let ckpt_arg = ckpt.to_str().unwrap();
    let epochs_arg = EPOCHS.to_string();
    let mut first = kiln(&[
        "local",
        "--executors",
        "2",
        "digits",
        "--epochs",
        &epochs_arg,
        "--partitions",
        "2",
        "--no-progress",
        "--checkpoint-dir",
        ckpt_arg,
    ]);
    // The epoch-2 checkpoint is committed before its EPOCH line.
    first.wait_for("EPOCH 2 ", LONG);
    first.kill9();

    let lines = finish(kiln(&[
        "train",
        "--resume",
        ckpt_arg,
        "--executors",
        "2",
        "--no-progress",
    ]));
    // Resumed from the newest checkpoint: epoch 2, or 3 if the killed run
    // got that far before SIGKILL landed.
    let resumed = lines
        .iter()
        .find_map(|l| l.strip_prefix("RESUMED "))
        .unwrap_or_else(|| panic!("no resume report: {lines:?}"));
    let from: u64 = resumed
        .rsplit_once(" epoch=")
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!((2..EPOCHS).contains(&from), "{resumed}");
    assert_eq!(
        epochs(&lines),
        (from + 1..=EPOCHS).collect::<Vec<_>>(),
        "{lines:?}"
    );
    let accuracy: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("HELD-OUT-ACCURACY "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line: {lines:?}"));
    assert!(accuracy >= 0.9, "{lines:?}");
}

#[test]
fn kiln_train_resume_refuses_the_job_flags_it_takes_from_the_checkpoint() {
    for extra in [
        ["--epochs", "3"],
        ["--lr", "0.1"],
        ["--model", "lenet5"],
        ["--seed", "2"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["train", "--resume", "/nonexistent/ckpt"])
            .args(extra)
            .output()
            .expect("kiln train");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("cannot be used with"), "{extra:?}: {err}");
        assert!(err.contains(extra[0]), "{extra:?}: {err}");
    }
    // --executors only means something with --resume.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--executors", "3"])
        .output()
        .expect("kiln train");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--resume"), "{err}");
}
