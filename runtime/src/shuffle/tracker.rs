//! The driver's map-output tracker: which executor holds each map output
//! of each live shuffle, the map tasks that recompute a lost one (from
//! lineage), and which are being recomputed. No block data lives here.

use std::collections::{HashMap, HashSet};

use crate::driver::StageTask;
use crate::protocol::LostBlock;

/// One map partition's output as its executor reported it.
struct MapOutput {
    executor: u64,
    /// Bytes per reduce partition.
    sizes: Vec<u64>,
}

struct ShuffleEntry {
    /// The map task of each map partition, to rerun a lost output.
    templates: Vec<StageTask>,
    outputs: Vec<Option<MapOutput>>,
    recovering: HashSet<u32>,
    /// Set when recomputing a lost output failed; stages waiting for it
    /// fail with this cause.
    failed: Option<String>,
}

/// Whether the shuffle blocks a task reads are all available.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Every block has a live location.
    Ready,
    /// Map outputs to (re)compute first: `(shuffle, map partitions)`.
    Missing(Vec<(u64, Vec<u32>)>),
    /// A needed shuffle cannot be produced.
    Failed(String),
}

/// Map-output locations of every live shuffle.
#[derive(Default)]
pub(crate) struct MapOutputs {
    shuffles: HashMap<u64, ShuffleEntry>,
}

impl MapOutputs {
    /// Make `shuffle` known with one map task per map partition; a known
    /// shuffle keeps its outputs and forgets an earlier failure (a new job
    /// tries again).
    pub(crate) fn register(&mut self, shuffle: u64, templates: Vec<StageTask>) {
        let e = self
            .shuffles
            .entry(shuffle)
            .or_insert_with(|| ShuffleEntry {
                outputs: templates.iter().map(|_| None).collect(),
                templates,
                recovering: HashSet::new(),
                failed: None,
            });
        e.failed = None;
    }

    /// Map partitions with no output that nobody is recomputing.
    pub(crate) fn unfinished(&self, shuffle: u64) -> Vec<u32> {
        self.shuffles.get(&shuffle).map_or(Vec::new(), |e| {
            (0..e.outputs.len() as u32)
                .filter(|m| e.outputs[*m as usize].is_none() && !e.recovering.contains(m))
                .collect()
        })
    }

    /// The map task of partition `map`.
    pub(crate) fn template(&self, shuffle: u64, map: u32) -> Option<StageTask> {
        self.shuffles
            .get(&shuffle)
            .and_then(|e| e.templates.get(map as usize))
            .cloned()
    }

    /// A map task finished on `executor`. False for a freed shuffle.
    pub(crate) fn record(
        &mut self,
        shuffle: u64,
        map: u32,
        executor: u64,
        sizes: Vec<u64>,
    ) -> bool {
        let Some(e) = self.shuffles.get_mut(&shuffle) else {
            return false;
        };
        e.recovering.remove(&map);
        match e.outputs.get_mut(map as usize) {
            Some(slot) => {
                *slot = Some(MapOutput { executor, sizes });
                true
            }
            None => false,
        }
    }

