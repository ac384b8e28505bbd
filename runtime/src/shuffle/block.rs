//! A block as the transport delivered it: the received pieces, in order,
//! never copied into one buffer unless a reader needs one.
//!
//! A fetched parameter-shard block (up to hundreds of MB) arrives as
//! quinn's stream chunks, each a slice of one received datagram. Copying
//! them into one buffer was ~7 % of a 256 MB parameter sync's CPU time;
//! the gradient sums and the weight gathers read the pieces instead.

use std::ops::Range;

use bytes::Bytes;

/// The bytes of one block, as one or more consecutive pieces. Cheap to
/// clone (the pieces are shared).
#[derive(Debug, Clone, Default)]
pub(crate) struct Block {
    pieces: Vec<Bytes>,
    /// Offset of each piece's first byte in the block.
    starts: Vec<usize>,
    len: usize,
}

impl From<Bytes> for Block {
    fn from(b: Bytes) -> Self {
        Block::from_pieces(vec![b])
    }
}

impl From<Vec<u8>> for Block {
    fn from(b: Vec<u8>) -> Self {
        Block::from(Bytes::from(b))
    }
}

/// On the wire a block is its bytes (tasks ship their parallelize data as
/// one-piece blocks).
impl serde::Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_contiguous())
    }
}

impl<'de> serde::Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Bytes::deserialize(d).map(Block::from)
    }
}

impl Block {
    /// The block made of `pieces`, in order (empty pieces are dropped).
    pub(crate) fn from_pieces(pieces: Vec<Bytes>) -> Self {
        let pieces: Vec<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let mut starts = Vec::with_capacity(pieces.len());
        let mut len = 0;
        for p in &pieces {
            starts.push(len);
            len += p.len();
        }
        Block {
            pieces,
            starts,
            len,
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The block as one buffer: shared when it is one piece, else copied.
    pub(crate) fn to_contiguous(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = Vec::with_capacity(self.len);
                for p in many {
                    out.extend_from_slice(p);
                }
                Bytes::from(out)
            }
        }
    }

    /// The pieces of bytes `range`, in order; `None` if the range is not
    /// inside the block.
    pub(crate) fn slices(&self, range: Range<usize>) -> Option<impl Iterator<Item = &[u8]>> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        // The piece holding `range.start` (the last one starting at or
        // before it).
        let first = self
            .starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        let pieces = self.pieces.get(first..).unwrap_or_default();
        let starts = self.starts.get(first..).unwrap_or_default();
        Some(
            pieces
                .iter()
                .zip(starts)
                .take_while(move |(_, &s)| s < range.end)
                .map(move |(p, &s)| {
                    let lo = range.start.saturating_sub(s);
                    let hi = (range.end - s).min(p.len());
                    &p[lo..hi]
                })
                .filter(|s| !s.is_empty()),
        )
    }

    /// Calls `f(at, bytes)` over bytes `range` (a whole number of `f32`s
    /// from a 4-byte boundary of the block), where `bytes` holds whole
    /// little-endian `f32`s and `at` counts values from the range's start.
    /// A value split between two pieces is passed on its own. `false` if
    /// the range is not inside the block or not whole values.
    pub(crate) fn for_each_f32_run(
        &self,
        range: Range<usize>,
        mut f: impl FnMut(usize, &[u8]),
    ) -> bool {
        if !range.start.is_multiple_of(4) || !range.len().is_multiple_of(4) {
            return false;
        }
        let Some(slices) = self.slices(range) else {
            return false;
        };
        let mut at = 0;
        let mut split = [0u8; 4];
        let mut held = 0;
        for mut s in slices {
            if held > 0 {
                let take = (4 - held).min(s.len());
                split[held..held + take].copy_from_slice(&s[..take]);
                held += take;
                s = &s[take..];
                if held < 4 {
                    continue;
                }
                f(at, &split);
                at += 1;
            }
            let whole = s.len() / 4 * 4;
            if whole > 0 {
                f(at, &s[..whole]);
                at += whole / 4;
            }
            let rest = &s[whole..];
            split[..rest.len()].copy_from_slice(rest);
            held = rest.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    fn le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The bytes cut at `cuts` into pieces.
    fn cut(bytes: &[u8], cuts: &[usize]) -> Block {
        let mut pieces = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            pieces.push(Bytes::copy_from_slice(&bytes[from..c]));
            from = c;
        }
        Block::from_pieces(pieces)
    }

    fn decode_range(b: &Block, range: Range<usize>) -> Option<Vec<f32>> {
        let mut out = vec![f32::NAN; range.len() / 4];
        let mut next = 0;
        let ok = b.for_each_f32_run(range, |at, bytes| {
            assert_eq!(at, next, "runs come in order without gaps");
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                out[at + i] = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            next = at + bytes.len() / 4;
        });
        ok.then_some(out)
    }

    #[test]
    fn pieces_read_like_the_whole_buffer_at_any_cut() {
        let v = values(40);
        let bytes = le_bytes(&v);
        let cut_sets: [&[usize]; 6] = [
            &[],
            &[4, 8, 12],
            &[1, 2, 3, 7, 101],
            &[5, 6, 77, 78, 79, 159],
            &[3, 3, 3, 90],
            &[0, 160],
        ];
        for cuts in cut_sets {
            let b = cut(&bytes, cuts);
            assert_eq!(b.len(), bytes.len());
            assert_eq!(&b.to_contiguous()[..], &bytes[..], "cuts {cuts:?}");
            for (lo, hi) in [(0, 40), (0, 1), (3, 17), (39, 40), (10, 10)] {
                let got = decode_range(&b, lo * 4..hi * 4).expect("range inside the block");
                assert_eq!(got, v[lo..hi], "cuts {cuts:?}, values {lo}..{hi}");
                if hi > lo {
                    let joined: Vec<u8> = b
                        .slices(lo * 4 + 1..hi * 4)
                        .unwrap()
                        .flatten()
                        .copied()
                        .collect();
                    assert_eq!(joined, bytes[lo * 4 + 1..hi * 4]);
                }
            }
        }
    }

    #[test]
    fn ranges_outside_the_block_or_off_value_boundaries_are_refused() {
        let b = cut(&le_bytes(&values(8)), &[5, 13]);
        assert!(b.slices(0..33).is_none());
        assert!(decode_range(&b, 28..36).is_none());
        assert!(decode_range(&b, 2..10).is_none());
        assert!(decode_range(&b, 4..10).is_none());
        assert_eq!(Block::default().len(), 0);
        assert!(decode_range(&Block::default(), 0..0).unwrap().is_empty());
    }

    #[test]
    fn one_piece_is_shared_not_copied() {
        let b = Bytes::from(vec![1u8, 2, 3, 4]);
        let block = Block::from(b.clone());
        assert_eq!(block.to_contiguous().as_ptr(), b.as_ptr());
    }

    #[test]
    fn a_block_in_pieces_travels_as_its_bytes() {
        let bytes = le_bytes(&values(9));
        let b = cut(&bytes, &[2, 17, 30]);
        let wire = rmp_serde::to_vec(&b).unwrap();
        assert_eq!(
            wire,
            rmp_serde::to_vec(&serde_bytes::Bytes::new(&bytes)).unwrap()
        );
        let back: Block = rmp_serde::from_slice(&wire).unwrap();
        assert_eq!(&back.to_contiguous()[..], &bytes[..]);
        // Anything but a binary string is refused.
        assert!(rmp_serde::from_slice::<Block>(&rmp_serde::to_vec(&7u32).unwrap()).is_err());
    }
}
