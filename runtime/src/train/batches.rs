//! Global batches over a partitioned dataset. The sample order of an epoch
//! is a seeded permutation of global indices, so it is the same whatever
//! the number of executors; a batch is split by the partition that holds
//! each sample.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use serde::{Deserialize, Serialize};

/// A curriculum of sorted epochs, as DS2's SortaGrad (Amodei et al. 2016,
/// section 3.1): the first `epochs` epochs take the samples in ascending
/// order of their `keys` (e.g. utterance lengths; ties in index order),
/// later epochs in the usual seeded random order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortedEpochs {
    /// One key per sample, by global index (partition by partition, in
    /// each partition's element order).
    pub keys: Vec<u64>,
    /// How many epochs, from the first, are sorted.
    pub epochs: u64,
}

/// The seeded order of epoch `epoch` (counted from 1) over `n` samples,
/// sorted instead where `sorted` says so.
pub(crate) fn epoch_order(
    n: u64,
    seed: u64,
    epoch: u64,
    sorted: Option<&SortedEpochs>,
) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    match sorted {
        Some(s) if epoch <= s.epochs && s.keys.len() as u64 == n => {
            order.sort_by_key(|&g| (s.keys[g as usize], g));
        }
        _ => {
            let mix = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut StdRng::seed_from_u64(mix));
        }
    }
    order
}

/// Where global sample indices live: prefix sums of partition sizes.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    starts: Vec<u64>,
    total: u64,
}

impl Layout {
    pub(crate) fn new(counts: &[u64]) -> Self {
        let mut starts = Vec::with_capacity(counts.len());
        let mut total = 0;
        for c in counts {
            starts.push(total);
            total += c;
        }
        Layout { starts, total }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// `(partition, index within it)` of global index `g` (< total).
    fn locate(&self, g: u64) -> (u32, u32) {
        // The last partition starting at or before g (empty ones skipped).
        let p = self.starts.partition_point(|&s| s <= g).saturating_sub(1);
        (p as u32, (g - self.starts[p]) as u32)
    }

    /// Splits a batch of global indices into per-partition index lists,
    /// in partition order; within a partition, batch order is kept.
    pub(crate) fn split(&self, batch: &[u64]) -> Vec<(u32, Vec<u32>)> {
        let mut by_part: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for &g in batch {
            let (p, i) = self.locate(g);
            by_part.entry(p).or_default().push(i);
        }
        by_part.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0, None);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0, None));
        assert_ne!(a, epoch_order(100, 7, 1, None));
        assert_ne!(a, epoch_order(100, 8, 0, None));
    }

    #[test]
    fn sorted_epochs_go_shortest_first_then_shuffle() {
        let s = SortedEpochs {
            keys: vec![5, 1, 9, 1, 3],
            epochs: 1,
        };
        assert_eq!(epoch_order(5, 7, 1, Some(&s)), vec![1, 3, 4, 0, 2]);
        let later = epoch_order(5, 7, 2, Some(&s));
        assert_eq!(later, epoch_order(5, 7, 2, None));
        // Keys for another number of samples are not used (the trainer
        // refuses them before it starts).
        assert_eq!(epoch_order(4, 7, 1, Some(&s)), epoch_order(4, 7, 1, None));
    }

    #[test]
    fn split_follows_partition_sizes_including_empty_ones() {
        let l = Layout::new(&[3, 0, 2, 4]);
        assert_eq!(l.total(), 9);
        let parts = l.split(&[8, 0, 3, 2, 4, 5]);
        assert_eq!(
            parts,
            vec![(0, vec![0, 2]), (2, vec![0, 1]), (3, vec![3, 0])]
        );
    }
}
