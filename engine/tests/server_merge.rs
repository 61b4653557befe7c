//! Log merge through the server's handlers (reference §2.4, §5.4): two
//! simulated mounts drive a [`Server`] directly through `handle`, the way a
//! mount's transactions and forest worker would.
//!
//! Each cycle: several transactions per mount (GET_LOG_TREES, COW puts and
//! tombstones into the log tree with its own meta_avail/meta_freed, write,
//! COMMIT_LOG_TREES), with the server finalizing trees taller than one leaf
//! (`finalize_height: 1`) and every other mount's tree at its next
//! GET_LOG_TREES, then starting the merge once no tree is active. Then
//! merge work: GET_LOG_MERGE → `merge::client::merge_request` → write →
//! COMMIT_LOG_MERGE until ENOENT (with tiny merge limits on odd cycles, so
//! completions REMAIN and ranges are put back and resumed). Then the
//! background freeing runs to the end; the check is clean before it and
//! after its first step too (merged trees waiting to be freed are in use).
//!
//! After every cycle: `fs_root` holds exactly what the mounts wrote (a
//! model map, newest write wins, tombstones delete), no finalized tree and
//! no log-merge item is left, the offline check is clean (so every block of
//! the merged trees was freed exactly once: a leak or a double free is a
//! check fault), and the metadata blocks in use come back under a bound —
//! over 12 cycles nothing accumulates. Replays (trap 20): a resent
//! GET_LOG_MERGE gets the same request, a resent COMMIT_LOG_MERGE changes
//! nothing; a mount leaving with a request outstanding has it cancelled
//! and its range merged by another mount.

mod server_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use drivers::FaultDevice;
use engine::block::BlockCache;
use engine::btree::{Btree, ListItem, ListOp};
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::items::{xattr_key, ROOT_INO};
use engine::format::log_trees::{
    LogMergeComplete, LogMergeRequest, LogTrees, LOG_MERGE_COMP_FLAG_REMAIN,
    LOG_TREES_FLAG_FINALIZED,
};
use engine::format::net::{Cmd, NetStatfs};
use engine::format::superblock::SuperBlock;
use engine::format::Key;
use engine::merge::client::{merge_request_with, MergeLimits};
use engine::runtime::{Runtime, Sim};
use engine::server::{Server, ServerOptions};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use server_support::{check, mkfs, GIB};
use zerocopy::{FromBytes, IntoBytes};

const META: u64 = 8 * GIB;
const DATA: u64 = 16 * GIB;
/// Distinct keys the mounts write.
const KEYS: u64 = 3000;
const CYCLES: usize = 12;
/// Drain rounds (everyone opens a transaction, then merge) a cycle may need.
const DRAIN_ROUNDS_MAX: usize = 8;

fn key(id: u64) -> Key {
    xattr_key(ROOT_INO, 1, id, 0)
}

fn cache(meta: &FaultDevice, server: &Server, rt: &Runtime) -> Arc<BlockCache> {
    let r = rt.clone();
    Arc::new(BlockCache::new(
        Arc::new(meta.clone()),
        server.fsid(),
        512,
        Arc::new(move || r.random_u64()),
    ))
}

/// A simulated mount talking to the server through `handle`.
struct Mount {
    rid: u64,
    btree: Btree,
}

impl Mount {
    fn new(rid: u64, meta: &FaultDevice, server: &Server, rt: &Runtime) -> Mount {
        Mount {
            rid,
            btree: Btree::new(cache(meta, server, rt)),
        }
    }

    async fn call(&self, s: &Server, cmd: Cmd, payload: &[u8]) -> Result<Vec<u8>, i32> {
        s.handle(self.rid, cmd, payload).await
    }

    async fn greet(&self, s: &Server) {
        let g = engine::format::net::NetGreeting {
            fsid: s.fsid().into(),
            fmt_vers: s.fmt_vers().into(),
            server_term: 0.into(),
            rid: self.rid.into(),
            flags: 0.into(),
        };
        self.call(s, Cmd::Greeting, g.as_bytes()).await.unwrap();
    }

