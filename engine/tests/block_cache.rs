//! The block cache: ref checks (crc → EIO, mismatched header → ESTALE after
//! one reread), COW isolation of readers (trap 16, 9450959c), bounded
//! eviction under concurrent reads (trap 17), and write-back.
//!
//! Each test runs on the production executor and then on the deterministic
//! simulation, where every device op stays pending a seeded-random number of
//! polls (so concurrent tasks interleave their I/O differently per seed);
//! COW seqs come from the runtime's randomness. The trap 17 race also runs on
//! real threads. `SCOUTFS_PROPTEST_SEED` sets the base seed; a failure
//! prints how to replay it.

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

/// Waits for a future on a plain thread (the real-thread race only).
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

mod runtime_env;
use runtime_env::*;

const FSID: u64 = 0xf51d;

fn setup(env: &Env, blocks: u64, cap: usize) -> (FaultDevice, Arc<BlockCache>) {
    let dev = env.device(blocks * LG_BLOCK_SIZE as u64);
    let cache = Arc::new(BlockCache::new(
        Arc::new(dev.clone()),
        FSID,
        cap,
        env.seqs(),
    ));
    (dev, cache)
}

/// A sealed block as another node would have written it.
fn raw_block(blkno: u64, magic: u32, fsid: u64, seq: u64, fill: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
    buf[64..].fill(fill);
    seal_block(&mut buf, magic, fsid, blkno, seq);
    buf
}

/// Writes a sealed block straight to the device, behind the cache's back.
async fn write_raw(dev: &FaultDevice, blkno: u64, magic: u32, fsid: u64, seq: u64, fill: u8) {
    let buf = raw_block(blkno, magic, fsid, seq, fill);
    let (_, res) = dev.write_at(blkno << 16, buf).await;
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
    on_both_runtimes("block_read_checks_crc_and_ref", 1, |env| async move {
        let (dev, cache) = setup(&env, 64, 64);
        write_raw(&dev, 5, MAGIC_BTREE, FSID, 42, 1).await;
        let r = BlockRef::new(5, 42);
        let b = cache.read(&r, MAGIC_BTREE).await.unwrap();
        assert_eq!(b.seq(), 42);
        assert_eq!(b.data()[100], 1);
        // Wrong seq, magic or fsid: stale.
        for (r, magic) in [(BlockRef::new(5, 43), MAGIC_BTREE), (r, MAGIC_ALLOC_LIST)] {
            let e = cache.read(&r, magic).await.unwrap_err();
            assert_eq!(e.errno(), libc::ESTALE, "{e}");
        }
        write_raw(&dev, 6, MAGIC_BTREE, FSID + 1, 1, 1).await;
        assert_eq!(
            cache
                .read(&BlockRef::new(6, 1), MAGIC_BTREE)
                .await
                .unwrap_err()
                .errno(),
            libc::ESTALE
        );
        // A flipped bit: EIO, and nothing cached.
        write_raw(&dev, 7, MAGIC_BTREE, FSID, 9, 3).await;
        dev.flip_bit((7 << 16) + 1000, 2);
        let e = cache
            .read(&BlockRef::new(7, 9), MAGIC_BTREE)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{e}");
        // Out-of-device and null refs are corruption, not a panic.
        assert_eq!(
            cache
                .read(&BlockRef::new(1 << 40, 1), MAGIC_BTREE)
                .await
                .unwrap_err()
                .errno(),
            libc::EIO
        );
        assert_eq!(
            cache
                .read(&BlockRef::new(0, 1), MAGIC_BTREE)
                .await
                .unwrap_err()
                .errno(),
            libc::EIO
        );
    });
}

