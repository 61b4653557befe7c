//! The `file` driver: a regular file or block device reached with
//! pread/pwrite, optionally `O_DIRECT`. The simple embedded default on image
//! files.
//!
//! What it guarantees: every request is checked with [`check_io`] first
//! (`EINVAL` on misalignment or out of range); a read or write transfers every
//! byte or fails (short transfers and `EINTR` are retried); flush is
//! `fdatasync`; discarded ranges read back as zeros on files and loop devices
//! (see [`crate::os`] for other block devices).
//!
//! Blocking by design: the syscall runs synchronously inside the future's first
//! poll, so the calling (executor) thread blocks for the length of the I/O.
//! That keeps this driver trivial and dependency-free; use the `uring` driver
//! when a reactor must keep many I/Os in flight.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::os::{self, OpenOptions, OpenedDevice};
use crate::{check_io, AlignedBuf, BlockDevice, BufResult, IoFuture};

/// A device reached through pread/pwrite on one descriptor.
#[derive(Clone, Debug)]
pub struct FileDevice {
    inner: Arc<OpenedDevice>,
}

impl FileDevice {
    /// Opens `path` (regular file or block device) read-write, or read-only
    /// with [`OpenOptions::read_only`].
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> io::Result<Self> {
        let inner = os::open_device(path.as_ref(), opts)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Whether the path opened was a block device.
    pub fn is_block_device(&self) -> bool {
        self.inner.is_block
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, offset: u64, mut buf: AlignedBuf) -> IoFuture<BufResult> {
        let dev = Arc::clone(&self.inner);
        Box::pin(async move {
            let res = check_io(offset, buf.len() as u64, dev.size_bytes)
                .and_then(|()| os::pread_full(&dev.file, offset, &mut buf));
            (buf, res)
        })
    }

    fn write_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        let dev = Arc::clone(&self.inner);
        Box::pin(async move {
            let res = check_io(offset, buf.len() as u64, dev.size_bytes)
                .and_then(|()| os::pwrite_full(&dev.file, offset, &buf));
            (buf, res)
        })
    }

    fn flush(&self) -> IoFuture<io::Result<()>> {
        let dev = Arc::clone(&self.inner);
        Box::pin(async move { os::fdatasync(&dev.file) })
    }

    fn discard(&self, offset: u64, len: u64) -> IoFuture<io::Result<()>> {
        let dev = Arc::clone(&self.inner);
        Box::pin(async move {
            check_io(offset, len, dev.size_bytes)?;
            os::discard(&dev, offset, len)
        })
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }
}
