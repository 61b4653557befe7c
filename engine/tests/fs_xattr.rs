//! `engine::fs` xattrs over in-memory items: parts across 896-byte
//! boundaries, 64 KiB values, create/replace flags, errnos of the CLI
//! contract, and the `scoutfs.` tags (hide, totl deltas, indx items, the
//! 14-byte rule for short names).

mod fs_support;

use engine::format::hash::xattr_name_hash;
use engine::format::items::{indx_key, totl_key, xattr_key, TotlValue, XattrHeader, ROOT_INO};
use engine::format::key::{fs_type, zone};
use engine::fs::{parse_tags, XATTR_CREATE, XATTR_REPLACE};
use fs_support::{root, run, user, Vol};
use zerocopy::FromBytes;

fn val(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn parts_split_at_896_bytes() {
    let v = Vol::new(2);
    let name = b"user.name".to_vec();
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        let u = user();
        // 8 + 9 + 879 = 896: one part; one more byte: two parts.
        for (len, parts) in [(879, 1), (880, 2), (65535, 74), (0, 1), (2000, 3)] {
            v.fs.setxattr(&u, f.ino, &name, &val(len), 0).await.unwrap();
            assert_eq!(v.fs.getxattr(f.ino, &name).await.unwrap(), val(len));
            let got = v
                .items_of(f.ino)
                .into_iter()
                .filter(|(k, _)| k.ty == fs_type::XATTR)
                .count();
            assert_eq!(got, parts, "value of {len}");
            v.check();
        }
        let m = v.items.snapshot();
        let h = xattr_name_hash(&name);
        let p0 = m
            .get(&xattr_key(f.ino, h, 0, 0))
            .expect("id 0 kept on replace");
        let (hdr, rest) = XattrHeader::read_from_prefix(p0).unwrap();
        assert_eq!(
            (hdr.val_len.get(), hdr.name_len, hdr.pad),
            (2000, 9, [0; 5])
        );
        assert_eq!(&rest[..9], &name[..]);
        assert_eq!(p0.len(), 896);
        assert_eq!(
            m.get(&xattr_key(f.ino, h, 0, 2)).unwrap().len(),
            8 + 9 + 2000 - 2 * 896
        );
        assert_eq!(
            v.fs.setxattr(&u, f.ino, &name, &val(65536), 0).await,
            Err(libc::E2BIG)
        );
    });
}

