//! O_TMPFILE through a mount (docs/fuse.md): an unnamed file takes writes
//! and reads, shows nlink 0, honours the umask, and is an orphan (its
//! inode lives with an orphan item) until `linkat` names it; closed without
//! a name it is deleted; linked, it stays across a remount. A tmpfile
//! left open by a daemon killed with SIGKILL is deleted by the orphan scan
//! of the next mount. The offline check (orphan item ⇔ nlink 0) is clean
//! after each. Inode quota rules stop tmpfiles as they stop creates:
//! `engine/tests/xattr_tags.rs`.
//!
//! Needs root and /dev/fuse; skipped otherwise.
#![allow(clippy::disallowed_methods)]

mod support;

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use fuse_frontend::control::client::Client;
use support::{skip_without_fuse, Daemon, Volume};

fn tmpfile(dir: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o640)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .unwrap_or_else(|e| panic!("O_TMPFILE in {}: {e}", dir.display()))
}

fn link_at(f: &File, to: &Path) -> std::io::Result<()> {
    let name = CString::new(to.as_os_str().as_bytes()).expect("path");
    let (fd, cwd, empty) = (f.as_raw_fd(), libc::AT_FDCWD, libc::AT_EMPTY_PATH);
    // SAFETY: valid descriptor and paths; "" with AT_EMPTY_PATH names `fd`.
    match unsafe { libc::linkat(fd, c"".as_ptr(), cwd, name.as_ptr(), empty) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether `ino` still has an inode item on the mount of `dir`.
fn allocated(dir: &Path, ino: u64) -> bool {
    let c = Client::for_path(dir).expect("control socket");
    c.allocated_inos(ino, 1).expect("allocated inos").first() == Some(&ino)
}

fn wait_gone(dir: &Path, ino: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while allocated(dir, ino) {
        assert!(
            Instant::now() < deadline,
            "{what}: inode {ino} never deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tmpfiles_are_orphans_until_linked() {
    if skip_without_fuse("tmpfiles_are_orphans_until_linked") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    std::fs::create_dir(v.mnt.join("d")).unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 251) as u8).collect();

    // Never linked: readable and writable while open, deleted after close.
    let mut f = tmpfile(&v.mnt.join("d"));
    f.write_all(&data).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!((md.nlink(), md.len()), (0, data.len() as u64));
    // SAFETY: umask(2) only reads and sets the process mask.
    let umask = unsafe { libc::umask(0o022) };
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(umask) };
    assert_eq!(md.mode() & 0o7777, 0o640 & !umask, "mode");
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(back == data, "tmpfile read back differs");
    assert!(std::fs::read_dir(v.mnt.join("d")).unwrap().next().is_none());
    let lost = md.ino();
    assert!(allocated(&v.mnt, lost), "the open tmpfile's inode");
    f.sync_all().unwrap();
    drop(f);
    wait_gone(&v.mnt, lost, "closed tmpfile");

    // Linked: a name, nlink 1, the data, still there after a remount.
    let mut g = tmpfile(&v.mnt.join("d"));
    g.write_all(b"kept").unwrap();
    link_at(&g, &v.mnt.join("d/kept")).unwrap();
    assert_eq!(g.metadata().unwrap().nlink(), 1);
    let kept = g.metadata().unwrap().ino();
    // The name is taken: a second link of the same file gets EEXIST.
    let e = link_at(&g, &v.mnt.join("d/kept")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    drop(g);
    d.unmount();
    v.assert_clean("after tmpfiles");
    let d = Daemon::start(&v);
    let md = std::fs::metadata(v.mnt.join("d/kept")).unwrap();
    assert_eq!((md.ino(), md.nlink()), (kept, 1));
    assert_eq!(std::fs::read(v.mnt.join("d/kept")).unwrap(), b"kept");
    assert!(!allocated(&v.mnt, lost));
    d.unmount();
    v.assert_clean("after the remount");
}

#[test]
fn tmpfile_of_a_killed_daemon_is_deleted_by_the_next_mount() {
    if skip_without_fuse("tmpfile_of_a_killed_daemon_is_deleted_by_the_next_mount") {
        return;
    }
    let v = Volume::new();
    let mut d = Daemon::start(&v);
    let mut f = tmpfile(&v.mnt);
    f.write_all(&[5u8; 65536]).unwrap();
    // Committed: the inode and its orphan item are on disk.
    f.sync_all().unwrap();
    let ino = f.metadata().unwrap().ino();
    d.child.kill().unwrap();
    d.wait();
    drop(f);
    drop(d);
    v.assert_clean("an orphan left by a crash");
    let d = Daemon::start_on(&v, &v.mnt, Some("orphan_scan_delay_ms=100"));
    wait_gone(&v.mnt, ino, "orphan scan");
    d.unmount();
    v.assert_clean("after the orphan scan");
}
