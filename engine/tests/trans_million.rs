//! Issue 3 acceptance: a million item changes on a small volume (2 GiB of
//! metadata, as `mkfs -A` would make it) through the real mount
//! (`trans::Mount`: item cache, transactions, its merge worker's
//! `merge_now`) and the server over an in-process link, on the simulation
//! runtime and `fault` devices.
//!
//! Rounds of random creates, updates and deletes of xattr items (FS zone)
//! in a working set of a few thousand keys go through the `Items` /
//! `Transactions` traits directly, with a sync every few thousand changes.
//! The server finalizes a tree once it is taller than one leaf
//! (`finalize_height: 1`), so log merges start every round. After each
//! round: sync, `merge_now` until the server hands out nothing, background
//! freeing until idle; then every log tree is at most 3 high, at most one
//! finalized tree is waiting for its merge, and the metadata blocks in use
//! (STATFS) stay under a bound taken from the first rounds — nothing
//! accumulates. At the end `check` is clean and a fresh mount reads back
//! exactly the model.
//!
//! Size: `SCOUTFS_MILLION_OPS` changes in all, default [`OPS_DEFAULT`] =
//! the full 1,000,000 (about a minute in the debug test profile, so no
//! smaller default is needed); `SCOUTFS_MILLION_VERBOSE=1` prints each
//! round's log trees, space and merge counters.
//!
//! A second test checks that the worker merges by itself every
//! `merge_interval` with nobody calling `merge_now`.

mod server_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drivers::FaultDevice;
use engine::format::items::{xattr_key, ROOT_INO};
use engine::format::log_trees::{LogTrees, LOG_TREES_FLAG_FINALIZED};
use engine::format::net::{Cmd, NetStatfs};
use engine::format::Key;
use engine::item::{Items, Transactions};
use engine::runtime::{Runtime, Sim};
use engine::server::{Server, ServerOptions};
use engine::trans::Mount;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_support::{check, log_trees_of, mkfs, GIB};
use zerocopy::FromBytes;

const META: u64 = 2 * GIB;
const DATA: u64 = 8 * GIB;
/// Item changes of the default run; `SCOUTFS_MILLION_OPS` overrides.
const OPS_DEFAULT: u64 = 1_000_000;
const ROUNDS: u64 = 20;
/// Syncs per round (each commits a transaction).
const SYNCS_PER_ROUND: u64 = 10;
/// Changes made under one hold.
const CHANGES_PER_HOLD: u64 = 64;
/// Distinct keys the workload touches.
const KEYS: u64 = 4000;
/// Log trees may be this tall at most (the server finalizes above 1).
const MAX_LOG_TREE_HEIGHT: u8 = 3;

