//! Archive (HSM) operations of reference §9: release, stage,
//! punch-offline, move-blocks, SET_ATTR_X (restoring stubs, retention,
//! projects), DATA_WAIT_ERR, and the retention check every changing
//! operation makes.
//!
//! Guarantees:
//! * data_version changes with content and size changes only
//!   (`Batch::data_dirty`); release, stage and punch-offline never change
//!   it, nor mtime or ctime (release and punch change only extents and
//!   block counts, so only meta_seq moves). move-blocks changes both
//!   inodes' data (the destination's not with [`MOVE_BLOCKS_STAGE`]).
//! * release, stage, punch-offline and move-blocks with STAGE fail with
//!   ESTALE unless the caller's data_version is the inode's, checked under
//!   the same op_lock as the change.
//! * Blocks released or moved away are freed through
//!   `Transactions::free_data` (data_freed: reused only after commit).
//! * Offline blocks going away (stage, punch-offline, move-blocks STAGE)
//!   wake the inode's data waiters ([`Fs::wake_data_waiters`]).
//! * A retained inode (INODE_FLAG_RETENTION, v2) refuses every change with
//!   EPERM except non-`user.` xattrs and clearing the flag.
//! * Work over many extents is split over holds of
//!   [`super::TRUNCATE_EXTENTS_PER_HOLD`] extents; each hold leaves the
//!   inode's block counts consistent with its extents.
//!
//! Open-file rules (opened for write, O_APPEND/O_DIRECT/O_DSYNC refused by
//! stage) are the frontend's: it knows the file description.
//!
//! Touches the extent helpers of data.rs, [`Batch`], the waiters and the
//! item/transaction API like every other operation.

use super::data::{block_counts, Extent};
use super::waiters::ArchiveStats;
use super::{
    is_dir, is_reg, Attr, Batch, Ctx, Fs, FsResult, Time, BLOCK_BYTES, BLOCK_SHIFT, MAX_FILE_BYTES,
    TRUNCATE_EXTENTS_PER_HOLD, WRITE_BLOCKS_PER_HOLD,
};
use super::{DATA_WAIT_ERRNO_MAX, DATA_WAIT_OPS};
use crate::format::items::{Inode, EXTENT_FLAG_OFFLINE, INODE_FLAG_RETENTION};
use crate::format::FORMAT_VERSION_V2;
use crate::lock::LockMode;

/// move-blocks flag: the destination range is offline and is being staged.
pub const MOVE_BLOCKS_STAGE: u32 = 1;

/// SET_ATTR_X's changes (`None` leaves a field alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttrX {
    /// Nonzero; only on a regular file whose data_version is still 0.
    pub data_version: Option<u64>,
    /// Requires `data_version`.
    pub size: Option<u64>,
    /// One OFFLINE extent from 0 to `size` (requires `size`).
    pub size_offline: bool,
    pub ctime: Option<Time>,
    pub crtime: Option<Time>,
    /// v2, regular files: set or clear retention.
    pub retention: Option<bool>,
    /// v2.
    pub project_id: Option<u64>,
}

fn aligned(v: u64) -> bool {
    v & (BLOCK_BYTES - 1) == 0
}

impl Fs {
    /// EPERM when `i` is under retention (§9).
    pub(crate) fn check_retention(&self, i: &Inode) -> FsResult<()> {
        if i.flags.get() & INODE_FLAG_RETENTION != 0 {
            ArchiveStats::add(&self.archive_stats.retention_denied, 1);
            return Err(libc::EPERM);
        }
        Ok(())
    }

    /// The first extent overlapping blocks `first..=last` for which
    /// `pred` holds.
    pub(crate) async fn find_extent(
        &self,
        ino: u64,
        first: u64,
        last: u64,
        pred: impl Fn(&Extent) -> bool,
    ) -> FsResult<Option<Extent>> {
        let mut b = first;
        while let Some(e) = self.extent_at_or_after(ino, b).await? {
            if e.start > last {
                break;
            }
            if pred(&e) {
                return Ok(Some(e));
            }
            if e.last() >= last {
                break;
            }
            b = e.last() + 1;
        }
        Ok(None)
    }

