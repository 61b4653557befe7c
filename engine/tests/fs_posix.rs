//! `engine::fs` names and inodes over in-memory items: what a user of the
//! mount would notice (names, sizes, nlink, rename, readdir order and d_off,
//! symlinks, unlink of open files) and the exact items §1.5 defines (three
//! items per link with `fingerprint<<32 | fnv1a32` hashes, orphan iff nlink
//! 0, seq index items moving with the transaction seq).

mod fs_support;

use engine::format::hash::{dirent_name_hash, fnv1a32};
use engine::format::items::{
    decode_dirent, dirent_key, dt, inode_key, link_backref_key, meta_seq_key, orphan_key,
    readdir_key, symlink_key, ROOT_INO,
};
use engine::format::key::{fs_type, zone};
use engine::fs::{SetAttr, SetTime, Time, RENAME_EXCHANGE, RENAME_NOREPLACE};
use fs_support::{run, user, Vol};

#[test]
fn create_lookup_and_the_three_entry_items() {
    let v = Vol::new(2);
    run(async {
        let a =
            v.fs.create(&user(), ROOT_INO, b"hello", 0o666)
                .await
                .unwrap();
        assert_eq!(a.ino, 1024);
        assert_eq!(a.mode, 0o100644, "umask 022 applied");
        assert_eq!((a.uid, a.gid, a.nlink, a.size), (1000, 100, 1, 0));
        assert_eq!(a.crtime, a.mtime);
        let l = v.fs.lookup(ROOT_INO, b"hello").await.unwrap();
        assert_eq!(l, a);
        assert_eq!(v.fs.lookup(ROOT_INO, b"nope").await, Err(libc::ENOENT));
        assert_eq!(
            v.fs.create(&user(), ROOT_INO, b"hello", 0o644).await,
            Err(libc::EEXIST)
        );
        assert_eq!(
            v.fs.create(&user(), ROOT_INO, &[b'x'; 256], 0o644).await,
            Err(libc::ENAMETOOLONG)
        );
        assert!(v
            .fs
            .create(&user(), ROOT_INO, &[b'x'; 255], 0o644)
            .await
            .is_ok());
        assert_eq!(v.fs.lookup(a.ino, b"x").await, Err(libc::ENOTDIR));
    });
    // hash = fingerprint << 32 | fnv1a32; "hello" fingerprint = first 4 bytes.
    let h = dirent_name_hash(b"hello");
    assert_eq!(h, (0x6865_6c6cu64 << 32) | fnv1a32(b"hello") as u64);
    let m = v.items.snapshot();
    let d = m.get(&dirent_key(ROOT_INO, h, 2)).expect("dirent at pos 2");
    assert_eq!(m.get(&readdir_key(ROOT_INO, 2)), Some(d));
    assert_eq!(m.get(&link_backref_key(1024, ROOT_INO, 2)), Some(d));
    let (hdr, name) = decode_dirent(d).unwrap();
    assert_eq!(
        (hdr.ino.get(), hdr.hash.get(), hdr.pos.get(), hdr.ty, name),
        (1024, h, 2, dt::REG, &b"hello"[..])
    );
    assert_eq!(hdr.pad, [0; 7]);
    assert_eq!(d.len(), 32 + 5);
    // Root: size is the total of names, next pos moved on.
    let r = v.inode(ROOT_INO).unwrap();
    assert_eq!(r.size.get(), 5 + 255);
    assert_eq!(r.next_readdir_pos.get(), 4);
    assert_eq!(v.inode(1024).unwrap().encode(2).len(), 168);
    assert_eq!(
        v.trans
            .inode_count
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    v.check();
}

#[test]
fn v1_inodes_are_160_bytes_and_have_no_proj() {
    let v = Vol::new(1);
    run(async {
        v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
    });
    let m = v.items.snapshot();
    assert_eq!(m.get(&inode_key(1024)).unwrap().len(), 160);
    v.check();
}

#[test]
fn mkdir_rmdir_nlink_and_emptiness() {
    let v = Vol::new(2);
    run(async {
        let d = v.fs.mkdir(&user(), ROOT_INO, b"dir", 0o777).await.unwrap();
        assert_eq!((d.mode, d.nlink, d.size), (0o040755, 2, 0));
        assert_eq!(v.fs.getattr(ROOT_INO).await.unwrap().nlink, 3);
        let sub = v.fs.mkdir(&user(), d.ino, b"sub", 0o700).await.unwrap();
        v.fs.create(&user(), d.ino, b"file", 0o600).await.unwrap();
        let da = v.fs.getattr(d.ino).await.unwrap();
        assert_eq!((da.nlink, da.size), (3, 7));
        assert_eq!(v.fs.rmdir(ROOT_INO, b"dir").await, Err(libc::ENOTEMPTY));
        assert_eq!(v.fs.rmdir(d.ino, b"file").await, Err(libc::ENOTDIR));
        assert_eq!(v.fs.unlink(d.ino, b"sub").await, Err(libc::EISDIR));
        assert_eq!(v.fs.lookup(sub.ino, b"..").await.unwrap().ino, d.ino);
        assert_eq!(v.fs.lookup(d.ino, b".").await.unwrap().ino, d.ino);
        v.check();
        v.fs.rmdir(d.ino, b"sub").await.unwrap();
        v.fs.unlink(d.ino, b"file").await.unwrap();
        assert_eq!(v.fs.getattr(d.ino).await.unwrap().size, 0);
        v.fs.rmdir(ROOT_INO, b"dir").await.unwrap();
        assert_eq!(v.fs.getattr(ROOT_INO).await.unwrap().nlink, 2);
        assert_eq!(v.fs.getattr(d.ino).await, Err(libc::ENOENT));
    });
    // Everything of the removed inodes is gone.
    assert!(v.items_of(1024).is_empty());
    assert_eq!(v.count(zone::ORPHAN, 0), 0);
    assert_eq!(v.inode(ROOT_INO).unwrap().size.get(), 0);
    assert_eq!(
        v.trans
            .inode_count
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    v.check();
}

#[test]
fn hard_links_count_and_the_last_unlink_deletes() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"a", 0o644).await.unwrap();
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        let l = v.fs.link(f.ino, d.ino, b"b").await.unwrap();
        assert_eq!(l.nlink, 2);
        assert_eq!(v.fs.link(d.ino, ROOT_INO, b"dd").await, Err(libc::EPERM));
        assert_eq!(v.fs.link(f.ino, d.ino, b"b").await, Err(libc::EEXIST));
        let refs = v.fs.referring_entries(f.ino).await.unwrap();
        assert_eq!(
            refs,
            vec![(ROOT_INO, 2, b"a".to_vec()), (d.ino, 2, b"b".to_vec())]
        );
        v.check();
        v.fs.unlink(ROOT_INO, b"a").await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().nlink, 1);
        assert_eq!(v.count(zone::ORPHAN, 0), 0);
        v.fs.unlink(d.ino, b"b").await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await, Err(libc::ENOENT));
    });
    assert!(v.items_of(1024).is_empty());
    v.check();
}

