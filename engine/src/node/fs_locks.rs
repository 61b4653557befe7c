//! A mount's filesystem operations on cluster locks: [`NetLocks`] as the
//! [`FsLocks`] an [`crate::fs::Fs`] takes, and the invalidation hook that
//! keeps this mount's caches honest (reference §4.3–§4.4).
//!
//! * A write grant's `write_seq` reaches the mount before the operation
//!   writes an item ([`Mount::note_lock_write_seq`], §2.1).
//! * Before this mount gives up or weakens a lock, [`Mount::invalidate_lock`]
//!   commits what it changed under it and drops the cached items, then the
//!   frontend's [`KernelInvalidate`] (if one is set) revokes what the
//!   kernel caches of the range; only then does the lock client answer.
//!
//! * SYNC_LOG_TREES from the server starts a commit of the mount's open
//!   transaction so a waiting log merge can begin (§2.4).
//!
//! Touches [`super::locks`], `trans` (the mount) and `fs::locking`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use super::client::{NetClient, ServerRequests};
use super::locks::{InvalidateHook, NetLocks};
use super::open_map::{self, Bits};
use crate::format::net::Cmd;
use crate::fs::locking::{FsLocks, LockHold};
use crate::item::ItemFuture;
use crate::link::{CallFuture, ServerLink};
use crate::lock::{LockClientConfig, LockMode, LockRange};
use crate::runtime::Runtime;
use crate::trans::Mount;

/// What the frontend does for an invalidated range before the answer goes
/// out: (range, the mode the lock keeps).
pub type KernelInvalidate =
    Arc<dyn Fn(LockRange, LockMode) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One step of what this mount does before it answers an invalidation
/// of a lock from `old` to `new`; [`invalidate_steps`] gives their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidateStep {
    /// [`Mount::invalidate_lock`]: commit what was written under the lock
    /// if it could write (`write_back`), and drop the cached items of the
    /// range unless the lock still reads (`keep`).
    Mount { write_back: bool, keep: bool },
    /// The frontend's [`KernelInvalidate`] with the mode the lock keeps.
    Kernel { kept: LockMode },
}

/// The order of an invalidation's work, all before the answer goes out:
/// the items first (so nothing the kernel rereads after its revocation
/// can come from a cache about to be dropped), then the kernel. The
/// kernel side must never wait for anything a request parked in the
/// daemon holds (ARCHITECTURE §2.6); the kernel model in
/// `fuse-frontend/tests/kernel_sim.rs` drives this same order.
pub fn invalidate_steps(old: LockMode, new: LockMode) -> [InvalidateStep; 2] {
    [
        InvalidateStep::Mount {
            write_back: old.can_write(),
            keep: new.can_read(),
        },
        InvalidateStep::Kernel { kept: new },
    ]
}

/// Where the frontend's [`KernelInvalidate`] is set once it exists (the
/// kernel connection comes after the mount).
#[derive(Clone, Default)]
pub struct KernelSlot(Arc<Mutex<Option<KernelInvalidate>>>);

