//! The open-inode map (reference §7.5, OPEN_INO_MAP): which mounts hold
//! inodes of one 1024-inode group in their caches (open files, kernel
//! lookups). An unlinked inode's items may be deleted only when no mount
//! does, or another mount's open file would lose its data.
//!
//! A mount asks the server with `{group_nr, req_id}`; the server asks
//! every other mount it knows with the same group and its own query id,
//! ORs the bitmaps they answer and replies. A mount that goes away for good
//! (fenced, reclaimed, farewell) counts as answering "nothing": its caches
//! are gone with it.
//!
//! [`Queries`] is the server's bookkeeping as a plain state machine; the
//! wire layout is 16 bytes of args, then 1024 bits as 16 little-endian
//! u64 (bit n of the group = inode `group_nr * 1024 + n`).
//!
//! Touches nothing but its own types.

use std::collections::{BTreeMap, BTreeSet};

/// Inodes per group (one bit each).
pub const OPEN_MAP_GROUP_NR: u64 = 1024;
/// Bytes of the args: group_nr, req_id.
pub const OPEN_MAP_ARGS_BYTES: usize = 16;
/// Bytes of a bitmap.
pub const OPEN_MAP_BITS_BYTES: usize = (OPEN_MAP_GROUP_NR / 8) as usize;

/// One group's bitmap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bits(pub [u64; 16]);

impl Bits {
    pub fn set(&mut self, ino: u64) {
        let n = ino % OPEN_MAP_GROUP_NR;
        self.0[(n / 64) as usize] |= 1 << (n % 64);
    }

    pub fn has(&self, ino: u64) -> bool {
        let n = ino % OPEN_MAP_GROUP_NR;
        self.0[(n / 64) as usize] & (1 << (n % 64)) != 0
    }

    pub fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }
}

/// Encodes `{group_nr, req_id}`.
pub fn encode_args(group_nr: u64, req_id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPEN_MAP_ARGS_BYTES);
    v.extend_from_slice(&group_nr.to_le_bytes());
    v.extend_from_slice(&req_id.to_le_bytes());
    v
}

/// Decodes `{group_nr, req_id}`: EINVAL unless exactly 16 bytes.
pub fn decode_args(b: &[u8]) -> Result<(u64, u64), i32> {
    if b.len() != OPEN_MAP_ARGS_BYTES {
        return Err(libc::EINVAL);
    }
    let g = u64::from_le_bytes(b[0..8].try_into().map_err(|_| libc::EINVAL)?);
    let r = u64::from_le_bytes(b[8..16].try_into().map_err(|_| libc::EINVAL)?);
    Ok((g, r))
}

