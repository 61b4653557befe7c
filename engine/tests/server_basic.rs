//! The server's handlers over an in-process link, on both runtimes: a fresh
//! volume opens and refuses mismatched supers (§1.3); greeting, inode
//! allocation, transactions (GET_LOG_TREES, a mount COWing blocks from its
//! meta_avail, COMMIT_LOG_TREES), GET_ROOTS, GET_LAST_SEQ, STATFS and
//! FAREWELL leave every block accounted for (the offline check is clean
//! after each step); and every handler run twice with the same request gives
//! the same answer and state (trap 20: ade53921 / 7d67489b).

mod server_support;

use std::sync::Arc;

use drivers::FaultDevice;
use engine::format::block::seal_block;
use engine::format::log_trees::{LogTrees, LOG_TREES_FLAG_FINALIZED};
use engine::format::net::{Cmd, NetRoots};
use engine::format::superblock::{SuperBlock, ALLOC_FLAG_LOW};
use engine::format::{MAGIC_SUPER, SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO};
use engine::runtime::{for_each_runtime, Runtime};
use engine::server::alloc::{DataFill, MetaBudget};
use engine::server::{Server, ServerOptions};
use server_support::*;
use zerocopy::{FromBytes, IntoBytes};

const META: u64 = 8 * GIB;
const DATA: u64 = 16 * GIB;

fn rewrite_super(dev: &FaultDevice, edit: impl Fn(&mut SuperBlock)) {
    let mut blk = engine::check::io::read_sm(dev, SUPER_BLKNO).unwrap();
    let (sb, _) = SuperBlock::mut_from_prefix(&mut blk).unwrap();
    edit(sb);
    let fsid = sb.hdr.fsid.get();
    let seq = sb.hdr.seq.get();
    seal_block(&mut blk, MAGIC_SUPER, fsid, SUPER_BLKNO, seq);
    assert_eq!(blk.len(), SM_BLOCK_SIZE);
    engine::check::io::write_bytes(dev, SUPER_BLKNO << SM_BLOCK_SHIFT, &blk).unwrap();
}

async fn try_open(
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
) -> Result<Arc<Server>, i32> {
    Server::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        rt.clone(),
        ServerOptions::default(),
    )
    .await
}

#[test]
fn server_fresh_volume_opens_and_mismatched_supers_are_einval() {
    for_each_runtime(1, |rt| async move {
        let (meta, data) = mkfs(META, DATA, 1);
        assert_clean(&meta, &data, "mkfs");
        let s = try_open(&meta, &data, &rt).await.expect("opens");
        assert_eq!(s.stable_super().hdr.seq.get(), 1);
        assert_eq!(s.core_seq().await, 1);

        // Swapped devices: META flag on the wrong one.
        assert_eq!(try_open(&data, &meta, &rt).await.err(), Some(libc::EINVAL));
        let bad = |edit: fn(&mut SuperBlock)| {
            let (m, d) = (
                meta.crash(0, drivers::CrashMode::LoseUnflushed),
                data.crash(0, drivers::CrashMode::LoseUnflushed),
            );
            rewrite_super(&d, edit);
            (m, d)
        };
        let (m, d) = bad(|sb| sb.uuid[0] ^= 1);
        assert_eq!(
            try_open(&m, &d, &rt).await.err(),
            Some(libc::EINVAL),
            "uuid"
        );
        let (m, d) = bad(|sb| sb.fmt_vers = 1.into());
        assert_eq!(
            try_open(&m, &d, &rt).await.err(),
            Some(libc::EINVAL),
            "versions"
        );
        let (m, d) = bad(|sb| sb.fmt_vers = 3.into());
        assert_eq!(
            try_open(&m, &d, &rt).await.err(),
            Some(libc::EINVAL),
            "version range"
        );
        let (m, d) = bad(|sb| sb.total_data_blocks = (sb.total_data_blocks.get() + 1).into());
        assert_eq!(
            try_open(&m, &d, &rt).await.err(),
            Some(libc::EINVAL),
            "data size"
        );
        // A bad crc on the meta super.
        let m = meta.crash(0, drivers::CrashMode::LoseUnflushed);
        m.flip_bit((SUPER_BLKNO << SM_BLOCK_SHIFT) + 100, 3);
        assert_eq!(
            try_open(&m, &data, &rt).await.err(),
            Some(libc::EINVAL),
            "crc"
        );
    });
}

