//! End-to-end: the digits CNN trains to at least 97% held-out accuracy, the
//! saved model reloads with identical predictions, and the CLI runs the job.

use std::process::Command;

use kiln::digits::{self, DigitsSettings};
use kiln::nn::serialize;
use kiln::nn::ModuleExt;

#[test]
fn digits_cnn_reaches_97_percent_and_round_trips_through_a_file() {
    let job = DigitsSettings {
        ..DigitsSettings::default()
    };
    let (mut model, report) = digits::run(&job, false).expect("training runs");
    assert!(
        report.held_out.top1 >= 0.97,
        "held-out accuracy {:.4} below 0.97",
        report.held_out.top1
    );
    assert_eq!(report.held_out.samples, 359);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("digits.safetensors");
    serialize::save(model.as_ref(), &path, &Default::default()).expect("save");
    let mut loaded = serialize::load::<f32>(&path).expect("load");
    let (_, test) = digits::load_split(&job.data, job.model).expect("data");
    let (x, _) = test.batch(&(0..50).collect::<Vec<_>>());
    model.eval_mode();
    loaded.eval_mode();
    let a = model.forward(&x).expect("forward");
    let b = loaded.forward(&x).expect("forward");
    assert!(a
        .iter()
        .zip(b.iter())
        .all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[test]
fn cli_train_reports_accuracy_and_refuses_a_bad_data_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--epochs", "2", "--no-progress", "--out"])
        .arg(&out)
        .output()
        .expect("kiln runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("held-out accuracy"), "{stdout}");
    assert!(out.exists());

    let eval = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["eval", "--model"])
        .arg(&out)
        .output()
        .expect("kiln runs");
    assert!(eval.status.success());
    assert!(String::from_utf8_lossy(&eval.stdout).contains("held-out accuracy"));

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "1,2,3\n").expect("write");
    let run = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--no-progress", "--data"])
        .arg(&bad)
        .output()
        .expect("kiln runs");
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("bad.csv") && stderr.contains("line 1"),
        "{stderr}"
    );
}