fn ops_total() -> u64 {
    std::env::var("SCOUTFS_MILLION_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OPS_DEFAULT)
}

fn key(id: u64) -> Key {
    xattr_key(ROOT_INO, 7, id, 0)
}

fn server_opts() -> ServerOptions {
    ServerOptions {
        finalize_height: 1,
        ..ServerOptions::default()
    }
}

async fn mount_on(
    server: &Arc<Server>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
    merge_interval: Option<Duration>,
) -> Mount {
    server_support::mount_in_process(server, meta, data, rt, rid, merge_interval).await
}

async fn used_meta_blocks(s: &Server, rid: u64) -> u64 {
    let r = s.handle(rid, Cmd::Statfs, &[]).await.unwrap();
    let st = NetStatfs::read_from_bytes(&r).unwrap();
    st.total_meta_blocks.get() - st.free_meta_blocks.get()
}

/// `n` random changes: create a missing key, else update (2/3) or delete.
async fn changes(m: &Mount, rng: &mut SmallRng, model: &mut BTreeMap<u64, Vec<u8>>, n: u64) {
    let mut done = 0;
    while done < n {
        // Allocating, as filesystem writes are: the reserve scales with the
        // device (server::alloc::MetaBudget), so 2 GiB is not LOW.
        let _hold = m.hold(true).await.expect("hold");
        for _ in 0..CHANGES_PER_HOLD.min(n - done) {
            let id = rng.gen_range(0..KEYS);
            let val = vec![rng.gen::<u8>(); rng.gen_range(8..160)];
            match model.contains_key(&id) {
                false => {
                    m.create(key(id), val.clone()).await.expect("create");
                    model.insert(id, val);
                }
                true if rng.gen_range(0..3) < 2 => {
                    m.update(key(id), val.clone()).await.expect("update");
                    model.insert(id, val);
                }
                true => {
                    m.delete(key(id)).await.expect("delete");
                    model.remove(&id);
                }
            }
            done += 1;
        }
    }
}

/// Merges until the server hands out nothing, then frees merged trees.
async fn merge_and_free(m: &Mount, s: &Server) -> u64 {
    let n = m.merge_now().await.expect("merge_now");
    while s.background().await.expect("background") {}
    n
}

/// The key the settle step touches (outside the random working set).
const TOUCH_ID: u64 = KEYS + 1;
/// Settle steps allowed before finalized trees must be gone.
const SETTLE_MAX: usize = 4;

/// Changes the touch key and syncs: the commit's GET_LOG_TREES is where
/// the server finalizes trees and starts the next merge (trees finalized
/// while a merge ran wait for it).
async fn touch(m: &Mount, model: &mut BTreeMap<u64, Vec<u8>>, n: u8) {
    let val = vec![n; 16];
    {
        let _hold = m.hold(false).await.expect("hold");
        m.create_force(key(TOUCH_ID), val.clone())
            .await
            .expect("touch");
    }
    model.insert(TOUCH_ID, val);
    m.sync().await.expect("sync");
}

fn finalized(shape: &[(u64, u8, bool)]) -> usize {
    shape.iter().filter(|t| t.2).count()
}

fn describe(lts: &[LogTrees]) -> Vec<(u64, u8, bool)> {
    lts.iter()
        .map(|lt| {
            (
                lt.nr.get(),
                lt.item_root.height,
                lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0,
            )
        })
        .collect()
}

/// Every item of the workload's key range, read through `m`.
async fn read_all(m: &Mount) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let last = key(u64::MAX);
    let mut pos = key(0);
    while let Some((k, v)) = m.next(pos, last).await.expect("next") {
        out.insert(k.third, v);
        if k == last {
            break;
        }
        pos = k.inc();
    }
    out
}

