//! The server's half of a log merge (reference §2.3, §2.4): deciding to
//! finalize, starting a merge, handing out requests, recording completions,
//! splicing them into `fs_root`, and freeing the merged input trees.
//!
//! Every function edits the server's dirty super (`fs_root`, `logs_root`,
//! `log_merge`, `inode_count`) inside one server commit that the caller
//! holds; the caller serializes them (the original's `logs_mutex`) and
//! commits afterwards. Seqs come from the caller's `next_seq()`.
//!
//! How the handlers use it:
//! * `GET_LOG_TREES`: [`should_finalize`] on the caller's tree; if true the
//!   caller sends SYNC_LOG_TREES to the other mounts, [`finalize`]s the tree
//!   (plus srch rotation, allocator return, a new tree at nr+1), waits for
//!   [`active_trees`] to reach 0, then calls [`start_merge`].
//! * `GET_LOG_MERGE`: [`get_request`] (it also splices when due); `None`
//!   means no work (ENOENT to the mount).
//! * `COMMIT_LOG_MERGE`: [`commit_completion`] (replay-safe).
//! * A mount that is gone: [`cancel_requests`].
//! * Background: [`free_merged_trees`] once per commit until it returns
//!   `false`.
//!
//! Guarantees:
//! * Range items never overlap and, with outstanding requests and
//!   completions, cover exactly the key space not yet merged in this merge.
//!   The next range is chosen by decoding *every* range item and comparing
//!   real start keys (range keys lose the zone, e182914e).
//! * Requests handed out between two splices cover disjoint `fs_root`
//!   parents: `next_range_key` moves past each request's parent, and
//!   `fs_root` changes only while splicing, when no request is outstanding.
//! * Inputs are exactly the finalized trees with `finalize_seq < status.seq`;
//!   only they are moved to FREEING and deleted when the merge ends.
//! * Allocator lists of requests and completions are given back through
//!   [`ServerAllocs::reclaim_list`] exactly once (a spliced completion's
//!   lists are zeroed in its item before anything else can see it).
//!
//! Touches `btree` (+ `btree::merge_into`) and `format`; allocation only
//! through [`ServerAllocs`].

use super::{
    all_log_trees, complete_key, decode, encode, freeing_key, is_input, range_key, request_key,
    status_key, zone_items, FREEING_BUDGET_BLOCKS, MERGE_FILL_BLOCKS, SPLICE_BATCH,
};
use crate::block::{Error, Result};
use crate::btree::{BoxFuture, Btree, MetaAllocator};
use crate::format::key::zone;
use crate::format::log_trees::{
    LogMergeComplete, LogMergeFreeing, LogMergeRange, LogMergeRequest, LogMergeStatus, LogTrees,
    LOG_MERGE_COMP_FLAG_ERROR, LOG_MERGE_COMP_FLAG_REMAIN, LOG_MERGE_REQUEST_FLAG_SUBTREE,
    LOG_TREES_FLAG_FINALIZED,
};
use crate::format::superblock::{AllocListHead, SuperBlock, ALLOC_FLAG_LOW};
use crate::format::Key;

/// What the merge functions need from the server's allocators.
pub trait ServerAllocs: Send {
    /// The allocator the server COWs its trees with. Frees must not be
    /// reused before the current commit is durable.
    fn meta(&mut self) -> &mut dyn MetaAllocator;
    /// A new list of `count` blocks for a merge request.
    fn fill_list(&mut self, count: u64) -> BoxFuture<'_, Result<AllocListHead>>;
    /// Takes back a request's or completion's list: its entries and its own
    /// blocks become free, but not reusable before this commit is durable.
    fn reclaim_list(&mut self, head: AllocListHead) -> BoxFuture<'_, Result<()>>;
}

/// A seq source: the server's `next_seq()`.
pub type NextSeq<'a> = &'a mut (dyn FnMut() -> u64 + Send);

/// A mount's own tree qualifies for finalization: its item root is taller
/// than 2 or its meta_avail is low.
pub fn log_tree_qualifies(lt: &LogTrees) -> bool {
    lt.item_root.height > 2 || lt.meta_avail.flags.get() & ALLOC_FLAG_LOW != 0
}

