//! The btree against a std `BTreeMap` model, and against the original's
//! unbalanced blocks, on both runtimes.
//!
//! The model tests run long seeded sequences of insert / force / update /
//! delete / insert_list / lookup / next / prev / range with values of 0..=896
//! bytes, so splits, joins, height growth and shrinking all happen. Every
//! phase ends with a commit (write-back + flush); every other phase also
//! drops the whole cache (or builds a new one) and reopens the tree from the
//! device. After each phase every block is verified (`Btree::check`: crc,
//! ref, BlockView structure, leaf hash table, key bounds), the blocks the tree
//! references are exactly the ones the test allocator has handed out (no
//! leak, no double reference), and the tree's contents equal the model.
//!
//! Runtimes: each model test runs on the production executor and then on the
//! deterministic simulation (`for_each_runtime`). COW seqs come from the
//! runtime's `random_u64`; in the simulation every device op stays pending
//! a seeded-random number of polls (`FaultDevice::set_completion_delay`), so
//! each seed interleaves I/O completions differently.
//!
//! Scale: `SCOUTFS_PROPTEST_OPS` (default 100000) is the number of random
//! operations across the model tests *on each runtime*; raise it for long
//! runs, e.g.
//! `SCOUTFS_PROPTEST_OPS=5000000 cargo test --release -p scoutfs-engine --test btree_model`.
//! `SCOUTFS_PROPTEST_SEED` sets the base seed; a failure prints the seed and
//! runtime, and setting the variable to that seed replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use drivers::{BlockDevice, FaultDevice};
use engine::block::{BlockCache, Error, Result};
use engine::btree::{BoxFuture, Btree, ListItem, ListOp, MetaAllocator};
use engine::format::btree_block::BlockView;
use engine::format::superblock::{BtreeRoot, SuperBlock};
use engine::format::{Key, LG_BLOCK_SIZE, MAGIC_BTREE, MAX_VAL_SIZE, SM_BLOCK_SIZE, SUPER_BLKNO};
use rand::rngs::SmallRng;
use rand::Rng;
use zerocopy::FromBytes;

mod runtime_env;
use runtime_env::*;

const FSID: u64 = 0x5c07_f500_u64;

/// A bump allocator that tracks every live block and reuses freed blocks
/// only after `commit`, like the real list allocator.
#[derive(Default)]
struct TestAlloc {
    next: u64,
    limit: u64,
    reusable: Vec<u64>,
    freed_now: Vec<u64>,
    live: BTreeSet<u64>,
}

impl TestAlloc {
    fn new(first: u64, limit: u64) -> Self {
        TestAlloc {
            next: first,
            limit,
            ..Default::default()
        }
    }

    fn commit(&mut self, rng: &mut SmallRng) {
        self.reusable.append(&mut self.freed_now);
        // Shuffle so reuse order varies.
        for i in (1..self.reusable.len()).rev() {
            let j = rng.gen_range(0..=i);
            self.reusable.swap(i, j);
        }
    }
}

impl MetaAllocator for TestAlloc {
    fn alloc_meta(&mut self) -> BoxFuture<'_, Result<u64>> {
        let r = if let Some(b) = self.reusable.pop() {
            Ok(b)
        } else if self.next < self.limit {
            self.next += 1;
            Ok(self.next - 1)
        } else {
            Err(Error::NoSpace("test device full".into()))
        };
        if let Ok(b) = r {
            assert!(self.live.insert(b), "allocated live block {b}");
        }
        Box::pin(std::future::ready(r))
    }

    fn free_meta(&mut self, blkno: u64) -> BoxFuture<'_, Result<()>> {
        assert!(
            self.live.remove(&blkno),
            "freed block {blkno} that isn't live"
        );
        self.freed_now.push(blkno);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Random operations per runtime across the two model tests.
fn total_ops() -> u64 {
    env_u64("SCOUTFS_PROPTEST_OPS", 100_000)
}

struct Harness {
    env: Env,
    dev: Arc<dyn BlockDevice>,
    cache: Arc<BlockCache>,
    btree: Btree,
    root: BtreeRoot,
    alloc: TestAlloc,
    model: BTreeMap<Key, Vec<u8>>,
    rng: SmallRng,
    reopens: u64,
}

