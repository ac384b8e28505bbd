//! A standing cluster and its clients, as a user drives them: `kiln
//! driver` with executors, `kiln submit` (following, detached, and a
//! client killed mid-job), `kiln jobs list|show|logs|cancel|fetch`, and
//! bad submissions refused before any executor is touched, naming the
//! setting or the path.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::process::{Command, Output};
use std::time::Duration;

use helpers::{driver, executor, kiln, submit, wait_executors, Guard};

const LONG: Duration = Duration::from_secs(240);

/// Runs the kiln binary to completion (bounded).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running kiln");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln {args:?} still running after {LONG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn finish(mut g: Guard) -> Vec<String> {
    let lines = g.rest(LONG);
    let status = g.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "failed: {lines:?}");
    lines
}

fn jobs_listed(join: &str) -> usize {
    let o = run(&["jobs", "--cluster", join, "list"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    out.lines().skip(1).filter(|l| !l.starts_with(' ')).count()
}

/// A submission the driver must refuse: non-zero exit, the stderr names
/// `what`, and nothing was queued.
fn refused(join: &str, args: &[&str], what: &[&str]) {
    let mut all = vec!["submit", "--cluster", join];
    all.extend_from_slice(args);
    let before = jobs_listed(join);
    let o = run(&all);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} was accepted: {out}");
    for w in what {
        assert!(err.contains(w), "{args:?}: {err}");
    }
    assert_eq!(jobs_listed(join), before, "{args:?} queued a job");
}

#[test]
fn bad_submissions_are_refused_before_anything_runs_naming_what_is_wrong() {
    let (_d, join) = driver(&[]);
    let _e = executor(&join, "a");
    wait_executors(&join, 1, Duration::from_secs(60));
    // An unknown setting (a typo), named by the decoder.
    refused(
        &join,
        &[
            "job",
            "--kind",
            "digits",
            "--settings",
            r#"{"job": {"epochz": 3}}"#,
        ],
        &["refused", "epochz"],
    );
    // Out-of-range and non-number settings, named: flags by the client's
    // parser (flag, value and range), JSON settings by the driver.
    refused(
        &join,
        &["digits", "--epochs", "0"],
        &["--epochs", "1..=100000"],
    );
    refused(
        &join,
        &["digits", "--lr=-0.5"],
        &["--lr", "-0.5", "(0, 10]"],
    );
    for (settings, what) in [
        (r#"{"job": {"epochs": 0}}"#, "job.epochs = 0"),
        (r#"{"job": {"epochs": 1000001}}"#, "job.epochs = 1000001"),
        (
            r#"{"job": {"learning_rate": -0.5}}"#,
            "job.learning_rate = -0.5",
        ),
        (
            r#"{"job": {"batch_size": 18446744073709551615}}"#,
            "job.batch_size",
        ),
    ] {
        refused(
            &join,
            &["job", "--kind", "digits", "--settings", settings],
            &[what, "must be"],
        );
    }
    refused(
        &join,
        &[
            "job",
            "--kind",
            "digits",
            "--settings",
            r#"{"job": {"learning_rate": null}}"#,
        ],
        &["job.learning_rate"],
    );
    // A NaN never leaves the client.
    let o = run(&["submit", "--cluster", &join, "digits", "--lr", "NaN"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
    assert!(text(&o).1.contains("finite"), "{}", text(&o).1);
    refused(&join, &["digits", "--partitions", "0"], &["--partitions"]);
    refused(
        &join,
        &[
            "job",
            "--kind",
            "digits",
            "--settings",
            r#"{"job": {}, "run": {"partitions": 0}}"#,
        ],
        &["run.partitions"],
    );
    // Data missing on the driver's host: refused at once, naming the path.
    refused(
        &join,
        &["digits", "--data", "/nonexistent/digits.csv.gz"],
        &["/nonexistent/digits.csv.gz", "job.data", "driver's host"],
    );
    // An unknown kind, with the known ones.
    refused(
        &join,
        &["job", "--kind", "nosuch", "--settings", "{}"],
        &["nosuch", "digits", "speech"],
    );
    // Resuming from a directory that holds no store.
    let empty = tempfile::tempdir().unwrap();
    refused(
        &join,
        &["resume", "--dir", empty.path().to_str().unwrap()],
        &["holds no checkpoint store"],
    );
    // Cancelling an unknown job says so.
    let o = run(&["jobs", "--cluster", &join, "cancel", "42"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no job 42"), "{}", text(&o).1);
    // A client with a wrong token is refused.
    let (token, addr) = join.split_once('@').unwrap();
    let bad = format!("{}{}@{addr}", &token[..token.len() - 4], "0000");
    let o = run(&["jobs", "--cluster", &bad, "list"]);
    assert!(!o.status.success(), "{}", text(&o).0);
}

#[test]
fn detached_and_abandoned_jobs_run_on_and_are_seen_followed_and_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, join) = driver(&[]);
    let _e1 = executor(&join, "a");
    let _e2 = executor(&join, "b");
    wait_executors(&join, 2, Duration::from_secs(60));

    // Detached: the id, at once.
    let o = run(&[
        "submit",
        "--cluster",
        &join,
        "--detach",
        "digits",
        "--epochs",
        "2",
        "--no-progress",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("JOB 1 queued: "), "{out}");

    // A second job queues behind it; its client is killed mid-run.
    let mut client = submit(&join, &["digits", "--epochs", "3", "--no-progress"]);
    client.wait_for("JOB 2 queued", LONG);
    client.wait_for("EPOCH 1 ", LONG);
    client.kill9();

    // `logs --follow` of both: each to its end.
    for id in ["1", "2"] {
        let o = run(&["jobs", "--cluster", &join, "logs", id, "--follow"]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "job {id}: {err}");
        assert!(out.contains("HELD-OUT-ACCURACY "), "job {id}: {out}");
    }
    // Listed in submission order, both succeeded.
    let o = run(&["jobs", "--cluster", &join, "list"]);
    let (out, _) = text(&o);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].trim_start().starts_with("1  digits"), "{out}");
    assert!(rows.iter().all(|r| r.contains("succeeded")), "{out}");
    // Show: the record as JSON, with its output.
    let o = run(&["jobs", "--cluster", &join, "show", "2"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["state"], "Succeeded");
    assert_eq!(v["outputs"][0], "model");
    // Fetch the model of the abandoned job; a missing output is named.
    let model = dir.path().join("two.safetensors");
    let o = run(&[
        "jobs",
        "--cluster",
        &join,
        "fetch",
        "2",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(kiln::nn::serialize::load::<f32>(&model).is_ok());
    let o = run(&[
        "jobs",
        "--cluster",
        &join,
        "fetch",
        "2",
        "--output",
        "weights",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("model"), "{}", text(&o).1);
    // Cancelling a finished job says so.
    let o = run(&["jobs", "--cluster", &join, "cancel", "1"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("already finished"), "{}", text(&o).1);

    // A running job cancelled from another client: its follower ends with
    // an error saying so.
    let mut long = submit(&join, &["digits", "--epochs", "50", "--no-progress"]);
    long.wait_for("EPOCH 1 ", LONG);
    let o = run(&["jobs", "--cluster", &join, "cancel", "3"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let lines = long.rest(LONG);
    let status = long.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(!status.success(), "{lines:?}");
    assert!(lines.iter().any(|l| l == "JOB 3 cancelled"), "{lines:?}");
    // The cluster goes on serving.
    let lines = finish(submit(&join, &["digits", "--epochs", "1", "--no-progress"]));
    assert!(
        lines.iter().any(|l| l.starts_with("HELD-OUT-ACCURACY ")),
        "{lines:?}"
    );
}

#[test]
fn kiln_local_and_submit_print_the_same_job_lines() {
    // `kiln local` is a local cluster plus the submission path: its lines
    // are the job's, then the fetched model's.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let lines = finish(kiln(&[
        "local",
        "--executors",
        "2",
        "digits",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(lines[0].starts_with("JOIN "), "{lines:?}");
    assert!(lines[1].starts_with("JOB 1 queued: "), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("TRAINING digits: ")),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("MODEL {}", out.display())),
        "{lines:?}"
    );
    assert!(out.exists());
}

#[test]
fn a_training_job_submitted_before_any_executor_waits_for_one() {
    let (_d, join) = driver(&[]);
    let mut job = submit(&join, &["digits", "--epochs", "1", "--no-progress"]);
    job.wait_for("WAITING for an executor", LONG);
    let _e = executor(&join, "late");
    let lines = finish(job);
    assert!(
        lines.iter().any(|l| l.starts_with("HELD-OUT-ACCURACY ")),
        "{lines:?}"
    );
}
