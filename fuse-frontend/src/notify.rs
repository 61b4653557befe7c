//! Notifications the daemon sends the kernel on its own (not as replies):
//! FUSE_NOTIFY_INVAL_INODE, so that attributes the kernel caches for
//! `attr_timeout` do not hide changes made outside a FUSE request (the
//! control socket's archive operations today; another mount's changes once
//! cluster locks invalidate inodes).
//!
//! Guarantees: a notification is one write(2) of `fuse_out_header` +
//! `fuse_notify_inval_inode_out` on the session's /dev/fuse descriptor;
//! ENOENT (the kernel does not know the inode) is not an error. It must
//! not be sent from a FUSE request's own thread while that request holds
//! the inode's lock in the kernel (the kernel would wait on itself): the
//! control thread is such a safe place.
//!
//! Touches only the /dev/fuse descriptor it was given.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// `FUSE_NOTIFY_INVAL_INODE` (linux/fuse.h `enum fuse_notify_code`).
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;

/// Sends notifications on a mount's /dev/fuse connection.
#[derive(Debug, Clone)]
pub struct KernelNotify {
    dev: Arc<File>,
}

impl KernelNotify {
    /// Notifications over `dev` (the session's /dev/fuse file).
    pub fn new(dev: Arc<File>) -> KernelNotify {
        KernelNotify { dev }
    }

    /// Drops the kernel's cached attributes and pages of `ino`.
    pub fn inval_inode(&self, ino: u64) -> io::Result<()> {
        const LEN: usize = 16 + 24;
        let mut msg = [0u8; LEN];
        msg[0..4].copy_from_slice(&(LEN as u32).to_le_bytes());
        msg[4..8].copy_from_slice(&FUSE_NOTIFY_INVAL_INODE.to_le_bytes());
        // unique 0: a notification. Body: ino, off 0, len 0 (whole file).
        msg[16..24].copy_from_slice(&ino.to_le_bytes());
        // SAFETY: writes `msg.len()` bytes from a live buffer to a
        // descriptor we hold open.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}
