//! Transactions and the mount handle (reference §3.2, `trans.c`).
//!
//! A [`Mount`] is the client side of one volume on one node: the block
//! cache over the metadata device, the [`Forest`] reader, the [`ItemCache`],
//! and the one open transaction. It implements [`Items`] and
//! [`Transactions`].
//!
//! The open transaction is the mount's log tree as `GET_LOG_TREES` returned
//! it: its `meta_avail`/`meta_freed` lists feed a [`ListAlloc`] that COWs
//! every block the transaction writes; `data_avail`/`data_freed` are the
//! mount's data allocators; `get_trans_seq` is the transaction's seq.
//!
//! Guarantees:
//! * Holders are counted; a commit stops new holders, waits until the count
//!   drains to zero and only then writes, so a group of item changes made
//!   under one [`HoldGuard`] lands in one transaction. Holds are not
//!   reentrant: a task that holds must not call `hold` again (it would wait
//!   for a commit that waits for it).
//! * The commit sequence is §3.2 steps 2–9: sort the dirty items and record
//!   `max_item_seq`; `insert_list` them into the log tree (tombstones as
//!   items with `ITEM_FLAG_DELETION`, seqs kept); set the bloom bits of each
//!   lock first dirtied in this tree (COWing the bloom block); write every
//!   dirty block and flush, flush the data device; `COMMIT_LOG_TREES`; then
//!   `item_write_done` (barrier bump, clean, drop tombstones); then
//!   `GET_LOG_TREES` opens the next transaction. Writing, the commit call
//!   and the reopen are retried every [`MountOptions::commit_retry`] when
//!   set; building the tree is not retried (its failure leaves the dirty
//!   tree unspecified, so the mount refuses further holds with EIO).
//! * Blocks freed in a transaction (metadata through `meta_freed`, data
//!   through `data_freed`) are never handed out again by this mount; the
//!   server decides when they become free.
//! * Commits start on `sync`, every [`MountOptions::commit_interval`] when
//!   something is dirty, and before a hold when `meta_avail` is below twice
//!   the estimated dirty blocks or below [`META_AVAIL_MIN_BLOCKS`]. A hold
//!   with `allocating` set fails with ENOSPC when `meta_avail` carries the
//!   LOW flag. LOW is the server's word at the last GET_LOG_TREES; space
//!   comes back only through merges and freeing on the server's side, so a
//!   LOW hold first asks again with a commit (even an empty one) when the
//!   flag is older than [`LOW_RECHECK_INTERVAL`]: an idle mount learns
//!   that space is back without waiting for a change of its own.
//! * Item seq = the open transaction's seq (§2.1 without cluster locks);
//!   every item call passes [`Mount::check_lock`], the single place where
//!   cluster-lock coverage will be enforced.
//!
//! `.srch.` entries logged under a hold ([`Transactions::srch_add`]) are
//! appended to the log tree's srch file by the commit that writes the
//! transaction's items (§1.9); the srch compaction worker
//! (`srch_worker.rs`) runs beside the merge worker.
//!
//! Touches `block`, `btree`, `alloc`, `forest`, `item`, `srch`, `format`,
//! the `link` (GET_LOG_TREES, COMMIT_LOG_TREES, GET_ROOTS via the forest,
//! ALLOC_INODES, SRCH_GET/COMMIT_COMPACT) and the runtime (spawn, sleep, randomness). Locks: short std
//! mutexes never held across `.await`; `futures::lock::Mutex`es serialize
//! commits, allocator use and the inode pool.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use drivers::{AlignedBuf, BlockDevice};
use zerocopy::{FromBytes, IntoBytes};

use crate::alloc::{alloc_extent, free_extent, ListAlloc};
use crate::block::{BlockCache, Error};
use crate::btree::Btree;
use crate::forest::Forest;
use crate::format::block::check_fixed_block;
use crate::format::bloom::{bloom_bits, BloomBlock};
use crate::format::btree::LEAF_EMPTY_FREE;
use crate::format::items::TotlValue;
use crate::format::log_trees::LogTrees;
use crate::format::net::{Cmd, NetInodeAlloc};
use crate::format::srch::{SrchEntry, SRCH_BLOCK_SAFE_BYTES, SRCH_ENTRY_MAX_BYTES};
use crate::format::superblock::{SuperBlock, ALLOC_FLAG_LOW};
use crate::format::{
    BlockRef, Key, LG_BLOCK_SIZE, MAGIC_BLOOM, MAGIC_SUPER, SM_BLOCK_SHIFT, SM_BLOCK_SIZE,
    SUPER_BLKNO,
};
use crate::item::cache::{DirtySnapshot, ItemCache, CACHE_MAX_ITEMS_DEFAULT};
use crate::item::{HoldGuard, ItemFuture, Items, Transactions};
use crate::link::ServerLink;
use crate::merge::client::is_delta_key;
use crate::runtime::{JoinHandle, Runtime};
use crate::server::alloc::DataFill;
use crate::srch::file::SrchWriter;

