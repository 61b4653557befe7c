//! The archive operations of reference §9 over in-memory items and the
//! `fault` device: release, stage, punch-offline and move-blocks extent
//! logic with their edge cases (splits, holes, already-offline ranges,
//! past-EOF truncation once nothing is online, partial last blocks), the
//! data_version rules (ESTALE; stage and release never bump it), waiting
//! for offline data (reads wait for their range, writes and size changes
//! for the whole file; stage wakes them; DATA_WAIT_ERR and interrupts fail
//! them; nothing leaks), SET_ATTR_X stubs and projects, and retention
//! refusing every change but the allowed ones.

mod fs_support;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use engine::format::items::{EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN, ROOT_INO};
use engine::fs::{
    Extent, Fs, SetAttr, SetAttrX, Time, DATA_WAIT_CHANGE_SIZE, DATA_WAIT_READ, DATA_WAIT_WRITE,
    FALLOC_FL_KEEP_SIZE, MOVE_BLOCKS_STAGE,
};
use fs_support::{root, run, user, Vol};

const B: u64 = 4096;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

fn offline(start: u64, len: u64) -> Extent {
    Extent {
        start,
        len,
        blkno: 0,
        flags: EXTENT_FLAG_OFFLINE,
    }
}

/// Yields once to the executor (lets the other joined future run).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Yields until `fs` has `n` registered data waiters (bounded).
async fn until_waiters(fs: &Fs, n: usize) {
    for _ in 0..10_000 {
        if fs.data_waiter_count() == n {
            return;
        }
        YieldNow(false).await;
    }
    panic!("never saw {n} data waiters");
}

/// A file of `len` pattern bytes; returns (ino, data).
async fn file_with(v: &Vol, name: &[u8], seed: u8, len: usize) -> (u64, Vec<u8>) {
    let f = v.fs.create(&user(), ROOT_INO, name, 0o644).await.unwrap();
    let data = pattern(seed, len);
    v.fs.write(f.ino, 0, &data).await.unwrap();
    (f.ino, data)
}

#[test]
fn release_then_stage_restores_content_without_touching_data_version() {
    let v = Vol::new(2);
    run(async {
        let (ino, data) = file_with(&v, b"f", 1, 5 * 4096 + 100).await;
        let before = v.fs.getattr(ino).await.unwrap();
        assert_eq!(
            v.fs.release_data(ino, 0, 6 * B, before.data_version + 1)
                .await,
            Err(libc::ESTALE)
        );
        v.fs.release_data(ino, 0, 6 * B, before.data_version)
            .await
            .unwrap();
        let a = v.fs.getattr(ino).await.unwrap();
        assert_eq!((a.online_blocks, a.offline_blocks), (0, 6));
        assert_eq!(a.blocks, 48, "st_blocks counts offline blocks");
        assert_eq!(
            (a.data_version, a.mtime, a.ctime, a.size),
            (before.data_version, before.mtime, before.ctime, before.size)
        );
        assert_eq!(a.data_seq, before.data_seq);
        assert_eq!(v.fs.extents(ino).await.unwrap(), vec![offline(0, 6)]);
        assert_eq!(v.trans.freed_blocks(), 6);
        v.check();

        let dv = a.data_version;
        // Validation (§9): aligned offset, end ≤ size, aligned unless at EOF.
        assert_eq!(
            v.fs.stage(ino, dv, 100, &data[..4096]).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.stage(ino, dv, 0, &data[..5000]).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.stage(ino, dv, 0, &vec![0; 6 * 4096]).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.stage(ino, dv + 1, 0, &data[..4096]).await,
            Err(libc::ESTALE)
        );
        assert_eq!(v.fs.stage(ino, dv, 0, &[]).await, Ok(0));
        // Two stages: a middle block, then the rest ending at i_size.
        assert_eq!(v.fs.stage(ino, dv, B, &data[4096..8192]).await, Ok(4096));
        let mid = v.fs.getattr(ino).await.unwrap();
        assert_eq!((mid.online_blocks, mid.offline_blocks), (1, 5));
        v.fs.stage(ino, dv, 0, &data[..4096]).await.unwrap();
        v.fs.stage(ino, dv, 2 * B, &data[8192..]).await.unwrap();
        let a = v.fs.getattr(ino).await.unwrap();
        assert_eq!((a.online_blocks, a.offline_blocks), (6, 0));
        assert_eq!(
            (a.data_version, a.mtime, a.ctime, a.data_seq),
            (
                before.data_version,
                before.mtime,
                before.ctime,
                before.data_seq
            )
        );
        assert_eq!(v.fs.read(ino, 0, 1 << 20).await.unwrap(), data);
        let stats = v.fs.archive_stats().entries();
        assert!(stats.contains(&("release", 1)) && stats.contains(&("release_blocks", 6)));
        assert!(stats.contains(&("stage", 3)));
    });
    v.check();
}

