//! `.totl.` totals, `.indx.` entries and quota rules across mounts
//! (reference §2.5, §7.3, §8.4, §9 "Quotas", traps 15 and 24): three
//! mounts of one in-process server, each with its own `Fs`, reading the
//! committed state of all of them through the weak stable-root reader.
//!
//! * totals: random creates, value changes and removals of `.totl.`
//!   xattrs on files of all three mounts; after every round each mount
//!   syncs, merges run on odd rounds (the server finalizes every tree, so
//!   reads meet fs_root items, merge inputs and open logs at once), and
//!   every mount's `read_xattr_totals` must equal the model sums exactly
//!   and never be negative;
//! * index: `.indx.` entries created and removed on several mounts read
//!   back exactly (a removal deletes the entry with its real xid, trap 24);
//! * quotas: a data rule on a uid added on one mount stops writes on
//!   another with EDQUOT once a third mount sets the total to the limit,
//!   and lets them resume when the total drops; an inode-count rule stops
//!   creates; deleting the rule lifts it everywhere.

mod server_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drivers::FaultDevice;
use engine::block::BlockCache;
use engine::btree::Btree;
use engine::format::items::{QuotaRule, QUOTA_OP_DATA, QUOTA_OP_INODE, QUOTA_RULE_FLAG_TOTL_COUNT};
use engine::format::log_trees::LogMergeRequest;
use engine::format::net::Cmd;
use engine::fs::{Ctx, Fs, ROOT_INO};
use engine::link::ServerLink;
use engine::merge::client::{merge_request_with, MergeLimits};
use engine::runtime::{Runtime, Sim};
use engine::server::{InProcessLink, Server, ServerOptions};
use engine::trans::{Mount, MountOptions};
use engine::weak::WeakReader;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use server_support::{mkfs, mount_fs, root_ctx, Client, GIB};
use zerocopy::{FromBytes, IntoBytes};

const MOUNTS: u64 = 3;
const FILES_PER_MOUNT: usize = 6;
const KEYS: u64 = 5;

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
        ..MountOptions::default()
    };
    let (mount, fs) = mount_fs(link, meta, data, rt, rid, opts).await;
    fs.set_stable_items(Arc::new(WeakReader::new(mount.block_cache().clone())));
    fs.set_quota_validity(Duration::ZERO);
    Node { mount, fs }
}

async fn cluster(seed: u64, rt: Runtime) -> (Arc<Server>, Vec<Node>) {
    let (s, n, _) = cluster_devs(seed, rt).await;
    (s, n)
}

async fn cluster_devs(seed: u64, rt: Runtime) -> (Arc<Server>, Vec<Node>, FaultDevice) {
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
    let mut nodes = Vec::new();
    for rid in 1..=MOUNTS {
        nodes.push(open_node(&server, &meta, &data, &rt, rid).await);
    }
    (server, nodes, meta)
}

fn user(uid: u32) -> Ctx {
    Ctx {
        uid,
        gid: uid,
        umask: 0o022,
        cap_sys_admin: false,
    }
}

fn totl_name(k: u64) -> Vec<u8> {
    format!("scoutfs.totl.t.9.{k}.3").into_bytes()
}

async fn sync_all(nodes: &[Node]) {
    for n in nodes {
        n.fs.fsync().await.expect("sync");
    }
}

async fn merge_all(server: &Server, nodes: &[Node]) {
    for n in nodes {
        n.mount.merge_now().await.expect("merge");
    }
    while server.background().await.expect("background") {}
}

