//! The item cache (reference §3.1, `item.c`).
//!
//! The cache holds *ranges*: non-overlapping key ranges `[start, end]` whose
//! contents are fully known. A key inside a cached range that has no item is
//! absent (negative caching). Items carry `dirty` (changed in the open
//! transaction), `persistent` (a version exists in the stable trees, so a
//! delete must leave a tombstone), `deletion` (a tombstone) and the seq they
//! were written with.
//!
//! Guarantees:
//! * Every cached item lies inside a cached range. A range holding a dirty
//!   item is never dropped; clean ranges are dropped least-recently-used
//!   first when the cache holds more than its item budget.
//! * A miss reads a leaf's worth of items around the key from the forest and
//!   inserts only the sub-ranges of the trusted range that are not cached
//!   yet: local (possibly dirty) state always wins over what was read.
//! * Read/commit barrier (§3.1, trap 18): a read that started before a
//!   commit completed is discarded and retried, so items from roots older
//!   than a just-committed (and perhaps since dropped) local item never enter
//!   the cache.
//! * `write_done` only cleans items not changed since the matching
//!   `dirty_items` snapshot.
//! * Delta items (`.totl.`, §2.5) live apart from the ranges: each key holds
//!   this mount's running sum of deltas *for the open log tree* (a log tree
//!   keeps one version per key, so every commit rewrites the cumulative
//!   sum). They are never dropped by shrinking, are reset by
//!   [`ItemCache::end_log_tree`] once a commit moved to a new tree, and are
//!   not visible to reads: the locked read path never sums deltas (§12).
//!
//! Touches `forest` (reads) and `format`; never the block cache or the
//! network directly. Locks: one short std mutex, never held across `.await`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use crate::btree::{ListItem, ListOp};
use crate::forest::{lock_range, Forest, ReadBatch};
use crate::format::btree::{item_bytes, ITEM_FLAG_DELETION};
use crate::format::items::TotlValue;
use crate::format::Key;
use zerocopy::IntoBytes;

/// Bytes of a delta item's value ([`TotlValue`]).
const DELTA_VAL_BYTES: usize = std::mem::size_of::<TotlValue>();

/// Default item budget of a cache.
pub const CACHE_MAX_ITEMS_DEFAULT: usize = 1 << 20;

#[derive(Debug, Clone)]
struct CItem {
    val: Vec<u8>,
    seq: u64,
    dirty: bool,
    persistent: bool,
    deletion: bool,
    /// `State::gen` when last changed.
    gen: u64,
}

/// This mount's running sum of deltas for one key in the open log tree.
#[derive(Debug, Clone, Copy)]
struct DeltaItem {
    total: u64,
    /// Two's complement, like the on-disk count.
    count: u64,
    seq: u64,
    dirty: bool,
    /// A commit to the open log tree carried this key, so a zero sum must
    /// still be written to replace that version.
    written: bool,
    gen: u64,
}

#[derive(Debug, Clone, Copy)]
struct CRange {
    end: Key,
    tick: u64,
}

#[derive(Debug, Default)]
struct State {
    /// start → range.
    ranges: BTreeMap<Key, CRange>,
    /// LRU: tick → range start.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    items: BTreeMap<Key, CItem>,
    deltas: BTreeMap<Key, DeltaItem>,
    dirty_nr: usize,
    dirty_bytes: usize,
    /// Lock start keys first dirtied, with the gen of the first change.
    dirty_locks: BTreeMap<Key, u64>,
    /// Bumped by every change.
    gen: u64,
    /// Bumped by every completed commit.
    read_barrier: u64,
}

/// What a commit writes: the sorted dirty items and the locks they fall in.
#[derive(Debug, Clone, Default)]
pub struct DirtySnapshot {
    pub items: Vec<ListItem>,
    pub max_seq: u64,
    pub lock_starts: Vec<Key>,
    pub gen: u64,
}

/// Counters for tests and the status tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub ranges: usize,
    pub items: usize,
    pub dirty: usize,
    pub dirty_bytes: usize,
    pub misses: u64,
    pub barrier_retries: u64,
    pub ranges_dropped: u64,
}

/// How one changing call treats the key.
enum Change {
    Create,
    Update,
    Delete,
    CreateForce,
    DeleteForce,
}

pub struct ItemCache {
    state: Mutex<State>,
    max_items: usize,
    misses: std::sync::atomic::AtomicU64,
    barrier_retries: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ItemCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemCache")
            .field("stats", &self.stats())
            .finish()
    }
}