#[test]
fn release_edges_split_skip_holes_and_truncate_past_eof_when_nothing_is_online() {
    let v = Vol::new(2);
    run(async {
        let (ino, data) = file_with(&v, b"f", 2, 8 * 4096).await;
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        // Misaligned and empty ranges.
        assert_eq!(v.fs.release_data(ino, 1, B, dv).await, Err(libc::EINVAL));
        assert_eq!(v.fs.release_data(ino, 0, 100, dv).await, Err(libc::EINVAL));
        assert_eq!(
            v.fs.release_data(ino, u64::MAX - B + 1, 2 * B, dv).await,
            Err(libc::EINVAL)
        );
        assert_eq!(v.fs.release_data(ino, 0, 0, dv).await, Ok(()));
        assert_eq!(
            v.fs.release_data(ROOT_INO, 0, B, 0).await,
            Err(libc::EISDIR)
        );
        // A middle range splits the extent.
        v.fs.release_data(ino, 2 * B, 2 * B, dv).await.unwrap();
        let e = v.fs.extents(ino).await.unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].start, e[0].len, e[0].flags), (0, 2, 0));
        assert_eq!(e[1], offline(2, 2));
        assert_eq!((e[2].start, e[2].len, e[2].flags), (4, 4, 0));
        // Releasing it again, and beyond EOF, changes nothing.
        v.fs.release_data(ino, 2 * B, 2 * B, dv).await.unwrap();
        v.fs.release_data(ino, 100 * B, 4 * B, dv).await.unwrap();
        assert_eq!(v.fs.extents(ino).await.unwrap(), e);
        // A read of the online part works; the rest stays.
        assert_eq!(v.fs.read(ino, 0, 8192).await.unwrap(), &data[..8192]);
        v.check();

        // A sparse file: holes stay holes.
        let s =
            v.fs.create(&user(), ROOT_INO, b"sparse", 0o644)
                .await
                .unwrap();
        v.fs.write(s.ino, 3 * B, &pattern(3, 4096)).await.unwrap();
        let sdv = v.fs.getattr(s.ino).await.unwrap().data_version;
        v.fs.release_data(s.ino, 0, 4 * B, sdv).await.unwrap();
        assert_eq!(v.fs.extents(s.ino).await.unwrap(), vec![offline(3, 1)]);

        // Unwritten blocks past EOF (fallocate KEEP_SIZE) stay while data
        // is online and go once nothing is.
        let p =
            v.fs.create(&user(), ROOT_INO, b"prealloc", 0o644)
                .await
                .unwrap();
        v.fs.write(p.ino, 0, &pattern(4, 2 * 4096)).await.unwrap();
        v.fs.fallocate(p.ino, FALLOC_FL_KEEP_SIZE, 2 * B, 2 * B)
            .await
            .unwrap();
        let pdv = v.fs.getattr(p.ino).await.unwrap().data_version;
        v.fs.release_data(p.ino, 0, B, pdv).await.unwrap();
        let a = v.fs.getattr(p.ino).await.unwrap();
        assert_eq!((a.online_blocks, a.offline_blocks), (3, 1));
        v.fs.release_data(p.ino, B, B, pdv).await.unwrap();
        let a = v.fs.getattr(p.ino).await.unwrap();
        assert_eq!((a.online_blocks, a.offline_blocks), (2, 2));
        assert!(v
            .fs
            .extents(p.ino)
            .await
            .unwrap()
            .iter()
            .any(|e| e.flags == EXTENT_FLAG_UNWRITTEN));
        // Releasing the unwritten range too leaves nothing online: the
        // offline blocks past EOF are truncated.
        v.fs.release_data(p.ino, 2 * B, 2 * B, pdv).await.unwrap();
        let a = v.fs.getattr(p.ino).await.unwrap();
        assert_eq!((a.online_blocks, a.offline_blocks, a.size), (0, 2, 2 * B));
        assert_eq!(v.fs.extents(p.ino).await.unwrap(), vec![offline(0, 2)]);
    });
    v.check();
}

