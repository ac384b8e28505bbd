//! Fault scenarios across processes: kill -9 an executor mid-job, an
//! executor joining mid-job, a task that always panics.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::time::Duration;

use helpers::{corpus, driver, executor, kiln, read_counts, submit, wait_executors};

const FAST: [&str; 4] = ["--heartbeat-ms", "100", "--executor-timeout-ms", "1500"];

#[test]
fn kill_9_an_executor_mid_job_and_the_result_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 12, 200);
    let out = dir.path().join("counts.tsv");
    let (_driver, join) = driver(&FAST);
    let _a = executor(&join, "a");
    let mut b = executor(&join, "b");
    let _c = executor(&join, "c");
    wait_executors(&join, 3, Duration::from_secs(60));
    let mut d = submit(
        &join,
        &[
            "word-count",
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "12",
            "--slow-ms",
            "300",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    // Let the job start, then kill b while it holds a task.
    std::thread::sleep(Duration::from_millis(1200));
    b.kill9();
    let lines = d.rest(Duration::from_secs(90));
    let status = d.wait_exit(Duration::from_secs(20)).expect("submit exits");
    assert!(status.success(), "the job failed: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    // b is gone from the final membership.
    assert!(
        !lines.iter().any(|l| l.starts_with("EXECUTOR b ")),
        "{lines:?}"
    );
    assert_eq!(read_counts(&out), expected);
}

#[test]
fn an_executor_joining_mid_job_receives_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 12, 50);
    let out = dir.path().join("counts.tsv");
    let (_driver, join) = driver(&FAST);
    let _first = executor(&join, "first");
    wait_executors(&join, 1, Duration::from_secs(60));
    let mut d = submit(
        &join,
        &[
            "word-count",
            "--input",
            input.to_str().unwrap(),
            "--partitions",
            "12",
            "--slow-ms",
            "300",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    let _late = executor(&join, "late");
    let lines = d.rest(Duration::from_secs(90));
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    let late = lines
        .iter()
        .find(|l| l.starts_with("EXECUTOR late "))
        .unwrap_or_else(|| panic!("late executor missing: {lines:?}"));
    let completed: u64 = late
        .split("completed=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(completed > 0, "{late}");
    assert_eq!(read_counts(&out), expected);
}

#[test]
fn a_panicking_task_is_retried_then_fails_the_job_clearly_and_the_driver_survives() {
    let mut local = kiln(&[
        "local",
        "--executors",
        "2",
        "--max-attempts",
        "3",
        "panic-then-count",
        "--partitions",
        "2",
    ]);
    let lines = local.rest(Duration::from_secs(90));
    let status = local.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{lines:?}");
    let err = lines
        .iter()
        .find(|l| l.starts_with("JOB-ERROR"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(err.contains("failed 3 times"), "{err}");
    assert!(err.contains("injected failure"), "{err}");
    assert!(err.contains("partition"), "{err}");
    assert!(lines.iter().any(|l| l == "COUNT 100"), "{lines:?}");
}