impl Harness {
    fn new(env: &Env, dev_blocks: u64, cache_blocks: usize) -> Self {
        let dev: Arc<dyn BlockDevice> = Arc::new(env.device(dev_blocks * LG_BLOCK_SIZE as u64));
        let cache = Arc::new(BlockCache::new(dev.clone(), FSID, cache_blocks, env.seqs()));
        Harness {
            env: env.clone(),
            dev,
            btree: Btree::new(cache.clone()),
            cache,
            root: BtreeRoot::default(),
            alloc: TestAlloc::new(2, dev_blocks),
            model: BTreeMap::new(),
            rng: env.rng(),
            reopens: 0,
        }
    }

    async fn commit(&mut self) {
        self.cache.write_dirty_and_flush().await.unwrap();
        assert_eq!(self.cache.dirty_count(), 0);
        self.alloc.commit(&mut self.rng);
    }

    /// Drops the cache (alternately clearing it and building a new one over
    /// the same device) so the next reads come from disk.
    fn reopen(&mut self) {
        self.reopens += 1;
        if self.reopens.is_multiple_of(2) {
            self.cache.drop_clean();
        } else {
            let cache = Arc::new(BlockCache::new(
                self.dev.clone(),
                FSID,
                256,
                self.env.seqs(),
            ));
            self.btree = Btree::new(cache.clone());
            self.cache = cache;
        }
    }

    async fn verify(&mut self) {
        let check = self.btree.check(&self.root).await.unwrap();
        let referenced: BTreeSet<u64> = check.blknos.iter().copied().collect();
        assert_eq!(
            referenced, self.alloc.live,
            "tree blocks differ from live allocations"
        );
        assert_eq!(check.items, self.model.len());
        let mut got = Vec::new();
        let mut start = Key::MIN;
        loop {
            let batch = self
                .btree
                .range(&self.root, &start, &Key::MAX, 97)
                .await
                .unwrap();
            got.extend(batch.items.into_iter().map(|it| (it.key, it.val)));
            match batch.next {
                Some(k) => start = k,
                None => break,
            }
        }
        let want: Vec<(Key, Vec<u8>)> = self.model.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert!(got == want, "tree contents differ from the model");
    }

    fn key(&mut self, space: u64) -> Key {
        let n = self.rng.gen_range(0..space);
        Key::new(16, n / 4, 4, n % 4, 0, 0)
    }

    fn value(&mut self) -> Vec<u8> {
        let len = match self.rng.gen_range(0..4) {
            0 => 0,
            1 => self.rng.gen_range(0..=32),
            2 => self.rng.gen_range(0..=MAX_VAL_SIZE),
            _ => self.rng.gen_range(MAX_VAL_SIZE - 64..=MAX_VAL_SIZE),
        };
        let b: u8 = self.rng.gen();
        (0..len).map(|i| b.wrapping_add(i as u8)).collect()
    }