#[test]
fn reads_wait_for_their_range_and_stage_wakes_them() {
    let v = Vol::new(2);
    run(async {
        let (ino, data) = file_with(&v, b"f", 5, 4 * 4096).await;
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        v.fs.release_data(ino, 2 * B, 2 * B, dv).await.unwrap();
        // The online range reads without waiting.
        assert_eq!(v.fs.read(ino, 0, 8192).await.unwrap(), &data[..8192]);
        assert_eq!(v.fs.data_waiter_count(), 0);
        let reader = async { v.fs.read_as(ino, 4096, 3 * 4096, 11).await };
        let stager = async {
            until_waiters(&v.fs, 1).await;
            assert_eq!(
                v.fs.data_waiting(0, 0, 10),
                vec![engine::fs::DataWaiting {
                    ino,
                    iblock: 2,
                    ops: DATA_WAIT_READ
                }]
            );
            // Staging only one of the two blocks: the reader wakes, finds
            // block 3 offline and waits again.
            v.fs.stage(ino, dv, 2 * B, &data[2 * 4096..3 * 4096])
                .await
                .unwrap();
            for _ in 0..100 {
                YieldNow(false).await;
            }
            assert_eq!(v.fs.data_waiting(0, 0, 10)[0].iblock, 3);
            v.fs.stage(ino, dv, 3 * B, &data[3 * 4096..]).await.unwrap();
        };
        let (got, ()) = futures::join!(reader, stager);
        assert_eq!(got.unwrap(), &data[4096..]);
        assert_eq!(v.fs.data_waiter_count(), 0);
        assert_eq!(v.fs.getattr(ino).await.unwrap().data_version, dv);
    });
    v.check();
}

#[test]
fn writes_and_size_changes_wait_for_the_whole_file() {
    let v = Vol::new(2);
    run(async {
        let (ino, data) = file_with(&v, b"f", 6, 4 * 4096).await;
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        v.fs.release_data(ino, 3 * B, B, dv).await.unwrap();
        // A write to block 0 waits for block 3 (data_version is per file),
        // a size change too; both wake on stage and then proceed.
        let writer = async { v.fs.write_as(ino, 0, b"new", Default::default(), 1).await };
        let sizer = async {
            let set = SetAttr {
                size: Some(5 * B),
                ..Default::default()
            };
            v.fs.setattr_as(ino, &set, 2).await
        };
        let stager = async {
            until_waiters(&v.fs, 2).await;
            let w = v.fs.data_waiting(0, 0, 10);
            assert_eq!(
                w,
                vec![engine::fs::DataWaiting {
                    ino,
                    iblock: 3,
                    ops: DATA_WAIT_WRITE | DATA_WAIT_CHANGE_SIZE
                }]
            );
            v.fs.stage(ino, dv, 3 * B, &data[3 * 4096..]).await.unwrap();
        };
        let (w, s, ()) = futures::join!(writer, sizer, stager);
        assert_eq!(w.unwrap().1, 3);
        assert_eq!(s.unwrap().size, 5 * B);
        let mut want = data.clone();
        want[..3].copy_from_slice(b"new");
        want.resize(5 * 4096, 0);
        assert_eq!(v.fs.read(ino, 0, 1 << 20).await.unwrap(), want);
        // Truncating to 0 does not wait: it drops offline extents too, and
        // a reader waiting for them finds EOF.
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        v.fs.release_data(ino, 0, 5 * B, dv).await.unwrap();
        let reader = async { v.fs.read_as(ino, 0, 100, 9).await };
        let truncater = async {
            until_waiters(&v.fs, 1).await;
            let zero = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            v.fs.setattr(ino, &zero).await.unwrap()
        };
        let (r, a) = futures::join!(reader, truncater);
        assert_eq!(r.unwrap(), Vec::<u8>::new());
        assert_eq!((a.size, a.online_blocks, a.offline_blocks), (0, 0, 0));
        assert_eq!(v.fs.extents(ino).await.unwrap(), vec![]);
    });
    v.check();
}