    /// One transaction: `puts` new values and `dels` tombstones of distinct
    /// random keys (all `nr` keys when `seq_ids` is set), at the
    /// transaction's seq; the model records them as the newest writes.
    async fn transaction(
        &self,
        s: &Server,
        rng: &mut SmallRng,
        model: &mut BTreeMap<Key, Option<Vec<u8>>>,
        puts: usize,
        dels: usize,
        val_len: std::ops::Range<usize>,
    ) {
        let r = self.call(s, Cmd::GetLogTrees, &[]).await.unwrap();
        let mut lt = LogTrees::read_from_bytes(&r).unwrap();
        assert_eq!(lt.flags.get() & LOG_TREES_FLAG_FINALIZED, 0);
        let seq = lt.get_trans_seq.get();
        let mut ids: Vec<u64> = (0..KEYS).collect();
        ids.shuffle(rng);
        let mut list: Vec<ListItem> = Vec::new();
        for (i, id) in ids.into_iter().take(puts + dels).enumerate() {
            let li = if i < puts {
                let val = vec![rng.gen::<u8>() | 1; rng.gen_range(val_len.clone())];
                model.insert(key(id), Some(val.clone()));
                ListItem {
                    key: key(id),
                    seq,
                    flags: 0,
                    op: ListOp::Put(val),
                }
            } else {
                model.insert(key(id), None);
                ListItem {
                    key: key(id),
                    seq,
                    flags: ITEM_FLAG_DELETION,
                    op: ListOp::Put(Vec::new()),
                }
            };
            list.push(li);
        }
        list.sort_by_key(|li| li.key);
        let mut alloc =
            engine::alloc::ListAlloc::new(self.btree.cache().clone(), lt.meta_avail, lt.meta_freed);
        self.btree
            .insert_list(&mut lt.item_root, &mut alloc, &list)
            .await
            .unwrap();
        lt.meta_avail = alloc.avail;
        lt.meta_freed = alloc.freed;
        lt.max_item_seq = seq.into();
        self.btree.cache().write_dirty_and_flush().await.unwrap();
        self.call(s, Cmd::CommitLogTrees, lt.as_bytes())
            .await
            .unwrap();
    }

    /// Opens a transaction and commits it unchanged (what a mount's
    /// periodic commit does with nothing dirty).
    async fn empty_transaction(&self, s: &Server) {
        let r = self.call(s, Cmd::GetLogTrees, &[]).await.unwrap();
        self.call(s, Cmd::CommitLogTrees, &r).await.unwrap();
    }

    async fn get_merge(&self, s: &Server) -> Option<LogMergeRequest> {
        match self.call(s, Cmd::GetLogMerge, &[]).await {
            Ok(r) => Some(LogMergeRequest::read_from_bytes(&r).unwrap()),
            Err(libc::ENOENT) => None,
            Err(e) => panic!("GET_LOG_MERGE: errno {e}"),
        }
    }

    /// Merges `req` and writes its blocks; returns the completion to send.
    async fn merge(&self, req: &LogMergeRequest, limits: &MergeLimits) -> LogMergeComplete {
        let comp = merge_request_with(&self.btree, req, limits).await.unwrap();
        self.btree.cache().write_dirty_and_flush().await.unwrap();
        comp
    }
}

/// Tiny limits: merges stop early (REMAIN) after a few blocks.
fn small_limits() -> MergeLimits {
    MergeLimits {
        dirty_limit_blocks: 6,
        window_bytes: 64 << 10,
        ..MergeLimits::default()
    }
}

#[derive(Default, Debug)]
struct MergeStats {
    requests: usize,
    remains: usize,
}

