//! Helpers for the multi-process cluster tests: child guards that kill by
//! pid on drop, bounded line readers, a generated corpus.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped on drop.
pub(crate) struct Guard {
    pub(crate) child: Child,
    lines: Option<mpsc::Receiver<String>>,
    /// A directory that lives as long as the process (a driver's work
    /// directory).
    _dir: Option<tempfile::TempDir>,
}

impl Guard {
    /// Guards `child`, whose output is not read.
    pub(crate) fn of(child: Child) -> Guard {
        Guard {
            child,
            lines: None,
            _dir: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next stdout line, or panic after `timeout`.
    pub(crate) fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let rx = self.lines.as_ref().expect("stdout not captured");
        match rx.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no output line within {timeout:?}"),
        }
    }

    /// Read lines until one starts with `prefix`; returns it.
    pub(crate) fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left.max(Duration::from_millis(1))) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!("process exited before printing {prefix:?}"),
            }
        }
    }

    /// All remaining stdout lines until the process closes stdout.
    pub(crate) fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("process still running after {timeout:?}; output so far: {out:?}");
            }
            match self.next_line(left) {
                Some(l) => out.push(l),
                None => return out,
            }
        }
    }

    /// Wait for exit within `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL now.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn the kiln binary with stdout captured line by line.
pub(crate) fn kiln(args: &[&str]) -> Guard {
    kiln_env(args, &[])
}

/// [`kiln`] with extra environment variables.
pub(crate) fn kiln_env(args: &[&str], env: &[(&str, &Path)]) -> Guard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning kiln");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Guard {
        child,
        lines: Some(rx),
        _dir: None,
    }
}

/// Start `kiln driver` with `args` (its work directory a temporary one)
/// and return it with its `TOKEN@ADDR`.
pub(crate) fn driver(args: &[&str]) -> (Guard, String) {
    let work = tempfile::tempdir().expect("a work directory");
    let work_arg = work.path().to_str().expect("a UTF-8 path").to_owned();
    let mut all = vec!["driver", "--listen", "127.0.0.1:0", "--work-dir", &work_arg];
    all.extend_from_slice(args);
    let mut g = kiln(&all);
    g._dir = Some(work);
    let line = g.wait_for("JOIN ", Duration::from_secs(30));
    let join = line["JOIN ".len()..].trim().to_owned();
    (g, join)
}

/// Executors the driver at `join` lists (`kiln status`).
pub(crate) fn executors_listed(join: &str) -> usize {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["status", "--join", join])
        .output()
        .expect("kiln status");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip(1)
        .take_while(|l| !l.starts_with("lost executors:"))
        .count()
}

/// Wait until the driver at `join` lists `n` executors.
pub(crate) fn wait_executors(join: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = executors_listed(join);
        if listed >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {listed} of {n} executors registered within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kiln submit --cluster JOIN args…` (following the job; its lines on
/// stdout).
pub(crate) fn submit(join: &str, args: &[&str]) -> Guard {
    let mut all = vec!["submit", "--cluster", join];
    all.extend_from_slice(args);
    kiln(&all)
}

/// Start `kiln executor --join JOIN --name NAME --cores 1`.
pub(crate) fn executor(join: &str, name: &str) -> Guard {
    kiln(&["executor", "--join", join, "--name", name, "--cores", "1"])
}

fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Write `files` text files into `dir`; return the single-threaded count.
pub(crate) fn corpus(dir: &Path, files: usize, lines: usize) -> HashMap<String, u64> {
    let vocab = [
        "Kiln",
        "driver",
        "executor",
        "QUIC",
        "shuffle",
        "partition",
        "lineage",
        "task",
        "retry",
        "heartbeat",
        "token",
        "the",
        "a",
        "of",
        "and",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut counts = HashMap::new();
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..lines {
            let n = (next() % 12) as usize;
            let line: Vec<String> = (0..n)
                .map(|_| {
                    let r = next();
                    if r % 5 == 0 {
                        format!("w{}", r % 997)
                    } else {
                        vocab[(r % vocab.len() as u64) as usize].to_string()
                    }
                })
                .collect();
            let line = line.join(" ") + ", end.";
            for w in words(&line) {
                *counts.entry(w).or_insert(0) += 1;
            }
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(dir.join(format!("part-{f:03}.txt")), text).expect("writing corpus");
    }
    counts
}

/// Parse `word<TAB>count` lines.
pub(crate) fn read_counts(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .expect("reading output")
        .lines()
        .map(|l| {
            let (w, c) = l.split_once('\t').expect("word<TAB>count");
            (w.to_owned(), c.parse().expect("count"))
        })
        .collect()
}

/// Runs the kiln binary to its end with stdout and stderr captured,
/// killing it (by its own id) if it outlives `limit`; returns whether it
/// succeeded, its stdout and its stderr.
pub(crate) fn kiln_output(args: &[&str], limit: Duration) -> (bool, String, String) {
    kiln_output_with(args, &[], limit)
}

/// [`kiln_output`] with extra environment variables.
pub(crate) fn kiln_output_with(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (bool, String, String) {
    let o = kiln_process(args, env, limit);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs the kiln binary to its end with extra environment variables and
/// stdout and stderr captured (drained as they come, so a chatty child
/// never blocks on a full pipe), killing it by its own id if it outlives
/// `limit`, which fails the test.
pub(crate) fn kiln_process(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kiln");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kiln {args:?} ran over {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap_or_default()),
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The repository's root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path as a command-line argument.
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Copies directory `from` into `to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readable") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}
