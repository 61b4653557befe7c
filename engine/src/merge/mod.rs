//! Log merge: moving finalized log trees into `fs_root` (reference §2.3–§2.5).
//!
//! Purpose: keep the forest bounded. Mounts write items into their own log
//! trees; the server finalizes those trees together (so every finalized tree
//! is older than every active one, trap 9, bb571377), hands out key ranges of
//! `fs_root` to mounts ([`server`]), mounts merge the finalized inputs into
//! one `fs_root` parent block each ([`client`]), and the server splices the
//! results in and frees the merged input trees in the background.
//!
//! The work is described by items in `super.log_merge` (keys below):
//! status `44/0`, ranges `48/<start key with its zone overwritten>`,
//! requests `52/rid/0/seq`, completions `56/seq`, freeing `60/seq`.
//!
//! Guarantees (each module states its own as well):
//! * Merging never changes what a forest read returns: per key the highest
//!   seq wins, tombstones delete, `.totl.` deltas are summed, and an `fs_root`
//!   item whose seq is at least the merged version's is left alone (so a
//!   version never goes back in time and a delta is never folded twice).
//! * Every block stays accounted for: blocks a merge COWs away go to the
//!   request's `meta_freed`, request/completion allocators go back to the
//!   server through [`server::ServerAllocs::reclaim_list`], and freed input
//!   trees give each block back exactly once.
//!
//! Touches `btree` (including `btree::merge_into`), `alloc` (list
//! allocators) and `format`; never the item cache, the network or the
//! superblock I/O — callers own commits.

pub mod client;
pub mod server;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::block::{Error, Result};
use crate::btree::Btree;
use crate::format::btree_block::NodeItem;
use crate::format::key::zone;
use crate::format::log_trees::{LogTrees, LOG_TREES_FLAG_FINALIZED};
use crate::format::superblock::BtreeRoot;
use crate::format::Key;

/// Completions the server lets accumulate before it splices them.
pub const SPLICE_BATCH: u64 = 8;
/// Blocks a merge request's `meta_avail` holds: 64 MiB of 64 KiB blocks + 4.
pub const MERGE_FILL_BLOCKS: u64 = 1028;
/// A merge stops (REMAIN) once it has allocated this many blocks (64 MiB).
pub const MERGE_DIRTY_LIMIT_BLOCKS: u64 = 1024;
/// A merge stops (REMAIN) before its avail list falls below this: enough
/// for one more descent with splits plus the freed list's own blocks.
pub const MERGE_ALLOC_LOW_BLOCKS: u64 = 64;
/// Bytes of input items one merge window reads across all inputs.
pub const MERGE_WINDOW_BYTES: usize = 2 << 20;
/// Blocks the background freeing releases per call (the original uses half
/// of a server commit holder's 500-block budget).
pub const FREEING_BUDGET_BLOCKS: usize = 250;

/// `44/0`: the status item.
pub fn status_key() -> Key {
    Key::new(zone::LOG_MERGE_STATUS, 0, 0, 0, 0, 0)
}

/// `48/...`: a range item is keyed by its start key with the zone byte
/// overwritten. Range keys therefore do NOT sort like range starts (a start
/// in zone 16 can sort before one in zone 4, e182914e): nothing may walk
/// range items in key order to find "the next range". [`server`] always
/// decodes every range item and compares the real starts.
pub fn range_key(start: &Key) -> Key {
    Key {
        zone: zone::LOG_MERGE_RANGE,
        ..*start
    }
}

/// `52/rid/0/seq`: a request handed to mount `rid`.
pub fn request_key(rid: u64, seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_REQUEST, rid, 0, seq, 0, 0)
}

/// `56/seq`: a completion waiting to be spliced.
pub fn complete_key(seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_COMPLETE, seq, 0, 0, 0, 0)
}

/// `60/seq`: an input tree being freed.
pub fn freeing_key(seq: u64) -> Key {
    Key::new(zone::LOG_MERGE_FREEING, seq, 0, 0, 0, 0)
}

/// The first and last keys of one zone.
pub(crate) fn zone_bounds(z: u8) -> (Key, Key) {
    (
        Key::new(z, 0, 0, 0, 0, 0),
        Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
    )
}

/// Decodes a fixed-size item value.
pub(crate) fn decode<T: FromBytes + KnownLayout + Immutable>(item: &NodeItem) -> Result<T> {
    T::read_from_bytes(&item.val).map_err(|_| {
        Error::corrupt(format!(
            "item {} value of {} bytes, expected {}",
            item.key,
            item.val.len(),
            std::mem::size_of::<T>()
        ))
    })
}

pub(crate) fn encode<T: IntoBytes + Immutable>(v: &T) -> Vec<u8> {
    v.as_bytes().to_vec()
}

/// Every item of one zone of `root`, read in bounded batches.
pub(crate) async fn zone_items(btree: &Btree, root: &BtreeRoot, z: u8) -> Result<Vec<NodeItem>> {
    const BATCH_ITEMS: usize = 256;
    let (mut start, end) = zone_bounds(z);
    let mut out = Vec::new();
    loop {
        let batch = btree.range(root, &start, &end, BATCH_ITEMS).await?;
        out.extend(batch.items);
        match batch.next {
            Some(k) => start = k,
            None => return Ok(out),
        }
    }
}

/// Every log_trees item of `logs_root`, in key (rid, nr) order.
pub async fn all_log_trees(btree: &Btree, logs_root: &BtreeRoot) -> Result<Vec<(Key, LogTrees)>> {
    zone_items(btree, logs_root, zone::LOG_TREES)
        .await?
        .iter()
        .map(|it| Ok((it.key, decode::<LogTrees>(it)?)))
        .collect()
}

/// A tree is an input of the merge whose status seq is `input_seq`:
/// finalized before that merge started.
pub fn is_input(lt: &LogTrees, input_seq: u64) -> bool {
    lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0 && lt.finalize_seq.get() < input_seq
}

/// The non-empty item roots of the inputs of the merge with `input_seq`,
/// in log_trees key order.
pub async fn input_roots(
    btree: &Btree,
    logs_root: &BtreeRoot,
    input_seq: u64,
) -> Result<Vec<BtreeRoot>> {
    Ok(all_log_trees(btree, logs_root)
        .await?
        .into_iter()
        .filter(|(_, lt)| is_input(lt, input_seq) && !lt.item_root.is_empty())
        .map(|(_, lt)| lt.item_root)
        .collect())
}
