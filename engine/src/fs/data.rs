//! File data: extents, reads, writes and truncation (§1.5, §7.4).
//!
//! A file's blocks (4 KiB) are mapped by DATA_EXTENT items keyed by their
//! *last* logical block and length, so "next item ≥ (ino, b)" finds the
//! extent covering block b. Value `{blkno, flags}`: blkno 0 is unmapped
//! (stored only when OFFLINE); UNWRITTEN extents are allocated but read as
//! zeros. Holes are absent items and read as zeros.
//!
//! Guarantees:
//! * Extents never overlap; after every insert an extent is merged with
//!   neighbours that are logically and physically contiguous with equal
//!   flags.
//! * Writes overwrite mapped blocks in place and allocate holes with
//!   `Transactions::alloc_data`; partial blocks are read, modified and
//!   written whole; new blocks are zero-filled, so bytes past i_size inside
//!   a mapped block are always zero (truncate zeroes the tail of the new
//!   last block) and extending a file shows zeros.
//! * Data reaches the device before the hold that maps it ends, so the
//!   commit that makes the extent durable comes after the data write (the
//!   commit flushes the data device).
//! * `online_blocks` counts mapped blocks (written or unwritten),
//!   `offline_blocks` offline unmapped ones.
//! * Truncation sets the TRUNCATE flag with the size change (by
//!   [`Fs::setattr`]) and frees extents past the size
//!   [`super::TRUNCATE_EXTENTS_PER_HOLD`] at a time, clearing the flag at
//!   the end; an interrupted truncate is finished by the next write or
//!   setattr.
//!
//! * fallocate (mode 0 and KEEP_SIZE) maps holes with UNWRITTEN extents,
//!   which read as zeros and turn written block by block as data lands.
//!
//! * A read meeting offline blocks in its range, and a write to a file
//!   with any offline block, wait for them (waiters.rs) and retry.
//!
//! Not done: preallocation, punching holes, fallocate over offline extents
//! (left offline).

use drivers::AlignedBuf;
use zerocopy::FromBytes;

use super::{
    bytes_of, io_errno, is_dir, is_reg, Batch, Fs, FsResult, QuotaAttrs, Tried, BLOCK_BYTES,
    BLOCK_SHIFT, DATA_WAIT_READ, DATA_WAIT_WRITE, MAX_FILE_BYTES, S_ISGID, S_ISUID, S_IXGRP,
    TRUNCATE_EXTENTS_PER_HOLD, WRITE_BLOCKS_PER_HOLD,
};
use crate::format::items::{
    data_extent_key, DataExtent, EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN, INODE_FLAG_TRUNCATE,
};
use crate::lock::LockMode;

/// Largest device transfer of a read, in blocks.
const READ_BLOCKS_MAX: u64 = 256;

/// fallocate mode bit: allocate without changing the size.
pub const FALLOC_FL_KEEP_SIZE: u32 = 1;
/// Most blocks one fallocate allocation step asks for (§7.4: 128 MiB).
pub const FALLOCATE_STEP_BLOCKS: u64 = (128 << 20) / BLOCK_BYTES;
/// Most extents one fallocate hold creates (§7.4).
pub const FALLOCATE_EXTENTS_PER_HOLD: usize = 8;

/// How [`Fs::write_with`] places and treats a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// O_APPEND: the data goes at the file's current end, whatever offset
    /// the caller passed (a kernel's idea of the size may be stale).
    pub append: bool,
    /// The writer lacks CAP_FSETID: clear set-user-ID, and set-group-ID
    /// when group-executable, as Linux does on write.
    pub kill_suidgid: bool,
}

/// A data extent: `len` blocks from logical block `start`, at `blkno` on
/// the data device (0 = unmapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub blkno: u64,
    pub flags: u8,
}

impl Extent {
    pub fn last(&self) -> u64 {
        self.start + self.len - 1
    }

    pub(super) fn key(&self, ino: u64) -> crate::format::Key {
        data_extent_key(ino, self.last(), self.len)
    }

    pub(super) fn val(&self) -> Vec<u8> {
        bytes_of(&DataExtent {
            blkno: self.blkno.into(),
            flags: self.flags,
            pad: [0; 7],
        })
    }

