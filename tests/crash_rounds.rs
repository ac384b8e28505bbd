//! Crash rounds, as sled tests itself: a digits run that checkpoints every
//! few iterations is killed (SIGKILL) at random moments, its blob and
//! manifest writes included, round after round; after every kill its
//! store verifies, and the run resumed from it after the last kill ends
//! with weights bit-identical to a run never interrupted.
//!
//! `KILN_CRASH_ROUNDS` sets the number of rounds (default 4, as in CI;
//! run 50 or more locally), `KILN_CRASH_SEED` the seed of the kill times.
//! A second test stops the run at each of the checkpoint writer's crash
//! points (`KILN_CRASH_AT`), so every step of a write is hit for sure.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::Path;
use std::time::{Duration, Instant};

use helpers::{kiln, kiln_output, kiln_output_with, s};
use kiln::nn::ModuleExt;
use kiln::runtime::checkpoint::{CRASH_AT_ENV, CRASH_POINTS};

const LIMIT: Duration = Duration::from_secs(300);

fn flat_params(path: &Path) -> Vec<f32> {
    kiln::nn::serialize::load::<f32>(path)
        .expect("model loads")
        .flat_params()
}

/// The run's fixed settings: every round and the reference use them.
const RUN: [&str; 10] = [
    "digits",
    "--epochs",
    "3",
    "--partitions",
    "2",
    "--seed",
    "5",
    "--batch-size",
    "64",
    "--no-progress",
];

/// A small deterministic generator of kill times (xorshift).
struct KillTimes(u64);

impl KillTimes {
    fn next(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo_ms + self.0 % (hi_ms - lo_ms))
    }
}

/// Whether the store at `dir` holds a checkpoint, checking that every
/// checkpoint it lists verifies.
fn verified_checkpoints(dir: &Path) -> usize {
    if !dir.join("manifest").is_dir() {
        return 0;
    }
    let (ok, out, err) = kiln_output(&["checkpoint", "list", "--dir", s(dir)], LIMIT);
    assert!(ok, "the store does not open after a kill: {err}");
    assert!(
        !out.contains("CORRUPT"),
        "a listed checkpoint fails to verify:\n{out}"
    );
    out.lines().filter(|l| l.ends_with(" ok")).count()
}

/// The arguments of the next round: resume the run if its store holds a
/// checkpoint, else start it.
fn round_args(ckpt: &Path, model: &Path) -> Vec<String> {
    let mut args: Vec<String>;
    if verified_checkpoints(ckpt) > 0 {
        args = ["checkpoint", "resume", "--dir", s(ckpt), "--executors", "1"]
            .map(String::from)
            .to_vec();
        args.push("--no-progress".into());
    } else {
        args = vec!["local".into(), "--executors".into(), "1".into()];
        args.extend(RUN.map(String::from));
        args.extend(
            [
                "--checkpoint-dir",
                s(ckpt),
                "--checkpoint-every",
                "2",
                "--keep-checkpoints",
                "2",
            ]
            .map(String::from),
        );
    }
    args.extend(["--out".to_string(), s(model).to_string()]);
    args
}

#[test]
fn killed_at_random_points_the_run_resumes_to_bit_identical_weights() {
    let rounds: usize = std::env::var("KILN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de);
    eprintln!("crash rounds: {rounds}, seed {seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = dir.path().join("reference.safetensors");
    let timing = Instant::now();
    run_reference(&reference);
    // Kills fall anywhere in a run's lifetime, start-up included.
    let lifetime_ms = (timing.elapsed().as_millis() as u64).max(300);

    let ckpt = dir.path().join("ckpt");
    let model = dir.path().join("model.safetensors");
    let expected = flat_params(&reference);
    let mut times = KillTimes(seed | 1);
    let mut kills = 0;
    let mut cycles = 0;
    // Cycles of one run each, from an empty store to its end, killed at
    // random moments until `rounds` kills have been made.
    while kills < rounds || cycles == 0 {
        cycles += 1;
        let _ = std::fs::remove_dir_all(&ckpt);
        let _ = std::fs::remove_file(&model);
        loop {
            let args = round_args(&ckpt, &model);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if kills >= rounds {
                let (ok, out, err) = kiln_output(&refs, LIMIT);
                assert!(ok, "the run after {kills} kills: {out}\n{err}");
                break;
            }
            let mut run = kiln(&refs);
            let kill_at = times.next(20, lifetime_ms);
            let started = Instant::now();
            let exited = loop {
                if let Some(status) = run.child.try_wait().expect("wait") {
                    break Some(status);
                }
                if started.elapsed() >= kill_at {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            match exited {
                Some(status) => {
                    assert!(status.success(), "cycle {cycles} ({args:?}) failed");
                    break;
                }
                None => {
                    run.kill9();
                    kills += 1;
                    verified_checkpoints(&ckpt);
                }
            }
        }
        assert!(
            flat_params(&model) == expected,
            "cycle {cycles}: after {kills} kills in all the weights differ from the uninterrupted run's"
        );
    }
    eprintln!("{kills} kills in {cycles} runs, every run bit-identical to the uninterrupted one");
}

/// The uninterrupted run, its model written to `out`.
fn run_reference(out: &Path) {
    let mut args = vec!["local", "--executors", "1"];
    args.extend(RUN);
    args.extend(["--out", s(out)]);
    let (ok, stdout, err) = kiln_output(&args, LIMIT);
    assert!(ok, "{stdout}\n{err}");
}

#[test]
fn stopped_at_every_step_of_a_checkpoint_write_the_run_resumes_to_bit_identical_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = dir.path().join("reference.safetensors");
    run_reference(&reference);
    let expected = flat_params(&reference);
    for point in CRASH_POINTS {
        // The first checkpoint, and a later one (past the first retention).
        for n in [1, 4] {
            let ckpt = dir.path().join(format!("ckpt-{point}-{n}"));
            let model = dir.path().join(format!("model-{point}-{n}.safetensors"));
            let args = round_args(&ckpt, &model);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let crash_at = format!("{point}:{n}");
            let (ok, out, err) = kiln_output_with(&refs, &[(CRASH_AT_ENV, &crash_at)], LIMIT);
            assert!(!ok, "{crash_at}: the run did not stop: {out}");
            assert!(err.contains("aborting at crash point"), "{crash_at}: {err}");
            verified_checkpoints(&ckpt);
            let args = round_args(&ckpt, &model);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = kiln_output(&refs, LIMIT);
            assert!(ok, "{crash_at}: the run after the crash: {out}\n{err}");
            assert!(
                flat_params(&model) == expected,
                "{crash_at}: the weights differ from the uninterrupted run's"
            );
        }
    }
}
