//! The list allocator: singly linked `AllocListBlock`s under `AllocListHead`s.
//!
//! A list block's live entries are `blknos[start..start+nr]`; `head.total_nr`
//! counts the entries of the whole list and `head.first_nr` those of its
//! first block. Entries are taken from the front of the first block and
//! appended at the end of it; a full first block gets a new block in front.
//!
//! Guarantees of [`ListAlloc`] (one transaction's metadata allocator):
//! * [`ListAlloc::alloc`] only hands out entries of `avail`;
//!   [`ListAlloc::free`] only appends to `freed`. Nothing freed in the
//!   transaction is reused before it commits.
//! * A list block is modified only once this transaction has made it dirty:
//!   a clean block is copied to a blkno taken from `avail` (with a fresh seq)
//!   and its old blkno recorded in `freed`. Emptied list blocks are recorded
//!   in `freed` too, so every block stays accounted for.
//! * Errors from a half-done operation leave the lists unspecified: the
//!   caller discards the transaction.
//!
//! Touches `block` (cache), `btree` (for extent moves) and `format::alloc`.

use std::sync::Arc;

use zerocopy::FromBytes;

use super::extent::{alloc_extent, free_extent};
use crate::block::{BlockCache, Error, Result};
use crate::btree::{BoxFuture, Btree, MetaAllocator};
use crate::format::alloc::{AllocListBlock, ALLOC_LIST_MAX_BLKNOS};
use crate::format::superblock::{AllocListHead, AllocRoot};
use crate::format::{BlockRef, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST};

fn list_mut(buf: &mut [u8]) -> &mut AllocListBlock {
    AllocListBlock::mut_from_bytes(buf).expect("a list block buffer is one large block")
}

/// Reads a list block and checks its entry range.
async fn read_list(cache: &BlockCache, r: &BlockRef) -> Result<Arc<crate::block::Block>> {
    let block = cache.read(r, MAGIC_ALLOC_LIST).await?;
    let lb = AllocListBlock::ref_from_bytes(block.data())
        .map_err(|_| Error::corrupt("list block size"))?;
    lb.live()?;
    Ok(block)
}

fn live_of(block: &crate::block::Block) -> Result<Vec<u64>> {
    let lb = AllocListBlock::ref_from_bytes(block.data())
        .map_err(|_| Error::corrupt("list block size"))?;
    Ok(lb.live()?.iter().map(|b| b.get()).collect())
}

/// Live entries of the block `r` names (0 for a null ref).
async fn first_nr_of(cache: &BlockCache, r: &BlockRef) -> Result<u32> {
    if r.is_null() {
        return Ok(0);
    }
    let block = read_list(cache, r).await?;
    Ok(live_of(&block)?.len() as u32)
}

fn next_of(block: &crate::block::Block) -> BlockRef {
    AllocListBlock::ref_from_bytes(block.data())
        .map(|lb| lb.next)
        .unwrap_or_default()
}

fn set_head(head: &mut AllocListHead, r: BlockRef, first_nr: u32) {
    head.ref_ = r;
    head.first_nr = first_nr.into();
}

fn take_total(head: &mut AllocListHead, n: u64) -> Result<()> {
    let t = head.total_nr.get();
    if t < n {
        return Err(Error::corrupt(format!(
            "list total_nr {t} below its entries"
        )));
    }
    head.total_nr = (t - n).into();
    Ok(())
}

/// Every blkno a list names: its entries and its own blocks.
pub async fn list_blknos(cache: &BlockCache, head: &AllocListHead) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut entries = Vec::new();
    let mut blocks = Vec::new();
    let mut r = head.ref_;
    while !r.is_null() {
        if blocks.len() as u64 > cache.device_blocks() {
            return Err(Error::corrupt("list blocks form a cycle"));
        }
        let block = read_list(cache, &r).await?;
        blocks.push(r.blkno.get());
        entries.extend(live_of(&block)?);
        r = next_of(&block);
    }
    if entries.len() as u64 != head.total_nr.get() {
        return Err(Error::corrupt(format!(
            "list holds {} entries, head says {}",
            entries.len(),
            head.total_nr.get()
        )));
    }
    Ok((entries, blocks))
}

/// One transaction's metadata allocator over an (avail, freed) pair.
#[derive(Debug)]
pub struct ListAlloc {
    cache: Arc<BlockCache>,
    pub avail: AllocListHead,
    pub freed: AllocListHead,
    /// Blknos waiting to be appended to `freed`.
    pending: Vec<u64>,
}

impl ListAlloc {
    pub fn new(cache: Arc<BlockCache>, avail: AllocListHead, freed: AllocListHead) -> Self {
        ListAlloc {
            cache,
            avail,
            freed,
            pending: Vec::new(),
        }
    }

