//! The production executor parked in an io_uring ring, with the block cache
//! and btree on a `UringDevice` (O_DIRECT) over a temp file.
//!
//! Pins down the production shape of ARCHITECTURE.md §2.4: the engine thread
//! sleeps in `io_uring_enter` with a timeout (the ring is the executor's
//! `Park`), I/O completions wake it, timers fire while I/O is in flight, and
//! what the cache writes back reads back after the cache (and then the ring,
//! the device and the executor) are dropped and reopened.
//!
//! If the temp directory's filesystem refuses O_DIRECT (EINVAL), the test
//! falls back to buffered I/O through the same ring and says so; if the
//! kernel has no io_uring at all, it says so and passes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drivers::{AlignedBuf, BlockDevice, OpenOptions, UringDevice, UringRing};
use engine::block::{BlockCache, Result, SeqSource};
use engine::btree::{BoxFuture, Btree, MetaAllocator};
use engine::format::superblock::BtreeRoot;
use engine::format::{BlockRef, Key, LG_BLOCK_SIZE, MAGIC_BTREE};
use engine::runtime::{Executor, Runtime};

const FSID: u64 = 0x0a15_c0de;
/// Size of the temp device in 64 KiB blocks.
const DEV_BLOCKS: u64 = 2048;
const ITEMS: u64 = 4000;
const TICK: Duration = Duration::from_millis(2);

/// Hands out blocks from 2 up; frees are dropped (one transaction only).
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

fn seqs(rt: &Runtime) -> SeqSource {
    let rt = rt.clone();
    Arc::new(move || rt.random_u64())
}

fn key(n: u64) -> Key {
    Key::new(16, n, 4, 0, 0, 0)
}

fn value(n: u64) -> Vec<u8> {
    let len = (n * 37 % 300) as usize;
    (0..len).map(|i| (n as u8).wrapping_add(i as u8)).collect()
}

/// A ring and a device on `path`: O_DIRECT if the filesystem takes it.
fn open(path: &Path) -> Option<(UringRing, UringDevice)> {
    let ring = match UringRing::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: no io_uring on this kernel ({e}); nothing to test");
            return None;
        }
    };
    let dev = match UringDevice::open(&ring, path) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("note: O_DIRECT refused on {path:?} ({e}); using buffered I/O");
            UringDevice::open_with(&ring, path, &OpenOptions::new()).unwrap()
        }
        Err(e) => panic!("opening {path:?}: {e}"),
    };
    Some((ring, dev))
}

/// Reads every item back through a fresh cache and compares with `model`.
async fn verify(cache: &Arc<BlockCache>, root: &BtreeRoot, model: &BTreeMap<Key, Vec<u8>>) {
    let bt = Btree::new(cache.clone());
    let check = bt.check(root).await.unwrap();
    assert_eq!(check.items, model.len());
    let mut got = Vec::new();
    let mut start = Key::MIN;
    loop {
        let batch = bt.range(root, &start, &Key::MAX, 500).await.unwrap();
        got.extend(batch.items.into_iter().map(|it| (it.key, it.val)));
        match batch.next {
            Some(k) => start = k,
            None => break,
        }
    }
    let want: Vec<(Key, Vec<u8>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert!(got == want, "tree contents differ from the model");
}

#[test]
fn executor_parked_in_uring_drives_cache_btree_and_timers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(DEV_BLOCKS * LG_BLOCK_SIZE as u64)
        .unwrap();
    let Some((ring, dev)) = open(&path) else {
        return;
    };
    let executor = Executor::new(Arc::new(ring.clone()));
    let rt = executor.runtime();
    let model: BTreeMap<Key, Vec<u8>> = (0..ITEMS).map(|n| (key(n), value(n))).collect();

    let (root, raw_ref, ticks) = executor.block_on(async {
        let dev: Arc<dyn BlockDevice> = Arc::new(dev.clone());
        let cache = Arc::new(BlockCache::new(dev.clone(), FSID, 256, seqs(&rt)));

        // A timer task ticking while the I/O below is in flight: it only
        // makes progress if the executor wakes from the ring on timeouts,
        // and the I/O only if completions wake it while a timer is armed.
        let ticker = {
            let rt = rt.clone();
            rt.clone().spawn(async move {
                let mut ticks = 0u32;
                let mut last = rt.now();
                for _ in 0..20 {
                    rt.sleep(TICK).await;
                    let now = rt.now();
                    assert!(now >= last + TICK, "woke early: {last:?} -> {now:?}");
                    last = now;
                    ticks += 1;
                }
                ticks
            })
        };

        // One raw block through the cache: dirty, written back, reread.
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        buf[1000..1008].copy_from_slice(b"uringblk");
        let seq = cache.new_seq();
        cache.put_dirty(1, seq, MAGIC_BTREE, buf).unwrap();
        assert_eq!(cache.write_dirty_and_flush().await.unwrap(), 1);
        cache.drop_clean();
        let raw_ref = BlockRef::new(1, seq);
        let blk = cache.read(&raw_ref, MAGIC_BTREE).await.unwrap();
        assert_eq!(&blk.data()[1000..1008], b"uringblk");

        // A btree of a few thousand items, committed in a few transactions
        // with sleeps between them.
        let bt = Btree::new(cache.clone());
        let mut root = BtreeRoot::default();
        let mut alloc = Bump(2);
        for (i, (k, v)) in model.iter().enumerate() {
            bt.insert(&mut root, &mut alloc, k, v).await.unwrap();
            if i % 1000 == 999 {
                cache.write_dirty_and_flush().await.unwrap();
                rt.sleep(TICK).await;
            }
        }
        cache.write_dirty_and_flush().await.unwrap();
        assert!(root.height >= 2, "{ITEMS} items fit one leaf?");

        // Drop every clean block: the reads below come from the device.
        cache.drop_clean();
        let before = cache.stats().device_reads;
        verify(&cache, &root, &model).await;
        assert!(cache.stats().device_reads > before);

        // Idle: nothing runnable, no I/O; only the ring's timeout wakes us.
        let t0 = rt.now();
        rt.sleep(Duration::from_millis(30)).await;
        assert!(rt.now() - t0 >= Duration::from_millis(30));
        (root, raw_ref, ticker.await)
    });
    assert_eq!(ticks, 20);
    assert_eq!(ring.in_flight(), 0);
    drop(executor);
    drop(dev);
    drop(ring);

    // Reopen everything: a new ring, device, executor and cache.
    let (ring, dev) = open(&path).unwrap();
    let executor = Executor::new(Arc::new(ring.clone()));
    let rt = executor.runtime();
    executor.block_on(async {
        let cache = Arc::new(BlockCache::new(Arc::new(dev), FSID, 64, seqs(&rt)));
        let blk = cache.read(&raw_ref, MAGIC_BTREE).await.unwrap();
        assert_eq!(&blk.data()[1000..1008], b"uringblk");
        verify(&cache, &root, &model).await;
    });
}