fn range_of(st: &State, key: &Key) -> Option<(Key, Key)> {
    let (s, r) = st.ranges.range(..=*key).next_back()?;
    (r.end >= *key).then_some((*s, r.end))
}

impl State {
    fn touch(&mut self, start: Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(r) = self.ranges.get_mut(&start) {
            self.lru.remove(&r.tick);
            r.tick = tick;
            self.lru.insert(tick, start);
        }
    }

    fn add_range(&mut self, start: Key, end: Key) {
        debug_assert!(start <= end);
        self.tick += 1;
        let tick = self.tick;
        self.ranges.insert(start, CRange { end, tick });
        self.lru.insert(tick, start);
    }

    fn set_dirty(&mut self, key: Key, item: CItem, lock_start: Key) {
        self.gen += 1;
        let gen = self.gen;
        let mut item = item;
        item.gen = gen;
        item.dirty = true;
        if let Some(old) = self.items.get(&key) {
            if old.dirty {
                self.dirty_nr -= 1;
                self.dirty_bytes -= item_bytes(old.val.len());
            }
        }
        self.dirty_nr += 1;
        self.dirty_bytes += item_bytes(item.val.len());
        self.items.insert(key, item);
        // The latest change: write_done keeps locks changed after its snapshot.
        self.dirty_locks.insert(lock_start, gen);
    }

    fn remove_item(&mut self, key: &Key) {
        self.gen += 1;
        if let Some(old) = self.items.remove(key) {
            if old.dirty {
                self.dirty_nr -= 1;
                self.dirty_bytes -= item_bytes(old.val.len());
            }
        }
    }

    fn visible(&self, key: &Key) -> Option<&CItem> {
        self.items.get(key).filter(|it| !it.deletion)
    }
}

impl ItemCache {
    pub fn new(max_items: usize) -> ItemCache {
        ItemCache {
            state: Mutex::new(State::default()),
            max_items: max_items.max(1),
            misses: 0.into(),
            barrier_retries: 0.into(),
            dropped: 0.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> CacheStats {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.lock();
        CacheStats {
            ranges: st.ranges.len(),
            items: st.items.len(),
            dirty: st.dirty_nr,
            dirty_bytes: st.dirty_bytes,
            misses: self.misses.load(Relaxed),
            barrier_retries: self.barrier_retries.load(Relaxed),
            ranges_dropped: self.dropped.load(Relaxed),
        }
    }

    /// Number of dirty items and their item bytes in a leaf.
    pub fn dirty_usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.dirty_nr, st.dirty_bytes)
    }

    /// The completed-commit counter of the read/commit barrier.
    pub fn read_barrier(&self) -> u64 {
        self.lock().read_barrier
    }

