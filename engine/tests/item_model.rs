//! The mount's item cache against a `BTreeMap` model: random create,
//! update, delete, lookup, next and prev, with commits, cache drops and
//! remounts interleaved. After a remount from the device everything
//! committed is there and nothing deleted comes back; uncommitted changes of
//! a dropped mount are gone. Runs on the simulation with several seeds and
//! on the production executor.
//!
//! Also the read/commit barrier (trap 18, 206c24c4): a read that took its
//! roots before a commit completed must not insert what it read.

#[path = "client_fake.rs"]
mod fake;

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::format::items::{inode_key, orphan_key, xattr_key};
use engine::format::Key;
use engine::item::{Items, Transactions};
use engine::runtime::{Executor, Runtime, Sim, ThreadPark};
use engine::trans::{Mount, MountOptions};
use fake::{make_meta_device, FakeServer, DATA_BYTES};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn opts(cache_items_max: usize) -> MountOptions {
    MountOptions {
        cache_items_max,
        block_cache_blocks: 64,
        commit_interval: None,
        commit_retry: None,
        merge_interval: None,
        srch_compact_interval: None,
        srch_limits: Default::default(),
    }
}

async fn mount(
    server: &Arc<FakeServer>,
    data: &Arc<drivers::FaultDevice>,
    rt: &Runtime,
    o: MountOptions,
) -> Mount {
    Mount::open(
        server.dev.clone(),
        data.clone(),
        server.link(1),
        rt.clone(),
        1,
        o,
    )
    .await
    .unwrap()
}

/// A key space spanning several inode groups, the orphan zone and multi-leaf
/// runs of xattr items.
fn key_of(i: u64) -> Key {
    match i % 4 {
        0 => inode_key(1000 + (i / 4) * 97),
        1 => xattr_key(5000 + (i / 4) % 3, i, 0, 0),
        2 => orphan_key(i),
        _ => xattr_key(9000, i * 1_000_003, 1, 2),
    }
}

async fn model_run(rt: Runtime, seed: u64, ops: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let server = FakeServer::new(make_meta_device());
    let data = Arc::new(drivers::FaultDevice::new(DATA_BYTES));
    let mut m = mount(&server, &data, &rt, opts(300)).await;
    let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    let mut committed = model.clone();
    let nkeys = 1200;
    for op in 0..ops {
        let key = key_of(rng.gen_range(0..nkeys));
        let len = rng.gen_range(0..400);
        let val: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        match rng.gen_range(0..100) {
            0..=29 => {
                let g = m.hold(false).await.unwrap();
                let r = m.create(key, val.clone()).await;
                drop(g);
                match model.entry(key) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(r, Err(libc::EEXIST), "op {op} create {key}")
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        assert_eq!(r, Ok(()));
                        e.insert(val);
                    }
                }
            }
            30..=44 => {
                let r = m.update(key, val.clone()).await;
                if let Some(v) = model.get_mut(&key) {
                    assert_eq!(r, Ok(()));
                    *v = val;
                } else {
                    assert_eq!(r, Err(libc::ENOENT), "op {op} update {key}");
                }
            }
            45..=59 => {
                let r = m.delete(key).await;
                if model.remove(&key).is_some() {
                    assert_eq!(r, Ok(()));
                } else {
                    assert_eq!(r, Err(libc::ENOENT), "op {op} delete {key}");
                }
            }
            60..=64 => {
                m.create_force(key, val.clone()).await.unwrap();
                model.insert(key, val);
            }
            65..=67 => {
                m.delete_force(key).await.unwrap();
                model.remove(&key);
            }
            68..=77 => {
                assert_eq!(
                    m.lookup(key).await.unwrap(),
                    model.get(&key).cloned(),
                    "op {op} lookup {key}"
                );
            }
            78..=84 => {
                let last = key_of(rng.gen_range(0..nkeys)).max(key);
                let want = model.range(key..=last).next().map(|(k, v)| (*k, v.clone()));
                assert_eq!(
                    m.next(key, last).await.unwrap(),
                    want,
                    "op {op} next {key}..{last}"
                );
            }
            85..=90 => {
                let first = key_of(rng.gen_range(0..nkeys)).min(key);
                let want = model
                    .range(first..=key)
                    .next_back()
                    .map(|(k, v)| (*k, v.clone()));
                assert_eq!(
                    m.prev(key, first).await.unwrap(),
                    want,
                    "op {op} prev {key}..{first}"
                );
            }
            91..=94 => {
                m.sync().await.unwrap();
                committed = model.clone();
            }
            95..=96 => m.item_cache().drop_clean(),
            _ => {
                // Remount: after a sync everything is there; without one,
                // the uncommitted changes are lost.
                if rng.gen_bool(0.5) {
                    m.sync().await.unwrap();
                    committed = model.clone();
                }
                drop(m);
                m = mount(&server, &data, &rt, opts(300)).await;
                model = committed.clone();
            }
        }
    }
    m.sync().await.unwrap();
    drop(m);
    let m = mount(&server, &data, &rt, opts(100_000)).await;
    for i in 0..nkeys {
        let k = key_of(i);
        assert_eq!(
            m.lookup(k).await.unwrap(),
            model.get(&k).cloned(),
            "after remount {k}"
        );
    }
    // Ordered scans within bounded spans (next/prev walk lock by lock, so a
    // scan of the whole key space would visit 2^54 empty inode groups).
    let spans = [
        (orphan_key(0), orphan_key(u64::MAX)),
        (inode_key(1000), xattr_key(9000, u64::MAX, 0, 0)),
    ];
    for (first, last) in spans {
        let mut got = BTreeMap::new();
        let mut cursor = first;
        while let Some((k, v)) = m.next(cursor, last).await.unwrap() {
            got.insert(k, v);
            cursor = k.inc();
        }
        let want: BTreeMap<Key, Vec<u8>> = model
            .range(first..=last)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        assert!(
            got == want,
            "scan {first}..{last} after remount differs from the model"
        );
    }
}

