//! The metadata block cache and the copy-on-write rules around it.
//!
//! Every large (64 KiB) metadata block the engine reads or writes goes
//! through a [`BlockCache`]: refs name blocks in large-block units on the
//! metadata device (byte offset `blkno << 16`).
//!
//! Guarantees:
//! * A block returned by [`BlockCache::read`] passed the full check of
//!   reference §1.2 (`format::block::check_block`): a bad crc is `Error::Io`;
//!   a crc-valid block whose magic, fsid, blkno or seq doesn't match the ref is
//!   `Error::Stale`, reported only after the cached copy was dropped and the
//!   device reread once. Only crc-valid blocks enter the cache.
//! * Blocks are handed out as immutable `Arc<Block>`s. Nothing ever edits the
//!   bytes of a block someone may hold: a COW ([`BlockCache::put_dirty`])
//!   always inserts a new `Arc` (trap 16, 9450959c) and evicts whatever was
//!   cached at that blkno. A reader's `Arc` keeps its bytes until dropped.
//! * Dirty blocks are never evicted; [`BlockCache::write_dirty`] seals (crc)
//!   and writes them, after which they become clean cache entries. Ordering
//!   against the super block is the caller's business (blocks, flush, super,
//!   flush); [`BlockCache::write_dirty_and_flush`] does the first half.
//! * Clean blocks are bounded by the capacity given at creation and evicted
//!   least-recently-used first. Lookups and eviction both run under one short
//!   mutex that is never held across an `.await`, so eviction can't race a
//!   lookup (trap 17): a looked-up block is an `Arc` clone made under the lock.
//!
//! Touches `drivers::BlockDevice` and `format::block`; nothing else.

mod error;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drivers::{AlignedBuf, BlockDevice};

use crate::format::block::{check_block, seal_block, BlockHeader, Expect};
use crate::format::{read_struct_mut, BlockRef, FormatError, LG_BLOCK_SHIFT, LG_BLOCK_SIZE};

pub use error::{Error, Result};

/// Where COW sequence numbers come from: the runtime's randomness in the
/// engine (`move || runtime.random_u64()`), a seeded generator in tests.
pub type SeqSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One 64 KiB metadata block, immutable once shared.
pub struct Block {
    blkno: u64,
    data: AlignedBuf,
}

impl Block {
    pub fn blkno(&self) -> u64 {
        self.blkno
    }

    /// The whole block, header included.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn header(&self) -> BlockHeader {
        let mut hdr = BlockHeader::default();
        zerocopy::IntoBytes::as_mut_bytes(&mut hdr).copy_from_slice(&self.data[..32]);
        hdr
    }

    pub fn seq(&self) -> u64 {
        self.header().seq.get()
    }

    /// The ref that reaches this block.
    pub fn block_ref(&self) -> BlockRef {
        BlockRef::new(self.blkno, self.seq())
    }

    /// A private, writable copy of the bytes (for building the next version).
    pub fn to_buf(&self) -> AlignedBuf {
        AlignedBuf::from_slice(&self.data)
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("blkno", &self.blkno)
            .field("seq", &self.seq())
            .finish()
    }
}

/// Counters for tests and the status tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub clean: usize,
    pub dirty: usize,
    pub device_reads: u64,
    pub evictions: u64,
    pub stale_rereads: u64,
}

struct CleanEntry {
    block: Arc<Block>,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    clean: BTreeMap<u64, CleanEntry>,
    /// LRU order of clean blocks: tick → blkno.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    dirty: BTreeMap<u64, Arc<Block>>,
    stats: CacheStats,
}

impl Inner {
    fn remove_clean(&mut self, blkno: u64) {
        if let Some(e) = self.clean.remove(&blkno) {
            self.lru.remove(&e.tick);
        }
    }

    fn touch(&mut self, blkno: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.clean.get_mut(&blkno) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, blkno);
        }
    }

    fn insert_clean(&mut self, block: Arc<Block>, capacity: usize) {
        let blkno = block.blkno;
        self.remove_clean(blkno);
        self.tick += 1;
        let tick = self.tick;
        self.clean.insert(blkno, CleanEntry { block, tick });
        self.lru.insert(tick, blkno);
        while self.clean.len() > capacity {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            self.clean.remove(&victim);
            self.stats.evictions += 1;
        }
    }
}