#[test]
fn waiters_fail_on_data_wait_err_and_interrupt_and_never_leak() {
    let v = Vol::new(2);
    run(async {
        let (ino, _) = file_with(&v, b"f", 7, 3 * 4096).await;
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        v.fs.release_data(ino, 0, 3 * B, dv).await.unwrap();
        // Argument checks.
        assert_eq!(
            v.fs.data_wait_err(ino, dv, 0, 0, DATA_WAIT_READ, libc::EIO)
                .await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.data_wait_err(ino, dv, 0, B, 8, libc::EIO).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.data_wait_err(ino, dv, 0, B, DATA_WAIT_READ, 0).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.data_wait_err(ino, dv, 0, B, DATA_WAIT_READ, 5000)
                .await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.data_wait_err(ino, dv + 1, 0, B, DATA_WAIT_READ, libc::EIO)
                .await,
            Err(libc::ESTALE)
        );
        assert_eq!(
            v.fs.data_wait_err(999_999, 0, 0, B, DATA_WAIT_READ, libc::EIO)
                .await,
            Err(libc::ESTALE)
        );

        // Two readers of different blocks, one writer: the error reaches
        // only the matching range and op.
        let r0 = async { v.fs.read_as(ino, 0, 10, 1).await };
        let r2 = async { v.fs.read_as(ino, 2 * B, 10, 2).await };
        let w = async { v.fs.write_as(ino, 0, b"x", Default::default(), 3).await };
        let admin = async {
            until_waiters(&v.fs, 3).await;
            // Block 0 has a read and a write waiter: one row, ops merged.
            let rows = v.fs.data_waiting(0, 0, 10);
            assert_eq!(rows.len(), 2);
            assert_eq!(
                (rows[0].iblock, rows[0].ops),
                (0, DATA_WAIT_READ | DATA_WAIT_WRITE)
            );
            assert_eq!((rows[1].iblock, rows[1].ops), (2, DATA_WAIT_READ));
            // Listing resumes after a position.
            assert_eq!(v.fs.data_waiting(ino, 1, 10).len(), 1);
            let n =
                v.fs.data_wait_err(ino, dv, 0, B, DATA_WAIT_READ, libc::EIO)
                    .await
                    .unwrap();
            assert_eq!(n, 1);
            until_waiters(&v.fs, 2).await;
            // The interrupted request fails with EINTR.
            v.fs.interrupt_data_waiter(2);
            until_waiters(&v.fs, 1).await;
            let n =
                v.fs.data_wait_err(ino, dv, 0, 3 * B, DATA_WAIT_WRITE, libc::ENOSPC)
                    .await
                    .unwrap();
            assert_eq!(n, 1);
        };
        let (a, b, c, ()) = futures::join!(r0, r2, w, admin);
        assert_eq!(a, Err(libc::EIO));
        assert_eq!(b, Err(libc::EINTR));
        assert_eq!(c, Err(libc::ENOSPC));
        assert_eq!(v.fs.data_waiter_count(), 0);
        // An interrupt that arrives before its request waits fails it when
        // it registers.
        v.fs.interrupt_data_waiter(77);
        assert_eq!(v.fs.read_as(ino, 0, 10, 77).await, Err(libc::EINTR));
        assert_eq!(v.fs.data_waiter_count(), 0);
        let stats = v.fs.archive_stats().entries();
        assert!(stats.contains(&("data_wait_err", 2)), "{stats:?}");
        assert!(stats.contains(&("data_wait_interrupted", 1)), "{stats:?}");
    });
}