mod merge_worker;
mod srch_worker;
pub use merge_worker::{MergeStats, MERGE_INTERVAL_DEFAULT};
pub use srch_worker::{SrchStats, SRCH_COMPACT_INTERVAL_DEFAULT};

/// A hold forces a commit first when `meta_avail` has fewer blocks.
pub const META_AVAIL_MIN_BLOCKS: u64 = 16;
/// Inode numbers asked of the server per `ALLOC_INODES`.
pub const INODE_ALLOC_BATCH_NR: u64 = 10240;
/// Default commit timer (§3.2).
pub const COMMIT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Default retry delay of a failed commit step (§3.2).
pub const COMMIT_RETRY_DEFAULT: Duration = Duration::from_secs(2);
/// Default clean-block capacity of the mount's block cache.
pub const BLOCK_CACHE_BLOCKS_DEFAULT: usize = 4096;

/// A LOW flag older than this is checked with the server again (by a
/// commit) before an allocating hold gets ENOSPC.
pub const LOW_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Tunables of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Cached items kept before clean ranges are dropped.
    pub cache_items_max: usize,
    /// Clean 64 KiB blocks the block cache keeps.
    pub block_cache_blocks: usize,
    /// Commit this often when something is dirty; `None`: only on demand.
    pub commit_interval: Option<Duration>,
    /// Retry failed write/commit/reopen steps after this long; `None`:
    /// surface the error (tests).
    pub commit_retry: Option<Duration>,
    /// Ask the server for log merge work this often (§2.4); `None`: only
    /// through [`Mount::merge_now`].
    pub merge_interval: Option<Duration>,
    /// Ask the server for srch compaction work this often (§8.3
    /// `compact_delay_ms`); `None`: only through [`Mount::srch_compact_now`].
    pub srch_compact_interval: Option<Duration>,
    /// When a srch compaction step stops to commit its progress.
    pub srch_limits: crate::srch::compact::CompactLimits,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_items_max: CACHE_MAX_ITEMS_DEFAULT,
            block_cache_blocks: BLOCK_CACHE_BLOCKS_DEFAULT,
            commit_interval: Some(COMMIT_INTERVAL_DEFAULT),
            commit_retry: Some(COMMIT_RETRY_DEFAULT),
            merge_interval: Some(MERGE_INTERVAL_DEFAULT),
            srch_compact_interval: Some(SRCH_COMPACT_INTERVAL_DEFAULT),
            srch_limits: crate::srch::compact::CompactLimits::default(),
        }
    }
}

/// Counters for tests and the status tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransStats {
    pub commits: u64,
    pub pressure_commits: u64,
    pub timer_commits: u64,
    pub retries: u64,
    /// Commits made only to ask whether LOW still holds.
    pub low_rechecks: u64,
}

/// Whether a commit with nothing changed still goes to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitKind {
    IfChanged,
    /// Close and reopen the transaction regardless, for fresh allocators.
    Always,
}

#[derive(Debug, Default)]
struct TransState {
    /// No transaction is open: the last one committed and the next opens
    /// (GET_LOG_TREES) at the next hold. An idle mount keeps none open, so
    /// it never holds the server's last stable seq back (§8.1).
    closed: bool,
    holders: u64,
    /// A commit is waiting for holders or writing: new holds wait.
    committing: bool,
    seq: u64,
    meta_avail_nr: u64,
    meta_low: bool,
    /// Blocks in `data_avail` and its LOW flag (the server had no more).
    data_avail_nr: u64,
    data_low: bool,
    /// Runtime time of the GET_LOG_TREES that last published the flags.
    flags_at: Duration,
    item_root_height: u8,
    /// A commit failed where it can't be retried.
    broken: Option<i32>,
    stats: TransStats,
}

/// What only allocator users and the commit touch (an async mutex).
struct TreeState {
    lt: LogTrees,
    alloc: ListAlloc,
    /// Lock start keys whose bits the current tree's bloom already has.
    bloom_set: BTreeSet<Key>,
    /// Data allocators changed since the last commit.
    data_changed: bool,
}

/// Wakers of tasks waiting for a change of [`TransState`].
#[derive(Default)]
struct Waiters(Mutex<Vec<Waker>>);

impl Waiters {
    fn wake_all(&self) {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for w in list {
            w.wake();
        }
    }

    /// Waits until `cond` holds; `cond` is rechecked after every wake.
    fn wait_until<'a>(
        &'a self,
        mut cond: impl FnMut() -> bool + 'a,
    ) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if cond() {
                return Poll::Ready(());
            }
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(cx.waker().clone());
            // Recheck: a change between the check and the push woke nobody.
            if cond() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

