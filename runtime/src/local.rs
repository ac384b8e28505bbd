//! `LocalCluster`: a driver plus N executors on this machine, either as
//! tasks in this process (tests, embedding; over QUIC on loopback or over
//! in-memory connections) or as child processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::driver::{Driver, DriverConfig};
use crate::error::{Error, Result};
use crate::executor::{run_executor, run_executor_in_memory, ExecutorConfig};
use crate::registry::Registry;

/// Where the executors of a [`LocalCluster`] run.
#[derive(Debug, Clone)]
pub enum ExecutorMode {
    /// As tokio tasks in this process, still over QUIC on loopback (so the
    /// network path is exercised).
    InProcess,
    /// As tokio tasks in this process over in-memory connections: the same
    /// preamble, frames, control and bulk streams and actors, without TLS,
    /// UDP or encryption costs (the local path).
    InProcessDirect,
    /// As child processes: `program args… --join TOKEN@ADDR`. The child's
    /// stdin is a pipe held here; `kiln executor --exit-on-stdin-eof`
    /// exits when it closes, so children die with their parent.
    Processes {
        /// The executable (normally `std::env::current_exe()`).
        program: PathBuf,
        /// Arguments before `--join` (e.g. `["executor", "--exit-on-stdin-eof"]`).
        args: Vec<String>,
    },
}

/// Settings of a local cluster.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Number of executors.
    pub executors: usize,
    /// Task slots per executor.
    pub cores_per_executor: u32,
    /// In-process or child processes.
    pub mode: ExecutorMode,
    /// Driver settings (listen address defaults to 127.0.0.1:0).
    pub driver: DriverConfig,
    /// How long to wait for every executor to register.
    pub startup_timeout: Duration,
}

impl LocalConfig {
    /// `n` in-process executors with one slot each, over in-memory
    /// connections.
    pub fn in_process_direct(n: usize) -> Self {
        LocalConfig {
            mode: ExecutorMode::InProcessDirect,
            ..Self::in_process(n)
        }
    }

    /// `n` in-process executors with one slot each, over QUIC on loopback.
    pub fn in_process(n: usize) -> Self {
        LocalConfig {
            executors: n,
            cores_per_executor: 1,
            mode: ExecutorMode::InProcess,
            driver: DriverConfig::default(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// A running local cluster. Dropping it kills child executors.
pub struct LocalCluster {
    driver: Option<Driver>,
    children: Vec<Child>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl LocalCluster {
    /// Start the driver and executors and wait until all registered.
    pub async fn start(config: LocalConfig, registry: Arc<Registry>) -> Result<LocalCluster> {
        let driver = Driver::start(config.driver.clone(), registry.clone()).await?;
        let mut cluster = LocalCluster {
            driver: None,
            children: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..config.executors {
            cluster.add_executor(&driver, &config, &registry, i)?;
        }
        driver
            .wait_for_executors(config.executors, config.startup_timeout)
            .await?;
        cluster.driver = Some(driver);
        Ok(cluster)
    }

    fn add_executor(
        &mut self,
        driver: &Driver,
        config: &LocalConfig,
        registry: &Arc<Registry>,
        i: usize,
    ) -> Result<()> {
        match &config.mode {
            ExecutorMode::InProcess | ExecutorMode::InProcessDirect => {
                let mut ec = ExecutorConfig::new(driver.addr(), driver.token().clone());
                ec.name = Some(format!("local-{i}"));
                ec.cores = config.cores_per_executor;
                let reg = registry.clone();
                let task = if matches!(config.mode, ExecutorMode::InProcessDirect) {
                    let conn = driver.connect_in_memory()?;
                    tokio::spawn(run_executor_in_memory(conn, ec, reg))
                } else {
                    tokio::spawn(run_executor(ec, reg))
                };
                self.tasks.push(task);
            }
            ExecutorMode::Processes { program, args } => {
                let child = Command::new(program)
                    .args(args)
                    .arg("--join")
                    .arg(driver.join_string())
                    .arg("--cores")
                    .arg(config.cores_per_executor.to_string())
                    .arg("--name")
                    .arg(format!("local-{i}"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| Error::Io {
                        path: program.display().to_string(),
                        source: e,
                    })?;
                self.children.push(child);
            }
        }
        Ok(())
    }

    /// The driver, for building datasets.
    pub fn driver(&self) -> Result<&Driver> {
        self.driver
            .as_ref()
            .ok_or_else(|| Error::DriverGone("local cluster already shut down".into()))
    }

    /// The driver's address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.driver.as_ref().map(Driver::addr)
    }

    /// Process ids of child executors (empty in-process).
    pub fn child_pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Stop executor `i` abruptly, as a crash would: no `Leave`, its
    /// cached partitions and shuffle blocks are gone. In-process its task
    /// is aborted (its connections close at once); a child is killed.
    pub fn kill_executor(&mut self, i: usize) -> Result<()> {
        if let Some(t) = self.tasks.get(i) {
            t.abort();
            return Ok(());
        }
        let c = self
            .children
            .get_mut(i)
            .ok_or_else(|| Error::UnknownExecutor {
                id: i as u64,
                context: "to kill in this local cluster".into(),
            })?;
        c.kill().map_err(|e| Error::Io {
            path: format!("executor process {}", c.id()),
            source: e,
        })?;
        let _ = c.wait();
        Ok(())
    }

    /// Shut down the driver, let executors exit, reap children.
    pub async fn shutdown(mut self) {
        if let Some(d) = self.driver.take() {
            d.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(5), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "in-process executor ended with an error"),
                Ok(Err(e)) => warn!(error = %e, "in-process executor task failed"),
                Err(_) => warn!("in-process executor did not exit within 5 s"),
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => {
                        warn!(pid = c.id(), "executor did not exit; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
