//! Transactions of one mount against the fake server: a commit waits for
//! holders to drain; the commit writes items with their seqs, tombstones
//! and bloom bits into the log tree; the 10 s timer commits; a failed
//! commit step is retried (or surfaced without a retry delay); data and
//! inode allocation.

#[path = "client_fake.rs"]
mod fake;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::btree::Btree;
use engine::forest::lock_range;
use engine::format::bloom::BloomBlock;
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::items::{inode_key, orphan_key};
use engine::format::net::Cmd;
use engine::format::MAGIC_BLOOM;
use engine::item::{Items, Transactions};
use engine::runtime::{for_each_runtime, Runtime, Sim};
use engine::trans::{Mount, MountOptions};
use fake::{make_meta_device, FakeServer, DATA_BLOCKS_PER_RID, DATA_BYTES};
use zerocopy::FromBytes;

fn opts() -> MountOptions {
    MountOptions {
        commit_interval: None,
        commit_retry: None,
        ..MountOptions::default()
    }
}

async fn setup(rt: &Runtime, o: MountOptions) -> (Arc<FakeServer>, Arc<Mount>) {
    let server = FakeServer::new(make_meta_device());
    let data = Arc::new(drivers::FaultDevice::new(DATA_BYTES));
    let m = Mount::open(server.dev.clone(), data, server.link(1), rt.clone(), 1, o)
        .await
        .unwrap();
    (server, Arc::new(m))
}

#[test]
fn commit_waits_for_holders_and_writes_the_log_tree() {
    for_each_runtime(21, |rt| async move {
        let (server, m) = setup(&rt, opts()).await;
        // Mounting commits the empty transaction it joined with.
        let joined = server.calls(Cmd::CommitLogTrees).await;
        let seq1 = m.trans_seq();
        let a = inode_key(5);
        let b = orphan_key(5);
        m.create(a, b"a".to_vec()).await.unwrap();
        m.create(b, b"b".to_vec()).await.unwrap();
        m.sync().await.unwrap();
        let seq2 = m.trans_seq();
        assert!(seq2 > seq1, "the next transaction has a higher seq");
        m.delete(b).await.unwrap();

        // A holder keeps the commit from running.
        let guard = m.hold(false).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (m2, d2) = (m.clone(), done.clone());
        let committer = rt.spawn(async move {
            m2.sync().await.unwrap();
            d2.store(true, Ordering::SeqCst);
        });
        for _ in 0..50 {
            rt.yield_now().await;
        }
        assert!(!done.load(Ordering::SeqCst), "commit ran under a holder");
        drop(guard);
        committer.await;
        assert!(done.load(Ordering::SeqCst));

        // The committed tree: a at seq1, b's tombstone at seq2, bloom bits.
        let lt = m.log_trees().await;
        assert_eq!(lt.max_item_seq.get(), seq2);
        let btree = Btree::new(m.block_cache().clone());
        let ia = btree.lookup(&lt.item_root, &a).await.unwrap().unwrap();
        assert_eq!((ia.seq, ia.flags, ia.val.as_slice()), (seq1, 0, &b"a"[..]));
        let ib = btree.lookup(&lt.item_root, &b).await.unwrap().unwrap();
        assert_eq!((ib.seq, ib.flags), (seq2, ITEM_FLAG_DELETION));
        let bloom = m
            .block_cache()
            .read(&lt.bloom_ref, MAGIC_BLOOM)
            .await
            .unwrap();
        let bb = BloomBlock::ref_from_bytes(bloom.data()).unwrap();
        assert!(bb.may_contain(&lock_range(&a).0));
        assert!(bb.may_contain(&lock_range(&b).0));
        assert!(!bb.may_contain(&lock_range(&inode_key(1 << 30)).0));
        assert_eq!(bb.total_set.get(), 6);
        assert!(m.item_cache().stats().dirty == 0);
        assert_eq!(server.calls(Cmd::CommitLogTrees).await, joined + 2);
    });
}