    /// Takes one blkno from `avail`.
    pub async fn alloc(&mut self) -> Result<u64> {
        let b = self.alloc_raw().await?;
        self.drain_pending().await?;
        Ok(b)
    }

    /// Records `blkno` in `freed`.
    pub async fn free(&mut self, blkno: u64) -> Result<()> {
        self.pending.push(blkno);
        self.drain_pending().await
    }

    /// Pops the first entry of `avail`, COWing its block from its own
    /// entries; old and emptied list blocks go to `pending`.
    async fn alloc_raw(&mut self) -> Result<u64> {
        loop {
            if self.avail.total_nr.get() == 0 {
                return Err(Error::NoSpace("metadata avail list is empty".into()));
            }
            let r = self.avail.ref_;
            if r.is_null() {
                return Err(Error::corrupt("avail list has entries but no blocks"));
            }
            let block = read_list(&self.cache, &r).await?;
            let live = live_of(&block)?;
            let blkno = r.blkno.get();
            if live.is_empty() {
                let next = next_of(&block);
                let first_nr = first_nr_of(&self.cache, &next).await?;
                self.cache.forget(blkno);
                self.pending.push(blkno);
                set_head(&mut self.avail, next, first_nr);
                continue;
            }
            let clean = self.cache.dirty_seq(blkno) != Some(r.seq.get());
            if clean && live.len() == 1 {
                // Hand out the last entry and drop the block rather than
                // COW a block that would be left empty.
                let next = next_of(&block);
                let first_nr = first_nr_of(&self.cache, &next).await?;
                take_total(&mut self.avail, 1)?;
                self.cache.forget(blkno);
                self.pending.push(blkno);
                set_head(&mut self.avail, next, first_nr);
                return Ok(live[0]);
            }
            let mut buf = block.to_buf();
            if clean {
                // COW with the list's own last entry.
                let lb = list_mut(&mut buf);
                let nr = lb.nr.get();
                let new = lb.blknos[(lb.start.get() + nr - 1) as usize].get();
                lb.nr = (nr - 1).into();
                take_total(&mut self.avail, 1)?;
                let seq = self.cache.new_seq();
                self.cache.put_dirty(new, seq, MAGIC_ALLOC_LIST, buf)?;
                self.cache.forget(blkno);
                self.pending.push(blkno);
                set_head(&mut self.avail, BlockRef::new(new, seq), nr - 1);
                continue;
            }
            let lb = list_mut(&mut buf);
            let start = lb.start.get();
            let got = lb.blknos[start as usize].get();
            lb.start = (start + 1).into();
            lb.nr = (lb.nr.get() - 1).into();
            let nr = lb.nr.get();
            self.cache
                .put_dirty(blkno, r.seq.get(), MAGIC_ALLOC_LIST, buf)?;
            take_total(&mut self.avail, 1)?;
            self.avail.first_nr = nr.into();
            return Ok(got);
        }
    }

