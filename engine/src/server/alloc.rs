//! The server's allocation policy: fill targets, the reserve, the LOW flags
//! and the moves between free-extent trees and lists (reference §1.7).
//!
//! Guarantees:
//! * Every move is a pure transfer: blocks leave one allocator exactly when
//!   they enter another, so nothing is leaked or claimed twice. The COW of the
//!   trees and lists involved is paid for by the server transaction's own
//!   [`ListAlloc`], which never reuses a block freed in the same commit.
//! * `meta_alloc[0]` is always the avail extent tree and `meta_alloc[1]` the
//!   freed one: a swap exchanges the two roots in the super itself, so the
//!   roles survive a restart. Allocation swaps when avail runs dry and freed
//!   holds blocks, so blocks sitting in the freed tree never cause an early
//!   ENOSPC (trap 28, 7e935898).
//! * Client and merge fills never take the extent trees below
//!   [`MetaBudget::server_keep`]: the server's own lists can always be
//!   refilled, so a server commit never wedges for want of blocks while
//!   clients hold them. Client fills also leave one merge request's worth,
//!   so a full volume can merge (and so free) its way back.
//! * Every figure scales with the metadata device ([`MetaBudget`]).
//!
//! Touches `alloc` (list and extent allocators), `btree` and `format`.

use crate::alloc::{
    alloc_extent, empty_list_into_extents, free_extent, list_blknos, move_to_list, ListAlloc,
};
use crate::block::{Error, Result};
use crate::btree::Btree;
use crate::format::alloc::ALLOC_LIST_MAX_BLKNOS;
use crate::format::superblock::{AllocListHead, AllocRoot, ALLOC_FLAG_LOW};
use crate::format::SM_BLOCK_SHIFT;

/// A client's data_avail is topped up to at most 4 GiB of 4 KiB blocks ...
pub const CLIENT_DATA_FILL_TARGET: u64 = (4u64 << 30) >> SM_BLOCK_SHIFT;
/// ... when it holds less than at most 1 GiB (also the data LOW
/// threshold, §12).
pub const CLIENT_DATA_FILL_LO: u64 = (1u64 << 30) >> SM_BLOCK_SHIFT;
/// No data fill shrinks below 16 MiB, however small the device.
const CLIENT_DATA_FILL_MIN: u64 = (16u64 << 20) >> SM_BLOCK_SHIFT;

/// How a volume's mounts are given data blocks: topped up to `target`
/// when they hold less than `lo` (also the LOW threshold).
///
/// The reference's 4 GiB / 1 GiB hand a small data device to its first
/// mounts whole (three mounts of 8 GiB: the third got nothing and failed
/// its first write with ENOSPC). The target is an eighth of the device
/// (at least 16 MiB, at most 4 GiB) and `lo` a quarter of it (at most
/// 1 GiB): the reference's figures from a 32 GiB data device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFill {
    pub target: u64,
    pub lo: u64,
}

impl DataFill {
    pub fn for_device(total_data_blocks: u64) -> DataFill {
        let target = (total_data_blocks / 8).clamp(CLIENT_DATA_FILL_MIN, CLIENT_DATA_FILL_TARGET);
        DataFill {
            target,
            lo: (target / 4).min(CLIENT_DATA_FILL_LO),
        }
    }
}
/// Blocks a log-merge request is given on a full-size volume
/// (64 MiB / 64 KiB + 4).
pub const MERGE_META_BLOCKS: u64 = 1028;
/// The server's own avail lists are topped up to this many blocks at each
/// commit on a full-size volume: 64 MiB, the size of the first list mkfs
/// writes.
pub const SERVER_META_FILL_TARGET: u64 = (64 << 20) >> 16;

/// A metadata device holds at least this many list fills (see
/// [`MetaBudget`]); on smaller devices every figure shrinks with it.
const DEVICE_LISTS_MIN: u64 = 32;
/// No list fill shrinks below this many blocks, however small the device.
const LIST_FILL_MIN: u64 = 256;

/// The metadata figures of one volume: how much a client refill, a merge
/// request and the server's own lists take, and the reserve kept for them.
///
/// The reference's figures (§1.7: 8185-block client lists, 1028-block
/// merge lists, a reserve of 33,768 blocks for one mount) assume a device
/// of tens of GiB; on the 2 GiB device of `mkfs -A` the reserve alone is
/// larger than the device, so every refill would be LOW and nothing could
/// ever allocate. The list size therefore scales down to 1/32 of the
/// device (never below [`LIST_FILL_MIN`]) and the other figures follow it
/// by the same formula; from about 16 GiB of metadata up the figures are
/// exactly the reference's. docs/decisions.md records why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaBudget {
    /// A client's meta_avail is topped up to this many blocks ...
    pub client_fill_target: u64,
    /// ... when it holds fewer than this.
    pub client_fill_lo: u64,
    /// Blocks a log-merge request's list gets.
    pub merge_blocks: u64,
    /// The server's idle avail list is topped up to this at each commit.
    pub server_fill_target: u64,
    /// Client and merge fills never take the extent trees below this: the
    /// server's own lists can always be refilled, so a server commit never
    /// wedges for want of blocks while clients hold them.
    pub server_keep: u64,
}

