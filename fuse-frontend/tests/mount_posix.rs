//! The engine through a real FUSE mount: `scoutfsd` serves sparse image
//! files formatted by `engine::mkfs`, and the tests use the mount with
//! std::fs and libc like any program would — namespace operations, data,
//! O_APPEND, truncate, fallocate, xattrs, statfs, inode numbers — then
//! unmount, check the volume offline (clean), mount again and find
//! everything as it was. SIGTERM and the background mode end the same way;
//! bad devices fail with a clear message and mount nothing.
//!
//! Mounting needs root and /dev/fuse: those tests print a reason and pass
//! when either is missing.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    get_xattr, mount_entry, set_xattr, skip_without_fuse, Daemon, Volume, DAEMON_WAIT, SCOUTFSD,
};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn listxattr(path: &Path) -> Vec<String> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: a valid NUL-terminated path and a buffer of the given size.
    let r = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    // read_dir leaves out "." and ".."; the engine returns creation order.
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Builds a small tree and checks it through the mount.
fn populate(m: &Path) {
    // Root is inode 1; user inodes start at 1024 (cli-contract).
    assert_eq!(fs::metadata(m).unwrap().ino(), 1);
    fs::create_dir(m.join("dir")).unwrap();
    let body = pattern(7, 3 * 1024 * 1024 + 123);
    fs::write(m.join("dir/big"), &body).unwrap();
    assert!(fs::metadata(m.join("dir/big")).unwrap().ino() >= 1024);
    assert_eq!(fs::read(m.join("dir/big")).unwrap(), body);

    // Partial overwrite in the middle, read back at an offset.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("dir/big"))
        .unwrap();
    f.seek(SeekFrom::Start(5000)).unwrap();
    f.write_all(b"overwrite").unwrap();
    let mut got = [0u8; 9];
    f.seek(SeekFrom::Start(5000)).unwrap();
    f.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"overwrite");
    drop(f);

    // O_APPEND goes to the end even when the offset says otherwise.
    fs::write(m.join("log"), b"one\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(m.join("log")).unwrap();
    a.write_all(b"two\n").unwrap();
    a.write_all(b"three\n").unwrap();
    drop(a);
    assert_eq!(fs::read(m.join("log")).unwrap(), b"one\ntwo\nthree\n");

    // Truncate down and up: the tail reads as zeros.
    fs::write(m.join("trunc"), pattern(1, 10000)).unwrap();
    let t = OpenOptions::new()
        .write(true)
        .open(m.join("trunc"))
        .unwrap();
    t.set_len(100).unwrap();
    t.set_len(8192).unwrap();
    drop(t);
    let got = fs::read(m.join("trunc")).unwrap();
    assert_eq!(&got[..100], &pattern(1, 100)[..]);
    assert!(got[100..].iter().all(|&b| b == 0) && got.len() == 8192);

    // fallocate mode 0: allocated, sized, zeros.
    let fa = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(m.join("prealloc"))
        .unwrap();
    // SAFETY: a valid descriptor; mode 0, offset 0, 1 MiB.
    let r = unsafe { libc::fallocate(fa.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    drop(fa);
    let md = fs::metadata(m.join("prealloc")).unwrap();
    assert_eq!(
        (md.len(), md.blocks(), md.mode() & 0o777),
        (1 << 20, 2048, 0o600)
    );
    assert!(fs::read(m.join("prealloc"))
        .unwrap()
        .iter()
        .all(|&b| b == 0));

    // Names: rename, hard link, symlink, unlink, rmdir.
    fs::write(m.join("dir/a"), b"a").unwrap();
    fs::rename(m.join("dir/a"), m.join("moved")).unwrap();
    fs::hard_link(m.join("moved"), m.join("dir/link")).unwrap();
    assert_eq!(fs::metadata(m.join("moved")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("dir/big", m.join("sym")).unwrap();
    assert_eq!(fs::read_link(m.join("sym")).unwrap(), Path::new("dir/big"));
    assert_eq!(
        fs::metadata(m.join("sym")).unwrap().len(),
        body.len() as u64
    );
    fs::write(m.join("gone"), b"x").unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    fs::create_dir(m.join("empty")).unwrap();
    fs::remove_dir(m.join("empty")).unwrap();
    assert_eq!(
        fs::remove_dir(m.join("dir")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::metadata(m.join("gone")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    // An open unlinked file stays readable until closed.
    fs::write(m.join("tmp"), b"still here").unwrap();
    let mut open = fs::File::open(m.join("tmp")).unwrap();
    fs::remove_file(m.join("tmp")).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(
        (s.as_str(), open.metadata().unwrap().nlink()),
        ("still here", 0)
    );
    drop(open);

    // Xattrs: set, get, list, remove, errors.
    set_xattr(&m.join("moved"), "user.color", b"blue").unwrap();
    set_xattr(&m.join("moved"), "user.big", &[9u8; 5000]).unwrap();
    assert_eq!(get_xattr(&m.join("moved"), "user.color").unwrap(), b"blue");
    let mut l = listxattr(&m.join("moved"));
    l.sort();
    assert_eq!(l, vec!["user.big".to_string(), "user.color".to_string()]);
    assert_eq!(
        get_xattr(&m.join("moved"), "user.none")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENODATA)
    );

    // Directory size = bytes of entry names; readdir in creation order.
    assert_eq!(
        names(m),
        vec!["dir", "log", "trunc", "prealloc", "moved", "sym"]
    );
    let names_len: u64 = ["dir", "log", "trunc", "prealloc", "moved", "sym"]
        .iter()
        .map(|n| n.len() as u64)
        .sum();
    assert_eq!(fs::metadata(m).unwrap().len(), names_len);
    assert_eq!(names(&m.join("dir")), vec!["big", "link"]);

    // Ownership and modes go through setattr.
    std::os::unix::fs::chown(m.join("log"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(
        m.join("log"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let md = fs::metadata(m.join("log")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o640)
    );

    // statfs: 4 KiB blocks over the whole volume, free space counted.
    let c = CString::new(m.as_os_str().as_bytes()).unwrap();
    // SAFETY: all zeroes is a valid statvfs; filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and an out pointer to `st`.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_bsize, 4096);
    assert!(st.f_blocks > st.f_bfree && st.f_bfree > 0 && st.f_namemax == 255);
}

/// Checks what [`populate`] left, after a remount.
fn verify(m: &Path) {
    let body = pattern(7, 3 * 1024 * 1024 + 123);
    let mut want = body.clone();
    want[5000..5009].copy_from_slice(b"overwrite");
    assert_eq!(fs::read(m.join("dir/big")).unwrap(), want);
    assert_eq!(fs::read(m.join("log")).unwrap(), b"one\ntwo\nthree\n");
    assert_eq!(fs::metadata(m.join("trunc")).unwrap().len(), 8192);
    assert_eq!(fs::metadata(m.join("prealloc")).unwrap().len(), 1 << 20);
    assert_eq!(fs::read(m.join("moved")).unwrap(), b"a");
    assert_eq!(
        fs::metadata(m.join("moved")).unwrap().ino(),
        fs::metadata(m.join("dir/link")).unwrap().ino()
    );
    assert_eq!(fs::read_link(m.join("sym")).unwrap(), Path::new("dir/big"));
    assert_eq!(
        get_xattr(&m.join("moved"), "user.big").unwrap(),
        vec![9u8; 5000]
    );
    assert_eq!(
        names(m),
        vec!["dir", "log", "trunc", "prealloc", "moved", "sym"]
    );
    let md = fs::metadata(m.join("log")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
}

#[test]
fn posix_operations_persist_across_unmount_and_remount() {
    if skip_without_fuse("posix_operations_persist_across_unmount_and_remount") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let entry = mount_entry(&v.mnt).unwrap();
    let fields: Vec<&str> = entry.split_whitespace().collect();
    // Source = the data device, type fuse.scoutfs, dev and suid allowed.
    assert_eq!(fields[0], v.data.to_str().unwrap());
    assert_eq!(fields[2], "fuse.scoutfs");
    for opt in ["default_permissions", "allow_other"] {
        assert!(fields[3].contains(opt), "{entry}");
    }
    assert!(!fields[3].contains("nosuid") && !fields[3].contains("nodev"));
    populate(&v.mnt);
    d.unmount();
    assert!(!v.mounted());
    v.assert_clean("after the first unmount");

    let d = Daemon::start(&v);
    verify(&v.mnt);
    fs::remove_file(v.mnt.join("dir/link")).unwrap();
    assert_eq!(fs::metadata(v.mnt.join("moved")).unwrap().nlink(), 1);
    d.unmount();
    v.assert_clean("after the second unmount");
}

#[test]
fn sigterm_unmounts_commits_and_exits_cleanly() {
    if skip_without_fuse("sigterm_unmounts_commits_and_exits_cleanly") {
        return;
    }
    let v = Volume::new();
    let mut d = Daemon::start(&v);
    fs::write(v.mnt.join("kept"), pattern(3, 70000)).unwrap();
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) }, 0);
    let st = d.wait();
    assert!(st.success(), "scoutfsd exited with {st}");
    assert!(!v.mounted(), "SIGTERM left the mount behind");
    v.assert_clean("after SIGTERM");
    let d = Daemon::start(&v);
    assert_eq!(fs::read(v.mnt.join("kept")).unwrap(), pattern(3, 70000));
    d.unmount();
}

#[test]
fn background_mode_returns_once_mounted() {
    if skip_without_fuse("background_mode_returns_once_mounted") {
        return;
    }
    let v = Volume::new();
    let out = Command::new(SCOUTFSD)
        .arg("--metadev")
        .arg(&v.meta)
        .arg("--datadev")
        .arg(&v.data)
        .arg("--mountpoint")
        .arg(&v.mnt)
        .output()
        .expect("run scoutfsd");
    assert!(out.status.success(), "{out:?}");
    assert!(v.mounted(), "scoutfsd returned before mounting");
    fs::write(v.mnt.join("bg"), b"background").unwrap();
    support::umount(&v.mnt);
    // The daemon holds the images' locks until it has said farewell.
    let deadline = Instant::now() + DAEMON_WAIT;
    let excl = drivers::OpenOptions::new().exclusive(true);
    while drivers::FileDevice::open(&v.meta, &excl).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The data device is released right after the metadata device.
    while drivers::FileDevice::open(&v.data, &excl).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    v.assert_clean("after a background mount");
    let d = Daemon::start(&v);
    assert_eq!(fs::read(v.mnt.join("bg")).unwrap(), b"background");
    d.unmount();
}

#[test]
fn bad_devices_fail_with_a_clear_message_and_mount_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let run = |meta: &Path, data: &Path| {
        Command::new(SCOUTFSD)
            .arg("--metadev")
            .arg(meta)
            .arg("--datadev")
            .arg(data)
            .arg("--mountpoint")
            .arg(&mnt)
            .arg("-f")
            .output()
            .expect("run scoutfsd")
    };
    let missing = dir.path().join("missing");
    let out = run(&missing, &missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "failed to open '{}': No such file or directory (2)",
            missing.display()
        )),
        "{err}"
    );

    // Zeroed images are no volume.
    let (meta, data) = (dir.path().join("m"), dir.path().join("d"));
    for p in [&meta, &data] {
        fs::File::create(p).unwrap().set_len(64 << 20).unwrap();
    }
    let out = run(&meta, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("do not hold a scoutfs volume"), "{err}");
    assert!(mount_entry(&mnt).is_none());

    // Usage errors: argp style, exit 64.
    let out = Command::new(SCOUTFSD).arg("--metadev").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("Try `scoutfsd --help'"), "{err}");
}
