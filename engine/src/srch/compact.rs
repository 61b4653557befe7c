//! The mount's half of a srch compaction (reference §8.3): merge the
//! inputs of a [`SrchCompact`] into one sorted output file, or, in the
//! delete phase, free the inputs.
//!
//! * LOG work (4 rotated log files): every entry is decoded, sorted in
//!   memory and written in one go (log files are at most a few MiB each).
//! * SORTED work (4 sorted files of a tier): a streaming 4-way merge that
//!   stops after [`CompactLimits::step_blocks`] new output leaves (or
//!   `step_entries` entries, or when its avail list runs low) and reports its progress: the output so far
//!   and, per input, the leaf and byte offset of the first entry not yet
//!   accounted for. The server keeps that as PENDING; the next step (on any
//!   mount) resumes from there, starting a new output leaf.
//! * Pairs: equal entries are adjacent in merge order; both are dropped
//!   (7c5823ad), wherever they fall in the inputs' blocks.
//! * Positions only ever cover entries that are written to the output or
//!   dropped as a pair, never one merely read (18aee0eb): a step only stops
//!   between pairs, with no entry held back.
//!
//! Nothing here writes blocks or talks to the server: the caller writes
//! the cache's dirty blocks, flushes, and then sends the returned result
//! (or discards them and sends the work back with ERROR).
//!
//! Touches `block` (the caller's cache), `alloc::ListAlloc` over the
//! compaction's lists, [`super::file`] and `format`.

use std::sync::Arc;

use super::file::{entry_key, free_file, leaf_entries, read_leaf, SrchWriter};
use crate::alloc::ListAlloc;
use crate::block::{BlockCache, Error, Result};
use crate::format::srch::{
    SrchCompact, SrchEntry, SrchFile, SRCH_COMPACT_FLAG_DELETE, SRCH_COMPACT_FLAG_DONE,
    SRCH_COMPACT_FLAG_ERROR, SRCH_COMPACT_FLAG_LOG, SRCH_COMPACT_FLAG_SORTED,
};

/// When a SORTED step stops to commit its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactLimits {
    /// New output leaves per step (512 = the original's 32 MiB of dirty
    /// blocks). Tests lower it to make steps resume.
    pub step_blocks: u64,
    /// Entries written per step (tests lower it so that steps stop inside
    /// leaves of the inputs and of the output).
    pub step_entries: u64,
    /// Stop when the avail list holds fewer blocks than this.
    pub alloc_low_blocks: u64,
}