/// The running merge's status, if any.
pub async fn merge_status(btree: &Btree, sup: &SuperBlock) -> Result<Option<LogMergeStatus>> {
    btree
        .lookup(&sup.log_merge, &status_key())
        .await?
        .map(|it| decode::<LogMergeStatus>(&it))
        .transpose()
}

/// Whether `GET_LOG_TREES` should finalize the caller's tree `own`: it
/// qualifies, or a finalized tree exists and no merge is running.
pub async fn should_finalize(btree: &Btree, sup: &SuperBlock, own: &LogTrees) -> Result<bool> {
    if own.flags.get() & LOG_TREES_FLAG_FINALIZED != 0 {
        return Ok(false);
    }
    if log_tree_qualifies(own) {
        return Ok(true);
    }
    if merge_status(btree, sup).await?.is_some() {
        return Ok(false);
    }
    Ok(all_log_trees(btree, &sup.logs_root)
        .await?
        .iter()
        .any(|(_, lt)| lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0))
}

/// Marks a tree finalized with `finalize_seq` (from `next_seq()`).
pub fn finalize(lt: &mut LogTrees, finalize_seq: u64) {
    lt.flags = (lt.flags.get() | LOG_TREES_FLAG_FINALIZED).into();
    lt.finalize_seq = finalize_seq.into();
}

/// Trees that hold items but aren't finalized: a merge can't start while
/// any exist (they might hold older versions of merged keys, trap 9).
pub async fn active_trees(btree: &Btree, sup: &SuperBlock) -> Result<usize> {
    Ok(all_log_trees(btree, &sup.logs_root)
        .await?
        .iter()
        .filter(|(_, lt)| {
            lt.flags.get() & LOG_TREES_FLAG_FINALIZED == 0 && !lt.item_root.is_empty()
        })
        .count())
}

/// What [`start_merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMerge {
    Started { seq: u64 },
    AlreadyRunning,
    NothingFinalized,
    ActiveTrees(usize),
}

/// Starts a merge if none runs, some tree is finalized and no tree is
/// active: inserts the status item and one range covering every key.
pub async fn start_merge(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    next_seq: NextSeq<'_>,
) -> Result<StartMerge> {
    if merge_status(btree, sup).await?.is_some() {
        return Ok(StartMerge::AlreadyRunning);
    }
    let trees = all_log_trees(btree, &sup.logs_root).await?;
    if !trees
        .iter()
        .any(|(_, lt)| lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0)
    {
        return Ok(StartMerge::NothingFinalized);
    }
    let active = active_trees(btree, sup).await?;
    if active > 0 {
        return Ok(StartMerge::ActiveTrees(active));
    }
    let seq = next_seq();
    let status = LogMergeStatus {
        next_range_key: Key::MIN.to_disk(),
        nr_requests: 0.into(),
        nr_complete: 0.into(),
        seq: seq.into(),
    };
    let rng = LogMergeRange {
        start: Key::MIN.to_disk(),
        end: Key::MAX.to_disk(),
    };
    btree
        .insert(
            &mut sup.log_merge,
            allocs.meta(),
            &status_key(),
            &encode(&status),
        )
        .await?;
    insert_range(btree, allocs, sup, &rng).await?;
    Ok(StartMerge::Started { seq })
}

async fn insert_range(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    rng: &LogMergeRange,
) -> Result<()> {
    let start = Key::from_disk(&rng.start)?;
    btree
        .insert(
            &mut sup.log_merge,
            allocs.meta(),
            &range_key(&start),
            &encode(rng),
        )
        .await
        .map_err(|e| match e {
            Error::Exists => Error::Io(format!(
                "log merge range key {} collides with another range",
                range_key(&start)
            )),
            e => e,
        })
}

async fn delete_range(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    start: &Key,
) -> Result<()> {
    btree
        .delete(&mut sup.log_merge, allocs.meta(), &range_key(start))
        .await
        .map(|_| ())
}

async fn update_status(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    st: &LogMergeStatus,
) -> Result<()> {
    btree
        .update(
            &mut sup.log_merge,
            allocs.meta(),
            &status_key(),
            &encode(st),
        )
        .await
}

