//! Waiting for offline data (reference §9 "Waiting for offline data").
//!
//! A read that meets OFFLINE extents in its range, or a write or a
//! setattr to a nonzero size of a file with any offline block, registers a
//! waiter `(ino, iblock, op)` here *while it still holds the operation's
//! locks*, drops them and then awaits the returned [`DataWait`]. The wait
//! ends when:
//! * the inode's offline blocks changed: [`Fs::wake_data_waiters`], called
//!   by stage, punch-offline, move-blocks STAGE and truncation here, and — the single entry point the
//!   cluster lock invalidation path must also call — when another mount
//!   may have changed the inode (its lock was invalidated), so staging on
//!   another node wakes this node's waiters. The woken task retries its
//!   whole operation under fresh locks and waits again if data is still
//!   offline.
//! * [`Fs::data_wait_err`] (DATA_WAIT_ERR) fails matching waiters with an
//!   errno (a failed restore).
//! * [`Fs::interrupt_data_waiter`]: the frontend's request was interrupted
//!   (FUSE_INTERRUPT: the reader got a signal, e.g. SIGKILL). Each waiter
//!   carries the frontend's tag (the FUSE request's unique id, 0 for none);
//!   an interrupt that arrives before its request registered is remembered
//!   (a bounded number of them) so the request fails at registration.
//!
//! Guarantees: no lost wake-ups — registration and the offline check happen
//! under the same locks as every change of offline blocks, and a wake marks
//! every registered waiter of the inode; a waiter is removed from the
//! registry when its future is dropped (finished, failed or cancelled), so
//! nothing leaks. Nothing here takes the engine's op_lock or a cluster lock:
//! wakes may come from any context.
//!
//! Touches nothing but its own state (std Mutex + Wakers).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::{Fs, FsResult};

/// The op bits of a waiter (the original's `SCOUTFS_IOC_DWO_*`).
pub const DATA_WAIT_READ: u8 = 1;
pub const DATA_WAIT_WRITE: u8 = 2;
pub const DATA_WAIT_CHANGE_SIZE: u8 = 4;
pub const DATA_WAIT_OPS: u8 = DATA_WAIT_READ | DATA_WAIT_WRITE | DATA_WAIT_CHANGE_SIZE;
/// The largest errno DATA_WAIT_ERR accepts (Linux `MAX_ERRNO`).
pub const DATA_WAIT_ERRNO_MAX: i32 = 4095;
/// Interrupts remembered for requests that had not registered yet.
const EARLY_INTERRUPTS_MAX: usize = 256;

/// One row of DATA_WAITING: the ops waiting on a block, merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataWaiting {
    pub ino: u64,
    pub iblock: u64,
    pub ops: u8,
}

/// Counters of the archive features (the status tree shows them).
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub data_wait: AtomicU64,
    pub data_wait_woken: AtomicU64,
    pub data_wait_err: AtomicU64,
    pub data_wait_interrupted: AtomicU64,
    pub release: AtomicU64,
    pub release_blocks: AtomicU64,
    pub stage: AtomicU64,
    pub stage_blocks: AtomicU64,
    pub punch_offline: AtomicU64,
    pub move_blocks: AtomicU64,
    pub retention_denied: AtomicU64,
}

impl ArchiveStats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// `(name, value)` pairs for the status tree.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("data_wait", g(&self.data_wait)),
            ("data_wait_err", g(&self.data_wait_err)),
            ("data_wait_interrupted", g(&self.data_wait_interrupted)),
            ("data_wait_woken", g(&self.data_wait_woken)),
            ("move_blocks", g(&self.move_blocks)),
            ("punch_offline", g(&self.punch_offline)),
            ("release", g(&self.release)),
            ("release_blocks", g(&self.release_blocks)),
            ("retention_denied", g(&self.retention_denied)),
            ("stage", g(&self.stage)),
            ("stage_blocks", g(&self.stage_blocks)),
        ]
    }
}

struct Entry {
    op: u8,
    tag: u64,
    woken: bool,
    err: Option<i32>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// (ino, iblock, id) → waiter: ordered as DATA_WAITING lists them.
    waiting: BTreeMap<(u64, u64, u64), Entry>,
    early_interrupts: VecDeque<u64>,
}