struct Inner {
    rt: Runtime,
    rid: u64,
    fmt_vers: u64,
    /// Data blocks under which a hold commits for a refill (the server's
    /// threshold for this volume).
    data_fill_lo: u64,
    opts: MountOptions,
    link: Arc<dyn ServerLink>,
    data_dev: Arc<dyn BlockDevice>,
    btree: Btree,
    forest: Forest,
    items: ItemCache,
    st: Mutex<TransState>,
    waiters: Waiters,
    tree: futures::lock::Mutex<TreeState>,
    commit_lock: futures::lock::Mutex<()>,
    inode_pool: futures::lock::Mutex<(u64, u64)>,
    inode_delta: AtomicI64,
    /// The highest `write_seq` of any write lock granted to this mount:
    /// items are written with at least this seq (§2.1).
    lock_write_seq: AtomicU64,
    merge: merge_worker::MergeState,
    /// `.srch.` entries of the open transaction: the commit appends them
    /// to the log tree's srch file (§1.9).
    srch_pending: Mutex<Vec<SrchEntry>>,
    srch: srch_worker::SrchState,
    /// The cluster-lock mode this mount holds over a key (cluster mounts).
    coverage: std::sync::OnceLock<Coverage>,
    /// Item calls made outside a covering lock mode.
    uncovered: AtomicU64,
}

/// Answers which cluster-lock mode this mount holds over a key.
pub type Coverage = Arc<dyn Fn(&Key) -> crate::lock::LockMode + Send + Sync>;

/// Zones whose items mounts write without a lock of their own (the
/// original's WRITE_ONLY index, orphan and tag locks): the item seq orders
/// them between mounts.
fn blind_zone(key: &Key) -> bool {
    use crate::format::key::zone;
    matches!(
        key.zone,
        zone::INODE_INDEX | zone::ORPHAN | zone::XATTR_TOTL | zone::XATTR_INDX
    )
}

/// Reports of uncovered item calls printed before they are only counted.
const UNCOVERED_REPORTS: u64 = 20;

/// The client side of one mounted volume.
pub struct Mount {
    inner: Arc<Inner>,
    timer: Option<JoinHandle<()>>,
    merger: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("rid", &self.inner.rid)
            .field("trans_seq", &self.trans_seq())
            .finish()
    }
}

fn errno(e: Error) -> i32 {
    e.errno()
}

/// Reads the super block of the metadata device: (fsid, fmt_vers).
pub(crate) async fn read_super(meta: &Arc<dyn BlockDevice>) -> Result<SuperBlock, i32> {
    let buf = AlignedBuf::new(SM_BLOCK_SIZE);
    let (buf, res) = meta.read_at(SUPER_BLKNO << SM_BLOCK_SHIFT, buf).await;
    res.map_err(|_| libc::EIO)?;
    check_fixed_block(&buf, MAGIC_SUPER, SUPER_BLKNO).map_err(|_| libc::EIO)?;
    let (sb, _) = SuperBlock::read_from_prefix(&buf[..]).map_err(|_| libc::EIO)?;
    Ok(sb)
}

impl Mount {
    /// Mounts the volume: reads the super for its fsid and format version,
    /// joins with `GET_LOG_TREES` and commits that empty transaction: the
    /// next one opens at the first hold.
    pub async fn open(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        link: Arc<dyn ServerLink>,
        rt: Runtime,
        rid: u64,
        opts: MountOptions,
    ) -> Result<Mount, i32> {
        let sb = read_super(&meta).await?;
        let merge = merge_worker::MergeState::new(&meta, sb.hdr.fsid.get(), &rt);
        let meta2 = meta.clone();
        let rt2 = rt.clone();
        let cache = Arc::new(BlockCache::new(
            meta,
            sb.hdr.fsid.get(),
            opts.block_cache_blocks,
            Arc::new(move || rt2.random_u64()),
        ));
        let lt = LogTrees::read_from_bytes(&[0u8; std::mem::size_of::<LogTrees>()])
            .map_err(|_| libc::EIO)?;
        let inner = Arc::new(Inner {
            rid,
            fmt_vers: sb.fmt_vers.get(),
            data_fill_lo: DataFill::for_device(sb.total_data_blocks.get()).lo,
            link: link.clone(),
            data_dev: data,
            btree: Btree::new(cache.clone()),
            forest: Forest::new(cache.clone(), link),
            items: ItemCache::new(opts.cache_items_max),
            st: Mutex::new(TransState {
                closed: true,
                ..TransState::default()
            }),
            waiters: Waiters::default(),
            tree: futures::lock::Mutex::new(TreeState {
                alloc: ListAlloc::new(cache, lt.meta_avail, lt.meta_freed),
                lt,
                bloom_set: BTreeSet::new(),
                data_changed: false,
            }),
            commit_lock: futures::lock::Mutex::new(()),
            inode_pool: futures::lock::Mutex::new((0, 0)),
            inode_delta: AtomicI64::new(0),
            lock_write_seq: AtomicU64::new(0),
            merge,
            srch_pending: Mutex::new(Vec::new()),
            srch: srch_worker::SrchState::new(&meta2, sb.hdr.fsid.get(), &rt),
            coverage: std::sync::OnceLock::new(),
            uncovered: AtomicU64::new(0),
            opts,
            rt,
        });
        inner.publish(&lt);
        // Join now, where a mount waits for the server anyway (a new rid's
        // first GET_LOG_TREES may wait for the server to finish with an
        // earlier mount of this host), then close the empty transaction
        // at once so an idle mount holds no seq open.
        inner.reopen().await?;
        inner.commit_as(CommitKind::Always).await?;
        let timer = inner.opts.commit_interval.map(|interval| {
            let weak = Arc::downgrade(&inner);
            inner
                .rt
                .spawn(commit_timer(weak, inner.rt.clone(), interval))
        });
        let merger = inner.opts.merge_interval.map(|interval| {
            let weak = Arc::downgrade(&inner);
            inner
                .rt
                .spawn(merge_worker::merge_worker(weak, inner.rt.clone(), interval))
        });
        let compactor = inner.opts.srch_compact_interval.map(|interval| {
            let weak = Arc::downgrade(&inner);
            inner
                .rt
                .spawn(srch_worker::srch_worker(weak, inner.rt.clone(), interval))
        });
        Ok(Mount {
            inner,
            timer,
            merger,
            compactor,
        })
    }