#[test]
fn timer_commits_dirty_transactions() {
    for seed in 1..=3 {
        let sim = Sim::new(seed);
        let rt = sim.runtime();
        sim.block_on(async move {
            let o = MountOptions {
                commit_interval: Some(Duration::from_secs(10)),
                ..opts()
            };
            let (server, m) = setup(&rt, o).await;
            // Mounting commits the empty transaction it joined with.
            let joined = server.calls(Cmd::CommitLogTrees).await;
            rt.sleep(Duration::from_secs(25)).await;
            assert_eq!(
                server.calls(Cmd::CommitLogTrees).await,
                joined,
                "nothing dirty"
            );
            m.create(inode_key(9), vec![1]).await.unwrap();
            rt.sleep(Duration::from_secs(11)).await;
            assert_eq!(server.calls(Cmd::CommitLogTrees).await, joined + 1);
            assert_eq!(m.stats().timer_commits, 1);
            assert_eq!(m.item_cache().stats().dirty, 0);
        });
    }
}

#[test]
fn failed_commit_is_retried_or_surfaced() {
    let sim = Sim::new(4);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (server, m) = setup(&rt, opts()).await;
        m.create(inode_key(1), vec![1]).await.unwrap();
        server.st.lock().await.fail_commits = 1;
        assert_eq!(m.sync().await, Err(libc::EIO));
        // Nothing was lost: the next sync commits it.
        m.sync().await.unwrap();
        assert_eq!(m.item_cache().stats().dirty, 0);

        let o = MountOptions {
            commit_retry: Some(Duration::from_secs(2)),
            ..opts()
        };
        let (server, m) = setup(&rt, o).await;
        m.create(inode_key(1), vec![1]).await.unwrap();
        server.st.lock().await.fail_commits = 2;
        let t0 = rt.now();
        m.sync().await.unwrap();
        assert_eq!(rt.now() - t0, Duration::from_secs(4));
        assert_eq!(m.stats().retries, 2);
    });
}

#[test]
fn data_and_inode_allocation() {
    for_each_runtime(31, |rt| async move {
        let (server, m) = setup(&rt, opts()).await;
        let g = m.hold(true).await.unwrap();
        let (b1, n1) = m.alloc_data(100).await.unwrap();
        assert_eq!(n1, 100);
        let (b2, _) = m.alloc_data(10).await.unwrap();
        assert!(b2 >= b1 + 100 || b2 + 10 <= b1, "overlapping data extents");
        m.free_data(b1, 50).await.unwrap();
        // Freed blocks are not reused in the transaction.
        let (b3, n3) = m.alloc_data(DATA_BLOCKS_PER_RID).await.unwrap();
        assert!(b3 + n3 <= b1 || b3 >= b1 + 50);
        let (i1, c1) = m.alloc_inodes(3).await.unwrap();
        let (i2, _) = m.alloc_inodes(3).await.unwrap();
        assert_eq!((c1, i2), (3, i1 + 3));
        m.add_inode_count(2);
        drop(g);
        m.sync().await.unwrap();
        let lt = m.log_trees().await;
        assert_eq!(lt.data_freed.total_len.get(), 50);
        assert_eq!(server.calls(Cmd::AllocInodes).await, 1);
        let stored = server.st.lock().await.logs[&(1, 1)];
        assert_eq!(stored.inode_count_delta.get(), 2);
    });
}

#[test]
fn meta_pressure_forces_a_commit_before_hold() {
    let sim = Sim::new(8);
    let rt = sim.runtime();
    sim.block_on(async move {
        let server = FakeServer::new(make_meta_device());
        server.st.lock().await.meta_per_trans = 40;
        let data = Arc::new(drivers::FaultDevice::new(DATA_BYTES));
        let m = Mount::open(
            server.dev.clone(),
            data,
            server.link(1),
            rt.clone(),
            1,
            opts(),
        )
        .await
        .unwrap();
        for i in 0..2000u64 {
            let g = m.hold(false).await.unwrap();
            m.create(inode_key(i), vec![7; 300]).await.unwrap();
            drop(g);
        }
        m.sync().await.unwrap();
        assert!(m.stats().pressure_commits > 0);
        for i in (0..2000u64).step_by(97) {
            assert_eq!(m.lookup(inode_key(i)).await.unwrap(), Some(vec![7; 300]));
        }
    });
}