/// Every mount asks for merge work until none is handed out and no merge
/// runs. Resends the first GET/COMMIT of a call to check replay.
async fn merge_until_done(
    s: &Server,
    mounts: &[Mount],
    limits: &MergeLimits,
    stats: &mut MergeStats,
    view: &View<'_>,
) {
    let mut replayed = false;
    for _ in 0..10_000 {
        let mut progressed = false;
        for m in mounts {
            let Some(req) = m.get_merge(s).await else {
                continue;
            };
            progressed = true;
            stats.requests += 1;
            if !replayed {
                // A resent GET_LOG_MERGE gets the outstanding request.
                let again = m.get_merge(s).await.expect("outstanding request resent");
                assert_eq!(again.as_bytes(), req.as_bytes());
            }
            let comp = m.merge(&req, limits).await;
            if comp.flags.get() & LOG_MERGE_COMP_FLAG_REMAIN != 0 {
                stats.remains += 1;
            }
            m.call(s, Cmd::CommitLogMerge, comp.as_bytes())
                .await
                .unwrap();
            if !replayed {
                // The completion waits for its splice (the next
                // GET_LOG_MERGE): a volume left like this is consistent,
                // its subtree in use and the blocks it COWed away still
                // fs_root's.
                let faults = check(view.meta, view.data);
                assert!(
                    faults.is_empty(),
                    "a completion waiting for its splice: {faults:#?}"
                );
                // A resent completion is acknowledged and changes nothing.
                let before = s.stable_super();
                m.call(s, Cmd::CommitLogMerge, comp.as_bytes())
                    .await
                    .unwrap();
                assert_eq!(s.stable_super().as_bytes(), before.as_bytes());
                replayed = true;
            }
        }
        if !progressed {
            let sb = s.stable_super();
            let left: Vec<Key> = view
                .merge_items(&sb)
                .await
                .into_iter()
                .filter(|k| k.zone != engine::format::key::zone::LOG_MERGE_FREEING)
                .collect();
            assert!(
                left.is_empty(),
                "no work handed out but the merge isn't finished: {left:?}"
            );
            return;
        }
    }
    panic!("merge did not finish");
}

/// Reads the stable super's trees through a fresh cache.
struct View<'a> {
    btree: Btree,
    meta: &'a FaultDevice,
    data: &'a FaultDevice,
}

impl View<'_> {
    async fn log_trees(&self, sb: &SuperBlock) -> Vec<LogTrees> {
        let (s, e) = (
            engine::format::items::log_trees_key(0, 0),
            engine::format::items::log_trees_key(u64::MAX, u64::MAX),
        );
        let b = self.btree.range(&sb.logs_root, &s, &e, 100_000).await;
        b.unwrap()
            .items
            .iter()
            .map(|it| LogTrees::read_from_bytes(&it.val).unwrap())
            .collect()
    }

    async fn merge_items(&self, sb: &SuperBlock) -> Vec<Key> {
        let b = self
            .btree
            .range(&sb.log_merge, &Key::MIN, &Key::MAX, 100_000)
            .await
            .unwrap();
        b.items.iter().map(|it| it.key).collect()
    }

    async fn fs_items(&self, sb: &SuperBlock) -> BTreeMap<Key, Vec<u8>> {
        let b = self
            .btree
            .range(&sb.fs_root, &key(0), &key(u64::MAX), 100_000)
            .await
            .unwrap();
        assert!(b.next.is_none());
        b.items
            .into_iter()
            .map(|it| {
                assert_eq!(it.flags & ITEM_FLAG_DELETION, 0, "tombstone in fs_root");
                (it.key, it.val)
            })
            .collect()
    }
}

async fn used_meta_blocks(s: &Server, rid: u64) -> u64 {
    let r = s.handle(rid, Cmd::Statfs, &[]).await.unwrap();
    let st = NetStatfs::read_from_bytes(&r).unwrap();
    st.total_meta_blocks.get() - st.free_meta_blocks.get()
}