#[test]
fn unlinked_open_file_lives_until_release() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.open(f.ino).await.unwrap();
        v.fs.write(f.ino, 0, b"still here").await.unwrap();
        v.fs.unlink(ROOT_INO, b"f").await.unwrap();
        // Orphan item exactly while nlink is 0 and the items exist.
        assert!(v.items.snapshot().contains_key(&orphan_key(f.ino)));
        v.check();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().nlink, 0);
        assert_eq!(v.fs.read(f.ino, 0, 100).await.unwrap(), b"still here");
        assert_eq!(v.fs.lookup(ROOT_INO, b"f").await, Err(libc::ENOENT));
        v.fs.release(f.ino).await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await, Err(libc::ENOENT));
        assert_eq!(v.fs.release(f.ino).await, Err(libc::EBADF));
    });
    let m = v.items.snapshot();
    assert!(!m.contains_key(&orphan_key(1024)));
    assert!(v.items_of(1024).is_empty());
    assert_eq!(
        v.count(zone::INODE_INDEX, 0),
        1,
        "only root's meta_seq left"
    );
    assert_eq!(v.trans.freed_blocks(), 1);
    v.check();
}

#[test]
fn tmpfile_is_orphaned_then_linkable() {
    let v = Vol::new(2);
    run(async {
        let t = v.fs.tmpfile(&user(), ROOT_INO, 0o600).await.unwrap();
        assert_eq!(t.nlink, 0);
        assert!(v.items.snapshot().contains_key(&orphan_key(t.ino)));
        v.check();
        v.fs.link(t.ino, ROOT_INO, b"named").await.unwrap();
        assert!(!v.items.snapshot().contains_key(&orphan_key(t.ino)));
        v.fs.release(t.ino).await.unwrap();
        assert_eq!(v.fs.lookup(ROOT_INO, b"named").await.unwrap().ino, t.ino);
    });
    v.check();
}