impl KernelSlot {
    pub fn set(&self, hook: KernelInvalidate) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn get(&self) -> Option<KernelInvalidate> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The inodes of one 1024-inode group this mount holds in its caches
/// (the filesystem's open and lookup references), for the server's
/// OPEN_INO_MAP requests.
pub type CachedInodes = Arc<dyn Fn(u64) -> Vec<u64> + Send + Sync>;

/// Where the filesystem's [`CachedInodes`] is set once it exists.
#[derive(Clone, Default)]
pub struct CachedSlot(Arc<Mutex<Option<CachedInodes>>>);

impl CachedSlot {
    pub fn set(&self, f: CachedInodes) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn bits(&self, group_nr: u64) -> Bits {
        let f = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut bits = Bits::default();
        for ino in f.map(|f| f(group_nr)).unwrap_or_default() {
            bits.set(ino);
        }
        bits
    }
}

/// Answers the server's requests to this mount (OPEN_INO_MAP,
/// SYNC_LOG_TREES).
struct Answers {
    cached: CachedSlot,
    rt: Runtime,
    mount: Weak<Mount>,
}

impl ServerRequests for Answers {
    fn request(&self, cmd: Cmd, data: Vec<u8>) -> CallFuture {
        let res = match cmd {
            Cmd::OpenInoMap => open_map::decode_args(&data)
                .map(|(group, id)| open_map::encode_map(group, id, &self.cached.bits(group))),
            Cmd::SyncLogTrees => {
                // The commit runs on its own: the server's request must not
                // wait for it (the commit itself calls the server).
                if let Some(m) = self.mount.upgrade() {
                    self.rt
                        .spawn(async move {
                            let _ = m.close_transaction().await;
                        })
                        .detach();
                }
                Ok(Vec::new())
            }
            _ => Err(libc::EINVAL),
        };
        Box::pin(async move { res })
    }
}

/// A mount's cluster locks for its filesystem.
pub struct ClusterFsLocks {
    locks: NetLocks,
    link: Arc<NetClient>,
    mount: Weak<Mount>,
    /// What this mount caches, for the server's questions.
    pub cached: CachedSlot,
}

impl ClusterFsLocks {
    /// Drives the mount's lock client over `link`; invalidations commit
    /// and drop `mount`'s caches, then call what `kernel` holds.
    pub fn start(
        rt: Runtime,
        link: Arc<NetClient>,
        mount: &Arc<Mount>,
        cfg: LockClientConfig,
        kernel: KernelSlot,
    ) -> ClusterFsLocks {
        let weak = Arc::downgrade(mount);
        let hook_mount = weak.clone();
        let hook: InvalidateHook = Arc::new(move |range, old, new| {
            let mount = hook_mount.clone();
            let kernel = kernel.clone();
            Box::pin(async move {
                for step in invalidate_steps(old, new) {
                    match step {
                        InvalidateStep::Mount { write_back, keep } => {
                            if let Some(m) = mount.upgrade() {
                                // A failed commit leaves the mount refusing
                                // every hold (EIO); answering the
                                // invalidation is then no worse than
                                // hanging the other mounts.
                                let _ = m
                                    .invalidate_lock(&range.start, &range.end, write_back, keep)
                                    .await;
                            }
                        }
                        InvalidateStep::Kernel { kept } => {
                            if let Some(k) = kernel.get() {
                                k(range, kept).await;
                            }
                        }
                    }
                }
            })
        });
        let cached = CachedSlot::default();
        link.set_handler(Arc::new(Answers {
            cached: cached.clone(),
            rt: rt.clone(),
            mount: weak.clone(),
        }));
        let locks = NetLocks::new(rt, link.clone(), cfg, hook);
        mount.set_coverage(locks.coverage());
        ClusterFsLocks {
            locks,
            link,
            mount: weak,
            cached,
        }
    }
}

impl ClusterFsLocks {
    /// This mount's cached locks, one line each (the status tree's
    /// `client_locks`): range, mode, write_seq, the mode asked of the
    /// server, queued grants/invalidations, whether the owner is working
    /// through an invalidation, local holders and waiters.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for v in self.locks.views() {
            let _ = writeln!(
                out,
                "{} {} mode {:?} write_seq {} request {:?} queued {} owner_busy {} holders {} waiters {}",
                v.range.start,
                v.range.end,
                v.mode,
                v.write_seq,
                v.request,
                v.queued,
                v.owner_busy as u8,
                v.holders,
                v.waiters
            );
        }
        out
    }
}

impl FsLocks for ClusterFsLocks {
    fn lock(&self, range: LockRange, mode: LockMode) -> ItemFuture<'_, LockHold> {
        Box::pin(async move {
            let guard = self.locks.lock(range, mode, false).await?;
            if mode.can_write() {
                if let Some(m) = self.mount.upgrade() {
                    m.note_lock_write_seq(guard.granted.write_seq);
                }
            }
            Ok(Box::new(guard) as LockHold)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn cached_elsewhere(&self, ino: u64) -> ItemFuture<'_, bool> {
        Box::pin(async move {
            let group = ino / open_map::OPEN_MAP_GROUP_NR;
            let reply = self
                .link
                .call(Cmd::OpenInoMap, open_map::encode_args(group, 0))
                .await?;
            let (g, _, bits) = open_map::decode_map(&reply).map_err(|_| libc::EIO)?;
            if g != group {
                return Err(libc::EIO);
            }
            Ok(bits.has(ino))
        })
    }
}