async fn merge_cycles(rt: Runtime, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (meta, data) = mkfs(META, DATA, seed);
    let opts = ServerOptions {
        finalize_height: 1,
        ..ServerOptions::default()
    };
    let s = Server::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        rt.clone(),
        opts,
    )
    .await
    .unwrap();
    let mut mounts = vec![
        Mount::new(0xa, &meta, &s, &rt),
        Mount::new(0xb, &meta, &s, &rt),
    ];
    for m in &mounts {
        m.greet(&s).await;
    }
    let view = View {
        btree: Btree::new(cache(&meta, &s, &rt)),
        meta: &meta,
        data: &data,
    };
    let mut model: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
    let mut stats = MergeStats::default();
    let mut used = Vec::new();

    for cycle in 0..CYCLES {
        let limits = if cycle % 2 == 1 {
            small_limits()
        } else {
            MergeLimits::default()
        };
        for _ in 0..3 {
            for m in &mounts {
                let (p, d) = (rng.gen_range(50..150), rng.gen_range(0..40));
                m.transaction(&s, &mut rng, &mut model, p, d, 64..300).await;
            }
        }
        // One tree surely taller than a leaf: 400 values of 200+ bytes.
        mounts[cycle % 2]
            .transaction(&s, &mut rng, &mut model, 400, 0, 200..400)
            .await;

        if cycle == 5 {
            // A mount leaves holding a request: FAREWELL cancels it, its
            // range goes back, and the other mount merges it.
            for m in &mounts {
                m.empty_transaction(&s).await;
            }
            let gone = mounts.pop().unwrap();
            if let Some(req) = gone.get_merge(&s).await {
                let _ = gone.merge(&req, &limits).await;
                gone.call(&s, Cmd::Farewell, &[]).await.unwrap();
                let sb = s.stable_super();
                let reqs = view
                    .merge_items(&sb)
                    .await
                    .into_iter()
                    .filter(|k| k.zone == engine::format::key::zone::LOG_MERGE_REQUEST)
                    .count();
                assert_eq!(reqs, 0, "farewell left a merge request");
            } else {
                gone.call(&s, Cmd::Farewell, &[]).await.unwrap();
            }
            let back = Mount::new(0xc, &meta, &s, &rt);
            back.greet(&s).await;
            mounts.push(back);
        }

        // Everyone opens a transaction (finalizing what it holds), then
        // merge work until done, until no log tree holds items.
        let mut drained = false;
        for _ in 0..DRAIN_ROUNDS_MAX {
            for m in &mounts {
                m.empty_transaction(&s).await;
            }
            merge_until_done(&s, &mounts, &limits, &mut stats, &view).await;
            let sb = s.stable_super();
            if view
                .log_trees(&sb)
                .await
                .iter()
                .all(|lt| lt.item_root.is_empty())
            {
                drained = true;
                break;
            }
        }
        assert!(drained, "cycle {cycle}: log trees still hold items");
        // The merged trees wait to be freed: a volume left like this (the
        // server stopped) is consistent, their blocks still in use, and
        // stays so once a commit has freed some of them.
        let faults = check(&meta, &data);
        assert!(
            faults.is_empty(),
            "cycle {cycle}, merged trees not freed yet: {faults:#?}"
        );
        if s.background().await.unwrap() {
            let faults = check(&meta, &data);
            assert!(
                faults.is_empty(),
                "cycle {cycle}, merged trees partly freed: {faults:#?}"
            );
        }
        while s.background().await.unwrap() {}

        let sb = s.stable_super();
        for lt in view.log_trees(&sb).await {
            assert_eq!(
                lt.flags.get() & LOG_TREES_FLAG_FINALIZED,
                0,
                "cycle {cycle}: a finalized tree outlived its merge"
            );
        }
        assert_eq!(
            view.merge_items(&sb).await,
            Vec::<Key>::new(),
            "cycle {cycle}: log-merge items left (status, ranges, requests, completions or freeing)"
        );
        let want: BTreeMap<Key, Vec<u8>> = model
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect();
        let got = view.fs_items(&sb).await;
        assert_eq!(got.len(), want.len(), "cycle {cycle}: fs_root item count");
        assert!(got == want, "cycle {cycle}: fs_root differs from the model");
        let faults = check(&meta, &data);
        assert!(faults.is_empty(), "cycle {cycle}: {faults:#?}");
        used.push(used_meta_blocks(&s, mounts[0].rid).await);
    }

    assert!(
        stats.requests > CYCLES && stats.remains > 0,
        "merges were too small to test much: {stats:?}"
    );
    // fs_root holds at most KEYS items (about a dozen leaves): its size is
    // bounded, and so must be everything else once merged trees are freed
    // (about 30 blocks in all). Allow a little growth for fs_root filling
    // its key space and extent-tree fragmentation.
    let bound = used[2] + 16;
    for (cycle, u) in used.iter().enumerate().skip(3) {
        assert!(
            *u <= bound,
            "cycle {cycle}: {u} metadata blocks in use, bound {bound} (history {used:?})"
        );
    }
    if std::env::var_os("SERVER_MERGE_VERBOSE").is_some() {
        eprintln!("seed {seed}: {stats:?}, used per cycle {used:?}");
    }
}

#[test]
fn server_merge_cycles_merge_everything_and_stay_bounded() {
    for seed in [1u64, 2] {
        let sim = Sim::new(seed);
        sim.block_on(merge_cycles(sim.runtime(), seed));
    }
}
