//! Lineage: the serializable description of how each partition of a
//! dataset is computed, and its evaluation on an executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protocol::Inputs;
use crate::registry::{Part, Registry};

/// How a dataset's partitions are computed. Sent with every task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Plan {
    /// Driver-held data; the task carries its partition's bytes as input `id`.
    Parallelize {
        id: u64,
        partitions: u32,
        elem: String,
    },
    /// A registered source function.
    Source {
        name: String,
        args: Vec<u8>,
        partitions: u32,
    },
    /// A registered element-wise or partition-wise function.
    Narrow {
        parent: Box<Plan>,
        name: String,
        args: Vec<u8>,
    },
    /// Bernoulli sample.
    Sample {
        parent: Box<Plan>,
        fraction: f64,
        seed: u64,
    },
    /// Concatenation of the parents' partitions.
    Union { parents: Vec<Plan> },
    /// Output of a hash shuffle; the executor fetches the blocks of the
    /// task's partition before computing and adds them as input `id`.
    ShuffleRead {
        id: u64,
        parent: Box<Plan>,
        name: String,
        partitions: u32,
    },
    /// Cached on the executor that computes it.
    Cache { id: u64, parent: Box<Plan> },
    /// Element-wise pairs of two plans with the same partitioning; `elem`
    /// is the pair type the registered zipper builds.
    Zip {
        left: Box<Plan>,
        right: Box<Plan>,
        elem: String,
    },
}

impl Plan {
    pub(crate) fn partitions(&self) -> u32 {
        match self {
            Plan::Parallelize { partitions, .. }
            | Plan::Source { partitions, .. }
            | Plan::ShuffleRead { partitions, .. } => *partitions,
            Plan::Narrow { parent, .. }
            | Plan::Sample { parent, .. }
            | Plan::Cache { parent, .. } => parent.partitions(),
            Plan::Union { parents } => parents.iter().map(Plan::partitions).sum(),
            Plan::Zip { left, .. } => left.partitions(),
        }
    }

    /// Walk the nodes partition `p` depends on (through unions), calling
    /// `f(node, partition)`; stops descending below shuffle reads.
    pub(crate) fn visit(&self, p: u32, f: &mut dyn FnMut(&Plan, u32)) {
        f(self, p);
        match self {
            Plan::Narrow { parent, .. }
            | Plan::Sample { parent, .. }
            | Plan::Cache { parent, .. } => parent.visit(p, f),
            Plan::Union { parents } => {
                let mut q = p;
                for par in parents {
                    let n = par.partitions();
                    if q < n {
                        par.visit(q, f);
                        return;
                    }
                    q -= n;
                }
            }
            Plan::Zip { left, right, .. } => {
                left.visit(p, f);
                right.visit(p, f);
            }
            _ => {}
        }
    }

    /// The `(shuffle id, reduce partition)` blocks partition `p` reads.
    pub(crate) fn reads(&self, p: u32) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        self.visit(p, &mut |node, q| {
            if let Plan::ShuffleRead { id, .. } = node {
                if !out.contains(&(*id, q)) {
                    out.push((*id, q));
                }
            }
        });
        out
    }

    /// Shuffles this plan reads from, outermost last (parents first).
    pub(crate) fn shuffles(&self, out: &mut Vec<Plan>) {
        match self {
            Plan::ShuffleRead { parent, .. } => {
                parent.shuffles(out);
                out.push(self.clone());
            }
            Plan::Narrow { parent, .. }
            | Plan::Sample { parent, .. }
            | Plan::Cache { parent, .. } => parent.shuffles(out),
            Plan::Union { parents } => parents.iter().for_each(|p| p.shuffles(out)),
            Plan::Zip { left, right, .. } => {
                left.shuffles(out);
                right.shuffles(out);
            }
            _ => {}
        }
    }
}

/// Executor-side partition cache: `(cache id, partition) -> data`.
pub(crate) type Cache = Arc<Mutex<HashMap<(u64, u32), Arc<dyn Part>>>>;

