//! The block cache: ref checks (crc → EIO, mismatched header → ESTALE after
//! one reread), COW isolation of readers (trap 16, 9450959c), bounded
//! eviction under concurrent reads (trap 17), and write-back.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use drivers::{AlignedBuf, BlockDevice, FaultDevice};
use engine::block::{BlockCache, Error, Result, SeqSource};
use engine::btree::{BoxFuture, Btree, MetaAllocator};
use engine::format::block::seal_block;
use engine::format::superblock::BtreeRoot;
use engine::format::{BlockRef, Key, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST, MAGIC_BTREE};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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

const FSID: u64 = 0xf51d;

fn setup(blocks: u64, cap: usize) -> (FaultDevice, Arc<BlockCache>) {
    let dev = FaultDevice::new(blocks * LG_BLOCK_SIZE as u64);
    let cache = Arc::new(BlockCache::new(Arc::new(dev.clone()), FSID, cap, seqs(7)));
    (dev, cache)
}

/// Writes a sealed block straight to the device, behind the cache's back.
fn write_raw(dev: &FaultDevice, blkno: u64, magic: u32, fsid: u64, seq: u64, fill: u8) {
    let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
    buf[64..].fill(fill);
    seal_block(&mut buf, magic, fsid, blkno, seq);
    let (_, res) = block_on(dev.write_at(blkno << 16, buf));
    res.unwrap();
}

struct Bump(u64);

