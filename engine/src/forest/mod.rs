//! Reading the forest: the merged view of `fs_root` and every mount's log
//! tree (reference §2.1–§2.2, `forest.c`).
//!
//! A read around a key works on the *stable roots* the server hands out with
//! `GET_ROOTS` (the trees of the last written super):
//! 1. the `fs_root` leaf that would hold the key is read;
//! 2. every `log_trees` item of `logs_root` is visited; a tree whose bloom
//!    block lacks one of the three bits of the key's lock start key is
//!    skipped (a `bloom_ref` with blkno 0 is skipped without reading, §12),
//!    else its leaf around the key is read;
//! 3. only the key range that the lock range *and every visited leaf* cover
//!    is trusted: items outside it are dropped;
//! 4. per key the highest seq wins; on a tie the first seen (`fs_root`, then
//!    log trees in `logs_root` key order) wins; tombstones compete like any
//!    item and are returned flagged so the caller can hide the key.
//!
//! Guarantees:
//! * A [`ReadBatch`] is built from one set of roots only. On `ESTALE`
//!   anywhere (a block rewritten since the roots were taken) everything
//!   gathered is thrown away and the read restarts with fresh roots (traps
//!   14: f5577e26, 857a3957). Two ESTALEs on the *same* roots are corruption:
//!   EIO.
//! * Deltas are never summed here: the locked read path keeps the highest
//!   seq (§12, "Deltas on read").
//! * [`lock_range`] is the exact cluster-lock range of §4.2: its start key is
//!   the bloom key a writer sets and a reader tests, so both sides agree.
//!
//! Touches `block` (the cache, read-only), `format` and the `link` (GET_ROOTS
//! only). Never writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use zerocopy::FromBytes;

use crate::block::{BlockCache, Error};
use crate::btree::Btree;
use crate::format::bloom::BloomBlock;
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::btree_block::BlockView;
use crate::format::items::log_trees_key;
use crate::format::key::{index_type, zone, ORPHAN_TYPE};
use crate::format::log_trees::LogTrees;
use crate::format::net::{Cmd, NetRoots};
use crate::format::superblock::BtreeRoot;
use crate::format::{BlockRef, Key, BTREE_MAX_HEIGHT, MAGIC_BLOOM, MAGIC_BTREE};
use crate::link::ServerLink;

/// Inodes that share one inode-group lock (§4.2).
pub const LOCK_INODE_GROUP_NR: u64 = 1024;
/// Seqs that share one seq-index lock (§4.2).
pub const LOCK_SEQ_GROUP_NR: u64 = 1024;
/// `logs_root` items read per `range` call while listing log trees.
const LOG_TREES_BATCH_NR: usize = 256;

/// The cluster lock range `[start, end]` that covers `key` (§4.2). The start
/// key is the lock's name and its bloom key.
///
/// Inode groups, seq-index groups, the orphan range and whole zones are the
/// reference's ranges. A key of the INODE_INDEX or ORPHAN zone outside their
/// defined sub-ranges (no item lives there, but `next`/`prev` cursors pass
/// through) gets the gap between them, so ranges never overlap and every
/// range contains its key.
pub fn lock_range(key: &Key) -> (Key, Key) {
    let z = key.zone;
    let zone_start = Key::new(z, 0, 0, 0, 0, 0);
    let zone_end = Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    let spans: Vec<(Key, Key)> = match z {
        zone::FS => {
            let group = key.first & !(LOCK_INODE_GROUP_NR - 1);
            return (
                Key::new(zone::FS, group, 0, 0, 0, 0),
                Key::new(
                    zone::FS,
                    group | (LOCK_INODE_GROUP_NR - 1),
                    u8::MAX,
                    u64::MAX,
                    u64::MAX,
                    u8::MAX,
                ),
            );
        }
        zone::INODE_INDEX => [index_type::META_SEQ, index_type::DATA_SEQ]
            .iter()
            .map(|&ty| {
                (
                    Key::new(z, 0, ty, 0, 0, 0),
                    Key::new(z, 0, ty, u64::MAX, u64::MAX, u8::MAX),
                )
            })
            .collect(),
        zone::ORPHAN => vec![(
            Key::new(z, 0, ORPHAN_TYPE, 0, 0, 0),
            Key::new(z, 0, ORPHAN_TYPE, u64::MAX, 0, 0),
        )],
        // totl, indx, quota and anything else: the whole zone.
        _ => Vec::new(),
    };
    let mut lo = zone_start;
    for (s, e) in &spans {
        if key < s {
            return (lo, s.dec());
        }
        if key <= e {
            if z == zone::INODE_INDEX {
                let group = key.second & !(LOCK_SEQ_GROUP_NR - 1);
                return (
                    Key::new(z, 0, key.ty, group, 0, 0),
                    Key::new(
                        z,
                        0,
                        key.ty,
                        group | (LOCK_SEQ_GROUP_NR - 1),
                        u64::MAX,
                        u8::MAX,
                    ),
                );
            }
            return (*s, *e);
        }
        lo = e.inc();
    }
    (lo, zone_end)
}

