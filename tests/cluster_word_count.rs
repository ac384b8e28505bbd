//! Multi-process word count: `kiln local` with child executors, and a
//! driver with separately started executors queried by `kiln status`.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::time::Duration;

use helpers::{corpus, driver, executor, kiln, read_counts};

#[test]
fn local_word_count_with_three_executors_matches_single_threaded() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 9, 400);
    let out = dir.path().join("counts.tsv");
    let mut local = kiln(&[
        "local",
        "--executors",
        "3",
        "word-count",
        "--input",
        input.to_str().unwrap(),
        "--partitions",
        "6",
        "--output",
        out.to_str().unwrap(),
    ]);
    let lines = local.rest(Duration::from_secs(90));
    let status = local
        .wait_exit(Duration::from_secs(20))
        .expect("kiln local exits");
    assert!(status.success(), "kiln local failed: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("EXECUTOR")).count(),
        3,
        "{lines:?}"
    );
    assert_eq!(read_counts(&out), expected);
}

#[test]
fn local_in_memory_word_count_matches_single_threaded() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let expected = corpus(&input, 6, 200);
    let out = dir.path().join("counts.tsv");
    let mut local = kiln(&[
        "local",
        "--executors",
        "2",
        "--in-process",
        "--in-memory",
        "word-count",
        "--input",
        input.to_str().unwrap(),
        "--partitions",
        "4",
        "--output",
        out.to_str().unwrap(),
    ]);
    let lines = local.rest(Duration::from_secs(60));
    let status = local
        .wait_exit(Duration::from_secs(20))
        .expect("kiln local exits");
    assert!(status.success(), "kiln local failed: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("DONE")), "{lines:?}");
    assert_eq!(read_counts(&out), expected);
}

#[test]
fn status_lists_executors_and_executors_die_with_their_driver() {
    let (mut d, join) = driver(&["--heartbeat-ms", "100", "--executor-timeout-ms", "1500"]);
    let mut e1 = executor(&join, "alpha");
    let mut e2 = executor(&join, "beta");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let mut st = kiln(&["status", "--join", &join]);
        let out = st.rest(Duration::from_secs(20)).join("\n");
        if out.contains("alpha") && out.contains("beta") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never listed both: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(text.contains("refused connections"), "{text}");
    // A status request with a wrong token is refused.
    let bad = join.replacen("kiln1-", "kiln1-00", 1);
    let bad = {
        // keep the length valid: drop two hex digits after the prefix
        let (tok, addr) = bad.rsplit_once('@').unwrap();
        let mut parts: Vec<String> = tok.split('-').map(str::to_owned).collect();
        parts[1] = "ab".repeat(32);
        format!("{}@{addr}", parts.join("-"))
    };
    let mut st = kiln(&["status", "--join", &bad]);
    let code = st.wait_exit(Duration::from_secs(20)).expect("status exits");
    assert!(!code.success());
    // Kill the driver hard: executors notice and exit by themselves.
    d.kill9();
    assert!(
        e1.wait_exit(Duration::from_secs(20)).is_some(),
        "executor alpha orphaned"
    );
    assert!(
        e2.wait_exit(Duration::from_secs(20)).is_some(),
        "executor beta orphaned"
    );
}
