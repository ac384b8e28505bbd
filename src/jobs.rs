//! The job model: every workload a Kiln cluster runs is a **job kind**, a
//! [`Job`] with serializable settings, registered by name in [`JobKinds`]
//! (the built-in ones: `digits`, `speech`, `detection`, `word-count`,
//! `panic-then-count`; an embedding program adds its own with
//! [`JobKinds::add`]). A driver runs submitted jobs through
//! [`JobKinds::runner`]; every process of a cluster registers the same
//! functions through [`JobKinds::registry`].
//!
//! Training kinds implement [`crate::training::TrainingJob`] and run in the
//! one generic training loop; their checkpoints record the kind and its
//! settings, so `kiln checkpoint export|resume` need no guessing.

mod error;

pub mod detection;
pub mod digits;
pub mod fault_demo;
pub mod speech;
pub mod staged;
pub mod word_count;

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_runtime::jobs::{Accepted, JobFuture};
use kiln_runtime::{BoxError, JobContext, JobRunner, Registry};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::{JobError, Result};

/// Where a job's settings are checked: the driver's host, with its working
/// directory (relative paths in settings are relative to it).
#[derive(Debug, Clone)]
pub struct JobEnv {
    /// The directory relative paths are resolved against.
    pub base: PathBuf,
}

impl JobEnv {
    /// Checks on this process's host, relative to its working directory.
    pub fn here() -> Self {
        JobEnv {
            base: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    /// `path` made absolute against [`JobEnv::base`] (no symlinks resolved:
    /// executors see the same name).
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// [`JobEnv::resolve`], then an error naming `setting` of `kind` if
    /// nothing exists there.
    pub fn existing(&self, kind: &str, setting: &str, path: &Path) -> Result<PathBuf> {
        let p = self.resolve(path);
        if p.exists() {
            Ok(p)
        } else {
            Err(JobError::MissingPath {
                kind: kind.to_string(),
                setting: setting.to_string(),
                path: p,
            })
        }
    }
}

/// A job kind with typed settings. The registry erases it into a
/// [`JobKind`].
pub trait Job: Send + Sync + 'static {
    /// What a submission carries (JSON; unknown fields must be refused:
    /// derive with `#[serde(deny_unknown_fields)]`).
    type Settings: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The kind's name (what `kiln submit` and checkpoints call it).
    fn kind(&self) -> &'static str;

    /// Registers the functions its executors run (identically in every
    /// process of a cluster).
    fn register(&self, _registry: &mut Registry) {}

    /// Checks the settings on the driver's host before anything starts
    /// (ranges, consistency, that what it reads exists), resolving relative
    /// paths; returns a one-line description.
    fn validate(&self, settings: &mut Self::Settings, env: &JobEnv) -> Result<String>;

    /// Runs the job on the driver.
    fn run(
        &self,
        settings: Self::Settings,
        ctx: JobContext,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes the model file of checkpointed weights (training kinds only).
    fn export(
        &self,
        _settings: &Self::Settings,
        _params: &[f32],
        _buffers: &[f32],
        _out: &Path,
    ) -> Result<()> {
        Err(JobError::NotTraining {
            kind: self.kind().to_string(),
        })
    }
}

/// A job kind with its settings as JSON text: what [`JobKinds`] holds.
pub trait JobKind: Send + Sync + 'static {
    /// The kind's name.
    fn name(&self) -> &'static str;
    /// Registers the functions its executors run.
    fn register(&self, registry: &mut Registry);
    /// Decodes and checks settings; returns them as they will run (paths
    /// resolved) with a description.
    fn accept(&self, settings: &str, env: &JobEnv) -> Result<Accepted>;
    /// Runs accepted settings.
    fn run(&self, settings: &str, ctx: JobContext) -> JobFuture;
    /// Writes the model file of checkpointed weights.
    fn export(&self, settings: &str, params: &[f32], buffers: &[f32], out: &Path) -> Result<()>;
}

/// Decodes `settings` of `kind`; the error names the setting at fault by
/// its path (`job.epochz: unknown field …`).
pub fn decode_settings<S: DeserializeOwned>(kind: &str, settings: &str) -> Result<S> {
    let de = &mut serde_json::Deserializer::from_str(settings);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        JobError::Settings {
            kind: kind.to_string(),
            reason: if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            },
        }
    })?;
    Ok(value)
}

/// Encodes settings as JSON. (JSON has no NaN or infinity: serde_json
/// writes `null` for them, which the driver then refuses naming the
/// setting; the command line refuses them first.)
pub fn encode_settings<S: Serialize>(kind: &str, settings: &S) -> Result<String> {
    serde_json::to_string(settings).map_err(|e| JobError::Settings {
        kind: kind.to_string(),
        reason: e.to_string(),
    })
}

/// A [`Job`] as a [`JobKind`].
struct Erased<J>(Arc<J>);

impl<J: Job> JobKind for Erased<J> {
    fn name(&self) -> &'static str {
        self.0.kind()
    }

    fn register(&self, registry: &mut Registry) {
        self.0.register(registry)
    }

    fn accept(&self, settings: &str, env: &JobEnv) -> Result<Accepted> {
        let kind = self.0.kind();
        let mut s: J::Settings = decode_settings(kind, settings)?;
        let description = self.0.validate(&mut s, env)?;
        Ok(Accepted {
            settings: encode_settings(kind, &s)?,
            description,
        })
    }

    fn run(&self, settings: &str, ctx: JobContext) -> JobFuture {
        let job = self.0.clone();
        let kind = job.kind();
        let decoded: Result<J::Settings> = decode_settings(kind, settings);
        Box::pin(async move {
            job.run(decoded?, ctx).await?;
            Ok(())
        })
    }

    fn export(&self, settings: &str, params: &[f32], buffers: &[f32], out: &Path) -> Result<()> {
        let s: J::Settings = decode_settings(self.0.kind(), settings)?;
        self.0.export(&s, params, buffers, out)
    }
}