    pub fn rid(&self) -> u64 {
        self.inner.rid
    }

    /// The volume's format version (1 or 2), from the super block.
    pub fn fmt_vers(&self) -> u64 {
        self.inner.fmt_vers
    }

    pub fn forest(&self) -> &Forest {
        &self.inner.forest
    }

    pub fn item_cache(&self) -> &ItemCache {
        &self.inner.items
    }

    pub fn block_cache(&self) -> &Arc<BlockCache> {
        self.inner.btree.cache()
    }

    pub fn stats(&self) -> TransStats {
        self.inner.lock().stats
    }

    /// The open transaction's log tree as this mount last saw it.
    pub async fn log_trees(&self) -> LogTrees {
        let ts = self.inner.tree.lock().await;
        let mut lt = ts.lt;
        lt.meta_avail = ts.alloc.avail;
        lt.meta_freed = ts.alloc.freed;
        lt
    }

    /// Where cluster-lock coverage of every item call is checked. Without
    /// cluster locks (single node) every key is covered. A call outside a
    /// lock mode that covers it reads or keeps items no invalidation will
    /// ever drop (another mount may change them meanwhile): it is counted
    /// ([`Mount::uncovered_calls`]) and the first few are reported, so the
    /// caller that forgot its lock can be found.
    pub fn check_lock(&self, key: &Key, write: bool) -> Result<(), i32> {
        let Some(coverage) = self.inner.coverage.get() else {
            return Ok(());
        };
        if blind_zone(key) {
            // Written blind, read from committed state after forgetting
            // what was cached (docs/decisions.md, "Cluster locks: inode
            // groups only").
            return Ok(());
        }
        let mode = coverage(key);
        let covered = if write {
            mode.can_write()
        } else {
            mode.can_read()
        };
        if !covered {
            let n = self.inner.uncovered.fetch_add(1, Ordering::Relaxed);
            if n < UNCOVERED_REPORTS {
                eprintln!(
                    "scoutfsd: item {} of {key} outside a covering cluster lock (mode {mode:?})",
                    if write { "change" } else { "read" }
                );
            }
        }
        Ok(())
    }

    /// Sets where [`Mount::check_lock`] learns the lock modes (once).
    pub fn set_coverage(&self, coverage: Coverage) {
        let _ = self.inner.coverage.set(coverage);
    }

    /// Item calls made outside a covering cluster lock.
    pub fn uncovered_calls(&self) -> u64 {
        self.inner.uncovered.load(Ordering::Relaxed)
    }

    /// Records a write grant's `write_seq` (§2.1): every item this mount
    /// writes from now on carries at least that seq.
    pub fn note_lock_write_seq(&self, write_seq: u64) {
        self.inner
            .lock_write_seq
            .fetch_max(write_seq, Ordering::Relaxed);
    }

    /// What this mount does before it gives up or weakens its lock on
    /// `[start, end]` (§4.4 steps 3-4): a lock that could write commits
    /// the open transaction when it holds changes in the range, so the
    /// next holder reads them; a lock going to NULL forgets the cached
    /// items of the range. A WRITE lock kept as READ keeps its clean
    /// items: nobody can change them while we may read.
    pub async fn invalidate_lock(
        &self,
        start: &Key,
        end: &Key,
        old_can_write: bool,
        new_can_read: bool,
    ) -> Result<(), i32> {
        if old_can_write && self.inner.items.has_dirty_in(start, end) {
            self.inner.commit().await?;
        }
        if !new_can_read {
            self.inner.items.invalidate(start, end);
        }
        Ok(())
    }

