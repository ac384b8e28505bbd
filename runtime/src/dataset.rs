//! `Dataset<T>`: an RDD-like handle on the driver. Transformations only
//! extend the lineage; actions (`count`, `collect`, …) run jobs.
//!
//! The API is async (call it from a tokio runtime). Functions are referred
//! to by the name they were registered under in the [`Registry`]; the
//! element types are checked against the registration when the
//! transformation is built, so a mismatch fails before any job runs.

use std::any::type_name;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;

use crate::driver::{Driver, DriverMsg, DriverShared, StageTask};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::protocol::{Action, Inputs, ShuffleFetch, TaskOutput};
use crate::registry::{check_type, decode_vec, Data, Registry};
use crate::transport::encode;

/// A distributed collection of `T`, split into partitions, with lineage.
pub struct Dataset<T> {
    driver: Arc<DriverShared>,
    plan: Plan,
    parallel: HashMap<u64, Arc<Vec<Vec<u8>>>>,
    /// The shuffles this lineage reads; the last handle dropped frees one.
    shuffles: HashMap<u64, Arc<ShuffleHandle>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Dataset<T> {
    fn clone(&self) -> Self {
        Dataset {
            driver: self.driver.clone(),
            plan: self.plan.clone(),
            parallel: self.parallel.clone(),
            shuffles: self.shuffles.clone(),
            _t: PhantomData,
        }
    }
}

/// Keeps a shuffle's map outputs alive. When no dataset reads the shuffle
/// any more, the driver forgets its map-output locations and tells the
/// executors to drop the blocks (as Spark's context cleaner does).
struct ShuffleHandle {
    id: u64,
    actor: ractor::ActorRef<DriverMsg>,
}

impl Drop for ShuffleHandle {
    fn drop(&mut self) {
        // A stopped driver has nothing left to free.
        let _ = self.actor.cast(DriverMsg::FreeShuffle(self.id));
    }
}

impl Driver {
    /// Split `data` into `partitions` contiguous slices held by the driver
    /// and shipped with each task.
    pub fn parallelize<T: Data>(&self, data: Vec<T>, partitions: u32) -> Result<Dataset<T>> {
        let n = partitions.max(1) as usize;
        let chunk = data.len().div_ceil(n).max(1);
        let mut parts: Vec<Vec<u8>> = data.chunks(chunk).map(encode).collect::<Result<_>>()?;
        while parts.len() < n {
            parts.push(encode(&Vec::<T>::new())?);
        }
        self.shared.registry.decoder(type_name::<T>())?;
        let id = self.shared.fresh_id();
        let mut parallel = HashMap::new();
        parallel.insert(id, Arc::new(parts));
        Ok(Dataset {
            driver: self.shared.clone(),
            plan: Plan::Parallelize {
                id,
                partitions: n as u32,
                elem: type_name::<T>().to_owned(),
            },
            parallel,
            shuffles: HashMap::new(),
            _t: PhantomData,
        })
    }

    /// A registered source: partition `p` of `partitions` is
    /// `f(args, p, partitions)` evaluated on an executor.
    pub fn source<P: Serialize, T: Data>(
        &self,
        name: &str,
        args: &P,
        partitions: u32,
    ) -> Result<Dataset<T>> {
        let s = self.shared.registry.source(name)?;
        check_type(name, s.output, type_name::<T>())?;
        Ok(Dataset {
            driver: self.shared.clone(),
            plan: Plan::Source {
                name: name.into(),
                args: encode(args)?,
                partitions: partitions.max(1),
            },
            parallel: HashMap::new(),
            shuffles: HashMap::new(),
            _t: PhantomData,
        })
    }

    /// Lines of text files. `path` is a file or a directory (its regular
    /// files, sorted, non-recursive); files are spread over `partitions`.
    /// Paths must be readable from every executor (shared or local disk).
    pub fn text_files(&self, path: &str, partitions: u32) -> Result<Dataset<String>> {
        let files = list_files(path)?;
        self.source("kiln.text_lines", &files, partitions.max(1))
    }