fn ops() -> u64 {
    std::env::var("SCOUTFS_PROPTEST_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
        / 25
}

#[test]
fn item_cache_matches_model_in_simulation() {
    for seed in 1..=4 {
        let sim = Sim::new(seed);
        sim.block_on(model_run(sim.runtime(), seed, ops()));
    }
}

#[test]
fn item_cache_matches_model_on_executor() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    ex.block_on(model_run(ex.runtime(), 99, ops()));
}

#[test]
fn read_commit_barrier_discards_old_reads() {
    for seed in 1..=3 {
        let sim = Sim::new(seed);
        let rt = sim.runtime();
        sim.block_on(async move {
            let server = FakeServer::new(make_meta_device());
            let data = Arc::new(drivers::FaultDevice::new(DATA_BYTES));
            let m = Arc::new(mount(&server, &data, &rt, opts(1000)).await);
            let k = inode_key(77);
            m.create(k, b"v1".to_vec()).await.unwrap();
            m.sync().await.unwrap();
            let old_roots = server.stable_roots().await;
            m.item_cache().drop_clean();

            // A reader takes the old roots and stalls before reading.
            let (tx, rx) = futures::channel::oneshot::channel();
            {
                let mut st = server.st.lock().await;
                st.gate = Some(rx);
                st.roots_queue.push_back(old_roots);
            }
            let m2 = m.clone();
            let reader = rt.spawn(async move { m2.lookup(k).await });
            while !server.st.lock().await.gate_taken {
                rt.yield_now().await;
            }
            // Meanwhile the key changes, commits and leaves the cache.
            m.update(k, b"v2".to_vec()).await.unwrap();
            m.sync().await.unwrap();
            m.item_cache().drop_clean();
            let _ = tx.send(());
            assert_eq!(reader.await.unwrap(), Some(b"v2".to_vec()));
            assert_eq!(m.item_cache().stats().barrier_retries, 1);
            assert_eq!(m.lookup(k).await.unwrap(), Some(b"v2".to_vec()));
        });
    }
}
