//! The btree against a std `BTreeMap` model, and against the original's
//! unbalanced blocks.
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
//! Scale: `SCOUTFS_PROPTEST_OPS` (default 100000) is the total number of
//! random operations across the model tests; raise it for long runs, e.g.
//! `SCOUTFS_PROPTEST_OPS=5000000 cargo test --release -p scoutfs-engine --test btree_model`.
//! `SCOUTFS_PROPTEST_SEED` picks the base seed.
//!
//! The tests drive the futures with a minimal `block_on`; the in-memory
//! devices complete without a reactor.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use drivers::{BlockDevice, FaultDevice};
use engine::block::{BlockCache, Error, Result, SeqSource};
use engine::btree::{BoxFuture, Btree, ListItem, ListOp, MetaAllocator};
use engine::format::btree_block::BlockView;
use engine::format::superblock::{BtreeRoot, SuperBlock};
use engine::format::{Key, LG_BLOCK_SIZE, MAGIC_BTREE, MAX_VAL_SIZE, SM_BLOCK_SIZE, SUPER_BLKNO};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use zerocopy::FromBytes;

fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn seqs(seed: u64) -> SeqSource {
    let rng = std::sync::Mutex::new(SmallRng::seed_from_u64(seed));
    Arc::new(move || rng.lock().unwrap().gen())
}

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

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn total_ops() -> u64 {
    env_u64("SCOUTFS_PROPTEST_OPS", 100_000)
}

fn base_seed() -> u64 {
    env_u64("SCOUTFS_PROPTEST_SEED", 0x5eed)
}

struct Harness {
    dev: Arc<dyn BlockDevice>,
    cache: Arc<BlockCache>,
    btree: Btree,
    root: BtreeRoot,
    alloc: TestAlloc,
    model: BTreeMap<Key, Vec<u8>>,
    rng: SmallRng,
    seed: u64,
    reopens: u64,
}

impl Harness {
    fn new(seed: u64, dev_blocks: u64, cache_blocks: usize) -> Self {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(FaultDevice::new(dev_blocks * LG_BLOCK_SIZE as u64));
        let cache = Arc::new(BlockCache::new(dev.clone(), FSID, cache_blocks, seqs(seed)));
        Harness {
            dev,
            btree: Btree::new(cache.clone()),
            cache,
            root: BtreeRoot::default(),
            alloc: TestAlloc::new(2, dev_blocks),
            model: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            seed,
            reopens: 0,
        }
    }