    /// The regular files of a directory (sorted), as a dataset of paths.
    pub fn list_dir(&self, path: &str, partitions: u32) -> Result<Dataset<String>> {
        self.parallelize(list_files(path)?, partitions)
    }
}

fn list_files(path: &str) -> Result<Vec<String>> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_type().map_err(io)?.is_file() {
            files.push(entry.path().to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}

impl<T: Data> Dataset<T> {
    fn derive<U>(&self, plan: Plan) -> Dataset<U> {
        Dataset {
            driver: self.driver.clone(),
            plan,
            parallel: self.parallel.clone(),
            shuffles: self.shuffles.clone(),
            _t: PhantomData,
        }
    }

    /// Take over the inputs and shuffle handles of `other`'s lineage.
    fn adopt<U>(&mut self, other: &Dataset<U>) {
        self.parallel
            .extend(other.parallel.iter().map(|(k, v)| (*k, v.clone())));
        self.shuffles
            .extend(other.shuffles.iter().map(|(k, v)| (*k, v.clone())));
    }

    fn registry(&self) -> &Registry {
        &self.driver.registry
    }

    fn narrow<U: Data>(&self, name: &str, args: Vec<u8>) -> Result<Dataset<U>> {
        let op = self.registry().narrow(name)?;
        check_type(name, op.input, type_name::<T>())?;
        check_type(name, op.output, type_name::<U>())?;
        Ok(self.derive(Plan::Narrow {
            parent: Box::new(self.plan.clone()),
            name: name.into(),
            args,
        }))
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.plan.partitions()
    }

    /// Apply a function registered with [`Registry::register_map`].
    pub fn map<U: Data>(&self, name: &str) -> Result<Dataset<U>> {
        self.narrow(name, encode(&())?)
    }

    /// Apply a function registered with [`Registry::register_map_with`].
    pub fn map_with<P: Serialize, U: Data>(&self, name: &str, args: &P) -> Result<Dataset<U>> {
        self.narrow(name, encode(args)?)
    }

    /// Keep elements passing a predicate registered with
    /// [`Registry::register_filter`].
    pub fn filter(&self, name: &str) -> Result<Dataset<T>> {
        self.narrow(name, encode(&())?)
    }

    /// Filter with parameters ([`Registry::register_filter_with`]).
    pub fn filter_with<P: Serialize>(&self, name: &str, args: &P) -> Result<Dataset<T>> {
        self.narrow(name, encode(args)?)
    }

    /// Apply a function registered with [`Registry::register_flat_map`].
    pub fn flat_map<U: Data>(&self, name: &str) -> Result<Dataset<U>> {
        self.narrow(name, encode(&())?)
    }

    /// Apply a function registered with [`Registry::register_map_partitions`].
    pub fn map_partitions<U: Data>(&self, name: &str) -> Result<Dataset<U>> {
        self.narrow(name, encode(&())?)
    }

    /// Bernoulli sample of each partition (deterministic in `seed`).
    pub fn sample(&self, fraction: f64, seed: u64) -> Dataset<T> {
        self.derive(Plan::Sample {
            parent: Box::new(self.plan.clone()),
            fraction,
            seed,
        })
    }

    /// The partitions of `self` followed by those of `other`.
    pub fn union(&self, other: &Dataset<T>) -> Dataset<T> {
        let mut d: Dataset<T> = self.derive(Plan::Union {
            parents: vec![self.plan.clone(), other.plan.clone()],
        });
        d.adopt(other);
        d
    }

    /// Pair the `i`-th element of each partition with the `i`-th element
    /// of the same partition of `other` (Spark's `zip`). Both must have
    /// the same number of partitions (checked here) and the same number of
    /// elements in each partition (checked when computed: a mismatch fails
    /// the job with [`Error::ZipMismatch`] naming the partition and both
    /// counts). `(T, U)` must be registered with [`Registry::register_zip`].
    pub fn zip<U: Data>(&self, other: &Dataset<U>) -> Result<Dataset<(T, U)>> {
        let pair = type_name::<(T, U)>();
        self.registry().zipper(pair)?;
        let (left, right) = (self.partitions(), other.partitions());
        if left != right {
            return Err(Error::ZipPartitions { left, right });
        }
        let mut d: Dataset<(T, U)> = self.derive(Plan::Zip {
            left: Box::new(self.plan.clone()),
            right: Box::new(other.plan.clone()),
            elem: pair.to_owned(),
        });
        d.adopt(other);
        Ok(d)
    }

    /// Keep computed partitions in executor memory. A partition lost with
    /// its executor is recomputed from lineage; later tasks prefer the
    /// executor holding it.
    pub fn cache(&self) -> Dataset<T> {
        self.derive(Plan::Cache {
            id: self.driver.fresh_id(),
            parent: Box::new(self.plan.clone()),
        })
    }

    /// Alias of [`Dataset::cache`] (memory only).
    pub fn persist(&self) -> Dataset<T> {
        self.cache()
    }

    /// Redistribute round-robin into `partitions` through a shuffle; `name`
    /// is registered with [`Registry::register_repartition`] for `T`.
    pub fn repartition(&self, name: &str, partitions: u32) -> Result<Dataset<T>> {
        self.shuffle(name, partitions)
    }

    fn shuffle<U: Data>(&self, name: &str, partitions: u32) -> Result<Dataset<U>> {
        let s = self.registry().shuffle(name)?;
        check_type(name, s.input, type_name::<T>())?;
        check_type(name, s.output, type_name::<U>())?;
        let id = self.driver.fresh_id();
        let mut d: Dataset<U> = self.derive(Plan::ShuffleRead {
            id,
            parent: Box::new(self.plan.clone()),
            name: name.into(),
            partitions: partitions.max(1),
        });
        d.shuffles.insert(
            id,
            Arc::new(ShuffleHandle {
                id,
                actor: self.driver.actor.clone(),
            }),
        );
        Ok(d)
    }

    async fn run(&self, action: Action) -> Result<Vec<TaskOutput>> {
        let all = (0..self.plan.partitions())
            .map(|p| (p, action.clone(), Vec::new()))
            .collect();
        run_job(&self.driver, &self.plan, &self.parallel, all).await
    }

    /// Run one task per listed partition, each with its own action; the
    /// outputs come back in the order of `actions`.
    pub(crate) async fn run_partitions(
        &self,
        actions: Vec<(u32, Action)>,
    ) -> Result<Vec<TaskOutput>> {
        let actions = actions
            .into_iter()
            .map(|(p, a)| (p, a, Vec::new()))
            .collect();
        run_job(&self.driver, &self.plan, &self.parallel, actions).await
    }

    /// Like [`Dataset::run_partitions`], each task also fetching the given
    /// blocks (whose locations the caller knows) before it runs.
    pub(crate) async fn run_partitions_fetching(
        &self,
        actions: Vec<(u32, Action, Vec<ShuffleFetch>)>,
    ) -> Result<Vec<TaskOutput>> {
        run_job(&self.driver, &self.plan, &self.parallel, actions).await
    }

    /// Runs each action on the named executor (no partition is computed:
    /// parameter-shard operations), fetching the given blocks first. The
    /// stage fails if one of those executors is gone.
    pub(crate) async fn run_on_executors(
        &self,
        tasks: Vec<(u64, Action, Vec<ShuffleFetch>)>,
    ) -> Result<Vec<TaskOutput>> {
        let n = tasks.len() as u32;
        let tasks = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (executor, action, fetches))| StageTask {
                partition: i as u32,
                plan: Plan::Source {
                    name: "kiln.no_partition".into(),
                    args: Vec::new(),
                    partitions: n,
                },
                action,
                inputs: Inputs::new(),
                prefer: Vec::new(),
                reads: Vec::new(),
                fetches,
                pin: Some(executor),
            })
            .collect();
        let job = self.driver.fresh_id();
        self.driver.run_stage(job, 0, tasks).await
    }

