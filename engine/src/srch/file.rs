//! srch files on disk (reference §1.9): reading leaves through the radix of
//! parent blocks, appending entries with copy-on-write, and freeing a whole
//! file.
//!
//! A file of height h keeps its leaves (magic SRCH_BLOCK) at level 0 under
//! h−1 levels of parents (magic SRCH_PARENT, 4094 refs each); leaf `blk`
//! is found by taking `blk` in base 4094 digits, the most significant one
//! at the root. Files are never sparse: leaves `0..blocks` all exist.
//!
//! Guarantees:
//! * [`SrchWriter`] never changes a block it did not dirty itself in the
//!   current cache generation: a committed leaf or parent on the path is
//!   copied to a new blkno (new random seq) and the old one is freed into
//!   the caller's allocator, so a reader of an older root never sees a
//!   block change under it (it sees ESTALE at worst).
//! * Leaf and file `first`/`last` are the smallest and largest entries they
//!   hold (for sorted files those are the first and last ones), `tail` is
//!   the last entry appended (the delta base of the next one), and no
//!   leaf's `entry_bytes` exceeds SAFE_BYTES plus one largest entry.
//! * Every decode checks counts and bounds; a malformed block is EIO
//!   (corruption), a block that is not the one referenced is ESTALE.
//!
//! Touches `block` (the caller's cache), `alloc::ListAlloc` (the caller's
//! allocator) and `format::srch`.

use std::sync::Arc;

use drivers::AlignedBuf;
use zerocopy::FromBytes;

use crate::alloc::ListAlloc;
use crate::block::{Block, BlockCache, Error, Result};
use crate::format::srch::{
    decode_entry, encode_entry, SrchBlockHeader, SrchEntry, SrchFile, SrchParent,
    SRCH_BLOCK_DATA_BYTES, SRCH_BLOCK_SAFE_BYTES, SRCH_PARENT_REFS,
};
use crate::format::{BlockRef, LG_BLOCK_SIZE, MAGIC_SRCH_BLOCK, MAGIC_SRCH_PARENT};

/// Tallest file read or written (4094^15 leaves is far beyond any device).
pub const SRCH_MAX_HEIGHT: u8 = 16;

const HDR_BYTES: usize = std::mem::size_of::<SrchBlockHeader>();

/// (hash, ino, id): the order entries sort in.
pub fn entry_key(e: &SrchEntry) -> (u64, u64, u64) {
    (e.hash.get(), e.ino.get(), e.id.get())
}

fn magic_of(level: u8) -> u32 {
    if level > 0 {
        MAGIC_SRCH_PARENT
    } else {
        MAGIC_SRCH_BLOCK
    }
}

/// Height a file needs to hold leaf `blk`.
pub fn height_for_blk(blk: u64) -> u8 {
    let mut h = 1u8;
    let mut total = 1u64;
    while blk >= total {
        h += 1;
        total = total.saturating_mul(SRCH_PARENT_REFS as u64);
    }
    h
}

/// Index into a parent at `level` (≥ 1) on the path to leaf `blk`.
fn ref_index(blk: u64, level: u8) -> usize {
    let mut b = blk;
    for _ in 1..level {
        b /= SRCH_PARENT_REFS as u64;
    }
    (b % SRCH_PARENT_REFS as u64) as usize
}

fn parent_refs(data: &[u8]) -> Result<&[crate::format::BlockRef]> {
    SrchParent::ref_from_prefix(data)
        .map(|(p, _)| &p.refs[..])
        .map_err(|_| Error::corrupt("short srch parent block"))
}

fn check_file(f: &SrchFile) -> Result<()> {
    let blocks = f.blocks.get();
    if f.ref_.is_null() {
        if blocks != 0 || f.height != 0 {
            return Err(Error::corrupt(format!(
                "srch file without blocks has blocks {blocks} height {}",
                f.height
            )));
        }
        return Ok(());
    }
    if f.height == 0 || f.height > SRCH_MAX_HEIGHT || blocks == 0 {
        return Err(Error::corrupt(format!(
            "srch file height {} blocks {blocks}",
            f.height
        )));
    }
    if height_for_blk(blocks - 1) > f.height {
        return Err(Error::corrupt(format!(
            "srch file of {blocks} blocks in height {}",
            f.height
        )));
    }
    Ok(())
}

/// Reads leaf `blk` of `f` through its parents.
pub async fn read_leaf(cache: &BlockCache, f: &SrchFile, blk: u64) -> Result<Arc<Block>> {
    check_file(f)?;
    if blk >= f.blocks.get() {
        return Err(Error::corrupt(format!(
            "srch leaf {blk} past the file's {} blocks",
            f.blocks.get()
        )));
    }
    let mut r = f.ref_;
    let mut level = f.height - 1;
    loop {
        let b = cache.read(&r, magic_of(level)).await?;
        if level == 0 {
            return Ok(b);
        }
        r = parent_refs(b.data())?[ref_index(blk, level)];
        if r.is_null() {
            return Err(Error::corrupt(format!("srch file missing leaf {blk}")));
        }
        level -= 1;
    }
}

