//! `.srch.` xattr search across mounts (reference §1.9, §8.3, traps 22
//! and 23): three mounts of one in-process server, each with its own `Fs`,
//! searching the committed srch files through the weak stable-root reader.
//!
//! * `search_finds_every_remaining_file_on_every_mount`: N tagged files
//!   (`SCOUTFS_SRCH_FILES`, default 3,000; the acceptance run is 100,000)
//!   created across the mounts, half of them removed again (the xattr
//!   removed, or the whole inode deleted); after a sync every mount finds
//!   exactly the remaining inodes, again after the log files were
//!   compacted into sorted files (and those into one), and after a log
//!   merge finalized and deleted every tree. The volume checks clean.
//! * `finalization_rotates_the_srch_log_durably` (trap 22, 35bcad91): a
//!   finalized tree's log moves into srch_root in the super that stores
//!   the tree, and searches still see every entry after the merge deleted
//!   the tree.
//! * `a_resumed_compaction_loses_nothing_and_drops_both_duplicates` (trap
//!   23, 18aee0eb / 7c5823ad): a sorted compaction saved part way, picked
//!   up again by a mount that dies before committing, and finished by
//!   another mount leaves exactly the live entries in one file: nothing
//!   lost, and no removed xattr comes back. Forged results are refused.

mod server_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use drivers::FaultDevice;
use engine::block::BlockCache;
use engine::btree::Btree;
use engine::format::hash::fnv1a64;
use engine::format::net::Cmd;
use engine::format::srch::{
    SrchCompact, SrchEntry, SRCH_COMPACT_FLAG_DELETE, SRCH_COMPACT_FLAG_SORTED,
};
use engine::fs::{Fs, ROOT_INO};
use engine::link::ServerLink;
use engine::runtime::{Runtime, Sim};
use engine::server::{InProcessLink, Server, ServerOptions};
use engine::srch::compact::{compact_step, CompactLimits};
use engine::srch::file::{entry_key, leaf_entries, read_leaf};
use engine::srch::server::all_files;
use engine::trans::{Mount, MountOptions};
use engine::weak::WeakReader;
use server_support::{assert_clean, mkfs, mount_fs, root_ctx, Client, GIB};
use zerocopy::{FromBytes, IntoBytes};

const MOUNTS: u64 = 3;
const NAME: &[u8] = b"scoutfs.srch.archived";
const OTHER: &[u8] = b"scoutfs.srch.hide.tier";

struct Node {
    mount: Arc<Mount>,
    fs: Fs,
}

async fn open_node(
    server: &Arc<Server>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
    limits: CompactLimits,
) -> Node {
    Client::new(server, meta, rt, rid)
        .greet()
        .await
        .expect("greet");
    let link = Arc::new(InProcessLink::new(server.clone(), rid));
    let opts = MountOptions {
        commit_interval: None,
        commit_retry: None,
        merge_interval: None,
        srch_compact_interval: None,
        srch_limits: limits,
        ..MountOptions::default()
    };
    let (mount, fs) = mount_fs(link, meta, data, rt, rid, opts).await;
    fs.set_stable_items(Arc::new(WeakReader::new(mount.block_cache().clone())));
    Node { mount, fs }
}

struct Cluster {
    server: Arc<Server>,
    nodes: Vec<Node>,
    meta: FaultDevice,
    data: FaultDevice,
}

async fn cluster(seed: u64, rt: &Runtime, sopts: ServerOptions, limits: CompactLimits) -> Cluster {
    let (meta, data) = mkfs(4 * GIB, 8 * GIB, seed);
    let server = Server::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        rt.clone(),
        sopts,
    )
    .await
    .expect("server opens");
    let mut nodes = Vec::new();
    for rid in 1..=MOUNTS {
        nodes.push(open_node(&server, &meta, &data, rt, rid, limits).await);
    }
    Cluster {
        server,
        nodes,
        meta,
        data,
    }
}

async fn sync_all(nodes: &[Node]) {
    for n in nodes {
        n.fs.fsync().await.expect("sync");
    }
}

/// Every inode a mount's search of `name` returns, batch after batch.
async fn search_all(fs: &Fs, name: &[u8], limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = 0u64;
    loop {
        let found = fs
            .search_xattrs(name, next, u64::MAX, limit)
            .await
            .expect("search");
        out.extend(&found.inos);
        if found.done {
            return out;
        }
        next = found.inos.last().map_or(next, |i| i + 1);
    }
}