#[test]
fn readdir_in_creation_order_with_positions() {
    let v = Vol::new(2);
    run(async {
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        let names: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("z{:03}", 49 - i).into_bytes())
            .collect();
        for n in &names {
            v.fs.create(&user(), d.ino, n, 0o644).await.unwrap();
        }
        v.fs.unlink(d.ino, b"z040").await.unwrap();
        let all = v.fs.readdir(d.ino, 0, 1000).await.unwrap();
        assert_eq!(all[0].name, b".");
        assert_eq!((all[0].pos, all[0].ino), (0, d.ino));
        assert_eq!(all[1].name, b"..");
        assert_eq!((all[1].pos, all[1].ino), (1, ROOT_INO));
        let rest: Vec<_> = all[2..].iter().map(|e| (e.pos, e.name.clone())).collect();
        let want: Vec<_> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| n.as_slice() != b"z040")
            .map(|(i, n)| (i as u64 + 2, n.clone()))
            .collect();
        assert_eq!(rest, want);
        assert!(all[2..].iter().all(|e| e.ty == dt::REG));
        // Resuming from the last position + 1, in small batches.
        let mut got = Vec::new();
        let mut start = 0;
        loop {
            let b = v.fs.readdir(d.ino, start, 7).await.unwrap();
            if b.is_empty() {
                break;
            }
            start = b.last().unwrap().pos + 1;
            got.extend(b);
        }
        assert_eq!(got, all);
        // A new entry goes last even after deletions.
        v.fs.create(&user(), d.ino, b"a-new", 0o644).await.unwrap();
        let again = v.fs.readdir(d.ino, 40, 100).await.unwrap();
        assert_eq!(again.last().unwrap().name, b"a-new");
        assert_eq!(again.last().unwrap().pos, 52);
    });
    v.check();
}

