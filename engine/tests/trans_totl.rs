//! Delta items (`.totl.`, reference §2.5, traps 14–15) through the real
//! mount and server: random deltas on a few totl keys, several per
//! transaction and several transactions per log tree, with the server
//! finalizing every tree that holds items and merges running between and
//! across syncs (partial merges included). Once everything is merged, a
//! fresh mount reads each key's value from `fs_root`: it must be the exact
//! sum of every delta (count and total, wrapping), and a key whose sum
//! returned to (0, 0) must be gone. Before delta items were summed in the
//! item cache, a second delta to a key in one transaction replaced the
//! first.

mod server_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use drivers::FaultDevice;
use engine::format::items::{totl_key, TotlValue};
use engine::format::log_trees::LOG_TREES_FLAG_FINALIZED;
use engine::item::{Items, Transactions};
use engine::runtime::{Runtime, Sim};
use engine::server::{Server, ServerOptions};
use engine::trans::Mount;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_support::{assert_clean, log_trees_of, mkfs, GIB};
use zerocopy::{FromBytes, IntoBytes};

const KEYS: u64 = 6;
const SEEDS_DEFAULT: u64 = 40;
const SETTLE_MAX: usize = 8;

async fn mount_on(
    server: &Arc<Server>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
) -> Mount {
    server_support::mount_in_process(server, meta, data, rt, rid, None).await
}

fn delta(total: u64, count: u64) -> Vec<u8> {
    TotlValue {
        total: total.into(),
        count: count.into(),
    }
    .as_bytes()
    .to_vec()
}

async fn merge_and_free(m: &Mount, s: &Server) {
    m.merge_now().await.expect("merge_now");
    while s.background().await.expect("background") {}
}

fn run(seed: u64) {
    let sim = Sim::new(seed);
    let rt = sim.runtime();
    sim.block_on(async move {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (meta, data) = mkfs(2 * GIB, 8 * GIB, seed);
        let server = Server::open(
            Arc::new(meta.clone()),
            Arc::new(data.clone()),
            rt.clone(),
            ServerOptions {
                finalize_height: 0,
                ..ServerOptions::default()
            },
        )
        .await
        .expect("server opens");
        let m = mount_on(&server, &meta, &data, &rt, 1).await;
        let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();

        for _ in 0..rng.gen_range(4..12) {
            for _ in 0..rng.gen_range(1..6) {
                let _hold = m.hold(true).await.expect("hold");
                for _ in 0..rng.gen_range(1..8) {
                    let k = rng.gen_range(0..KEYS);
                    let (t, c) = if rng.gen_bool(0.35) {
                        // Take back part of what is there: sums return to zero.
                        let cur = model.get(&k).copied().unwrap_or((0, 0));
                        (cur.0.wrapping_neg(), cur.1.wrapping_neg())
                    } else {
                        (rng.gen_range(0..1000), 1)
                    };
                    m.create_force(totl_key(1, k, 0), delta(t, c))
                        .await
                        .expect("delta");
                    let e = model.entry(k).or_insert((0, 0));
                    *e = (e.0.wrapping_add(t), e.1.wrapping_add(c));
                }
            }
            m.sync().await.expect("sync");
            if rng.gen_bool(0.5) {
                merge_and_free(&m, &server).await;
            }
        }

        // Merge everything: each sync finalizes the tree it committed.
        let mut settles = 0;
        loop {
            m.sync().await.expect("sync");
            merge_and_free(&m, &server).await;
            let lts = log_trees_of(&server, &meta, &rt).await;
            let pending = lts.iter().any(|lt| {
                lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0 || !lt.item_root.is_empty()
            });
            if !pending {
                break;
            }
            settles += 1;
            assert!(
                settles < SETTLE_MAX,
                "seed {seed}: log trees stay: {}",
                lts.len()
            );
            // A change on a key of its own closes the open tree at the next
            // sync, so the server finalizes it.
            let _hold = m.hold(false).await.expect("hold");
            m.create_force(totl_key(1, KEYS + 1, 0), delta(1, 1))
                .await
                .expect("touch");
            let e = model.entry(KEYS + 1).or_insert((0, 0));
            *e = (e.0 + 1, e.1 + 1);
        }
        assert_clean(&meta, &data, "after merging");

        drop(m);
        let fresh = mount_on(&server, &meta, &data, &rt, 2).await;
        for k in 0..=KEYS + 1 {
            let got = fresh.lookup(totl_key(1, k, 0)).await.expect("lookup");
            let want = model.get(&k).copied().filter(|&v| v != (0, 0));
            let got = got.map(|v| {
                let t = TotlValue::read_from_bytes(&v).expect("totl value");
                (t.total.get(), t.count.get())
            });
            assert_eq!(got, want, "seed {seed}: totl key {k}");
        }
    });
}

#[test]
fn totl_deltas_sum_across_transactions_trees_and_merges() {
    let seeds = std::env::var("SCOUTFS_TOTL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    for seed in 0..seeds {
        run(0x7071_0000 + seed);
    }
}