    /// Commits the open transaction if anything changed; the error of a
    /// failed commit is returned.
    pub async fn commit(&self) -> Result<(), i32> {
        self.inner.commit().await
    }

    /// Commits and closes the open transaction even when nothing changed
    /// (the server's SYNC_LOG_TREES): the server finalizes a tree only
    /// while no transaction is open in it. A closed mount has nothing to do.
    pub async fn close_transaction(&self) -> Result<(), i32> {
        self.inner.commit_as(CommitKind::Always).await
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Dropping the handle cancels the timer task.
        self.timer.take();
        self.merger.take();
        self.compactor.take();
    }
}

async fn commit_timer(weak: Weak<Inner>, rt: Runtime, interval: Duration) {
    loop {
        rt.sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.has_changes() && inner.commit().await.is_ok() {
            inner.lock().stats.timer_commits += 1;
        }
    }
}

async fn get_log_trees(link: &Arc<dyn ServerLink>) -> Result<LogTrees, i32> {
    let reply = link.call(Cmd::GetLogTrees, Vec::new()).await?;
    LogTrees::read_from_bytes(&reply).map_err(|_| libc::EIO)
}

/// Releases its hold on the transaction when dropped.
struct HoldToken {
    inner: Arc<Inner>,
}

impl Drop for HoldToken {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        debug_assert!(st.holders > 0);
        st.holders -= 1;
        let drained = st.holders == 0;
        drop(st);
        if drained {
            self.inner.waiters.wake_all();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, TransState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what holds and item calls need to know of a new tree.
    fn publish(&self, lt: &LogTrees) {
        let mut st = self.lock();
        st.seq = lt.get_trans_seq.get();
        st.meta_avail_nr = lt.meta_avail.total_nr.get();
        st.meta_low = lt.meta_avail.flags.get() & ALLOC_FLAG_LOW != 0;
        st.data_avail_nr = lt.data_avail.total_len.get();
        st.data_low = lt.data_avail.flags.get() & ALLOC_FLAG_LOW != 0;
        st.flags_at = self.rt.now();
        st.item_root_height = lt.item_root.height;
    }

    fn srch_pending_nr(&self) -> usize {
        self.srch_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn has_changes(&self) -> bool {
        self.items.dirty_usage().0 > 0
            || self.srch_pending_nr() > 0
            || self.btree.cache().dirty_count() > 0
            || self.inode_delta.load(Ordering::Relaxed) != 0
    }

    /// Metadata blocks the next commit may need to COW, generously.
    fn dirty_block_estimate(&self) -> u64 {
        let (nr, bytes) = self.items.dirty_usage();
        // Each srch entry takes at most 26 bytes of a leaf; a new leaf
        // may COW its path of parents.
        let srch = self.srch_pending_nr() as u64;
        let srch_blocks = if srch == 0 {
            0
        } else {
            srch * SRCH_ENTRY_MAX_BYTES as u64 / SRCH_BLOCK_SAFE_BYTES as u64 + 4
        };
        if nr == 0 {
            return self.btree.cache().dirty_count() as u64 + srch_blocks;
        }
        let height = self.lock().item_root_height as u64 + 1;
        // Leaves half full after splits, each with its path, plus the bloom
        // block and allocator list blocks.
        let leaves = (bytes / (LEAF_EMPTY_FREE / 2)) as u64 + 1;
        self.btree.cache().dirty_count() as u64 + leaves * (height + 1) + 4 + srch_blocks
    }

    async fn hold(self: &Arc<Self>, allocating: bool) -> Result<HoldGuard, i32> {
        loop {
            self.waiters.wait_until(|| !self.lock().committing).await;
            if self.lock().closed {
                self.reopen().await?;
                continue;
            }
            let est = self.dirty_block_estimate();
            let (meta_short, data_short, any_low, stale, meta_low) = {
                let st = self.lock();
                if let Some(e) = st.broken {
                    return Err(e);
                }
                // The server tops data_avail up at GET_LOG_TREES; without
                // LOW it still has more to give, so commit rather than run
                // dry.
                (
                    st.meta_avail_nr < 2 * est || st.meta_avail_nr < META_AVAIL_MIN_BLOCKS,
                    st.data_avail_nr < self.data_fill_lo && !st.data_low,
                    st.meta_low || st.data_low,
                    self.rt.now().saturating_sub(st.flags_at) >= LOW_RECHECK_INTERVAL,
                    st.meta_low,
                )
            };
            if (meta_short || data_short) && self.has_changes() {
                self.lock().stats.pressure_commits += 1;
                self.commit().await?;
                continue;
            }
            if allocating && any_low && stale {
                self.lock().stats.low_rechecks += 1;
                self.commit_as(CommitKind::Always).await?;
                continue;
            }
            if allocating && meta_low {
                return Err(libc::ENOSPC);
            }
            let mut st = self.lock();
            if st.committing || st.closed {
                continue;
            }
            st.holders += 1;
            drop(st);
            return Ok(HoldGuard(Box::new(HoldToken {
                inner: self.clone(),
            })));
        }
    }

    async fn commit(&self) -> Result<(), i32> {
        self.commit_as(CommitKind::IfChanged).await
    }

    /// Step 9 of §3.2, at the first hold after a commit: `GET_LOG_TREES`
    /// opens the next transaction with a new seq and fresh allocators.
    async fn reopen(&self) -> Result<(), i32> {
        let _serial = self.commit_lock.lock().await;
        self.reopen_locked().await
    }

    /// [`Inner::reopen`] for a caller that holds `commit_lock`.
    async fn reopen_locked(&self) -> Result<(), i32> {
        {
            let st = self.lock();
            if let Some(e) = st.broken {
                return Err(e);
            }
            if !st.closed {
                return Ok(());
            }
        }
        let mut ts = self.tree.lock().await;
        let next = self.retry(|| get_log_trees(&self.link)).await?;
        if next.nr != ts.lt.nr {
            ts.bloom_set.clear();
            self.items.end_log_tree();
        }
        ts.alloc = ListAlloc::new(self.btree.cache().clone(), next.meta_avail, next.meta_freed);
        ts.lt = next;
        self.publish(&next);
        self.lock().closed = false;
        drop(ts);
        self.waiters.wake_all();
        Ok(())
    }

    async fn commit_as(&self, kind: CommitKind) -> Result<(), i32> {
        let _serial = self.commit_lock.lock().await;
        if let Some(e) = self.lock().broken {
            return Err(e);
        }
        self.lock().committing = true;
        self.waiters.wait_until(|| self.lock().holders == 0).await;
        let res = self.commit_locked(kind).await;
        let mut st = self.lock();
        st.committing = false;
        if res.is_ok() {
            st.stats.commits += 1;
        }
        drop(st);
        self.waiters.wake_all();
        res
    }

    /// Runs `step` until it succeeds, sleeping `commit_retry` between
    /// tries; without a retry delay the first error is returned.
    async fn retry<T, F, Fut>(&self, mut step: F) -> Result<T, i32>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, i32>>,
    {
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.opts.commit_retry {
                    None => return Err(e),
                    Some(d) => {
                        self.lock().stats.retries += 1;
                        self.rt.sleep(d).await;
                    }
                },
            }
        }
    }