#[test]
fn server_transactions_keep_every_block_accounted() {
    for_each_runtime(2, |rt| async move {
        let (meta, data) = mkfs(META, DATA, 2);
        let s = open(&meta, &data, &rt).await;
        let mut a = Client::new(&s, &meta, &rt, 0xa);
        let mut b = Client::new(&s, &meta, &rt, 0xb);
        a.greet().await.unwrap();
        b.greet().await.unwrap();
        assert_clean(&meta, &data, "after greetings");

        let lt = a.get_log_trees().await.unwrap();
        assert_eq!(lt.nr.get(), 1);
        assert!(lt.get_trans_seq.get() > lt.commit_trans_seq.get());
        let budget = MetaBudget::for_device(s.stable_super().total_meta_blocks.get());
        assert_eq!(lt.meta_avail.total_nr.get(), budget.client_fill_target);
        let fill = DataFill::for_device(s.stable_super().total_data_blocks.get());
        assert_eq!(lt.data_avail.total_len.get(), fill.target);
        assert_eq!(
            lt.meta_avail.flags.get() & ALLOC_FLAG_LOW,
            0,
            "8 GiB is above the reserve"
        );
        assert_clean(&meta, &data, "after get_log_trees");

        let mut last_hdr_seq = s.stable_super().hdr.seq.get();
        for round in 0..12 {
            a.cycle(40, 10).await.unwrap();
            b.cycle(25, 10).await.unwrap();
            let hs = s.stable_super().hdr.seq.get();
            assert!(hs > last_hdr_seq);
            last_hdr_seq = hs;
            if round % 4 == 3 {
                assert_clean(&meta, &data, &format!("after round {round}"));
            }
        }
        // An open transaction with written but uncommitted blocks is fine too.
        a.get_log_trees().await.unwrap();
        a.build(30, 0).await.unwrap();
        assert_clean(&meta, &data, "with an uncommitted transaction");

        // GET_ROOTS is the stable super's.
        let r = a.call(Cmd::GetRoots, vec![]).await.unwrap();
        let roots = NetRoots::read_from_bytes(&r).unwrap();
        let sb = s.stable_super();
        assert_eq!(roots.fs_root, sb.fs_root);
        assert_eq!(roots.logs_root, sb.logs_root);
        assert_eq!(roots.srch_root, sb.srch_root);

        // GET_LAST_SEQ stays below a's open transaction.
        let open_seq = a.lt.unwrap().get_trans_seq.get();
        let last = a.last_seq().await.unwrap();
        assert_eq!(last, open_seq - 1);
        assert!(last < s.core_seq().await);

        // STATFS: free = total − what is referenced.
        let st = a.statfs().await.unwrap();
        assert_eq!(st.uuid, sb.uuid);
        assert_eq!(st.total_meta_blocks.get(), META >> 16);
        let report = engine::check::check_volume(&meta, Some(&data), &mut |_| {}).unwrap();
        assert!(report.is_clean());
        let used = st.total_meta_blocks.get() - st.free_meta_blocks.get();
        // Used = referenced blocks + the blocks before META_DEV_START.
        assert_eq!(used, report.meta_blocks_referenced + 2, "statfs {st:?}");
        assert_eq!(st.inode_count.get(), 1);

        // Farewell: allocators return, the tree with items stays finalized.
        b.farewell().await.unwrap();
        assert_clean(&meta, &data, "after farewell");
        assert_eq!(b.get_log_trees().await.err(), Some(libc::ENOLINK));
        // b comes back: a new tree at nr 2 beside its finalized one.
        b.greet().await.unwrap();
        let lt = b.get_log_trees().await.unwrap();
        assert_eq!(lt.nr.get(), 2);
        b.cycle(10, 0).await.unwrap();
        assert_clean(&meta, &data, "after b returned");
    });
}

/// Snapshot of what a request may change.
fn state(s: &Server) -> SuperBlock {
    s.stable_super()
}

#[test]
fn every_mount_of_a_small_data_device_gets_data_blocks() {
    for_each_runtime(1, |rt| async move {
        // Three mounts of 8 GiB of data: each gets its share and none is
        // LOW (4 GiB fills would leave the third with nothing).
        let (meta, data) = mkfs(META, 8 * GIB, 5);
        let s = open(&meta, &data, &rt).await;
        for rid in 1..=3u64 {
            let mut c = Client::new(&s, &meta, &rt, rid);
            c.greet().await.unwrap();
            let lt = c.get_log_trees().await.unwrap();
            assert!(
                lt.data_avail.total_len.get() > 0
                    && lt.data_avail.flags.get() & ALLOC_FLAG_LOW == 0,
                "mount {rid}: {} data blocks, flags {:#x}",
                lt.data_avail.total_len.get(),
                lt.data_avail.flags.get()
            );
        }
        assert_clean(&meta, &data, "after three fills");
    });
}

