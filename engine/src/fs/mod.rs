//! One mount's filesystem operations over items: the API the frontends call.
//!
//! [`Fs`] turns POSIX operations (lookup, getattr/setattr, create, link,
//! unlink, rename, readdir, symlinks, xattrs, file data) into the items of
//! reference §1.5 and the rules of §7, §8.1 and §9. It is transport-agnostic:
//! node ids are scoutfs inode numbers (root = 1), every call is async and
//! fails with a positive errno, and the caller (FUSE, tests, a control socket)
//! passes the caller's identity in a [`Ctx`] and the wall clock in as a
//! [`Clock`], so tests are deterministic.
//!
//! Guarantees:
//! * Each operation's item changes are made under one
//!   [`Transactions::hold`], so they commit together — except truncation and
//!   inode deletion, which free extents over as many holds as needed with the
//!   inode's `TRUNCATE` flag (or orphan item) marking the unfinished work, as
//!   §7.4/§7.5 require. A pending truncate is finished before any later write
//!   or setattr of the inode.
//! * Every inode write sets `meta_seq` to the open transaction's seq and
//!   moves the META_SEQ index item (force-delete old, force-create new);
//!   content or size changes of regular files also move `data_seq` (DATA_SEQ
//!   item) and bump `data_version`. `version` (i_version) counts every write
//!   of the inode item.
//! * The orphan item exists exactly while nlink is 0 and the inode's items
//!   exist. An unlinked inode's items are deleted when nothing holds it open
//!   (see [`Fs::open`]/[`Fs::release`]).
//! * Archive features (archive.rs, waiters.rs): release/stage/punch/move
//!   keep data_version (§9); a retained inode refuses every change with
//!   EPERM ([`Fs::check_retention`]); reads, writes and size changes that
//!   meet offline data wait without holding op_lock.
//! * Operations of one `Fs` are serialised by one async mutex (the per-inode
//!   locks and cluster locks of the original come with the node layer); a
//!   group of item changes is never observed half-done by another call of
//!   the same `Fs`.
//!
//! Errors: an item-layer error *before* an operation's first item change
//! leaves nothing changed; one *after* it (ENOSPC from a full log tree, EIO)
//! leaves the open transaction holding a partial group, and the mount should
//! be treated as failed (the original shuts the filesystem down there too).
//!
//! Not done here: permission checks (the frontend checks with the caller's
//! uid/gid/groups, e.g. FUSE `default_permissions`), POSIX ACL enforcement
//! (ACL xattrs are stored like any other), data preallocation, atime updates on read (atime
//! changes only through
//! setattr).
//!
//! Quota rules are enforced here (`quota.rs`) over the stable-root reader
//! the frontend gives with [`Fs::set_stable_items`].
//!
//! Touches only [`crate::item::api`] (items, transactions, allocation),
//! [`crate::weak`] (the stable-root reader trait),
//! [`crate::format`] (encodings) and the data device ([`drivers::BlockDevice`]).

mod archive;
mod data;
mod dir;
pub mod locking;
mod query;
mod quota;
mod waiters;
mod xattr;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use drivers::BlockDevice;
use futures::lock::Mutex as AsyncMutex;
use zerocopy::IntoBytes;

use crate::format::items::{
    data_seq_key, inode_key, meta_seq_key, orphan_key, Inode, INODE_FLAG_TRUNCATE,
};
use crate::format::quorum::Timespec;
use crate::format::FORMAT_VERSION_V2;
use crate::item::api::{HoldGuard, Items, Transactions};
use crate::lock::LockMode;
use locking::{lock_inodes, FsLocks, Held, LocalLocks};

pub use archive::{SetAttrX, MOVE_BLOCKS_STAGE};
pub use data::{
    Extent, WriteFlags, FALLOCATE_EXTENTS_PER_HOLD, FALLOCATE_STEP_BLOCKS, FALLOC_FL_KEEP_SIZE,
};
pub use dir::{
    entry_header, linux_dtype, mode_dt, DirEntry, RENAME_EXCHANGE, RENAME_NOREPLACE,
    RENAME_WHITEOUT,
};
pub use query::{IndexKind, InoPath, RefEntry, INODE_GROUP_NR, PATH_BYTES_MAX};
pub use quota::{governing_rule, rule_order, rule_valid, QuotaAttrs, TagCounters, QUOTA_VALIDITY};
pub use waiters::{
    ArchiveStats, DataWait, DataWaiting, DATA_WAIT_CHANGE_SIZE, DATA_WAIT_ERRNO_MAX, DATA_WAIT_OPS,
    DATA_WAIT_READ, DATA_WAIT_WRITE,
};
pub use xattr::{parse_tags, parse_u64, Tags, XATTR_CREATE, XATTR_REPLACE};