/// The cache of metadata blocks over one device.
pub struct BlockCache {
    dev: Arc<dyn BlockDevice>,
    fsid: u64,
    capacity_blocks: usize,
    seqs: SeqSource,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("fsid", &self.fsid)
            .field("capacity_blocks", &self.capacity_blocks)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Smallest useful cache: a btree walk of the deepest tree plus siblings.
pub const CACHE_MIN_BLOCKS: usize = 64;

impl BlockCache {
    /// A cache of at most `capacity_blocks` clean blocks (at least
    /// [`CACHE_MIN_BLOCKS`]) for the filesystem `fsid`.
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        fsid: u64,
        capacity_blocks: usize,
        seqs: SeqSource,
    ) -> Self {
        BlockCache {
            dev,
            fsid,
            capacity_blocks: capacity_blocks.max(CACHE_MIN_BLOCKS),
            seqs,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Number of large blocks the device holds.
    pub fn device_blocks(&self) -> u64 {
        self.dev.size_bytes() >> LG_BLOCK_SHIFT
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a panic in
        // another thread doesn't make them unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            clean: inner.clean.len(),
            dirty: inner.dirty.len(),
            ..inner.stats
        }
    }

    /// A fresh random sequence number for a COWed block (never 0).
    pub fn new_seq(&self) -> u64 {
        loop {
            let s = (self.seqs)();
            if s != 0 {
                return s;
            }
        }
    }

    fn expect(&self, r: &BlockRef, magic: u32) -> Expect {
        Expect {
            magic,
            fsid: self.fsid,
            blkno: r.blkno.get(),
            seq: r.seq.get(),
        }
    }

    fn check_range(&self, blkno: u64) -> Result<()> {
        if blkno == 0 || blkno >= self.device_blocks() {
            return Err(Error::corrupt(format!(
                "blkno {blkno} outside the device's {} blocks",
                self.device_blocks()
            )));
        }
        Ok(())
    }

    /// Reads the block `r` names, expecting `magic`, through the cache.
    pub async fn read(&self, r: &BlockRef, magic: u32) -> Result<Arc<Block>> {
        let blkno = r.blkno.get();
        self.check_range(blkno)?;
        let want = self.expect(r, magic);
        let mut cached_was_stale = false;
        {
            let mut inner = self.lock();
            if let Some(b) = inner.dirty.get(&blkno) {
                // Dirty blocks are ours and current: no reread can help.
                let b = b.clone();
                drop(inner);
                check_header_fields(b.data(), &want)?;
                return Ok(b);
            }
            if let Some(e) = inner.clean.get(&blkno) {
                let b = e.block.clone();
                if check_header_fields(b.data(), &want).is_ok() {
                    inner.touch(blkno);
                    return Ok(b);
                }
                inner.remove_clean(blkno);
                inner.stats.stale_rereads += 1;
                cached_was_stale = true;
            }
        }
        let attempts = if cached_was_stale { 1 } else { 2 };
        let mut last = Error::Stale(format!("blkno {blkno}"));
        for _ in 0..attempts {
            let block = self.read_device(blkno).await?;
            match check_block(block.data(), &want) {
                Ok(_) => {
                    let block = Arc::new(block);
                    let mut inner = self.lock();
                    // A COW may have raced us to this blkno: its dirty block wins.
                    if !inner.dirty.contains_key(&blkno) {
                        inner.insert_clean(block.clone(), self.capacity_blocks);
                    }
                    return Ok(block);
                }
                Err(e @ FormatError::Stale(_)) => {
                    self.lock().stats.stale_rereads += 1;
                    last = e.into();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    async fn read_device(&self, blkno: u64) -> Result<Block> {
        let buf = AlignedBuf::new(LG_BLOCK_SIZE);
        let (buf, res) = self.dev.read_at(blkno << LG_BLOCK_SHIFT, buf).await;
        res.map_err(|e| Error::Io(format!("reading blkno {blkno}: {e}")))?;
        self.lock().stats.device_reads += 1;
        Ok(Block { blkno, data: buf })
    }

    /// Seq of the dirty block at `blkno`, if this transaction dirtied it.
    pub fn dirty_seq(&self, blkno: u64) -> Option<u64> {
        self.lock().dirty.get(&blkno).map(|b| b.seq())
    }

    /// Installs `data` as the dirty block at `blkno` with header `magic`,
    /// the cache's fsid, `blkno` and `seq` (crc is sealed at write time).
    /// Whatever was cached at `blkno` is replaced by a new `Arc`; holders of
    /// the previous one keep their bytes.
    pub fn put_dirty(
        &self,
        blkno: u64,
        seq: u64,
        magic: u32,
        mut data: AlignedBuf,
    ) -> Result<Arc<Block>> {
        self.check_range(blkno)?;
        if data.len() != LG_BLOCK_SIZE {
            return Err(Error::Invalid(format!(
                "dirty block of {} bytes",
                data.len()
            )));
        }
        {
            let hdr: &mut BlockHeader = read_struct_mut(&mut data).map_err(Error::from)?;
            hdr.crc = 0.into();
            hdr.magic = magic.into();
            hdr.fsid = self.fsid.into();
            hdr.blkno = blkno.into();
            hdr.seq = seq.into();
        }
        let block = Arc::new(Block { blkno, data });
        let mut inner = self.lock();
        inner.remove_clean(blkno);
        inner.dirty.insert(blkno, block.clone());
        Ok(block)
    }

    /// Drops every cached copy of `blkno`, dirty or clean (the block was
    /// freed; a dirty one will not be written).
    pub fn forget(&self, blkno: u64) {
        let mut inner = self.lock();
        inner.remove_clean(blkno);
        inner.dirty.remove(&blkno);
    }

    /// Drops every clean block (dirty ones stay).
    pub fn drop_clean(&self) {
        let mut inner = self.lock();
        inner.clean.clear();
        inner.lru.clear();
    }

    /// Drops every dirty block without writing it (a failed transaction).
    pub fn discard_dirty(&self) {
        self.lock().dirty.clear();
    }

    pub fn dirty_count(&self) -> usize {
        self.lock().dirty.len()
    }

    /// Seals and writes every dirty block; written blocks become clean.
    /// Returns how many were written. Nothing is durable until a flush.
    pub async fn write_dirty(&self) -> Result<usize> {
        let dirty: Vec<Arc<Block>> = self.lock().dirty.values().cloned().collect();
        for b in &dirty {
            let hdr = b.header();
            let mut buf = b.to_buf();
            seal_block(&mut buf, hdr.magic.get(), self.fsid, b.blkno, hdr.seq.get());
            let (buf, res) = self.dev.write_at(b.blkno << LG_BLOCK_SHIFT, buf).await;
            res.map_err(|e| Error::Io(format!("writing blkno {}: {e}", b.blkno)))?;
            let sealed = Arc::new(Block {
                blkno: b.blkno,
                data: buf,
            });
            let mut inner = self.lock();
            // Only retire the dirty entry we wrote; a newer version stays dirty.
            if inner
                .dirty
                .get(&b.blkno)
                .is_some_and(|cur| Arc::ptr_eq(cur, b))
            {
                inner.dirty.remove(&b.blkno);
                inner.insert_clean(sealed, self.capacity_blocks);
            }
        }
        Ok(dirty.len())
    }

    /// [`write_dirty`](Self::write_dirty), then a device flush: the first half
    /// of a commit (the caller then writes the super and flushes again).
    pub async fn write_dirty_and_flush(&self) -> Result<usize> {
        let n = self.write_dirty().await?;
        self.dev
            .flush()
            .await
            .map_err(|e| Error::Io(format!("flush: {e}")))?;
        Ok(n)
    }
}

/// The header part of the ref check, for blocks already known crc-valid (or
/// dirty, not yet sealed).
fn check_header_fields(data: &[u8], want: &Expect) -> Result<()> {
    let mut hdr = BlockHeader::default();
    zerocopy::IntoBytes::as_mut_bytes(&mut hdr).copy_from_slice(&data[..32]);
    if hdr.magic.get() != want.magic
        || hdr.fsid.get() != want.fsid
        || hdr.blkno.get() != want.blkno
        || hdr.seq.get() != want.seq
    {
        return Err(Error::Stale(format!(
            "blkno {} seq {:x} magic {:08x}: block has blkno {} seq {:x} magic {:08x}",
            want.blkno,
            want.seq,
            want.magic,
            hdr.blkno.get(),
            hdr.seq.get(),
            hdr.magic.get()
        )));
    }
    Ok(())
}