/// One merged item of a forest read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForestItem {
    pub seq: u64,
    /// A tombstone: the key is absent, and this hides older versions.
    pub deletion: bool,
    pub val: Vec<u8>,
}

/// The result of one read: every item of the trusted range `[start, end]`
/// (which always contains the key asked for), tombstones included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub start: Key,
    pub end: Key,
    pub items: BTreeMap<Key, ForestItem>,
}

/// Counters for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForestStats {
    pub reads: u64,
    pub stale_retries: u64,
    pub bloom_skips: u64,
    pub trees_read: u64,
}

/// The forest reader of one mount.
pub struct Forest {
    btree: Btree,
    link: Arc<dyn ServerLink>,
    stats: std::sync::Mutex<ForestStats>,
}

impl std::fmt::Debug for Forest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forest")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Why one attempt on one set of roots failed (also the weak reader's).
pub(crate) enum Attempt {
    Stale,
    Fail(i32),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Attempt {
        match e {
            Error::Stale(_) => Attempt::Stale,
            other => Attempt::Fail(other.errno()),
        }
    }
}

impl Forest {
    pub fn new(cache: Arc<BlockCache>, link: Arc<dyn ServerLink>) -> Forest {
        Forest {
            btree: Btree::new(cache),
            link,
            stats: Default::default(),
        }
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        self.btree.cache()
    }

    pub fn stats(&self) -> ForestStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut ForestStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The stable roots of the last written super.
    pub async fn get_roots(&self) -> Result<NetRoots, i32> {
        let reply = self.link.call(Cmd::GetRoots, Vec::new()).await?;
        NetRoots::read_from_bytes(&reply).map_err(|_| libc::EIO)
    }

    /// Reads the items around `key` within the lock range `[lock_start,
    /// lock_end]` (which must contain `key`), retrying with fresh roots on
    /// ESTALE.
    pub async fn read_items(
        &self,
        key: &Key,
        lock_start: &Key,
        lock_end: &Key,
    ) -> Result<ReadBatch, i32> {
        assert!(
            lock_start <= key && key <= lock_end,
            "key {key} outside its lock range"
        );
        self.count(|s| s.reads += 1);
        let mut prev_roots: Option<NetRoots> = None;
        loop {
            let roots = self.get_roots().await?;
            match self
                .read_with_roots(&roots, key, lock_start, lock_end)
                .await
            {
                Ok(batch) => {
                    debug_assert!(batch.start <= *key && *key <= batch.end);
                    return Ok(batch);
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Stale) => {
                    // Everything gathered from these roots is dropped with
                    // the failed attempt: nothing carries into the retry.
                    if prev_roots == Some(roots) {
                        return Err(libc::EIO);
                    }
                    self.count(|s| s.stale_retries += 1);
                    prev_roots = Some(roots);
                }
            }
        }
    }