    /// The first block in `first..=last` of an OFFLINE extent.
    pub(crate) async fn first_offline(
        &self,
        ino: u64,
        first: u64,
        last: u64,
    ) -> FsResult<Option<u64>> {
        let e = self
            .find_extent(ino, first, last, |e| e.flags & EXTENT_FLAG_OFFLINE != 0)
            .await?;
        Ok(e.map(|e| e.start.max(first)))
    }

    /// Reads a regular file's inode for an archive operation: EISDIR on a
    /// directory, EINVAL on anything else that is not a regular file.
    async fn archive_inode(&self, ino: u64) -> FsResult<Inode> {
        let i = self.read_inode(ino).await?;
        let mode = i.mode.get();
        if is_dir(mode) {
            return Err(libc::EISDIR);
        }
        if !is_reg(mode) {
            return Err(libc::EINVAL);
        }
        Ok(i)
    }

    /// RELEASE (§9): frees the mapped blocks of `offset..offset+len` and
    /// leaves OFFLINE extents; holes and offline parts stay as they are.
    /// Once no online block is left, extents past i_size go too.
    pub async fn release_data(
        &self,
        ino: u64,
        offset: u64,
        len: u64,
        data_version: u64,
    ) -> FsResult<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset.checked_add(len).ok_or(libc::EINVAL)?;
        if !aligned(offset) || !aligned(len) {
            return Err(libc::EINVAL);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let i = self.archive_inode(ino).await?;
        if i.data_version.get() != data_version {
            return Err(libc::ESTALE);
        }
        self.check_retention(&i)?;
        self.finish_truncate(ino).await?;
        let last = (end >> BLOCK_SHIFT) - 1;
        let mut b = offset >> BLOCK_SHIFT;
        let mut released = 0;
        loop {
            let hold = self.hold(false).await?;
            let mut bt = Batch::new(self);
            bt.load(ino).await?;
            let mut n = 0;
            let mut done = false;
            while n < TRUNCATE_EXTENTS_PER_HOLD {
                let next = self.extent_at_or_after(ino, b).await?;
                let Some(e) = next.filter(|e| e.start <= last) else {
                    done = true;
                    break;
                };
                let lo = e.start.max(b);
                let hi = e.last().min(last);
                if e.blkno != 0 {
                    let (removed, _) = self.punch(ino, lo, hi, usize::MAX).await?;
                    for r in &removed {
                        self.trans.free_data(r.blkno, r.len).await?;
                    }
                    let count = hi - lo + 1;
                    self.insert_extent(
                        ino,
                        Extent {
                            start: lo,
                            len: count,
                            blkno: 0,
                            flags: EXTENT_FLAG_OFFLINE,
                        },
                    )
                    .await?;
                    let i = bt.inode(ino);
                    i.online_blocks = i.online_blocks.get().saturating_sub(count).into();
                    i.offline_blocks = (i.offline_blocks.get() + count).into();
                    released += count;
                    n += 1;
                }
                if hi >= last {
                    done = true;
                    break;
                }
                b = hi + 1;
            }
            if n > 0 {
                bt.dirty(ino);
                bt.store_all().await?;
            }
            drop(hold);
            if done {
                break;
            }
        }
        let i = self.read_inode(ino).await?;
        if i.online_blocks.get() == 0 {
            self.free_extents_from(ino, i.size.get().div_ceil(BLOCK_BYTES))
                .await?;
        }
        ArchiveStats::add(&self.archive_stats.release, 1);
        ArchiveStats::add(&self.archive_stats.release_blocks, released);
        Ok(())
    }

