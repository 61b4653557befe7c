//! Revoking what the kernel caches when this mount loses a cluster lock
//! (ARCHITECTURE §2.6, the rule).
//!
//! Before the lock client answers an invalidation that takes an inode
//! group away (the lock goes to NULL), this writes only non-blocking
//! notifications to the FUSE device:
//! * `NOTIFY_INVAL_INODE(ino, offset -1)` for every inode of the group the
//!   kernel holds a lookup on (and the root, which it never looks up):
//!   attributes and ACLs only, no page-cache work, so it never waits for a
//!   folio or an inode lock that a request parked in this daemon holds.
//!   The kernel also bumps the inode's attr_version, so a GETATTR or
//!   LOOKUP reply that raced this invalidation is not cached.
//! * `NOTIFY_INC_EPOCH` (kernel ≥ 6.16): every dentry of the connection
//!   must be revalidated with a LOOKUP, which takes the lock again.
//!
//! A downgrade from WRITE to READ revokes nothing: nobody else may change
//! the group while we may read it. Regular files are opened with direct
//! I/O, so only shared mappings cache pages: once the invalidation is
//! answered (a downgrade too), [`Notifier::drop_pages`] has the kernel
//! write back and drop them, which may block and re-enter the daemon.
//! Notifications run on a blocking pool thread, never on an engine
//! executor thread.
//!
//! [`KernelNotify`] is the other user of the device: after an operation
//! of the control socket changed an inode outside a FUSE request, the
//! control thread drops the kernel's cached attributes and pages of it.
//!
//! Touches the FUSE device (write(2) of notify messages) and the
//! frontend's lookup table.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::format::key::zone;
use engine::fs::ROOT_INO;
use engine::lock::{LockMode, LockRange, LOCK_INODE_GROUP_NR};

/// `FUSE_NOTIFY_INVAL_INODE`.
const NOTIFY_INVAL_INODE: i32 = 2;
/// `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16).
const NOTIFY_INC_EPOCH: i32 = 8;

/// The kernel lookup count of each inode (shared with the filesystem).
pub type LookupTable = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Counters for the status tree and tests.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub inodes: AtomicU64,
    pub epochs: AtomicU64,
    /// Page-cache drops after an answer ([`Notifier::drop_pages`]).
    pub pages: AtomicU64,
    pub failures: AtomicU64,
}

/// Writes revocations to one FUSE connection.
pub struct Notifier {
    dev: File,
    lookups: LookupTable,
    pub stats: NotifyStats,
}

fn header(len: usize, code: i32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..8].copy_from_slice(&code.to_le_bytes());
    // unique 0: a notification, not a reply.
    h
}

impl Notifier {
    /// `dev` is a duplicate of the session's /dev/fuse descriptor.
    pub fn new(dev: File, lookups: LookupTable) -> Notifier {
        Notifier {
            dev,
            lookups,
            stats: NotifyStats::default(),
        }
    }