/// The range with the smallest real start >= `from`, found by decoding
/// every range item (their keys don't sort like their starts).
async fn next_range(btree: &Btree, sup: &SuperBlock, from: &Key) -> Result<Option<(Key, Key)>> {
    let mut best: Option<(Key, Key)> = None;
    for it in zone_items(btree, &sup.log_merge, zone::LOG_MERGE_RANGE).await? {
        let rng = decode::<LogMergeRange>(&it)?;
        let (s, e) = (Key::from_disk(&rng.start)?, Key::from_disk(&rng.end)?);
        if range_key(&s) != it.key || s > e {
            return Err(Error::corrupt(format!(
                "range item {} for {s}..{e}",
                it.key
            )));
        }
        if s >= *from && best.is_none_or(|(b, _)| s < b) {
            best = Some((s, e));
        }
    }
    Ok(best)
}

/// The smallest key in `[start, end]` of any input tree.
async fn next_least_log_item(
    btree: &Btree,
    sup: &SuperBlock,
    input_seq: u64,
    start: &Key,
    end: &Key,
) -> Result<Option<Key>> {
    let mut least: Option<Key> = None;
    for (_, lt) in all_log_trees(btree, &sup.logs_root).await? {
        if !is_input(&lt, input_seq) || lt.item_root.is_empty() {
            continue;
        }
        if let Some(it) = btree.next(&lt.item_root, start).await? {
            if it.key <= *end && least.is_none_or(|l| it.key < l) {
                least = Some(it.key);
            }
        }
    }
    Ok(least)
}

/// Hands mount `rid` the next piece of work, splicing completions first
/// when a batch is ready or the ranges ran out. `None`: nothing to do now.
pub async fn get_request(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    rid: u64,
    next_seq: NextSeq<'_>,
) -> Result<Option<LogMergeRequest>> {
    'restart: loop {
        let Some(mut st) = merge_status(btree, sup).await? else {
            return Ok(None);
        };
        let (rng_start, rng_end, next_key) = loop {
            let from = Key::from_disk(&st.next_range_key)?;
            let rng = next_range(btree, sup, &from).await?;
            let no_next = rng.is_none();
            let no_ranges = no_next && from == Key::MIN;
            if st.nr_requests.get() == 0 && (no_next || st.nr_complete.get() >= SPLICE_BATCH) {
                splice(btree, allocs, sup, &mut st, no_ranges, next_seq).await?;
                continue 'restart;
            }
            let Some((s, e)) = rng else {
                return Ok(None);
            };
            if st.nr_requests.get() + st.nr_complete.get() >= SPLICE_BATCH {
                return Ok(None);
            }
            match next_least_log_item(btree, sup, st.seq.get(), &s, &e).await? {
                Some(k) => break (s, e, k),
                // Nothing logged in this range: it is merged.
                None => delete_range(btree, allocs, sup, &s).await?,
            }
        };

        let par = btree.get_parent(&sup.fs_root, &next_key).await?;
        let req_end = rng_end.min(par.end);
        delete_range(btree, allocs, sup, &rng_start).await?;
        if rng_end > req_end {
            let tail = LogMergeRange {
                start: req_end.inc().to_disk(),
                end: rng_end.to_disk(),
            };
            insert_range(btree, allocs, sup, &tail).await?;
        }
        let meta_avail = allocs.fill_list(MERGE_FILL_BLOCKS).await?;
        let seq = next_seq();
        let mut flags = 0;
        if par.subtree {
            flags |= LOG_MERGE_REQUEST_FLAG_SUBTREE;
        }
        let req = LogMergeRequest {
            meta_avail,
            meta_freed: AllocListHead::default(),
            logs_root: sup.logs_root,
            root: par.root,
            start: next_key.to_disk(),
            end: req_end.to_disk(),
            input_seq: st.seq,
            rid: rid.into(),
            seq: seq.into(),
            flags: flags.into(),
        };
        btree
            .insert(
                &mut sup.log_merge,
                allocs.meta(),
                &request_key(rid, seq),
                &encode(&req),
            )
            .await?;
        // Later requests start beyond this parent.
        st.next_range_key = if par.end == Key::MAX {
            Key::MAX.to_disk()
        } else {
            par.end.inc().to_disk()
        };
        st.nr_requests = (st.nr_requests.get() + 1).into();
        update_status(btree, allocs, sup, &st).await?;
        return Ok(Some(req));
    }
}

