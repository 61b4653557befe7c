//! Forest reads over hand-built trees: seq precedence, tombstones that hide,
//! the fs_root tie rule, bloom skips (including `bloom_ref.blkno == 0`), the
//! trusted range, and the ESTALE retry that must throw away everything
//! gathered from the stale roots (trap 14, f5577e26 / 857a3957: keeping them
//! resurrected deleted items).

#[path = "client_fake.rs"]
mod fake;

use std::sync::Arc;

use engine::block::BlockCache;
use engine::forest::{lock_range, Forest};
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::items::{inode_key, orphan_key, totl_key, xattr_key};
use engine::format::{BlockRef, Key, MAGIC_BTREE};
use engine::runtime::{for_each_runtime, Sim};
use fake::{make_meta_device, seqs, FakeServer, FSID};

fn forest(server: &Arc<FakeServer>) -> Forest {
    let cache = Arc::new(BlockCache::new(server.dev.clone(), FSID, 256, seqs(3)));
    Forest::new(cache, server.link(1))
}

async fn read(f: &Forest, key: Key) -> Result<engine::forest::ReadBatch, i32> {
    let (s, e) = lock_range(&key);
    f.read_items(&key, &s, &e).await
}

#[test]
fn lock_ranges_follow_the_reference() {
    let (s, e) = lock_range(&inode_key(5000));
    assert_eq!(s, Key::new(16, 4096, 0, 0, 0, 0));
    assert_eq!(s.first, 5000 & !1023);
    assert_eq!(e.first, 5000 | 1023);
    assert!(s <= xattr_key(5000, 9, 9, 9) && xattr_key(5000, 9, 9, 9) <= e);
    let (s, e) = lock_range(&orphan_key(77));
    assert_eq!(s, Key::new(8, 0, 4, 0, 0, 0));
    assert_eq!(e, Key::new(8, 0, 4, u64::MAX, 0, 0));
    let (s, e) = lock_range(&totl_key(1, 2, 3));
    assert_eq!(s, Key::new(12, 0, 0, 0, 0, 0));
    assert_eq!(e.zone, 12);
    assert_eq!(e.first, u64::MAX);
}

#[test]
fn merge_precedence() {
    for_each_runtime(11, |_rt| async move {
        let server = FakeServer::new(make_meta_device());
        let a = inode_key(10);
        let b = inode_key(11);
        let c = inode_key(12);
        let d = inode_key(13);
        let fs = server
            .build_tree(&[
                (a, 5, 0, b"fs-a".to_vec()),
                (b, 5, 0, b"fs-b".to_vec()),
                (c, 5, 0, b"fs-c".to_vec()),
                (d, 9, 0, b"fs-d".to_vec()),
            ])
            .await;
        server.set_fs_root(fs).await;
        let lock = lock_range(&a).0;
        // Tree 1: newer a, a tombstone for b, a tie on c, an older d.
        let t1 = server
            .build_tree(&[
                (a, 7, 0, b"t1-a".to_vec()),
                (b, 6, ITEM_FLAG_DELETION, Vec::new()),
                (c, 5, 0, b"t1-c".to_vec()),
                (d, 8, 0, b"t1-d".to_vec()),
            ])
            .await;
        let bloom1 = server.build_bloom(&[lock]).await;
        server.put_log_tree(1, 1, t1, bloom1).await;
        // Tree 2 would win everything but its bloom lacks the lock.
        let t2 = server
            .build_tree(&[(a, 100, 0, b"t2-a".to_vec()), (c, 100, 0, b"t2-c".to_vec())])
            .await;
        let bloom2 = server.build_bloom(&[inode_key(1 << 20)]).await;
        server.put_log_tree(2, 1, t2, bloom2).await;
        // Tree 3 has no bloom block at all: skipped without reading.
        let t3 = server.build_tree(&[(a, 200, 0, b"t3-a".to_vec())]).await;
        server.put_log_tree(3, 1, t3, BlockRef::default()).await;

        let f = forest(&server);
        let batch = read(&f, a).await.unwrap();
        assert_eq!(batch.items[&a].val, b"t1-a", "highest seq wins");
        assert!(batch.items[&b].deletion, "the newer tombstone wins");
        assert_eq!(batch.items[&c].val, b"fs-c", "on a tie fs_root wins");
        assert_eq!(batch.items[&d].val, b"fs-d", "an older log item loses");
        let stats = f.stats();
        assert_eq!(stats.bloom_skips, 2);
        assert_eq!(stats.trees_read, 1);
        assert!(batch.start <= a && a <= batch.end);
        let (ls, le) = lock_range(&a);
        assert!(ls <= batch.start && batch.end <= le);
    });
}