#[test]
fn punch_offline_makes_offline_sparse_and_refuses_mapped_blocks() {
    let v = Vol::new(2);
    run(async {
        let (ino, _) = file_with(&v, b"f", 8, 6 * 4096).await;
        let dv = v.fs.getattr(ino).await.unwrap().data_version;
        v.fs.release_data(ino, 0, 4 * B, dv).await.unwrap();
        assert_eq!(v.fs.punch_offline(ino, 1, B, dv).await, Err(libc::EINVAL));
        assert_eq!(v.fs.punch_offline(ino, 0, 10, dv).await, Err(libc::EINVAL));
        assert_eq!(
            v.fs.punch_offline(ino, u64::MAX - B + 1, 2 * B, dv).await,
            Err(libc::EOVERFLOW)
        );
        assert_eq!(
            v.fs.punch_offline(ino, 0, B, dv + 1).await,
            Err(libc::ESTALE)
        );
        assert_eq!(
            v.fs.punch_offline(ROOT_INO, 0, B, 0).await,
            Err(libc::EISDIR)
        );
        // Meeting mapped blocks: EINVAL and nothing changed.
        let before = v.fs.extents(ino).await.unwrap();
        assert_eq!(
            v.fs.punch_offline(ino, 2 * B, 3 * B, dv).await,
            Err(libc::EINVAL)
        );
        assert_eq!(v.fs.extents(ino).await.unwrap(), before);
        v.fs.punch_offline(ino, B, 2 * B, dv).await.unwrap();
        let e = v.fs.extents(ino).await.unwrap();
        assert_eq!(e[0], offline(0, 1));
        assert_eq!(e[1], offline(3, 1));
        let a = v.fs.getattr(ino).await.unwrap();
        assert_eq!(
            (a.online_blocks, a.offline_blocks, a.data_version),
            (2, 2, dv)
        );
        // Punched blocks read as zeros without waiting.
        assert_eq!(v.fs.read(ino, B, 4096).await.unwrap(), vec![0; 4096]);
    });
    v.check();
}

#[test]
fn move_blocks_moves_extents_and_follows_the_error_rules() {
    let v = Vol::new(2);
    run(async {
        let (from, data) = file_with(&v, b"from", 9, 3 * 4096 + 100).await;
        let to =
            v.fs.create(&user(), ROOT_INO, b"to", 0o644)
                .await
                .unwrap()
                .ino;
        let f0 = v.fs.getattr(from).await.unwrap();
        let t0 = v.fs.getattr(to).await.unwrap();
        let len = data.len() as u64;
        assert_eq!(
            v.fs.move_blocks(from, 0, len, from, 0, 0, 0).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.move_blocks(from, 0, len, ROOT_INO, 0, 0, 0).await,
            Err(libc::EISDIR)
        );
        assert_eq!(
            v.fs.move_blocks(from, 0, 100, to, 0, 0, 0).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.move_blocks(from, 1, B, to, 0, 0, 0).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.move_blocks(from, 0, B, to, u64::MAX - 100, 0, 0).await,
            Err(libc::EOVERFLOW)
        );
        assert_eq!(
            v.fs.move_blocks(from, 0, B, to, 0, 0, 4).await,
            Err(libc::EINVAL)
        );
        // The whole file, ending at the source's EOF.
        v.fs.move_blocks(from, 0, len, to, B, 0, 0).await.unwrap();
        let f = v.fs.getattr(from).await.unwrap();
        let t = v.fs.getattr(to).await.unwrap();
        assert_eq!((f.online_blocks, t.online_blocks, t.size), (0, 4, B + len));
        assert_eq!(
            (f.data_version, t.data_version),
            (f0.data_version + 1, t0.data_version + 1)
        );
        assert_eq!(v.fs.extents(from).await.unwrap(), vec![]);
        let got = v.fs.read(to, B, 1 << 20).await.unwrap();
        assert_eq!(got, data);
        // The destination range is no longer empty.
        let (from2, _) = file_with(&v, b"from2", 10, 4096).await;
        assert_eq!(
            v.fs.move_blocks(from2, 0, B, to, 2 * B, 0, 0).await,
            Err(libc::EINVAL)
        );
        // Offline source blocks: ENODATA.
        let dv2 = v.fs.getattr(from2).await.unwrap().data_version;
        v.fs.release_data(from2, 0, B, dv2).await.unwrap();
        let to2 =
            v.fs.create(&user(), ROOT_INO, b"to2", 0o644)
                .await
                .unwrap()
                .ino;
        assert_eq!(
            v.fs.move_blocks(from2, 0, B, to2, 0, 0, 0).await,
            Err(libc::ENODATA)
        );
    });
    v.check();
}