impl Default for CompactLimits {
    fn default() -> Self {
        CompactLimits {
            step_blocks: 512,
            step_entries: u64::MAX,
            alloc_low_blocks: 24,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Entries written to the output.
    pub written: u64,
    /// Entries dropped as create/delete pairs.
    pub dropped: u64,
    /// Input blocks freed (delete phase).
    pub freed: u64,
}

/// The work handed back with ERROR: the server restores it as it was.
pub fn error_result(sc: &SrchCompact) -> SrchCompact {
    let mut r = *sc;
    r.flags |= SRCH_COMPACT_FLAG_ERROR;
    r
}

/// Runs one step of `sc` over `cache`; returns the result to commit.
pub async fn compact_step(
    cache: &Arc<BlockCache>,
    sc: &SrchCompact,
    limits: &CompactLimits,
) -> Result<(SrchCompact, StepStats)> {
    let n = sc.nr as usize;
    if n > sc.inputs.len() {
        return Err(Error::Invalid(format!("srch compaction of {n} inputs")));
    }
    let mut alloc = ListAlloc::new(cache.clone(), sc.meta_avail, sc.meta_freed);
    let mut res = *sc;
    let mut stats = StepStats::default();
    if sc.flags & SRCH_COMPACT_FLAG_DELETE != 0 {
        for inp in &sc.inputs[..n] {
            stats.freed += free_file(cache, &mut alloc, &inp.sfl).await?;
        }
        res.flags |= SRCH_COMPACT_FLAG_DONE;
    } else if sc.flags & SRCH_COMPACT_FLAG_LOG != 0 {
        let mut all = Vec::new();
        for inp in &sc.inputs[..n] {
            for blk in 0..inp.sfl.blocks.get() {
                let b = read_leaf(cache, &inp.sfl, blk).await?;
                all.extend(leaf_entries(&b)?.into_iter().map(|(e, _)| e));
            }
        }
        all.sort_unstable_by_key(entry_key);
        let mut w = SrchWriter::new(cache, &mut alloc, res.out, false)?;
        let mut i = 0;
        while i < all.len() {
            if i + 1 < all.len() && all[i] == all[i + 1] {
                stats.dropped += 2;
                i += 2;
                continue;
            }
            w.append(&all[i]).await?;
            stats.written += 1;
            i += 1;
        }
        res.out = w.finish()?;
        res.flags |= SRCH_COMPACT_FLAG_DONE;
    } else if sc.flags & SRCH_COMPACT_FLAG_SORTED != 0 {
        let done = merge_sorted(cache, &mut alloc, &mut res, limits, &mut stats).await?;
        if done {
            res.flags |= SRCH_COMPACT_FLAG_DONE;
        }
    } else {
        return Err(Error::Invalid(format!(
            "srch compaction flags {:#x}",
            sc.flags
        )));
    }
    res.meta_avail = alloc.avail;
    res.meta_freed = alloc.freed;
    Ok((res, stats))
}

/// One sorted input: its decoded current leaf and where it stands.
struct Cursor {
    sfl: SrchFile,
    blk: u64,
    /// Entries of leaf `blk` with the byte offset just past each.
    ents: Vec<(SrchEntry, usize)>,
    /// Index into `ents` of the next entry.
    idx: usize,
}

impl Cursor {
    /// Opens at leaf `blk`, byte `pos` (a boundary between entries).
    async fn open(cache: &BlockCache, sfl: SrchFile, blk: u64, pos: u64) -> Result<Cursor> {
        let mut c = Cursor {
            sfl,
            blk,
            ents: Vec::new(),
            idx: 0,
        };
        if blk < sfl.blocks.get() {
            c.ents = leaf_entries(&*read_leaf(cache, &sfl, blk).await?)?;
            if pos != 0 {
                c.idx = c
                    .ents
                    .iter()
                    .position(|(_, end)| *end as u64 == pos)
                    .map(|i| i + 1)
                    .ok_or_else(|| {
                        Error::corrupt(format!("srch compaction position {blk}.{pos}"))
                    })?;
            }
        } else if blk > sfl.blocks.get() || pos != 0 {
            return Err(Error::corrupt(format!(
                "srch compaction position {blk}.{pos} past {} blocks",
                sfl.blocks.get()
            )));
        }
        c.skip_empty(cache).await?;
        Ok(c)
    }

    /// Moves past exhausted leaves.
    async fn skip_empty(&mut self, cache: &BlockCache) -> Result<()> {
        while self.idx >= self.ents.len() && self.blk < self.sfl.blocks.get() {
            self.blk += 1;
            self.idx = 0;
            self.ents = if self.blk < self.sfl.blocks.get() {
                leaf_entries(&*read_leaf(cache, &self.sfl, self.blk).await?)?
            } else {
                Vec::new()
            };
        }
        Ok(())
    }

    fn peek(&self) -> Option<SrchEntry> {
        self.ents.get(self.idx).map(|(e, _)| *e)
    }

    async fn advance(&mut self, cache: &BlockCache) -> Result<()> {
        self.idx += 1;
        self.skip_empty(cache).await
    }

    /// (blk, pos) of the next entry: what a resumed step starts from.
    fn position(&self) -> (u64, u64) {
        if self.idx == 0 {
            (self.blk, 0)
        } else {
            (self.blk, self.ents[self.idx - 1].1 as u64)
        }
    }
}

/// Index of the cursor holding the smallest next entry.
fn least(cursors: &[Cursor]) -> Option<usize> {
    let mut best: Option<(usize, (u64, u64, u64))> = None;
    for (i, c) in cursors.iter().enumerate() {
        if let Some(e) = c.peek() {
            let k = entry_key(&e);
            if best.is_none_or(|(_, bk)| k < bk) {
                best = Some((i, k));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Merges sorted inputs from their saved positions; returns whether every
/// input is consumed. Stops only between entries, with nothing read but
/// not yet written or dropped.
async fn merge_sorted(
    cache: &Arc<BlockCache>,
    alloc: &mut ListAlloc,
    res: &mut SrchCompact,
    limits: &CompactLimits,
    stats: &mut StepStats,
) -> Result<bool> {
    let n = res.nr as usize;
    let mut cursors = Vec::with_capacity(n);
    for inp in &res.inputs[..n] {
        cursors.push(Cursor::open(cache, inp.sfl, inp.blk.get(), inp.pos.get()).await?);
    }
    let mut w = SrchWriter::new(cache, alloc, res.out, false)?;
    let mut written = 0u64;
    let done = loop {
        let Some(i) = least(&cursors) else {
            break true;
        };
        // A step ends when its leaves are full, not in the middle of one.
        if (w.new_leaves >= limits.step_blocks.max(1) && w.leaf_full())
            || written >= limits.step_entries.max(1)
            || w.alloc().avail.total_nr.get() < limits.alloc_low_blocks
        {
            break false;
        }
        let e = cursors[i].peek().expect("least has an entry");
        cursors[i].advance(cache).await?;
        // Its twin, if any, is the next least entry.
        if let Some(j) = least(&cursors) {
            if cursors[j].peek() == Some(e) {
                cursors[j].advance(cache).await?;
                stats.dropped += 2;
                continue;
            }
        }
        w.append(&e).await?;
        stats.written += 1;
        written += 1;
    };
    res.out = w.finish()?;
    for (inp, c) in res.inputs.iter_mut().zip(&cursors) {
        let (blk, pos) = c.position();
        inp.blk = blk.into();
        inp.pos = pos.into();
    }
    Ok(done)
}