    /// Live executors and their peer endpoints.
    pub(crate) async fn members(&self) -> Result<Vec<(u64, crate::protocol::PeerAddr)>> {
        self.driver.members().await
    }

    /// Executors drop these untracked blocks.
    pub(crate) fn free_blocks(&self, ids: Vec<u64>) {
        self.driver.free_blocks(ids);
    }

    /// The driver's QUIC endpoint and the cluster's join secret, to
    /// connect to executors' peer endpoints from the driver (see
    /// [`DriverShared::endpoint`]).
    pub(crate) fn peer_dialer(&self) -> (quinn::Endpoint, [u8; 32]) {
        (self.driver.endpoint.clone(), self.driver.secret)
    }

    /// Where training reports iterations and checkpoints for the dashboard.
    pub(crate) fn monitor(&self) -> &crate::monitor::MonitorSink {
        &self.driver.sink
    }

    /// A fresh id (job, shuffle or block ids share one counter).
    pub(crate) fn fresh_id(&self) -> u64 {
        self.driver.fresh_id()
    }

    /// Elements per partition, in partition order.
    pub async fn partition_counts(&self) -> Result<Vec<u64>> {
        let outs = self.run(Action::Count).await?;
        Ok(outs
            .iter()
            .map(|o| match o {
                TaskOutput::Count(n) => *n,
                _ => 0,
            })
            .collect())
    }