    async fn commit_locked(&self, kind: CommitKind) -> Result<(), i32> {
        if self.lock().closed {
            if !self.has_changes() {
                // The next hold opens a transaction with fresh allocators.
                return Ok(());
            }
            // Items written without a hold (tests of this layer): they
            // need a tree to go into.
            self.reopen_locked().await?;
        }
        let mut ts = self.tree.lock().await;
        let snap = self.items.dirty_items();
        let delta = self.inode_delta.load(Ordering::Relaxed);
        if kind == CommitKind::IfChanged
            && snap.items.is_empty()
            && self.btree.cache().dirty_count() == 0
            && delta == 0
            && !ts.data_changed
            && self.srch_pending_nr() == 0
        {
            return Ok(());
        }
        // Holders are drained: every entry logged so far belongs to this
        // transaction, and it lands in the tree this commit writes.
        let srch =
            std::mem::take(&mut *self.srch_pending.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = self.build_tree(&mut ts, &snap, &srch).await {
            // The dirty tree is unspecified now: nothing more can commit.
            self.lock().broken = Some(libc::EIO);
            return Err(e);
        }
        let mut lt = ts.lt;
        lt.meta_avail = ts.alloc.avail;
        lt.meta_freed = ts.alloc.freed;
        lt.inode_count_delta = (delta as u64).into();

        // Steps 5 and 6: every dirty metadata block, then the data device.
        self.retry(|| async {
            self.btree
                .cache()
                .write_dirty_and_flush()
                .await
                .map_err(errno)?;
            self.data_dev.flush().await.map_err(|_| libc::EIO)
        })
        .await?;
        // Step 7: the server's super write makes it durable.
        self.retry(|| async {
            self.link
                .call(Cmd::CommitLogTrees, lt.as_bytes().to_vec())
                .await
                .map(|_| ())
        })
        .await?;
        // Step 8.
        self.items.write_done(&snap);
        self.inode_delta.fetch_sub(delta, Ordering::Relaxed);
        ts.data_changed = false;
        // Step 9 waits for the next hold (`reopen`).
        ts.lt = lt;
        self.lock().closed = true;
        Ok(())
    }

    /// Steps 2–4: dirty items into the log tree, bloom bits, srch log
    /// entries, allocators.
    async fn build_tree(
        &self,
        ts: &mut TreeState,
        snap: &DirtySnapshot,
        srch: &[SrchEntry],
    ) -> Result<(), i32> {
        let TreeState {
            lt,
            alloc,
            bloom_set,
            ..
        } = ts;
        if !snap.items.is_empty() {
            let mut root = lt.item_root;
            self.btree
                .insert_list(&mut root, alloc, &snap.items)
                .await
                .map_err(errno)?;
            lt.item_root = root;
            lt.max_item_seq = lt.max_item_seq.get().max(snap.max_seq).into();
        }
        let missing: Vec<Key> = snap
            .lock_starts
            .iter()
            .filter(|k| !bloom_set.contains(k))
            .copied()
            .collect();
        if !missing.is_empty() {
            self.set_bloom(lt, alloc, &missing).await.map_err(errno)?;
            bloom_set.extend(missing);
        }
        if !srch.is_empty() {
            let mut w =
                SrchWriter::new(self.btree.cache(), alloc, lt.srch_file, true).map_err(errno)?;
            for e in srch {
                w.append(e).await.map_err(errno)?;
            }
            lt.srch_file = w.finish().map_err(errno)?;
        }
        Ok(())
    }

    /// Sets the bits of `starts` in the tree's bloom block, COWing it.
    async fn set_bloom(
        &self,
        lt: &mut LogTrees,
        alloc: &mut ListAlloc,
        starts: &[Key],
    ) -> Result<(), Error> {
        let cache = self.btree.cache();
        let old = lt.bloom_ref;
        let mut buf = if old.blkno.get() == 0 {
            AlignedBuf::new(LG_BLOCK_SIZE)
        } else {
            let b = cache.read(&old, MAGIC_BLOOM).await?;
            let bb = BloomBlock::ref_from_bytes(b.data())
                .map_err(|_| Error::corrupt("bloom block size"))?;
            if starts.iter().all(|k| bb.may_contain(k)) {
                return Ok(());
            }
            b.to_buf()
        };
        {
            let bb = BloomBlock::mut_from_bytes(&mut buf[..])
                .map_err(|_| Error::corrupt("bloom block size"))?;
            for k in starts {
                for bit in bloom_bits(k) {
                    bb.set_bit(bit);
                }
            }
        }
        let (blkno, seq) =
            if old.blkno.get() != 0 && cache.dirty_seq(old.blkno.get()) == Some(old.seq.get()) {
                (old.blkno.get(), old.seq.get())
            } else {
                let new = alloc.alloc().await?;
                if old.blkno.get() != 0 {
                    alloc.free(old.blkno.get()).await?;
                    cache.forget(old.blkno.get());
                }
                (new, cache.new_seq())
            };
        cache.put_dirty(blkno, seq, MAGIC_BLOOM, buf)?;
        lt.bloom_ref = BlockRef::new(blkno, seq);
        Ok(())
    }

    fn trans_seq(&self) -> u64 {
        self.lock().seq
    }

    /// The seq of items written now (§2.1): the open transaction's seq, or
    /// the write_seq of a lock granted since, whichever is higher. A write
    /// grant follows the previous holder's commit, so the new version
    /// outranks every older one whatever tree holds it; raising it for
    /// every later item is harmless because each grant's write_seq is
    /// above every seq the server handed out before.
    fn item_seq(&self) -> u64 {
        self.trans_seq()
            .max(self.lock_write_seq.load(Ordering::Relaxed))
    }

    async fn alloc_data(&self, max_blocks: u64) -> Result<(u64, u64), i32> {
        let mut ts = self.tree.lock().await;
        let TreeState {
            lt,
            alloc,
            data_changed,
            ..
        } = &mut *ts;
        *data_changed = true;
        let res = alloc_extent(&self.btree, alloc, &mut lt.data_avail, max_blocks).await;
        let mut st = self.lock();
        st.meta_avail_nr = alloc.avail.total_nr.get();
        st.data_avail_nr = lt.data_avail.total_len.get();
        drop(st);
        res.map_err(errno)
    }

    async fn free_data(&self, blkno: u64, count: u64) -> Result<(), i32> {
        let mut ts = self.tree.lock().await;
        let TreeState {
            lt,
            alloc,
            data_changed,
            ..
        } = &mut *ts;
        *data_changed = true;
        let res = free_extent(&self.btree, alloc, &mut lt.data_freed, blkno, count).await;
        let nr = alloc.avail.total_nr.get();
        self.lock().meta_avail_nr = nr;
        res.map_err(errno)
    }

    async fn alloc_inodes(&self, count: u64) -> Result<(u64, u64), i32> {
        if count == 0 {
            return Err(libc::EINVAL);
        }
        let mut pool = self.inode_pool.lock().await;
        if pool.1 == 0 {
            let reply = self
                .link
                .call(
                    Cmd::AllocInodes,
                    INODE_ALLOC_BATCH_NR.to_le_bytes().to_vec(),
                )
                .await?;
            let ia = NetInodeAlloc::read_from_bytes(&reply).map_err(|_| libc::EIO)?;
            if ia.nr.get() == 0 {
                return Err(libc::ENOSPC);
            }
            *pool = (ia.ino.get(), ia.nr.get());
        }
        let take = count.min(pool.1);
        let first = pool.0;
        *pool = (first + take, pool.1 - take);
        Ok((first, take))
    }
}

impl Items for Mount {
    fn lookup(&self, key: Key) -> ItemFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            self.check_lock(&key, false)?;
            self.inner.items.lookup(&self.inner.forest, &key).await
        })
    }

    fn next(&self, first: Key, last: Key) -> ItemFuture<'_, Option<(Key, Vec<u8>)>> {
        Box::pin(async move {
            self.check_lock(&first, false)?;
            self.inner
                .items
                .next(&self.inner.forest, &first, &last)
                .await
        })
    }

    fn prev(&self, last: Key, first: Key) -> ItemFuture<'_, Option<(Key, Vec<u8>)>> {
        Box::pin(async move {
            self.check_lock(&last, false)?;
            self.inner
                .items
                .prev(&self.inner.forest, &last, &first)
                .await
        })
    }

    fn create(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()> {
        Box::pin(async move {
            self.check_lock(&key, true)?;
            let seq = self.inner.item_seq();
            self.inner
                .items
                .create(&self.inner.forest, key, val, seq)
                .await
        })
    }

    fn update(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()> {
        Box::pin(async move {
            self.check_lock(&key, true)?;
            let seq = self.inner.item_seq();
            self.inner
                .items
                .update(&self.inner.forest, key, val, seq)
                .await
        })
    }

    fn delete(&self, key: Key) -> ItemFuture<'_, ()> {
        Box::pin(async move {
            self.check_lock(&key, true)?;
            let seq = self.inner.item_seq();
            self.inner.items.delete(&self.inner.forest, key, seq).await
        })
    }

    fn create_force(&self, key: Key, val: Vec<u8>) -> ItemFuture<'_, ()> {
        Box::pin(async move {
            self.check_lock(&key, true)?;
            let seq = self.inner.item_seq();
            if is_delta_key(&key) {
                let d = TotlValue::read_from_bytes(&val).map_err(|_| libc::EINVAL)?;
                self.inner
                    .items
                    .add_delta(key, d.total.get(), d.count.get(), seq);
                return Ok(());
            }
            self.inner
                .items
                .create_force(&self.inner.forest, key, val, seq)
                .await
        })
    }

    fn delete_force(&self, key: Key) -> ItemFuture<'_, ()> {
        Box::pin(async move {
            self.check_lock(&key, true)?;
            let seq = self.inner.item_seq();
            self.inner
                .items
                .delete_force(&self.inner.forest, key, seq)
                .await
        })
    }

    fn forget(&self, first: Key, last: Key) {
        self.inner.items.invalidate(&first, &last);
    }
}

