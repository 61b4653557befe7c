//! Volumes made by the original `mkfs` (vectors/: zstd-compressed images
//! with the original tools' output) mounted by `scoutfsd`: each takes
//! files (create, write, mkdir, rename, xattrs, a hard link, a symlink,
//! unlink), unmounts cleanly, passes the offline check (what `scoutfs
//! check` runs), and mounts again with everything as it was.
//!
//! The vectors: `single` and `three` (format version 2, one and three
//! quorum slots) and `v1` (format version 1). The daemon runs without a
//! quorum slot (the embedded server), so the slots' addresses are never
//! bound. Needs root, /dev/fuse and the `zstd` tool; without them the test
//! prints why and passes.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::{get_xattr, set_xattr, skip_without_fuse, unzstd, Daemon, Volume};

const VECTORS: [&str; 3] = ["single", "three", "v1"];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

/// A vector's images unpacked into a fresh temporary directory.
fn unpack(name: &str) -> Result<Volume, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = dir.path().join(format!("{name}.meta"));
    let data = dir.path().join(format!("{name}.data"));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    unzstd(&vectors_dir().join(format!("{name}.meta.zst")), &meta)?;
    unzstd(&vectors_dir().join(format!("{name}.data.zst")), &data)?;
    Ok(Volume {
        dir,
        meta,
        data,
        mnt,
    })
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

/// The files every vector takes, written through the mount.
fn populate(mnt: &Path) {
    fs::create_dir(mnt.join("dir")).expect("mkdir");
    fs::create_dir_all(mnt.join("dir/sub/deeper")).expect("mkdir -p");
    let mut f = fs::File::create(mnt.join("dir/data")).expect("create");
    f.write_all(&pattern(7, 3 << 20)).expect("write 3 MiB");
    f.sync_all().expect("fsync");
    drop(f);
    fs::write(mnt.join("small"), b"hello, original volume\n").expect("write");
    fs::write(mnt.join("to-rename"), b"renamed").expect("write");
    fs::rename(mnt.join("to-rename"), mnt.join("dir/sub/renamed")).expect("rename");
    fs::rename(mnt.join("dir/sub/deeper"), mnt.join("moved-dir")).expect("rename dir");
    fs::hard_link(mnt.join("small"), mnt.join("dir/small-link")).expect("link");
    std::os::unix::fs::symlink("dir/data", mnt.join("symlink")).expect("symlink");
    fs::write(mnt.join("doomed"), b"x").expect("write");
    fs::remove_file(mnt.join("doomed")).expect("unlink");
    set_xattr(&mnt.join("small"), "user.color", b"blue").expect("setxattr");
    set_xattr(&mnt.join("dir"), "user.big", &pattern(3, 2000)).expect("setxattr dir");
    set_xattr(&mnt.join("dir/data"), "trusted.t", b"1").expect("setxattr trusted");
}

/// What [`populate`] left, read back through a mount.
fn verify(mnt: &Path, name: &str) {
    let data = fs::read(mnt.join("dir/data")).expect("read data");
    assert!(data == pattern(7, 3 << 20), "{name}: dir/data differs");
    assert_eq!(
        fs::read(mnt.join("dir/small-link")).expect("read link"),
        b"hello, original volume\n"
    );
    assert_eq!(fs::metadata(mnt.join("small")).expect("stat").nlink(), 2);
    assert_eq!(
        fs::read(mnt.join("dir/sub/renamed")).expect("read"),
        b"renamed"
    );
    assert!(!mnt.join("to-rename").exists(), "{name}: old name remains");
    assert!(fs::metadata(mnt.join("moved-dir")).expect("stat").is_dir());
    assert!(!mnt.join("dir/sub/deeper").exists());
    assert!(!mnt.join("doomed").exists());
    assert_eq!(
        fs::read_link(mnt.join("symlink")).expect("readlink"),
        Path::new("dir/data")
    );
    assert_eq!(
        get_xattr(&mnt.join("small"), "user.color").unwrap(),
        b"blue"
    );
    assert_eq!(
        get_xattr(&mnt.join("dir"), "user.big").unwrap(),
        pattern(3, 2000)
    );
    assert_eq!(get_xattr(&mnt.join("dir/data"), "trusted.t").unwrap(), b"1");
    let mut names: Vec<String> = fs::read_dir(mnt)
        .expect("readdir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "moved-dir", "small", "symlink"], "{name}");
}

#[test]
fn original_mkfs_volumes_mount_take_files_and_check_clean() {
    if skip_without_fuse("original_mkfs_volumes_mount_take_files_and_check_clean") {
        return;
    }
    for name in VECTORS {
        let v = match unpack(name) {
            Ok(v) => v,
            Err(why) => {
                eprintln!("SKIPPED original_mkfs_volumes_mount_take_files_and_check_clean: {why}");
                return;
            }
        };
        v.assert_clean(&format!("{name} as the original mkfs left it"));

        let d = Daemon::start(&v);
        let root = fs::metadata(&v.mnt).expect("stat root");
        assert_eq!(root.ino(), 1, "{name}: root inode");
        assert_eq!(fs::read_dir(&v.mnt).expect("readdir").count(), 0);
        populate(&v.mnt);
        verify(&v.mnt, name);
        d.unmount();
        assert!(!v.mounted(), "{name}: still mounted");
        v.assert_clean(&format!("{name} after files were added"));

        let d = Daemon::start(&v);
        verify(&v.mnt, name);
        d.unmount();
        v.assert_clean(&format!("{name} after the second mount"));
        eprintln!("{name}: mounted, took files, unmounted, check clean, remounted");
    }
}