    fn write(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: `msg` is a valid buffer of its length for the call and
        // the descriptor is ours for the life of `self`.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn inval_inode(&self, ino: u64) {
        let mut msg = Vec::with_capacity(40);
        msg.extend_from_slice(&header(40, NOTIFY_INVAL_INODE));
        msg.extend_from_slice(&ino.to_le_bytes());
        msg.extend_from_slice(&(-1i64).to_le_bytes());
        msg.extend_from_slice(&0i64.to_le_bytes());
        match self.write(&msg) {
            Ok(()) => {
                self.stats.inodes.fetch_add(1, Ordering::Relaxed);
            }
            // The kernel forgot it meanwhile: nothing is cached.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(_) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn inc_epoch(&self) {
        match self.write(&header(16, NOTIFY_INC_EPOCH)) {
            Ok(()) => {
                self.stats.epochs.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Revokes the kernel's view of `range` now that the lock keeps only
    /// `kept`. Blocking only in the sense of a system call per inode.
    pub fn invalidate(&self, range: LockRange, kept: LockMode) {
        let plan = {
            let lookups = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            revocations(range, kept, &lookups)
        };
        for r in plan {
            match r {
                Revocation::InvalInode(ino) => self.inval_inode(ino),
                Revocation::IncEpoch => self.inc_epoch(),
            }
        }
    }
}

/// One notification written before an invalidation is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// `NOTIFY_INVAL_INODE(ino, offset -1)`: attributes and ACLs only.
    InvalInode(u64),
    /// `NOTIFY_INC_EPOCH`: every dentry must be looked up again.
    IncEpoch,
}

/// What [`Notifier::invalidate`] writes, in order, when a lock on `range`
/// keeps only `kept`, given the kernel lookup counts: nothing unless an
/// inode group goes to a non-reading mode; then every inode of the group
/// with a lookup (and the root, which the kernel never looks up), and one
/// epoch. Each is non-blocking in the kernel; the kernel model in
/// `tests/kernel_sim.rs` replays this same plan.
pub fn revocations(
    range: LockRange,
    kept: LockMode,
    lookups: &BTreeMap<u64, u64>,
) -> Vec<Revocation> {
    if kept.can_read() || range.start.zone != zone::FS {
        return Vec::new();
    }
    let first = range.start.first;
    let last = first | (LOCK_INODE_GROUP_NR - 1);
    let mut inos: Vec<u64> = lookups
        .range(first..=last)
        .filter(|(_, n)| **n > 0)
        .map(|(i, _)| *i)
        .collect();
    if (first..=last).contains(&ROOT_INO) && !inos.contains(&ROOT_INO) {
        inos.insert(0, ROOT_INO);
    }
    let mut plan: Vec<Revocation> = inos.into_iter().map(Revocation::InvalInode).collect();
    plan.push(Revocation::IncEpoch);
    plan
}

/// How long the kernel may cache the attributes of an entry reply (LOOKUP,
/// READDIRPLUS) for an inode with `lookups_before` kernel lookups before
/// this reply: 0 for an inode the kernel does not hold yet.
///
/// Why (found by the kernel model, `tests/kernel_sim.rs` seed 1602): an
/// entry reply instantiates a new inode only when its requester runs,
/// after the reply is written. An invalidation in between finds no inode
/// (`NOTIFY_INVAL_INODE` answers ENOENT and bumps nothing), and a new
/// inode starts at attr_version 0, so it takes the reply's attributes
/// even though another mount has changed them since: fstat on the file
/// just opened would show the old size for the whole timeout. Dentries
/// need no such care (their epoch is sampled before the request), nor do
/// inodes the kernel already holds (the notification bumps their
/// attr_version and the kernel drops the late reply's attributes).
pub fn entry_attr_timeout(
    lookups_before: u64,
    timeout: std::time::Duration,
) -> std::time::Duration {
    if lookups_before == 0 {
        std::time::Duration::ZERO
    } else {
        timeout
    }
}

/// The entry timeout of READDIRPLUS entries given the LOOKUP one: 0.
///
/// Why (found by the kernel model, `tests/kernel_sim.rs` seed 35): the
/// kernel links READDIRPLUS entries when it parses the reply
/// (`fuse_direntplus_link`) and stamps their dentries with the connection
/// epoch read *then*, not when the request was sent as LOOKUP does. A
/// lock invalidation between our listing and that parse bumps the epoch
/// first, so the late dentry outlives it: a name renamed or unlinked on
/// another mount kept resolving here for the whole timeout. With timeout 0
/// each such dentry is revalidated by a LOOKUP on its next use; the
/// entries still carry attributes (and count as lookups).
pub fn readdirplus_entry_timeout(_timeout: std::time::Duration) -> std::time::Duration {
    std::time::Duration::ZERO
}

impl Notifier {
    /// After the invalidation of `range` was answered: writes back and
    /// drops the page cache of every inode of the group the kernel holds
    /// (`NOTIFY_INVAL_INODE(ino, 0, 0)`), so that stores into shared
    /// mappings reach the engine and mappings fault in what other mounts
    /// wrote. Only shared mmap of our direct-I/O files caches pages; the
    /// kernel writes dirty ones back through WRITE requests, which take
    /// the lock again, hence never before the answer (the revocation
    /// would wait for itself). It blocks on folio locks: run it on the
    /// blocking pool, detached.
    pub fn drop_pages(&self, range: LockRange, kept: LockMode) {
        if kept.can_write() || range.start.zone != zone::FS {
            return;
        }
        let first = range.start.first;
        let last = first | (LOCK_INODE_GROUP_NR - 1);
        let inos: Vec<u64> = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(first..=last)
            .filter(|(i, n)| **n > 0 && **i != ROOT_INO)
            .map(|(i, _)| *i)
            .collect();
        for ino in inos {
            let mut msg = Vec::with_capacity(40);
            msg.extend_from_slice(&header(40, NOTIFY_INVAL_INODE));
            msg.extend_from_slice(&ino.to_le_bytes());
            // Offset 0, length 0: every page of the file.
            msg.extend_from_slice(&0i64.to_le_bytes());
            msg.extend_from_slice(&0i64.to_le_bytes());
            match self.write(&msg) {
                Ok(()) => {
                    self.stats.pages.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(_) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sends notifications on a mount's /dev/fuse connection.
#[derive(Debug, Clone)]
pub struct KernelNotify {
    dev: Arc<File>,
}

impl KernelNotify {
    /// Notifications over `dev` (the session's /dev/fuse file).
    pub fn new(dev: Arc<File>) -> KernelNotify {
        KernelNotify { dev }
    }

    /// Drops the kernel's cached attributes and pages of `ino`.
    pub fn inval_inode(&self, ino: u64) -> io::Result<()> {
        const LEN: usize = 16 + 24;
        let mut msg = [0u8; LEN];
        msg[0..4].copy_from_slice(&(LEN as u32).to_le_bytes());
        msg[4..8].copy_from_slice(&NOTIFY_INVAL_INODE.to_le_bytes());
        // unique 0: a notification. Body: ino, off 0, len 0 (whole file).
        msg[16..24].copy_from_slice(&ino.to_le_bytes());
        // SAFETY: writes `msg.len()` bytes from a live buffer to a
        // descriptor we hold open.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}
