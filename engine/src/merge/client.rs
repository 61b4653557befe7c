//! The mount's half of a log merge: merge the finalized input trees of a
//! [`LogMergeRequest`] into the `fs_root` block it names (reference §2.4).
//!
//! The inputs are the finalized log trees in `req.logs_root` with
//! `finalize_seq < req.input_seq` and a non-empty item root. Items are read
//! in bounded windows from all inputs at once (about
//! [`MERGE_WINDOW_BYTES`] split across the inputs; no leaf of any input is
//! held between windows, 91bbf90f). A window ends just before the first key
//! some input could not deliver, so every input contributes every version
//! of every key in the window (no input is dropped because another one held
//! a newer version of one item, 5f577857).
//!
//! Per key: the highest seq wins; a winning tombstone deletes the `fs_root`
//! item; `.totl.` items (zone 12, [`TotlValue`]) are deltas: the versions
//! newer than the newest tombstone are summed, their largest seq becomes the
//! result's seq (so a reader never adds the inputs again, 38d36c9f/5e2009f9),
//! the sum is added to the `fs_root` item, and a (0, 0) result deletes it.
//! An `fs_root` item whose seq is at least the merged seq is left alone:
//! versions never go back in time and replaying a merge folds nothing twice.
//!
//! The merge stops early with REMAIN (the original's ERANGE) after
//! [`MergeLimits::dirty_limit_blocks`] allocations, when the avail list gets
//! low, or when the subtree root would have to split or join; `remain` is the
//! first key not merged. It never writes blocks: the caller writes the
//! cache's dirty blocks and then sends the completion (or, on error, discards
//! them and sends [`error_completion`]).
//!
//! Touches `btree` (`merge_edit_leaf`, `range`), `alloc::ListAlloc` over the
//! request's lists, and `format`.

use std::collections::BTreeMap;

use zerocopy::FromBytes;

use super::{input_roots, MERGE_ALLOC_LOW_BLOCKS, MERGE_DIRTY_LIMIT_BLOCKS, MERGE_WINDOW_BYTES};
use crate::alloc::ListAlloc;
use crate::block::{Error, Result};
use crate::btree::Btree;
use crate::format::btree::{item_bytes, ITEM_FLAG_DELETION};
use crate::format::btree_block::{node_capacity, NodeItem};
use crate::format::items::TotlValue;
use crate::format::key::zone;
use crate::format::log_trees::{
    LogMergeComplete, LogMergeRequest, LOG_MERGE_COMP_FLAG_ERROR, LOG_MERGE_COMP_FLAG_REMAIN,
    LOG_MERGE_REQUEST_FLAG_SUBTREE,
};
use crate::format::superblock::BtreeRoot;
use crate::format::{Key, MAX_VAL_SIZE};

/// When a merge stops early. Tests shrink these to force REMAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeLimits {
    pub dirty_limit_blocks: u64,
    pub alloc_low_blocks: u64,
    pub window_bytes: usize,
}

impl Default for MergeLimits {
    fn default() -> Self {
        MergeLimits {
            dirty_limit_blocks: MERGE_DIRTY_LIMIT_BLOCKS,
            alloc_low_blocks: MERGE_ALLOC_LOW_BLOCKS,
            window_bytes: MERGE_WINDOW_BYTES,
        }
    }
}

/// What the merged inputs say about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The newest version is this value.
    Put { seq: u64, val: Vec<u8> },
    /// The newest version is a tombstone.
    Delete { seq: u64 },
    /// `.totl.` deltas summed (wrapping, two's complement counts).
    Delta { seq: u64, total: u64, count: u64 },
}

impl Merged {
    fn seq(&self) -> u64 {
        match self {
            Merged::Put { seq, .. } | Merged::Delete { seq } | Merged::Delta { seq, .. } => *seq,
        }
    }

    fn need(&self) -> usize {
        match self {
            Merged::Put { val, .. } => item_bytes(val.len()),
            Merged::Delete { .. } => 0,
            Merged::Delta { .. } => item_bytes(std::mem::size_of::<TotlValue>()),
        }
    }
}

/// True for keys whose items are delta items.
pub fn is_delta_key(key: &Key) -> bool {
    key.zone == zone::XATTR_TOTL
}

