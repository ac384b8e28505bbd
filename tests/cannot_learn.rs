//! Training that cannot learn says so: utterances CTC cannot align are
//! counted before a speech run starts. (A diverging run stopping at the
//! iteration whose loss is not finite, with nothing after it checkpointed,
//! is runtime/tests/train_tests.rs's
//! `a_non_finite_loss_stops_training_naming_the_iteration_and_nothing_bad_is_checkpointed`:
//! the bounded flags leave no way to make digits diverge from the CLI.)

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::Path;
use std::time::Duration;

use helpers::{copy_dir, kiln_output, root, s};

const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn utterances_ctc_cannot_align_are_counted_before_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = dir.path().join("corpus");
    copy_dir(
        &root().join("apps/speech/tests/fixtures/librispeech"),
        &corpus,
    );
    // One utterance of about two seconds given a 600-character transcript.
    let trans = corpus.join("mini/4490/90921/4490-90921.trans.txt");
    let long = "PETER COULD LISTEN ".repeat(32);
    std::fs::write(&trans, format!("4490-90921-0010 {}\n", long.trim())).expect("write");
    let listed = walk_count(&corpus.join("mini"));
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
            "--batch-size",
            "2",
            "--config",
            s(&root().join("apps/speech/configs/ds2_tiny.toml")),
            "--out",
            s(&dir.path().join("ds2.safetensors")),
            "--no-progress",
        ],
        LIMIT,
    );
    assert!(ok, "{out}\n{err}");
    let warning = out
        .lines()
        .find(|l| l.starts_with("WARNING "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        warning.contains(&format!(
            "1 of {listed} training utterances cannot be aligned by CTC"
        )) && warning.contains("4490-90921-0010"),
        "{warning}"
    );
    let training = out.find("TRAINING").expect("a TRAINING line");
    assert!(out.find("WARNING").expect("warning") < training, "{out}");
}

/// Audio files under `dir`.
fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            n += walk_count(&p);
        } else if p.extension().is_some_and(|x| x == "flac" || x == "wav") {
            n += 1;
        }
    }
    n
}