impl MetaAllocator for Bump {
    fn alloc_meta(&mut self) -> BoxFuture<'_, Result<u64>> {
        self.0 += 1;
        Box::pin(std::future::ready(Ok(self.0 - 1)))
    }
    fn free_meta(&mut self, _blkno: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[test]
fn block_read_checks_crc_and_ref() {
    let (dev, cache) = setup(64, 64);
    write_raw(&dev, 5, MAGIC_BTREE, FSID, 42, 1);
    let r = BlockRef::new(5, 42);
    let b = block_on(cache.read(&r, MAGIC_BTREE)).unwrap();
    assert_eq!(b.seq(), 42);
    assert_eq!(b.data()[100], 1);
    // Wrong seq, magic or fsid: stale.
    for (r, magic) in [(BlockRef::new(5, 43), MAGIC_BTREE), (r, MAGIC_ALLOC_LIST)] {
        let e = block_on(cache.read(&r, magic)).unwrap_err();
        assert_eq!(e.errno(), libc::ESTALE, "{e}");
    }
    write_raw(&dev, 6, MAGIC_BTREE, FSID + 1, 1, 1);
    assert_eq!(
        block_on(cache.read(&BlockRef::new(6, 1), MAGIC_BTREE))
            .unwrap_err()
            .errno(),
        libc::ESTALE
    );
    // A flipped bit: EIO, and nothing cached.
    write_raw(&dev, 7, MAGIC_BTREE, FSID, 9, 3);
    dev.flip_bit((7 << 16) + 1000, 2);
    let e = block_on(cache.read(&BlockRef::new(7, 9), MAGIC_BTREE)).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    // Out-of-device and null refs are corruption, not a panic.
    assert_eq!(
        block_on(cache.read(&BlockRef::new(1 << 40, 1), MAGIC_BTREE))
            .unwrap_err()
            .errno(),
        libc::EIO
    );
    assert_eq!(
        block_on(cache.read(&BlockRef::new(0, 1), MAGIC_BTREE))
            .unwrap_err()
            .errno(),
        libc::EIO
    );
}

#[test]
fn block_stale_cached_copy_is_dropped_and_reread() {
    let (dev, cache) = setup(64, 64);
    write_raw(&dev, 9, MAGIC_BTREE, FSID, 1, 1);
    let old = block_on(cache.read(&BlockRef::new(9, 1), MAGIC_BTREE)).unwrap();
    // Another node rewrites blkno 9 with a new seq.
    write_raw(&dev, 9, MAGIC_BTREE, FSID, 2, 2);
    let reads = cache.stats().device_reads;
    let new = block_on(cache.read(&BlockRef::new(9, 2), MAGIC_BTREE)).unwrap();
    assert_eq!(new.data()[100], 2);
    assert_eq!(cache.stats().device_reads, reads + 1);
    assert_eq!(old.data()[100], 1, "a reader's block never changes");
    // The old ref is now stale, after one reread.
    let e = block_on(cache.read(&BlockRef::new(9, 1), MAGIC_BTREE)).unwrap_err();
    assert_eq!(e.errno(), libc::ESTALE);
}

/// Trap 16 (9450959c): a COW of a block must not change the bytes a
/// concurrent reader holds; it inserts a new block and evicts the old one.
#[test]
fn block_cow_never_changes_a_readers_block() {
    let (_dev, cache) = setup(256, 64);
    let bt = Btree::new(cache.clone());
    let mut root = BtreeRoot::default();
    let mut alloc = Bump(2);
    let k = Key::new(16, 1, 4, 0, 0, 0);
    block_on(bt.insert(&mut root, &mut alloc, &k, b"before")).unwrap();
    block_on(cache.write_dirty_and_flush()).unwrap();
    let clean_ref = root.ref_;
    let reader = block_on(cache.read(&clean_ref, MAGIC_BTREE)).unwrap();
    let snapshot = reader.data().to_vec();
    // COW of the clean leaf (new blkno, new seq) ...
    block_on(bt.update(&mut root, &mut alloc, &k, b"after!")).unwrap();
    assert_ne!(root.ref_.blkno.get(), clean_ref.blkno.get());
    assert_ne!(root.ref_.seq.get(), clean_ref.seq.get());
    assert_eq!(reader.data(), &snapshot[..]);
    // ... and an in-place rewrite of the now-dirty leaf.
    let dirty_reader = block_on(cache.read(&root.ref_, MAGIC_BTREE)).unwrap();
    let dirty_snapshot = dirty_reader.data().to_vec();
    block_on(bt.update(&mut root, &mut alloc, &k, b"third")).unwrap();
    assert_eq!(dirty_reader.data(), &dirty_snapshot[..]);
    assert_eq!(reader.data(), &snapshot[..]);
    assert_eq!(
        block_on(bt.lookup(&root, &k)).unwrap().unwrap().val,
        b"third"
    );
    // The old clean copy was evicted; the old ref still reads from disk.
    let again = block_on(cache.read(&clean_ref, MAGIC_BTREE)).unwrap();
    assert_eq!(again.data(), &snapshot[..]);
}

/// Trap 17: eviction racing lookups. Many threads read a cache far smaller
/// than the working set; every block must come back intact and the cache
/// must stay bounded.
#[test]
// Real threads on purpose: the race of trap 17 needs true parallelism.
#[allow(clippy::disallowed_methods)]
fn block_small_cache_under_many_concurrent_reads() {
    const BLOCKS: u64 = 400;
    let (dev, cache) = setup(BLOCKS + 2, 64);
    for b in 2..BLOCKS + 2 {
        write_raw(&dev, b, MAGIC_BTREE, FSID, b * 7 + 1, b as u8);
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                for _ in 0..5000 {
                    let b = rng.gen_range(2..BLOCKS + 2);
                    let blk =
                        block_on(cache.read(&BlockRef::new(b, b * 7 + 1), MAGIC_BTREE)).unwrap();
                    assert_eq!(blk.blkno(), b);
                    assert_eq!(blk.data()[4096], b as u8);
                    assert!(cache.stats().clean <= 64);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = cache.stats();
    assert!(stats.clean <= 64);
    assert!(stats.evictions > 0);
}

#[test]
fn block_write_dirty_seals_and_cleans() {
    let (dev, cache) = setup(64, 64);
    let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
    buf[200] = 0x77;
    let seq = cache.new_seq();
    cache.put_dirty(10, seq, MAGIC_BTREE, buf).unwrap();
    assert_eq!(cache.dirty_count(), 1);
    // Readable before write-back.
    assert_eq!(
        block_on(cache.read(&BlockRef::new(10, seq), MAGIC_BTREE))
            .unwrap()
            .data()[200],
        0x77
    );
    assert_eq!(dev.unflushed_count(), 0);
    assert_eq!(block_on(cache.write_dirty_and_flush()).unwrap(), 1);
    assert_eq!(cache.dirty_count(), 0);
    assert_eq!(dev.unflushed_count(), 0);
    cache.drop_clean();
    let b = block_on(cache.read(&BlockRef::new(10, seq), MAGIC_BTREE)).unwrap();
    assert_eq!(b.data()[200], 0x77);
    // A device error leaves the block dirty.
    cache
        .put_dirty(11, 5, MAGIC_BTREE, AlignedBuf::new(LG_BLOCK_SIZE))
        .unwrap();
    dev.fail_writes_in((11 << 16)..(12 << 16));
    assert_eq!(
        block_on(cache.write_dirty()).unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(cache.dirty_count(), 1);
}