    /// Makes sure `key` lies in a cached range, reading from the forest on
    /// a miss.
    async fn ensure_cached(&self, forest: &Forest, key: &Key) -> Result<(), i32> {
        loop {
            let barrier = {
                let mut st = self.lock();
                if let Some((s, _)) = range_of(&st, key) {
                    st.touch(s);
                    return Ok(());
                }
                st.read_barrier
            };
            self.misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (ls, le) = lock_range(key);
            let batch = forest.read_items(key, &ls, &le).await?;
            if self.insert_batch(batch, barrier) {
                // Never drop the range just read: the caller is about to use it.
                let mut st = self.lock();
                self.shrink_locked(&mut st, self.max_items, Some(*key));
            } else {
                self.barrier_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Inserts the uncached parts of a read. False if a commit completed
    /// since the read began: the batch is discarded.
    fn insert_batch(&self, batch: ReadBatch, barrier: u64) -> bool {
        let mut st = self.lock();
        if st.read_barrier != barrier {
            return false;
        }
        // Walk the trusted range, filling each gap between cached ranges.
        let mut cursor = batch.start;
        loop {
            let gap_end = match range_of(&st, &cursor) {
                Some((_, e)) => {
                    if e >= batch.end {
                        break;
                    }
                    cursor = e.inc();
                    continue;
                }
                None => {
                    // The next cached range above cursor bounds the gap.
                    let next_start = st
                        .ranges
                        .range((Bound::Excluded(cursor), Bound::Unbounded))
                        .next()
                        .map(|(s, _)| *s);
                    match next_start {
                        Some(ns) if ns <= batch.end => ns.dec(),
                        _ => batch.end,
                    }
                }
            };
            for (k, fi) in batch.items.range(cursor..=gap_end) {
                if fi.deletion {
                    continue;
                }
                debug_assert!(!st.items.contains_key(k), "item in an uncached gap");
                st.items.insert(
                    *k,
                    CItem {
                        val: fi.val.clone(),
                        seq: fi.seq,
                        dirty: false,
                        persistent: true,
                        deletion: false,
                        gen: 0,
                    },
                );
            }
            st.add_range(cursor, gap_end);
            if gap_end >= batch.end {
                break;
            }
            cursor = gap_end.inc();
        }
        true
    }

    /// Drops clean ranges, oldest first, until the item budget holds.
    pub fn shrink(&self) {
        let mut st = self.lock();
        self.shrink_locked(&mut st, self.max_items, None);
    }

    /// Drops every clean range (tests; memory pressure).
    pub fn drop_clean(&self) {
        let mut st = self.lock();
        self.shrink_locked(&mut st, 0, None);
    }

    fn shrink_locked(&self, st: &mut State, target: usize, keep: Option<Key>) {
        if st.items.len() <= target && target > 0 {
            return;
        }
        let order: Vec<(u64, Key)> = st.lru.iter().map(|(t, s)| (*t, *s)).collect();
        for (tick, start) in order {
            if target > 0 && st.items.len() <= target {
                break;
            }
            let end = st.ranges[&start].end;
            if keep.is_some_and(|k| start <= k && k <= end) {
                continue;
            }
            if st.items.range(start..=end).any(|(_, it)| it.dirty) {
                continue;
            }
            let keys: Vec<Key> = st.items.range(start..=end).map(|(k, _)| *k).collect();
            for k in keys {
                st.items.remove(&k);
            }
            st.ranges.remove(&start);
            st.lru.remove(&tick);
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn lookup(&self, forest: &Forest, key: &Key) -> Result<Option<Vec<u8>>, i32> {
        loop {
            self.ensure_cached(forest, key).await?;
            let st = self.lock();
            // A range may have been dropped since ensure_cached: read again.
            if range_of(&st, key).is_some() {
                return Ok(st.visible(key).map(|it| it.val.clone()));
            }
        }
    }

    /// The first visible item in `[first, last]`.
    pub async fn next(
        &self,
        forest: &Forest,
        first: &Key,
        last: &Key,
    ) -> Result<Option<(Key, Vec<u8>)>, i32> {
        let mut cursor = *first;
        while cursor <= *last {
            self.ensure_cached(forest, &cursor).await?;
            let st = self.lock();
            let Some((_, end)) = range_of(&st, &cursor) else {
                continue;
            };
            let stop = end.min(*last);
            if let Some((k, it)) = st.items.range(cursor..=stop).find(|(_, it)| !it.deletion) {
                return Ok(Some((*k, it.val.clone())));
            }
            if stop >= *last || end == Key::MAX {
                break;
            }
            cursor = end.inc();
        }
        Ok(None)
    }

    /// The last visible item in `[first, last]`.
    pub async fn prev(
        &self,
        forest: &Forest,
        last: &Key,
        first: &Key,
    ) -> Result<Option<(Key, Vec<u8>)>, i32> {
        let mut cursor = *last;
        while cursor >= *first {
            self.ensure_cached(forest, &cursor).await?;
            let st = self.lock();
            let Some((start, _)) = range_of(&st, &cursor) else {
                continue;
            };
            let stop = start.max(*first);
            if let Some((k, it)) = st
                .items
                .range(stop..=cursor)
                .rev()
                .find(|(_, it)| !it.deletion)
            {
                return Ok(Some((*k, it.val.clone())));
            }
            if stop <= *first || start == Key::MIN {
                break;
            }
            cursor = start.dec();
        }
        Ok(None)
    }

    pub async fn create(
        &self,
        forest: &Forest,
        key: Key,
        val: Vec<u8>,
        seq: u64,
    ) -> Result<(), i32> {
        self.change(forest, key, Some(val), seq, Change::Create)
            .await
    }

    pub async fn update(
        &self,
        forest: &Forest,
        key: Key,
        val: Vec<u8>,
        seq: u64,
    ) -> Result<(), i32> {
        self.change(forest, key, Some(val), seq, Change::Update)
            .await
    }

    pub async fn delete(&self, forest: &Forest, key: Key, seq: u64) -> Result<(), i32> {
        self.change(forest, key, None, seq, Change::Delete).await
    }

    pub async fn create_force(
        &self,
        forest: &Forest,
        key: Key,
        val: Vec<u8>,
        seq: u64,
    ) -> Result<(), i32> {
        self.change(forest, key, Some(val), seq, Change::CreateForce)
            .await
    }

    pub async fn delete_force(&self, forest: &Forest, key: Key, seq: u64) -> Result<(), i32> {
        self.change(forest, key, None, seq, Change::DeleteForce)
            .await
    }

    async fn change(
        &self,
        forest: &Forest,
        key: Key,
        val: Option<Vec<u8>>,
        seq: u64,
        how: Change,
    ) -> Result<(), i32> {
        let forced = matches!(how, Change::CreateForce | Change::DeleteForce);
        if let Some(v) = &val {
            if v.len() > crate::format::MAX_VAL_SIZE {
                return Err(libc::E2BIG);
            }
        }
        loop {
            if !forced {
                self.ensure_cached(forest, &key).await?;
            }
            let mut st = self.lock();
            let cached = range_of(&st, &key).is_some();
            if !cached && !forced {
                // Dropped between the read and now: read again.
                continue;
            }
            if !cached {
                // Forced writes never read: an empty range around the key.
                st.add_range(key, key);
            }
            let lock_start = lock_range(&key).0;
            let old = st.items.get(&key).cloned();
            // Without a read we can't know whether the stable trees hold
            // the key: assume they do, so a later delete leaves a tombstone.
            // Forced writes go to zones read without a cluster lock, where
            // a cached range's "absent" may be older than another mount's
            // commit: they never trust it.
            let persistent = old.as_ref().map_or(!cached || forced, |o| o.persistent);
            let present = old.as_ref().is_some_and(|o| !o.deletion);
            let new_item = |val: Vec<u8>, deletion: bool| CItem {
                val,
                seq,
                dirty: true,
                persistent,
                deletion,
                gen: 0,
            };
            match how {
                Change::Create if present => return Err(libc::EEXIST),
                Change::Update | Change::Delete if !present => return Err(libc::ENOENT),
                Change::Create | Change::Update | Change::CreateForce => {
                    let v = val.expect("writes carry a value");
                    st.set_dirty(key, new_item(v, false), lock_start);
                }
                Change::Delete | Change::DeleteForce => {
                    if !present && cached && old.is_none() && !forced {
                        // Known absent: nothing to hide.
                        return Ok(());
                    }
                    if persistent {
                        st.set_dirty(key, new_item(Vec::new(), true), lock_start);
                    } else {
                        st.remove_item(&key);
                    }
                }
            }
            return Ok(());
        }
    }

    /// Adds `(total, count)` (wrapping) to the key's delta of the open log
    /// tree. A sum back at (0, 0) that no commit carried yet is dropped.
    pub fn add_delta(&self, key: Key, total: u64, count: u64, seq: u64) {
        let bytes = item_bytes(DELTA_VAL_BYTES);
        let mut st = self.lock();
        st.gen += 1;
        let gen = st.gen;
        let d = st.deltas.entry(key).or_insert(DeltaItem {
            total: 0,
            count: 0,
            seq,
            dirty: false,
            written: false,
            gen,
        });
        d.total = d.total.wrapping_add(total);
        d.count = d.count.wrapping_add(count);
        d.seq = seq;
        d.gen = gen;
        let was_dirty = std::mem::replace(&mut d.dirty, true);
        let drop_it = d.total == 0 && d.count == 0 && !d.written;
        if drop_it {
            st.deltas.remove(&key);
        }
        match (was_dirty, drop_it) {
            (false, false) => {
                st.dirty_nr += 1;
                st.dirty_bytes += bytes;
            }
            (true, true) => {
                st.dirty_nr -= 1;
                st.dirty_bytes -= bytes;
            }
            _ => {}
        }
        if !drop_it {
            st.dirty_locks.insert(lock_range(&key).0, gen);
        }
    }

    /// Whether any item or delta in `[start, end]` is dirty: a lock over
    /// that range can't be given up before a commit.
    pub fn has_dirty_in(&self, start: &Key, end: &Key) -> bool {
        let st = self.lock();
        st.items.range(*start..=*end).any(|(_, it)| it.dirty)
            || st.deltas.range(*start..=*end).any(|(_, d)| d.dirty)
    }

    /// Forgets every clean item of `[start, end]` and the knowledge that
    /// the rest of it is absent (§4.4 step 4: another mount may change
    /// these keys once our lock is gone). Dirty items stay, each in a
    /// range of its own; cached parts outside `[start, end]` stay cached.
    /// Reads in flight are discarded through the barrier, so none of them
    /// brings back items read before the invalidation.
    pub fn invalidate(&self, start: &Key, end: &Key) {
        let mut st = self.lock();
        st.read_barrier += 1;
        let overlapping: Vec<(Key, CRange)> = {
            let first = range_of(&st, start).map_or(*start, |(s, _)| s);
            st.ranges
                .range(first..=*end)
                .map(|(s, r)| (*s, *r))
                .collect()
        };
        for (s, r) in overlapping {
            st.ranges.remove(&s);
            st.lru.remove(&r.tick);
            if s < *start {
                st.add_range(s, start.dec());
            }
            if r.end > *end {
                st.add_range(end.inc(), r.end);
            }
        }
        let lo = *start;
        let hi = *end;
        let keys: Vec<(Key, bool)> = st
            .items
            .range(lo..=hi)
            .map(|(k, it)| (*k, it.dirty))
            .collect();
        for (k, dirty) in keys {
            if dirty {
                st.add_range(k, k);
            } else {
                st.items.remove(&k);
            }
        }
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The mount moved to a new log tree: its deltas start from zero.
    /// Called after a commit, when nothing is dirty.
    pub fn end_log_tree(&self) {
        let mut st = self.lock();
        debug_assert!(st.deltas.values().all(|d| !d.dirty));
        st.deltas.retain(|_, d| d.dirty);
    }

    /// The dirty items, sorted, for a commit.
    pub fn dirty_items(&self) -> DirtySnapshot {
        let st = self.lock();
        let mut snap = DirtySnapshot {
            gen: st.gen,
            ..Default::default()
        };
        for (k, it) in st.items.iter().filter(|(_, it)| it.dirty) {
            snap.max_seq = snap.max_seq.max(it.seq);
            snap.items.push(ListItem {
                key: *k,
                seq: it.seq,
                flags: if it.deletion { ITEM_FLAG_DELETION } else { 0 },
                op: ListOp::Put(if it.deletion {
                    Vec::new()
                } else {
                    it.val.clone()
                }),
            });
        }
        for (k, d) in st.deltas.iter().filter(|(_, d)| d.dirty) {
            snap.max_seq = snap.max_seq.max(d.seq);
            let val = TotlValue {
                total: d.total.into(),
                count: d.count.into(),
            };
            snap.items.push(ListItem {
                key: *k,
                seq: d.seq,
                flags: 0,
                op: ListOp::Put(val.as_bytes().to_vec()),
            });
        }
        // Delta keys (zone 12) may sit between ordinary ones.
        snap.items.sort_by_key(|a| a.key);
        snap.lock_starts = st.dirty_locks.keys().copied().collect();
        snap
    }

    /// After the commit of `snap` is durable: bump the barrier, clean the
    /// items not changed since, drop committed tombstones, and mark items
    /// persistent.
    pub fn write_done(&self, snap: &DirtySnapshot) {
        let mut st = self.lock();
        st.read_barrier += 1;
        let keys: BTreeSet<Key> = snap.items.iter().map(|li| li.key).collect();
        for k in keys {
            if let Some(d) = st.deltas.get_mut(&k) {
                if d.dirty && d.gen <= snap.gen {
                    d.dirty = false;
                    d.written = true;
                    st.dirty_nr -= 1;
                    st.dirty_bytes -= item_bytes(DELTA_VAL_BYTES);
                }
                continue;
            }
            let Some(it) = st.items.get(&k) else {
                continue;
            };
            if !it.dirty || it.gen > snap.gen {
                continue;
            }
            if it.deletion {
                st.remove_item(&k);
                continue;
            }
            let bytes = item_bytes(it.val.len());
            let it = st.items.get_mut(&k).expect("present above");
            it.dirty = false;
            it.persistent = true;
            st.dirty_nr -= 1;
            st.dirty_bytes -= bytes;
        }
        st.dirty_locks.retain(|_, g| *g > snap.gen);
        drop(st);
        self.shrink();
    }
}