impl Transactions for Mount {
    fn hold(&self, allocating: bool) -> ItemFuture<'_, HoldGuard> {
        Box::pin(async move { self.inner.hold(allocating).await })
    }

    fn sync(&self) -> ItemFuture<'_, ()> {
        // An explicit sync also opens the next transaction at once, as
        // the reference's commit does: its GET_LOG_TREES is where the
        // server finalizes the tree just committed for a log merge. Only
        // commits nobody asked for (timer, lock invalidation, pressure)
        // leave the mount closed, so idle mounts hold no seq open.
        Box::pin(async move {
            self.inner.commit().await?;
            self.inner.reopen().await
        })
    }

    fn trans_seq(&self) -> u64 {
        self.inner.trans_seq()
    }

    fn alloc_data(&self, max_blocks: u64) -> ItemFuture<'_, (u64, u64)> {
        Box::pin(async move { self.inner.alloc_data(max_blocks).await })
    }

    fn free_data(&self, blkno: u64, count: u64) -> ItemFuture<'_, ()> {
        Box::pin(async move { self.inner.free_data(blkno, count).await })
    }

    fn alloc_inodes(&self, count: u64) -> ItemFuture<'_, (u64, u64)> {
        Box::pin(async move { self.inner.alloc_inodes(count).await })
    }

    fn add_inode_count(&self, delta: i64) {
        self.inner.inode_delta.fetch_add(delta, Ordering::Relaxed);
    }

    fn srch_add(&self, entry: SrchEntry) {
        self.inner
            .srch_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }
}
