//! The server's half of srch (reference §1.9, §5.3 cmds 9/10, §5.4): log
//! rotation, handing out compactions, committing their results and
//! cancelling those of a mount that is gone.
//!
//! State lives in `srch_root`: LOG items (rotated log files), BLOCKS items
//! (sorted files, keyed by size so tiers are neighbours), BUSY items (a
//! compaction a mount works on, `rid/id`) and PENDING items (a compaction
//! waiting for a mount: new work saved part way, the delete phase, or a
//! compaction whose mount went away). A compaction's id is the blkno of
//! its first input file.
//!
//! Guarantees:
//! * A log file moves into `srch_root` in the same server commit that
//!   clears it from its log tree: the caller writes the log_trees item back
//!   with the zeroed file before committing (trap 22, 35bcad91), so no
//!   committed state ever names the file twice or not at all.
//! * Input files stay searchable (their LOG/BLOCKS items stay) until the
//!   commit that inserts the output and deletes them, in one server commit;
//!   then the compaction turns into its delete phase, whose item keeps
//!   the inputs' blocks referenced until the mount has freed them.
//! * No file is the input of two compactions: files named by a BUSY or
//!   PENDING item are skipped when new work is chosen, and PENDING work is
//!   always handed out before new work.
//! * A compaction's allocator lists are filled from the extent trees and
//!   given back through the server transaction's freed list (they name
//!   blocks the durable super may still reference), never both.
//! * Every handler is safe to replay: a rid asking again gets its BUSY
//!   compaction back; a commit whose BUSY item is gone changes nothing.
//!
//! Touches `btree`, `alloc` (the server transaction's [`ListAlloc`]),
//! `server::alloc` (list fills), `format`.

use std::collections::BTreeSet;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::{blocks_key, busy_key, log_key, pending_key, tier, COMPACT_NR};
use crate::alloc::{list_blknos, ListAlloc};
use crate::block::{Error, Result};
use crate::btree::Btree;
use crate::format::btree_block::NodeItem;
use crate::format::key::{srch_type, zone};
use crate::format::srch::{
    SrchCompact, SrchFile, SRCH_COMPACT_FLAG_DELETE, SRCH_COMPACT_FLAG_DONE,
    SRCH_COMPACT_FLAG_ERROR, SRCH_COMPACT_FLAG_LOG, SRCH_COMPACT_FLAG_SORTED,
};
use crate::format::superblock::{AllocListHead, SuperBlock};
use crate::format::Key;
use crate::server::alloc::{fill_list, meta_extent_total};

/// Items of one srch type, in key order.
async fn type_items(btree: &Btree, sb: &SuperBlock, ty: u8) -> Result<Vec<NodeItem>> {
    let first = Key::new(zone::SRCH, 0, ty, 0, 0, 0);
    let last = Key::new(zone::SRCH, 0, ty, u64::MAX, u64::MAX, u8::MAX);
    let mut out = Vec::new();
    let mut key = first;
    loop {
        let batch = btree.range(&sb.srch_root, &key, &last, 256).await?;
        out.extend(batch.items);
        match batch.next {
            Some(k) => key = k,
            None => return Ok(out),
        }
    }
}

pub fn decode_file(it: &NodeItem) -> Result<SrchFile> {
    SrchFile::read_from_bytes(&it.val).map_err(|_| {
        Error::corrupt(format!(
            "srch file item {} with a {} byte value",
            it.key,
            it.val.len()
        ))
    })
}

pub fn decode_compact(it: &NodeItem) -> Result<SrchCompact> {
    let sc = SrchCompact::read_from_bytes(&it.val).map_err(|_| {
        Error::corrupt(format!(
            "srch compact item {} with a {} byte value",
            it.key,
            it.val.len()
        ))
    })?;
    if sc.nr as usize > COMPACT_NR {
        return Err(Error::corrupt(format!(
            "srch compact with {} inputs",
            sc.nr
        )));
    }
    Ok(sc)
}

/// Every rotated log and sorted file of `sb` as (is_log, file).
pub async fn all_files(btree: &Btree, sb: &SuperBlock) -> Result<Vec<(bool, SrchFile)>> {
    let mut out = Vec::new();
    for (ty, is_log) in [(srch_type::LOG, true), (srch_type::BLOCKS, false)] {
        for it in type_items(btree, sb, ty).await? {
            out.push((is_log, decode_file(&it)?));
        }
    }
    Ok(out)
}

/// Moves a mount's log file `f` into `srch_root` when it has reached
/// `rotate_blocks` blocks, or whenever it has any when `force` (finalize,
/// reclaim). Zeroes `f` when it moved; the caller stores `f` back in its
/// log_trees item in the same commit.
pub async fn rotate_log(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    f: &mut SrchFile,
    force: bool,
    rotate_blocks: u64,
) -> Result<bool> {
    if f.ref_.is_null() || (!force && f.blocks.get() < rotate_blocks) {
        return Ok(false);
    }
    let key = log_key(f.ref_.blkno.get());
    match btree
        .insert(&mut sb.srch_root, alloc, &key, f.as_bytes())
        .await
    {
        Ok(()) => {}
        Err(Error::Exists) => {
            // A log file's first blkno is unique while it lives: the same
            // file rotated again would be searched twice.
            return Err(Error::corrupt(format!(
                "srch log file blkno {} rotated twice",
                f.ref_.blkno.get()
            )));
        }
        Err(e) => return Err(e),
    }
    *f = SrchFile::new_zeroed();
    Ok(true)
}