fn totl(val: &[u8]) -> Result<(u64, u64)> {
    let t = TotlValue::read_from_bytes(val)
        .map_err(|_| Error::corrupt(format!("totl value of {} bytes", val.len())))?;
    Ok((t.total.get(), t.count.get()))
}

fn totl_bytes(total: u64, count: u64) -> Vec<u8> {
    let t = TotlValue {
        total: total.into(),
        count: count.into(),
    };
    zerocopy::IntoBytes::as_bytes(&t).to_vec()
}

/// Resolves every version of one key (any order) into what the merge
/// writes. `versions` is not empty.
pub fn resolve(key: &Key, versions: &[NodeItem]) -> Result<Merged> {
    // Highest seq wins; on a tie the earlier input (in log_trees order) wins.
    let mut win = &versions[0];
    for v in &versions[1..] {
        if v.seq > win.seq {
            win = v;
        }
    }
    if win.flags & ITEM_FLAG_DELETION != 0 {
        return Ok(Merged::Delete { seq: win.seq });
    }
    if !is_delta_key(key) {
        return Ok(Merged::Put {
            seq: win.seq,
            val: win.val.clone(),
        });
    }
    let floor = versions
        .iter()
        .filter(|v| v.flags & ITEM_FLAG_DELETION != 0)
        .map(|v| v.seq)
        .max();
    let (mut total, mut count) = (0u64, 0u64);
    for v in versions {
        if v.flags & ITEM_FLAG_DELETION != 0 || floor.is_some_and(|f| v.seq <= f) {
            continue;
        }
        let (t, c) = totl(&v.val)?;
        total = total.wrapping_add(t);
        count = count.wrapping_add(c);
    }
    Ok(Merged::Delta {
        seq: win.seq,
        total,
        count,
    })
}

/// Applies one merged key to a leaf's items. Returns the change in item
/// bytes, or `None` if the result doesn't fit in `room` more bytes.
fn apply(items: &mut Vec<NodeItem>, key: Key, m: &Merged, room: usize) -> Result<Option<isize>> {
    let found = items.binary_search_by(|it| it.key.cmp(&key));
    if let Ok(i) = found {
        if items[i].seq >= m.seq() {
            // Already as new as the inputs: merged before, or newer.
            return Ok(Some(0));
        }
    }
    let old = found.map_or(0, |i| items[i].bytes()) as isize;
    let new_item = match m {
        Merged::Put { seq, val } => Some(NodeItem {
            key,
            seq: *seq,
            flags: 0,
            val: val.clone(),
        }),
        Merged::Delete { .. } => None,
        Merged::Delta { seq, total, count } => {
            let (ft, fc) = match found {
                Ok(i) => totl(&items[i].val)?,
                Err(_) => (0, 0),
            };
            let (t, c) = (ft.wrapping_add(*total), fc.wrapping_add(*count));
            (t != 0 || c != 0).then(|| NodeItem {
                key,
                seq: *seq,
                flags: 0,
                val: totl_bytes(t, c),
            })
        }
    };
    let delta = new_item.as_ref().map_or(0, |it| it.bytes() as isize) - old;
    if delta > room as isize {
        return Ok(None);
    }
    match (new_item, found) {
        (Some(it), Ok(i)) => items[i] = it,
        (Some(it), Err(i)) => items.insert(i, it),
        (None, Ok(i)) => {
            items.remove(i);
        }
        (None, Err(_)) => {}
    }
    Ok(Some(delta))
}

/// Reads the next window of `[pos, end]` from every input: the merged
/// result per key, sorted, and the last key the window covers.
async fn read_window(
    btree: &Btree,
    inputs: &[BtreeRoot],
    pos: &Key,
    end: &Key,
    window_bytes: usize,
) -> Result<(Vec<(Key, Merged)>, Key)> {
    let max_item_bytes = item_bytes(MAX_VAL_SIZE);
    let per_input = (window_bytes / max_item_bytes / inputs.len().max(1)).max(1);
    let mut win_end = *end;
    let mut versions: BTreeMap<Key, Vec<NodeItem>> = BTreeMap::new();
    for root in inputs {
        let batch = btree.range(root, pos, end, per_input).await?;
        if let Some(next) = batch.next {
            // This input has more at `next`: nothing from `next` on is
            // complete in this window.
            win_end = win_end.min(next.dec());
        }
        for it in batch.items {
            versions.entry(it.key).or_default().push(it);
        }
    }
    let mut out = Vec::new();
    for (k, vs) in versions.range(..=win_end) {
        out.push((*k, resolve(k, vs)?));
    }
    Ok((out, win_end))
}

