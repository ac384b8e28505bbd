//! The driver's side of submitted jobs: the queue, every job's record
//! (state, output lines, progress, output files), the task that runs them
//! one at a time, and cancellation.
//!
//! State lives behind one short-held mutex; followers wait on a version
//! counter (a `watch` channel bumped on every change) and re-read, so a slow
//! follower never holds anything up and never misses a line.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{Accepted, JobContext, JobInfo, JobRunner, JobState, Progress, CANCEL_GRACE};
use crate::driver::Driver;
use crate::error::{Error, Result};

/// Output lines kept in memory per job (older ones stay in its `log.txt`).
const MAX_LINES_KEPT: usize = 100_000;

/// One job's record.
struct JobRecord {
    info: JobInfo,
    settings: String,
    /// Kept lines; `first_line` is the number of `lines[0]`.
    lines: VecDeque<String>,
    first_line: u64,
    outputs: BTreeMap<String, PathBuf>,
    cancel: watch::Sender<bool>,
    log: Option<std::io::BufWriter<std::fs::File>>,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<u64, JobRecord>,
    queue: VecDeque<u64>,
    next_id: u64,
}

/// The runner and where job directories go, once installed.
struct Installed {
    runner: Arc<dyn JobRunner>,
    work_dir: PathBuf,
}

/// Submitted jobs of one driver.
pub(crate) struct JobService {
    /// Data files published for executors to stage.
    pub(crate) staged: Arc<crate::staging::Published>,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    queued: Notify,
    installed: OnceLock<Installed>,
    /// Where job starts and ends, and jobs' epochs, are reported.
    pub(crate) monitor: crate::monitor::MonitorSink,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn poisoned() -> Error {
    Error::Poisoned { lock: "job table" }
}

impl Default for JobService {
    fn default() -> Self {
        JobService {
            staged: Arc::default(),
            state: Mutex::new(State {
                next_id: 1,
                ..State::default()
            }),
            version: watch::channel(0).0,
            queued: Notify::new(),
            installed: OnceLock::new(),
            monitor: crate::monitor::MonitorSink::default(),
        }
    }
}

/// A fetchable output: its path and the job's state when it was looked up.
pub(crate) struct OutputFile {
    pub(crate) path: PathBuf,
}

impl JobService {
    /// A job service whose jobs' starts, ends and epochs go to `monitor`.
    pub(crate) fn reporting_to(monitor: crate::monitor::MonitorSink) -> Self {
        JobService {
            monitor,
            ..JobService::default()
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Installs the runner and starts the task that runs queued jobs; job
    /// directories go under `work_dir/jobs/`. Only the first call counts.
    pub(crate) fn install(
        self: &Arc<Self>,
        driver: Driver,
        runner: Arc<dyn JobRunner>,
        work_dir: PathBuf,
    ) -> Result<()> {
        let jobs_dir = work_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir).map_err(|e| Error::Io {
            path: jobs_dir.display().to_string(),
            source: e,
        })?;
        // A driver restarted on the same work directory numbers its jobs
        // after the ones already there: their outputs are never replaced.
        let last = std::fs::read_dir(&jobs_dir)
            .map_err(|e| Error::Io {
                path: jobs_dir.display().to_string(),
                source: e,
            })?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        if self.installed.set(Installed { runner, work_dir }).is_err() {
            return Err(Error::JobRunnerInstalled);
        }
        if let Ok(mut st) = self.state.lock() {
            st.next_id = st.next_id.max(last + 1);
        }
        let service = self.clone();
        tokio::spawn(async move { service.run_queue(driver).await });
        Ok(())
    }

    fn installed(&self) -> Result<&Installed> {
        self.installed.get().ok_or_else(|| Error::JobsUnavailable {
            reason: "this driver was started without a job runner".into(),
        })
    }

    /// Checks and queues a submission; returns its record.
    pub(crate) fn submit(&self, kind: &str, settings: &str) -> Result<JobInfo> {
        let installed = self.installed()?;
        let Accepted {
            settings,
            description,
        } = installed
            .runner
            .accept(kind, settings)
            .map_err(|e| Error::SubmissionRefused {
                kind: kind.to_string(),
                reason: crate::error::error_chain(&*e),
            })?;
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let id = st.next_id;
        st.next_id += 1;
        let dir = installed.work_dir.join("jobs").join(id.to_string());
        let info = JobInfo {
            id,
            kind: kind.to_string(),
            description,
            state: JobState::Queued,
            submitted_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            lines: 0,
            progress: None,
            outputs: Vec::new(),
            dir: dir.display().to_string(),
        };
        st.jobs.insert(
            id,
            JobRecord {
                info: info.clone(),
                settings,
                lines: VecDeque::new(),
                first_line: 0,
                outputs: BTreeMap::new(),
                cancel: watch::channel(false).0,
                log: None,
            },
        );
        st.queue.push_back(id);
        drop(st);
        info!(job = id, kind, "job queued");
        self.bump();
        self.queued.notify_one();
        Ok(info)
    }

    /// Every job, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<JobInfo>> {
        let st = self.state.lock().map_err(|_| poisoned())?;
        Ok(st.jobs.values().map(|r| r.info.clone()).collect())
    }