#[test]
fn move_blocks_stage_fills_offline_blocks_and_keeps_the_destination_version() {
    let v = Vol::new(2);
    run(async {
        let (dst, data) = file_with(&v, b"dst", 11, 4 * 4096).await;
        let dv = v.fs.getattr(dst).await.unwrap().data_version;
        v.fs.release_data(dst, 0, 4 * B, dv).await.unwrap();
        // A staging file holding blocks 1..3 of the content.
        let (src, _) = file_with(&v, b"src", 0, 0).await;
        v.fs.write(src, 0, &data[4096..3 * 4096]).await.unwrap();
        assert_eq!(
            v.fs.move_blocks(src, 0, 2 * B, dst, B, dv + 1, MOVE_BLOCKS_STAGE)
                .await,
            Err(libc::ESTALE)
        );
        // Without STAGE the offline destination is not empty.
        assert_eq!(
            v.fs.move_blocks(src, 0, 2 * B, dst, B, dv, 0).await,
            Err(libc::EINVAL)
        );
        let waiter = async { v.fs.read_as(dst, B, 2 * 4096, 5).await };
        let mover = async {
            until_waiters(&v.fs, 1).await;
            v.fs.move_blocks(src, 0, 2 * B, dst, B, dv, MOVE_BLOCKS_STAGE)
                .await
        };
        let (r, m) = futures::join!(waiter, mover);
        m.unwrap();
        assert_eq!(r.unwrap(), &data[4096..3 * 4096]);
        let a = v.fs.getattr(dst).await.unwrap();
        assert_eq!(
            (a.online_blocks, a.offline_blocks, a.data_version, a.size),
            (2, 2, dv, 4 * B)
        );
        // Mapped destination blocks now: a second STAGE move is refused.
        let (src2, _) = file_with(&v, b"src2", 12, 4096).await;
        assert_eq!(
            v.fs.move_blocks(src2, 0, B, dst, B, dv, MOVE_BLOCKS_STAGE)
                .await,
            Err(libc::EINVAL)
        );
    });
    v.check();
}

