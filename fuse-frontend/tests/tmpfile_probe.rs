//! O_TMPFILE on this kernel through our FUSE mount (docs/fuse.md): the
//! kernel (6.x) sends FUSE_TMPFILE (opcode 51), which fuse-backend-rs 0.14
//! does not dispatch (it answers ENOSYS), so the kernel reports EOPNOTSUPP
//! and remembers not to ask again. This probe pins that behaviour: a clean
//! EOPNOTSUPP (what programs such as `cp` and `systemd` fall back on), the
//! mount unharmed afterwards. If a newer fuse-backend-rs starts passing
//! the op through, this test fails and O_TMPFILE can be built.
//!
//! Needs root and /dev/fuse; skipped otherwise.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use support::{skip_without_fuse, Daemon, Volume};

#[test]
fn o_tmpfile_is_a_clean_eopnotsupp() {
    if skip_without_fuse("o_tmpfile_is_a_clean_eopnotsupp") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let dir = CString::new(v.mnt.as_os_str().as_bytes()).unwrap();
    for _ in 0..2 {
        // SAFETY: open with a valid NUL-terminated path; the fd is closed.
        let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
        let err = std::io::Error::last_os_error();
        if fd >= 0 {
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
        }
        assert_eq!(fd, -1, "O_TMPFILE now works: build it (docs/fuse.md)");
        assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");
    }
    std::fs::write(v.mnt.join("after"), b"still serving").unwrap();
    assert_eq!(
        std::fs::read(v.mnt.join("after")).unwrap(),
        b"still serving"
    );
    d.unmount();
    v.assert_clean("after the O_TMPFILE probe");
}