#[test]
fn rename_cases() {
    let v = Vol::new(2);
    run(async {
        let u = user();
        let a = v.fs.mkdir(&u, ROOT_INO, b"a", 0o755).await.unwrap();
        let b = v.fs.mkdir(&u, a.ino, b"b", 0o755).await.unwrap();
        let c = v.fs.mkdir(&u, ROOT_INO, b"c", 0o755).await.unwrap();
        let f = v.fs.create(&u, ROOT_INO, b"f", 0o644).await.unwrap();
        let g = v.fs.create(&u, ROOT_INO, b"g", 0o644).await.unwrap();

        // Flags: only NOREPLACE.
        assert_eq!(
            v.fs.rename(ROOT_INO, b"f", ROOT_INO, b"h", RENAME_EXCHANGE)
                .await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_NOREPLACE)
                .await,
            Err(libc::EEXIST)
        );
        // No moving a directory beneath itself.
        assert_eq!(
            v.fs.rename(ROOT_INO, b"a", b.ino, b"a", 0).await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"a", a.ino, b"x", 0).await,
            Err(libc::EINVAL)
        );
        // Type mismatches and non-empty targets.
        assert_eq!(
            v.fs.rename(ROOT_INO, b"f", ROOT_INO, b"c", 0).await,
            Err(libc::EISDIR)
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"c", ROOT_INO, b"f", 0).await,
            Err(libc::ENOTDIR)
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"c", ROOT_INO, b"a", 0).await,
            Err(libc::ENOTEMPTY)
        );
        assert_eq!(
            v.fs.rename(ROOT_INO, b"zz", ROOT_INO, b"y", 0).await,
            Err(libc::ENOENT)
        );
        v.check();

        // Same-dir rename to a new name: new position.
        v.fs.rename(ROOT_INO, b"f", ROOT_INO, b"f2", RENAME_NOREPLACE)
            .await
            .unwrap();
        let e = v.fs.readdir(ROOT_INO, 2, 100).await.unwrap();
        assert_eq!(e.last().unwrap().name, b"f2");
        assert_eq!(e.last().unwrap().ino, f.ino);
        // Replacing a file: the replaced inode goes away.
        v.fs.rename(ROOT_INO, b"f2", ROOT_INO, b"g", 0)
            .await
            .unwrap();
        assert_eq!(v.fs.lookup(ROOT_INO, b"g").await.unwrap().ino, f.ino);
        assert_eq!(v.fs.getattr(g.ino).await, Err(libc::ENOENT));
        // Cross-directory directory move: nlinks follow.
        v.fs.rename(a.ino, b"b", c.ino, b"b", 0).await.unwrap();
        assert_eq!(v.fs.getattr(a.ino).await.unwrap().nlink, 2);
        assert_eq!(v.fs.getattr(c.ino).await.unwrap().nlink, 3);
        assert_eq!(v.fs.lookup(b.ino, b"..").await.unwrap().ino, c.ino);
        // Replacing an empty directory with a directory.
        v.fs.rename(c.ino, b"b", ROOT_INO, b"a", 0).await.unwrap();
        assert_eq!(v.fs.getattr(a.ino).await, Err(libc::ENOENT));
        assert_eq!(v.fs.getattr(c.ino).await.unwrap().nlink, 2);
        assert_eq!(v.fs.getattr(ROOT_INO).await.unwrap().nlink, 4);
        // Two names of one inode: nothing happens.
        v.fs.link(f.ino, ROOT_INO, b"g2").await.unwrap();
        v.fs.rename(ROOT_INO, b"g", ROOT_INO, b"g2", 0)
            .await
            .unwrap();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().nlink, 2);
    });
    v.check();
    let root = v.inode(ROOT_INO).unwrap();
    assert_eq!(root.size.get(), 1 + 1 + 1 + 2, "a, c, g, g2");
}

#[test]
fn symlink_chunks_and_size() {
    let v = Vol::new(2);
    run(async {
        let short =
            v.fs.symlink(&user(), ROOT_INO, b"s", b"target")
                .await
                .unwrap();
        assert_eq!((short.size, short.mode), (7, 0o120777));
        assert_eq!(v.fs.readlink(short.ino).await.unwrap(), b"target");
        let long: Vec<u8> = (0..4095).map(|i| b'a' + (i % 26) as u8).collect();
        let l = v.fs.symlink(&user(), ROOT_INO, b"l", &long).await.unwrap();
        assert_eq!(l.size, 4096);
        assert_eq!(v.fs.readlink(l.ino).await.unwrap(), long);
        let mut too_long = long.clone();
        too_long.push(b'x');
        assert_eq!(
            v.fs.symlink(&user(), ROOT_INO, b"t", &too_long).await,
            Err(libc::ENAMETOOLONG)
        );
        assert_eq!(v.fs.readlink(ROOT_INO).await, Err(libc::EINVAL));
        let m = v.items.snapshot();
        // 4096 bytes = 4 chunks of 896 and one of 512, the last ending in NUL.
        for c in 0..4 {
            assert_eq!(m.get(&symlink_key(l.ino, c)).unwrap().len(), 896);
        }
        let last = m.get(&symlink_key(l.ino, 4)).unwrap();
        assert_eq!((last.len(), *last.last().unwrap()), (512, 0));
        assert!(!m.contains_key(&symlink_key(l.ino, 5)));
        assert_eq!(m.get(&symlink_key(short.ino, 0)).unwrap(), b"target\0");
        v.fs.unlink(ROOT_INO, b"l").await.unwrap();
    });
    assert_eq!(v.count(zone::FS, fs_type::SYMLINK), 1);
    v.check();
}