#[test]
fn block_stale_cached_copy_is_dropped_and_reread() {
    on_both_runtimes(
        "block_stale_cached_copy_is_dropped_and_reread",
        2,
        |env| async move {
            let (dev, cache) = setup(&env, 64, 64);
            write_raw(&dev, 9, MAGIC_BTREE, FSID, 1, 1).await;
            let old = cache.read(&BlockRef::new(9, 1), MAGIC_BTREE).await.unwrap();
            // Another node rewrites blkno 9 with a new seq.
            write_raw(&dev, 9, MAGIC_BTREE, FSID, 2, 2).await;
            let reads = cache.stats().device_reads;
            let new = cache.read(&BlockRef::new(9, 2), MAGIC_BTREE).await.unwrap();
            assert_eq!(new.data()[100], 2);
            assert_eq!(cache.stats().device_reads, reads + 1);
            assert_eq!(old.data()[100], 1, "a reader's block never changes");
            // The old ref is now stale, after one reread.
            let e = cache
                .read(&BlockRef::new(9, 1), MAGIC_BTREE)
                .await
                .unwrap_err();
            assert_eq!(e.errno(), libc::ESTALE);
        },
    );
}

/// Trap 16 (9450959c): a COW of a block must not change the bytes a
/// concurrent reader holds; it inserts a new block and evicts the old one.
#[test]
fn block_cow_never_changes_a_readers_block() {
    on_both_runtimes(
        "block_cow_never_changes_a_readers_block",
        3,
        |env| async move {
            let (_dev, cache) = setup(&env, 256, 64);
            let bt = Btree::new(cache.clone());
            let mut root = BtreeRoot::default();
            let mut alloc = Bump(2);
            let k = Key::new(16, 1, 4, 0, 0, 0);
            bt.insert(&mut root, &mut alloc, &k, b"before")
                .await
                .unwrap();
            cache.write_dirty_and_flush().await.unwrap();
            let clean_ref = root.ref_;
            let reader = cache.read(&clean_ref, MAGIC_BTREE).await.unwrap();
            let snapshot = reader.data().to_vec();
            // COW of the clean leaf (new blkno, new seq) ...
            bt.update(&mut root, &mut alloc, &k, b"after!")
                .await
                .unwrap();
            assert_ne!(root.ref_.blkno.get(), clean_ref.blkno.get());
            assert_ne!(root.ref_.seq.get(), clean_ref.seq.get());
            assert_eq!(reader.data(), &snapshot[..]);
            // ... and an in-place rewrite of the now-dirty leaf.
            let dirty_reader = cache.read(&root.ref_, MAGIC_BTREE).await.unwrap();
            let dirty_snapshot = dirty_reader.data().to_vec();
            bt.update(&mut root, &mut alloc, &k, b"third")
                .await
                .unwrap();
            assert_eq!(dirty_reader.data(), &dirty_snapshot[..]);
            assert_eq!(reader.data(), &snapshot[..]);
            assert_eq!(bt.lookup(&root, &k).await.unwrap().unwrap().val, b"third");
            // The old clean copy was evicted; the old ref still reads from disk.
            let again = cache.read(&clean_ref, MAGIC_BTREE).await.unwrap();
            assert_eq!(again.data(), &snapshot[..]);
        },
    );
}