    /// STAGE (§9): writes `data` at `offset`, turning offline blocks
    /// online, without changing mtime, ctime, data_seq or data_version.
    /// `offset` is block aligned; the end is ≤ i_size and block aligned
    /// unless it is i_size. Returns the bytes staged.
    pub async fn stage(
        &self,
        ino: u64,
        data_version: u64,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EINVAL)?;
        if !aligned(offset) {
            return Err(libc::EINVAL);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let i = self.archive_inode(ino).await?;
        let size = i.size.get();
        if end > size || (!aligned(end) && end != size) {
            return Err(libc::EINVAL);
        }
        if i.data_version.get() != data_version {
            return Err(libc::ESTALE);
        }
        self.check_retention(&i)?;
        self.finish_truncate(ino).await?;
        let before = i.offline_blocks.get();
        let piece = WRITE_BLOCKS_PER_HOLD * BLOCK_BYTES;
        let mut at = offset;
        while at < end {
            let piece_end = at.saturating_add(piece).min(end);
            let slice = &data[(at - offset) as usize..(piece_end - offset) as usize];
            self.write_piece(ino, at, slice, false, true).await?;
            at = piece_end;
        }
        let after = self.read_inode(ino).await?.offline_blocks.get();
        ArchiveStats::add(&self.archive_stats.stage, 1);
        ArchiveStats::add(
            &self.archive_stats.stage_blocks,
            (end - offset).div_ceil(BLOCK_BYTES),
        );
        if after < before {
            self.wake_data_waiters(ino);
        }
        Ok(data.len())
    }

