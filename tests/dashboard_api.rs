//! The dashboard's JSON API and `/metrics` against a real training job:
//! `kiln local --ui` serving, a digits job submitted to it; the job's
//! curves, epochs, checkpoints, stages and the Prometheus metrics (checked
//! with `promtool check metrics` where the Debian package prometheus is
//! installed). Also the `--ui` flags' checks. The API's error answers and
//! token check are tested in `runtime/tests/dashboard_tests.rs`.

#[path = "cluster_support/helpers.rs"]
mod helpers;
#[path = "cluster_support/http.rs"]
mod http;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use helpers::{kiln, kiln_env, submit, Guard};
use http::{get, get_json};
use kiln_runtime::monitor::view::{
    CheckpointView, CheckpointsView, ClusterView, JobDetail, JobSummary, TrainingView,
};
use kiln_runtime::JobState;

/// `kiln local --ui …` serving without a job: the guard, its join string
/// and the dashboard's address.
fn local_with_ui(cache: &Path) -> (Guard, String, SocketAddr, String) {
    let args = ["local", "--executors", "2", "--ui", "127.0.0.1:0"];
    let mut g = kiln_env(&args, &[("KILN_CACHE_DIR", cache)]);
    let join = g.wait_for("JOIN ", Duration::from_secs(60))["JOIN ".len()..]
        .trim()
        .to_string();
    let url = g.wait_for("UI ", Duration::from_secs(30))["UI ".len()..]
        .trim()
        .to_string();
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (g, join, host.parse().unwrap(), url)
}