/// The header of a leaf.
pub fn leaf_header(b: &Block) -> Result<SrchBlockHeader> {
    SrchBlockHeader::read_from_prefix(b.data())
        .map(|(h, _)| h)
        .map_err(|_| Error::corrupt("short srch block"))
}

/// Every entry of a leaf with the byte offset just past it, checked
/// against the header's counts.
pub fn leaf_entries(b: &Block) -> Result<Vec<(SrchEntry, usize)>> {
    let hdr = leaf_header(b)?;
    let bytes = hdr.entry_bytes.get() as usize;
    let nr = hdr.entry_nr.get() as usize;
    if bytes > SRCH_BLOCK_DATA_BYTES || nr > bytes / 2 {
        return Err(Error::corrupt(format!(
            "srch block blkno {} with {nr} entries in {bytes} bytes",
            b.blkno()
        )));
    }
    let data = &b.data()[HDR_BYTES..HDR_BYTES + bytes];
    let mut out = Vec::with_capacity(nr);
    let mut prev = SrchEntry::default();
    let mut pos = 0;
    for _ in 0..nr {
        let (e, n) = decode_entry(&data[pos..], &prev)
            .map_err(|e| Error::corrupt(format!("srch block blkno {}: {e}", b.blkno())))?;
        pos += n;
        prev = e;
        out.push((e, pos));
    }
    if pos != bytes {
        return Err(Error::corrupt(format!(
            "srch block blkno {}: entries use {pos} of {bytes} bytes",
            b.blkno()
        )));
    }
    Ok(out)
}

/// Every blkno of a file (parents and leaves), reading parents only.
pub async fn file_blknos(cache: &BlockCache, f: &SrchFile) -> Result<Vec<u64>> {
    check_file(f)?;
    let mut out = Vec::new();
    if f.ref_.is_null() {
        return Ok(out);
    }
    let mut level_refs = vec![f.ref_];
    let mut level = f.height - 1;
    while level > 0 {
        let mut next = Vec::new();
        for r in &level_refs {
            let b = cache.read(r, MAGIC_SRCH_PARENT).await?;
            next.extend(parent_refs(b.data())?.iter().filter(|c| !c.is_null()));
            out.push(r.blkno.get());
        }
        level_refs = next;
        level -= 1;
    }
    out.extend(level_refs.iter().map(|r| r.blkno.get()));
    if level_refs.len() as u64 != f.blocks.get() {
        return Err(Error::corrupt(format!(
            "srch file of {} blocks has {} leaves",
            f.blocks.get(),
            level_refs.len()
        )));
    }
    Ok(out)
}

/// Frees every block of `f` into `alloc` (and forgets cached copies).
pub async fn free_file(cache: &BlockCache, alloc: &mut ListAlloc, f: &SrchFile) -> Result<u64> {
    let blknos = file_blknos(cache, f).await?;
    for b in &blknos {
        alloc.free(*b).await?;
        cache.forget(*b);
    }
    Ok(blknos.len() as u64)
}

/// The leaf being appended to: kept out of the cache until it is left.
struct OpenLeaf {
    blkno: u64,
    seq: u64,
    buf: AlignedBuf,
}

/// Appends entries to a file, COWing its path.
pub struct SrchWriter<'a> {
    cache: &'a Arc<BlockCache>,
    alloc: &'a mut ListAlloc,
    pub file: SrchFile,
    cur: Option<OpenLeaf>,
    /// Leaves opened fresh by this writer.
    pub new_leaves: u64,
    /// Append into the file's last leaf when it has room (log files);
    /// otherwise every writer starts a new leaf (sorted output).
    reuse_last: bool,
}

impl<'a> SrchWriter<'a> {
    pub fn new(
        cache: &'a Arc<BlockCache>,
        alloc: &'a mut ListAlloc,
        file: SrchFile,
        reuse_last: bool,
    ) -> Result<Self> {
        check_file(&file)?;
        Ok(SrchWriter {
            cache,
            alloc,
            file,
            cur: None,
            new_leaves: 0,
            reuse_last,
        })
    }

    pub fn alloc(&mut self) -> &mut ListAlloc {
        self.alloc
    }

    /// A dirty copy of the block `r` names: itself when this cache
    /// generation dirtied it, else a copy at a new blkno (the old freed).
    async fn cow(&mut self, r: &BlockRef, magic: u32) -> Result<(u64, u64, AlignedBuf)> {
        let old = r.blkno.get();
        let b = self.cache.read(r, magic).await?;
        if self.cache.dirty_seq(old) == Some(r.seq.get()) {
            return Ok((old, r.seq.get(), b.to_buf()));
        }
        let buf = b.to_buf();
        let new = self.alloc.alloc().await?;
        self.alloc.free(old).await?;
        self.cache.forget(old);
        Ok((new, self.cache.new_seq(), buf))
    }

    async fn fresh(&mut self) -> Result<(u64, u64, AlignedBuf)> {
        let new = self.alloc.alloc().await?;
        Ok((new, self.cache.new_seq(), AlignedBuf::new(LG_BLOCK_SIZE)))
    }