    /// One job.
    pub(crate) fn info(&self, id: u64) -> Result<JobInfo> {
        let st = self.state.lock().map_err(|_| poisoned())?;
        st.jobs
            .get(&id)
            .map(|r| r.info.clone())
            .ok_or(Error::UnknownJob { id })
    }

    /// Lines from number `from` on (those still kept: the first returned
    /// may be later), and the job's record.
    pub(crate) fn lines_since(&self, id: u64, from: u64) -> Result<(Vec<(u64, String)>, JobInfo)> {
        let st = self.state.lock().map_err(|_| poisoned())?;
        let r = st.jobs.get(&id).ok_or(Error::UnknownJob { id })?;
        let start = from.max(r.first_line);
        let skip = (start - r.first_line) as usize;
        let lines = r
            .lines
            .iter()
            .skip(skip)
            .enumerate()
            .map(|(i, l)| (start + i as u64, l.clone()))
            .collect();
        Ok((lines, r.info.clone()))
    }

    /// A receiver that changes whenever any job does.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Cancels a queued or running job; an error for a finished or
    /// unknown one.
    pub(crate) fn cancel(&self, id: u64) -> Result<JobInfo> {
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let queued = st.queue.iter().position(|&q| q == id);
        let r = st.jobs.get_mut(&id).ok_or(Error::UnknownJob { id })?;
        if r.info.state.is_finished() {
            return Err(Error::JobFinished {
                id,
                state: r.info.state.to_string(),
            });
        }
        let _ = r.cancel.send(true);
        let info = if let Some(pos) = queued {
            r.info.state = JobState::Cancelled;
            r.info.finished_ms = now_ms();
            let info = r.info.clone();
            st.queue.remove(pos);
            info
        } else {
            r.info.clone()
        };
        drop(st);
        info!(job = id, "cancel requested");
        self.bump();
        Ok(info)
    }

    /// The file behind output `name` of job `id`.
    pub(crate) fn output(&self, id: u64, name: &str) -> Result<OutputFile> {
        let st = self.state.lock().map_err(|_| poisoned())?;
        let r = st.jobs.get(&id).ok_or(Error::UnknownJob { id })?;
        let path = r.outputs.get(name).ok_or_else(|| Error::JobOutput {
            id,
            output: name.to_string(),
            reason: if r.outputs.is_empty() {
                format!("the job has no outputs (yet): it is {}", r.info.state)
            } else {
                format!(
                    "no such output; it has {}",
                    r.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            },
        })?;
        Ok(OutputFile { path: path.clone() })
    }

    pub(crate) fn add_line(&self, id: u64, text: String) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let Some(r) = st.jobs.get_mut(&id) else {
            return;
        };
        if let Some(log) = &mut r.log {
            let _ = writeln!(log, "{text}").and_then(|()| log.flush());
        }
        r.lines.push_back(text);
        r.info.lines += 1;
        if r.lines.len() > MAX_LINES_KEPT {
            r.lines.pop_front();
            r.first_line += 1;
        }
        drop(st);
        self.bump();
    }

