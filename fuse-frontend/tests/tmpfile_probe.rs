//! Pins the kernel behaviour O_TMPFILE relies on (docs/fuse.md): this
//! kernel (6.x) sends FUSE_TMPFILE (opcode 51) for `open(dir, O_TMPFILE)`
//! and takes an `entry_out` + `open_out` answer as an open, unnamed file;
//! `linkat(AT_EMPTY_PATH)` then names it (FUSE_LINK of an nlink-0 inode
//! the kernel marked linkable). Needs root and /dev/fuse.
#![allow(clippy::disallowed_methods)]

mod support;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use support::{skip_without_fuse, Daemon, Volume};

#[test]
fn o_tmpfile_opens_and_linkat_names_it() {
    if skip_without_fuse("o_tmpfile_opens_and_linkat_names_it") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&v.mnt)
        .expect("O_TMPFILE");
    f.write_all(b"unnamed").unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let name = CString::new(v.mnt.join("named").as_os_str().as_bytes()).unwrap();
    let (fd, cwd, empty) = (f.as_raw_fd(), libc::AT_FDCWD, libc::AT_EMPTY_PATH);
    // SAFETY: valid descriptor and paths; "" with AT_EMPTY_PATH names `fd`.
    let r = unsafe { libc::linkat(fd, c"".as_ptr(), cwd, name.as_ptr(), empty) };
    assert_eq!(r, 0, "linkat: {}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().nlink(), 1);
    drop(f);
    assert_eq!(std::fs::read(v.mnt.join("named")).unwrap(), b"unnamed");
    d.unmount();
    v.assert_clean("after O_TMPFILE");
}