/// What [`commit_completion`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored for splicing.
    Stored,
    /// The mount reported an error: its range is back, its lists reclaimed.
    Failed,
    /// No such request: a resent completion already processed.
    Unknown,
}

/// Records a mount's completion of its request `comp.seq`.
pub async fn commit_completion(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    rid: u64,
    comp: &LogMergeComplete,
) -> Result<CommitOutcome> {
    let Some(mut st) = merge_status(btree, sup).await? else {
        return Ok(CommitOutcome::Unknown);
    };
    let key = request_key(rid, comp.seq.get());
    let Some(item) = btree.lookup(&sup.log_merge, &key).await? else {
        return Ok(CommitOutcome::Unknown);
    };
    let orig = decode::<LogMergeRequest>(&item)?;
    if orig.rid != comp.rid || orig.seq != comp.seq {
        return Ok(CommitOutcome::Unknown);
    }
    btree
        .delete(&mut sup.log_merge, allocs.meta(), &key)
        .await?;
    let outcome = if comp.flags.get() & LOG_MERGE_COMP_FLAG_ERROR != 0 {
        restore_request(btree, allocs, sup, &orig).await?;
        CommitOutcome::Failed
    } else {
        if comp.start != orig.start || comp.end != orig.end {
            return Err(Error::Invalid(format!(
                "completion {} range differs from its request",
                comp.seq.get()
            )));
        }
        btree
            .insert(
                &mut sup.log_merge,
                allocs.meta(),
                &complete_key(comp.seq.get()),
                &encode(comp),
            )
            .await?;
        st.nr_complete = (st.nr_complete.get() + 1).into();
        CommitOutcome::Stored
    };
    st.nr_requests = (st.nr_requests.get().saturating_sub(1)).into();
    update_status(btree, allocs, sup, &st).await?;
    Ok(outcome)
}

async fn restore_request(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    orig: &LogMergeRequest,
) -> Result<()> {
    let rng = LogMergeRange {
        start: orig.start,
        end: orig.end,
    };
    insert_range(btree, allocs, sup, &rng).await?;
    allocs.reclaim_list(orig.meta_avail).await?;
    allocs.reclaim_list(orig.meta_freed).await
}

/// Cancels every outstanding request of `rid` (a mount that is gone): its
/// ranges go back and its lists are reclaimed. Returns how many.
pub async fn cancel_requests(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    rid: u64,
) -> Result<usize> {
    let Some(mut st) = merge_status(btree, sup).await? else {
        return Ok(0);
    };
    let mut n = 0;
    for it in zone_items(btree, &sup.log_merge, zone::LOG_MERGE_REQUEST).await? {
        if it.key.first != rid {
            continue;
        }
        let orig = decode::<LogMergeRequest>(&it)?;
        btree
            .delete(&mut sup.log_merge, allocs.meta(), &it.key)
            .await?;
        restore_request(btree, allocs, sup, &orig).await?;
        n += 1;
    }
    if n > 0 {
        st.nr_requests = st.nr_requests.get().saturating_sub(n as u64).into();
        // The restored ranges may lie before next_range_key.
        update_status(btree, allocs, sup, &st).await?;
    }
    Ok(n)
}

