//! The read-only queries behind `scoutfs walk-inodes`, `ino-path`,
//! `get-referring-entries` and `get-allocated-inos`: index walks return
//! (seq, ino) in key order within the bounds and move with every inode
//! change (the old entry gone, the new one at the transaction's seq);
//! backrefs give every (dir, pos, type, name) of an inode; paths climb to
//! the root; allocated inodes stay within one 1024-inode group.

mod fs_support;

use engine::format::items::ROOT_INO;
use engine::fs::{IndexKind, INODE_GROUP_NR};
use fs_support::{run, user, Vol};
use std::sync::atomic::Ordering;

const ALL: (u64, u64) = (u64::MAX, u64::MAX);

#[test]
fn index_walks_follow_each_change_to_its_new_seq() {
    let v = Vol::new(2);
    run(async {
        let seq0 = v.trans.seq.load(Ordering::SeqCst);
        let meta = v.fs.walk_index(IndexKind::MetaSeq, (0, 0), ALL, 100);
        // The test volume's root item says seq 0.
        assert_eq!(meta.await.unwrap(), vec![(0, ROOT_INO)]);
        let a = v.fs.create(&user(), ROOT_INO, b"a", 0o644).await.unwrap();
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        let got = v.fs.walk_index(IndexKind::MetaSeq, (0, 0), ALL, 100);
        let mut want = vec![(seq0, ROOT_INO), (seq0, a.ino), (seq0, d.ino)];
        want.sort();
        assert_eq!(got.await.unwrap(), want);
        // Directories are only in the meta_seq index.
        let data = v.fs.walk_index(IndexKind::DataSeq, (0, 0), ALL, 100);
        assert_eq!(data.await.unwrap(), vec![(seq0, a.ino)]);

        v.fs.fsync().await.unwrap();
        let seq1 = v.trans.seq.load(Ordering::SeqCst);
        assert!(seq1 > seq0);
        v.fs.write(a.ino, 0, b"x").await.unwrap();
        let meta = v.fs.walk_index(IndexKind::MetaSeq, (0, 0), ALL, 100);
        assert_eq!(
            meta.await.unwrap(),
            vec![(seq0, ROOT_INO), (seq0, d.ino), (seq1, a.ino)]
        );
        let data = v.fs.walk_index(IndexKind::DataSeq, (0, 0), ALL, 100);
        assert_eq!(data.await.unwrap(), vec![(seq1, a.ino)]);

        // Bounds are inclusive (seq, ino) positions; max limits a batch
        // and the next batch resumes after the last entry.
        let below =
            v.fs.walk_index(IndexKind::MetaSeq, (0, 0), (seq0, ROOT_INO), 100);
        assert_eq!(below.await.unwrap(), vec![(seq0, ROOT_INO)]);
        let one = v.fs.walk_index(IndexKind::MetaSeq, (0, 0), ALL, 1);
        assert_eq!(one.await.unwrap(), vec![(seq0, ROOT_INO)]);
        let rest =
            v.fs.walk_index(IndexKind::MetaSeq, (seq0, ROOT_INO + 1), ALL, 100);
        assert_eq!(rest.await.unwrap(), vec![(seq0, d.ino), (seq1, a.ino)]);
        let none =
            v.fs.walk_index(IndexKind::MetaSeq, (seq1 + 1, 0), (seq1, 0), 100);
        assert!(none.await.unwrap().is_empty());
    });
    v.check();
}

#[test]
fn referring_entries_and_paths_name_every_link() {
    let v = Vol::new(2);
    run(async {
        let d = v.fs.mkdir(&user(), ROOT_INO, b"dir", 0o755).await.unwrap();
        let s = v.fs.mkdir(&user(), d.ino, b"sub", 0o755).await.unwrap();
        let f = v.fs.create(&user(), s.ino, b"file", 0o644).await.unwrap();
        v.fs.link(f.ino, ROOT_INO, b"top").await.unwrap();

        let refs = v.fs.referring_dirents(f.ino, (0, 0), 10).await.unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[0].dir, refs[0].name.as_slice()),
            (ROOT_INO, &b"top"[..])
        );
        assert_eq!(
            (refs[1].dir, refs[1].name.as_slice()),
            (s.ino, &b"file"[..])
        );
        assert!(refs.iter().all(|r| r.dtype == libc::DT_REG));
        assert!(refs.iter().all(|r| r.pos >= 2));
        let after = (refs[0].dir, refs[0].pos + 1);
        let more = v.fs.referring_dirents(f.ino, after, 10).await.unwrap();
        assert_eq!(more, refs[1..].to_vec());
        let dir_ref = v.fs.referring_dirents(d.ino, (0, 0), 10).await.unwrap();
        assert_eq!(dir_ref[0].dtype, libc::DT_DIR);

        let p0 = v.fs.ino_path(f.ino, (0, 0)).await.unwrap().unwrap();
        assert_eq!(p0.path, b"top");
        let p1 = v.fs.ino_path(f.ino, (p0.dir, p0.pos + 1)).await.unwrap();
        let p1 = p1.unwrap();
        assert_eq!(p1.path, b"dir/sub/file");
        let p2 = v.fs.ino_path(f.ino, (p1.dir, p1.pos + 1)).await.unwrap();
        assert_eq!(p2, None);
        let root = v.fs.ino_path(ROOT_INO, (0, 0)).await.unwrap().unwrap();
        assert!(root.path.is_empty());
        assert_eq!(v.fs.ino_path(999_999, (0, 0)).await.unwrap(), None);
    });
    v.check();
}

#[test]
fn allocated_inos_stay_in_the_start_group() {
    let v = Vol::new(2);
    run(async {
        let mut inos = Vec::new();
        for i in 0..5u32 {
            let name = format!("f{i}");
            let ctx = user();
            let a = v.fs.create(&ctx, ROOT_INO, name.as_bytes(), 0o644).await;
            inos.push(a.unwrap().ino);
        }
        v.fs.unlink(ROOT_INO, b"f2").await.unwrap();
        let expect: Vec<u64> = inos.iter().copied().filter(|&i| i != inos[2]).collect();
        let got = v.fs.allocated_inos(inos[0], 1024).await.unwrap();
        assert_eq!(got, expect);
        let got = v.fs.allocated_inos(inos[1], 2).await.unwrap();
        assert_eq!(got, vec![inos[1], inos[3]]);
        // The root's group is 0..1023: user inodes start at 1024.
        let got = v.fs.allocated_inos(0, 1024).await.unwrap();
        assert_eq!(got, vec![ROOT_INO]);
        let next_group = (inos[0] | (INODE_GROUP_NR - 1)) + 1;
        assert!(v
            .fs
            .allocated_inos(next_group, 10)
            .await
            .unwrap()
            .is_empty());
    });
    v.check();
}
