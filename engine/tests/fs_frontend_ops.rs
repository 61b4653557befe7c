//! `engine::fs` operations the FUSE frontend needs beyond plain POSIX
//! calls: O_APPEND writes that land at the true end of file whatever
//! offset the kernel sent, the write-time clearing of set-user-ID and
//! set-group-ID bits, fallocate (mode 0 and KEEP_SIZE, unwritten extents
//! that read as zeros) and lookup references ([`Fs::grab`]) that keep an
//! unlinked inode until the kernel forgets it.

mod fs_support;

use engine::format::items::{EXTENT_FLAG_UNWRITTEN, ROOT_INO};
use engine::fs::{WriteFlags, FALLOC_FL_KEEP_SIZE};
use fs_support::{run, user, Vol};

#[test]
fn append_writes_land_at_the_true_end_of_file() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"log", 0o644).await.unwrap();
        v.fs.write(f.ino, 0, b"0123456789").await.unwrap();
        let append = WriteFlags {
            append: true,
            ..Default::default()
        };
        // The kernel's offset (0 here) is stale: the data goes at 10.
        let (at, n) = v.fs.write_with(f.ino, 0, b"abc", append).await.unwrap();
        assert_eq!((at, n), (10, 3));
        let (at, _) = v.fs.write_with(f.ino, 5, b"de", append).await.unwrap();
        assert_eq!(at, 13);
        assert_eq!(
            v.fs.read(f.ino, 0, 100).await.unwrap(),
            b"0123456789abcde".to_vec()
        );
    });
    v.check();
}

#[test]
fn writes_without_fsetid_clear_setuid_and_group_exec_setgid() {
    let v = Vol::new(2);
    run(async {
        let kill = WriteFlags {
            kill_suidgid: true,
            ..Default::default()
        };
        let a = v.fs.create(&user(), ROOT_INO, b"a", 0o6755).await.unwrap();
        v.fs.write_with(a.ino, 0, b"x", kill).await.unwrap();
        assert_eq!(v.fs.getattr(a.ino).await.unwrap().mode & 0o7777, 0o755);
        // Set-group-ID without group execute means mandatory locking: kept.
        let b = v.fs.create(&user(), ROOT_INO, b"b", 0o6745).await.unwrap();
        v.fs.write_with(b.ino, 0, b"x", kill).await.unwrap();
        assert_eq!(v.fs.getattr(b.ino).await.unwrap().mode & 0o7777, 0o2745);
        // A privileged writer keeps both.
        let c = v.fs.create(&user(), ROOT_INO, b"c", 0o6755).await.unwrap();
        v.fs.write(c.ino, 0, b"x").await.unwrap();
        assert_eq!(v.fs.getattr(c.ino).await.unwrap().mode & 0o7777, 0o6755);
    });
    v.check();
}

#[test]
fn fallocate_maps_unwritten_extents_that_read_as_zeros() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.write(f.ino, 4096, b"hello").await.unwrap();
        let before = v.fs.getattr(f.ino).await.unwrap();
        // Mode 0 over a hole, the written block and past EOF.
        v.fs.fallocate(f.ino, 0, 0, 5 * 4096).await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.size, a.online_blocks), (5 * 4096, 5));
        assert!(a.ctime > before.ctime);
        let ext = v.fs.extents(f.ino).await.unwrap();
        let unwritten: u64 = ext
            .iter()
            .filter(|e| e.flags & EXTENT_FLAG_UNWRITTEN != 0)
            .map(|e| e.len)
            .sum();
        assert_eq!(unwritten, 4);
        let data = v.fs.read(f.ino, 0, 5 * 4096).await.unwrap();
        let mut want = vec![0u8; 5 * 4096];
        want[4096..4101].copy_from_slice(b"hello");
        assert_eq!(data, want);
        // Writing into an unwritten block keeps the rest of it zero.
        v.fs.write(f.ino, 3 * 4096 + 10, b"zz").await.unwrap();
        want[3 * 4096 + 10..3 * 4096 + 12].copy_from_slice(b"zz");
        assert_eq!(v.fs.read(f.ino, 0, 5 * 4096).await.unwrap(), want);
        // KEEP_SIZE allocates past EOF without moving it.
        v.fs.fallocate(f.ino, FALLOC_FL_KEEP_SIZE, 5 * 4096, 8192)
            .await
            .unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.size, a.online_blocks), (5 * 4096, 7));
        // Other modes (punch hole, zero range...) are not supported.
        assert_eq!(
            v.fs.fallocate(f.ino, 0x02 | FALLOC_FL_KEEP_SIZE, 0, 4096)
                .await,
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(v.fs.fallocate(f.ino, 0, 0, 0).await, Err(libc::EINVAL));
        assert_eq!(
            v.fs.fallocate(ROOT_INO, 0, 0, 4096).await,
            Err(libc::EISDIR)
        );
        // Truncating frees the preallocated blocks too.
        v.fs.setattr(
            f.ino,
            &engine::fs::SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().online_blocks, 0);
    });
    v.check();
}

#[test]
fn fallocate_of_many_extents_spans_several_holds() {
    let v = Vol::new(2);
    v.trans
        .alloc_chunk
        .store(1, std::sync::atomic::Ordering::SeqCst);
    v.trans
        .alloc_gap
        .store(1, std::sync::atomic::Ordering::SeqCst);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        let holds = v.trans.holds.load(std::sync::atomic::Ordering::SeqCst);
        v.fs.fallocate(f.ino, 0, 0, 20 * 4096).await.unwrap();
        let used = v.trans.holds.load(std::sync::atomic::Ordering::SeqCst) - holds;
        assert!(used >= 3, "20 one-block extents took {used} holds");
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.size, a.online_blocks), (20 * 4096, 20));
        assert_eq!(v.fs.extents(f.ino).await.unwrap().len(), 20);
        assert_eq!(
            v.fs.read(f.ino, 0, 20 * 4096).await.unwrap(),
            vec![0u8; 20 * 4096]
        );
    });
    v.check();
}

#[test]
fn a_grabbed_unlinked_inode_lives_until_its_release() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.grab(f.ino);
        v.fs.unlink(ROOT_INO, b"f").await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().nlink, 0);
        v.fs.release(f.ino).await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await, Err(libc::ENOENT));
        // A reference taken after the inode is gone releases quietly.
        v.fs.grab(f.ino);
        v.fs.release(f.ino).await.unwrap();
    });
    v.check();
}