async fn million(rt: Runtime, seed: u64) {
    let total = ops_total();
    let per_sync = (total / ROUNDS / SYNCS_PER_ROUND).max(1);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (meta, data) = mkfs(META, DATA, seed);
    let server = Server::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        rt.clone(),
        server_opts(),
    )
    .await
    .expect("server opens");
    let m = mount_on(&server, &meta, &data, &rt, 1, None).await;
    let mut model = BTreeMap::new();
    let mut used = Vec::new();
    let mut merged = 0;
    let verbose = std::env::var_os("SCOUTFS_MILLION_VERBOSE").is_some();

    for round in 0..ROUNDS {
        for _ in 0..SYNCS_PER_ROUND {
            changes(&m, &mut rng, &mut model, per_sync).await;
            m.sync().await.expect("sync");
        }
        // Before merging: the round's transactions are in log trees (the
        // server finalized them as they grew), none taller than the bound.
        let grown = describe(&log_trees_of(&server, &meta, &rt).await);
        assert!(
            finalized(&grown) > 0 && grown.iter().all(|t| t.1 <= MAX_LOG_TREE_HEIGHT),
            "round {round}: log trees before merging: {grown:?}"
        );
        let before = merged;
        merged += merge_and_free(&m, &server).await;
        let mut shape = describe(&log_trees_of(&server, &meta, &rt).await);
        let mut settles = 0;
        while finalized(&shape) > 0 && settles < SETTLE_MAX {
            settles += 1;
            touch(&m, &mut model, settles as u8).await;
            merged += merge_and_free(&m, &server).await;
            shape = describe(&log_trees_of(&server, &meta, &rt).await);
        }
        for &(nr, height, _) in &shape {
            assert!(
                height <= MAX_LOG_TREE_HEIGHT,
                "round {round}: log tree {nr} is {height} high: {shape:?}"
            );
        }
        assert!(
            finalized(&shape) == 0 && shape.len() <= 2,
            "round {round}: merged trees are not going away: {shape:?}"
        );
        assert!(merged > before, "round {round}: no log merge ran");
        if round % 5 == 4 {
            let faults = check(&meta, &data);
            assert!(faults.is_empty(), "round {round}: check: {faults:#?}");
        }
        let u = used_meta_blocks(&server, m.rid()).await;
        used.push(u);
        if verbose {
            eprintln!(
                "round {round}: trees before merging {grown:?}, after: {shape:?} after {settles} settles, {u} meta blocks used, \
                 {merged} merges, {:?}",
                m.merge_stats()
            );
        }
    }

    assert!(
        merged >= ROUNDS,
        "too few log merges ran: {merged} in {ROUNDS} rounds"
    );
    // After the first rounds the working set is at its steady size: fs_root
    // holds at most KEYS items and the log trees are bounded, so the space
    // in use must not keep growing with the rounds.
    // (About 25–35 blocks here: fs_root's dozen leaves, the small trees
    // and the server's lists; mount and server avail lists count as free.)
    let bound = used[..3].iter().max().unwrap() + 32;
    for (round, u) in used.iter().enumerate() {
        assert!(
            *u <= bound,
            "round {round}: {u} metadata blocks in use, bound {bound} (history {used:?})"
        );
    }
    let faults = check(&meta, &data);
    assert!(faults.is_empty(), "check: {faults:#?}");

    drop(m);
    let fresh = mount_on(&server, &meta, &data, &rt, 2, None).await;
    let got = read_all(&fresh).await;
    assert_eq!(got.len(), model.len(), "item count read back");
    assert!(got == model, "items read back differ from the model");
}

#[test]
fn million_item_changes_merge_and_stay_bounded() {
    let sim = Sim::new(11);
    sim.block_on(million(sim.runtime(), 11));
}

/// The worker alone: with `merge_interval` set and nobody calling
/// `merge_now`, finalized trees are merged and disappear.
#[test]
fn merge_worker_merges_on_its_interval() {
    let sim = Sim::new(5);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (meta, data) = mkfs(META, DATA, 5);
        let server = Server::open(
            Arc::new(meta.clone()),
            Arc::new(data.clone()),
            rt.clone(),
            server_opts(),
        )
        .await
        .expect("server opens");
        let m = mount_on(&server, &meta, &data, &rt, 1, Some(Duration::from_secs(1))).await;
        let mut rng = SmallRng::seed_from_u64(5);
        let mut model = BTreeMap::new();
        for _ in 0..4 {
            changes(&m, &mut rng, &mut model, 3000).await;
            m.sync().await.expect("sync");
        }
        rt.sleep(Duration::from_secs(3)).await;
        let stats = m.merge_stats();
        assert!(stats.requests > 0, "the worker merged nothing: {stats:?}");
        let mut shape = describe(&log_trees_of(&server, &meta, &rt).await);
        let mut settles = 0;
        while finalized(&shape) > 0 && settles < SETTLE_MAX {
            settles += 1;
            touch(&m, &mut model, settles as u8).await;
            rt.sleep(Duration::from_secs(3)).await;
            shape = describe(&log_trees_of(&server, &meta, &rt).await);
        }
        while server.background().await.expect("background") {}
        assert!(
            shape.iter().all(|t| !t.2),
            "finalized trees left after the worker ran: {shape:?}"
        );
        assert_eq!(read_all(&m).await, model);
        drop(m);
        let faults = check(&meta, &data);
        assert!(faults.is_empty(), "check: {faults:#?}");
    });
}