fn run_totals(seed: u64) {
    let sim = Sim::new(seed);
    let rt = sim.runtime();
    sim.block_on(async move {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (server, nodes) = cluster(seed, rt).await;
        let root = root_ctx();
        // (mount, file) → (key → value) and the model sums.
        let mut files: Vec<(usize, u64)> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for _ in 0..FILES_PER_MOUNT {
                let a = n.fs.tmpfile(&root, ROOT_INO, 0o644).await.expect("tmpfile");
                files.push((i, a.ino));
            }
        }
        let mut values: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for round in 0..10 {
            for _ in 0..rng.gen_range(10..40) {
                let (m, ino) = files[rng.gen_range(0..files.len())];
                let k = rng.gen_range(0..KEYS);
                let fs = &nodes[m].fs;
                if values.contains_key(&(ino, k)) && rng.gen_bool(0.3) {
                    fs.removexattr(&root, ino, &totl_name(k))
                        .await
                        .expect("remove");
                    values.remove(&(ino, k));
                } else {
                    let v = rng.gen_range(0..100_000u64);
                    fs.setxattr(&root, ino, &totl_name(k), v.to_string().as_bytes(), 0)
                        .await
                        .expect("set");
                    values.insert((ino, k), v);
                }
            }
            sync_all(&nodes).await;
            if round % 2 == 1 {
                merge_all(&server, &nodes).await;
            }
            let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for ((_, k), v) in &values {
                let e = want.entry(*k).or_default();
                e.0 += v;
                e.1 += 1;
            }
            for (i, n) in nodes.iter().enumerate() {
                let got =
                    n.fs.read_xattr_totals([0, 0, 0], 1000)
                        .await
                        .expect("totals");
                let got: BTreeMap<u64, (u64, u64)> = got
                    .iter()
                    .map(|t| {
                        assert_eq!((t.name[0], t.name[2]), (9, 3));
                        assert!(
                            (t.total as i64) >= 0 && (t.count as i64) >= 0,
                            "negative {t:?}"
                        );
                        (t.name[1], (t.total, t.count))
                    })
                    .collect();
                assert_eq!(got, want, "seed {seed} round {round} mount {i}");
            }
        }
    });
}