/// Result of a filesystem operation: errors are positive errnos.
pub type FsResult<T> = Result<T, i32>;

/// One attempt of an operation that may have to wait for offline data:
/// done, or a registered wait to await (locks already dropped) before the
/// operation is tried again.
pub(crate) enum Tried<'a, T> {
    Done(T),
    Wait(DataWait<'a>),
}

/// The root directory's inode number (and FUSE node id).
pub const ROOT_INO: u64 = crate::format::items::ROOT_INO;
/// Bytes per data block (the small block, 4 KiB units on the data device).
pub const BLOCK_BYTES: u64 = 4096;
pub const BLOCK_SHIFT: u32 = 12;
/// Largest file size (Linux `MAX_LFS_FILESIZE` on 64-bit).
pub const MAX_FILE_BYTES: u64 = i64::MAX as u64;
/// Inode numbers asked of the server per refill (§7.1: `ALLOC_INODES(10240)`).
pub const INODE_POOL_REFILL: u64 = 10240;
/// Target length of a symlink, without its NUL (the stored size is this + 1).
pub const SYMLINK_MAX_BYTES: usize = 4095;
/// Extent items freed per transaction hold by truncate and deletion.
pub const TRUNCATE_EXTENTS_PER_HOLD: usize = 64;
/// Orphans one scanner pass looks at.
pub const ORPHAN_SCAN_BATCH: usize = 1024;
/// Blocks written per transaction hold: a larger write takes several holds.
pub const WRITE_BLOCKS_PER_HOLD: u64 = 256;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

pub(crate) fn is_dir(mode: u32) -> bool {
    mode & S_IFMT == S_IFDIR
}

pub(crate) fn is_reg(mode: u32) -> bool {
    mode & S_IFMT == S_IFREG
}

pub(crate) fn is_lnk(mode: u32) -> bool {
    mode & S_IFMT == S_IFLNK
}

/// Wall-clock time as inodes store it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: u64,
    pub nsec: u32,
}

impl Time {
    fn to_disk(self) -> Timespec {
        Timespec {
            sec: self.sec.into(),
            nsec: self.nsec.into(),
            pad: [0; 4],
        }
    }

    fn from_disk(ts: &Timespec) -> Time {
        Time {
            sec: ts.sec.get(),
            nsec: ts.nsec.get(),
        }
    }
}

/// Where [`Fs`] reads the wall clock (Runtime-independent, so tests can pass
/// a deterministic one).
pub type Clock = Box<dyn Fn() -> Time + Send + Sync>;

/// The caller of an operation: new inodes are owned by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    /// Applied to the mode of new inodes (0 when the frontend already did).
    pub umask: u32,
    /// CAP_SYS_ADMIN: required for `scoutfs.` xattr tags.
    pub cap_sys_admin: bool,
}

/// What getattr returns: POSIX attributes plus the scoutfs extras.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// 512-byte units, counting online and offline blocks (cli-contract).
    pub blocks: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub meta_seq: u64,
    pub data_seq: u64,
    pub data_version: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    pub proj: u64,
    pub flags: u32,
}

impl Attr {
    fn from_inode(ino: u64, i: &Inode) -> Attr {
        let online = i.online_blocks.get();
        let offline = i.offline_blocks.get();
        Attr {
            ino,
            size: i.size.get(),
            blocks: online
                .saturating_add(offline)
                .saturating_mul(BLOCK_BYTES / 512),
            mode: i.mode.get(),
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            rdev: i.rdev.get(),
            atime: Time::from_disk(&i.atime),
            mtime: Time::from_disk(&i.mtime),
            ctime: Time::from_disk(&i.ctime),
            crtime: Time::from_disk(&i.crtime),
            meta_seq: i.meta_seq.get(),
            data_seq: i.data_seq.get(),
            data_version: i.data_version.get(),
            online_blocks: online,
            offline_blocks: offline,
            proj: i.proj.get(),
            flags: i.flags.get(),
        }
    }
}

