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
//! Touches [`super::locks`], `trans` (the mount) and `fs::locking`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use super::client::NetClient;
use super::locks::{InvalidateHook, NetLocks};
use crate::fs::locking::{FsLocks, LockHold};
use crate::item::ItemFuture;
use crate::lock::{LockClientConfig, LockMode, LockRange};
use crate::runtime::Runtime;
use crate::trans::Mount;

/// What the frontend does for an invalidated range before the answer goes
/// out: (range, the mode the lock keeps).
pub type KernelInvalidate =
    Arc<dyn Fn(LockRange, LockMode) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

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

/// A mount's cluster locks for its filesystem.
pub struct ClusterFsLocks {
    locks: NetLocks,
    mount: Weak<Mount>,
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
                if let Some(m) = mount.upgrade() {
                    // A failed commit leaves the mount refusing every
                    // hold (EIO); answering the invalidation is then no
                    // worse than hanging the other mounts.
                    let _ = m
                        .invalidate_lock(&range.start, &range.end, old.can_write(), new.can_read())
                        .await;
                }
                if let Some(k) = kernel.get() {
                    k(range, new).await;
                }
            })
        });
        ClusterFsLocks {
            locks: NetLocks::new(rt, link, cfg, hook),
            mount: weak,
        }
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
}