#[test]
fn totals_are_exact_across_mounts_and_merges() {
    let seeds = std::env::var("SCOUTFS_TAG_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4u64);
    for seed in 0..seeds {
        run_totals(0x7a95_0000 + seed);
    }
}

/// One merge request done the way a mount's merge worker does it, with
/// tiny limits so that it stops early (REMAIN) and the merge stays half
/// done; false when the server has no work.
async fn merge_one_request(server: &Arc<Server>, meta: &FaultDevice, rt: &Runtime) -> bool {
    let link = InProcessLink::new(server.clone(), 1);
    let reply = match link.call(Cmd::GetLogMerge, Vec::new()).await {
        Ok(r) => r,
        Err(libc::ENOENT) => return false,
        Err(e) => panic!("GET_LOG_MERGE: {e}"),
    };
    let req = LogMergeRequest::read_from_bytes(&reply).expect("request");
    let r = rt.clone();
    let cache = Arc::new(BlockCache::new(
        Arc::new(meta.clone()),
        server.fsid(),
        256,
        Arc::new(move || r.random_u64()),
    ));
    let btree = Btree::new(cache.clone());
    let limits = MergeLimits {
        dirty_limit_blocks: 2,
        alloc_low_blocks: 1,
        window_bytes: 4096,
    };
    let comp = merge_request_with(&btree, &req, &limits)
        .await
        .expect("merge");
    cache.write_dirty_and_flush().await.expect("write");
    link.call(Cmd::CommitLogMerge, comp.as_bytes().to_vec())
        .await
        .expect("COMMIT_LOG_MERGE");
    true
}

/// Trap 15 (38d36c9f, 5e2009f9): totals read while a merge is half done
/// (some ranges folded into fs_root, the rest still in the input trees,
/// newer deltas in open trees) are exact after every merge request.
#[test]
fn totals_are_exact_while_a_merge_is_half_done() {
    let sim = Sim::new(31);
    let rt = sim.runtime();
    sim.block_on(async move {
        let many: u64 = std::env::var("SCOUTFS_TAG_MERGE_KEYS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120);
        let mut rng = SmallRng::seed_from_u64(31);
        let (server, nodes, meta) = cluster_devs(31, rt.clone()).await;
        let root = root_ctx();
        let mut inos = Vec::new();
        for n in &nodes {
            inos.push(
                n.fs.tmpfile(&root, ROOT_INO, 0o644)
                    .await
                    .expect("tmpfile")
                    .ino,
            );
        }
        let mut values: BTreeMap<(usize, u64), u64> = BTreeMap::new();
        let name = |k: u64| format!("scoutfs.totl.m.2.{k}.0").into_bytes();
        let check = |values: &BTreeMap<(usize, u64), u64>| {
            let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for ((_, k), v) in values {
                let e = want.entry(*k).or_default();
                e.0 += v;
                e.1 += 1;
            }
            want
        };
        let mut requests = 0;
        for round in 0..2 {
            for (i, n) in nodes.iter().enumerate() {
                for _ in 0..many / 2 {
                    let k = rng.gen_range(0..many);
                    let v = rng.gen_range(1..1000u64);
                    n.fs.setxattr(&root, inos[i], &name(k), v.to_string().as_bytes(), 0)
                        .await
                        .expect("set");
                    values.insert((i, k), v);
                }
            }
            sync_all(&nodes).await;
            // Trees are finalized at the next transaction: open them.
            sync_all(&nodes).await;
            let want = check(&values);
            loop {
                // The mounts read in turn (the roots are the same for all).
                let i = requests % nodes.len();
                {
                    let n = &nodes[i];
                    let got =
                        n.fs.read_xattr_totals([0, 0, 0], 10_000)
                            .await
                            .expect("totals");
                    let got: BTreeMap<u64, (u64, u64)> = got
                        .iter()
                        .map(|t| (t.name[1], (t.total, t.count)))
                        .collect();
                    assert_eq!(
                        got, want,
                        "round {round} after {requests} requests, mount {i}"
                    );
                }
                if !merge_one_request(&server, &meta, &rt).await {
                    break;
                }
                requests += 1;
            }
            while server.background().await.expect("background") {}
        }
        eprintln!("{requests} merge requests");
        assert!(requests > 4, "merges were not partial: {requests} requests");
    });
}

#[test]
fn index_entries_follow_creates_and_removes_on_every_mount() {
    let sim = Sim::new(11);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (server, nodes) = cluster(11, rt).await;
        let root = root_ctx();
        let mut want = Vec::new();
        let mut removed = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let a = n.fs.tmpfile(&root, ROOT_INO, 0o644).await.expect("tmpfile");
            // Other xattrs first, so the tagged one's xid is not 0.
            n.fs.setxattr(&root, a.ino, b"user.x", b"1", 0)
                .await
                .expect("user");
            for minor in 0..4u64 {
                let name = format!("scoutfs.indx.n.{}.{minor}", 3 + i);
                n.fs.setxattr(&root, a.ino, name.as_bytes(), b"", 0)
                    .await
                    .expect("indx");
                if minor % 2 == 0 {
                    removed.push((i, a.ino, name));
                } else {
                    want.push(((3 + i) as u8, minor, a.ino));
                }
            }
            // A non-empty value is refused.
            assert_eq!(
                n.fs.setxattr(&root, a.ino, b"scoutfs.indx.n.3.9", b"x", 0)
                    .await,
                Err(libc::EINVAL)
            );
        }
        sync_all(&nodes).await;
        merge_all(&server, &nodes).await;
        for (i, ino, name) in &removed {
            nodes[*i]
                .fs
                .removexattr(&root, *ino, name.as_bytes())
                .await
                .expect("rm");
        }
        sync_all(&nodes).await;
        want.sort();
        for n in &nodes {
            let got =
                n.fs.read_xattr_index((0, 0, 0), (u8::MAX, u64::MAX, u64::MAX), 1000)
                    .await
                    .expect("index");
            assert_eq!(got, want);
            let part =
                n.fs.read_xattr_index((4, 0, 0), (4, u64::MAX, u64::MAX), 1000)
                    .await
                    .expect("index");
            assert_eq!(
                part,
                want.iter()
                    .copied()
                    .filter(|e| e.0 == 4)
                    .collect::<Vec<_>>()
            );
        }
    });
}

fn data_rule(limit: u64) -> QuotaRule {
    // `10 7,L,- 0,U,- 0,L,- D limit -`
    QuotaRule {
        name_val: [7u64.into(), 0u64.into(), 0u64.into()],
        limit: limit.into(),
        prio: 10,
        op: QUOTA_OP_DATA,
        rule_flags: 0,
        name_source: [0, 2, 0],
        name_flags: [0; 3],
        pad: [0; 7],
    }
}