    /// One random operation checked against the model. `grow` biases toward
    /// inserts, else toward deletes.
    async fn step(&mut self, space: u64, grow: bool) {
        let key = self.key(space);
        let pick = self.rng.gen_range(0..100);
        let (ins, del) = if grow { (45, 60) } else { (15, 60) };
        let bt = self.btree.clone();
        if pick < ins {
            let v = self.value();
            let r = bt.insert(&mut self.root, &mut self.alloc, &key, &v).await;
            match self.model.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    assert_eq!(r, Err(Error::Exists))
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    r.unwrap();
                    e.insert(v);
                }
            }
        } else if pick < del {
            let r = bt.delete(&mut self.root, &mut self.alloc, &key).await;
            match self.model.remove(&key) {
                Some(v) => assert_eq!(r.unwrap().val, v),
                None => assert_eq!(r, Err(Error::NotFound)),
            }
        } else if pick < 70 {
            let v = self.value();
            let r = bt.update(&mut self.root, &mut self.alloc, &key, &v).await;
            match self.model.get_mut(&key) {
                Some(old) => {
                    r.unwrap();
                    *old = v;
                }
                None => assert_eq!(r, Err(Error::NotFound)),
            }
        } else if pick < 76 {
            let v = self.value();
            bt.force(&mut self.root, &mut self.alloc, &key, &v)
                .await
                .unwrap();
            self.model.insert(key, v);
        } else if pick < 78 {
            self.insert_list(space, grow).await;
        } else if pick < 85 {
            let got = bt.lookup(&self.root, &key).await.unwrap().map(|it| it.val);
            assert_eq!(got.as_ref(), self.model.get(&key));
        } else if pick < 90 {
            let got = bt
                .next(&self.root, &key)
                .await
                .unwrap()
                .map(|it| (it.key, it.val));
            let want = self.model.range(key..).next().map(|(k, v)| (*k, v.clone()));
            assert_eq!(got, want);
        } else if pick < 95 {
            let got = bt
                .prev(&self.root, &key)
                .await
                .unwrap()
                .map(|it| (it.key, it.val));
            let want = self
                .model
                .range(..=key)
                .next_back()
                .map(|(k, v)| (*k, v.clone()));
            assert_eq!(got, want);
        } else {
            let end = self.key(space).max(key);
            let max = self.rng.gen_range(1..64);
            let batch = bt.range(&self.root, &key, &end, max).await.unwrap();
            let want: Vec<Key> = self
                .model
                .range(key..=end)
                .map(|(k, _)| *k)
                .take(max)
                .collect();
            let got: Vec<Key> = batch.items.iter().map(|it| it.key).collect();
            assert_eq!(got, want);
            let more = self.model.range(key..=end).nth(max).map(|(k, _)| *k);
            assert_eq!(batch.next, more);
        }
    }

    async fn insert_list(&mut self, space: u64, grow: bool) {
        let n = self.rng.gen_range(1..200);
        let mut keys = BTreeSet::new();
        for _ in 0..n {
            keys.insert(self.key(space));
        }
        let mut list = Vec::new();
        for k in keys {
            let op = if self.rng.gen_range(0..100) < if grow { 70 } else { 30 } {
                ListOp::Put(self.value())
            } else {
                ListOp::Delete
            };
            let seq = self.rng.gen();
            list.push(ListItem {
                key: k,
                seq,
                flags: 0,
                op,
            });
        }
        let bt = self.btree.clone();
        bt.insert_list(&mut self.root, &mut self.alloc, &list)
            .await
            .unwrap();
        for li in &list {
            match &li.op {
                ListOp::Put(v) => {
                    self.model.insert(li.key, v.clone());
                    let it = bt.lookup(&self.root, &li.key).await.unwrap().unwrap();
                    assert_eq!(it.seq, li.seq);
                }
                ListOp::Delete => {
                    self.model.remove(&li.key);
                }
            }
        }
    }

    /// Deletes every item: the root must go away and every block with it.
    async fn empty(&mut self) {
        let keys: Vec<Key> = self.model.keys().copied().collect();
        let bt = self.btree.clone();
        for k in keys {
            bt.delete(&mut self.root, &mut self.alloc, &k)
                .await
                .unwrap();
            self.model.remove(&k);
        }
        assert_eq!(self.root, BtreeRoot::default());
        self.commit().await;
        self.verify().await;
        assert!(self.alloc.live.is_empty());
    }
}

/// Runs `ops` random operations in phases that alternate between growing
/// and shrinking, verifying and reopening between phases. Returns the
/// greatest height reached and the least height after the tree first grew
/// past one level.
async fn run_model(env: Env, ops: u64, space: u64, phase_ops: u64) -> (u8, u8) {
    let mut h = Harness::new(&env, 16384, 512);
    let mut max_height = 0;
    let mut min_height_after_max = u8::MAX;
    let mut done = 0;
    let mut phase = 0u64;
    while done < ops {
        let grow = phase % 4 < 2;
        let n = phase_ops.min(ops - done);
        for _ in 0..n {
            h.step(space, grow).await;
            max_height = max_height.max(h.root.height);
            if max_height > 1 {
                min_height_after_max = min_height_after_max.min(h.root.height);
            }
        }
        done += n;
        h.commit().await;
        if phase % 2 == 1 {
            h.reopen();
        }
        h.verify().await;
        phase += 1;
    }
    h.empty().await;
    (max_height, min_height_after_max.min(h.root.height))
}