    /// The part of `self` covering `start..start+len` (inside it).
    pub(super) fn slice(&self, start: u64, len: u64) -> Extent {
        debug_assert!(start >= self.start && start + len - 1 <= self.last());
        Extent {
            start,
            len,
            blkno: if self.blkno == 0 {
                0
            } else {
                self.blkno + (start - self.start)
            },
            flags: self.flags,
        }
    }

    /// Whether `next` continues `self` logically and physically.
    fn joins(&self, next: &Extent) -> bool {
        self.last() + 1 == next.start
            && self.flags == next.flags
            && ((self.blkno == 0 && next.blkno == 0)
                || (self.blkno != 0 && self.blkno + self.len == next.blkno))
    }

    fn mapped_written(&self) -> bool {
        self.blkno != 0 && self.flags & (EXTENT_FLAG_UNWRITTEN | EXTENT_FLAG_OFFLINE) == 0
    }
}

/// Online/offline block counts an extent contributes.
pub(super) fn block_counts(e: &Extent) -> (u64, u64) {
    if e.blkno != 0 {
        (e.len, 0)
    } else if e.flags & EXTENT_FLAG_OFFLINE != 0 {
        (0, e.len)
    } else {
        (0, 0)
    }
}

impl Fs {
    /// The first extent of `ino` whose last block is ≥ `block`.
    pub(crate) async fn extent_at_or_after(
        &self,
        ino: u64,
        block: u64,
    ) -> FsResult<Option<Extent>> {
        let first = data_extent_key(ino, block, 0);
        let last = data_extent_key(ino, u64::MAX, u64::MAX);
        let Some((k, v)) = self.items.next(first, last).await? else {
            return Ok(None);
        };
        let d = DataExtent::read_from_bytes(&v).map_err(|_| libc::EIO)?;
        let (lastb, len) = (k.second, k.third);
        if len == 0 || len - 1 > lastb {
            return Err(libc::EIO);
        }
        Ok(Some(Extent {
            start: lastb - (len - 1),
            len,
            blkno: d.blkno.get(),
            flags: d.flags,
        }))
    }