#[test]
fn quota_rules_on_one_mount_hold_on_all() {
    let sim = Sim::new(21);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (_server, nodes) = cluster(21, rt).await;
        let root = root_ctx();
        let (a, b, c) = (&nodes[0].fs, &nodes[1].fs, &nodes[2].fs);
        // Mount B: a file of uid 1000 it writes to.
        let f = b
            .tmpfile(&user(1000), ROOT_INO, 0o644)
            .await
            .expect("tmpfile");
        b.write(f.ino, 0, &[1u8; 4096])
            .await
            .expect("write before rules");
        // Mount C: where userspace keeps uid 1000's total.
        let t = c.tmpfile(&root, ROOT_INO, 0o644).await.expect("tmpfile");
        let total_name = b"scoutfs.totl.usage.7.1000.0";
        c.setxattr(&root, t.ino, total_name, b"999", 0)
            .await
            .expect("total");
        // Mount A: the rule.
        let rule = data_rule(1000);
        a.quota_add(&rule).await.expect("add");
        assert_eq!(a.quota_add(&rule).await, Err(libc::EEXIST));
        sync_all(&nodes).await;
        assert_eq!(b.quota_rules().await.expect("rules"), vec![rule]);

        // Under the limit: allocating writes go on.
        b.write(f.ino, 4096, &[2u8; 4096])
            .await
            .expect("write under limit");
        c.setxattr(&root, t.ino, total_name, b"1000", 0)
            .await
            .expect("total");
        sync_all(&nodes).await;
        assert_eq!(b.write(f.ino, 8192, &[3u8; 4096]).await, Err(libc::EDQUOT));
        // Overwriting allocated blocks allocates nothing.
        b.write(f.ino, 0, &[4u8; 4096]).await.expect("overwrite");
        // Another uid is not governed by uid 1000's total.
        let g = b
            .tmpfile(&user(1001), ROOT_INO, 0o644)
            .await
            .expect("tmpfile");
        b.write(g.ino, 0, &[5u8; 4096]).await.expect("other uid");

        // The total drops: writes resume.
        c.setxattr(&root, t.ino, total_name, b"10", 0)
            .await
            .expect("total");
        sync_all(&nodes).await;
        b.write(f.ino, 8192, &[3u8; 4096])
            .await
            .expect("write after drop");

        // An inode-count rule for uid 1000: count of `7.1000.0` ≥ 1.
        let mut inode_rule = data_rule(1);
        inode_rule.op = QUOTA_OP_INODE;
        inode_rule.rule_flags = QUOTA_RULE_FLAG_TOTL_COUNT;
        c.quota_add(&inode_rule).await.expect("add inode rule");
        sync_all(&nodes).await;
        assert_eq!(
            b.create(&user(1000), ROOT_INO, b"new", 0o644).await.err(),
            Some(libc::EDQUOT)
        );
        // O_TMPFILE makes an inode too: the same rule stops it.
        assert_eq!(
            b.tmpfile(&user(1000), ROOT_INO, 0o644).await.err(),
            Some(libc::EDQUOT)
        );
        assert!(b.quota_rules().await.expect("rules").len() == 2);
        assert_eq!(b.quota_del(&data_rule(5)).await, Err(libc::ENOENT));
        b.quota_del(&inode_rule).await.expect("del");
        sync_all(&nodes).await;
        b.create(&user(1000), ROOT_INO, b"new", 0o644)
            .await
            .expect("create after del");
        assert_eq!(a.quota_wipe().await.expect("wipe"), 1);
        sync_all(&nodes).await;
        assert!(c.quota_rules().await.expect("rules").is_empty());
        c.setxattr(&root, t.ino, total_name, b"5000", 0)
            .await
            .expect("total");
        sync_all(&nodes).await;
        b.write(f.ino, 16384, &[3u8; 4096])
            .await
            .expect("no rules left");
    });
}