    /// PUNCH_OFFLINE (§9): unmapped offline extents in the range become
    /// sparse. EINVAL (and nothing changed) if the range holds mapped
    /// blocks.
    pub async fn punch_offline(
        &self,
        ino: u64,
        offset: u64,
        len: u64,
        data_version: u64,
    ) -> FsResult<()> {
        let end = offset.checked_add(len).ok_or(libc::EOVERFLOW)?;
        if !aligned(offset) || !aligned(len) {
            return Err(libc::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let i = self.archive_inode(ino).await?;
        if i.data_version.get() != data_version {
            return Err(libc::ESTALE);
        }
        self.check_retention(&i)?;
        let (first, last) = (offset >> BLOCK_SHIFT, (end >> BLOCK_SHIFT) - 1);
        // Refuse before changing anything.
        if self
            .find_extent(ino, first, last, |e| e.blkno != 0)
            .await?
            .is_some()
        {
            return Err(libc::EINVAL);
        }
        let mut punched = 0;
        loop {
            let hold = self.hold(false).await?;
            let mut bt = Batch::new(self);
            bt.load(ino).await?;
            let (removed, done) = self
                .punch(ino, first, last, TRUNCATE_EXTENTS_PER_HOLD)
                .await?;
            let offline: u64 = removed.iter().map(|e| block_counts(e).1).sum();
            if !removed.is_empty() {
                let i = bt.inode(ino);
                i.offline_blocks = i.offline_blocks.get().saturating_sub(offline).into();
                bt.dirty(ino);
                bt.store_all().await?;
            }
            punched += offline;
            drop(hold);
            if done {
                break;
            }
        }
        ArchiveStats::add(&self.archive_stats.punch_offline, 1);
        if punched > 0 {
            self.wake_data_waiters(ino);
        }
        Ok(())
    }

    /// MOVE_BLOCKS (§9): moves the extents of `from`'s
    /// `from_off..from_off+len` to `to` at `to_off` without copying data.
    /// Offsets are block multiples; `len` too unless the range ends at
    /// `from`'s EOF. The destination range must hold no extents, or with
    /// [`MOVE_BLOCKS_STAGE`] only offline ones and `to`'s data_version
    /// must be `data_version` (ESTALE). Offline source blocks: ENODATA.
    #[allow(clippy::too_many_arguments)]
    pub async fn move_blocks(
        &self,
        from: u64,
        from_off: u64,
        len: u64,
        to: u64,
        to_off: u64,
        data_version: u64,
        flags: u32,
    ) -> FsResult<()> {
        if flags & !MOVE_BLOCKS_STAGE != 0 {
            return Err(libc::EINVAL);
        }
        let stage = flags & MOVE_BLOCKS_STAGE != 0;
        if len == 0 {
            return Ok(());
        }
        if from_off.checked_add(len).is_none() || to_off.checked_add(len).is_none() {
            return Err(libc::EOVERFLOW);
        }
        if from == to {
            return Err(libc::EINVAL);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[from, to], LockMode::Write).await?;
        let fi = self.archive_inode(from).await?;
        let ti = self.archive_inode(to).await?;
        let from_size = fi.size.get();
        if !aligned(from_off) || !aligned(to_off) || (!aligned(len) && from_off + len != from_size)
        {
            return Err(libc::EINVAL);
        }
        if stage && ti.data_version.get() != data_version {
            return Err(libc::ESTALE);
        }
        self.check_retention(&fi)?;
        self.check_retention(&ti)?;
        if from_off >= from_size {
            return Ok(());
        }
        let bytes = len.min(from_size - from_off);
        let count = bytes.div_ceil(BLOCK_BYTES);
        let from_first = from_off >> BLOCK_SHIFT;
        let from_last = from_first + count - 1;
        let to_first = to_off >> BLOCK_SHIFT;
        if to_off + bytes > MAX_FILE_BYTES {
            return Err(libc::EOVERFLOW);
        }
        let to_last = to_first + count - 1;
        self.finish_truncate(from).await?;
        self.finish_truncate(to).await?;
        // Refuse before changing anything.
        if self
            .first_offline(from, from_first, from_last)
            .await?
            .is_some()
        {
            return Err(libc::ENODATA);
        }
        let occupied = |e: &Extent| !stage || e.blkno != 0 || e.flags & EXTENT_FLAG_OFFLINE == 0;
        if self
            .find_extent(to, to_first, to_last, occupied)
            .await?
            .is_some()
        {
            return Err(libc::EINVAL);
        }
        let mut staged = false;
        loop {
            let now = self.now();
            let hold = self.hold(false).await?;
            let mut bt = Batch::new(self);
            bt.load(from).await?;
            bt.load(to).await?;
            let (removed, done) = self
                .punch(from, from_first, from_last, TRUNCATE_EXTENTS_PER_HOLD)
                .await?;
            for e in &removed {
                let dest = to_first + (e.start - from_first);
                if stage {
                    let (gone, _) = self.punch(to, dest, dest + e.len - 1, usize::MAX).await?;
                    let offline: u64 = gone.iter().map(|g| block_counts(g).1).sum();
                    let t = bt.inode(to);
                    t.offline_blocks = t.offline_blocks.get().saturating_sub(offline).into();
                    staged |= offline > 0;
                }
                self.insert_extent(to, Extent { start: dest, ..*e }).await?;
                let (online, _) = block_counts(e);
                let f = bt.inode(from);
                f.online_blocks = f.online_blocks.get().saturating_sub(online).into();
                let t = bt.inode(to);
                t.online_blocks = (t.online_blocks.get() + online).into();
            }
            if done {
                let f = bt.inode(from);
                f.mtime = now.to_disk();
                f.ctime = now.to_disk();
                bt.data_dirty(from);
                if stage {
                    bt.dirty(to);
                } else {
                    let t = bt.inode(to);
                    let new_end = to_off + bytes;
                    if new_end > t.size.get() {
                        t.size = new_end.into();
                    }
                    t.mtime = now.to_disk();
                    t.ctime = now.to_disk();
                    bt.data_dirty(to);
                }
            } else {
                bt.dirty(from);
                bt.dirty(to);
            }
            bt.store_all().await?;
            drop(hold);
            if done {
                break;
            }
        }
        ArchiveStats::add(&self.archive_stats.move_blocks, 1);
        if staged {
            self.wake_data_waiters(to);
        }
        Ok(())
    }

    /// SET_ATTR_X / SETATTR_MORE (§9): CAP_SYS_ADMIN only. Restores a stub
    /// (data_version, size, an offline extent) on a regular file whose
    /// data_version is still 0 and that holds no data, sets ctime/crtime,
    /// retention and the project. On a retained inode only a call that
    /// clears retention is allowed.
    pub async fn set_attr_x(&self, ctx: &Ctx, ino: u64, set: &SetAttrX) -> FsResult<Attr> {
        if !ctx.cap_sys_admin {
            return Err(libc::EPERM);
        }
        if (set.retention.is_some() || set.project_id.is_some())
            && self.fmt_vers < FORMAT_VERSION_V2
        {
            return Err(libc::EOPNOTSUPP);
        }
        if set.data_version == Some(0)
            || (set.size.is_some() && set.data_version.is_none())
            || (set.size_offline && set.size.is_none())
        {
            return Err(libc::EINVAL);
        }
        if set.size.is_some_and(|s| s > MAX_FILE_BYTES) {
            return Err(libc::EFBIG);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let i = self.read_inode(ino).await?;
        let mode = i.mode.get();
        if set.retention.is_some() && !is_reg(mode) {
            return Err(libc::EINVAL);
        }
        if set.retention != Some(false) {
            self.check_retention(&i)?;
        }
        if set.data_version.is_some() {
            if !is_reg(mode) {
                return Err(libc::EINVAL);
            }
            if i.data_version.get() != 0
                || i.size.get() != 0
                || i.online_blocks.get() != 0
                || i.offline_blocks.get() != 0
            {
                return Err(libc::EINVAL);
            }
            self.finish_truncate(ino).await?;
        }
        let hold = self.hold(false).await?;
        let mut bt = Batch::new(self);
        bt.load(ino).await?;
        if let (Some(size), true) = (set.size, set.size_offline) {
            let blocks = size.div_ceil(BLOCK_BYTES);
            if blocks > 0 {
                self.insert_extent(
                    ino,
                    Extent {
                        start: 0,
                        len: blocks,
                        blkno: 0,
                        flags: EXTENT_FLAG_OFFLINE,
                    },
                )
                .await?;
                bt.inode(ino).offline_blocks = blocks.into();
            }
        }
        let i = bt.inode(ino);
        if let Some(v) = set.data_version {
            i.data_version = v.into();
        }
        if let Some(s) = set.size {
            i.size = s.into();
        }
        if let Some(t) = set.ctime {
            i.ctime = t.to_disk();
        }
        if let Some(t) = set.crtime {
            i.crtime = t.to_disk();
        }
        match set.retention {
            Some(true) => i.flags = (i.flags.get() | INODE_FLAG_RETENTION).into(),
            Some(false) => i.flags = (i.flags.get() & !INODE_FLAG_RETENTION).into(),
            None => {}
        }
        if let Some(p) = set.project_id {
            i.proj = p.into();
        }
        bt.dirty(ino);
        bt.store_all().await?;
        drop(hold);
        let i = self.read_inode(ino).await?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// DATA_WAIT_ERR (§9): fails the waiters of `ino` on the blocks of
    /// `offset..offset+count` whose op is in `ops` with `err` (a positive
    /// errno ≤ [`DATA_WAIT_ERRNO_MAX`]); returns how many. ESTALE if the
    /// inode is gone or its data_version is not `data_version`.
    pub async fn data_wait_err(
        &self,
        ino: u64,
        data_version: u64,
        offset: u64,
        count: u64,
        ops: u8,
        err: i32,
    ) -> FsResult<u64> {
        if count == 0
            || offset.checked_add(count).is_none()
            || ops == 0
            || ops & !DATA_WAIT_OPS != 0
            || !(1..=DATA_WAIT_ERRNO_MAX).contains(&err)
        {
            return Err(libc::EINVAL);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let i = match self.read_inode(ino).await {
            Err(libc::ENOENT) => return Err(libc::ESTALE),
            r => r?,
        };
        if !is_reg(i.mode.get()) {
            return Err(libc::EINVAL);
        }
        if i.data_version.get() != data_version {
            return Err(libc::ESTALE);
        }
        let first = offset >> BLOCK_SHIFT;
        let last = (offset + count - 1) >> BLOCK_SHIFT;
        let n = self.waiters.fail(ino, first, last, ops, err);
        ArchiveStats::add(&self.archive_stats.data_wait_err, n);
        Ok(n)
    }
}