/// A time to set: the caller's clock, or a given time (utimensat's
/// UTIME_NOW vs. a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Time),
}

/// setattr's changes; `None` leaves a field alone. ctime becomes `ctime`
/// or, when absent, now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (and suid/sgid/sticky); the file type never changes.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Regular files only: truncates or extends.
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<Time>,
}

/// Mount-local state outside the items.
#[derive(Default)]
struct State {
    /// Open handles (or other references the frontend takes) per inode.
    opens: BTreeMap<u64, u64>,
    /// The local inode number pool: `next..end`.
    ino_next: u64,
    ino_end: u64,
}

/// One mount's filesystem. See the module comment.
pub struct Fs {
    items: Arc<dyn Items>,
    trans: Arc<dyn Transactions>,
    data_dev: Arc<dyn BlockDevice>,
    fmt_vers: u64,
    clock: Clock,
    locks: Arc<dyn FsLocks>,
    op_lock: AsyncMutex<()>,
    state: Mutex<State>,
    /// Tasks waiting for offline data (waiters.rs).
    waiters: waiters::Waiters,
    archive_stats: ArchiveStats,
    quota: Mutex<quota::QuotaState>,
    tag_counters: TagCounters,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("fmt_vers", &self.fmt_vers)
            .finish()
    }
}