#[test]
fn btree_matches_model_small_key_space() {
    // Many collisions: exists/not-found paths, updates, joins.
    let ops = total_ops() / 2;
    let runs = on_both_runtimes("btree_matches_model_small_key_space", 0, |env| {
        run_model(env, ops, 600, 2500)
    });
    for (max_h, min_h) in runs {
        assert!(max_h >= 2, "tree never grew (max height {max_h})");
        assert_eq!(min_h, 0);
    }
}

#[test]
fn btree_matches_model_large_key_space() {
    // A larger tree: more leaves, parent splits and joins, and (the last
    // phases' bulk of full-size values) a third level.
    let ops = total_ops() - total_ops() / 2;
    let runs = on_both_runtimes("btree_matches_model_large_key_space", 1, |env| {
        run_model(env, ops, 10_000, 5000)
    });
    for (max_h, _) in runs {
        assert!(max_h >= 2, "tree never grew (max height {max_h})");
    }
}

/// Sequential growth to three levels with full-size values and back down to
/// nothing: parent splits at the second level and the joins that undo them.
async fn grow_to_three_levels(env: Env, items: u64) -> u8 {
    let mut h = Harness::new(&env, 16384, 512);
    let bt = h.btree.clone();
    let mut order: Vec<u64> = (0..items).collect();
    for i in (1..order.len()).rev() {
        let j = h.rng.gen_range(0..=i);
        order.swap(i, j);
    }
    let val = vec![0xa5u8; MAX_VAL_SIZE];
    for (i, n) in order.iter().enumerate() {
        let key = Key::new(16, *n, 4, 0, 0, 0);
        bt.insert(&mut h.root, &mut h.alloc, &key, &val)
            .await
            .unwrap();
        h.model.insert(key, val.clone());
        if i % 10_000 == 9_999 {
            h.commit().await;
        }
    }
    let height = h.root.height;
    h.commit().await;
    h.reopen();
    h.verify().await;
    let bt = h.btree.clone();
    for (i, n) in order.iter().enumerate() {
        let key = Key::new(16, *n, 4, 0, 0, 0);
        bt.delete(&mut h.root, &mut h.alloc, &key).await.unwrap();
        h.model.remove(&key);
        if i % 10_000 == 9_999 {
            h.commit().await;
            // One full verify half way down is enough (the model tests
            // verify after every phase); the final one below checks empty.
            if i == 19_999 {
                h.verify().await;
            }
        }
    }
    assert!(h.root.is_empty());
    h.commit().await;
    h.verify().await;
    assert!(h.alloc.live.is_empty());
    height
}

#[test]
fn btree_grows_to_three_levels_and_shrinks_back() {
    let heights = on_both_runtimes("btree_grows_to_three_levels_and_shrinks_back", 2, |env| {
        grow_to_three_levels(env, 45_000)
    });
    for h in heights {
        assert_eq!(h, 3, "45000 items of 896 bytes need three levels");
    }
}

#[test]
fn btree_refuses_oversized_values() {
    on_both_runtimes("btree_refuses_oversized_values", 3, |env| async move {
        let mut h = Harness::new(&env, 64, 64);
        let bt = h.btree.clone();
        let big = vec![0u8; MAX_VAL_SIZE + 1];
        let k = Key::new(16, 1, 4, 0, 0, 0);
        let e = bt
            .insert(&mut h.root, &mut h.alloc, &k, &big)
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::E2BIG);
        assert!(h.root.is_empty());
        bt.insert(&mut h.root, &mut h.alloc, &k, &big[..MAX_VAL_SIZE])
            .await
            .unwrap();
        let e = bt
            .update(&mut h.root, &mut h.alloc, &k, &big)
            .await
            .unwrap_err();
        assert_eq!(e, Error::TooBig(MAX_VAL_SIZE + 1));
    });
}

