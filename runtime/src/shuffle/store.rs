//! An executor's in-memory store of map outputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, Result};

type Blocks = HashMap<(u64, u32), Arc<Vec<Bytes>>>;

/// Map outputs held by one executor: `(shuffle, map partition) -> buckets`
/// indexed by reduce partition. Cheap to clone (shared); blocks are
/// shared buffers, so serving one to a peer copies nothing.
#[derive(Clone, Default)]
pub(crate) struct ShuffleStore {
    blocks: Arc<Mutex<Blocks>>,
}

fn poisoned() -> Error {
    Error::Poisoned {
        lock: "shuffle store",
    }
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
            .insert((shuffle, map), Arc::new(buckets));
        Ok(())
    }

    /// One block (shared, not copied), `None` when this executor does not
    /// hold it.
    pub(crate) fn block(&self, shuffle: u64, map: u32, reduce: u32) -> Result<Option<Bytes>> {
        let blocks = self.blocks.lock().map_err(|_| poisoned())?;
        Ok(blocks
            .get(&(shuffle, map))
            .and_then(|b| b.get(reduce as usize))
            .cloned())
    }

    /// Drop every block of `shuffle`; returns how many map outputs went.
    pub(crate) fn free(&self, shuffle: u64) -> Result<usize> {
        let mut blocks = self.blocks.lock().map_err(|_| poisoned())?;
        let before = blocks.len();
        blocks.retain(|(s, _), _| *s != shuffle);
        Ok(before - blocks.len())
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
}
