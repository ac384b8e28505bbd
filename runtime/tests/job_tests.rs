//! The job service end to end: a driver with a test [`JobRunner`] and real
//! [`ClusterClient`]s over QUIC. Queue order, following, disconnects,
//! cancellation, failures and panics, fetching outputs, refused
//! submissions, a wrong join token, and a job that runs a dataset action on
//! an in-process cluster.
//!
//! Every wait is bounded; nothing asserts on durations, only on order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_runtime::jobs::{Accepted, JobFuture, Progress, CANCEL_GRACE};
use kiln_runtime::transport::{self, JoinToken, Role};
use kiln_runtime::{
    BoxError, ClusterClient, Driver, DriverConfig, Error, JobContext, JobEvent, JobInfo, JobRunner,
    JobState, LocalCluster, LocalConfig, Registry,
};

/// Network timeout of every client.
const T: Duration = Duration::from_secs(10);
/// Bound on any one wait of a test (a follow, a poll for a state).
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A tiny JSON reader: the runtime passes settings as JSON text, and this
// crate's tests have no JSON library.

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    List(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct JsonReader<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonReader<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i))
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("unexpected token at byte {}", self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    let key = self.string()?;
                    self.expect(b':')?;
                    fields.push((key, self.value()?));
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return Err(format!("expected `,` or `}}` at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::List(items));
                }
                loop {
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::List(items));
                        }
                        _ => return Err(format!("expected `,` or `]` at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| b"+-.eE0123456789".contains(c))
                {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                text.parse()
                    .map(Json::Num)
                    .map_err(|_| format!("bad number {text:?}"))
            }
            Some(_) => Err(format!("unexpected character at byte {}", self.i)),
            None => Err("unexpected end".into()),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err("unterminated escape".into());
                    };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        _ => return Err(format!("unsupported escape `\\{}`", e as char)),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let mut r = JsonReader {
        s: text.as_bytes(),
        i: 0,
    };
    let v = r.value()?;
    if r.peek().is_some() {
        return Err(format!("trailing characters at byte {}", r.i));
    }
    Ok(v)
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::from('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Settings object of one submission: only `known` fields, each decoded
/// by name (errors name the field).
struct Fields(BTreeMap<String, Json>);

impl Fields {
    fn parse(settings: &str, known: &[&str]) -> Result<Fields, String> {
        let json = parse_json(settings).map_err(|e| format!("settings are not JSON: {e}"))?;
        let Json::Obj(fields) = json else {
            return Err("settings must be a JSON object".into());
        };
        for (k, _) in &fields {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "unknown setting `{k}` (known: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(Fields(fields.into_iter().collect()))
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Num(x)) if *x >= 0.0 && x.fract() == 0.0 => Ok(Some(*x as u64)),
            Some(other) => Err(format!(
                "setting `{name}`: expected a whole number >= 0, got {other:?}"
            )),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, String> {
        match self.0.get(name) {
            None | Some(Json::Null) => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "setting `{name}`: expected true or false, got {other:?}"
            )),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, String> {
        match self.0.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "setting `{name}`: expected a string, got {other:?}"
            )),
        }
    }

    fn lines(&self, name: &str) -> Result<Vec<String>, String> {
        let bad = |v: &Json| format!("setting `{name}`: expected a list of strings, got {v:?}");
        match self.0.get(name) {
            None => Ok(Vec::new()),
            Some(Json::List(items)) => items
                .iter()
                .map(|i| match i {
                    Json::Str(s) => Ok(s.clone()),
                    other => Err(bad(other)),
                })
                .collect(),
            Some(other) => Err(bad(other)),
        }
    }
}

// ---------------------------------------------------------------------------
// The test runner's job kinds.

const KINDS: &[&str] = &["count", "echo", "fail", "panic", "sleep", "stubborn"];

#[derive(Debug, Clone)]
enum Spec {
    /// Prints `lines` (one every `gap_ms`, reporting progress if asked),
    /// then writes `bytes` bytes of [`pattern`] as output `output`
    /// (deleted again with `delete_output`); with `hold`, then waits to be
    /// cancelled.
    Echo {
        lines: Vec<String>,
        gap_ms: u64,
        progress: bool,
        output: Option<String>,
        bytes: u64,
        delete_output: bool,
        hold: bool,
    },
    /// Waits `ms` (or forever), stopping early when cancelled.
    Sleep { ms: Option<u64> },
    /// Ends with `Err(message)`.
    Fail { message: String },
    /// Panics with `message`: inside the job's future, or with `early` in
    /// `JobRunner::run` itself, before returning the future.
    Panic { message: String, early: bool },
    /// Ignores cancellation; ends after `ms` (or never).
    Stubborn { ms: Option<u64> },
    /// Counts and sums `0..n` on the driver's executors.
    Count { n: u64, partitions: u64 },
}

impl Spec {
    fn decode(kind: &str, settings: &str) -> Result<Spec, String> {
        match kind {
            "echo" => {
                let f = Fields::parse(
                    settings,
                    &[
                        "lines",
                        "gap_ms",
                        "progress",
                        "output",
                        "bytes",
                        "delete_output",
                        "hold",
                    ],
                )?;
                Ok(Spec::Echo {
                    lines: f.lines("lines")?,
                    gap_ms: f.u64("gap_ms")?.unwrap_or(0),
                    progress: f.bool("progress")?,
                    output: f.string("output")?,
                    bytes: f.u64("bytes")?.unwrap_or(0),
                    delete_output: f.bool("delete_output")?,
                    hold: f.bool("hold")?,
                })
            }
            "sleep" => {
                let f = Fields::parse(settings, &["ms"])?;
                Ok(Spec::Sleep { ms: f.u64("ms")? })
            }
            "fail" => {
                let f = Fields::parse(settings, &["message"])?;
                Ok(Spec::Fail {
                    message: f
                        .string("message")?
                        .ok_or("setting `message` is required")?,
                })
            }
            "panic" => {
                let f = Fields::parse(settings, &["message", "early"])?;
                Ok(Spec::Panic {
                    message: f.string("message")?.unwrap_or_else(|| "boom".into()),
                    early: f.bool("early")?,
                })
            }
            "stubborn" => {
                let f = Fields::parse(settings, &["ms"])?;
                Ok(Spec::Stubborn { ms: f.u64("ms")? })
            }
            "count" => {
                let f = Fields::parse(settings, &["n", "partitions"])?;
                let partitions = f.u64("partitions")?.unwrap_or(4);
                if partitions == 0 {
                    return Err("setting `partitions`: must be at least 1".into());
                }
                Ok(Spec::Count {
                    n: f.u64("n")?.unwrap_or(100),
                    partitions,
                })
            }
            other => Err(format!(
                "unknown kind {other:?} (known: {})",
                KINDS.join(", ")
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            Spec::Echo { lines, .. } => format!("echo {} lines", lines.len()),
            Spec::Sleep { ms: Some(ms) } => format!("sleep {ms} ms"),
            Spec::Sleep { ms: None } => "sleep until cancelled".into(),
            Spec::Fail { message } => format!("fail with {message:?}"),
            Spec::Panic { early, .. } => format!("panic (early: {early})"),
            Spec::Stubborn { .. } => "ignore cancellation".into(),
            Spec::Count { n, partitions } => format!("count 0..{n} in {partitions} partitions"),
        }
    }
}

/// What the runner saw: calls of `accept`, jobs started (in order), jobs
/// running at once.
#[derive(Default)]
struct Probe {
    accepts: AtomicUsize,
    started: Mutex<Vec<u64>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Probe {
    fn enter(self: &Arc<Self>, id: u64) -> Running {
        self.started.lock().unwrap().push(id);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        Running(self.clone())
    }

    fn started(&self) -> Vec<u64> {
        self.started.lock().unwrap().clone()
    }
}

/// A running job; dropped when its future ends (or is aborted).
struct Running(Arc<Probe>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TestRunner {
    probe: Arc<Probe>,
}

impl JobRunner for TestRunner {
    fn accept(&self, kind: &str, settings: &str) -> Result<Accepted, BoxError> {
        self.probe.accepts.fetch_add(1, Ordering::SeqCst);
        let spec = Spec::decode(kind, settings)?;
        Ok(Accepted {
            settings: settings.to_string(),
            description: spec.describe(),
        })
    }

    fn run(&self, kind: String, settings: String, ctx: JobContext) -> JobFuture {
        let spec = match Spec::decode(&kind, &settings) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        };
        if let Spec::Panic {
            message,
            early: true,
        } = &spec
        {
            panic!("{message}");
        }
        let probe = self.probe.clone();
        Box::pin(async move {
            let _running = probe.enter(ctx.id());
            Ok(run_spec(spec, &ctx).await?)
        })
    }
}

/// Deterministic bytes of an output file.
fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

async fn run_spec(spec: Spec, ctx: &JobContext) -> Result<(), String> {
    match spec {
        Spec::Echo {
            lines,
            gap_ms,
            progress,
            output,
            bytes,
            delete_output,
            hold,
        } => {
            let total = lines.len() as u64;
            for (i, line) in lines.into_iter().enumerate() {
                if gap_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                }
                ctx.line(line);
                if progress {
                    ctx.progress(Progress {
                        done: i as u64 + 1,
                        total,
                        message: format!("line {}", i + 1),
                    });
                }
            }
            if let Some(name) = output {
                let path = ctx.dir().join(format!("{name}.bin"));
                std::fs::write(&path, pattern(bytes)).map_err(|e| e.to_string())?;
                ctx.add_output(&name, path.clone());
                if delete_output {
                    std::fs::remove_file(&path).map_err(|e| e.to_string())?;
                }
            }
            if hold {
                ctx.cancelled().await;
                return Err("stopped: cancelled".into());
            }
            Ok(())
        }
        Spec::Sleep { ms } => {
            ctx.line("sleeping");
            let nap = async {
                match ms {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = nap => {
                    ctx.line("woke");
                    Ok(())
                }
                () = ctx.cancelled() => Err("cancelled while sleeping".into()),
            }
        }
        Spec::Fail { message } => {
            ctx.line("about to fail");
            Err(message)
        }
        Spec::Panic { message, .. } => {
            ctx.line("about to panic");
            panic!("{message}")
        }
        Spec::Stubborn { ms } => {
            ctx.line("stubborn: started");
            let deadline = ms.map(|ms| Instant::now() + Duration::from_millis(ms));
            let mut noticed = false;
            while deadline.is_none_or(|d| Instant::now() < d) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if ctx.is_cancelled() && !noticed {
                    noticed = true;
                    ctx.line("stubborn: cancel noticed, carrying on");
                }
            }
            ctx.line("stubborn: done");
            Ok(())
        }
        Spec::Count { n, partitions } => {
            let data: Vec<i64> = (0..n as i64).collect();
            let ds = ctx
                .driver()
                .parallelize(data, partitions as u32)
                .map_err(|e| e.to_string())?;
            let count = ds.count().await.map_err(|e| e.to_string())?;
            let sum = ds
                .reduce("sum_i64")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            ctx.line(format!("COUNT {count} SUM {sum}"));
            Ok(())
        }
    }
}

/// Settings of an `echo` job.
#[derive(Default)]
struct Echo {
    lines: Vec<String>,
    gap_ms: u64,
    progress: bool,
    output: Option<(String, u64)>,
    delete_output: bool,
    hold: bool,
}

impl Echo {
    fn lines<S: AsRef<str>>(lines: &[S]) -> Echo {
        Echo {
            lines: lines.iter().map(|l| l.as_ref().to_string()).collect(),
            ..Echo::default()
        }
    }

    fn settings(&self) -> String {
        let lines: Vec<String> = self.lines.iter().map(|l| js(l)).collect();
        let mut s = format!(
            "{{\"lines\": [{}], \"gap_ms\": {}, \"progress\": {}, \"delete_output\": {}, \"hold\": {}",
            lines.join(", "),
            self.gap_ms,
            self.progress,
            self.delete_output,
            self.hold
        );
        if let Some((name, bytes)) = &self.output {
            s.push_str(&format!(", \"output\": {}, \"bytes\": {bytes}", js(name)));
        }
        s.push('}');
        s
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// `f`, or a panic naming `what` after [`WAIT`].
async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {} s", WAIT.as_secs()))
}

/// A driver (no executors) running the test kinds in a fresh directory.
struct Setup {
    driver: Driver,
    probe: Arc<Probe>,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let driver = Driver::start(DriverConfig::default(), Arc::new(Registry::new()))
            .await
            .unwrap();
        let (probe, dir) = install(&driver);
        Setup { driver, probe, dir }
    }

    async fn client(&self) -> ClusterClient {
        connect(&self.driver).await
    }
}

fn install(driver: &Driver) -> (Arc<Probe>, tempfile::TempDir) {
    let probe = Arc::new(Probe::default());
    let dir = tempfile::tempdir().unwrap();
    driver
        .accept_jobs(
            Arc::new(TestRunner {
                probe: probe.clone(),
            }),
            dir.path(),
        )
        .unwrap();
    (probe, dir)
}

async fn connect(driver: &Driver) -> ClusterClient {
    bounded(
        "connect",
        ClusterClient::connect(driver.addr(), driver.token(), T),
    )
    .await
    .unwrap()
}

/// What one follow received.
#[derive(Debug)]
struct Followed {
    lines: Vec<(u64, String)>,
    progress: Vec<Progress>,
    info: JobInfo,
}

impl Followed {
    fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|(_, t)| t.as_str()).collect()
    }
}

async fn follow(
    c: &ClusterClient,
    id: u64,
    from_line: u64,
    live: bool,
) -> kiln_runtime::Result<Followed> {
    let mut lines = Vec::new();
    let mut progress = Vec::new();
    let mut finished = None;
    let info = bounded(
        "follow",
        c.follow(id, from_line, live, |e| {
            assert!(finished.is_none(), "an event after Finished: {e:?}");
            match e {
                JobEvent::Line { n, text } => lines.push((*n, text.clone())),
                JobEvent::Progress(p) => progress.push(p.clone()),
                JobEvent::Finished(info) => finished = Some(info.clone()),
            }
        }),
    )
    .await?;
    assert_eq!(
        finished.as_ref(),
        Some(&info),
        "the Finished record ends the stream"
    );
    Ok(Followed {
        lines,
        progress,
        info,
    })
}

/// Follows job `id` from its first line to its end.
async fn follow_to_end(c: &ClusterClient, id: u64) -> Followed {
    let f = follow(c, id, 0, true).await.unwrap();
    assert!(f.info.state.is_finished(), "{:?}", f.info);
    f
}

/// Polls job `id` until `pred` holds.
async fn wait_job(
    c: &ClusterClient,
    id: u64,
    what: &str,
    pred: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    bounded(what, async {
        loop {
            let j = c.job(id).await.unwrap();
            if pred(&j) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Line numbers `from..from + texts.len()` with `texts`.
fn numbered<S: AsRef<str>>(from: u64, texts: &[S]) -> Vec<(u64, String)> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (from + i as u64, t.as_ref().to_string()))
        .collect()
}

fn rank(s: &JobState) -> u8 {
    match s {
        JobState::Queued => 0,
        JobState::Running => 1,
        _ => 2,
    }
}

/// Names in `dir` (to spot a fetch's leftover temporary file).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// 1. Queue order.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_one_at_a_time_in_submission_order() {
    let s = Setup::start().await;
    let c = s.client().await;
    let mut submitted = Vec::new();
    for _ in 0..3 {
        let j = c.submit("sleep", r#"{"ms": 300}"#).await.unwrap();
        assert_eq!(j.state, JobState::Queued);
        assert_eq!(j.kind, "sleep");
        assert_eq!(j.description, "sleep 300 ms");
        assert_eq!((j.started_ms, j.finished_ms, j.lines), (0, 0, 0));
        submitted.push(j);
    }
    let ids: Vec<u64> = submitted.iter().map(|j| j.id).collect();
    assert_eq!(ids, [1, 2, 3], "ids increase from 1 in submission order");

    // Every snapshot of the list: at most one job running, and no job
    // ahead of the one running (or of a queued one) still waiting.
    let mut seen: BTreeMap<u64, Vec<JobState>> =
        ids.iter().map(|&id| (id, vec![JobState::Queued])).collect();
    let finals = bounded("all three jobs end", async {
        loop {
            let list = c.jobs().await.unwrap();
            assert_eq!(list.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
            let ranks: Vec<u8> = list.iter().map(|j| rank(&j.state)).collect();
            assert!(
                ranks.windows(2).all(|w| w[0] >= w[1]),
                "a later job ran before an earlier one: {list:?}"
            );
            assert!(ranks.iter().filter(|&&r| r == 1).count() <= 1, "{list:?}");
            for j in &list {
                let states = seen.get_mut(&j.id).unwrap();
                if states.last() != Some(&j.state) {
                    states.push(j.state.clone());
                }
            }
            if list.iter().all(|j| j.state.is_finished()) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for (id, states) in &seen {
        let ranks: Vec<u8> = states.iter().map(rank).collect();
        assert!(
            ranks.windows(2).all(|w| w[0] < w[1]),
            "job {id} went {states:?}"
        );
        assert_eq!(states.last(), Some(&JobState::Succeeded), "job {id}");
    }
    for j in &finals {
        assert!(
            j.submitted_ms > 0 && j.started_ms >= j.submitted_ms,
            "{j:?}"
        );
        assert!(j.finished_ms >= j.started_ms, "{j:?}");
        assert_eq!(j.lines, 2, "{j:?}");
    }
    for w in finals.windows(2) {
        assert!(
            w[1].started_ms >= w[0].finished_ms,
            "job {} started before job {} finished: {w:?}",
            w[1].id,
            w[0].id
        );
    }
    assert_eq!(s.probe.started(), ids);
    assert_eq!(s.probe.max_running.load(Ordering::SeqCst), 1);
    let f = follow_to_end(&c, 2).await;
    assert_eq!(f.lines, numbered(0, &["sleeping", "woke"]));
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. Following.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_every_line_in_order_live_or_late() {
    let s = Setup::start().await;
    let c = s.client().await;
    let texts: Vec<String> = (0..60)
        .map(|i| format!("line {i}: \"quoted\" \\ naïve ✓"))
        .collect();
    let echo = Echo {
        gap_ms: 5,
        progress: true,
        ..Echo::lines(&texts)
    };
    let j = c.submit("echo", &echo.settings()).await.unwrap();

    // Live, from the start (two at once, on one connection).
    let (a, b) = tokio::join!(follow(&c, j.id, 0, true), follow(&c, j.id, 0, true));
    for live in [a.unwrap(), b.unwrap()] {
        assert_eq!(live.lines, numbered(0, &texts));
        assert_eq!(live.info.state, JobState::Succeeded);
        assert_eq!(live.info.lines, 60);
        // Progress may be coalesced, but in order and ending where the
        // job left it.
        assert!(!live.progress.is_empty());
        assert!(live.progress.windows(2).all(|w| w[0].done < w[1].done));
        assert_eq!(live.progress.last(), live.info.progress.as_ref());
        assert_eq!(
            live.progress.last().map(|p| (p.done, p.total)),
            Some((60, 60))
        );
    }

    // Late: a new connection after the job ended gets everything.
    let late_client = s.client().await;
    let late = follow(&late_client, j.id, 0, true).await.unwrap();
    assert_eq!(late.lines, numbered(0, &texts));
    assert_eq!(late.info.state, JobState::Succeeded);
    // from_line skips lines; past the end there are none.
    let tail = follow(&late_client, j.id, 55, true).await.unwrap();
    assert_eq!(tail.lines, numbered(55, &texts[55..]));
    let none = follow(&late_client, j.id, 1000, true).await.unwrap();
    assert!(none.lines.is_empty());
    assert_eq!(none.info.state, JobState::Succeeded);
    // The job's log file holds the same lines.
    let log = std::fs::read_to_string(Path::new(&late.info.dir).join("log.txt")).unwrap();
    let logged: Vec<&str> = log.lines().collect();
    assert_eq!(
        &logged[..60],
        texts.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(logged[60], format!("JOB {} succeeded", j.id));

    // `follow: false` on a running job: the lines so far, then its record
    // (still running); from_line applies too.
    let held = Echo {
        hold: true,
        ..Echo::lines(&["one", "two", "three"])
    };
    let h = c.submit("echo", &held.settings()).await.unwrap();
    wait_job(&c, h.id, "three lines", |j| j.lines == 3).await;
    let now = follow(&c, h.id, 0, false).await.unwrap();
    assert_eq!(now.lines, numbered(0, &["one", "two", "three"]));
    assert_eq!(now.info.state, JobState::Running);
    let rest = follow(&c, h.id, 2, false).await.unwrap();
    assert_eq!(rest.lines, numbered(2, &["three"]));
    // A live follower of it ends when it is cancelled.
    let (cancelled, followed) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel(h.id).await
        },
        follow(&c, h.id, 1, true)
    );
    cancelled.unwrap();
    let followed = followed.unwrap();
    let ended = format!("JOB {} cancelled", h.id);
    assert_eq!(
        followed.lines,
        numbered(1, &["two", "three", ended.as_str()])
    );
    assert_eq!(followed.info.state, JobState::Cancelled);

    // Unknown job.
    match follow(&c, 99, 0, true).await {
        Err(Error::UnknownJob { id: 99 }) => {}
        other => panic!("follow of an unknown job: {other:?}"),
    }
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Disconnects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_running_when_its_client_disconnects() {
    let s = Setup::start().await;
    let texts: Vec<String> = (0..40).map(|i| format!("step {i}")).collect();
    let echo = Echo {
        gap_ms: 20,
        ..Echo::lines(&texts)
    };
    let c = s.client().await;
    let j = c.submit("echo", &echo.settings()).await.unwrap();
    // Follow until line 4, then drop the follow and the connection.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut finished_early = false;
    tokio::select! {
        r = c.follow(j.id, 0, true, |e| {
            if let JobEvent::Line { n, .. } = e {
                let _ = tx.send(*n);
            }
        }) => {
            finished_early = true;
            let _ = r;
        }
        () = bounded("line 4", async {
            while let Some(n) = rx.recv().await {
                if n >= 4 {
                    return;
                }
            }
        }) => {}
    }
    assert!(!finished_early, "the job ended before line 4 was followed");
    drop(c);

    let c = s.client().await;
    let f = follow_to_end(&c, j.id).await;
    assert_eq!(f.info.state, JobState::Succeeded);
    assert_eq!(f.lines, numbered(0, &texts));
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Cancellation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_running_finished_and_unknown_jobs() {
    let s = Setup::start().await;
    let c = s.client().await;
    let sleeper = c.submit("sleep", "{}").await.unwrap();
    assert_eq!(sleeper.description, "sleep until cancelled");
    let queued = c
        .submit("echo", &Echo::lines(&["never printed"]).settings())
        .await
        .unwrap();
    let after = c
        .submit("echo", &Echo::lines(&["after"]).settings())
        .await
        .unwrap();
    wait_job(&c, sleeper.id, "the sleeper runs", |j| {
        j.state == JobState::Running && j.lines == 1
    })
    .await;

    // A queued job: cancelled at once, never runs; its follower ends.
    let queued_follower = follow(&c, queued.id, 0, true);
    let (follower, cancelled) = tokio::join!(queued_follower, async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.cancel(queued.id).await
    });
    let cancelled = cancelled.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.finished_ms > 0);
    let follower = follower.unwrap();
    assert!(follower.lines.is_empty());
    assert_eq!(follower.info.state, JobState::Cancelled);
    assert_eq!(
        c.job(sleeper.id).await.unwrap().state,
        JobState::Running,
        "cancelling a queued job leaves the running one alone"
    );

    // A running, cooperative job: ends as Cancelled.
    c.cancel(sleeper.id).await.unwrap();
    let f = follow_to_end(&c, sleeper.id).await;
    assert_eq!(f.info.state, JobState::Cancelled);
    assert_eq!(
        f.texts(),
        [
            "sleeping".to_string(),
            format!("JOB {} cancelled", sleeper.id)
        ]
    );
    // The queue goes on, past the cancelled queued job.
    let a = follow_to_end(&c, after.id).await;
    assert_eq!(a.info.state, JobState::Succeeded);
    assert_eq!(a.texts(), ["after"]);
    assert_eq!(s.probe.started(), [sleeper.id, after.id]);
    let q = c.job(queued.id).await.unwrap();
    assert_eq!(
        (q.state, q.started_ms, q.lines),
        (JobState::Cancelled, 0, 0)
    );
    assert!(
        !Path::new(&q.dir).exists(),
        "a job that never ran has no directory"
    );
    assert_eq!(c.jobs().await.unwrap().len(), 3);

    // Finished jobs (however they ended) and unknown ids.
    for (id, word) in [
        (after.id, "succeeded"),
        (sleeper.id, "cancelled"),
        (queued.id, "cancelled"),
    ] {
        let e = c.cancel(id).await.unwrap_err();
        assert!(e.to_string().contains(&format!("job {id} ")), "{e}");
        match e {
            Error::JobFinished { id: got, state } => assert_eq!((got, state.as_str()), (id, word)),
            other => panic!("cancel of finished job {id}: {other:?}"),
        }
    }
    match c.cancel(42).await {
        Err(Error::UnknownJob { id: 42 }) => {}
        other => panic!("cancel of an unknown job: {other:?}"),
    }
    s.driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ignores_cancel_but_ends_in_time_counts_as_cancelled() {
    let s = Setup::start().await;
    let c = s.client().await;
    let j = c.submit("stubborn", r#"{"ms": 600}"#).await.unwrap();
    wait_job(&c, j.id, "the stubborn job runs", |j| j.lines == 1).await;
    let reply = c.cancel(j.id).await.unwrap();
    assert_eq!(
        reply.state,
        JobState::Running,
        "cancel asks; the job decides"
    );
    let f = follow_to_end(&c, j.id).await;
    assert_eq!(f.info.state, JobState::Cancelled);
    assert_eq!(
        f.texts(),
        [
            "stubborn: started".to_string(),
            "stubborn: cancel noticed, carrying on".into(),
            "stubborn: done".into(),
            format!("JOB {} cancelled", j.id),
        ]
    );
    s.driver.shutdown().await;
}

/// The grace period is 30 s, so this one is slow: `cargo test -p
/// kiln-runtime --test job_tests -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "waits out CANCEL_GRACE (30 s)"]
async fn a_job_that_ignores_cancel_is_aborted_after_the_grace_period() {
    let s = Setup::start().await;
    let c = s.client().await;
    let j = c.submit("stubborn", "{}").await.unwrap();
    let next = c
        .submit("echo", &Echo::lines(&["next"]).settings())
        .await
        .unwrap();
    wait_job(&c, j.id, "the stubborn job runs", |j| j.lines == 1).await;
    c.cancel(j.id).await.unwrap();
    wait_job(&c, j.id, "the cancel is noticed", |j| j.lines == 2).await;
    // Within the grace period it still runs, and holds up the queue.
    assert_eq!(c.job(j.id).await.unwrap().state, JobState::Running);
    assert_eq!(c.job(next.id).await.unwrap().state, JobState::Queued);
    let f = tokio::time::timeout(
        CANCEL_GRACE + Duration::from_secs(15),
        c.follow(j.id, 0, true, |_| {}),
    )
    .await
    .expect("the stubborn job was aborted")
    .unwrap();
    assert_eq!(f.state, JobState::Cancelled);
    assert_eq!(f.lines, 2, "aborted before it said done");
    let n = follow_to_end(&c, next.id).await;
    assert_eq!(n.info.state, JobState::Succeeded);
    // The aborted future was dropped.
    bounded("the aborted job's future is dropped", async {
        while s.probe.running.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Failures and panics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_jobs_end_failed_and_the_queue_goes_on() {
    let s = Setup::start().await;
    let c = s.client().await;
    let fail = c
        .submit("fail", r#"{"message": "disk on fire"}"#)
        .await
        .unwrap();
    let late_panic = c
        .submit("panic", r#"{"message": "boom inside the job"}"#)
        .await
        .unwrap();
    let early_panic = c
        .submit(
            "panic",
            r#"{"message": "boom before the job", "early": true}"#,
        )
        .await
        .unwrap();
    let next = c
        .submit("echo", &Echo::lines(&["still serving"]).settings())
        .await
        .unwrap();

    let n = follow_to_end(&c, next.id).await;
    assert_eq!(n.info.state, JobState::Succeeded);
    assert_eq!(n.texts(), ["still serving"]);

    let f = follow_to_end(&c, fail.id).await;
    assert_eq!(f.info.state, JobState::Failed("disk on fire".into()));
    assert_eq!(
        f.texts(),
        [
            "about to fail".to_string(),
            format!("JOB {} failed: disk on fire", fail.id)
        ]
    );
    for (id, message, lines) in [
        (late_panic.id, "boom inside the job", vec!["about to panic"]),
        (early_panic.id, "boom before the job", vec![]),
    ] {
        let p = follow_to_end(&c, id).await;
        match &p.info.state {
            JobState::Failed(m) => assert!(
                m.contains("panicked") && m.contains(message),
                "job {id}: {m}"
            ),
            other => panic!("job {id} ended {other:?}"),
        }
        // The lines, then how the job ended.
        let texts = p.texts();
        assert_eq!(texts[..texts.len() - 1], lines);
        let last = texts.last().unwrap();
        assert!(last.starts_with(&format!("JOB {id} failed: ")), "{last}");
    }
    // And it keeps taking jobs.
    let again = c
        .submit("echo", &Echo::lines(&["and again"]).settings())
        .await
        .unwrap();
    assert_eq!(
        follow_to_end(&c, again.id).await.info.state,
        JobState::Succeeded
    );
    assert_eq!(s.probe.running.load(Ordering::SeqCst), 0);
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Fetching outputs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_fetched_byte_exact_and_atomically() {
    let s = Setup::start().await;
    let c = s.client().await;
    // Over two of the driver's 1 MiB chunks, and not a multiple of one.
    let len = (2 << 20) + 12_345;
    let with_output = Echo {
        output: Some(("model".into(), len)),
        ..Echo::lines(&["wrote the model"])
    };
    let j = c.submit("echo", &with_output.settings()).await.unwrap();
    let info = follow_to_end(&c, j.id).await.info;
    assert_eq!(info.state, JobState::Succeeded);
    assert_eq!(info.outputs, ["model"]);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("model.bin");
    let got = bounded("fetch", c.fetch(j.id, "model", &dest))
        .await
        .unwrap();
    assert_eq!(got.path, dest);
    assert_eq!(got.len, len);
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(bytes.len() as u64, len);
    assert!(bytes == pattern(len), "fetched bytes differ");
    // Again, over the existing file: replaced, same bytes.
    std::fs::write(&dest, b"stale").unwrap();
    bounded("fetch again", c.fetch(j.id, "model", &dest))
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == pattern(len));

    // A name the job does not have: the error lists those it has.
    let missing = out.path().join("weights.bin");
    match c.fetch(j.id, "weights", &missing).await {
        Err(Error::JobOutput { id, output, reason }) => {
            assert_eq!((id, output.as_str()), (j.id, "weights"));
            assert!(reason.contains("model"), "{reason}");
        }
        other => panic!("fetch of a missing output: {other:?}"),
    }
    // A job without outputs, and an unknown job.
    let plain = c
        .submit("echo", &Echo::lines(&["nothing to fetch"]).settings())
        .await
        .unwrap();
    follow_to_end(&c, plain.id).await;
    match c.fetch(plain.id, "model", &missing).await {
        Err(Error::JobOutput { reason, .. }) => {
            assert!(reason.contains("no outputs"), "{reason}")
        }
        other => panic!("fetch from a job without outputs: {other:?}"),
    }
    match c.fetch(77, "model", &missing).await {
        Err(Error::UnknownJob { id: 77 }) => {}
        other => panic!("fetch from an unknown job: {other:?}"),
    }

    // An output whose file is gone after it was registered.
    let gone = Echo {
        output: Some(("gone".into(), 1000)),
        delete_output: true,
        ..Echo::default()
    };
    let g = c.submit("echo", &gone.settings()).await.unwrap();
    let ginfo = follow_to_end(&c, g.id).await.info;
    assert_eq!(ginfo.outputs, ["gone"]);
    // Fetched over the earlier file, which stays as it was.
    match c.fetch(g.id, "gone", &dest).await {
        Err(Error::JobOutput { id, output, .. }) => {
            assert_eq!((id, output.as_str()), (g.id, "gone"))
        }
        other => panic!("fetch of a deleted output: {other:?}"),
    }
    assert!(
        std::fs::read(&dest).unwrap() == pattern(len),
        "a failed fetch touched the destination"
    );
    // A destination that cannot be replaced (a directory): the bytes
    // arrive, the rename fails, and the temporary file is removed.
    let blocked = out.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    match c.fetch(j.id, "model", &blocked).await {
        Err(Error::JobOutput { reason, .. }) => assert!(reason.contains("renaming"), "{reason}"),
        other => panic!("fetch onto a directory: {other:?}"),
    }
    assert!(blocked.is_dir());
    // A destination in a directory that does not exist.
    match c
        .fetch(j.id, "model", &out.path().join("no/such/dir/model.bin"))
        .await
    {
        Err(Error::JobOutput { .. }) => {}
        other => panic!("fetch into a missing directory: {other:?}"),
    }
    // Nothing was left behind by the failed fetches: no partial file, no
    // temporary file.
    assert_eq!(entries(out.path()), ["blocked", "model.bin"]);
    assert!(entries(&blocked).is_empty());
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Refused submissions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_submissions_queue_nothing() {
    let s = Setup::start().await;
    let c = s.client().await;
    let cases: [(&str, &str, &str); 6] = [
        ("teleport", "{}", "unknown kind"),
        ("echo", r#"{"lines": "not a list"}"#, "`lines`"),
        ("echo", r#"{"lines": ["a", 2]}"#, "`lines`"),
        ("echo", r#"{"lines": [], "colour": "red"}"#, "`colour`"),
        ("sleep", r#"{"ms": -5}"#, "`ms`"),
        ("sleep", "not json", "not JSON"),
    ];
    for (kind, settings, names) in cases {
        let want = Spec::decode(kind, settings).unwrap_err();
        assert!(want.contains(names), "{want}");
        match c.submit(kind, settings).await {
            Err(Error::SubmissionRefused { kind: k, reason }) => {
                assert_eq!(k, kind);
                assert_eq!(reason, want, "the runner's reason, intact");
            }
            other => panic!("{kind} {settings}: {other:?}"),
        }
        // The same through the driver's own API.
        assert!(matches!(
            s.driver.submit(kind, settings),
            Err(Error::SubmissionRefused { .. })
        ));
    }
    assert!(c.jobs().await.unwrap().is_empty(), "nothing queued");
    assert!(s.driver.jobs().unwrap().is_empty());
    // Refusals use no ids.
    let ok = c.submit("sleep", r#"{"ms": 1}"#).await.unwrap();
    assert_eq!(ok.id, 1);
    // A second runner is refused.
    assert!(matches!(
        s.driver.accept_jobs(
            Arc::new(TestRunner {
                probe: Arc::default()
            }),
            s.dir.path()
        ),
        Err(Error::JobRunnerInstalled)
    ));

    // A driver without a runner refuses every submission.
    let bare = Driver::start(DriverConfig::default(), Arc::new(Registry::new()))
        .await
        .unwrap();
    let bc = connect(&bare).await;
    match bc.submit("echo", "{}").await {
        Err(Error::JobsUnavailable { reason }) => assert!(reason.contains("runner"), "{reason}"),
        other => panic!("submission to a driver without a runner: {other:?}"),
    }
    assert!(matches!(
        bare.submit("echo", "{}"),
        Err(Error::JobsUnavailable { .. })
    ));
    assert!(bc.jobs().await.unwrap().is_empty());
    assert!(matches!(bc.job(1).await, Err(Error::UnknownJob { id: 1 })));
    drop(bc);
    bare.shutdown().await;
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. The join token.

/// The first variants of the runtime's client request, to encode a raw
/// submission as the driver would read it.
#[derive(serde::Serialize)]
#[allow(dead_code)]
enum RawRequest {
    Status,
    Session,
    Submit { kind: String, settings: String },
}

/// How the driver answered a raw submission.
#[derive(Debug)]
enum RawAnswer {
    /// Refused at the handshake, with this reason.
    Refused(String),
    /// Accepted and queued.
    Queued(JobInfo),
}

/// Sends a preamble and a `Submit` frame in one write, without waiting for
/// the handshake's answer.
async fn raw_submit(
    addr: std::net::SocketAddr,
    token: &JoinToken,
    kind: &str,
    settings: &str,
) -> RawAnswer {
    let conn = bounded("TLS", transport::connect_tls(addr, token, T))
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes =
        transport::preamble(transport::PROTOCOL_VERSION, &token.secret, Role::Client).to_vec();
    let body = transport::encode(&RawRequest::Submit {
        kind: kind.into(),
        settings: settings.into(),
    })
    .unwrap();
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    // A refusing driver may close before all of it is sent.
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let mut status = [0u8; 1];
    let read = bounded("handshake status", recv.read_exact(&mut status)).await;
    if read.is_err() || status[0] != transport::STATUS_OK {
        // The driver closes the connection after its refusal, and the close
        // can overtake the status byte: then its reason says why.
        let closed = bounded("close after a refusal", conn.closed()).await;
        return match (read, closed) {
            (Ok(()), _) => RawAnswer::Refused(transport::status_reason(status[0]).into()),
            (Err(_), transport::quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == transport::CLOSE_REFUSED.into() =>
            {
                RawAnswer::Refused(String::from_utf8_lossy(&c.reason).into_owned())
            }
            (Err(e), closed) => panic!("no handshake answer: {e}; connection: {closed}"),
        };
    }
    let reply: Option<Result<JobInfo, serde::de::IgnoredAny>> = bounded(
        "reply",
        transport::read_frame(&mut recv, addr, transport::DEFAULT_MAX_BULK_FRAME),
    )
    .await
    .unwrap();
    conn.close(transport::CLOSE_NORMAL.into(), b"done");
    match reply {
        Some(Ok(info)) => RawAnswer::Queued(info),
        other => panic!("the raw submission was not queued: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_token_is_refused_before_any_request_is_read() {
    let s = Setup::start().await;
    let (addr, token) = (s.driver.addr(), s.driver.token().clone());
    let wrong = JoinToken {
        secret: [0x5a; 32],
        ca_fingerprint: token.ca_fingerprint,
    };
    match ClusterClient::connect(addr, &wrong, T).await {
        // The reason is the status byte's, unless the driver's close
        // overtook it (under load): the client then only sees the close.
        Err(Error::Refused { reason, .. }) => assert!(
            reason.contains("token") || reason.starts_with("connection closed during handshake"),
            "{reason}"
        ),
        other => panic!("wrong token not refused: {:?}", other.map(|_| ())),
    }
    // A submission sent right behind a wrong preamble is never read.
    let settings = Echo::lines(&["smuggled"]).settings();
    match raw_submit(addr, &wrong, "echo", &settings).await {
        RawAnswer::Refused(reason) => assert_eq!(reason, "invalid join token"),
        other => panic!("wrong token, raw: {other:?}"),
    }
    assert_eq!(s.probe.accepts.load(Ordering::SeqCst), 0, "nothing decoded");
    assert!(s.driver.jobs().unwrap().is_empty());
    // The same bytes with the right token are a valid submission.
    let RawAnswer::Queued(j) = raw_submit(addr, &token, "echo", &settings).await else {
        panic!("the right token was refused")
    };
    assert_eq!(j.kind, "echo");
    assert_eq!(s.probe.accepts.load(Ordering::SeqCst), 1);

    let c = s.client().await;
    assert_eq!(c.status().await.unwrap().refused_connections, 2);
    assert_eq!(c.jobs().await.unwrap().len(), 1);
    assert_eq!(follow_to_end(&c, j.id).await.texts(), ["smuggled"]);
    s.driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. Status, and a job that runs a dataset action.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_a_dataset_job_on_an_in_process_cluster() {
    let mut registry = Registry::new();
    registry.register_reduce("sum_i64", |a: i64, b: i64| a + b);
    let cluster = bounded(
        "cluster start",
        LocalCluster::start(LocalConfig::in_process(2), Arc::new(registry)),
    )
    .await
    .unwrap();
    let driver = cluster.driver().unwrap().clone();
    let (probe, _dir) = install(&driver);
    let c = connect(&driver).await;

    let before = c.status().await.unwrap();
    assert_eq!(before.executors.len(), 2, "{before:?}");
    assert_eq!(before.refused_connections, 0);

    let j = c
        .submit("count", r#"{"n": 100, "partitions": 4}"#)
        .await
        .unwrap();
    assert_eq!(j.description, "count 0..100 in 4 partitions");
    let f = follow_to_end(&c, j.id).await;
    assert_eq!(f.info.state, JobState::Succeeded, "{f:?}");
    assert_eq!(f.texts(), ["COUNT 100 SUM 4950"]);
    assert_eq!(probe.started(), [j.id]);

    let after = c.status().await.unwrap();
    assert_eq!(after.executors.len(), 2);
    let tasks: u64 = after.executors.iter().map(|e| e.completed).sum();
    assert!(
        tasks >= 8,
        "two actions of 4 tasks ran on the executors: {after:?}"
    );
    drop(c);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_restarted_on_a_work_directory_numbers_its_jobs_after_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs/7")).unwrap();
    std::fs::write(dir.path().join("jobs/7/model.safetensors"), b"old").unwrap();
    let driver = Driver::start(DriverConfig::default(), Arc::new(Registry::new()))
        .await
        .unwrap();
    driver
        .accept_jobs(
            Arc::new(TestRunner {
                probe: Arc::new(Probe::default()),
            }),
            dir.path(),
        )
        .unwrap();
    let c = connect(&driver).await;
    let j = c
        .submit("echo", &Echo::lines(&["new"]).settings())
        .await
        .unwrap();
    assert_eq!(j.id, 8);
    assert_eq!(
        follow_to_end(&c, j.id).await.info.state,
        JobState::Succeeded
    );
    // The old job's output is untouched.
    assert_eq!(
        std::fs::read(dir.path().join("jobs/7/model.safetensors")).unwrap(),
        b"old"
    );
    driver.shutdown().await;
}

// ---------------------------------------------------------------------------
// 10. Authenticated but malicious peers.

/// The first frames an executor sends, as the runtime encodes them (the
/// same variant order as `ToDriver`): for messages of the right format
/// sent out of order.
#[derive(serde::Serialize)]
#[allow(dead_code)]
enum ExecutorFrame {
    Register,
    Heartbeat { dropped_peer_links: u64 },
    Leave,
}

/// A client's first frames, as the runtime encodes them (the same variant
/// order as `ClientRequest`).
#[derive(serde::Serialize)]
#[allow(dead_code)]
enum ClientFrame {
    Status,
    Session,
}

/// `body` behind its u32 length prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_peers_breaking_the_protocol_are_dropped_counted_and_nothing_else_is_disturbed(
) {
    let mut registry = Registry::new();
    registry.register_reduce("sum_i64", |a: i64, b: i64| a + b);
    let cluster = bounded(
        "cluster start",
        LocalCluster::start(LocalConfig::in_process(2), Arc::new(registry)),
    )
    .await
    .unwrap();
    let driver = cluster.driver().unwrap().clone();
    let (_probe, _dir) = install(&driver);
    let (addr, token) = (driver.addr(), driver.token().clone());
    let heartbeat = rmp_serde::to_vec(&ExecutorFrame::Heartbeat {
        dropped_peer_links: 0,
    })
    .unwrap();
    let leave = rmp_serde::to_vec(&ExecutorFrame::Leave).unwrap();
    let attacks: Vec<(&str, Role, Vec<u8>)> = vec![
        (
            "oversized frame",
            Role::Executor,
            u32::MAX.to_be_bytes().to_vec(),
        ),
        ("truncated header", Role::Executor, vec![0, 0]),
        ("truncated body", Role::Executor, vec![0, 0, 0, 64, 1, 2, 3]),
        ("garbage body", Role::Executor, framed(&[0xc1, 0xc1, 0xc1])),
        (
            "heartbeat before register",
            Role::Executor,
            framed(&heartbeat),
        ),
        ("leave before register", Role::Executor, framed(&leave)),
        ("client garbage", Role::Client, framed(&[0xc1; 40])),
        (
            "client oversized",
            Role::Client,
            (64u32 << 20).to_be_bytes().to_vec(),
        ),
        ("client executor frame", Role::Client, framed(&heartbeat)),
    ];
    // A job runs while the attacks go on.
    let c = connect(&driver).await;
    let j = c
        .submit("count", r#"{"n": 1000, "partitions": 8}"#)
        .await
        .unwrap();
    for (what, role, bytes) in &attacks {
        let (conn, mut send, _recv) = bounded(
            what,
            transport::connect_and_handshake(addr, &token, *role, T),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: the handshake with a valid token failed: {e}"));
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        // The driver closes the connection (bounded by its handshake
        // timeout for a frame that never completes).
        bounded(what, conn.closed()).await;
    }
    let f = follow_to_end(&c, j.id).await;
    assert_eq!(f.info.state, JobState::Succeeded, "{f:?}");
    assert_eq!(f.texts(), ["COUNT 1000 SUM 499500"]);
    let st = c.status().await.unwrap();
    assert_eq!(st.dropped_links, attacks.len() as u64, "{st:?}");
    assert_eq!(st.refused_connections, 0, "{st:?}");
    assert_eq!(st.executors.len(), 2, "no executor was disturbed: {st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    // And the driver serves a new client and a new job.
    let again = connect(&driver).await;
    let j2 = again
        .submit("count", r#"{"n": 10, "partitions": 2}"#)
        .await
        .unwrap();
    assert_eq!(
        follow_to_end(&again, j2.id).await.texts(),
        ["COUNT 10 SUM 45"]
    );
    cluster.shutdown().await;
}

/// A client that opened a session with a valid token, then breaks the
/// protocol on one of its request streams (or on its control stream): its
/// connection is dropped and counted, and nothing else is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_client_session_drops_that_connection_counted_and_nothing_else() {
    let mut registry = Registry::new();
    registry.register_reduce("sum_i64", |a: i64, b: i64| a + b);
    let cluster = bounded(
        "cluster start",
        LocalCluster::start(LocalConfig::in_process(2), Arc::new(registry)),
    )
    .await
    .unwrap();
    let driver = cluster.driver().unwrap().clone();
    let (_probe, _dir) = install(&driver);
    let (addr, token) = (driver.addr(), driver.token().clone());
    let session = framed(&rmp_serde::to_vec(&ClientFrame::Session).unwrap());
    let heartbeat = rmp_serde::to_vec(&ExecutorFrame::Heartbeat {
        dropped_peer_links: 0,
    })
    .unwrap();
    // (what, bytes, finish the stream after them, on the control stream)
    let attacks: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        ("garbage", framed(&[0xc1; 40]), true, false),
        (
            "oversized",
            (64u32 << 20).to_be_bytes().to_vec(),
            false,
            false,
        ),
        ("truncated header", vec![0, 0], true, false),
        ("truncated body", vec![0, 0, 0, 64, 1, 2, 3], true, false),
        ("Session on a request stream", session.clone(), true, false),
        ("an executor's frame", framed(&heartbeat), true, false),
        ("stalled request", vec![0], false, false),
        (
            "a frame on the control stream",
            framed(&rmp_serde::to_vec(&ClientFrame::Status).unwrap()),
            false,
            true,
        ),
    ];
    // An honest client follows a job while the attacks go on.
    let c = connect(&driver).await;
    let j = c
        .submit("count", r#"{"n": 1000, "partitions": 8}"#)
        .await
        .unwrap();
    let mut runs = tokio::task::JoinSet::new();
    for (what, bytes, finish, on_control) in attacks.clone() {
        let (token, session) = (token.clone(), session.clone());
        runs.spawn(async move {
            let (conn, mut control, _recv) =
                transport::connect_and_handshake(addr, &token, Role::Client, T)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the handshake failed: {e}"));
            control.write_all(&session).await.unwrap();
            // Kept open until the driver closes the connection (a dropped
            // stream is finished: it would not stall).
            let mut stream = None;
            if on_control {
                control.write_all(&bytes).await.unwrap();
            } else {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&bytes).await.unwrap();
                if finish {
                    send.finish().unwrap();
                }
                stream = Some((send, recv));
            }
            let closed = conn.closed().await;
            drop(stream);
            (what, closed)
        });
    }
    let followed = async { follow_to_end(&c, j.id).await };
    let attacked = async {
        while let Some(done) = runs.join_next().await {
            let (what, reason) = done.unwrap();
            // Closed for breaking the protocol; the close can be lost on a
            // busy loopback, and the attacker then learns of it by a
            // stateless reset (the counter below says why it was closed).
            assert!(
                matches!(reason, transport::quinn::ConnectionError::ApplicationClosed(ref e)
                    if e.error_code == transport::CLOSE_PROTOCOL.into())
                    || matches!(reason, transport::quinn::ConnectionError::Reset),
                "{what}: {reason:?}"
            );
        }
    };
    let (f, ()) = bounded("job and attacks", async {
        tokio::join!(followed, attacked)
    })
    .await;
    assert_eq!(f.info.state, JobState::Succeeded, "{f:?}");
    assert_eq!(f.texts(), ["COUNT 1000 SUM 499500"]);
    // Each dropped connection counted once; the honest session still works.
    let st = c.status().await.unwrap();
    assert_eq!(st.dropped_links, attacks.len() as u64, "{st:?}");
    assert_eq!(st.refused_connections, 0, "{st:?}");
    assert_eq!(st.executors.len(), 2, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    let j2 = c
        .submit("count", r#"{"n": 10, "partitions": 2}"#)
        .await
        .unwrap();
    assert_eq!(follow_to_end(&c, j2.id).await.texts(), ["COUNT 10 SUM 45"]);
    // And a new client is served.
    let again = connect(&driver).await;
    assert_eq!(again.jobs().await.unwrap().len(), 2);
    cluster.shutdown().await;
}