fn input_blocks(sc: &SrchCompact) -> u64 {
    sc.inputs[..sc.nr as usize]
        .iter()
        .map(|i| i.sfl.blocks.get())
        .sum()
}

/// Blocks a compaction's avail list should hold before it is handed out:
/// the delete phase needs only blocks for its freed list; merging may
/// write as many blocks as the inputs (twice that for slack: a sorted
/// encoding of log entries is rarely larger) plus parents and list blocks.
fn avail_wanted(sc: &SrchCompact) -> u64 {
    let inb = input_blocks(sc);
    if sc.flags & SRCH_COMPACT_FLAG_DELETE != 0 {
        inb / 4096 + 8
    } else {
        2 * inb + inb / 4096 + 32
    }
}

/// Tops up the compaction's avail list from the extent trees, keeping
/// `keep` blocks for the server's own needs (ENOSPC otherwise).
async fn top_up(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    sc: &mut SrchCompact,
    keep: u64,
) -> Result<()> {
    let want = avail_wanted(sc);
    let have = sc.meta_avail.total_nr.get();
    if have >= want {
        return Ok(());
    }
    let need = want - have;
    if meta_extent_total(&sb.meta_alloc).saturating_sub(keep) < need {
        return Err(Error::NoSpace(format!(
            "no {need} spare metadata blocks for a srch compaction"
        )));
    }
    let moved = fill_list(btree, alloc, &mut sb.meta_alloc, &mut sc.meta_avail, need).await?;
    if moved != need {
        return Err(Error::NoSpace(format!(
            "srch compaction list filled with {moved} of {need} blocks"
        )));
    }
    Ok(())
}

/// SRCH_GET_COMPACT for `rid`: its outstanding compaction, else the first
/// PENDING one, else new work (4 log files, or 4 sorted files of one tier),
/// recorded as BUSY. `None`: nothing to do.
pub async fn get_compact(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    rid: u64,
    keep: u64,
) -> Result<Option<SrchCompact>> {
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for it in type_items(btree, sb, srch_type::BUSY).await? {
        let sc = decode_compact(&it)?;
        if it.key.second == rid {
            return Ok(Some(sc));
        }
        taken.extend(
            sc.inputs[..sc.nr as usize]
                .iter()
                .map(|i| i.sfl.ref_.blkno.get()),
        );
    }
    let pending = type_items(btree, sb, srch_type::PENDING).await?;
    if let Some(it) = pending.first() {
        let mut sc = decode_compact(it)?;
        top_up(btree, alloc, sb, &mut sc, keep).await?;
        btree.delete(&mut sb.srch_root, alloc, &it.key).await?;
        btree
            .insert(
                &mut sb.srch_root,
                alloc,
                &busy_key(rid, sc.id.get()),
                sc.as_bytes(),
            )
            .await?;
        return Ok(Some(sc));
    }
    let mut chosen: Vec<SrchFile> = Vec::new();
    let mut flags = SRCH_COMPACT_FLAG_LOG;
    for it in type_items(btree, sb, srch_type::LOG).await? {
        let f = decode_file(&it)?;
        if !taken.contains(&f.ref_.blkno.get()) {
            chosen.push(f);
            if chosen.len() == COMPACT_NR {
                break;
            }
        }
    }
    if chosen.len() < COMPACT_NR {
        chosen.clear();
        flags = SRCH_COMPACT_FLAG_SORTED;
        let mut cur_tier = None;
        for it in type_items(btree, sb, srch_type::BLOCKS).await? {
            let f = decode_file(&it)?;
            if taken.contains(&f.ref_.blkno.get()) {
                continue;
            }
            let t = tier(f.blocks.get());
            if cur_tier != Some(t) {
                cur_tier = Some(t);
                chosen.clear();
            }
            chosen.push(f);
            if chosen.len() == COMPACT_NR {
                break;
            }
        }
    }
    if chosen.len() < COMPACT_NR {
        return Ok(None);
    }
    let mut sc = SrchCompact::new_zeroed();
    sc.nr = COMPACT_NR as u8;
    sc.flags = flags;
    sc.id = chosen[0].ref_.blkno;
    for (inp, f) in sc.inputs.iter_mut().zip(&chosen) {
        inp.sfl = *f;
    }
    top_up(btree, alloc, sb, &mut sc, keep).await?;
    btree
        .insert(
            &mut sb.srch_root,
            alloc,
            &busy_key(rid, sc.id.get()),
            sc.as_bytes(),
        )
        .await?;
    Ok(Some(sc))
}