/// Encodes an answer: the args, then the bitmap.
pub fn encode_map(group_nr: u64, req_id: u64, bits: &Bits) -> Vec<u8> {
    let mut v = encode_args(group_nr, req_id);
    for w in bits.0 {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// Decodes an answer: EINVAL unless exactly args + bitmap.
pub fn decode_map(b: &[u8]) -> Result<(u64, u64, Bits), i32> {
    if b.len() != OPEN_MAP_ARGS_BYTES + OPEN_MAP_BITS_BYTES {
        return Err(libc::EINVAL);
    }
    let (g, r) = decode_args(&b[..OPEN_MAP_ARGS_BYTES])?;
    let mut bits = Bits::default();
    for (i, w) in bits.0.iter_mut().enumerate() {
        let at = OPEN_MAP_ARGS_BYTES + i * 8;
        *w = u64::from_le_bytes(b[at..at + 8].try_into().map_err(|_| libc::EINVAL)?);
    }
    Ok((g, r, bits))
}

struct Query<T> {
    asker: u64,
    token: T,
    group_nr: u64,
    waiting: BTreeSet<u64>,
    bits: Bits,
}

/// A query whose answers are all in: reply `bits` to `asker` with `token`.
#[derive(Debug, PartialEq, Eq)]
pub struct Done<T> {
    pub asker: u64,
    pub token: T,
    pub group_nr: u64,
    pub bits: Bits,
}

/// What [`Queries::start`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Started<T> {
    /// Send the question to the others with this query id.
    Ask(u64),
    /// Nobody else to ask: the answer is empty.
    Done(Done<T>),
}

/// The server's open queries. `T` is the asker's request token.
pub struct Queries<T> {
    next_id: u64,
    open: BTreeMap<u64, Query<T>>,
}

impl<T> Default for Queries<T> {
    fn default() -> Self {
        Queries {
            next_id: 1,
            open: BTreeMap::new(),
        }
    }
}

impl<T> Queries<T> {
    /// A query from `asker` about `group_nr`, to be sent to `others` with
    /// the returned id. With nobody to ask it is done at once.
    pub fn start(
        &mut self,
        asker: u64,
        token: T,
        group_nr: u64,
        others: impl IntoIterator<Item = u64>,
    ) -> Started<T> {
        let waiting: BTreeSet<u64> = others.into_iter().filter(|r| *r != asker).collect();
        if waiting.is_empty() {
            return Started::Done(Done {
                asker,
                token,
                group_nr,
                bits: Bits::default(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            Query {
                asker,
                token,
                group_nr,
                waiting,
                bits: Bits::default(),
            },
        );
        Started::Ask(id)
    }

    /// `rid` answered query `id` about `group_nr`. Unknown or mismatched
    /// answers (a duplicate after a reconnect) are ignored.
    pub fn answer(&mut self, id: u64, rid: u64, group_nr: u64, bits: &Bits) -> Option<Done<T>> {
        let q = self.open.get_mut(&id)?;
        if q.group_nr != group_nr || !q.waiting.remove(&rid) {
            return None;
        }
        q.bits.or(bits);
        self.finish(id)
    }

    /// `rid` is gone for good: it answers nothing in every query.
    pub fn gone(&mut self, rid: u64) -> Vec<Done<T>> {
        let ids: Vec<u64> = self
            .open
            .iter_mut()
            .filter_map(|(id, q)| q.waiting.remove(&rid).then_some(*id))
            .collect();
        ids.into_iter().filter_map(|id| self.finish(id)).collect()
    }

    fn finish(&mut self, id: u64) -> Option<Done<T>> {
        if !self.open.get(&id)?.waiting.is_empty() {
            return None;
        }
        let q = self.open.remove(&id)?;
        Some(Done {
            asker: q.asker,
            token: q.token,
            group_nr: q.group_nr,
            bits: q.bits,
        })
    }

    /// Queries still waiting (tests).
    pub fn pending(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_ored_and_a_departed_mount_answers_nothing() {
        let mut q = Queries::default();
        let Started::Ask(id) = q.start(1, "t", 7, [1, 2, 3]) else {
            panic!("others to ask");
        };
        let mut a = Bits::default();
        a.set(7 * 1024 + 5);
        assert_eq!(q.answer(id, 2, 7, &a), None);
        // A duplicate from the same mount changes nothing.
        assert_eq!(q.answer(id, 2, 7, &Bits::default()), None);
        let done = q.gone(3);
        assert_eq!(done.len(), 1);
        assert!(done[0].bits.has(7 * 1024 + 5));
        assert!(!done[0].bits.has(7 * 1024 + 6));
        assert_eq!(done[0].asker, 1);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn alone_is_done_at_once_and_wrong_groups_are_ignored() {
        let mut q: Queries<u8> = Queries::default();
        assert!(matches!(q.start(1, 0, 3, [1]), Started::Done(_)));
        let Started::Ask(id) = q.start(1, 0, 3, [2]) else {
            panic!("one other");
        };
        assert_eq!(q.answer(id, 2, 4, &Bits::default()), None);
        assert!(q.answer(id, 2, 3, &Bits::default()).is_some());
    }

    #[test]
    fn wire_round_trip_and_hostile_lengths() {
        let mut b = Bits::default();
        b.set(1023);
        b.set(64);
        let (g, r, got) = decode_map(&encode_map(9, 4, &b)).expect("decode");
        assert_eq!((g, r, got), (9, 4, b));
        assert_eq!(decode_map(&[0; 10]), Err(libc::EINVAL));
        assert_eq!(decode_args(&[0; 17]), Err(libc::EINVAL));
    }
}