#[test]
fn server_every_handler_replayed_gives_the_same_answer_and_state() {
    for_each_runtime(3, |rt| async move {
        let (meta, data) = mkfs(META, DATA, 3);
        let s = open(&meta, &data, &rt).await;
        let mut a = Client::new(&s, &meta, &rt, 7);

        // GREETING: the second insert hits EEXIST and is accepted.
        let g1 = a.call(Cmd::Greeting, a.greeting(0)).await.unwrap();
        let st1 = state(&s);
        let g2 = a.call(Cmd::Greeting, a.greeting(0)).await.unwrap();
        assert_eq!(g1, g2);
        assert_eq!(st1, state(&s), "a replayed greeting changes nothing");

        // GET_LOG_TREES: the open tree comes back unchanged.
        let l1 = a.call(Cmd::GetLogTrees, vec![]).await.unwrap();
        let st1 = state(&s);
        let l2 = a.call(Cmd::GetLogTrees, vec![]).await.unwrap();
        assert_eq!(l1, l2);
        assert_eq!(st1, state(&s));
        a.lt = Some(LogTrees::read_from_bytes(&l1).unwrap());

        // COMMIT_LOG_TREES: the replay is acknowledged, nothing moves.
        let lt = a.build(50, 0).await.unwrap();
        let c1 = a.call(Cmd::CommitLogTrees, lt.as_bytes().to_vec()).await;
        let st1 = state(&s);
        let c2 = a.call(Cmd::CommitLogTrees, lt.as_bytes().to_vec()).await;
        assert_eq!(c1, Ok(vec![]));
        assert_eq!(c2, Ok(vec![]));
        assert_eq!(st1, state(&s));
        // ... even after the next transaction opened.
        a.lt = None;
        a.get_log_trees().await.unwrap();
        let st1 = state(&s);
        assert_eq!(
            a.call(Cmd::CommitLogTrees, lt.as_bytes().to_vec()).await,
            Ok(vec![])
        );
        assert_eq!(st1, state(&s));
        assert_clean(&meta, &data, "after replayed commits");

        // Read-only handlers.
        for cmd in [Cmd::GetRoots, Cmd::GetLastSeq, Cmd::Statfs] {
            let r1 = a.call(cmd, vec![]).await.unwrap();
            let r2 = a.call(cmd, vec![]).await.unwrap();
            assert_eq!(r1, r2, "{cmd:?}");
            assert_eq!(st1, state(&s), "{cmd:?}");
        }

        // ALLOC_INODES: a replay gets a fresh, disjoint range.
        let i1 = a.alloc_inodes(10240).await.unwrap();
        let i2 = a.alloc_inodes(10240).await.unwrap();
        assert_eq!(i1.nr.get(), 10240);
        assert_eq!(i2.ino.get(), i1.ino.get() + 10240);

        // FAREWELL: the second finds nothing left to reclaim.
        a.build(20, 5).await.unwrap(); // uncommitted work is dropped
        a.call(Cmd::Farewell, vec![]).await.unwrap();
        let st1 = state(&s);
        a.call(Cmd::Farewell, vec![]).await.unwrap();
        assert_eq!(st1, state(&s));
        assert_clean(&meta, &data, "after farewells");
        // The finalized tree stays for merge.
        let lts = log_trees_of(&s, &meta, &rt).await;
        assert_eq!(lts.len(), 1);
        assert_ne!(lts[0].flags.get() & LOG_TREES_FLAG_FINALIZED, 0);
        assert!(lts[0].finalize_seq.get() > 0);
        assert_eq!(lts[0].meta_avail.total_nr.get(), 0, "allocators returned");
    });
}

#[test]
fn server_reopen_continues_from_the_committed_super() {
    for_each_runtime(4, |rt| async move {
        let (meta, data) = mkfs(META, DATA, 4);
        let s = open(&meta, &data, &rt).await;
        let mut a = Client::new(&s, &meta, &rt, 1);
        a.greet().await.unwrap();
        for _ in 0..5 {
            a.cycle(30, 5).await.unwrap();
        }
        a.get_log_trees().await.unwrap();
        let open_lt = a.lt.unwrap();
        let sb = s.stable_super();
        let core = s.core_seq().await;
        drop(a);
        drop(s);
        let s = open(&meta, &data, &rt).await;
        assert_eq!(s.stable_super(), sb);
        assert!(s.core_seq().await >= core);
        // The mount resends GET_LOG_TREES and gets its open tree back.
        let mut a = Client::new(&s, &meta, &rt, 1);
        a.greet().await.unwrap();
        assert_eq!(a.get_log_trees().await.unwrap(), open_lt);
        a.cycle(10, 10).await.unwrap();
        assert_clean(&meta, &data, "after reopen");
    });
}

/// A shut-down server writes nothing more: a newer leader reads the super
/// once this one is reported stopped, and a late write would undo what
/// that leader acknowledged. Requests fail, not a byte of the metadata
/// device changes, and the volume stays clean.
#[test]
fn a_shut_down_server_writes_nothing() {
    for_each_runtime(1, |rt| async move {
        let (meta, data) = mkfs(META, 8 * GIB, 6);
        let s = open(&meta, &data, &rt).await;
        let mut c = Client::new(&s, &meta, &rt, 1);
        c.greet().await.unwrap();
        let before = state(&s);
        let written = meta.written_digest();
        s.shut_down().await;
        assert!(c.get_log_trees().await.is_err(), "handled after shut down");
        assert!(
            s.handle(1, Cmd::AllocInodes, &10u64.to_le_bytes())
                .await
                .is_err(),
            "inode numbers handed out after shut down"
        );
        assert_eq!(state(&s).as_bytes(), before.as_bytes());
        assert_eq!(
            meta.written_digest(),
            written,
            "the metadata device was written after the shut down"
        );
        assert_clean(&meta, &data, "after the shut down");
    });
}