/// Evaluation context of one task.
pub(crate) struct EvalCtx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) inputs: &'a Inputs,
    pub(crate) cache: &'a Cache,
    pub(crate) newly_cached: Vec<(u64, u32)>,
}

impl EvalCtx<'_> {
    /// Like [`EvalCtx::eval`], but a cached partition is shared, not
    /// copied (training reads the same partition every iteration).
    pub(crate) fn eval_shared(&mut self, plan: &Plan, p: u32) -> Result<Arc<dyn Part>> {
        let Plan::Cache { id, parent } = plan else {
            return Ok(Arc::from(self.eval(plan, p)?));
        };
        let lock_err = || Error::Poisoned {
            lock: "executor cache",
        };
        if let Some(part) = self.cache.lock().map_err(|_| lock_err())?.get(&(*id, p)) {
            return Ok(part.clone());
        }
        let shared: Arc<dyn Part> = Arc::from(self.eval(parent, p)?);
        self.cache
            .lock()
            .map_err(|_| lock_err())?
            .insert((*id, p), shared.clone());
        self.newly_cached.push((*id, p));
        Ok(shared)
    }

    pub(crate) fn eval(&mut self, plan: &Plan, p: u32) -> Result<Box<dyn Part>> {
        match plan {
            Plan::Parallelize { id, elem, .. } => {
                let bytes = self
                    .inputs
                    .get(&(*id, p))
                    .and_then(|v| v.first())
                    .map(|b| b.to_contiguous())
                    .ok_or_else(|| Error::MissingInput {
                        input: format!("parallelize input {id} for partition {p}"),
                        reason: "was not shipped with the task",
                    })?;
                (self.registry.decoder(elem)?)(&bytes)
            }
            Plan::Source {
                name,
                args,
                partitions,
            } => {
                let s = self.registry.source(name)?;
                (s.f)(args, p, *partitions)
            }
            Plan::Narrow { parent, name, args } => {
                let op = self.registry.narrow(name)?;
                let input = self.eval(parent, p)?;
                (op.f)(args, input)
            }
            Plan::Sample {
                parent,
                fraction,
                seed,
            } => {
                let input = self.eval(parent, p)?;
                Ok(input.sample(*fraction, seed.wrapping_add(p as u64)))
            }
            Plan::Union { parents } => {
                let mut q = p;
                for par in parents {
                    let n = par.partitions();
                    if q < n {
                        return self.eval(par, q);
                    }
                    q -= n;
                }
                Err(Error::OutOfBounds {
                    what: "the union".into(),
                    item: "partition",
                    index: u64::from(p),
                    len: u64::from(plan.partitions()),
                })
            }
            Plan::ShuffleRead { id, name, .. } => {
                let s = self.registry.shuffle(name)?;
                let blobs = self
                    .inputs
                    .get(&(*id, p))
                    .ok_or_else(|| Error::MissingInput {
                        input: format!("the blocks of shuffle {id} for partition {p}"),
                        reason: "were not fetched for the task",
                    })?;
                // Blocks that arrived in pieces are joined here (one copy,
                // as reading them into one buffer used to be).
                let blobs: Vec<bytes::Bytes> = blobs.iter().map(|b| b.to_contiguous()).collect();
                (s.read)(&blobs)
            }
            Plan::Cache { id, parent } => {
                let hit = self
                    .cache
                    .lock()
                    .map_err(|_| Error::Poisoned {
                        lock: "executor cache",
                    })?
                    .get(&(*id, p))
                    .cloned();
                if let Some(part) = hit {
                    return Ok(part.clone_box());
                }
                let part = self.eval(parent, p)?;
                let shared: Arc<dyn Part> = Arc::from(part.clone_box());
                self.cache
                    .lock()
                    .map_err(|_| Error::Poisoned {
                        lock: "executor cache",
                    })?
                    .insert((*id, p), shared);
                self.newly_cached.push((*id, p));
                Ok(part)
            }
            Plan::Zip { left, right, elem } => {
                let zip = self.registry.zipper(elem)?.clone();
                let l = self.eval(left, p)?;
                let r = self.eval(right, p)?;
                zip(l, r, p)
            }
        }
    }
}
