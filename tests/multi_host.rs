//! Kiln on several hosts: network namespaces joined by a bridge (MTU 1500,
//! each host with its own address and working directory), `kiln driver` on
//! one, `kiln executor` on others, jobs sent with `kiln submit` from
//! another. Executors see neither the data nor the driver's directory (a
//! tmpfs hides them), so every data file they read is staged from the
//! driver's host and every checkpoint blob goes to it. Skipped, with a
//! message, where namespaces cannot be made (not root).
//!
//! Scenarios: digits, Deep Speech 2 and SSD trained across three hosts,
//! bit-identical to the same jobs on `kiln local`; an executor killed with
//! SIGKILL mid-epoch; a host's link cut for longer than the loss timeout;
//! an executor that reaches the driver but not its peers; the driver
//! killed and the run resumed from its store with fresh executor hosts.

#[path = "cluster_support/helpers.rs"]
mod helpers;
#[path = "cluster_support/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln::nn::ModuleExt;
use netns::{Net, Options, Proc};

const LONG: Duration = Duration::from_secs(300);
/// Fast failure detection (driver flags).
const FAST: [&str; 4] = ["--heartbeat-ms", "100", "--executor-timeout-ms", "1500"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn s(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_owned()
}

/// The repository's data directories: hidden from executors.
fn data_dirs() -> Vec<PathBuf> {
    ["data", "tests/data", "apps/speech/tests/fixtures"]
        .iter()
        .map(|d| root().join(d))
        .collect()
}

/// A job's flags (after the `kiln submit`/`kiln local` options), with a
/// model written to `out`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Job {
    Digits,
    /// Digits for long enough to fail something mid-run.
    DigitsLong,
    Speech,
    Ssd,
}

/// The SSD settings file the jobs use (in a directory that lives as long
/// as the test binary: the client reads it).
fn ssd_config() -> PathBuf {
    static DIR: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);
    let mut dir = DIR.lock().unwrap();
    let d = dir.get_or_insert_with(|| tempfile::tempdir().unwrap());
    let path = d.path().join("ssd.json");
    if !path.exists() {
        std::fs::write(
            &path,
            r#"{"preset": "tiny", "batch_size": 2, "warmup_iters": 2, "lr": 0.005}"#,
        )
        .unwrap();
    }
    path
}

impl Job {
    fn args(self, out: &Path) -> Vec<String> {
        let mut a: Vec<String> = match self {
            Job::Digits => vec!["digits".into(), "--epochs".into(), "2".into()],
            Job::DigitsLong => vec!["digits".into(), "--epochs".into(), "5".into()],
            Job::Speech => vec![
                "speech".into(),
                "train".into(),
                "--data".into(),
                s(&root().join("apps/speech/tests/fixtures/librispeech")),
                "--train-split".into(),
                "mini".into(),
                "--dev-split".into(),
                "mini".into(),
                "--config".into(),
                s(&root().join("apps/speech/configs/ds2_tiny.toml")),
                "--epochs".into(),
                "2".into(),
                "--batch-size".into(),
                "2".into(),
            ],
            Job::Ssd => vec![
                "detect".into(),
                "train".into(),
                "--voc".into(),
                s(&root().join("tests/data/shapes-tiny")),
                "--config".into(),
                s(&ssd_config()),
                "--epochs".into(),
                "1".into(),
            ],
        };
        a.extend(
            ["--partitions", "4", "--no-progress", "--out"]
                .iter()
                .map(|x| x.to_string()),
        );
        a.push(s(out));
        a
    }
}

/// A model's weights and buffers.
type State = (Vec<f32>, Vec<f32>);

/// Weights and buffers of a model file of `job`.
fn state(job: Job, path: &Path) -> State {
    match job {
        Job::Digits | Job::DigitsLong => {
            let m = kiln::nn::serialize::load::<f32>(path).expect("a digits model");
            (m.flat_params(), m.flat_buffers())
        }
        Job::Speech => {
            let m = kiln::speech::ds2::Ds2::<f32>::load(path).expect("a DS2 model");
            (m.flat_params(), m.flat_buffers())
        }
        Job::Ssd => {
            let m = kiln::detection::model::Ssd::<f32>::load(path).expect("an SSD model");
            (m.graph().flat_params(), m.graph().flat_buffers())
        }
    }
}