    /// Every extent of `ino` (for tests and fiemap).
    pub async fn extents(&self, ino: u64) -> FsResult<Vec<Extent>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let mut out = Vec::new();
        let mut b = 0;
        while let Some(e) = self.extent_at_or_after(ino, b).await? {
            out.push(e);
            if e.last() == u64::MAX {
                break;
            }
            b = e.last() + 1;
        }
        Ok(out)
    }

    /// Inserts an extent over a range with no extents, merging it with
    /// contiguous neighbours.
    pub(super) async fn insert_extent(&self, ino: u64, e: Extent) -> FsResult<()> {
        let mut e = e;
        if e.start > 0 {
            if let Some(left) = self.extent_at_or_after(ino, e.start - 1).await? {
                if left.joins(&e) {
                    self.items.delete(left.key(ino)).await?;
                    e = Extent {
                        start: left.start,
                        len: left.len + e.len,
                        blkno: left.blkno,
                        flags: e.flags,
                    };
                }
            }
        }
        if e.last() < u64::MAX {
            if let Some(right) = self.extent_at_or_after(ino, e.last() + 1).await? {
                if e.joins(&right) {
                    self.items.delete(right.key(ino)).await?;
                    e.len += right.len;
                }
            }
        }
        self.items.create(e.key(ino), e.val()).await
    }

    /// Removes the mapping of blocks `start..=end` from up to `max`
    /// extents, keeping the pieces of partly covered extents. Returns the
    /// removed pieces and whether the whole range is clear.
    pub(super) async fn punch(
        &self,
        ino: u64,
        start: u64,
        end: u64,
        max: usize,
    ) -> FsResult<(Vec<Extent>, bool)> {
        let mut removed = Vec::new();
        let mut b = start;
        loop {
            let Some(e) = self.extent_at_or_after(ino, b).await? else {
                return Ok((removed, true));
            };
            if e.start > end {
                return Ok((removed, true));
            }
            if removed.len() >= max {
                return Ok((removed, false));
            }
            self.items.delete(e.key(ino)).await?;
            let lo = e.start.max(start);
            let hi = e.last().min(end);
            if e.start < lo {
                let left = e.slice(e.start, lo - e.start);
                self.items.create(left.key(ino), left.val()).await?;
            }
            if e.last() > hi {
                let right = e.slice(hi + 1, e.last() - hi);
                self.items.create(right.key(ino), right.val()).await?;
            }
            removed.push(e.slice(lo, hi - lo + 1));
            if hi >= end || hi == u64::MAX {
                return Ok((removed, true));
            }
            b = hi + 1;
        }
    }

    async fn dev_read(&self, blkno: u64, nblocks: u64) -> FsResult<AlignedBuf> {
        let buf = AlignedBuf::new((nblocks * BLOCK_BYTES) as usize);
        let (buf, r) = self.data_dev.read_at(blkno << BLOCK_SHIFT, buf).await;
        r.map_err(|e| io_errno(&e))?;
        Ok(buf)
    }

    async fn dev_write(&self, blkno: u64, buf: AlignedBuf) -> FsResult<()> {
        let (_, r) = self.data_dev.write_at(blkno << BLOCK_SHIFT, buf).await;
        r.map_err(|e| io_errno(&e))
    }

    /// Reads up to `len` bytes at `offset` (short at EOF); holes and
    /// unwritten blocks read as zeros, offline blocks are waited for.
    pub async fn read(&self, ino: u64, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        self.read_as(ino, offset, len, 0).await
    }

    /// [`Fs::read`] for the frontend request `tag`: offline blocks in the
    /// range are waited for (§9), interruptibly
    /// ([`Fs::interrupt_data_waiter`]).
    pub async fn read_as(&self, ino: u64, offset: u64, len: u32, tag: u64) -> FsResult<Vec<u8>> {
        loop {
            match self.read_once(ino, offset, len, tag).await? {
                Tried::Done(v) => return Ok(v),
                Tried::Wait(w) => w.await?,
            }
        }
    }

    async fn read_once(
        &self,
        ino: u64,
        offset: u64,
        len: u32,
        tag: u64,
    ) -> FsResult<Tried<'_, Vec<u8>>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let i = self.read_inode(ino).await?;
        let mode = i.mode.get();
        if is_dir(mode) {
            return Err(libc::EISDIR);
        }
        if !is_reg(mode) {
            return Err(libc::EINVAL);
        }
        let size = i.size.get();
        if offset >= size || len == 0 {
            return Ok(Tried::Done(Vec::new()));
        }
        let end = size.min(offset.saturating_add(len as u64));
        let mut out = vec![0u8; (end - offset) as usize];
        let first_block = offset >> BLOCK_SHIFT;
        let last_block = (end - 1) >> BLOCK_SHIFT;
        if i.offline_blocks.get() > 0 {
            if let Some(b) = self.first_offline(ino, first_block, last_block).await? {
                return Ok(Tried::Wait(self.data_wait(ino, b, DATA_WAIT_READ, tag)));
            }
        }
        let mut b = first_block;
        while b <= last_block {
            let Some(e) = self.extent_at_or_after(ino, b).await? else {
                break;
            };
            if e.start > last_block {
                break;
            }
            let lo = e.start.max(b);
            let hi = e.last().min(last_block);
            if e.mapped_written() {
                let mut blk = lo;
                while blk <= hi {
                    let n = (hi - blk + 1).min(READ_BLOCKS_MAX);
                    let buf = self.dev_read(e.blkno + (blk - e.start), n).await?;
                    // Copy the overlap of these blocks with offset..end.
                    let run_start = blk << BLOCK_SHIFT;
                    let run_end = (blk + n) << BLOCK_SHIFT;
                    let from = run_start.max(offset);
                    let to = run_end.min(end);
                    out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &buf[(from - run_start) as usize..(to - run_start) as usize],
                    );
                    blk += n;
                }
            }
            if hi == u64::MAX {
                break;
            }
            b = hi + 1;
        }
        Ok(Tried::Done(out))
    }

    /// Writes `data` at `offset`, extending the size; returns the bytes
    /// written. Each ≤ 1 MiB piece is its own hold.
    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_with(ino, offset, data, WriteFlags::default())
            .await
            .map(|(_, n)| n)
    }

    /// [`Fs::write`] with [`WriteFlags`]: returns where the data landed
    /// (the end of file for an append) and the bytes written.
    pub async fn write_with(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        flags: WriteFlags,
    ) -> FsResult<(u64, usize)> {
        self.write_as(ino, offset, data, flags, 0).await
    }

    /// [`Fs::write_with`] for the frontend request `tag`: a file with any
    /// offline block waits for it first (§9: data_version is per inode),
    /// interruptibly ([`Fs::interrupt_data_waiter`]).
    pub async fn write_as(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        flags: WriteFlags,
        tag: u64,
    ) -> FsResult<(u64, usize)> {
        loop {
            match self.write_once(ino, offset, data, flags, tag).await? {
                Tried::Done(r) => return Ok(r),
                Tried::Wait(w) => w.await?,
            }
        }
    }

    async fn write_once(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        flags: WriteFlags,
        tag: u64,
    ) -> FsResult<Tried<'_, (u64, usize)>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let offset = {
            let i = self.read_inode(ino).await?;
            let mode = i.mode.get();
            if is_dir(mode) {
                return Err(libc::EISDIR);
            }
            if !is_reg(mode) {
                return Err(libc::EINVAL);
            }
            self.check_retention(&i)?;
            if i.offline_blocks.get() > 0 && !data.is_empty() {
                let b = self.first_offline(ino, 0, u64::MAX).await?.unwrap_or(0);
                return Ok(Tried::Wait(self.data_wait(ino, b, DATA_WAIT_WRITE, tag)));
            }
            // The size of a pending truncate is already the new size.
            if flags.append {
                i.size.get()
            } else {
                offset
            }
        };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(libc::EFBIG)?;
        if data.is_empty() {
            return Ok(Tried::Done((offset, 0)));
        }
        self.finish_truncate(ino).await?;
        let piece = WRITE_BLOCKS_PER_HOLD * BLOCK_BYTES;
        let mut at = offset;
        while at < end {
            // Pieces end on block boundaries after the first.
            let piece_end = ((at / piece) + 1).saturating_mul(piece).min(end);
            let slice = &data[(at - offset) as usize..(piece_end - offset) as usize];
            self.write_piece(ino, at, slice, flags.kill_suidgid, false)
                .await?;
            at = piece_end;
        }
        Ok(Tried::Done((offset, data.len())))
    }

    /// Allocates unwritten extents over the holes of `offset..offset+len`
    /// (§7.4: mode 0 or [`FALLOC_FL_KEEP_SIZE`] only; no punching). Mode 0
    /// raises the size to `offset + len`. Allocation goes
    /// [`FALLOCATE_STEP_BLOCKS`] at a time, [`FALLOCATE_EXTENTS_PER_HOLD`]
    /// extents per hold. Offline extents are left as they are (they read as
    /// zeros until staged); mapped ones are kept.
    pub async fn fallocate(&self, ino: u64, mode: u32, offset: u64, len: u64) -> FsResult<()> {
        if mode & !FALLOC_FL_KEEP_SIZE != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(libc::EFBIG)?;
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        {
            let i = self.read_inode(ino).await?;
            let m = i.mode.get();
            if is_dir(m) {
                return Err(libc::EISDIR);
            }
            if !is_reg(m) {
                return Err(libc::ENODEV);
            }
            self.check_retention(&i)?;
        }
        self.finish_truncate(ino).await?;
        let last = (end - 1) >> BLOCK_SHIFT;
        let mut b = offset >> BLOCK_SHIFT;
        loop {
            self.quota_rules_locked().await?;
            let now = self.now();
            let hold = self.hold(true).await?;
            let mut bt = Batch::new(self);
            bt.load(ino).await?;
            let at = QuotaAttrs::of(bt.inode(ino));
            self.quota_check_write(ino, &at, b, last).await?;
            let mut made = 0;
            while b <= last && made < FALLOCATE_EXTENTS_PER_HOLD {
                let next = self.extent_at_or_after(ino, b).await?;
                if let Some(e) = next.filter(|e| e.start <= b) {
                    b = e.last().saturating_add(1);
                    continue;
                }
                let hole_end = match next {
                    Some(e) => (e.start - 1).min(last),
                    None => last,
                };
                let want = (hole_end - b + 1).min(FALLOCATE_STEP_BLOCKS);
                let (blkno, got) = self.trans.alloc_data(want).await?;
                if got == 0 || got > want || blkno == 0 {
                    return Err(libc::EIO);
                }
                self.insert_extent(
                    ino,
                    Extent {
                        start: b,
                        len: got,
                        blkno,
                        flags: EXTENT_FLAG_UNWRITTEN,
                    },
                )
                .await?;
                let i = bt.inode(ino);
                i.online_blocks = (i.online_blocks.get() + got).into();
                b += got;
                made += 1;
            }
            let done = b > last;
            let i = bt.inode(ino);
            if done && mode & FALLOC_FL_KEEP_SIZE == 0 && end > i.size.get() {
                i.size = end.into();
                i.mtime = now.to_disk();
                bt.data_dirty(ino);
            }
            if made > 0 || done {
                bt.inode(ino).ctime = now.to_disk();
                bt.dirty(ino);
                bt.store_all().await?;
            }
            drop(hold);
            if done {
                return Ok(());
            }
        }
    }

    pub(super) async fn write_piece(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        staging: bool,
    ) -> FsResult<()> {
        let now = self.now();
        let end = offset + data.len() as u64;
        self.quota_rules_locked().await?;
        let hold = self.hold(true).await?;
        let mut bt = Batch::new(self);
        bt.load(ino).await?;
        let at = QuotaAttrs::of(bt.inode(ino));
        self.quota_check_write(ino, &at, offset >> BLOCK_SHIFT, (end - 1) >> BLOCK_SHIFT)
            .await?;
        if kill_suidgid {
            let i = bt.inode(ino);
            let m = i.mode.get();
            let mut kill = S_ISUID;
            if m & S_IXGRP != 0 {
                kill |= S_ISGID;
            }
            i.mode = (m & !kill).into();
        }
        let old_size = bt.inode(ino).size.get();
        if offset > old_size {
            // The gap from the old EOF must read as zeros, whatever an
            // uncommitted in-place write left past it before a crash.
            self.zero_tail(ino, old_size).await?;
        }
        let first_block = offset >> BLOCK_SHIFT;
        let last_block = (end - 1) >> BLOCK_SHIFT;
        let mut b = first_block;
        while b <= last_block {
            let next = self.extent_at_or_after(ino, b).await?;
            match next {
                Some(e) if e.start <= b => {
                    let hi = e.last().min(last_block);
                    let run = e.slice(b, hi - b + 1);
                    if e.mapped_written() {
                        self.write_blocks(run.start, run.len, run.blkno, offset, data, true)
                            .await?;
                    } else if e.blkno != 0 {
                        // Unwritten: write, then mark written.
                        self.write_blocks(run.start, run.len, run.blkno, offset, data, false)
                            .await?;
                        self.punch(ino, run.start, run.last(), usize::MAX).await?;
                        self.insert_extent(ino, Extent { flags: 0, ..run }).await?;
                    } else {
                        // Offline: give the blocks storage.
                        self.punch(ino, run.start, run.last(), usize::MAX).await?;
                        let inode = bt.inode(ino);
                        inode.offline_blocks =
                            inode.offline_blocks.get().saturating_sub(run.len).into();
                        self.fill_hole(&mut bt, ino, run.start, run.len, offset, data)
                            .await?;
                    }
                    b = hi + 1;
                }
                other => {
                    let hole_end = match other {
                        Some(e) => (e.start - 1).min(last_block),
                        None => last_block,
                    };
                    self.fill_hole(&mut bt, ino, b, hole_end - b + 1, offset, data)
                        .await?;
                    b = hole_end + 1;
                }
            }
        }
        let i = bt.inode(ino);
        if end > i.size.get() {
            i.size = end.into();
        }
        if staging {
            // Stage (§9) restores content: no mtime, ctime, data_seq or
            // data_version change.
            bt.dirty(ino);
        } else {
            i.mtime = now.to_disk();
            i.ctime = now.to_disk();
            bt.data_dirty(ino);
        }
        bt.store_all().await?;
        drop(hold);
        Ok(())
    }

    /// Allocates and writes blocks `start..start+len` (no extents there).
    async fn fill_hole(
        &self,
        bt: &mut Batch<'_>,
        ino: u64,
        start: u64,
        len: u64,
        offset: u64,
        data: &[u8],
    ) -> FsResult<()> {
        let mut b = start;
        let end = start + len;
        while b < end {
            let (blkno, got) = self.trans.alloc_data(end - b).await?;
            if got == 0 || got > end - b || blkno == 0 {
                return Err(libc::EIO);
            }
            self.write_blocks(b, got, blkno, offset, data, false)
                .await?;
            self.insert_extent(
                ino,
                Extent {
                    start: b,
                    len: got,
                    blkno,
                    flags: 0,
                },
            )
            .await?;
            let i = bt.inode(ino);
            i.online_blocks = (i.online_blocks.get() + got).into();
            b += got;
        }
        Ok(())
    }

    /// Writes the part of `data` (at file `offset`) that falls in logical
    /// blocks `start..start+len`, stored from `blkno`. Partial edge blocks
    /// keep their old bytes when `old_valid`, else are zero-filled.
    async fn write_blocks(
        &self,
        start: u64,
        len: u64,
        blkno: u64,
        offset: u64,
        data: &[u8],
        old_valid: bool,
    ) -> FsResult<()> {
        let run_start = start << BLOCK_SHIFT;
        let run_end = (start + len) << BLOCK_SHIFT;
        let end = offset + data.len() as u64;
        let from = run_start.max(offset);
        let to = run_end.min(end);
        debug_assert!(from < to);
        let mut buf = AlignedBuf::new((len * BLOCK_BYTES) as usize);
        if old_valid {
            let head_partial = from > run_start;
            let tail_partial = to < run_end;
            if head_partial {
                let old = self.dev_read(blkno, 1).await?;
                buf[..BLOCK_BYTES as usize].copy_from_slice(&old);
            }
            if tail_partial && (len > 1 || !head_partial) {
                let old = self.dev_read(blkno + len - 1, 1).await?;
                let at = ((len - 1) * BLOCK_BYTES) as usize;
                buf[at..].copy_from_slice(&old);
            }
        }
        buf[(from - run_start) as usize..(to - run_start) as usize]
            .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        self.dev_write(blkno, buf).await
    }

    /// Zeroes the bytes after `size` in its block, if that block is mapped:
    /// bytes past EOF read as zeros once a file shrinks or grows past them.
    pub(crate) async fn zero_tail(&self, ino: u64, size: u64) -> FsResult<()> {
        let within = size & (BLOCK_BYTES - 1);
        if within == 0 {
            return Ok(());
        }
        let block = size >> BLOCK_SHIFT;
        let Some(e) = self.extent_at_or_after(ino, block).await? else {
            return Ok(());
        };
        if e.start > block || !e.mapped_written() {
            return Ok(());
        }
        let blkno = e.blkno + (block - e.start);
        let mut buf = self.dev_read(blkno, 1).await?;
        buf[within as usize..].fill(0);
        self.dev_write(blkno, buf).await
    }

    /// Finishes a truncate left pending by the TRUNCATE flag.
    pub(crate) async fn finish_truncate(&self, ino: u64) -> FsResult<()> {
        let i = match self.read_inode(ino).await {
            Ok(i) => i,
            Err(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if i.flags.get() & INODE_FLAG_TRUNCATE == 0 {
            return Ok(());
        }
        let from = i.size.get().div_ceil(BLOCK_BYTES);
        self.free_extents_from(ino, from).await
    }

    /// Frees every extent at or after logical block `from`, a bounded
    /// number per hold, then clears the TRUNCATE flag.
    pub(crate) async fn free_extents_from(&self, ino: u64, from: u64) -> FsResult<()> {
        loop {
            let hold = self.hold(false).await?;
            let mut bt = Batch::new(self);
            bt.load(ino).await?;
            let (removed, done) = self
                .punch(ino, from, u64::MAX, TRUNCATE_EXTENTS_PER_HOLD)
                .await?;
            let (mut online, mut offline) = (0u64, 0u64);
            for e in &removed {
                if e.blkno != 0 {
                    self.trans.free_data(e.blkno, e.len).await?;
                }
                let (on, off) = block_counts(e);
                online += on;
                offline += off;
            }
            let i = bt.inode(ino);
            let flags = i.flags.get();
            if !removed.is_empty() || (done && flags & INODE_FLAG_TRUNCATE != 0) {
                i.online_blocks = i.online_blocks.get().saturating_sub(online).into();
                i.offline_blocks = i.offline_blocks.get().saturating_sub(offline).into();
                if done {
                    i.flags = (flags & !INODE_FLAG_TRUNCATE).into();
                }
                bt.dirty(ino);
                bt.store_all().await?;
            }
            drop(hold);
            if offline > 0 {
                // Readers waiting for blocks that no longer exist retry
                // (and find a hole or EOF).
                self.wake_data_waiters(ino);
            }
            if done {
                return Ok(());
            }
        }
    }
}