    /// The registry this dataset's driver uses.
    pub(crate) fn registry_ref(&self) -> &Registry {
        self.registry()
    }

    /// Number of elements.
    pub async fn count(&self) -> Result<u64> {
        let outs = self.run(Action::Count).await?;
        Ok(outs
            .iter()
            .map(|o| match o {
                TaskOutput::Count(n) => *n,
                _ => 0,
            })
            .sum())
    }

    /// All elements, in partition order.
    pub async fn collect(&self) -> Result<Vec<T>> {
        let outs = self.run(Action::Collect).await?;
        let mut v = Vec::new();
        for o in outs {
            if let TaskOutput::Data(bytes) = o {
                v.extend(decode_vec::<T>(&bytes)?);
            }
        }
        Ok(v)
    }

    /// The first `n` elements in partition order.
    pub async fn take(&self, n: usize) -> Result<Vec<T>> {
        let outs = self.run(Action::Take(n as u64)).await?;
        let mut v = Vec::new();
        for o in outs {
            if let TaskOutput::Data(bytes) = o {
                v.extend(decode_vec::<T>(&bytes)?);
            }
            if v.len() >= n {
                break;
            }
        }
        v.truncate(n);
        Ok(v)
    }

    async fn fold_inner(&self, name: &str, zero: Option<Vec<u8>>) -> Result<Option<T>> {
        let f = self.registry().fold(name)?;
        check_type(name, f.elem, type_name::<T>())?;
        let combine = f.combine.clone();
        let outs = self
            .run(Action::Fold {
                name: name.into(),
                zero,
            })
            .await?;
        let partials: Vec<Vec<u8>> = outs
            .into_iter()
            .filter_map(|o| match o {
                TaskOutput::Folded(x) => x,
                _ => None,
            })
            .collect();
        match combine(partials)? {
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Payload {
                    what: "the reduce result".into(),
                    source: e,
                }),
            None => Ok(None),
        }
    }

    /// Combine all elements with a function registered by
    /// [`Registry::register_reduce`]; `None` for an empty dataset.
    pub async fn reduce(&self, name: &str) -> Result<Option<T>> {
        self.fold_inner(name, None).await
    }

    /// Like reduce, with `zero` folded into every partition (as Spark does),
    /// so `zero` must be the function's identity.
    pub async fn fold(&self, name: &str, zero: T) -> Result<T> {
        let z = encode(&zero)?;
        Ok(self.fold_inner(name, Some(z)).await?.unwrap_or(zero))
    }

    /// Run a function registered with [`Registry::register_foreach`] on
    /// every element, on the executors.
    pub async fn foreach(&self, name: &str) -> Result<()> {
        let f = self.registry().foreach_fn(name)?;
        check_type(name, f.elem, type_name::<T>())?;
        self.run(Action::Foreach {
            name: name.into(),
            args: encode(&())?,
        })
        .await
        .map(|_| ())
    }
}