#[test]
fn meta_seq_and_data_seq_follow_the_transaction() {
    let v = Vol::new(2);
    let f = run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        assert_eq!((f.meta_seq, f.data_seq, f.data_version), (1, 1, 0));
        f
    });
    assert!(v.items.snapshot().contains_key(&meta_seq_key(1, f.ino)));
    run(async {
        v.fs.fsync().await.unwrap(); // seq 2
        let a =
            v.fs.setattr(
                f.ino,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((a.meta_seq, a.data_seq, a.data_version), (2, 1, 0));
        v.fs.fsync().await.unwrap(); // seq 3
        let before = v.inode(f.ino).unwrap().version.get();
        v.fs.write(f.ino, 0, b"x").await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.meta_seq, a.data_seq, a.data_version), (3, 3, 1));
        v.fs.write(f.ino, 1, b"y").await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.meta_seq, a.data_seq, a.data_version), (3, 3, 2));
        assert_eq!(v.inode(f.ino).unwrap().version.get(), before + 2);
        // Directories only appear in the meta_seq index.
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        assert_eq!(d.data_seq, 0);
    });
    let m = v.items.snapshot();
    let idx: Vec<_> = m
        .keys()
        .filter(|k| k.zone == zone::INODE_INDEX)
        .map(|k| (k.ty, k.second, k.third))
        .collect();
    // root (meta 3 after mkdir), file meta 3 + data 3, dir meta 3.
    assert_eq!(
        idx,
        vec![(4, 3, 1), (4, 3, 1024), (4, 3, 1025), (8, 3, 1024)]
    );
    v.check();
}

#[test]
fn setattr_times_owner_and_mode() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o4755).await.unwrap();
        assert_eq!(f.mode, 0o104755);
        let t = Time { sec: 42, nsec: 9 };
        let a =
            v.fs.setattr(
                f.ino,
                &SetAttr {
                    uid: Some(7),
                    atime: Some(SetTime::At(t)),
                    mtime: Some(SetTime::At(t)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((a.uid, a.gid, a.atime, a.mtime), (7, 100, t, t));
        assert_eq!(a.mode, 0o100755, "chown clears set-user-ID");
        assert!(a.ctime > f.ctime);
        assert_eq!(a.crtime, f.crtime);
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        assert_eq!(
            v.fs.setattr(
                d.ino,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .await,
            Err(libc::EISDIR)
        );
        // setgid directories pass their group on.
        v.fs.setattr(
            d.ino,
            &SetAttr {
                mode: Some(0o2775),
                gid: Some(55),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let s = v.fs.mkdir(&user(), d.ino, b"s", 0o755).await.unwrap();
        assert_eq!((s.gid, s.mode & 0o2000), (55, 0o2000));
    });
    v.check();
}

#[test]
fn proj_is_inherited_on_v2() {
    let v = Vol::new(2);
    // Give root a project directly, as SET_ATTR_X would.
    {
        let mut m = v.items.map.lock().unwrap();
        let mut r = engine::format::items::Inode::decode(m.get(&inode_key(1)).unwrap(), 2).unwrap();
        r.proj = 77.into();
        m.insert(inode_key(1), r.encode(2).to_vec());
    }
    run(async {
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        let f = v.fs.create(&user(), d.ino, b"f", 0o644).await.unwrap();
        assert_eq!((d.proj, f.proj), (77, 77));
    });
}

#[test]
fn the_checker_sees_broken_items() {
    let v = Vol::new(2);
    run(async {
        v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
    });
    v.items
        .map
        .lock()
        .unwrap()
        .remove(&readdir_key(ROOT_INO, 2));
    let faults = fs_support::check_items(&v.items.snapshot(), 2);
    assert!(
        faults.iter().any(|f| f.contains("without readdir")),
        "{faults:?}"
    );
    v.items.map.lock().unwrap().remove(&orphan_key(1024));
    v.items.map.lock().unwrap().remove(&meta_seq_key(1, 1024));
    let faults = fs_support::check_items(&v.items.snapshot(), 2);
    assert!(
        faults.iter().any(|f| f.contains("no meta_seq")),
        "{faults:?}"
    );
}