#[test]
fn flags_and_errnos() {
    let v = Vol::new(2);
    run(async {
        let u = user();
        let f = v.fs.create(&u, ROOT_INO, b"f", 0o644).await.unwrap();
        assert_eq!(
            v.fs.setxattr(&u, f.ino, b"user.a", b"1", XATTR_REPLACE)
                .await,
            Err(libc::ENODATA)
        );
        v.fs.setxattr(&u, f.ino, b"user.a", b"1", XATTR_CREATE)
            .await
            .unwrap();
        assert_eq!(
            v.fs.setxattr(&u, f.ino, b"user.a", b"2", XATTR_CREATE)
                .await,
            Err(libc::EEXIST)
        );
        v.fs.setxattr(&u, f.ino, b"user.a", b"2", XATTR_REPLACE)
            .await
            .unwrap();
        assert_eq!(v.fs.getxattr(f.ino, b"user.a").await.unwrap(), b"2");
        assert_eq!(v.fs.getxattr(f.ino, b"user.b").await, Err(libc::ENODATA));
        assert_eq!(
            v.fs.setxattr(&u, f.ino, b"", b"", 0).await,
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(
            v.fs.setxattr(&u, f.ino, b"bogus.x", b"", 0).await,
            Err(libc::EOPNOTSUPP)
        );
        let mut long = b"user.".to_vec();
        long.resize(256, b'n');
        assert_eq!(
            v.fs.setxattr(&u, f.ino, &long, b"", 0).await,
            Err(libc::ERANGE)
        );
        long.truncate(255);
        v.fs.setxattr(&u, f.ino, &long, b"v", 0).await.unwrap();
        v.fs.setxattr(&u, f.ino, b"trusted.t", b"v", 0)
            .await
            .unwrap();
        let mut names = v.fs.listxattr(f.ino, false).await.unwrap();
        names.sort();
        let mut want = vec![b"trusted.t".to_vec(), b"user.a".to_vec(), long.clone()];
        want.sort();
        assert_eq!(names, want);
        v.fs.removexattr(&u, f.ino, b"user.a").await.unwrap();
        assert_eq!(
            v.fs.removexattr(&u, f.ino, b"user.a").await,
            Err(libc::ENODATA)
        );
        // The inode's ctime and meta_seq move with xattr changes.
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert!(a.ctime > f.ctime);
        // next_xattr_id counts ids handed out: a, long, t.
        assert_eq!(v.inode(f.ino).unwrap().next_xattr_id.get(), 3);
    });
    v.check();
}

#[test]
fn tag_parsing() {
    let ok = |n: &[u8]| parse_tags(n).unwrap();
    assert!(ok(b"scoutfs.hide.x").0.hide);
    let (t, at) = ok(b"scoutfs.srch.hide.name");
    assert!(t.srch && t.hide && !t.totl);
    assert_eq!(at, 18);
    // A misspelled tag after a good one becomes part of the name.
    let (t, at) = ok(b"scoutfs.hide.hid.x");
    assert!(t.hide);
    assert_eq!(at, 13);
    // Shorter than 14 bytes: ordinary.
    assert!(!ok(b"scoutfs.hide.").0.hide);
    assert_eq!(parse_tags(b"scoutfs.nope.x"), Err(libc::EINVAL));
    assert_eq!(parse_tags(b"scoutfs.hide.hide.x"), Err(libc::EINVAL));
    assert_eq!(parse_tags(b"scoutfs.totl.indx.x"), Err(libc::EINVAL));
}

#[test]
fn hidden_names_are_not_listed_and_tags_need_admin() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        assert_eq!(
            v.fs.setxattr(&user(), f.ino, b"scoutfs.hide.x", b"", 0)
                .await,
            Err(libc::EPERM)
        );
        // Short scoutfs. names are ordinary: no capability needed.
        v.fs.setxattr(&user(), f.ino, b"scoutfs.hide.", b"s", 0)
            .await
            .unwrap();
        v.fs.setxattr(&root(), f.ino, b"scoutfs.hide.x", b"h", 0)
            .await
            .unwrap();
        assert_eq!(
            v.fs.listxattr(f.ino, false).await.unwrap(),
            vec![b"scoutfs.hide.".to_vec()]
        );
        assert_eq!(
            v.fs.listxattr(f.ino, true).await.unwrap(),
            vec![b"scoutfs.hide.x".to_vec()]
        );
        assert_eq!(v.fs.getxattr(f.ino, b"scoutfs.hide.x").await.unwrap(), b"h");
    });
    v.check();
}

fn totl(v: &Vol, a: u64, b: u64, c: u64) -> Option<(u64, u64)> {
    v.items.snapshot().get(&totl_key(a, b, c)).map(|val| {
        let t = TotlValue::read_from_bytes(val).unwrap();
        (t.total.get(), t.count.get())
    })
}

#[test]
fn totl_deltas_follow_creates_changes_and_deletes() {
    let v = Vol::new(2);
    run(async {
        let r = root();
        let f = v.fs.create(&r, ROOT_INO, b"f", 0o644).await.unwrap();
        let g = v.fs.create(&r, ROOT_INO, b"g", 0o644).await.unwrap();
        let n = b"scoutfs.totl.bytes.1.2.3";
        v.fs.setxattr(&r, f.ino, n, b"100", 0).await.unwrap();
        v.fs.setxattr(&r, g.ino, n, b"0x10", 0).await.unwrap();
        assert_eq!(totl(&v, 1, 2, 3), Some((116, 2)));
        v.fs.setxattr(&r, f.ino, n, b"40", 0).await.unwrap();
        assert_eq!(totl(&v, 1, 2, 3), Some((56, 2)));
        v.fs.removexattr(&r, g.ino, n).await.unwrap();
        assert_eq!(totl(&v, 1, 2, 3), Some((40, 1)));
        // Syntax errors.
        for (name, value) in [
            (&b"scoutfs.totl.x.1.2"[..], &b"1"[..]),
            (b"scoutfs.totl.a.b.c.d", b"1"),
            (b"scoutfs.totl.n.1.2.3", b"-1"),
            (b"scoutfs.totl.n.1.2.3", b"1\n"),
            (b"scoutfs.totl.n.1.2.3", b""),
            (b"scoutfs.totl.n.1.2.3", b"000000000000000000000001"),
        ] {
            assert_eq!(
                v.fs.setxattr(&r, f.ino, name, value, 0).await,
                Err(libc::EINVAL)
            );
        }
        // Deleting the inode drops its xattrs and so its totals.
        v.fs.unlink(ROOT_INO, b"f").await.unwrap();
    });
    assert_eq!(totl(&v, 1, 2, 3), None);
    v.check();
}