/// An io::Error from the data device as an errno.
pub(crate) fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Fs {
    /// A filesystem over a mount's items and transactions and the volume's
    /// data device, for a volume of format version `fmt_vers`.
    pub fn new(
        items: Arc<dyn Items>,
        trans: Arc<dyn Transactions>,
        data_dev: Arc<dyn BlockDevice>,
        fmt_vers: u64,
        clock: Clock,
    ) -> Fs {
        Self::with_locks(
            items,
            trans,
            data_dev,
            fmt_vers,
            clock,
            Arc::new(LocalLocks),
        )
    }

    /// [`Fs::new`] for a mount that shares its volume: every operation
    /// takes its cluster locks from `locks` (see [`locking`]).
    pub fn with_locks(
        items: Arc<dyn Items>,
        trans: Arc<dyn Transactions>,
        data_dev: Arc<dyn BlockDevice>,
        fmt_vers: u64,
        clock: Clock,
        locks: Arc<dyn FsLocks>,
    ) -> Fs {
        Fs {
            items,
            trans,
            data_dev,
            fmt_vers,
            clock,
            locks,
            op_lock: AsyncMutex::new(()),
            state: Mutex::new(State::default()),
            waiters: waiters::Waiters::default(),
            archive_stats: ArchiveStats::default(),
            quota: Mutex::new(quota::QuotaState::default()),
            tag_counters: TagCounters::default(),
        }
    }

    pub fn fmt_vers(&self) -> u64 {
        self.fmt_vers
    }

    /// The xattr-tag and quota counters.
    pub fn tag_counters(&self) -> &TagCounters {
        &self.tag_counters
    }

    fn now(&self) -> Time {
        (self.clock)()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the inode groups of `inos` for this operation.
    pub(crate) async fn lock(&self, inos: &[u64], mode: LockMode) -> FsResult<Held> {
        lock_inodes(&self.locks, inos, mode).await
    }

    /// Locks `base` and the inodes that `names` (directory, name) name,
    /// rechecking the names once everything is held: an entry may change
    /// while we wait. A name that names nothing adds nothing.
    pub(crate) async fn lock_named(
        &self,
        base: &[u64],
        names: &[(u64, &[u8])],
        mode: LockMode,
    ) -> FsResult<Held> {
        let mut want = base.to_vec();
        loop {
            let held = self.lock(&want, mode).await?;
            let mut found = base.to_vec();
            for (dir, name) in names {
                if let Some(ino) = self.resolve_name(*dir, name).await? {
                    found.push(ino);
                }
            }
            let covered = found.iter().all(|i| {
                want.iter().any(|w| {
                    w / crate::lock::LOCK_INODE_GROUP_NR == i / crate::lock::LOCK_INODE_GROUP_NR
                })
            });
            if covered {
                return Ok(held);
            }
            drop(held);
            want = found;
        }
    }

    async fn hold(&self, allocating: bool) -> FsResult<HoldGuard> {
        self.trans.hold(allocating).await
    }

    /// Reads and decodes an inode item: ENOENT if absent, EIO if corrupt.
    async fn read_inode(&self, ino: u64) -> FsResult<Inode> {
        let val = self
            .items
            .lookup(inode_key(ino))
            .await?
            .ok_or(libc::ENOENT)?;
        Inode::decode(&val, self.fmt_vers).map_err(|_| libc::EIO)
    }

    /// Takes a number from the local inode pool, refilling it from the
    /// server (outside any hold, as the original does).
    async fn alloc_ino(&self) -> FsResult<u64> {
        {
            let mut st = self.state();
            if st.ino_next < st.ino_end {
                st.ino_next += 1;
                return Ok(st.ino_next - 1);
            }
        }
        let (first, count) = self.trans.alloc_inodes(INODE_POOL_REFILL).await?;
        if count == 0 {
            return Err(libc::ENOSPC);
        }
        let mut st = self.state();
        st.ino_next = first + 1;
        st.ino_end = first + count;
        Ok(first)
    }

    /// Attributes of an inode.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let i = self.read_inode(ino).await?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Changes attributes; a size change truncates or extends a regular
    /// file (§7.4: the TRUNCATE flag is set with the size change, extents are
    /// freed over as many holds as needed, then the flag is cleared).
    pub async fn setattr(&self, ino: u64, set: &SetAttr) -> FsResult<Attr> {
        self.setattr_as(ino, set, 0).await
    }

    /// [`Fs::setattr`] for the frontend request `tag`: a size change to a
    /// nonzero size of a file with offline blocks waits for them (§9),
    /// interruptibly ([`Fs::interrupt_data_waiter`]).
    pub async fn setattr_as(&self, ino: u64, set: &SetAttr, tag: u64) -> FsResult<Attr> {
        loop {
            match self.setattr_once(ino, set, tag).await? {
                Tried::Done(a) => return Ok(a),
                Tried::Wait(w) => w.await?,
            }
        }
    }

    async fn setattr_once(&self, ino: u64, set: &SetAttr, tag: u64) -> FsResult<Tried<'_, Attr>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        {
            let cur = self.read_inode(ino).await?;
            self.check_retention(&cur)?;
            if set.size.is_some_and(|s| s > 0) && cur.offline_blocks.get() > 0 {
                let b = self.first_offline(ino, 0, u64::MAX).await?.unwrap_or(0);
                return Ok(Tried::Wait(self.data_wait(
                    ino,
                    b,
                    DATA_WAIT_CHANGE_SIZE,
                    tag,
                )));
            }
        }
        self.finish_truncate(ino).await?;
        let now = self.now();
        let hold = self.hold(false).await?;
        let mut b = Batch::new(self);
        b.load(ino).await?;
        let mode = b.inode(ino).mode.get();
        if let Some(size) = set.size {
            if is_dir(mode) {
                return Err(libc::EISDIR);
            }
            if !is_reg(mode) {
                return Err(libc::EINVAL);
            }
            if size > MAX_FILE_BYTES {
                return Err(libc::EFBIG);
            }
        }
        let mut truncating = false;
        if let Some(size) = set.size {
            let old = b.inode(ino).size.get();
            if size < old {
                self.zero_tail(ino, size).await?;
                truncating = true;
            } else if size > old {
                // Bytes past the old EOF in its block may hold data of an
                // in-place write that never committed (a crash): the
                // extended range must read as zeros.
                self.zero_tail(ino, old).await?;
            }
            let i = b.inode(ino);
            i.size = size.into();
            if truncating {
                i.flags = (i.flags.get() | INODE_FLAG_TRUNCATE).into();
            }
            // Linux updates mtime/ctime on every truncate(2), even to the
            // same size.
            i.mtime = now.to_disk();
            b.data_dirty(ino);
        }
        let i = b.inode(ino);
        if let Some(m) = set.mode {
            i.mode = ((mode & S_IFMT) | (m & !S_IFMT)).into();
        }
        let owner_change =
            set.uid.is_some_and(|u| u != i.uid.get()) || set.gid.is_some_and(|g| g != i.gid.get());
        if let Some(u) = set.uid {
            i.uid = u.into();
        }
        if let Some(g) = set.gid {
            i.gid = g.into();
        }
        if owner_change && set.mode.is_none() && !is_dir(mode) {
            // chown clears set-user-ID, and set-group-ID when it means
            // "group executable" rather than mandatory locking.
            let m = i.mode.get();
            let mut kill = S_ISUID;
            if m & S_IXGRP != 0 {
                kill |= S_ISGID;
            }
            i.mode = (m & !kill).into();
        }
        match set.atime {
            Some(SetTime::Now) => i.atime = now.to_disk(),
            Some(SetTime::At(t)) => i.atime = t.to_disk(),
            None => {}
        }
        match set.mtime {
            Some(SetTime::Now) => i.mtime = now.to_disk(),
            Some(SetTime::At(t)) => i.mtime = t.to_disk(),
            None => {}
        }
        i.ctime = set.ctime.unwrap_or(now).to_disk();
        b.dirty(ino);
        b.store_all().await?;
        drop(hold);
        if truncating {
            self.finish_truncate(ino).await?;
        }
        let i = self.read_inode(ino).await?;
        Ok(Tried::Done(Attr::from_inode(ino, &i)))
    }

    /// Makes everything done so far durable.
    pub async fn fsync(&self) -> FsResult<()> {
        self.trans.sync().await
    }

    /// Takes a reference that keeps an unlinked inode's items alive (an
    /// open file handle; a frontend may also count kernel lookups here).
    pub async fn open(&self, ino: u64) -> FsResult<Attr> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let i = self.read_inode(ino).await?;
        *self.state().opens.entry(ino).or_insert(0) += 1;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Takes a reference like [`Fs::open`] on an inode an operation just
    /// returned, without reading it: a frontend's kernel lookup count (FUSE
    /// counts a lookup for every entry it replies with). Dropped with
    /// [`Fs::release`]. Taking it on an inode a racing unlink already
    /// deleted is harmless: its release finds nothing to delete.
    pub fn grab(&self, ino: u64) {
        *self.state().opens.entry(ino).or_insert(0) += 1;
    }

    /// Drops a reference taken by [`Fs::open`]; the last one of an unlinked
    /// inode deletes its items.
    pub async fn release(&self, ino: u64) -> FsResult<()> {
        let _op = self.op_lock.lock().await;
        let last = {
            let mut st = self.state();
            match st.opens.get_mut(&ino) {
                None => return Err(libc::EBADF),
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    st.opens.remove(&ino);
                    true
                }
            }
        };
        if last {
            // Most closes find a linked inode: a READ lock answers that
            // without taking the group from other mounts.
            let unlinked = {
                let _locks = self.lock(&[ino], LockMode::Read).await?;
                matches!(self.read_inode(ino).await, Ok(i) if i.nlink.get() == 0)
            };
            if unlinked {
                let _locks = self.lock(&[ino], LockMode::Write).await?;
                self.delete_if_unlinked(ino).await?;
            }
        }
        Ok(())
    }

    /// How many references [`Fs::open`] holds on `ino`.
    pub fn open_count(&self, ino: u64) -> u64 {
        self.state().opens.get(&ino).copied().unwrap_or(0)
    }

    /// For the orphan scanner: deletes an unlinked inode's items unless this
    /// mount holds it open. Ok(true) if it deleted them.
    pub async fn try_delete_orphan(&self, ino: u64) -> FsResult<bool> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        if self.open_count(ino) != 0 {
            return Ok(false);
        }
        self.delete_if_unlinked(ino).await
    }

    /// The orphan scanner's pass (§7.5): every inode with an orphan item
    /// that no mount holds is deleted. Orphans are read from committed
    /// state without a lock (what this mount cached of them is forgotten
    /// first); each candidate is then checked and deleted under its
    /// group's WRITE lock, so a racing link or open elsewhere wins. Picks
    /// up what a crashed mount left, and inodes another mount held when
    /// their last name went. Returns how many were deleted.
    pub async fn scan_orphans(&self) -> FsResult<usize> {
        let last = orphan_key(u64::MAX);
        let mut from = orphan_key(0);
        self.items.forget(from, last);
        let mut found = Vec::new();
        while let Some((k, _)) = self.items.next(from, last).await? {
            found.push(k.second);
            if k.second == u64::MAX || found.len() >= ORPHAN_SCAN_BATCH {
                break;
            }
            from = orphan_key(k.second + 1);
        }
        let mut deleted = 0;
        for ino in found {
            if self.try_delete_orphan(ino).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Whether no mount holds `ino` (this one by open or lookup
    /// references, others by the open-inode map): only then may an
    /// unlinked inode's items go (§7.5). Asked under a WRITE lock of the
    /// inode's group.
    async fn unused(&self, ino: u64) -> FsResult<bool> {
        Ok(self.open_count(ino) == 0 && !self.locks.cached_elsewhere(ino).await?)
    }

    /// The inodes of group `group_nr` (1024 inodes) this mount holds
    /// references on: what it answers to another mount's open-inode map
    /// query.
    pub fn cached_in_group(&self, group_nr: u64) -> Vec<u64> {
        let first = group_nr.saturating_mul(crate::lock::LOCK_INODE_GROUP_NR);
        let last = first.saturating_add(crate::lock::LOCK_INODE_GROUP_NR - 1);
        self.state()
            .opens
            .range(first..=last)
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| *i)
            .collect()
    }

    async fn delete_if_unlinked(&self, ino: u64) -> FsResult<bool> {
        match self.read_inode(ino).await {
            Ok(i) if i.nlink.get() == 0 => {
                if !self.unused(ino).await? {
                    return Ok(false);
                }
                self.delete_inode(ino).await?;
                Ok(true)
            }
            Ok(_) | Err(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes an unlinked inode's items (§7.5): extents over their own
    /// holds, then xattrs with their side effects, then index, symlink,
    /// orphan and inode items together.
    async fn delete_inode(&self, ino: u64) -> FsResult<()> {
        self.free_extents_from(ino, 0).await?;
        {
            let hold = self.hold(false).await?;
            self.drop_all_xattrs(ino).await?;
            drop(hold);
        }
        let hold = self.hold(false).await?;
        let i = self.read_inode(ino).await?;
        debug_assert_eq!(i.nlink.get(), 0);
        let mode = i.mode.get();
        self.items
            .delete_force(meta_seq_key(i.meta_seq.get(), ino))
            .await?;
        if is_reg(mode) {
            self.items
                .delete_force(data_seq_key(i.data_seq.get(), ino))
                .await?;
        }
        if is_lnk(mode) {
            self.delete_symlink_items(ino, i.size.get()).await?;
        }
        self.items.delete_force(orphan_key(ino)).await?;
        self.items.delete(inode_key(ino)).await?;
        self.trans.add_inode_count(-1);
        drop(hold);
        Ok(())
    }

    /// Builds a new inode in `b` owned by the caller, inheriting from
    /// `parent` (proj; setgid directories pass on their group).
    /// `kind` is (mode, rdev).
    fn new_inode(
        &self,
        b: &mut Batch<'_>,
        ctx: &Ctx,
        ino: u64,
        parent: u64,
        kind: (u32, u32),
        now: Time,
    ) -> FsResult<()> {
        let (mode, rdev) = kind;
        let p = *b.inode(parent);
        let mut mode = mode;
        let mut gid = ctx.gid;
        if p.mode.get() & S_ISGID != 0 {
            gid = p.gid.get();
            if is_dir(mode) {
                mode |= S_ISGID;
            }
        }
        let mut i = Inode {
            nlink: (if is_dir(mode) { 2u32 } else { 1 }).into(),
            uid: ctx.uid.into(),
            gid: gid.into(),
            mode: mode.into(),
            rdev: rdev.into(),
            next_readdir_pos: 2.into(),
            atime: now.to_disk(),
            ctime: now.to_disk(),
            mtime: now.to_disk(),
            crtime: now.to_disk(),
            ..Inode::default()
        };
        if self.fmt_vers >= FORMAT_VERSION_V2 {
            i.proj = p.proj;
        }
        b.insert_new(ino, i);
        self.trans.add_inode_count(1);
        Ok(())
    }
}

/// The inodes one operation reads and changes, stored together at its end
/// (inside the operation's hold) with their seq index items.
pub(crate) struct Batch<'a> {
    fs: &'a Fs,
    inodes: BTreeMap<u64, Slot>,
}

struct Slot {
    inode: Inode,
    /// nlink when loaded: the orphan item follows a change to or from 0.
    orig_nlink: u32,
    new: bool,
    dirty: bool,
    data: bool,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(fs: &'a Fs) -> Self {
        Batch {
            fs,
            inodes: BTreeMap::new(),
        }
    }

    /// Reads `ino` into the batch (once).
    pub(crate) async fn load(&mut self, ino: u64) -> FsResult<()> {
        if !self.inodes.contains_key(&ino) {
            let inode = self.fs.read_inode(ino).await?;
            self.inodes.insert(
                ino,
                Slot {
                    orig_nlink: inode.nlink.get(),
                    inode,
                    new: false,
                    dirty: false,
                    data: false,
                },
            );
        }
        Ok(())
    }

    /// A loaded inode. Panics if `ino` was not loaded: a programming error.
    pub(crate) fn inode(&mut self, ino: u64) -> &mut Inode {
        &mut self.inodes.get_mut(&ino).expect("inode loaded").inode
    }

    fn insert_new(&mut self, ino: u64, inode: Inode) {
        self.inodes.insert(
            ino,
            Slot {
                orig_nlink: 0,
                inode,
                new: true,
                dirty: true,
                data: false,
            },
        );
    }

    /// Marks a metadata change.
    pub(crate) fn dirty(&mut self, ino: u64) {
        self.inodes.get_mut(&ino).expect("inode loaded").dirty = true;
    }

    /// Marks a content or size change (data_seq, data_version).
    pub(crate) fn data_dirty(&mut self, ino: u64) {
        let s = self.inodes.get_mut(&ino).expect("inode loaded");
        s.dirty = true;
        s.data = true;
    }

    /// Writes every dirty inode with its index items, and the orphan item of
    /// an inode whose nlink dropped to 0.
    pub(crate) async fn store_all(&mut self) -> FsResult<()> {
        let seq = self.fs.trans.trans_seq();
        let items = &self.fs.items;
        for (&ino, s) in self.inodes.iter_mut() {
            if !s.dirty {
                continue;
            }
            let i = &mut s.inode;
            let reg = is_reg(i.mode.get());
            if s.new {
                i.meta_seq = seq.into();
                items
                    .create_force(meta_seq_key(seq, ino), Vec::new())
                    .await?;
                if reg {
                    i.data_seq = seq.into();
                    items
                        .create_force(data_seq_key(seq, ino), Vec::new())
                        .await?;
                }
                if i.nlink.get() == 0 {
                    items.create_force(orphan_key(ino), Vec::new()).await?;
                }
                items
                    .create(inode_key(ino), i.encode(self.fs.fmt_vers).to_vec())
                    .await?;
                s.dirty = false;
                s.new = false;
                continue;
            }
            let old_meta = i.meta_seq.get();
            if old_meta != seq {
                items.delete_force(meta_seq_key(old_meta, ino)).await?;
                items
                    .create_force(meta_seq_key(seq, ino), Vec::new())
                    .await?;
                i.meta_seq = seq.into();
            }
            if s.data && reg {
                let old_data = i.data_seq.get();
                if old_data != seq {
                    items.delete_force(data_seq_key(old_data, ino)).await?;
                    items
                        .create_force(data_seq_key(seq, ino), Vec::new())
                        .await?;
                    i.data_seq = seq.into();
                }
                i.data_version = (i.data_version.get() + 1).into();
            }
            let nlink = i.nlink.get();
            if s.orig_nlink != 0 && nlink == 0 {
                items.create_force(orphan_key(ino), Vec::new()).await?;
            } else if s.orig_nlink == 0 && nlink != 0 {
                items.delete_force(orphan_key(ino)).await?;
            }
            s.orig_nlink = nlink;
            i.version = (i.version.get() + 1).into();
            items
                .update(inode_key(ino), i.encode(self.fs.fmt_vers).to_vec())
                .await?;
            s.dirty = false;
            s.data = false;
        }
        Ok(())
    }
}

/// The bytes of a zerocopy value (helper for item values).
pub(crate) fn bytes_of<T: IntoBytes + zerocopy::Immutable>(v: &T) -> Vec<u8> {
    v.as_bytes().to_vec()
}