#[test]
fn set_attr_x_restores_stubs_and_sets_projects() {
    let v = Vol::new(2);
    run(async {
        let f =
            v.fs.create(&user(), ROOT_INO, b"stub", 0o644)
                .await
                .unwrap()
                .ino;
        let stub = SetAttrX {
            data_version: Some(5),
            size: Some(10_000),
            size_offline: true,
            ctime: Some(Time { sec: 100, nsec: 1 }),
            crtime: Some(Time { sec: 50, nsec: 2 }),
            ..Default::default()
        };
        assert_eq!(v.fs.set_attr_x(&user(), f, &stub).await, Err(libc::EPERM));
        for bad in [
            SetAttrX {
                data_version: Some(0),
                ..Default::default()
            },
            SetAttrX {
                size: Some(1),
                ..Default::default()
            },
            SetAttrX {
                data_version: Some(1),
                size_offline: true,
                ..Default::default()
            },
        ] {
            assert_eq!(v.fs.set_attr_x(&root(), f, &bad).await, Err(libc::EINVAL));
        }
        let a = v.fs.set_attr_x(&root(), f, &stub).await.unwrap();
        assert_eq!(
            (a.data_version, a.size, a.offline_blocks, a.online_blocks),
            (5, 10_000, 3, 0)
        );
        assert_eq!(
            (a.ctime, a.crtime),
            (Time { sec: 100, nsec: 1 }, Time { sec: 50, nsec: 2 })
        );
        assert_eq!(v.fs.extents(f).await.unwrap(), vec![offline(0, 3)]);
        // Only once: data_version is no longer 0.
        assert_eq!(
            v.fs.set_attr_x(
                &root(),
                f,
                &SetAttrX {
                    data_version: Some(6),
                    ..Default::default()
                }
            )
            .await,
            Err(libc::EINVAL)
        );
        // A file with data cannot become a stub.
        let (g, _) = file_with(&v, b"data", 1, 10).await;
        let a = v.fs.getattr(g).await.unwrap();
        assert_ne!(a.data_version, 0, "writes bump data_version");
        // Projects: set on a directory, inherited by what is created in it.
        let d =
            v.fs.mkdir(&user(), ROOT_INO, b"proj", 0o755)
                .await
                .unwrap()
                .ino;
        let p = SetAttrX {
            project_id: Some(42),
            ..Default::default()
        };
        assert_eq!(v.fs.set_attr_x(&root(), d, &p).await.unwrap().proj, 42);
        let child = v.fs.create(&user(), d, b"c", 0o644).await.unwrap();
        assert_eq!(child.proj, 42);
        let sub = v.fs.mkdir(&user(), d, b"s", 0o755).await.unwrap();
        assert_eq!(sub.proj, 42);
        // Retention only on regular files.
        let r = SetAttrX {
            retention: Some(true),
            ..Default::default()
        };
        assert_eq!(v.fs.set_attr_x(&root(), d, &r).await, Err(libc::EINVAL));
    });
    v.check();
    // v1 volumes have neither projects nor retention.
    let v1 = Vol::new(1);
    run(async {
        let f = v1
            .fs
            .create(&user(), ROOT_INO, b"f", 0o644)
            .await
            .unwrap()
            .ino;
        let r = SetAttrX {
            retention: Some(true),
            ..Default::default()
        };
        assert_eq!(
            v1.fs.set_attr_x(&root(), f, &r).await,
            Err(libc::EOPNOTSUPP)
        );
    });
}