/// Gives a finished compaction's lists back through the server
/// transaction's freed list.
async fn reclaim_list(btree: &Btree, alloc: &mut ListAlloc, head: &AllocListHead) -> Result<()> {
    if head.ref_.is_null() {
        if head.total_nr.get() != 0 {
            return Err(Error::corrupt("srch compaction list without blocks"));
        }
        return Ok(());
    }
    let cache = btree.cache().clone();
    let (entries, blocks) = list_blknos(&cache, head).await?;
    for b in entries.into_iter().chain(blocks) {
        alloc.free(b).await?;
        cache.forget(b);
    }
    Ok(())
}

/// What [`commit_compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// No BUSY item of this rid and id: a replay, nothing changed.
    Unknown,
    /// Back to PENDING as it was handed out (the mount reported an error).
    Failed,
    /// Progress saved as PENDING.
    Saved,
    /// Output swapped in for the inputs; the delete phase is PENDING.
    Swapped,
    /// Inputs freed: the compaction is over.
    Finished,
}

/// SRCH_COMMIT_COMPACT from `rid` with its result `res`.
pub async fn commit_compact(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    rid: u64,
    res: &SrchCompact,
) -> Result<Committed> {
    let bkey = busy_key(rid, res.id.get());
    let Some(it) = btree.lookup(&sb.srch_root, &bkey).await? else {
        return Ok(Committed::Unknown);
    };
    let busy = decode_compact(&it)?;
    let n = busy.nr as usize;
    let phase =
        |f: u8| f & (SRCH_COMPACT_FLAG_LOG | SRCH_COMPACT_FLAG_SORTED | SRCH_COMPACT_FLAG_DELETE);
    if res.nr != busy.nr
        || phase(res.flags) != phase(busy.flags)
        || res.inputs[..n]
            .iter()
            .zip(&busy.inputs[..n])
            .any(|(a, b)| a.sfl != b.sfl)
    {
        return Err(Error::Invalid(format!(
            "srch compaction {} result does not match its work",
            res.id.get()
        )));
    }
    let (pending, outcome) = if res.flags & SRCH_COMPACT_FLAG_ERROR != 0 {
        (Some(busy), Committed::Failed)
    } else if res.flags & SRCH_COMPACT_FLAG_DONE == 0 {
        (Some(*res), Committed::Saved)
    } else if res.flags & SRCH_COMPACT_FLAG_DELETE == 0 {
        commit_files(btree, alloc, sb, res).await?;
        let mut del = *res;
        for inp in del.inputs.iter_mut() {
            inp.blk = 0.into();
            inp.pos = 0.into();
        }
        del.flags = SRCH_COMPACT_FLAG_DELETE;
        (Some(del), Committed::Swapped)
    } else {
        reclaim_list(btree, alloc, &res.meta_avail).await?;
        reclaim_list(btree, alloc, &res.meta_freed).await?;
        (None, Committed::Finished)
    };
    btree.delete(&mut sb.srch_root, alloc, &bkey).await?;
    if let Some(p) = pending {
        btree
            .insert(
                &mut sb.srch_root,
                alloc,
                &pending_key(p.id.get()),
                p.as_bytes(),
            )
            .await?;
    }
    Ok(outcome)
}

/// Replaces a finished compaction's input file items with its output.
async fn commit_files(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    res: &SrchCompact,
) -> Result<()> {
    let is_log = res.flags & SRCH_COMPACT_FLAG_LOG != 0;
    for inp in &res.inputs[..res.nr as usize] {
        let f = &inp.sfl;
        let key = if is_log {
            log_key(f.ref_.blkno.get())
        } else {
            blocks_key(f.blocks.get(), f.ref_.blkno.get())
        };
        match btree.delete(&mut sb.srch_root, alloc, &key).await {
            Ok(_) => {}
            Err(Error::NotFound) => {
                return Err(Error::corrupt(format!(
                    "srch compaction input {key} is not in srch_root"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    let out = &res.out;
    if !out.ref_.is_null() {
        btree
            .insert(
                &mut sb.srch_root,
                alloc,
                &blocks_key(out.blocks.get(), out.ref_.blkno.get()),
                out.as_bytes(),
            )
            .await?;
    }
    Ok(())
}

/// Puts every compaction `rid` was working on back to PENDING, as it
/// stood at its last commit, for another mount to resume (reclaim of a
/// mount that is gone). Returns how many moved.
pub async fn cancel_compacts(
    btree: &Btree,
    alloc: &mut ListAlloc,
    sb: &mut SuperBlock,
    rid: u64,
) -> Result<usize> {
    let mut n = 0;
    for it in type_items(btree, sb, srch_type::BUSY).await? {
        if it.key.second != rid {
            continue;
        }
        let sc = decode_compact(&it)?;
        btree.delete(&mut sb.srch_root, alloc, &it.key).await?;
        btree
            .insert(
                &mut sb.srch_root,
                alloc,
                &pending_key(sc.id.get()),
                sc.as_bytes(),
            )
            .await?;
        n += 1;
    }
    Ok(n)
}

/// Whether a result flags its compaction as finished with its phase.
pub fn is_done(sc: &SrchCompact) -> bool {
    sc.flags & SRCH_COMPACT_FLAG_DONE != 0
}