#[test]
fn a_training_job_shows_its_curves_checkpoints_stages_and_metrics() {
    let ckpt = tempfile::tempdir().unwrap();
    let store = ckpt.path().join("store");
    // A fresh staging cache: the executors fetch the data (staged bytes).
    let (mut local, join, addr, url) = local_with_ui(&ckpt.path().join("cache"));
    assert_eq!(url, format!("http://{addr}/"), "no token on loopback");
    let mut job = submit(
        &join,
        &[
            "digits",
            "--epochs",
            "3",
            "--keep-checkpoints",
            "2",
            "--stage",
            "--no-progress",
            "--checkpoint-dir",
            store.to_str().unwrap(),
        ],
    );
    let lines = job.rest(Duration::from_secs(300));
    assert!(
        lines.iter().any(|l| l.starts_with("HELD-OUT-ACCURACY")),
        "{lines:?}"
    );

    let jobs: Vec<JobSummary> = get_json(addr, "/api/jobs");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let j = &jobs[0];
    assert_eq!((j.info.id, &j.info.state), (1, &JobState::Succeeded));
    assert_eq!(j.iterations, 135, "3 epochs of 45 batches");
    assert!(j.latest_loss.is_some_and(f64::is_finite));

    let t: TrainingView = get_json(addr, "/api/jobs/1/training");
    assert_eq!(t.iterations_recorded, 135);
    assert_eq!(t.iterations.len(), 135);
    for (k, p) in t.iterations.iter().enumerate() {
        assert_eq!(p.iteration, k as u64 + 1);
        assert_eq!(p.epoch, k as u64 / 45);
        assert!(p.loss.is_finite() && p.loss > 0.0, "{p:?}");
        assert_eq!(p.learning_rate, 0.05);
        assert_eq!(
            p.samples,
            if (k + 1) % 45 == 0 {
                1438 - 44 * 32
            } else {
                32
            }
        );
        let parts = p.compute_seconds + p.sync_seconds + p.checkpoint_seconds + p.waiting_seconds;
        assert!((parts - p.seconds).abs() < 1e-6, "phases add up: {p:?}");
        assert!(p.compute_seconds > 0.0 && p.sync_seconds > 0.0, "{p:?}");
        assert_eq!(p.checkpoint_seconds > 0.0, (k + 1) % 45 == 0, "{p:?}");
    }
    assert!(t.iterations[134].loss < t.iterations[0].loss, "it learns");
    // A page that has seen 130 iterations asks for the rest only.
    let rest: TrainingView = get_json(addr, "/api/jobs/1/training?since=130");
    assert_eq!(rest.iterations, t.iterations[130..].to_vec());
    assert_eq!((rest.iterations_recorded, rest.epochs.len()), (135, 3));
    assert_eq!(t.epochs.len(), 3);
    for (k, e) in t.epochs.iter().enumerate() {
        assert_eq!((e.epoch, e.iteration), (k as u64 + 1, 45 * (k as u64 + 1)));
        let acc = e.metrics["held_out_acc"];
        assert!((0.0..=1.0).contains(&acc), "{e:?}");
        assert!(e.samples_per_second > 0.0);
    }
    // The job's own EPOCH line says the same accuracy.
    let last = lines.iter().rfind(|l| l.starts_with("EPOCH 3 ")).unwrap();
    let acc = format!("held_out_acc={:.4}", t.epochs[2].metrics["held_out_acc"]);
    assert!(last.contains(&acc), "{last} vs {acc}");

    let c: CheckpointsView = get_json(addr, "/api/jobs/1/checkpoints");
    assert_eq!((c.written, c.removed), (3, 1), "{c:?}");
    assert_eq!(c.kept.iter().map(|k| k.id).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(c.resume_from, Some(3));
    assert_eq!(c.store.as_deref(), Some(store.to_str().unwrap()));
    assert!(c
        .kept
        .iter()
        .all(|k| k.verified && k.bytes > 600_000 && k.write_seconds > 0.0));
    assert_eq!((c.kept[1].iteration, c.kept[1].epoch), (135, 3));
    // Verified again on demand: the blob files are read back.
    let verified: CheckpointView = post_json(addr, "/api/jobs/1/checkpoints/3/verify");
    assert!(
        verified.verified && verified.verify_error.is_none(),
        "{verified:?}"
    );
    assert!(verified.verified_ms >= c.kept[1].verified_ms);
    // A flipped byte in checkpoint 3's blob: it fails, and a resume would
    // start from checkpoint 2.
    let blob_dir = store.join("blobs").join(format!("{:020}", 3));
    let blob = std::fs::read_dir(&blob_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    let failed: CheckpointView = post_json(addr, "/api/jobs/1/checkpoints/3/verify");
    assert!(!failed.verified, "{failed:?}");
    let why = failed.verify_error.unwrap();
    assert!(why.contains("checksum") || why.contains("crc"), "{why}");
    let c: CheckpointsView = get_json(addr, "/api/jobs/1/checkpoints");
    assert_eq!(c.resume_from, Some(2));
    for (path, says) in [
        ("/api/jobs/1/checkpoints/1/verify", "checkpoint 1 of job 1"),
        ("/api/jobs/9/checkpoints/2/verify", "job 9 does not exist"),
    ] {
        let a = http::post(addr, path);
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert!(a.body.contains(says), "{}", a.body);
    }

    let d: JobDetail = get_json(addr, "/api/jobs/1");
    let a = &d.activity;
    assert!(a.stages >= 135 && a.tasks >= 270, "{a:?}");
    assert_eq!((a.task_failures, a.stages_failed, a.retries), (0, 0, 0));
    assert!(a.running.is_empty());
    assert_eq!(a.recent.len(), 20);
    assert!(a
        .recent
        .iter()
        .all(|s| s.state == "succeeded" && s.done as usize == s.tasks.len()));

    // The submitting client's connection closes after the job's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cluster = loop {
        let c: ClusterView = get_json(addr, "/api/cluster");
        if c.wire.get("client").is_some_and(|w| w.received > 0) {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no client bytes: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(cluster.executors.len(), 2);
    assert!(
        cluster.staged_bytes > 0,
        "--stage served the data: {cluster:?}"
    );
    assert!(cluster.wire["checkpoint_pull"].received > 1_000_000);
    assert_eq!(cluster.running_job, None);

    let metrics = get(addr, "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    let text = metrics.body;
    for want in [
        "kiln_executors{state=\"live\"} 2",
        "kiln_executors{state=\"lost\"} 0",
        "kiln_tasks_failed_total{kind=\"failed\"} 0",
        "kiln_tasks_retried_total 0",
        "kiln_iteration_seconds_count 135",
        "kiln_checkpoint_write_seconds_count 3",
        "kiln_iteration_phase_seconds_total{phase=\"compute\"}",
        "kiln_wire_bytes_total{direction=\"sent\",kind=\"executor\"}",
        "kiln_wire_bytes_total{direction=\"received\",kind=\"checkpoint_pull\"}",
        "kiln_checkpoint_bytes ",
        "kiln_job_loss{job=\"1\"}",
        "kiln_job_metric{job=\"1\",metric=\"held_out_acc\"}",
        "kiln_samples_per_second{job=\"1\"}",
        "# TYPE kiln_iteration_seconds histogram",
    ] {
        assert!(text.contains(want), "/metrics lacks {want:?}:\n{text}");
    }
    let started = metric(&text, "kiln_tasks_started_total");
    assert_eq!(started, metric(&text, "kiln_tasks_succeeded_total"));
    assert_eq!(started, a.tasks as f64);
    assert!(metric(&text, "kiln_staged_bytes_total") > 0.0);
    promtool_check(&text);
    local.kill9();
}

/// `POST path`, expecting 200 and JSON of type `T`.
fn post_json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> T {
    let a = http::post(addr, path);
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", a.body))
}

/// The value of the unlabelled sample `name`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// `promtool check metrics` on `text`, or a message where promtool is
/// absent (CI installs it: .ci/run).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED promtool check: promtool is not installed ({e}); apt-get install prometheus");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "promtool hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ui_flags_are_checked_before_the_cluster_starts_and_a_token_is_made_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "local",
        "--ui",
        "0.0.0.0:0",
        "--ui-token-file",
        short.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("8 characters") && err.contains("at least 16"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("JOIN"),
        "nothing started"
    );
    let o = run(&[
        "local",
        "--ui",
        "127.0.0.1:0",
        "--ui-token-file",
        "/nonexistent/token",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ui-token-file /nonexistent/token"));
    let o = run(&["local", "--ui-token-file", short.to_str().unwrap()]);
    assert!(!o.status.success(), "--ui-token-file needs --ui");
    let o = run(&["local", "--ui", "localhost:80"]);
    assert!(!o.status.success(), "an address, not a name");

    // Off loopback without a file: a fresh token, printed once, required.
    let mut g = kiln(&["local", "--executors", "1", "--ui", "0.0.0.0:0"]);
    g.wait_for("JOIN ", Duration::from_secs(60));
    let url = g.wait_for("UI ", Duration::from_secs(30))["UI ".len()..]
        .trim()
        .to_string();
    let (base, token) = url.split_once("/?token=").expect("a token in the link");
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{url}"
    );
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(addr, "/api/cluster", &[]).status, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(addr, "/api/cluster", &[("Authorization", &bearer)]).status,
        200
    );
    g.kill9();
}