/// The job kinds a program knows, by name.
#[derive(Clone, Default)]
pub struct JobKinds {
    kinds: BTreeMap<String, Arc<dyn JobKind>>,
}

impl JobKinds {
    /// No kinds (add your own with [`JobKinds::add`]).
    pub fn empty() -> Self {
        JobKinds::default()
    }

    /// Kiln's built-in kinds: `digits`, `speech`, `detection`,
    /// `word-count` and `panic-then-count` (a fault-injection demo).
    pub fn builtin() -> Self {
        let mut k = JobKinds::empty();
        k.add(crate::training::Training(digits::Digits))
            .add(crate::training::Training(speech::Speech))
            .add(crate::training::Training(detection::Detection))
            .add(word_count::WordCount)
            .add(fault_demo::PanicThenCount);
        k
    }

    /// Adds (or replaces) a kind.
    pub fn add<J: Job>(&mut self, job: J) -> &mut Self {
        let kind: Arc<dyn JobKind> = Arc::new(Erased(Arc::new(job)));
        self.kinds.insert(kind.name().to_string(), kind);
        self
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn JobKind>> {
        self.kinds.get(name).ok_or_else(|| JobError::UnknownKind {
            kind: name.to_string(),
            known: self.names().join(", "),
        })
    }

    /// The registered names.
    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    /// The runtime functions of every kind (plus the training layer's):
    /// what every process of a cluster builds at start-up.
    pub fn registry(&self) -> Arc<Registry> {
        let mut r = Registry::new();
        crate::training::register(&mut r);
        for k in self.kinds.values() {
            k.register(&mut r);
        }
        Arc::new(r)
    }

    /// What runs these kinds' submissions on a driver, with relative paths
    /// resolved against `env`.
    pub fn runner(&self, env: JobEnv) -> Arc<dyn JobRunner> {
        Arc::new(KindsRunner {
            kinds: self.clone(),
            env,
        })
    }

    /// Checks `settings` of `kind` as a driver would (on this host).
    pub fn accept(&self, kind: &str, settings: &str, env: &JobEnv) -> Result<Accepted> {
        if kind == crate::training::RESUME_KIND {
            return crate::training::resume::accept(self, settings, env);
        }
        self.get(kind)?.accept(settings, env)
    }
}

/// [`JobKinds`] as a driver's [`JobRunner`].
struct KindsRunner {
    kinds: JobKinds,
    env: JobEnv,
}

impl JobRunner for KindsRunner {
    fn accept(&self, kind: &str, settings: &str) -> std::result::Result<Accepted, BoxError> {
        Ok(self.kinds.accept(kind, settings, &self.env)?)
    }

    fn run(&self, kind: String, settings: String, ctx: JobContext) -> JobFuture {
        // Accepted settings of a resume are the checkpoint's job's.
        let resolved = if kind == crate::training::RESUME_KIND {
            crate::training::resume::resolve(&settings)
        } else {
            Ok((kind, settings))
        };
        let job = resolved.and_then(|(kind, settings)| {
            self.kinds.get(&kind).map(|k| k.run(&settings, ctx.clone()))
        });
        Box::pin(async move {
            job?.await?;
            cluster_summary(&ctx).await;
            Ok(())
        })
    }
}

/// The closing lines of every successful job: each executor's task
/// counts, refused connections, lost and departed executors.
async fn cluster_summary(ctx: &JobContext) {
    let Ok(status) = ctx.driver().status().await else {
        return;
    };
    for e in &status.executors {
        ctx.line(format!(
            "EXECUTOR {} completed={} failed={}",
            e.name, e.completed, e.failed
        ));
    }
    ctx.line(format!("REFUSED {}", status.refused_connections));
    ctx.line(format!("LOST {} LEFT {}", status.lost, status.left));
}

/// Most epochs of a training job.
pub const MAX_EPOCHS: u64 = 100_000;
/// Largest global batch of the digits and speech jobs.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Most partitions of a dataset.
pub const MAX_PARTITIONS: u32 = 65_536;
/// Largest learning rate a job accepts.
pub const MAX_LEARNING_RATE: f64 = 10.0;

/// A range error of a setting of `kind` (from [`kiln_nn::bounds`]).
pub fn out_of_range(kind: &str, e: kiln_nn::bounds::OutOfRange) -> JobError {
    JobError::InvalidSetting {
        kind: kind.to_string(),
        setting: e.setting,
        value: e.value,
        reason: format!("must be {}", e.expected),
    }
}

/// An integer setting in `range`, or an error naming it, its value and
/// the range.
pub fn bounded<T>(kind: &str, setting: &str, value: T, range: impl RangeBounds<T>) -> Result<()>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    kiln_nn::bounds::check(setting, value, range)
        .map(drop)
        .map_err(|e| out_of_range(kind, e))
}

/// A positive integer setting, or an error naming it.
pub fn positive(kind: &str, setting: &str, value: u64) -> Result<()> {
    bounded(kind, setting, value, 1..)
}

/// A finite number in `range`, or an error naming it, its value and the
/// range.
pub fn in_range(kind: &str, setting: &str, value: f64, range: impl RangeBounds<f64>) -> Result<()> {
    kiln_nn::bounds::check_number(setting, value, range)
        .map(drop)
        .map_err(|e| out_of_range(kind, e))
}

/// A finite number above 0 and at most `max`, or an error naming it.
pub fn positive_number(kind: &str, setting: &str, value: f64, max: f64) -> Result<()> {
    in_range(kind, setting, value, kiln_nn::bounds::open_closed(0.0, max))
}