impl<K: Data + Hash + Eq, V: Data> Dataset<(K, V)> {
    /// Combine values per key with a function registered by
    /// [`Registry::register_reduce_by_key`], through a hash shuffle into
    /// `partitions` partitions.
    pub fn reduce_by_key(&self, name: &str, partitions: u32) -> Result<Dataset<(K, V)>> {
        self.shuffle(name, partitions)
    }

    /// Gather values per key (registered by
    /// [`Registry::register_group_by_key`]).
    pub fn group_by_key(&self, name: &str, partitions: u32) -> Result<Dataset<(K, Vec<V>)>> {
        self.shuffle(name, partitions)
    }
}

/// The task for partition `p` of `plan`: parallelize inputs it needs,
/// cache keys it would like to be near and shuffle blocks it reads.
fn stage_task(
    plan: &Plan,
    p: u32,
    action: Action,
    parallel: &HashMap<u64, Arc<Vec<Vec<u8>>>>,
) -> Result<StageTask> {
    let mut inputs: Inputs = HashMap::new();
    let mut prefer = Vec::new();
    let mut missing = None;
    plan.visit(p, &mut |node, q| match node {
        Plan::Parallelize { id, .. } => match parallel.get(id).and_then(|d| d.get(q as usize)) {
            Some(bytes) => {
                inputs.insert((*id, q), vec![bytes.clone().into()]);
            }
            None => missing = Some(format!("parallelize data {id} partition {q}")),
        },
        Plan::Cache { id, .. } => prefer.push((*id, q)),
        _ => {}
    });
    if let Some(m) = missing {
        return Err(Error::MissingInput {
            input: m,
            reason: "is no longer held by the driver",
        });
    }
    Ok(StageTask {
        partition: p,
        plan: plan.clone(),
        action,
        inputs,
        prefer,
        reads: plan.reads(p),
        fetches: Vec::new(),
        pin: None,
    })
}

/// Run a job: first the map stage of every shuffle the plan reads (parents
/// first; map outputs that still exist on executors are not recomputed),
/// then one task per listed partition.
async fn run_job(
    driver: &Arc<DriverShared>,
    plan: &Plan,
    parallel: &HashMap<u64, Arc<Vec<Vec<u8>>>>,
    actions: Vec<(u32, Action, Vec<ShuffleFetch>)>,
) -> Result<Vec<TaskOutput>> {
    let job = driver.fresh_id();
    let mut shuffles = Vec::new();
    plan.shuffles(&mut shuffles);
    let mut stage = 0u32;
    for s in shuffles {
        let Plan::ShuffleRead {
            id,
            parent,
            name,
            partitions,
        } = s
        else {
            continue;
        };
        let action = Action::ShuffleWrite {
            shuffle: id,
            name,
            partitions,
        };
        let tasks = (0..parent.partitions())
            .map(|p| stage_task(&parent, p, action.clone(), parallel))
            .collect::<Result<Vec<_>>>()?;
        driver.run_map_stage(job, stage, id, tasks).await?;
        stage += 1;
    }
    let mut tasks = Vec::with_capacity(actions.len());
    for (p, action, fetches) in actions {
        if p >= plan.partitions() {
            return Err(Error::OutOfBounds {
                what: "the dataset".into(),
                item: "partition",
                index: u64::from(p),
                len: u64::from(plan.partitions()),
            });
        }
        let mut task = stage_task(plan, p, action, parallel)?;
        task.fetches = fetches;
        tasks.push(task);
    }
    driver.run_stage(job, stage, tasks).await
}
