//! What filesystem operations need from the item layer.
//!
//! Every call acts on the mount's item cache inside the open transaction:
//! reads see this mount's dirty items merged over the forest; writes dirty
//! items that the next commit writes into the mount's log tree. The caller
//! holds the transaction (see `trans`) across a group of calls that must be
//! atomic; the implementation never splits such a group across commits.
//!
//! Errors are errnos: ENOENT, EEXIST, EIO (corruption), ESTALE never escapes
//! (reads retry with fresh roots), ENOSPC (metadata space low).

use std::future::Future;
use std::pin::Pin;

use crate::format::srch::SrchEntry;
use crate::format::Key;

pub type ItemFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, i32>> + Send + 'a>>;

pub trait Items: Send + Sync {
    /// The value stored at `key`.
    fn lookup(&self, key: Key) -> ItemFuture<'_, Option<Vec<u8>>>;

    /// The first item with `first <= key <= last`.
    fn next(&self, first: Key, last: Key) -> ItemFuture<'_, Option<(Key, Vec<u8>)>>;

    /// The last item with `first <= key <= last`.
    fn prev(&self, last: Key, first: Key) -> ItemFuture<'_, Option<(Key, Vec<u8>)>>;

    /// Creates an item; EEXIST if one exists.
    fn create(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()>;

    /// Replaces an existing item's value; ENOENT if absent.
    fn update(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()>;

    /// Deletes an existing item; ENOENT if absent.
    fn delete(&self, key: Key) -> ItemFuture<'_, ()>;

    /// Writes an item without reading first (index, orphan, totl, indx items).
    /// On a `.totl.` key (zone 12) the value is a [`TotlValue`] delta that
    /// is *added* to what the key holds (§2.5), never a replacement.
    ///
    /// [`TotlValue`]: crate::format::items::TotlValue
    fn create_force(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()>;

    /// Deletes an item without reading first.
    fn delete_force(&self, key: Key) -> ItemFuture<'_, ()>;

    /// Forgets what is cached of `[first, last]` but this mount's own
    /// changes, so the next read sees other mounts' commits. For zones
    /// read without a cluster lock (the inode indexes).
    fn forget(&self, _first: Key, _last: Key) {}
}

/// Keeps the open transaction from committing while it is alive, so a group
/// of item changes lands in one transaction.
pub struct HoldGuard(pub Box<dyn Send + Sync>);

/// The mount's transaction and the per-transaction resources the
/// filesystem layer allocates from.
pub trait Transactions: Send + Sync {
    /// Joins the open transaction (waiting while a commit runs). Returns
    /// ENOSPC when metadata space is low and `allocating` is set.
    fn hold(&self, allocating: bool) -> ItemFuture<'_, HoldGuard>;

    /// Commits the open transaction and waits until it is durable.
    fn sync(&self) -> ItemFuture<'_, ()>;

    /// The seq of the open transaction: meta_seq/data_seq of inodes changed now.
    fn trans_seq(&self) -> u64;

    /// Allocates up to `max_blocks` contiguous data blocks (4 KiB units on the
    /// data device) from the mount's data_avail: (blkno, count). ENOSPC when
    /// none are left.
    fn alloc_data(&self, max_blocks: u64) -> ItemFuture<'_, (u64, u64)>;

    /// Returns data blocks; they are reused only after this transaction
    /// commits.
    fn free_data(&self, blkno: u64, count: u64) -> ItemFuture<'_, ()>;

    /// Allocates `count` new inode numbers (never reused): (first, count).
    fn alloc_inodes(&self, count: u64) -> ItemFuture<'_, (u64, u64)>;

    /// Adds to the inode count this transaction reports to the server.
    fn add_inode_count(&self, delta: i64);

    /// Logs a `.srch.` entry (§1.9, §7.3) in the open transaction: the
    /// commit appends it to the mount's srch log file. Called under a hold.
    fn srch_add(&self, entry: SrchEntry);
}