#[test]
fn btree_blocks_are_sealed_btree_blocks() {
    on_both_runtimes(
        "btree_blocks_are_sealed_btree_blocks",
        4,
        |env| async move {
            let mut h = Harness::new(&env, 1024, 64);
            let bt = h.btree.clone();
            for i in 0..2000u64 {
                let v = vec![i as u8; (i % 300) as usize];
                let k = Key::new(16, i, 4, 0, 0, 0);
                bt.insert(&mut h.root, &mut h.alloc, &k, &v).await.unwrap();
            }
            h.commit().await;
            let check = bt.check(&h.root).await.unwrap();
            assert!(check.blknos.len() > 2);
            for b in check.blknos {
                let (buf, res) = h
                    .dev
                    .read_at(b << 16, drivers::AlignedBuf::new(LG_BLOCK_SIZE))
                    .await;
                res.unwrap();
                let hdr = engine::format::block::check_crc(&buf).unwrap();
                assert_eq!(hdr.magic.get(), MAGIC_BTREE);
                assert_eq!(hdr.fsid.get(), FSID);
                assert_eq!(hdr.blkno.get(), b);
                assert_ne!(hdr.seq.get(), 0);
                let view = BlockView::new(&buf).unwrap();
                if view.is_leaf() {
                    view.check_hash_table().unwrap();
                }
            }
        },
    );
}

/// Decompresses a vector volume into a sparse temp file and loads it.
fn load_vector(name: &str) -> FaultDevice {
    let path = format!("{}/../vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let input = std::fs::File::open(&path).unwrap();
    let mut dec = zstd::stream::read::Decoder::new(input).unwrap();
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    let out = tmp.as_file_mut();
    let mut chunk = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            let n = dec.read(&mut chunk[filled..]).unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        // Skip zero chunks so the file stays sparse.
        if chunk[..filled].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(len)).unwrap();
            out.write_all(&chunk[..filled]).unwrap();
        }
        len += filled as u64;
    }
    out.set_len(len).unwrap();
    FaultDevice::from_file(tmp.path()).unwrap()
}

fn read_super(dev: &FaultDevice) -> SuperBlock {
    let mut buf = vec![0u8; SM_BLOCK_SIZE];
    dev.peek(SUPER_BLKNO * SM_BLOCK_SIZE as u64, &mut buf)
        .unwrap();
    SuperBlock::read_from_prefix(&buf).unwrap().0
}

#[test]
fn btree_reads_the_originals_unbalanced_leaf() {
    let image = load_vector("single.meta.zst");
    on_both_runtimes("btree_reads_the_originals_unbalanced_leaf", 5, |env| {
        let dev = image.clone();
        async move {
            if env.is_sim() {
                dev.set_completion_delay(env.rt.random_u64(), MAX_PENDING_POLLS);
            }
            let sb = read_super(&dev);
            let fsid = sb.hdr.fsid.get();
            let cache = Arc::new(BlockCache::new(Arc::new(dev), fsid, 64, env.seqs()));
            let bt = Btree::new(cache);
            let root = sb.fs_root;
            assert_eq!(root.ref_.blkno.get(), 2);
            let inode_index = Key::new(4, 0, 4, 0, 1, 0);
            let root_inode = Key::new(16, 1, 4, 0, 0, 0);
            let a = bt
                .lookup(&root, &inode_index)
                .await
                .unwrap()
                .expect("inode index item");
            assert!(a.val.is_empty());
            let b = bt
                .lookup(&root, &root_inode)
                .await
                .unwrap()
                .expect("root inode item");
            assert!(
                b.val.len() == 160 || b.val.len() == 168,
                "inode of {} bytes",
                b.val.len()
            );
            let first = bt.next(&root, &Key::MIN).await.unwrap().unwrap();
            assert_eq!(first.key, inode_index);
            let last = bt.prev(&root, &Key::MAX).await.unwrap().unwrap();
            assert_eq!(last.key, root_inode);
            let after = bt.next(&root, &inode_index.inc()).await.unwrap().unwrap();
            assert_eq!(after.key, root_inode);
            let before = bt.prev(&root, &root_inode.dec()).await.unwrap().unwrap();
            assert_eq!(before.key, inode_index);
            let check = bt.check(&root).await.unwrap();
            assert_eq!(check.items, 2);
            // The vector's allocator trees read back consistent too.
            for ar in &sb.meta_alloc {
                let c = engine::alloc::check_extents(&bt, ar).await.unwrap();
                assert_eq!(c.total_len, ar.total_len.get());
            }
            let c = engine::alloc::check_extents(&bt, &sb.data_alloc)
                .await
                .unwrap();
            assert_eq!(c.total_len, sb.data_alloc.total_len.get());
        }
    });
}
