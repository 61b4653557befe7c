//! Many creates spread over three mounts (issue 6 acceptance: 1,000,000
//! with `SCOUTFS_CLUSTER_CREATES=1000000`, which `scripts/test.sh --long`
//! sets; a few thousand by default): every mount lists every file, log
//! merges keep up (the finalized log trees left after unmounting are a
//! handful, the rest merged into the fs root), and check is clean.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::block::BlockCache;
use engine::btree::Btree;
use engine::format::key::{zone, Key};
use engine::format::superblock::SuperBlock;
use engine::runtime::{Executor, ThreadPark};
use support::*;

const MOUNTS: usize = 3;
const THREADS_PER_MOUNT: usize = 2;

fn creates() -> usize {
    std::env::var("SCOUTFS_CLUSTER_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000)
}

/// Items of `zone` in `root` and the log trees in `logs_root`, read from
/// the unmounted volume.
fn tree_items(meta: &std::path::Path) -> (u64, u64) {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    let dev: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::open(meta, &OpenOptions::new().read_only(true)).expect("meta"));
    ex.block_on(async move {
        let sb: SuperBlock = engine::server::read_super(&dev, true).await.expect("super");
        let r = rt.clone();
        let cache = Arc::new(BlockCache::new(
            dev,
            sb.hdr.fsid.get(),
            1024,
            Arc::new(move || r.random_u64()),
        ));
        let bt = Btree::new(cache);
        let count = |root, z: u8| {
            let bt = &bt;
            async move {
                let mut n = 0u64;
                let mut start = Key::new(z, 0, 0, 0, 0, 0);
                let end = Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
                loop {
                    let b = bt.range(&root, &start, &end, 4096).await.expect("range");
                    n += b.items.len() as u64;
                    match b.next {
                        Some(k) => start = k,
                        None => return n,
                    }
                }
            }
        };
        let inodes = count(sb.fs_root, zone::FS).await;
        let logs = count(sb.logs_root, zone::LOG_TREES).await;
        (inodes, logs)
    })
}

#[test]
fn creates_over_three_mounts_are_merged_and_seen_everywhere() {
    if skip_without_fuse("creates_over_three_mounts_are_merged_and_seen_everywhere") {
        return;
    }
    let total = creates();
    let meta_bytes = if total > 100_000 { 16 << 30 } else { 2 << 30 };
    let v = Volume::new_with_slots(&fast_dir(), meta_bytes, 16 << 30, 1);
    let mnts: Vec<PathBuf> = (0..MOUNTS)
        .map(|i| {
            let m = v.dir.path().join(format!("m{i}"));
            fs::create_dir(&m).expect("mount point");
            m
        })
        .collect();
    let mut daemons = vec![Daemon::start_on(&v, &mnts[0], Some("quorum_slot_nr=0"))];
    for m in &mnts[1..] {
        daemons.push(Daemon::start_on(&v, m, None));
    }
    let watchers = MOUNTS * THREADS_PER_MOUNT;
    let per = total.div_ceil(watchers);
    let dirs: Vec<String> = (0..watchers).map(|w| format!("d{w}")).collect();
    // Each directory made by the mount that fills it: its inode then
    // lies in that mount's inode batch, so its group lock stays there
    // (made on one mount, every create elsewhere would pull the group's
    // WRITE lock across).
    for (w, d) in dirs.iter().enumerate() {
        fs::create_dir(mnts[w % MOUNTS].join(d)).expect("mkdir");
    }
    std::thread::scope(|s| {
        for (w, d) in dirs.iter().enumerate() {
            let dir = mnts[w % MOUNTS].join(d);
            s.spawn(move || {
                for i in 0..per {
                    fs::File::create(dir.join(format!("f{i}")))
                        .unwrap_or_else(|e| panic!("{}/f{i}: {e}", dir.display()));
                }
            });
        }
    });
    for (i, m) in mnts.iter().enumerate() {
        for d in &dirs {
            let n = fs::read_dir(m.join(d)).expect("readdir").count();
            assert_eq!(n, per, "mount {i} lists {n} of {per} files in {d}");
        }
    }
    for d in daemons.into_iter().rev() {
        d.unmount();
    }
    let faults = v.check();
    if !faults.is_empty() {
        // Keep the images for whoever debugs it (tmpfs: remove them after).
        let kept = v.dir.keep();
        panic!(
            "check found faults (images kept in {}): {faults:#?}",
            kept.display()
        );
    }
    let (fs_items, log_trees) = tree_items(&v.meta);
    eprintln!(
        "{} creates: {fs_items} items merged into the fs root, {log_trees} log trees left",
        per * watchers
    );
    // Each mount leaves its last tree (finalized at its farewell) and at
    // most one more finalized while the merge of the one before ran;
    // merges falling behind would leave a trail of finalized trees.
    assert!(
        log_trees <= (2 * MOUNTS) as u64,
        "{log_trees} log trees left unmerged"
    );
}