/// Why a merge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Done,
    Remain(Key),
}

/// Merges the request's inputs into its subtree with the default limits.
pub async fn merge_request(btree: &Btree, req: &LogMergeRequest) -> Result<LogMergeComplete> {
    merge_request_with(btree, req, &MergeLimits::default()).await
}

/// Merges the request's inputs into its subtree. The returned completion
/// carries the request's allocators as the merge left them, the new
/// subtree root and, with REMAIN, the first key not merged. Dirty blocks
/// are left in the cache for the caller to write.
pub async fn merge_request_with(
    btree: &Btree,
    req: &LogMergeRequest,
    limits: &MergeLimits,
) -> Result<LogMergeComplete> {
    let start = Key::from_disk(&req.start)?;
    let end = Key::from_disk(&req.end)?;
    if start > end {
        return Err(Error::Invalid(format!("merge range {start}..{end}")));
    }
    let subtree = req.flags.get() & LOG_MERGE_REQUEST_FLAG_SUBTREE != 0;
    let inputs = input_roots(btree, &req.logs_root, req.input_seq.get()).await?;
    let mut alloc = ListAlloc::new(btree.cache().clone(), req.meta_avail, req.meta_freed);
    let mut root = req.root;
    let avail_before = alloc.avail.total_nr.get();

    let stop = 'merge: {
        let mut pos = start;
        loop {
            let (ops, win_end) =
                read_window(btree, &inputs, &pos, &end, limits.window_bytes).await?;
            let mut i = 0;
            while i < ops.len() {
                let used = avail_before.saturating_sub(alloc.avail.total_nr.get());
                if used >= limits.dirty_limit_blocks
                    || alloc.avail.total_nr.get() < limits.alloc_low_blocks
                {
                    break 'merge Stop::Remain(ops[i].0);
                }
                let first = ops[i].0;
                let need = ops[i].1.need();
                let rest = &ops[i..];
                let applied = btree
                    .merge_edit_leaf(
                        &mut root,
                        &mut alloc,
                        &first,
                        need,
                        subtree,
                        |items, upper| {
                            let cap = node_capacity(0);
                            let mut total: usize = items.iter().map(NodeItem::bytes).sum();
                            let mut n = 0;
                            for (k, m) in rest {
                                if *k > upper {
                                    break;
                                }
                                match apply(items, *k, m, cap - total)? {
                                    Some(d) => total = (total as isize + d) as usize,
                                    None => break,
                                }
                                n += 1;
                            }
                            Ok(n)
                        },
                    )
                    .await?;
                match applied {
                    None => break 'merge Stop::Remain(first),
                    Some(0) => {
                        return Err(Error::Io(format!("log merge made no progress at {first}")))
                    }
                    Some(n) => i += n,
                }
            }
            if win_end >= end {
                break Stop::Done;
            }
            pos = win_end.inc();
        }
    };

    let mut comp = LogMergeComplete {
        meta_avail: alloc.avail,
        meta_freed: alloc.freed,
        root,
        start: req.start,
        end: req.end,
        remain: Key::MIN.to_disk(),
        rid: req.rid,
        seq: req.seq,
        flags: 0.into(),
    };
    if let Stop::Remain(k) = stop {
        comp.remain = k.to_disk();
        comp.flags = LOG_MERGE_COMP_FLAG_REMAIN.into();
    }
    Ok(comp)
}

/// The completion a mount sends when its merge failed: the server puts the
/// range back and reclaims the request's original allocators.
pub fn error_completion(req: &LogMergeRequest) -> LogMergeComplete {
    LogMergeComplete {
        meta_avail: Default::default(),
        meta_freed: Default::default(),
        root: req.root,
        start: req.start,
        end: req.end,
        remain: Key::MIN.to_disk(),
        rid: req.rid,
        seq: req.seq,
        flags: LOG_MERGE_COMP_FLAG_ERROR.into(),
    }
}