#[test]
fn retention_refuses_every_change_but_clearing_and_non_user_xattrs() {
    let v = Vol::new(2);
    run(async {
        let (f, data) = file_with(&v, b"kept", 13, 2 * 4096).await;
        let (other, _) = file_with(&v, b"other", 14, 4096).await;
        let dv = v.fs.getattr(f).await.unwrap().data_version;
        v.fs.setxattr(&root(), f, b"user.a", b"1", 0).await.unwrap();
        let on = SetAttrX {
            retention: Some(true),
            ..Default::default()
        };
        let a = v.fs.set_attr_x(&root(), f, &on).await.unwrap();
        assert_ne!(a.flags & engine::format::items::INODE_FLAG_RETENTION, 0);
        let eperm = Err(libc::EPERM);
        assert_eq!(v.fs.write(f, 0, b"x").await.map(|_| ()), eperm);
        let trunc = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        assert_eq!(v.fs.setattr(f, &trunc).await.map(|_| ()), eperm);
        let chmod = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        assert_eq!(v.fs.setattr(f, &chmod).await.map(|_| ()), eperm);
        assert_eq!(v.fs.fallocate(f, 0, 0, 3 * B).await, eperm);
        assert_eq!(v.fs.unlink(ROOT_INO, b"kept").await, eperm);
        assert_eq!(
            v.fs.rename(ROOT_INO, b"kept", ROOT_INO, b"moved", 0).await,
            eperm
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"other", ROOT_INO, b"kept", 0).await,
            eperm
        );
        assert_eq!(v.fs.link(f, ROOT_INO, b"second").await.map(|_| ()), eperm);
        assert_eq!(v.fs.setxattr(&root(), f, b"user.b", b"2", 0).await, eperm);
        assert_eq!(v.fs.removexattr(&root(), f, b"user.a").await, eperm);
        assert_eq!(v.fs.release_data(f, 0, B, dv).await, eperm);
        assert_eq!(v.fs.punch_offline(f, 0, B, dv).await, eperm);
        assert_eq!(v.fs.move_blocks(f, 0, B, other, 4 * B, 0, 0).await, eperm);
        assert_eq!(v.fs.move_blocks(other, 0, B, f, 4 * B, 0, 0).await, eperm);
        let proj = SetAttrX {
            project_id: Some(1),
            ..Default::default()
        };
        assert_eq!(v.fs.set_attr_x(&root(), f, &proj).await.map(|_| ()), eperm);
        // Allowed: non-user xattrs, reads, and clearing the bit (root only).
        v.fs.setxattr(&root(), f, b"trusted.t", b"1", 0)
            .await
            .unwrap();
        v.fs.setxattr(&root(), f, b"scoutfs.hide.h", b"1", 0)
            .await
            .unwrap();
        v.fs.removexattr(&root(), f, b"trusted.t").await.unwrap();
        assert_eq!(v.fs.read(f, 0, 1 << 20).await.unwrap(), data);
        let off = SetAttrX {
            retention: Some(false),
            ..Default::default()
        };
        assert_eq!(v.fs.set_attr_x(&user(), f, &off).await.map(|_| ()), eperm);
        v.fs.set_attr_x(&root(), f, &off).await.unwrap();
        v.fs.write(f, 0, b"x").await.unwrap();
        v.fs.unlink(ROOT_INO, b"kept").await.unwrap();
        let denied = v.fs.archive_stats().entries();
        assert!(
            denied
                .iter()
                .any(|(n, c)| *n == "retention_denied" && *c == 15),
            "{denied:?}"
        );
    });
    v.check();
}

#[test]
fn data_version_moves_with_every_content_or_size_change_only() {
    let v = Vol::new(2);
    run(async {
        let (ino, data) = file_with(&v, b"f", 15, 3 * 4096).await;
        let dv = || async { v.fs.getattr(ino).await.unwrap().data_version };
        let d0 = dv().await;
        assert_ne!(d0, 0);
        v.fs.write(ino, 10, b"w").await.unwrap();
        let d1 = dv().await;
        assert!(d1 > d0, "write");
        let size = |s| SetAttr {
            size: Some(s),
            ..Default::default()
        };
        v.fs.setattr(ino, &size(2 * B)).await.unwrap();
        let d2 = dv().await;
        assert!(d2 > d1, "truncate");
        v.fs.setattr(ino, &size(5 * B)).await.unwrap();
        let d3 = dv().await;
        assert!(d3 > d2, "extend");
        v.fs.fallocate(ino, 0, 5 * B, 2 * B).await.unwrap();
        let d4 = dv().await;
        assert!(d4 > d3, "fallocate past EOF");
        // Metadata-only changes, release and stage leave it alone.
        let chmod = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        v.fs.setattr(ino, &chmod).await.unwrap();
        v.fs.setxattr(&user(), ino, b"user.x", b"1", 0)
            .await
            .unwrap();
        v.fs.release_data(ino, 0, B, d4).await.unwrap();
        v.fs.stage(ino, d4, 0, &data[..4096]).await.unwrap();
        assert_eq!(dv().await, d4);
    });
    v.check();
}