impl MetaBudget {
    /// The figures for a metadata device of `total_meta_blocks`.
    pub fn for_device(total_meta_blocks: u64) -> MetaBudget {
        let full = ALLOC_LIST_MAX_BLKNOS as u64;
        let list = (total_meta_blocks / DEVICE_LISTS_MIN).clamp(LIST_FILL_MIN, full);
        let server = SERVER_META_FILL_TARGET.min(list);
        MetaBudget {
            client_fill_target: list,
            // 4092 of 8185 in the reference: refill at half.
            client_fill_lo: list / 2,
            merge_blocks: MERGE_META_BLOCKS.min(list + 4),
            server_fill_target: server,
            server_keep: server,
        }
    }

    /// The reserve of §1.7 with this volume's figures:
    /// `2×list + max(1, nclients)×(list + list + merge + log_blocks)`.
    /// When the free metadata is at or under it the server sets LOW.
    pub fn reserve(&self, nr_clients: u64, log_blocks: u64) -> u64 {
        let list = self.client_fill_target;
        2 * list + nr_clients.max(1) * (list + list + self.merge_blocks + log_blocks)
    }

    /// Blocks a client refill may take out of `free` extent blocks: all
    /// but what keeps the server's lists and one merge request fillable,
    /// so a volume full of a mount's data can still merge its way back.
    pub fn client_spare(&self, free: u64) -> u64 {
        free.saturating_sub(self.server_keep + self.merge_blocks)
    }
}

/// Free blocks in both metadata extent trees.
pub fn meta_extent_total(meta_alloc: &[AllocRoot; 2]) -> u64 {
    meta_alloc[0].total_len.get() + meta_alloc[1].total_len.get()
}

/// Swaps the avail and freed extent trees when avail is below twice the
/// reserve and freed holds more (7e935898). Returns whether it swapped.
pub fn maybe_swap_meta_alloc(meta_alloc: &mut [AllocRoot; 2], reserve: u64) -> bool {
    let avail = meta_alloc[0].total_len.get();
    let freed = meta_alloc[1].total_len.get();
    if avail < 2 * reserve && freed > avail {
        meta_alloc.swap(0, 1);
        return true;
    }
    false
}

/// Moves up to `count` blocks from the metadata extent trees into the list
/// `head`, swapping the trees when avail runs dry. Returns how many moved.
pub async fn fill_list(
    btree: &Btree,
    alloc: &mut ListAlloc,
    meta_alloc: &mut [AllocRoot; 2],
    head: &mut AllocListHead,
    count: u64,
) -> Result<u64> {
    let mut moved = 0;
    while moved < count {
        moved += move_to_list(btree, alloc, head, &mut meta_alloc[0], count - moved).await?;
        if moved == count {
            break;
        }
        // move_to_list stops early on any NoSpace; if avail still holds
        // extents it was the server's own list that ran dry.
        if meta_alloc[0].total_len.get() != 0 {
            return Err(Error::NoSpace("server metadata avail list is empty".into()));
        }
        if meta_alloc[1].total_len.get() == 0 {
            break;
        }
        meta_alloc.swap(0, 1);
    }
    Ok(moved)
}

/// Returns every entry of the list `head` (and its own blocks) to the
/// freed extent tree; the list is empty afterwards.
pub async fn drain_list(
    btree: &Btree,
    alloc: &mut ListAlloc,
    meta_alloc: &mut [AllocRoot; 2],
    head: &mut AllocListHead,
) -> Result<u64> {
    if head.ref_.is_null() && head.total_nr.get() == 0 {
        return Ok(0);
    }
    let n = empty_list_into_extents(btree, alloc, head, &mut meta_alloc[1]).await?;
    *head = AllocListHead::default();
    Ok(n)
}

/// Moves up to `count` blocks of free extents from `from` to `to`. Returns
/// how many moved; fewer only when `from` ran out.
pub async fn move_extents(
    btree: &Btree,
    alloc: &mut ListAlloc,
    from: &mut AllocRoot,
    to: &mut AllocRoot,
    count: u64,
) -> Result<u64> {
    let mut moved = 0;
    while moved < count {
        let (start, len) = match alloc_extent(btree, alloc, from, count - moved).await {
            Ok(ext) => ext,
            Err(Error::NoSpace(_)) if from.total_len.get() == 0 => break,
            Err(e) => return Err(e),
        };
        free_extent(btree, alloc, to, start, len).await?;
        moved += len;
    }
    Ok(moved)
}