    /// Appends every pending blkno to `freed`.
    async fn drain_pending(&mut self) -> Result<()> {
        while let Some(b) = self.pending.pop() {
            if let Err(e) = self.append_freed(b).await {
                self.pending.push(b);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn append_freed(&mut self, b: u64) -> Result<()> {
        let r = self.freed.ref_;
        let mut buf = if r.is_null() {
            None
        } else {
            let block = read_list(&self.cache, &r).await?;
            let lb = AllocListBlock::ref_from_bytes(block.data())
                .map_err(|_| Error::corrupt("list block size"))?;
            let end = (lb.start.get() + lb.nr.get()) as usize;
            (end < ALLOC_LIST_MAX_BLKNOS).then(|| block.to_buf())
        };
        let (blkno, seq) = match buf.as_mut() {
            None => {
                // No head block, or a full one: a new empty block in front.
                let new = self.alloc_raw().await?;
                let mut fresh = drivers::AlignedBuf::new(LG_BLOCK_SIZE);
                list_mut(&mut fresh).next = r;
                buf = Some(fresh);
                (new, self.cache.new_seq())
            }
            Some(_) if self.cache.dirty_seq(r.blkno.get()) != Some(r.seq.get()) => {
                let new = self.alloc_raw().await?;
                self.cache.forget(r.blkno.get());
                self.pending.push(r.blkno.get());
                (new, self.cache.new_seq())
            }
            Some(_) => (r.blkno.get(), r.seq.get()),
        };
        let mut buf = buf.expect("set above");
        let lb = list_mut(&mut buf);
        let end = (lb.start.get() + lb.nr.get()) as usize;
        lb.blknos[end] = b.into();
        lb.nr = (lb.nr.get() + 1).into();
        let nr = lb.nr.get();
        self.cache.put_dirty(blkno, seq, MAGIC_ALLOC_LIST, buf)?;
        set_head(&mut self.freed, BlockRef::new(blkno, seq), nr);
        self.freed.total_nr = (self.freed.total_nr.get() + 1).into();
        Ok(())
    }
}

impl MetaAllocator for ListAlloc {
    fn alloc_meta(&mut self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.alloc())
    }

    fn free_meta(&mut self, blkno: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.free(blkno))
    }
}

/// Appends `b` to `head`, COWing its first block (or adding one) with blocks
/// from `meta` and freeing old copies to `meta`.
async fn list_push(
    cache: &BlockCache,
    meta: &mut dyn MetaAllocator,
    head: &mut AllocListHead,
    b: u64,
) -> Result<()> {
    let r = head.ref_;
    let mut target = None;
    if !r.is_null() {
        let block = read_list(cache, &r).await?;
        let lb = AllocListBlock::ref_from_bytes(block.data())
            .map_err(|_| Error::corrupt("list block size"))?;
        if ((lb.start.get() + lb.nr.get()) as usize) < ALLOC_LIST_MAX_BLKNOS {
            let buf = block.to_buf();
            if cache.dirty_seq(r.blkno.get()) == Some(r.seq.get()) {
                target = Some((r.blkno.get(), r.seq.get(), buf));
            } else {
                let new = meta.alloc_meta().await?;
                meta.free_meta(r.blkno.get()).await?;
                cache.forget(r.blkno.get());
                target = Some((new, cache.new_seq(), buf));
            }
        }
    }
    let (blkno, seq, mut buf) = match target {
        Some(t) => t,
        None => {
            let new = meta.alloc_meta().await?;
            let mut fresh = drivers::AlignedBuf::new(LG_BLOCK_SIZE);
            list_mut(&mut fresh).next = r;
            (new, cache.new_seq(), fresh)
        }
    };
    let lb = list_mut(&mut buf);
    let end = (lb.start.get() + lb.nr.get()) as usize;
    lb.blknos[end] = b.into();
    lb.nr = (lb.nr.get() + 1).into();
    let nr = lb.nr.get();
    cache.put_dirty(blkno, seq, MAGIC_ALLOC_LIST, buf)?;
    set_head(head, BlockRef::new(blkno, seq), nr);
    head.total_nr = (head.total_nr.get() + 1).into();
    Ok(())
}

/// Moves up to `count` blocks from the extent allocator `root` into the list
/// `head` (the server's fill). Returns how many moved; fewer than asked only
/// when the extents ran out.
pub async fn move_to_list(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    head: &mut AllocListHead,
    root: &mut AllocRoot,
    count: u64,
) -> Result<u64> {
    let cache = btree.cache().clone();
    let mut moved = 0;
    while moved < count {
        let (start, len) = match alloc_extent(btree, meta, root, count - moved).await {
            Ok(ext) => ext,
            Err(Error::NoSpace(_)) => break,
            Err(e) => return Err(e),
        };
        for b in start..start + len {
            list_push(&cache, meta, head, b).await?;
        }
        moved += len;
    }
    Ok(moved)
}

/// Frees every entry of the list `head` into the extent allocator `root`
/// (the server's drain) and frees the list's own blocks to `meta`. The list
/// is empty afterwards.
pub async fn empty_list_into_extents(
    btree: &Btree,
    meta: &mut dyn MetaAllocator,
    head: &mut AllocListHead,
    root: &mut AllocRoot,
) -> Result<u64> {
    let cache = btree.cache().clone();
    let mut freed = 0;
    while !head.ref_.is_null() {
        let r = head.ref_;
        let block = read_list(&cache, &r).await?;
        let mut live = live_of(&block)?;
        let next = next_of(&block);
        live.sort_unstable();
        let mut i = 0;
        while i < live.len() {
            let mut j = i + 1;
            while j < live.len() && live[j] == live[j - 1] + 1 {
                j += 1;
            }
            free_extent(btree, meta, root, live[i], (j - i) as u64).await?;
            i = j;
        }
        take_total(head, live.len() as u64)?;
        freed += live.len() as u64;
        meta.free_meta(r.blkno.get()).await?;
        cache.forget(r.blkno.get());
        let first_nr = first_nr_of(&cache, &next).await?;
        set_head(head, next, first_nr);
    }
    if head.total_nr.get() != 0 {
        return Err(Error::corrupt(format!(
            "list ended with total_nr {}",
            head.total_nr.get()
        )));
    }
    Ok(freed)
}