    fn commit(&mut self) {
        block_on(self.cache.write_dirty_and_flush()).unwrap();
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
                seqs(self.seed ^ self.reopens),
            ));
            self.btree = Btree::new(cache.clone());
            self.cache = cache;
        }
    }

    fn verify(&mut self) {
        let check = block_on(self.btree.check(&self.root)).unwrap();
        let referenced: BTreeSet<u64> = check.blknos.iter().copied().collect();
        assert_eq!(
            referenced, self.alloc.live,
            "tree blocks differ from live allocations (seed {})",
            self.seed
        );
        assert_eq!(check.items, self.model.len());
        let mut got = Vec::new();
        let mut start = Key::MIN;
        loop {
            let batch = block_on(self.btree.range(&self.root, &start, &Key::MAX, 97)).unwrap();
            got.extend(batch.items.into_iter().map(|it| (it.key, it.val)));
            match batch.next {
                Some(k) => start = k,
                None => break,
            }
        }
        let want: Vec<(Key, Vec<u8>)> = self.model.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert!(
            got == want,
            "tree contents differ from the model (seed {})",
            self.seed
        );
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
    fn step(&mut self, space: u64, grow: bool) {
        let key = self.key(space);
        let pick = self.rng.gen_range(0..100);
        let (ins, del) = if grow { (45, 60) } else { (15, 60) };
        let bt = self.btree.clone();
        if pick < ins {
            let v = self.value();
            let r = block_on(bt.insert(&mut self.root, &mut self.alloc, &key, &v));
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
            let r = block_on(bt.delete(&mut self.root, &mut self.alloc, &key));
            match self.model.remove(&key) {
                Some(v) => assert_eq!(r.unwrap().val, v),
                None => assert_eq!(r, Err(Error::NotFound)),
            }
        } else if pick < 70 {
            let v = self.value();
            let r = block_on(bt.update(&mut self.root, &mut self.alloc, &key, &v));
            match self.model.get_mut(&key) {
                Some(old) => {
                    r.unwrap();
                    *old = v;
                }
                None => assert_eq!(r, Err(Error::NotFound)),
            }
        } else if pick < 76 {
            let v = self.value();
            block_on(bt.force(&mut self.root, &mut self.alloc, &key, &v)).unwrap();
            self.model.insert(key, v);
        } else if pick < 78 {
            self.insert_list(space, grow);
        } else if pick < 85 {
            let got = block_on(bt.lookup(&self.root, &key))
                .unwrap()
                .map(|it| it.val);
            assert_eq!(got.as_ref(), self.model.get(&key));
        } else if pick < 90 {
            let got = block_on(bt.next(&self.root, &key))
                .unwrap()
                .map(|it| (it.key, it.val));
            let want = self.model.range(key..).next().map(|(k, v)| (*k, v.clone()));
            assert_eq!(got, want);
        } else if pick < 95 {
            let got = block_on(bt.prev(&self.root, &key))
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
            let batch = block_on(bt.range(&self.root, &key, &end, max)).unwrap();
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

    fn insert_list(&mut self, space: u64, grow: bool) {
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
        block_on(bt.insert_list(&mut self.root, &mut self.alloc, &list)).unwrap();
        for li in &list {
            match &li.op {
                ListOp::Put(v) => {
                    self.model.insert(li.key, v.clone());
                    let it = block_on(bt.lookup(&self.root, &li.key)).unwrap().unwrap();
                    assert_eq!(it.seq, li.seq);
                }
                ListOp::Delete => {
                    self.model.remove(&li.key);
                }
            }
        }
    }
}

/// Runs `ops` random operations in phases that alternate between growing
/// and shrinking, verifying and reopening between phases.
fn run_model(seed: u64, ops: u64, space: u64, phase_ops: u64) -> (u8, u8) {
    let mut h = Harness::new(seed, 16384, 512);
    let mut max_height = 0;
    let mut min_height_after_max = u8::MAX;
    let mut done = 0;
    let mut phase = 0u64;
    while done < ops {
        let grow = phase % 4 < 2;
        let n = phase_ops.min(ops - done);
        for _ in 0..n {
            h.step(space, grow);
            max_height = max_height.max(h.root.height);
            if max_height > 1 {
                min_height_after_max = min_height_after_max.min(h.root.height);
            }
        }
        done += n;
        h.commit();
        if phase % 2 == 1 {
            h.reopen();
        }
        h.verify();
        phase += 1;
    }
    // Empty the tree entirely: the root must go away and every block with it.
    let keys: Vec<Key> = h.model.keys().copied().collect();
    let bt = h.btree.clone();
    for k in keys {
        block_on(bt.delete(&mut h.root, &mut h.alloc, &k)).unwrap();
        h.model.remove(&k);
    }
    assert_eq!(h.root, BtreeRoot::default());
    h.commit();
    h.verify();
    assert!(h.alloc.live.is_empty());
    (max_height, min_height_after_max.min(h.root.height))
}

#[test]
fn btree_matches_model_small_key_space() {
    // Many collisions: exists/not-found paths, updates, joins.
    let ops = total_ops() / 2;
    let (max_h, min_h) = run_model(base_seed(), ops, 600, 2500);
    assert!(max_h >= 2, "tree never grew (max height {max_h})");
    assert_eq!(min_h, 0);
}

#[test]
fn btree_matches_model_large_key_space() {
    // A larger tree: more leaves, parent splits and joins.
    let ops = total_ops() - total_ops() / 2;
    let (max_h, _) = run_model(base_seed() + 1, ops, 10_000, 5000);
    assert!(max_h >= 2, "tree never grew (max height {max_h})");
}

#[test]
fn btree_grows_to_three_levels_and_shrinks_back() {
    let mut h = Harness::new(base_seed() + 2, 16384, 512);
    let bt = h.btree.clone();
    let mut order: Vec<u64> = (0..45_000).collect();
    for i in (1..order.len()).rev() {
        let j = h.rng.gen_range(0..=i);
        order.swap(i, j);
    }
    let val = vec![0xa5u8; MAX_VAL_SIZE];
    for (i, n) in order.iter().enumerate() {
        let key = Key::new(16, *n, 4, 0, 0, 0);
        block_on(bt.insert(&mut h.root, &mut h.alloc, &key, &val)).unwrap();
        h.model.insert(key, val.clone());
        if i % 10_000 == 9_999 {
            h.commit();
        }
    }
    assert_eq!(
        h.root.height, 3,
        "45000 items of 896 bytes need three levels"
    );
    h.commit();
    h.reopen();
    h.verify();
    let bt = h.btree.clone();
    for (i, n) in order.iter().enumerate() {
        let key = Key::new(16, *n, 4, 0, 0, 0);
        block_on(bt.delete(&mut h.root, &mut h.alloc, &key)).unwrap();
        h.model.remove(&key);
        if i % 10_000 == 9_999 {
            h.commit();
            h.verify();
        }
    }
    assert!(h.root.is_empty());
    h.commit();
    h.verify();
}

#[test]
fn btree_refuses_oversized_values() {
    let mut h = Harness::new(1, 64, 64);
    let bt = h.btree.clone();
    let big = vec![0u8; MAX_VAL_SIZE + 1];
    let k = Key::new(16, 1, 4, 0, 0, 0);
    let e = block_on(bt.insert(&mut h.root, &mut h.alloc, &k, &big)).unwrap_err();
    assert_eq!(e.errno(), libc::E2BIG);
    assert!(h.root.is_empty());
    block_on(bt.insert(&mut h.root, &mut h.alloc, &k, &big[..MAX_VAL_SIZE])).unwrap();
    let e = block_on(bt.update(&mut h.root, &mut h.alloc, &k, &big)).unwrap_err();
    assert_eq!(e, Error::TooBig(MAX_VAL_SIZE + 1));
}

#[test]
fn btree_blocks_are_sealed_btree_blocks() {
    let mut h = Harness::new(3, 1024, 64);
    let bt = h.btree.clone();
    for i in 0..2000u64 {
        let v = vec![i as u8; (i % 300) as usize];
        block_on(bt.insert(&mut h.root, &mut h.alloc, &Key::new(16, i, 4, 0, 0, 0), &v)).unwrap();
    }
    h.commit();
    let check = block_on(bt.check(&h.root)).unwrap();
    assert!(check.blknos.len() > 2);
    for b in check.blknos {
        let mut buf = vec![0u8; LG_BLOCK_SIZE];
        let mut dev_buf = drivers::AlignedBuf::new(LG_BLOCK_SIZE);
        let (got, res) = block_on(h.dev.read_at(b << 16, dev_buf));
        res.unwrap();
        dev_buf = got;
        buf.copy_from_slice(&dev_buf);
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
    let dev = load_vector("single.meta.zst");
    let sb = read_super(&dev);
    let fsid = sb.hdr.fsid.get();
    let cache = Arc::new(BlockCache::new(Arc::new(dev), fsid, 64, seqs(9)));
    let bt = Btree::new(cache);
    let root = sb.fs_root;
    assert_eq!(root.ref_.blkno.get(), 2);
    let inode_index = Key::new(4, 0, 4, 0, 1, 0);
    let root_inode = Key::new(16, 1, 4, 0, 0, 0);
    let a = block_on(bt.lookup(&root, &inode_index))
        .unwrap()
        .expect("inode index item");
    assert!(a.val.is_empty());
    let b = block_on(bt.lookup(&root, &root_inode))
        .unwrap()
        .expect("root inode item");
    assert!(
        b.val.len() == 160 || b.val.len() == 168,
        "inode of {} bytes",
        b.val.len()
    );
    assert_eq!(
        block_on(bt.next(&root, &Key::MIN)).unwrap().unwrap().key,
        inode_index
    );
    assert_eq!(
        block_on(bt.prev(&root, &Key::MAX)).unwrap().unwrap().key,
        root_inode
    );
    assert_eq!(
        block_on(bt.next(&root, &inode_index.inc()))
            .unwrap()
            .unwrap()
            .key,
        root_inode
    );
    assert_eq!(
        block_on(bt.prev(&root, &root_inode.dec()))
            .unwrap()
            .unwrap()
            .key,
        inode_index
    );
    let check = block_on(bt.check(&root)).unwrap();
    assert_eq!(check.items, 2);
    // The vector's allocator trees read back consistent too.
    for ar in &sb.meta_alloc {
        let c = block_on(engine::alloc::check_extents(&bt, ar)).unwrap();
        assert_eq!(c.total_len, ar.total_len.get());
    }
    let c = block_on(engine::alloc::check_extents(&bt, &sb.data_alloc)).unwrap();
    assert_eq!(c.total_len, sb.data_alloc.total_len.get());
}
