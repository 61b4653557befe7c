//! A `.srch.` search over the files of one set of stable roots (reference
//! §8.3): every sorted file (binary search to the first leaf that may hold
//! the hash, then streaming), every rotated log file and every mount's
//! current log file (all leaves whose range holds the hash).
//!
//! An entry seen once is a live xattr; seen twice it was created and
//! deleted, and is dropped. At most `limit` entries are tracked: past that
//! the largest are let go and the range shrinks below them, and the result
//! says it ended early (`done` false) so the caller continues after its last
//! inode. Results can hold hash collisions (another name with the same
//! fnv1a64) and xattrs removed by transactions not yet committed; they
//! lack xattrs whose transactions aren't committed: only committed files
//! are read, with no lock (§8.3 documents exactly this).
//!
//! Errors: a stale block (a file compacted and freed since these roots)
//! is `Error::Stale`, for the caller to retry with fresh roots; a
//! malformed file is EIO.
//!
//! Touches `btree` (srch_root, logs_root), [`super::file`] and `format`.

use std::collections::BTreeSet;

use super::file::{entry_key, leaf_entries, leaf_header, read_leaf};
use super::server::all_files;
use crate::block::Result;
use crate::btree::Btree;
use crate::format::srch::{SrchEntry, SrchFile};
use crate::format::superblock::SuperBlock;
use crate::merge::all_log_trees;

/// What a search found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Inode numbers in order, each once.
    pub inos: Vec<u64>,
    /// Whether the search covered everything up to its last inode.
    pub done: bool,
}

/// The entries of one hash being gathered.
struct Tracker {
    hash: u64,
    start: (u64, u64),
    end: (u64, u64),
    limit: usize,
    set: BTreeSet<(u64, u64)>,
}

impl Tracker {
    fn lo(&self) -> (u64, u64, u64) {
        (self.hash, self.start.0, self.start.1)
    }

    fn hi(&self) -> (u64, u64, u64) {
        (self.hash, self.end.0, self.end.1)
    }

    fn overlaps(&self, first: &SrchEntry, last: &SrchEntry) -> bool {
        entry_key(first) <= self.hi() && entry_key(last) >= self.lo()
    }

    fn see(&mut self, e: &SrchEntry) {
        let k = entry_key(e);
        if k < self.lo() || k > self.hi() {
            return;
        }
        let v = (k.1, k.2);
        if !self.set.remove(&v) {
            self.set.insert(v);
            if self.set.len() > self.limit {
                let top = self.set.pop_last().expect("over the limit");
                self.end = dec(top);
            }
        }
    }
}

fn dec((ino, id): (u64, u64)) -> (u64, u64) {
    if id > 0 {
        (ino, id - 1)
    } else {
        (ino.wrapping_sub(1), u64::MAX)
    }
}

async fn search_log(btree: &Btree, f: &SrchFile, t: &mut Tracker) -> Result<()> {
    let cache = btree.cache();
    for blk in 0..f.blocks.get() {
        let b = read_leaf(cache, f, blk).await?;
        let h = leaf_header(&b)?;
        if h.entry_nr.get() == 0 || !t.overlaps(&h.first, &h.last) {
            continue;
        }
        for (e, _) in leaf_entries(&b)? {
            t.see(&e);
        }
    }
    Ok(())
}

async fn search_sorted(btree: &Btree, f: &SrchFile, t: &mut Tracker) -> Result<()> {
    let cache = btree.cache();
    let blocks = f.blocks.get();
    // The first leaf whose last entry is at or after the start.
    let (mut lo, mut hi) = (0u64, blocks);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = leaf_header(&*read_leaf(cache, f, mid).await?)?;
        if h.entry_nr.get() > 0 && entry_key(&h.last) < t.lo() {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for blk in lo..blocks {
        let b = read_leaf(cache, f, blk).await?;
        let h = leaf_header(&b)?;
        if h.entry_nr.get() == 0 {
            continue;
        }
        if entry_key(&h.first) > t.hi() {
            break;
        }
        for (e, _) in leaf_entries(&b)? {
            t.see(&e);
        }
    }
    Ok(())
}

async fn search_file(btree: &Btree, is_log: bool, f: &SrchFile, t: &mut Tracker) -> Result<()> {
    if f.ref_.is_null() || f.entries.get() == 0 || !t.overlaps(&f.first, &f.last) {
        return Ok(());
    }
    if is_log {
        search_log(btree, f, t).await
    } else {
        search_sorted(btree, f, t).await
    }
}

/// Searches the files of `sb` for entries of `hash` with inodes in
/// `first_ino..=last_ino`.
pub async fn search(
    btree: &Btree,
    sb: &SuperBlock,
    hash: u64,
    first_ino: u64,
    last_ino: u64,
    limit: usize,
) -> Result<Found> {
    let final_end = (last_ino, u64::MAX);
    let mut start = (first_ino, 0u64);
    let mut files = all_files(btree, sb).await?;
    for (_, lt) in all_log_trees(btree, &sb.logs_root).await? {
        files.push((true, lt.srch_file));
    }
    loop {
        let mut t = Tracker {
            hash,
            start,
            end: final_end,
            limit: limit.max(1),
            set: BTreeSet::new(),
        };
        if start > final_end {
            return Ok(Found {
                inos: Vec::new(),
                done: true,
            });
        }
        for (is_log, f) in &files {
            search_file(btree, *is_log, f, &mut t).await?;
        }
        let done = t.end == final_end;
        if t.set.is_empty() && !done {
            // Every tracked entry was cancelled: carry on past them.
            start = match t.end.1.checked_add(1) {
                Some(id) => (t.end.0, id),
                None => (t.end.0.wrapping_add(1), 0),
            };
            continue;
        }
        let mut inos: Vec<u64> = t.set.iter().map(|(ino, _)| *ino).collect();
        inos.dedup();
        return Ok(Found { inos, done });
    }
}