    /// Can a task reading these `(shuffle, reduce)` blocks run now?
    pub(crate) fn readiness(&self, reads: &[(u64, u32)]) -> Readiness {
        let mut missing: Vec<(u64, Vec<u32>)> = Vec::new();
        for (shuffle, _) in reads {
            if missing.iter().any(|(s, _)| s == shuffle) {
                continue;
            }
            let Some(e) = self.shuffles.get(shuffle) else {
                return Readiness::Failed(format!("shuffle {shuffle} is not registered"));
            };
            if let Some(cause) = &e.failed {
                return Readiness::Failed(cause.clone());
            }
            let m: Vec<u32> = (0..e.outputs.len() as u32)
                .filter(|m| e.outputs[*m as usize].is_none())
                .collect();
            if !m.is_empty() {
                missing.push((*shuffle, m));
            }
        }
        if missing.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Missing(missing)
        }
    }

    /// Mark `maps` of `shuffle` as being recomputed; returns the map tasks
    /// of those that were not already.
    pub(crate) fn start_recovery(&mut self, shuffle: u64, maps: &[u32]) -> Vec<StageTask> {
        let Some(e) = self.shuffles.get_mut(&shuffle) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in maps {
            if e.outputs.get(*m as usize).is_some_and(Option::is_none) && e.recovering.insert(*m) {
                if let Some(t) = e.templates.get(*m as usize) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    /// Recomputing outputs of `shuffle` failed for good.
    pub(crate) fn recovery_failed(&mut self, shuffle: u64, cause: String) {
        if let Some(e) = self.shuffles.get_mut(&shuffle) {
            e.recovering.clear();
            e.failed = Some(cause);
        }
    }

    /// Nothing is being recomputed any more (all waiting stages failed).
    pub(crate) fn clear_recovering(&mut self) {
        for e in self.shuffles.values_mut() {
            e.recovering.clear();
        }
    }

    /// Forget every output held by a lost executor; returns how many.
    pub(crate) fn lose_executor(&mut self, executor: u64) -> usize {
        let mut n = 0;
        for e in self.shuffles.values_mut() {
            for slot in &mut e.outputs {
                if slot.as_ref().is_some_and(|o| o.executor == executor) {
                    *slot = None;
                    n += 1;
                }
            }
        }
        n
    }

    /// A fetch failed: forget the outputs of each named executor in the
    /// named shuffle (it is likely gone or lost them all). Returns how many.
    pub(crate) fn lose_blocks(&mut self, lost: &[LostBlock]) -> usize {
        let mut n = 0;
        for b in lost {
            if let Some(e) = self.shuffles.get_mut(&b.shuffle) {
                for slot in &mut e.outputs {
                    if slot.as_ref().is_some_and(|o| o.executor == b.executor) {
                        *slot = None;
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// `(map, executor, block size)` of every map output for `reduce`, in
    /// map order; `None` while any is missing.
    pub(crate) fn locations(&self, shuffle: u64, reduce: u32) -> Option<Vec<(u32, u64, u64)>> {
        let e = self.shuffles.get(&shuffle)?;
        e.outputs
            .iter()
            .enumerate()
            .map(|(m, o)| {
                let o = o.as_ref()?;
                Some((m as u32, o.executor, *o.sizes.get(reduce as usize)?))
            })
            .collect()
    }

    /// Number of shuffles tracked.
    pub(crate) fn len(&self) -> usize {
        self.shuffles.len()
    }

    /// Forget a shuffle no dataset reads any more. False if unknown.
    pub(crate) fn free(&mut self, shuffle: u64) -> bool {
        self.shuffles.remove(&shuffle).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::protocol::Action;

    fn template(m: u32) -> StageTask {
        StageTask {
            partition: m,
            plan: Plan::Source {
                name: "s".into(),
                args: Vec::new(),
                partitions: 3,
            },
            action: Action::Count,
            inputs: HashMap::new(),
            prefer: Vec::new(),
            reads: Vec::new(),
            fetches: Vec::new(),
            pin: None,
        }
    }

    #[test]
    fn losing_an_executor_makes_its_outputs_missing_and_recoverable() {
        let mut t = MapOutputs::default();
        t.register(7, (0..3).map(template).collect());
        assert_eq!(t.unfinished(7), vec![0, 1, 2]);
        assert!(t.record(7, 0, 1, vec![10, 20]));
        assert!(t.record(7, 1, 2, vec![11, 21]));
        assert!(t.record(7, 2, 1, vec![12, 22]));
        assert_eq!(t.readiness(&[(7, 1)]), Readiness::Ready);
        assert_eq!(
            t.locations(7, 1),
            Some(vec![(0, 1, 20), (1, 2, 21), (2, 1, 22)])
        );
        assert_eq!(t.lose_executor(1), 2);
        assert_eq!(
            t.readiness(&[(7, 0)]),
            Readiness::Missing(vec![(7, vec![0, 2])])
        );
        assert_eq!(t.locations(7, 0), None);
        let again: Vec<u32> = t
            .start_recovery(7, &[0, 2])
            .iter()
            .map(|s| s.partition)
            .collect();
        assert_eq!(again, vec![0, 2]);
        // Already recovering: not handed out twice.
        assert!(t.start_recovery(7, &[0, 2]).is_empty());
        assert!(t.unfinished(7).is_empty());
        t.record(7, 0, 3, vec![1, 1]);
        t.record(7, 2, 3, vec![1, 1]);
        assert_eq!(t.readiness(&[(7, 0)]), Readiness::Ready);
        // A fetch failure naming executor 2 drops its outputs of shuffle 7.
        let lost = [LostBlock {
            shuffle: 7,
            map: 1,
            executor: 2,
        }];
        assert_eq!(t.lose_blocks(&lost), 1);
        t.start_recovery(7, &[1]);
        t.recovery_failed(7, "boom".into());
        assert_eq!(t.readiness(&[(7, 0)]), Readiness::Failed("boom".into()));
        assert!(t.free(7));
        assert!(matches!(t.readiness(&[(7, 0)]), Readiness::Failed(_)));
    }
}
