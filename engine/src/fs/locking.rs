//! The cluster locks filesystem operations take (reference §4.2, §7).
//!
//! Every operation locks the inode groups whose items it reads or writes
//! (READ to read, WRITE to change) before it holds the transaction, in the
//! global order of [`lock_order`], and keeps them until it has finished.
//! That is what makes another mount's view consistent: a conflicting
//! request elsewhere makes this mount commit and drop its cached items of
//! the group first (the owner's invalidation hook, `trans::Mount::
//! invalidate_lock`).
//!
//! Only inode groups (and the global rename lock) are taken. Index, orphan
//! and `.totl.` items are written blind (`*_force`) and ordered by the
//! inode lock's write_seq (§2.1's "primary lock"), and the readers of
//! those zones (walk-inodes, the orphan scanner, totl reads) read committed
//! state, which a WRITE_ONLY lock would only have made them commit first.
//!
//! Operations that learn an inode number from a directory entry (lookup,
//! unlink, rename) lock the directory, read the entry, let go, lock the
//! directory and the entry's inode in order, and check the entry again:
//! asking for a lower-numbered inode while holding a higher one could
//! deadlock against a mount taking them in order.
//!
//! Touches `lock` (names, modes, order) and `item::api` (the future type).

use std::sync::Arc;

use crate::item::api::ItemFuture;
use crate::lock::{inode_lock, lock_order, LockMode, LockRange};

/// A lock held for an operation; given back when dropped.
pub type LockHold = Box<dyn Send + Sync>;

/// Where an [`super::Fs`] gets its cluster locks.
pub trait FsLocks: Send + Sync {
    /// Waits until `mode` is granted on `range`.
    fn lock(&self, range: LockRange, mode: LockMode) -> ItemFuture<'_, LockHold>;

    /// Whether another mount holds `ino` in its caches (an open file, a
    /// kernel lookup): its items must not be deleted then (§7.5). Asked
    /// under a WRITE lock of the inode's group.
    fn cached_elsewhere(&self, _ino: u64) -> ItemFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }

    /// Whether every mount of the volume takes these locks, so a mount's
    /// caches may be trusted until their lock is invalidated (the quota
    /// ruleset). Unshared locks (tests mounting one volume several times
    /// with [`LocalLocks`]) fall back to timed validity.
    fn shared(&self) -> bool {
        false
    }
}

/// A volume used by one mount only (the embedded server): every lock is
/// granted at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalLocks;

impl FsLocks for LocalLocks {
    fn lock(&self, _range: LockRange, _mode: LockMode) -> ItemFuture<'_, LockHold> {
        Box::pin(async { Ok(Box::new(()) as LockHold) })
    }
}

/// The locks one operation holds.
#[must_use]
pub(crate) struct Held(#[allow(dead_code)] Vec<LockHold>);

/// Takes `mode` on the inode groups of `inos`, in the global order.
pub(crate) async fn lock_inodes(
    locks: &Arc<dyn FsLocks>,
    inos: &[u64],
    mode: LockMode,
) -> Result<Held, i32> {
    let ranges = lock_order(inos.iter().map(|&i| inode_lock(i)).collect());
    let mut held = Vec::with_capacity(ranges.len());
    for r in ranges {
        held.push(locks.lock(r, mode).await?);
    }
    Ok(Held(held))
}

/// Takes `mode` on one range that is not an inode group (the rename lock).
pub(crate) async fn lock_range(
    locks: &Arc<dyn FsLocks>,
    range: LockRange,
    mode: LockMode,
) -> Result<Held, i32> {
    Ok(Held(vec![locks.lock(range, mode).await?]))
}