/// The job's model trained on `kiln local` (2 executors, one compute
/// thread each, on loopback): what every multi-host run must reproduce
/// bit for bit. Computed once per job for the test binary.
fn reference(job: Job) -> State {
    static DONE: Mutex<Option<HashMap<Job, State>>> = Mutex::new(None);
    if let Some(r) = DONE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(&job)
    {
        return r.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let mut args: Vec<String> = ["local", "--executors", "2", "--executor-threads", "1"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    args.extend(job.args(&out));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut local = helpers::kiln(&refs);
    let lines = local.rest(LONG);
    let status = local.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "kiln local {job:?} failed: {lines:?}");
    let r = state(job, &out);
    DONE.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(job, r.clone());
    r
}

/// Asserts that the model at `path` is bit for bit `job`'s reference (the
/// message says how many values differ, not all of them).
fn same(job: Job, path: &Path, lines: &[String]) {
    let (got, want) = (state(job, path), reference(job));
    let differ = |a: &[f32], b: &[f32]| {
        a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits())
    };
    if differ(&got.0, &want.0) || differ(&got.1, &want.1) {
        let n = got
            .0
            .iter()
            .zip(&want.0)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        panic!(
            "{job:?}: {n} of {} weights differ from kiln local's ({} vs {} values); output: {lines:?}",
            want.0.len(),
            got.0.len(),
            want.0.len()
        );
    }
}

/// A cluster across `net`: the driver on host 0 (`driver_args` added),
/// an executor on each of `executors` (one compute thread, a cache of its
/// own in its directory, the data and the driver's directory hidden).
struct Cluster {
    driver: Proc,
    join: String,
    executors: Vec<Proc>,
}

fn executor_on(net: &Net, host: usize, join: &str, name: &str) -> Proc {
    let mut o = Options::kiln().args([
        "executor",
        "--join",
        join,
        "--name",
        name,
        "--cores",
        "1",
        "--threads",
        "1",
        "--cache-dir",
        "cache",
    ]);
    for d in data_dirs() {
        o = o.hide(d);
    }
    o = o.hide(net.host(0).dir.clone());
    net.spawn(host, &o)
}

fn start(net: &Net, driver_args: &[&str], executors: &[usize]) -> Cluster {
    let (driver, join) = net.driver(0, driver_args);
    let executors: Vec<Proc> = executors
        .iter()
        .map(|&h| executor_on(net, h, &join, &format!("host{h}")))
        .collect();
    wait_executors(net, &join, executors.len());
    Cluster {
        driver,
        join,
        executors,
    }
}

/// Executors the driver lists, asked from host 0.
fn listed(net: &Net, join: &str) -> usize {
    let out = net.output(
        0,
        &Options::kiln().args(["status", "--join", join]),
        Duration::from_secs(20),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("lost executors:"))
        .count()
}