/// The mount's registry of data waiters.
#[derive(Default)]
pub(crate) struct Waiters {
    inner: Mutex<Inner>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter. Call with the operation's locks held.
    pub(crate) fn register(&self, ino: u64, iblock: u64, op: u8, tag: u64) -> DataWait<'_> {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        let mut err = None;
        if tag != 0 {
            if let Some(at) = g.early_interrupts.iter().position(|&t| t == tag) {
                g.early_interrupts.remove(at);
                err = Some(libc::EINTR);
            }
        }
        g.waiting.insert(
            (ino, iblock, id),
            Entry {
                op,
                tag,
                woken: false,
                err,
                waker: None,
            },
        );
        DataWait {
            waiters: self,
            key: (ino, iblock, id),
        }
    }

    /// Wakes every waiter of `ino`; returns how many.
    pub(crate) fn wake(&self, ino: u64) -> u64 {
        let mut g = self.lock();
        let mut n = 0;
        for (_, e) in g.waiting.range_mut((ino, 0, 0)..=(ino, u64::MAX, u64::MAX)) {
            if !e.woken {
                e.woken = true;
                n += 1;
            }
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
        n
    }

    /// Fails waiters of `ino` on blocks `first..=last` whose op is in
    /// `ops` with `err`; returns how many.
    pub(crate) fn fail(&self, ino: u64, first: u64, last: u64, ops: u8, err: i32) -> u64 {
        let mut g = self.lock();
        let mut n = 0;
        for (_, e) in g.waiting.range_mut((ino, first, 0)..=(ino, last, u64::MAX)) {
            if e.op & ops != 0 && e.err.is_none() {
                e.err = Some(err);
                n += 1;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
        n
    }

    /// Fails the waiter of request `tag` with EINTR, or remembers the tag
    /// for a request that has not registered yet. Returns whether a
    /// waiter was found.
    pub(crate) fn interrupt(&self, tag: u64) -> bool {
        if tag == 0 {
            return false;
        }
        let mut g = self.lock();
        let mut found = false;
        for e in g.waiting.values_mut() {
            if e.tag == tag && e.err.is_none() {
                e.err = Some(libc::EINTR);
                found = true;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
        if !found {
            if g.early_interrupts.len() >= EARLY_INTERRUPTS_MAX {
                g.early_interrupts.pop_front();
            }
            g.early_interrupts.push_back(tag);
        }
        found
    }

    /// Waiters from `(ino, iblock)` on, ops merged per block, at most `max`.
    pub(crate) fn list(&self, ino: u64, iblock: u64, max: usize) -> Vec<DataWaiting> {
        let g = self.lock();
        let mut out: Vec<DataWaiting> = Vec::new();
        for (&(i, b, _), e) in g.waiting.range((ino, iblock, 0)..) {
            match out.last_mut() {
                Some(l) if l.ino == i && l.iblock == b => l.ops |= e.op,
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push(DataWaiting {
                        ino: i,
                        iblock: b,
                        ops: e.op,
                    });
                }
            }
        }
        out
    }

    /// How many waiters are registered (tests, leak checks).
    pub(crate) fn count(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// A registered wait: resolves Ok when woken, Err(errno) when failed or
/// interrupted. Dropping it unregisters the waiter.
pub struct DataWait<'a> {
    waiters: &'a Waiters,
    key: (u64, u64, u64),
}

impl Future for DataWait<'_> {
    type Output = FsResult<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FsResult<()>> {
        let mut g = self.waiters.lock();
        let Some(e) = g.waiting.get_mut(&self.key) else {
            return Poll::Ready(Err(libc::EIO));
        };
        if let Some(err) = e.err {
            return Poll::Ready(Err(err));
        }
        if e.woken {
            return Poll::Ready(Ok(()));
        }
        e.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DataWait<'_> {
    fn drop(&mut self) {
        self.waiters.lock().waiting.remove(&self.key);
    }
}

impl Fs {
    /// Wakes every task waiting for offline data of `ino`: they retry
    /// their operation. Stage and punch-offline call it when offline
    /// blocks go away; the cluster lock invalidation path must call it for
    /// every inode whose lock another mount takes for writing (that mount
    /// may have staged). Safe from any context; takes no engine lock.
    pub fn wake_data_waiters(&self, ino: u64) {
        let n = self.waiters.wake(ino);
        ArchiveStats::add(&self.archive_stats.data_wait_woken, n);
    }

    /// Wakes the data waiters of every inode of `ino`'s lock group: the
    /// group's lock was taken away, so another mount may have staged
    /// their data (§9 step 3). Woken waiters look again.
    pub fn wake_group_data_waiters(&self, ino: u64) {
        let first = ino & !(crate::lock::LOCK_INODE_GROUP_NR - 1);
        let n: u64 = (first..=first | (crate::lock::LOCK_INODE_GROUP_NR - 1))
            .map(|i| self.waiters.wake(i))
            .sum();
        ArchiveStats::add(&self.archive_stats.data_wait_woken, n);
    }

    /// Fails the waiter of the frontend request `tag` with EINTR (its
    /// caller was interrupted); see the module comment.
    pub fn interrupt_data_waiter(&self, tag: u64) {
        if self.waiters.interrupt(tag) {
            ArchiveStats::add(&self.archive_stats.data_wait_interrupted, 1);
        }
    }

    /// DATA_WAITING: blocks with waiters from `(ino, iblock)` on.
    pub fn data_waiting(&self, ino: u64, iblock: u64, max: usize) -> Vec<DataWaiting> {
        self.waiters.list(ino, iblock, max)
    }

    /// Registered waiters (tests check none leak).
    pub fn data_waiter_count(&self) -> usize {
        self.waiters.count()
    }

    /// The archive counters.
    pub fn archive_stats(&self) -> &ArchiveStats {
        &self.archive_stats
    }

    /// Registers a wait for offline data (see the module comment) and
    /// counts it. Call with the operation's locks held.
    pub(crate) fn data_wait(&self, ino: u64, iblock: u64, op: u8, tag: u64) -> DataWait<'_> {
        ArchiveStats::add(&self.archive_stats.data_wait, 1);
        self.waiters.register(ino, iblock, op, tag)
    }
}