/// Trap 17: eviction racing lookups. Many threads read a cache far smaller
/// than the working set; every block must come back intact and the cache
/// must stay bounded.
#[test]
// Real threads on purpose: the race of trap 17 needs true parallelism.
#[allow(clippy::disallowed_methods)]
fn block_small_cache_under_many_concurrent_reads() {
    const BLOCKS: u64 = 400;
    let dev = FaultDevice::new((BLOCKS + 2) * LG_BLOCK_SIZE as u64);
    let seq = std::sync::atomic::AtomicU64::new(1);
    let seqs: SeqSource = Arc::new(move || seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let cache = Arc::new(BlockCache::new(Arc::new(dev.clone()), FSID, 64, seqs));
    for b in 2..BLOCKS + 2 {
        let buf = raw_block(b, MAGIC_BTREE, FSID, b * 7 + 1, b as u8);
        let (_, res) = block_on(dev.write_at(b << 16, buf));
        res.unwrap();
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

/// Trap 17 on the runtimes: reader tasks race each other (and a task that
/// writes back new blocks) through a cache far smaller than the working
/// set. In the simulation, device completions are delayed per seed, so
/// misses on the same block overlap and evictions land between a miss and
/// its insert in a different order on every seed.
#[test]
fn block_small_cache_under_concurrent_tasks() {
    const BLOCKS: u64 = 300;
    // The cache's minimum capacity.
    const CAP: usize = 64;
    on_both_runtimes(
        "block_small_cache_under_concurrent_tasks",
        6,
        |env| async move {
            let (dev, cache) = setup(&env, 2 * BLOCKS + 2, CAP);
            for b in 2..BLOCKS + 2 {
                write_raw(&dev, b, MAGIC_BTREE, FSID, b * 7 + 1, b as u8).await;
            }
            let mut tasks = Vec::new();
            for _ in 0..6 {
                let cache = cache.clone();
                let mut rng = env.rng();
                tasks.push(env.rt.spawn(async move {
                    for _ in 0..1500 {
                        let b = rng.gen_range(2..BLOCKS + 2);
                        let r = BlockRef::new(b, b * 7 + 1);
                        let blk = cache.read(&r, MAGIC_BTREE).await.unwrap();
                        assert_eq!(blk.blkno(), b);
                        assert_eq!(blk.data()[4096], b as u8);
                    }
                }));
            }
            let writer = {
                let cache = cache.clone();
                env.rt.spawn(async move {
                    for round in 0..20u64 {
                        let mut refs = Vec::new();
                        for i in 0..10 {
                            let b = BLOCKS + 2 + round * 10 % BLOCKS + i;
                            let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
                            buf[4096] = (round + i) as u8;
                            let seq = cache.new_seq();
                            cache.put_dirty(b, seq, MAGIC_BTREE, buf).unwrap();
                            refs.push((BlockRef::new(b, seq), (round + i) as u8));
                        }
                        cache.write_dirty_and_flush().await.unwrap();
                        for (r, fill) in refs {
                            let blk = cache.read(&r, MAGIC_BTREE).await.unwrap();
                            assert_eq!(blk.data()[4096], fill);
                        }
                    }
                })
            };
            for t in tasks {
                t.await;
            }
            writer.await;
            let stats = cache.stats();
            assert!(stats.clean <= CAP, "{stats:?}");
            assert_eq!(stats.dirty, 0);
            assert!(stats.evictions > 0);
        },
    );
}

#[test]
fn block_write_dirty_seals_and_cleans() {
    on_both_runtimes("block_write_dirty_seals_and_cleans", 5, |env| async move {
        let (dev, cache) = setup(&env, 64, 64);
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        buf[200] = 0x77;
        let seq = cache.new_seq();
        cache.put_dirty(10, seq, MAGIC_BTREE, buf).unwrap();
        assert_eq!(cache.dirty_count(), 1);
        // Readable before write-back.
        assert_eq!(
            cache
                .read(&BlockRef::new(10, seq), MAGIC_BTREE)
                .await
                .unwrap()
                .data()[200],
            0x77
        );
        assert_eq!(dev.unflushed_count(), 0);
        assert_eq!(cache.write_dirty_and_flush().await.unwrap(), 1);
        assert_eq!(cache.dirty_count(), 0);
        assert_eq!(dev.unflushed_count(), 0);
        cache.drop_clean();
        let b = cache
            .read(&BlockRef::new(10, seq), MAGIC_BTREE)
            .await
            .unwrap();
        assert_eq!(b.data()[200], 0x77);
        // A device error leaves the block dirty.
        cache
            .put_dirty(11, 5, MAGIC_BTREE, AlignedBuf::new(LG_BLOCK_SIZE))
            .unwrap();
        dev.fail_writes_in((11 << 16)..(12 << 16));
        assert_eq!(cache.write_dirty().await.unwrap_err().errno(), libc::EIO);
        assert_eq!(cache.dirty_count(), 1);
    });
}