async fn assert_search(nodes: &[&Node], name: &[u8], want: &BTreeSet<u64>, what: &str) {
    for (i, n) in nodes.iter().enumerate() {
        let got = search_all(&n.fs, name, engine::srch::SEARCH_LIMIT).await;
        let set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "{what}: mount {i} repeated inodes");
        if &set != want {
            let missing: Vec<_> = want.difference(&set).take(5).collect();
            let extra: Vec<_> = set.difference(want).take(5).collect();
            panic!(
                "{what}: mount {i} found {} of {} (missing {missing:?}, extra {extra:?})",
                set.len(),
                want.len()
            );
        }
    }
}

/// Every srch file of the stable super as (is_log, entries).
async fn stable_files(server: &Server, cache: &Arc<BlockCache>) -> Vec<(bool, Vec<SrchEntry>)> {
    let btree = Btree::new(cache.clone());
    let sb = server.stable_super();
    let mut out = Vec::new();
    for (is_log, f) in all_files(&btree, &sb).await.expect("files") {
        let mut ents = Vec::new();
        for blk in 0..f.blocks.get() {
            let b = read_leaf(cache, &f, blk).await.expect("leaf");
            ents.extend(leaf_entries(&b).expect("entries").into_iter().map(|e| e.0));
        }
        assert_eq!(ents.len() as u64, f.entries.get(), "file entry count");
        out.push((is_log, ents));
    }
    out
}

fn scratch_cache(server: &Server, meta: &FaultDevice, rt: &Runtime) -> Arc<BlockCache> {
    let r = rt.clone();
    Arc::new(BlockCache::new(
        Arc::new(meta.clone()),
        server.fsid(),
        256,
        Arc::new(move || r.random_u64()),
    ))
}

/// Compacts on mount after mount until none gets work.
async fn compact_all(nodes: &[&Node]) -> u64 {
    let mut steps = 0;
    loop {
        let mut any = 0;
        for n in nodes {
            any += n.mount.srch_compact_now().await.expect("compact");
        }
        if any == 0 {
            return steps;
        }
        steps += any;
    }
}