#[test]
fn indx_items_use_the_real_xattr_id() {
    let v = Vol::new(2);
    run(async {
        let r = root();
        let f = v.fs.create(&r, ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.setxattr(&r, f.ino, b"user.first", b"", 0)
            .await
            .unwrap(); // id 0
        v.fs.setxattr(&r, f.ino, b"scoutfs.indx.tier.3.99", b"", 0)
            .await
            .unwrap(); // id 1
        assert!(v.items.snapshot().contains_key(&indx_key(3, 99, f.ino, 1)));
        assert_eq!(
            v.fs.setxattr(&r, f.ino, b"scoutfs.indx.t.3.99", b"x", 0)
                .await,
            Err(libc::EINVAL)
        );
        assert_eq!(
            v.fs.setxattr(&r, f.ino, b"scoutfs.indx.t.256.1", b"", 0)
                .await,
            Err(libc::EINVAL)
        );
        v.fs.removexattr(&r, f.ino, b"scoutfs.indx.tier.3.99")
            .await
            .unwrap();
        assert_eq!(v.count(zone::XATTR_INDX, 0), 0);
        v.fs.setxattr(&r, f.ino, b"scoutfs.indx.tier.3.99", b"", 0)
            .await
            .unwrap(); // id 2
        assert!(v.items.snapshot().contains_key(&indx_key(3, 99, f.ino, 2)));
        v.fs.unlink(ROOT_INO, b"f").await.unwrap();
    });
    assert_eq!(v.count(zone::XATTR_INDX, 0), 0);
    v.check();
    // v1 has no indx.
    let v1 = Vol::new(1);
    run(async {
        let f = v1.fs.create(&root(), ROOT_INO, b"f", 0o644).await.unwrap();
        assert_eq!(
            v1.fs
                .setxattr(&root(), f.ino, b"scoutfs.indx.t.3.99", b"", 0)
                .await,
            Err(libc::EINVAL)
        );
    });
}

/// `.srch.` names log `(fnv1a64(name), ino, id)` on create and, identical,
/// on delete (also when the inode goes); a value change logs nothing, and
/// other names never log (§7.3).
#[test]
fn srch_names_log_an_entry_on_create_and_delete_only() {
    use engine::format::hash::fnv1a64;
    let v = Vol::new(2);
    run(async {
        let r = root();
        let f = v.fs.create(&r, ROOT_INO, b"f", 0o644).await.unwrap();
        let g = v.fs.tmpfile(&r, ROOT_INO, 0o644).await.unwrap();
        let name = b"scoutfs.srch.hide.x".to_vec();
        let ents = || -> Vec<(u64, u64, u64)> {
            v.trans
                .srch
                .lock()
                .unwrap()
                .iter()
                .map(|e| (e.hash.get(), e.ino.get(), e.id.get()))
                .collect()
        };
        v.fs.setxattr(&r, f.ino, b"user.a", b"1", 0).await.unwrap();
        v.fs.setxattr(&r, f.ino, &name, b"1", 0).await.unwrap();
        v.fs.setxattr(&r, f.ino, &name, b"22", 0).await.unwrap();
        v.fs.setxattr(&r, f.ino, b"scoutfs.totl.x.1.2.3", b"5", 0)
            .await
            .unwrap();
        let h = fnv1a64(&name);
        assert_eq!(ents(), vec![(h, f.ino, 1)], "the create, with its id");
        v.fs.removexattr(&r, f.ino, &name).await.unwrap();
        assert_eq!(ents(), vec![(h, f.ino, 1), (h, f.ino, 1)]);
        v.fs.setxattr(&r, f.ino, &name, b"", 0).await.unwrap();
        assert_eq!(ents()[2], (h, f.ino, 3), "a new id for a new xattr");
        // Deleting an inode drops its tagged xattrs with their entries.
        v.fs.setxattr(&r, g.ino, &name, b"v", 0).await.unwrap();
        v.fs.release(g.ino).await.unwrap();
        let e = ents();
        assert_eq!(&e[3..], &[(h, g.ino, 0), (h, g.ino, 0)]);
        v.check();
    });
}