/// Many items so the trees have several leaves: the trusted range must be
/// narrower than the lock and still contain the key, and every key it
/// covers must be answered exactly.
#[test]
fn trusted_range_is_covered_by_every_leaf() {
    let sim = Sim::new(5);
    sim.block_on(async {
        let server = FakeServer::new(make_meta_device());
        let val = vec![7u8; 600];
        let fs_items: Vec<_> = (0..600u64)
            .map(|i| (xattr_key(2048, i * 2, 0, 0), 1, 0, val.clone()))
            .collect();
        let fs = server.build_tree(&fs_items).await;
        server.set_fs_root(fs).await;
        let lt_items: Vec<_> = (0..300u64)
            .map(|i| (xattr_key(2048, i * 4 + 1, 0, 0), 2, 0, val.clone()))
            .collect();
        let t = server.build_tree(&lt_items).await;
        let bloom = server.build_bloom(&[lock_range(&inode_key(2048)).0]).await;
        server.put_log_tree(1, 1, t, bloom).await;
        let f = forest(&server);
        let mut key = xattr_key(2048, 0, 0, 0);
        let end = xattr_key(2048, 1300, 0, 0);
        let mut seen = 0;
        while key <= end {
            let batch = read(&f, key).await.unwrap();
            assert!(batch.start <= key && key <= batch.end);
            for k in batch.items.keys() {
                assert!(batch.start <= *k && *k <= batch.end);
            }
            // Every expected key inside the trusted range is there.
            for i in 0..1300u64 {
                let k = xattr_key(2048, i, 0, 0);
                if k < batch.start || k > batch.end || k < key {
                    continue;
                }
                let expect = i < 1200 && (i % 2 == 0 || i % 4 == 1);
                assert_eq!(batch.items.contains_key(&k), expect, "key {i}");
                if expect {
                    seen += 1;
                }
            }
            if batch.end >= end {
                break;
            }
            key = batch.end.inc();
        }
        assert_eq!(seen, 600 + 300);
    });
}

/// Roots R1 hold `a` in fs_root; then `a` is deleted (R2's fs_root lacks
/// it) and the log tree R1 names is rewritten. A read that took R1 gathers
/// `a` from fs_root, hits ESTALE in the log tree, and must not carry `a`
/// into its retry on R2.
#[test]
fn estale_retry_discards_gathered_items() {
    for seed in 1..=4 {
        let sim = Sim::new(seed);
        sim.block_on(async {
            let server = FakeServer::new(make_meta_device());
            let a = inode_key(100);
            let b = inode_key(101);
            let fs1 = server
                .build_tree(&[(a, 1, 0, b"a".to_vec()), (b, 1, 0, b"b".to_vec())])
                .await;
            server.set_fs_root(fs1).await;
            let lock = lock_range(&a).0;
            let t1 = server.build_tree(&[(b, 2, 0, b"b2".to_vec())]).await;
            let bloom = server.build_bloom(&[lock]).await;
            server.put_log_tree(1, 1, t1, bloom).await;
            let r1 = server.stable_roots().await;

            let fs2 = server.build_tree(&[(b, 1, 0, b"b".to_vec())]).await;
            server.set_fs_root(fs2).await;
            let t2 = server.build_tree(&[(b, 3, 0, b"b3".to_vec())]).await;
            server.put_log_tree(1, 1, t2, bloom).await;
            server.rewrite_block(&t1.ref_, MAGIC_BTREE).await;

            let f = forest(&server);
            server.st.lock().await.roots_queue.push_back(r1);
            let batch = read(&f, a).await.unwrap();
            assert!(!batch.items.contains_key(&a), "a deleted item came back");
            assert_eq!(batch.items[&b].val, b"b3");
            assert_eq!(f.stats().stale_retries, 1);

            // ESTALE twice on the same roots is corruption.
            let f = forest(&server);
            {
                let mut st = server.st.lock().await;
                st.roots_queue.push_back(r1);
                st.roots_queue.push_back(r1);
            }
            assert_eq!(read(&f, a).await, Err(libc::EIO));
        });
    }
}