    /// Makes leaf `blk` (existing or the next new one) the open leaf.
    async fn open(&mut self, blk: u64) -> Result<()> {
        let need = height_for_blk(blk);
        if need > SRCH_MAX_HEIGHT {
            return Err(Error::NoSpace("srch file too tall".into()));
        }
        while self.file.height < need {
            if self.file.height == 0 {
                self.file.height = 1;
                continue;
            }
            let (blkno, seq, mut buf) = self.fresh().await?;
            let p = SrchParent::mut_from_prefix(&mut buf[..])
                .map_err(|_| Error::corrupt("srch parent size"))?
                .0;
            p.refs[0] = self.file.ref_;
            self.cache.put_dirty(blkno, seq, MAGIC_SRCH_PARENT, buf)?;
            self.file.ref_ = BlockRef::new(blkno, seq);
            self.file.height += 1;
        }
        let mut r = self.file.ref_;
        let mut level = self.file.height - 1;
        let mut parent: Option<(u64, u64, AlignedBuf, usize)> = None;
        loop {
            let (blkno, seq, buf) = if r.is_null() {
                self.fresh().await?
            } else {
                self.cow(&r, magic_of(level)).await?
            };
            let nref = BlockRef::new(blkno, seq);
            match parent.take() {
                None => self.file.ref_ = nref,
                Some((pb, ps, mut pbuf, ind)) => {
                    SrchParent::mut_from_prefix(&mut pbuf[..])
                        .map_err(|_| Error::corrupt("srch parent size"))?
                        .0
                        .refs[ind] = nref;
                    self.cache.put_dirty(pb, ps, MAGIC_SRCH_PARENT, pbuf)?;
                }
            }
            if level == 0 {
                if r.is_null() {
                    self.new_leaves += 1;
                }
                self.cur = Some(OpenLeaf { blkno, seq, buf });
                break;
            }
            let ind = ref_index(blk, level);
            r = parent_refs(&buf)?[ind];
            parent = Some((blkno, seq, buf, ind));
            level -= 1;
        }
        self.file.blocks = self.file.blocks.get().max(blk + 1).into();
        Ok(())
    }

    /// Whether the next append starts a new leaf.
    pub fn leaf_full(&self) -> bool {
        match &self.cur {
            None => true,
            Some(l) => SrchBlockHeader::ref_from_prefix(&l.buf[..])
                .map(|(h, _)| h.entry_bytes.get() as usize > SRCH_BLOCK_SAFE_BYTES)
                .unwrap_or(true),
        }
    }

    /// Puts the open leaf into the cache as dirty.
    fn close(&mut self) -> Result<()> {
        if let Some(l) = self.cur.take() {
            self.cache
                .put_dirty(l.blkno, l.seq, MAGIC_SRCH_BLOCK, l.buf)?;
        }
        Ok(())
    }

    /// Appends one entry.
    pub async fn append(&mut self, e: &SrchEntry) -> Result<()> {
        if self.cur.is_none() {
            let blocks = self.file.blocks.get();
            let blk = if self.reuse_last && blocks > 0 {
                blocks - 1
            } else {
                blocks
            };
            self.open(blk).await?;
        }
        let full = {
            let l = self.cur.as_ref().expect("open leaf");
            let h = SrchBlockHeader::ref_from_prefix(&l.buf[..])
                .map_err(|_| Error::corrupt("srch block size"))?
                .0;
            h.entry_bytes.get() as usize > SRCH_BLOCK_SAFE_BYTES
        };
        if full {
            self.close()?;
            let blk = self.file.blocks.get();
            self.open(blk).await?;
        }
        let l = self.cur.as_mut().expect("open leaf");
        let (h, data) = SrchBlockHeader::mut_from_prefix(&mut l.buf[..])
            .map_err(|_| Error::corrupt("srch block size"))?;
        let mut enc = Vec::with_capacity(26);
        encode_entry(&mut enc, &h.tail, e);
        let at = h.entry_bytes.get() as usize;
        data.get_mut(at..at + enc.len())
            .ok_or_else(|| Error::corrupt("srch block overflow"))?
            .copy_from_slice(&enc);
        let k = entry_key(e);
        if h.entry_nr.get() == 0 {
            h.first = *e;
            h.last = *e;
        } else {
            if k < entry_key(&h.first) {
                h.first = *e;
            }
            if k > entry_key(&h.last) {
                h.last = *e;
            }
        }
        h.tail = *e;
        h.entry_nr = (h.entry_nr.get() + 1).into();
        h.entry_bytes = ((at + enc.len()) as u32).into();
        let f = &mut self.file;
        if f.entries.get() == 0 {
            f.first = *e;
            f.last = *e;
        } else {
            if k < entry_key(&f.first) {
                f.first = *e;
            }
            if k > entry_key(&f.last) {
                f.last = *e;
            }
        }
        f.entries = (f.entries.get() + 1).into();
        Ok(())
    }

    /// Closes the open leaf; the file is in `self.file`.
    pub fn finish(mut self) -> Result<SrchFile> {
        self.close()?;
        Ok(self.file)
    }
}