    pub(crate) fn set_progress(&self, id: u64, progress: Progress) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(r) = st.jobs.get_mut(&id) {
                r.info.progress = Some(progress);
            }
        }
        self.bump();
    }

    pub(crate) fn add_output(&self, id: u64, name: &str, path: PathBuf) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(r) = st.jobs.get_mut(&id) {
                r.outputs.insert(name.to_string(), path);
                r.info.outputs = r.outputs.keys().cloned().collect();
            }
        }
        self.bump();
    }

    /// Marks the next queued job running and returns what running it needs.
    fn start_next(&self) -> Option<(u64, String, String, PathBuf, watch::Receiver<bool>)> {
        let mut st = self.state.lock().ok()?;
        let id = st.queue.pop_front()?;
        let r = st.jobs.get_mut(&id)?;
        r.info.state = JobState::Running;
        r.info.started_ms = now_ms();
        let dir = PathBuf::from(&r.info.dir);
        Some((
            id,
            r.info.kind.clone(),
            r.settings.clone(),
            dir,
            r.cancel.subscribe(),
        ))
    }

    fn finish(&self, id: u64, state: JobState) {
        if state != JobState::Succeeded {
            // Its followers and logs say how it ended, not only its record.
            self.add_line(id, format!("JOB {id} {state}"));
        }
        if let Ok(mut st) = self.state.lock() {
            if let Some(r) = st.jobs.get_mut(&id) {
                if let (Some(log), JobState::Succeeded) = (&mut r.log, &state) {
                    let _ = writeln!(log, "JOB {id} {state}").and_then(|()| log.flush());
                }
                r.log = None;
                r.info.state = state;
                r.info.finished_ms = now_ms();
            }
        }
        self.bump();
    }

    fn open_log(&self, id: u64, dir: &Path) {
        let path = dir.join("log.txt");
        match std::fs::File::create(&path) {
            Ok(f) => {
                if let Ok(mut st) = self.state.lock() {
                    if let Some(r) = st.jobs.get_mut(&id) {
                        r.log = Some(std::io::BufWriter::new(f));
                    }
                }
            }
            Err(e) => {
                warn!(job = id, path = %path.display(), error = %e, "cannot write the job's log file")
            }
        }
    }

    /// Runs queued jobs one at a time, for as long as the driver lives.
    async fn run_queue(self: Arc<Self>, driver: Driver) {
        loop {
            let Some((id, kind, settings, dir, cancel)) = self.start_next() else {
                self.queued.notified().await;
                continue;
            };
            self.bump();
            self.monitor.send(crate::monitor::Event::JobStarted(id));
            let state = self.run_one(&driver, id, kind, settings, dir, cancel).await;
            info!(job = id, state = %state, "job ended");
            self.finish(id, state);
            self.monitor.send(crate::monitor::Event::JobEnded(id));
        }
    }

    async fn run_one(
        self: &Arc<Self>,
        driver: &Driver,
        id: u64,
        kind: String,
        settings: String,
        dir: PathBuf,
        cancel: watch::Receiver<bool>,
    ) -> JobState {
        let Ok(installed) = self.installed() else {
            return JobState::Failed("no job runner".into());
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return JobState::Failed(format!("creating {}: {e}", dir.display()));
        }
        self.open_log(id, &dir);
        info!(job = id, %kind, dir = %dir.display(), "job starts");
        let ctx = JobContext::new(id, driver.clone(), dir, self.clone(), cancel.clone());
        // `run` itself is called inside the task: a runner that panics
        // before returning its future fails the job, not the queue.
        let runner = installed.runner.clone();
        let mut task = tokio::spawn(async move { runner.run(kind, settings, ctx).await });
        let mut asked = cancel.clone();
        let result = tokio::select! {
            r = &mut task => r,
            _ = async { let _ = asked.wait_for(|c| *c).await; } => {
                match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!(job = id, "the cancelled job did not stop within {} s: aborting it", CANCEL_GRACE.as_secs());
                        task.abort();
                        return JobState::Cancelled;
                    }
                }
            }
        };
        let cancelled = *cancel.borrow();
        match result {
            Ok(Ok(())) if cancelled => JobState::Cancelled,
            Ok(Ok(())) => JobState::Succeeded,
            Ok(Err(_)) if cancelled => JobState::Cancelled,
            Ok(Err(e)) => JobState::Failed(crate::error::error_chain(&*e)),
            Err(e) if e.is_panic() => {
                JobState::Failed(format!("the job {}", crate::supervise::panic_message(e)))
            }
            Err(_) => JobState::Cancelled,
        }
    }
}