    /// One attempt on one set of roots.
    async fn read_with_roots(
        &self,
        roots: &NetRoots,
        key: &Key,
        lock_start: &Key,
        lock_end: &Key,
    ) -> Result<ReadBatch, Attempt> {
        let mut batch = ReadBatch {
            start: *lock_start,
            end: *lock_end,
            items: BTreeMap::new(),
        };
        self.read_tree(&roots.fs_root, key, &mut batch).await?;

        let trees = self.log_trees(&roots.logs_root).await?;
        for lt in &trees {
            if lt.item_root.is_empty() && lt.bloom_ref.blkno.get() == 0 {
                continue;
            }
            if lt.bloom_ref.blkno.get() == 0 {
                self.count(|s| s.bloom_skips += 1);
                continue;
            }
            let bloom = self.cache().read(&lt.bloom_ref, MAGIC_BLOOM).await?;
            let bb =
                BloomBlock::ref_from_bytes(bloom.data()).map_err(|_| Attempt::Fail(libc::EIO))?;
            if !bb.may_contain(lock_start) {
                self.count(|s| s.bloom_skips += 1);
                continue;
            }
            self.count(|s| s.trees_read += 1);
            self.read_tree(&lt.item_root, key, &mut batch).await?;
        }
        let (start, end) = (batch.start, batch.end);
        batch.items.retain(|k, _| start <= *k && *k <= end);
        Ok(batch)
    }

    /// Every log_trees item of `logs_root`, in key order.
    async fn log_trees(&self, logs_root: &BtreeRoot) -> Result<Vec<LogTrees>, Attempt> {
        let mut out = Vec::new();
        let mut start = log_trees_key(0, 0);
        let end = log_trees_key(u64::MAX, u64::MAX);
        loop {
            let rb = self
                .btree
                .range(logs_root, &start, &end, LOG_TREES_BATCH_NR)
                .await?;
            for it in &rb.items {
                let lt =
                    LogTrees::read_from_bytes(&it.val).map_err(|_| Attempt::Fail(libc::EIO))?;
                out.push(lt);
            }
            match rb.next {
                Some(n) => start = n,
                None => return Ok(out),
            }
        }
    }

    /// Reads the leaf of `root` that would hold `key`, narrows the batch's
    /// trusted range to the leaf's bounds and merges its items.
    async fn read_tree(
        &self,
        root: &BtreeRoot,
        key: &Key,
        batch: &mut ReadBatch,
    ) -> Result<(), Attempt> {
        if root.height > BTREE_MAX_HEIGHT || (root.height > 0 && root.ref_.is_null()) {
            return Err(Attempt::Fail(libc::EIO));
        }
        if root.is_empty() {
            // An empty tree covers every key.
            return Ok(());
        }
        let mut r = root.ref_;
        let mut level = root.height - 1;
        let mut upper = Key::MAX;
        let mut lower: Option<Key> = None;
        let cache = self.cache();
        loop {
            let block = cache.read(&r, MAGIC_BTREE).await?;
            let view = BlockView::new(block.data()).map_err(Error::from)?;
            if view.level() != level || (level > 0 && view.is_empty()) {
                return Err(Attempt::Fail(libc::EIO));
            }
            if level == 0 {
                if let Some(l) = lower {
                    batch.start = batch.start.max(l.inc());
                }
                batch.end = batch.end.min(upper);
                for i in 0..view.len() {
                    let k = view.key(i);
                    if k < batch.start || k > batch.end {
                        continue;
                    }
                    let it = view.node_item(i);
                    let newer = batch.items.get(&k).is_none_or(|cur| it.seq > cur.seq);
                    if newer {
                        batch.items.insert(
                            k,
                            ForestItem {
                                seq: it.seq,
                                deletion: it.flags & ITEM_FLAG_DELETION != 0,
                                val: it.val,
                            },
                        );
                    }
                }
                return Ok(());
            }
            // The first parent item whose key is >= key; the rightmost
            // spine's Key::MAX makes this total for a valid tree.
            let mut idx = view.lower_bound(key);
            if idx == view.len() {
                idx = view.len() - 1;
            }
            let k = view.key(idx);
            upper = upper.min(k);
            if idx > 0 {
                let l = view.key(idx - 1);
                lower = Some(lower.map_or(l, |cur: Key| cur.max(l)));
            }
            r = BlockRef::read_from_bytes(view.value(idx)).map_err(|_| Attempt::Fail(libc::EIO))?;
            level -= 1;
        }
    }
}