/// Splices every completion into `fs_root` (all parents first, then the
/// rebalancing), reinserts remaining ranges, and when no ranges remain
/// ends the merge: inputs move to FREEING items, their log_trees items go.
/// Runs whole inside the caller's commit.
async fn splice(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    st: &mut LogMergeStatus,
    mut no_ranges: bool,
    next_seq: NextSeq<'_>,
) -> Result<()> {
    if st.nr_requests.get() != 0 {
        return Err(Error::Invalid(
            "splicing while merge requests are outstanding".into(),
        ));
    }
    let comps: Vec<LogMergeComplete> = zone_items(btree, &sup.log_merge, zone::LOG_MERGE_COMPLETE)
        .await?
        .iter()
        .map(decode::<LogMergeComplete>)
        .collect::<Result<_>>()?;

    for comp in &comps {
        if comp.meta_avail.ref_.is_null() && comp.meta_freed.ref_.is_null() {
            continue;
        }
        let start = Key::from_disk(&comp.start)?;
        btree
            .set_parent(&mut sup.fs_root, allocs.meta(), &start, &comp.root)
            .await?;
        allocs.reclaim_list(comp.meta_avail).await?;
        allocs.reclaim_list(comp.meta_freed).await?;
        let mut cleared = *comp;
        cleared.meta_avail = AllocListHead::default();
        cleared.meta_freed = AllocListHead::default();
        btree
            .update(
                &mut sup.log_merge,
                allocs.meta(),
                &complete_key(comp.seq.get()),
                &encode(&cleared),
            )
            .await?;
    }

    for comp in &comps {
        // A spliced subtree root may have stopped short of a split or join,
        // or kept its last leaf emptied by deletions: the ordinary descent
        // puts that path back within the tree's rules.
        let start = Key::from_disk(&comp.start)?;
        btree
            .rebalance(&mut sup.fs_root, allocs.meta(), &start)
            .await?;
        if comp.flags.get() & LOG_MERGE_COMP_FLAG_REMAIN != 0 {
            let remain = Key::from_disk(&comp.remain)?;
            btree
                .rebalance(&mut sup.fs_root, allocs.meta(), &remain)
                .await?;
            let rng = LogMergeRange {
                start: comp.remain,
                end: comp.end,
            };
            insert_range(btree, allocs, sup, &rng).await?;
            no_ranges = false;
        }
        btree
            .delete(
                &mut sup.log_merge,
                allocs.meta(),
                &complete_key(comp.seq.get()),
            )
            .await?;
    }

    if !no_ranges {
        st.next_range_key = Key::MIN.to_disk();
        st.nr_complete = 0.into();
        return update_status(btree, allocs, sup, st).await;
    }

    // Every range is merged: the inputs are redundant.
    for (key, lt) in all_log_trees(btree, &sup.logs_root).await? {
        if !is_input(&lt, st.seq.get()) {
            continue;
        }
        let fseq = next_seq();
        let fr = LogMergeFreeing {
            root: lt.item_root,
            key: Key::MIN.to_disk(),
            seq: fseq.into(),
        };
        btree
            .insert(
                &mut sup.log_merge,
                allocs.meta(),
                &freeing_key(fseq),
                &encode(&fr),
            )
            .await?;
        if !lt.bloom_ref.is_null() {
            let b = lt.bloom_ref.blkno.get();
            allocs.meta().free_meta(b).await?;
            btree.cache().forget(b);
        }
        btree
            .delete(&mut sup.logs_root, allocs.meta(), &key)
            .await?;
        sup.inode_count = sup
            .inode_count
            .get()
            .wrapping_add(lt.inode_count_delta.get())
            .into();
    }
    btree
        .delete(&mut sup.log_merge, allocs.meta(), &status_key())
        .await?;
    Ok(())
}

/// Frees up to about `budget` blocks of the first FREEING tree. Returns
/// `true` while freeing work remains.
pub async fn free_merged_trees(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
    budget: usize,
) -> Result<bool> {
    let items = btree
        .range(&sup.log_merge, &freeing_key(0), &freeing_key(u64::MAX), 1)
        .await?;
    let Some(it) = items.items.first() else {
        return Ok(false);
    };
    let mut fr = decode::<LogMergeFreeing>(it)?;
    let mut key = Key::from_disk(&fr.key)?;
    let done = btree
        .free_blocks(&fr.root, allocs.meta(), &mut key, budget.max(1))
        .await?;
    if done {
        btree
            .delete(&mut sup.log_merge, allocs.meta(), &it.key)
            .await?;
    } else {
        fr.key = key.to_disk();
        btree
            .update(&mut sup.log_merge, allocs.meta(), &it.key, &encode(&fr))
            .await?;
    }
    Ok(!done || items.next.is_some())
}

/// [`free_merged_trees`] with the default per-commit budget.
pub async fn free_merged_trees_default(
    btree: &Btree,
    allocs: &mut dyn ServerAllocs,
    sup: &mut SuperBlock,
) -> Result<bool> {
    free_merged_trees(btree, allocs, sup, FREEING_BUDGET_BLOCKS).await
}