fn wait_executors(net: &Net, join: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed(net, join) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} executors registered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kiln submit --cluster JOIN <args>` on `host`.
fn submit(net: &Net, host: usize, join: &str, args: &[String]) -> Proc {
    let mut all = vec!["submit".to_string(), "--cluster".into(), join.to_string()];
    all.extend_from_slice(args);
    net.spawn(host, &Options::kiln().args(all))
}

/// All of a process's lines; its exit must be a success.
fn finish(mut p: Proc) -> Vec<String> {
    let lines = p.rest(LONG);
    let status = p.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "failed: {lines:?}");
    lines
}

/// Files (recursively) under `dir`.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn digits_speech_and_ssd_across_three_hosts_match_kiln_local_bit_for_bit() {
    let Some(net) = netns::require(3) else { return };
    let c = start(&net, &[], &[1, 2]);
    for job in [Job::Digits, Job::Speech, Job::Ssd] {
        // The client on host 2: the model comes back over the network.
        let out = net.host(2).dir.join(format!("{job:?}.safetensors"));
        let mut args = job.args(&out);
        if job == Job::Digits {
            // Staged even where a path exists (here none does anyway).
            args.push("--stage".into());
        }
        let lines = finish(submit(&net, 2, &c.join, &args));
        assert!(
            lines.iter().any(|l| l.starts_with("EPOCH ")),
            "{job:?}: {lines:?}"
        );
        same(job, &out, &lines);
    }
    // Every executor staged the data into its own cache.
    for h in [1, 2] {
        let cache = net.host(h).dir.join("cache");
        assert!(files_under(&cache) > 3, "host {h} staged nothing");
    }
    // The jobs' outputs are on the driver's host.
    assert!(net
        .host(0)
        .dir
        .join("kiln-driver/jobs/3/model.safetensors")
        .exists());
    drop(c);
}

#[test]
fn an_executor_killed_mid_epoch_costs_only_its_share() {
    let Some(net) = netns::require(4) else { return };
    let mut c = start(&net, &FAST, &[1, 2, 3]);
    let out = net.host(1).dir.join("model.safetensors");
    let mut job = submit(&net, 1, &c.join, &Job::DigitsLong.args(&out));
    job.wait_for("EPOCH 1 ", LONG);
    c.executors[1].kill9();
    let lines = finish(job);
    assert!(lines.iter().any(|l| l.starts_with("EPOCH 5 ")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("EXECUTOR host2 ")),
        "{lines:?}"
    );
    // It held parameter shards: the iteration in flight was redone with
    // their replicas, and nothing was lost.
    assert!(lines.iter().any(|l| l.starts_with("REDONE ")), "{lines:?}");
    same(Job::DigitsLong, &out, &lines);
    drop(c);
}

#[test]
fn a_host_cut_off_past_the_loss_timeout_is_lost_its_work_redone_and_it_exits() {
    let Some(net) = netns::require(4) else { return };
    let mut c = start(&net, &FAST, &[1, 2, 3]);
    let out = net.host(1).dir.join("model.safetensors");
    let mut job = submit(&net, 1, &c.join, &Job::DigitsLong.args(&out));
    job.wait_for("EPOCH 1 ", LONG);
    net.link_down(3);
    // Twice the loss timeout.
    std::thread::sleep(Duration::from_millis(3000));
    net.link_up(3);
    let lines = finish(job);
    assert!(
        !lines.iter().any(|l| l.starts_with("EXECUTOR host3 ")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("LOST 1 ")), "{lines:?}");
    same(Job::DigitsLong, &out, &lines);
    // The cut-off executor lost its driver too: it exits (with an error)
    // rather than staying half-alive, and is not listed.
    let status = c.executors[2]
        .wait_exit(Duration::from_secs(30))
        .expect("the cut-off executor exits");
    assert!(!status.success(), "{status:?}");
    assert_eq!(listed(&net, &c.join), 2);
    drop(c);
}

#[test]
fn an_executor_that_reaches_the_driver_but_not_its_peers_fails_the_job_naming_both() {
    let Some(net) = netns::require(3) else { return };
    // Host 2 reaches the driver over a link of its own only: its peer
    // endpoint (bound towards the driver) is unreachable from host 1, and
    // host 1's from it.
    let (driver_side, _) = net.direct_link(0, 2);
    net.link_down(2);
    let mut _d = net.kiln(0, &["driver", "--listen", "0.0.0.0:0"]);
    let join = _d.wait_for("JOIN ", Duration::from_secs(30))["JOIN ".len()..]
        .trim()
        .to_owned();
    let port = join.rsplit_once(':').unwrap().1.to_string();
    let token = join.split_once('@').unwrap().0.to_string();
    let bridge_join = format!("{token}@{}:{port}", net.host(0).addr);
    let direct_join = format!("{token}@{driver_side}:{port}");
    let _e1 = executor_on(&net, 1, &bridge_join, "host1");
    let _e2 = executor_on(&net, 2, &direct_join, "host2");
    wait_executors(&net, &bridge_join, 2);
    let out = net.host(1).dir.join("model.safetensors");
    let started = Instant::now();
    let mut job = submit(&net, 1, &bridge_join, &Job::Digits.args(&out));
    let lines = job.rest(LONG);
    let status = job.wait_exit(Duration::from_secs(30)).expect("exits");
    // No hang: the job ends, and if it could not route around the
    // partition, its error names both executors.
    assert!(started.elapsed() < Duration::from_secs(240), "{lines:?}");
    if status.success() {
        same(Job::Digits, &out, &lines);
    } else {
        let text = lines.join("\n");
        assert!(text.contains("host1") && text.contains("host2"), "{text}");
    }
}

#[test]
fn a_killed_driver_resumes_from_its_store_with_fresh_executor_hosts_bit_exactly() {
    let Some(net) = netns::require(5) else { return };
    let store = net.host(0).dir.join("ck");
    let c = start(&net, &FAST, &[1, 2]);
    let out = net.host(1).dir.join("model.safetensors");
    let mut args = Job::DigitsLong.args(&out);
    args.extend(["--checkpoint-dir".into(), "ck".into()]);
    let mut job = submit(&net, 1, &c.join, &args);
    job.wait_for("CHECKPOINT ", LONG);
    let Cluster {
        mut driver,
        executors,
        ..
    } = c;
    driver.kill9();
    // The old executors lose their driver and exit.
    for mut e in executors {
        assert!(e.wait_exit(Duration::from_secs(30)).is_some());
    }
    drop(job);
    // A new driver on the same host, fresh executor hosts with empty caches.
    let c = start(&net, &FAST, &[3, 4]);
    let resumed = net.host(3).dir.join("resumed.safetensors");
    let lines = finish(net.spawn(
        3,
        &Options::kiln().args([
            "checkpoint",
            "resume",
            "--cluster",
            &c.join,
            "--dir",
            &s(&store),
            "--out",
            &s(&resumed),
            "--no-progress",
        ]),
    ));
    assert!(lines.iter().any(|l| l.starts_with("RESUMED ")), "{lines:?}");
    same(Job::DigitsLong, &resumed, &lines);
    drop(c);
}
