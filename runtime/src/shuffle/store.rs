//! An executor's in-memory store of map outputs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};

/// Freed shuffle ids remembered, so that a copy pushed by a peer after its
/// shuffle was freed is declined (ids are never reused; a late copy of an
/// id older than this many frees would be kept until the process ends).
const REMEMBERED_FREES: usize = 4096;

#[derive(Default)]
struct Blocks {
    outputs: HashMap<(u64, u32), Arc<Vec<Bytes>>>,
    freed: HashSet<u64>,
    freed_order: VecDeque<u64>,
}

/// Map outputs held by one executor: `(shuffle, map partition) -> buckets`
/// indexed by reduce partition, its own and copies peers pushed. Cheap to
/// clone (shared); blocks are shared buffers, so serving one to a peer
/// copies nothing.
#[derive(Clone, Default)]
pub(crate) struct ShuffleStore {
    blocks: Arc<Mutex<Blocks>>,
}

fn poisoned() -> Error {
    Error::Invalid("shuffle store lock poisoned".into())
}

impl ShuffleStore {
    /// Keep the buckets of map partition `map` of `shuffle` (replacing an
    /// earlier attempt's).
    pub(crate) fn put(&self, shuffle: u64, map: u32, buckets: Vec<Vec<u8>>) -> Result<()> {
        self.put_shared(shuffle, map, buckets.into_iter().map(Bytes::from).collect())
    }

    /// As [`ShuffleStore::put`], with buffers that are already shared
    /// (views of a larger buffer: nothing is copied).
    pub(crate) fn put_shared(&self, shuffle: u64, map: u32, buckets: Vec<Bytes>) -> Result<()> {
        self.blocks
            .lock()
            .map_err(|_| poisoned())?
            .outputs
            .insert((shuffle, map), Arc::new(buckets));
        Ok(())
    }

    /// Keeps a peer's copy of map output `(shuffle, map)`, unless this
    /// store holds that output already or `shuffle` was freed. Returns
    /// whether it was kept.
    pub(crate) fn put_copy(&self, shuffle: u64, map: u32, buckets: Vec<Bytes>) -> Result<bool> {
        let mut blocks = self.blocks.lock().map_err(|_| poisoned())?;
        if blocks.freed.contains(&shuffle) || blocks.outputs.contains_key(&(shuffle, map)) {
            return Ok(false);
        }
        blocks.outputs.insert((shuffle, map), Arc::new(buckets));
        Ok(true)
    }

    /// One block (shared, not copied), `None` when this executor does not
    /// hold it.
    pub(crate) fn block(&self, shuffle: u64, map: u32, reduce: u32) -> Result<Option<Bytes>> {
        let blocks = self.blocks.lock().map_err(|_| poisoned())?;
        Ok(blocks
            .outputs
            .get(&(shuffle, map))
            .and_then(|b| b.get(reduce as usize))
            .cloned())
    }

    /// Drop every block of `shuffle`; returns how many map outputs went.
    pub(crate) fn free(&self, shuffle: u64) -> Result<usize> {
        let mut blocks = self.blocks.lock().map_err(|_| poisoned())?;
        let before = blocks.outputs.len();
        blocks.outputs.retain(|(s, _), _| *s != shuffle);
        if blocks.freed.insert(shuffle) {
            blocks.freed_order.push_back(shuffle);
            if blocks.freed_order.len() > REMEMBERED_FREES {
                if let Some(old) = blocks.freed_order.pop_front() {
                    blocks.freed.remove(&old);
                }
            }
        }
        Ok(before - blocks.outputs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_free() {
        let s = ShuffleStore::default();
        s.put(1, 0, vec![vec![1], vec![2, 2]]).unwrap();
        s.put(2, 0, vec![vec![9]]).unwrap();
        assert_eq!(s.block(1, 0, 1).unwrap().as_deref(), Some(&[2u8, 2][..]));
        assert_eq!(s.block(1, 0, 2).unwrap(), None);
        assert_eq!(s.block(1, 1, 0).unwrap(), None);
        assert_eq!(s.free(1).unwrap(), 1);
        assert_eq!(s.block(1, 0, 0).unwrap(), None);
        assert_eq!(s.block(2, 0, 0).unwrap().as_deref(), Some(&[9u8][..]));
    }

    #[test]
    fn copies_are_kept_once_and_never_after_their_shuffle_was_freed() {
        let s = ShuffleStore::default();
        let copy = |b: u8| vec![Bytes::from(vec![b; 2])];
        assert!(s.put_copy(3, 1, copy(1)).unwrap());
        // A second copy, or a copy of this store's own output, is declined.
        assert!(!s.put_copy(3, 1, copy(2)).unwrap());
        s.put(3, 0, vec![vec![7]]).unwrap();
        assert!(!s.put_copy(3, 0, copy(3)).unwrap());
        assert_eq!(s.block(3, 1, 0).unwrap().as_deref(), Some(&[1u8, 1][..]));
        assert_eq!(s.free(3).unwrap(), 2);
        // A copy arriving after the free would never be freed: declined.
        assert!(!s.put_copy(3, 1, copy(4)).unwrap());
        assert_eq!(s.block(3, 1, 0).unwrap(), None);
        // Only the most recent frees are remembered.
        for id in 100..100 + REMEMBERED_FREES as u64 {
            s.free(id).unwrap();
        }
        assert!(s.put_copy(3, 1, copy(5)).unwrap());
        assert!(!s.put_copy(100, 0, copy(6)).unwrap());
    }
}