/// Moves every free extent of `from` to `to`; `from` is empty afterwards.
pub async fn empty_extents(
    btree: &Btree,
    alloc: &mut ListAlloc,
    from: &mut AllocRoot,
    to: &mut AllocRoot,
) -> Result<u64> {
    let total = from.total_len.get();
    if total == 0 {
        return Ok(0);
    }
    let moved = move_extents(btree, alloc, from, to, total).await?;
    if from.total_len.get() != 0 || !from.root.is_empty() {
        return Err(Error::corrupt(format!(
            "extent tree still holds {} blocks after moving {moved}",
            from.total_len.get()
        )));
    }
    // Keep no stale LOW flag on an empty root.
    from.flags = 0.into();
    Ok(moved)
}

/// Sets or clears the LOW flag of a list head.
pub fn set_list_low(head: &mut AllocListHead, low: bool) {
    let flags = head.flags.get();
    head.flags = if low {
        flags | ALLOC_FLAG_LOW
    } else {
        flags & !ALLOC_FLAG_LOW
    }
    .into();
}

/// The server's allocators as log merge sees them
/// ([`ServerAllocs`](crate::merge::server::ServerAllocs)).
///
/// * COW blocks come from, and old copies go to, the server transaction's
///   list allocator: nothing freed is reused before the commit is durable.
/// * A merge request's list is filled from the metadata extent trees (a
///   copy of `super.meta_alloc` the caller writes back afterwards), never
///   below [`MetaBudget::server_keep`], so a merge can't wedge the server's own
///   refills; short of that it is ENOSPC and the mount asks again later.
/// * A reclaimed request or completion list goes, entry by entry and with
///   its own blocks, into the transaction's *freed* list: a completion's
///   `meta_freed` names `fs_root` blocks the durable super still uses, so
///   they must wait for this commit to be durable (they are drained into
///   the extent trees by the next commit, like every server free).
pub struct MergeAllocs<'a> {
    pub btree: &'a Btree,
    pub alloc: &'a mut ListAlloc,
    pub meta_alloc: [AllocRoot; 2],
    pub budget: MetaBudget,
}

impl crate::merge::server::ServerAllocs for MergeAllocs<'_> {
    fn meta(&mut self) -> &mut dyn crate::btree::MetaAllocator {
        self.alloc
    }

    fn fill_list(&mut self, count: u64) -> crate::btree::BoxFuture<'_, Result<AllocListHead>> {
        Box::pin(async move {
            // Small volumes give merges smaller lists; the merge commits
            // its pieces earlier then.
            let count = count.min(self.budget.merge_blocks);
            let spare = meta_extent_total(&self.meta_alloc).saturating_sub(self.budget.server_keep);
            if spare < count {
                return Err(Error::NoSpace(format!(
                    "{spare} spare metadata blocks for a {count} block merge list"
                )));
            }
            let mut head = AllocListHead::default();
            let moved = fill_list(
                self.btree,
                self.alloc,
                &mut self.meta_alloc,
                &mut head,
                count,
            )
            .await?;
            if moved != count {
                return Err(Error::NoSpace(format!(
                    "merge list filled with {moved} of {count} blocks"
                )));
            }
            Ok(head)
        })
    }

    fn reclaim_list(&mut self, head: AllocListHead) -> crate::btree::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if head.ref_.is_null() {
                if head.total_nr.get() != 0 {
                    return Err(Error::corrupt(format!(
                        "reclaimed list without blocks holds {}",
                        head.total_nr.get()
                    )));
                }
                return Ok(());
            }
            let cache = self.btree.cache().clone();
            let (entries, blocks) = list_blknos(&cache, &head).await?;
            for b in entries.into_iter().chain(blocks) {
                self.alloc.free(b).await?;
                // A clean copy could outlive the blkno's reuse; drop it.
                cache.forget(b);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod data_fill_tests {
    use super::*;

    #[test]
    fn large_devices_get_the_reference_figures() {
        let f = DataFill::for_device((64u64 << 30) >> SM_BLOCK_SHIFT);
        assert_eq!(
            (f.target, f.lo),
            (CLIENT_DATA_FILL_TARGET, CLIENT_DATA_FILL_LO)
        );
    }

    #[test]
    fn three_mounts_of_a_small_device_all_get_blocks() {
        let total = (8u64 << 30) >> SM_BLOCK_SHIFT;
        let f = DataFill::for_device(total);
        assert!(3 * f.target < total);
        assert!(f.lo < f.target);
        assert_eq!(DataFill::for_device(1000).target, CLIENT_DATA_FILL_MIN);
    }
}