fn files_from_env() -> usize {
    std::env::var("SCOUTFS_SRCH_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn search_finds_every_remaining_file_on_every_mount() {
    let files = files_from_env();
    let sim = Sim::new(41);
    let rt = sim.runtime();
    sim.block_on(async move {
        let limits = CompactLimits {
            step_blocks: 2,
            ..CompactLimits::default()
        };
        let sopts = ServerOptions {
            finalize: false,
            // Every commit's log becomes a file of its own, so compaction
            // has log files to sort.
            srch_log_rotate_blocks: 1,
            ..ServerOptions::default()
        };
        let c = cluster(41, &rt, sopts, limits).await;
        let root = root_ctx();
        let mut live: BTreeSet<u64> = BTreeSet::new();
        let mut other: BTreeSet<u64> = BTreeSet::new();
        let mut by_mount: BTreeMap<u64, usize> = BTreeMap::new();
        let batch = (files / 8).clamp(50, 5000);
        for i in 0..files {
            let m = i % MOUNTS as usize;
            let fs = &c.nodes[m].fs;
            let ino = fs
                .tmpfile(&root, ROOT_INO, 0o644)
                .await
                .expect("tmpfile")
                .ino;
            fs.setxattr(&root, ino, NAME, b"1", 0).await.expect("set");
            if i % 5 == 0 {
                fs.setxattr(&root, ino, OTHER, b"x", 0).await.expect("set");
                other.insert(ino);
            }
            // A value change logs nothing.
            if i % 7 == 0 {
                fs.setxattr(&root, ino, NAME, b"22", 0)
                    .await
                    .expect("change");
            }
            live.insert(ino);
            by_mount.insert(ino, m);
            if (i + 1) % batch == 0 {
                sync_all(&c.nodes).await;
            }
        }
        sync_all(&c.nodes).await;
        let all: Vec<&Node> = c.nodes.iter().collect();
        assert_search(&all, NAME, &live, "after creating").await;
        // Half of them go: the xattr, or the whole inode.
        let inos: Vec<u64> = live.iter().copied().collect();
        for (k, ino) in inos.iter().enumerate() {
            if k % 2 == 0 {
                continue;
            }
            let fs = &c.nodes[by_mount[ino]].fs;
            if k % 4 == 1 {
                fs.removexattr(&root, *ino, NAME).await.expect("remove");
            } else {
                fs.release(*ino).await.expect("delete inode");
                other.remove(ino);
            }
            live.remove(ino);
            if (k + 1) % batch == 0 {
                sync_all(&c.nodes).await;
            }
        }
        sync_all(&c.nodes).await;
        assert_search(&all, NAME, &live, "after removing half").await;
        assert_search(&all, OTHER, &other, "other name").await;

        let steps = compact_all(&all).await;
        let cache = scratch_cache(&c.server, &c.meta, &rt);
        let files_left = stable_files(&c.server, &cache).await;
        let stats: Vec<_> = c.nodes.iter().map(|n| n.mount.srch_stats()).collect();
        eprintln!(
            "{files} files: {steps} compaction steps, {} srch files left, stats {stats:?}",
            files_left.len()
        );
        assert!(steps > 0, "nothing was compacted");
        assert!(
            stats.iter().map(|s| s.dropped).sum::<u64>() > 0,
            "no create/delete pair was dropped"
        );
        assert_search(&all, NAME, &live, "after compaction").await;
        // Small tracking limits give the same answer in many batches.
        for limit in [1, 97] {
            let got = search_all(&c.nodes[1].fs, NAME, limit).await;
            assert_eq!(
                got,
                live.iter().copied().collect::<Vec<_>>(),
                "limit {limit}"
            );
        }
        assert_search(&all, OTHER, &other, "other name after compaction").await;
        assert_clean(&c.meta, &c.data, "after compaction");
    });
}

/// Trap 22 (35bcad91): finalizing a tree moves its srch log into srch_root
/// in the same durable super that stores the finalized tree, so neither a
/// merge deleting the tree nor a search reading both loses an entry.
#[test]
fn finalization_rotates_the_srch_log_durably() {
    let sim = Sim::new(42);
    let rt = sim.runtime();
    sim.block_on(async move {
        let sopts = ServerOptions {
            finalize_height: 0,
            ..ServerOptions::default()
        };
        let c = cluster(42, &rt, sopts, CompactLimits::default()).await;
        let root = root_ctx();
        let mut live = BTreeSet::new();
        for (m, n) in c.nodes.iter().enumerate() {
            for i in 0..40 {
                let ino =
                    n.fs.tmpfile(&root, ROOT_INO, 0o644)
                        .await
                        .expect("tmpfile")
                        .ino;
                n.fs.setxattr(&root, ino, NAME, b"1", 0).await.expect("set");
                if (i + m) % 3 == 0 {
                    n.fs.removexattr(&root, ino, NAME).await.expect("remove");
                } else {
                    live.insert(ino);
                }
            }
        }
        // A commit keeps the logs (far below the rotation size) in their
        // trees; a sync's GET_LOG_TREES then finalizes the trees.
        for n in &c.nodes {
            n.mount.commit().await.expect("commit");
        }
        let cache = scratch_cache(&c.server, &c.meta, &rt);
        assert!(
            stable_files(&c.server, &cache).await.is_empty(),
            "small logs rotated at commit"
        );
        sync_all(&c.nodes).await;
        let sb = c.server.stable_super();
        let btree = Btree::new(cache.clone());
        let lts = engine::merge::all_log_trees(&btree, &sb.logs_root)
            .await
            .expect("log trees");
        let finalized: Vec<_> = lts
            .iter()
            .filter(|(_, lt)| {
                lt.flags.get() & engine::format::log_trees::LOG_TREES_FLAG_FINALIZED != 0
            })
            .collect();
        assert_eq!(finalized.len(), MOUNTS as usize, "every tree finalized");
        for (k, lt) in &finalized {
            assert!(
                lt.srch_file.ref_.is_null(),
                "finalized tree {k} still names its srch log in the durable super"
            );
        }
        let logs = stable_files(&c.server, &cache).await;
        assert_eq!(logs.len(), MOUNTS as usize, "one rotated log per mount");
        let all: Vec<&Node> = c.nodes.iter().collect();
        assert_search(&all, NAME, &live, "after finalization").await;
        // The merge deletes the finalized trees.
        for n in &c.nodes {
            n.mount.merge_now().await.expect("merge");
        }
        while c.server.background().await.expect("background") {}
        let sb = c.server.stable_super();
        let left = engine::merge::all_log_trees(&btree, &sb.logs_root)
            .await
            .expect("log trees");
        assert!(
            left.iter().all(|(_, lt)| lt.flags.get()
                & engine::format::log_trees::LOG_TREES_FLAG_FINALIZED
                == 0),
            "merged trees remain"
        );
        assert_search(&all, NAME, &live, "after the merge").await;
        assert_clean(&c.meta, &c.data, "after finalization and merge");
    });
}

/// SRCH_GET_COMPACT for `rid` as a mount's worker sends it.
async fn get_work(server: &Arc<Server>, rid: u64) -> Option<SrchCompact> {
    let link = InProcessLink::new(server.clone(), rid);
    let reply = link
        .call(Cmd::SrchGetCompact, Vec::new())
        .await
        .expect("GET_COMPACT");
    let sc = SrchCompact::read_from_bytes(&reply).expect("compact");
    (sc.nr != 0).then_some(sc)
}

/// One step of `sc` written through `cache`, committed for `rid`.
async fn step_and_commit(
    server: &Arc<Server>,
    rid: u64,
    cache: &Arc<BlockCache>,
    sc: &SrchCompact,
    limits: &CompactLimits,
) -> SrchCompact {
    cache.discard_dirty();
    let (res, _) = compact_step(cache, sc, limits).await.expect("step");
    cache.write_dirty_and_flush().await.expect("write");
    InProcessLink::new(server.clone(), rid)
        .call(Cmd::SrchCommitCompact, res.as_bytes().to_vec())
        .await
        .expect("COMMIT_COMPACT");
    res
}

/// Trap 23 (18aee0eb, 7c5823ad).
#[test]
fn a_resumed_compaction_loses_nothing_and_drops_both_duplicates() {
    let sim = Sim::new(43);
    let rt = sim.runtime();
    sim.block_on(async move {
        let sopts = ServerOptions {
            finalize: false,
            // Every commit's log becomes a file of its own.
            srch_log_rotate_blocks: 1,
            ..ServerOptions::default()
        };
        let c = cluster(43, &rt, sopts, CompactLimits::default()).await;
        let root = root_ctx();
        let mut live: BTreeMap<u64, usize> = BTreeMap::new();
        // 16 commits (4 log compactions, then 4 sorted files of one
        // tier); xattrs created in one commit and removed several commits
        // later, so their pairs meet only in the sorted merge.
        // Each file also has a name of its own: entries of many hashes
        // make the sorted files span several leaves.
        let own = |ino: u64| format!("scoutfs.srch.own.{ino}").into_bytes();
        let mut created: Vec<Vec<u64>> = Vec::new();
        for round in 0..16usize {
            let m = round % MOUNTS as usize;
            let fs = &c.nodes[m].fs;
            let mut these = Vec::new();
            for _ in 0..400 {
                let ino = fs.tmpfile(&root, ROOT_INO, 0o644).await.expect("tmpfile").ino;
                fs.setxattr(&root, ino, NAME, b"1", 0).await.expect("set");
                fs.setxattr(&root, ino, &own(ino), b"1", 0).await.expect("set");
                these.push(ino);
                live.insert(ino, m);
            }
            if round >= 3 {
                // Some of those this mount created three rounds ago go.
                for ino in created[round - 3].iter().step_by(3) {
                    fs.removexattr(&root, *ino, NAME).await.expect("remove");
                    fs.removexattr(&root, *ino, &own(*ino)).await.expect("remove");
                    live.remove(ino);
                }
            }
            created.push(these);
            fs.fsync().await.expect("sync");
        }
        let cache = scratch_cache(&c.server, &c.meta, &rt);
        let logs = stable_files(&c.server, &cache).await;
        assert_eq!(logs.len(), 16, "one log file per commit");

        // Rid 2 sorts the logs until a sorted compaction comes up.
        let big = CompactLimits::default();
        let tiny = CompactLimits {
            step_blocks: 1,
            step_entries: 700,
            alloc_low_blocks: 1,
        };
        let c2 = scratch_cache(&c.server, &c.meta, &rt);
        let sorted = loop {
            let sc = get_work(&c.server, 2).await.expect("work while logs remain");
            if sc.flags & SRCH_COMPACT_FLAG_SORTED != 0 {
                break sc;
            }
            step_and_commit(&c.server, 2, &c2, &sc, &big).await;
        };
        // A result that does not match its work changes nothing.
        let mut forged = sorted;
        forged.inputs[1].sfl.entries = (forged.inputs[1].sfl.entries.get() + 1).into();
        let link2 = InProcessLink::new(c.server.clone(), 2);
        assert_eq!(
            link2
                .call(Cmd::SrchCommitCompact, forged.as_bytes().to_vec())
                .await,
            Err(libc::EINVAL)
        );
        // Nor does one for work this rid doesn't hold.
        let mut other = sorted;
        other.id = 1.into();
        let before = c.server.stable_super();
        link2
            .call(Cmd::SrchCommitCompact, other.as_bytes().to_vec())
            .await
            .expect("unknown work is acknowledged");
        assert_eq!(c.server.stable_super().hdr.seq, before.hdr.seq);
        // Its first step is saved part way.
        let res = step_and_commit(&c.server, 2, &c2, &sorted, &tiny).await;
        assert!(!engine::srch::server::is_done(&res), "one leaf finished the merge");
        assert!(res.inputs.iter().any(|i| i.blk.get() > 0 || i.pos.get() > 0));
        // Rid 1 picks it up, writes a step and dies before committing.
        let c1 = scratch_cache(&c.server, &c.meta, &rt);
        let resumed = get_work(&c.server, 1).await.expect("pending work");
        assert_eq!(resumed.id, sorted.id);
        assert_eq!(resumed.inputs, res.inputs, "resumed from the saved positions");
        let _lost = compact_step(&c1, &resumed, &tiny).await.expect("step");
        c1.write_dirty_and_flush().await.expect("write");
        let Cluster {
            server,
            mut nodes,
            meta,
            data,
        } = c;
        let dead = nodes.remove(0);
        drop(dead);
        server.reclaim_rid(1).await.expect("reclaim");
        // Rid 3 finishes everything in small steps.
        let c3 = scratch_cache(&server, &meta, &rt);
        let mut steps = 0;
        let mut deletes = 0;
        while let Some(sc) = get_work(&server, 3).await {
            if sc.flags & SRCH_COMPACT_FLAG_DELETE != 0 {
                deletes += 1;
            }
            step_and_commit(&server, 3, &c3, &sc, &tiny).await;
            steps += 1;
            assert!(steps < 10_000, "compaction does not end");
        }
        eprintln!("rid 3: {steps} steps, {deletes} delete phases");
        assert!(deletes >= 1, "{deletes} delete phases");
        let files = stable_files(&server, &c3).await;
        assert_eq!(files.len(), 1, "everything compacted into one file");
        let (is_log, ents) = &files[0];
        assert!(!is_log);
        let keys: Vec<_> = ents.iter().map(entry_key).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        let got: BTreeSet<(u64, u64)> = ents.iter().map(|e| (e.hash.get(), e.ino.get())).collect();
        let mut expect: BTreeSet<(u64, u64)> = BTreeSet::new();
        for ino in live.keys() {
            expect.insert((fnv1a64(NAME), *ino));
            expect.insert((fnv1a64(&own(*ino)), *ino));
        }
        let lost: Vec<_> = expect.difference(&got).take(5).collect();
        let back: Vec<_> = got.difference(&expect).take(5).collect();
        assert!(
            lost.is_empty() && back.is_empty(),
            "the compacted file holds {} entries for {} live xattrs: lost {lost:?}, removed but present {back:?}",
            got.len(),
            expect.len()
        );
        let want: BTreeSet<u64> = live.keys().copied().collect();
        let rest: Vec<&Node> = nodes.iter().collect();
        assert_search(&rest, NAME, &want, "after the resumed compaction").await;
        for n in &nodes {
            n.fs.fsync().await.expect("sync");
        }
        assert_clean(&meta, &data, "after the resumed compaction");
    });
}
