//! Block devices for the scoutfs engine.
//!
//! The engine reaches storage only through [`BlockDevice`]. Every driver takes
//! ownership of the I/O buffer for the life of the operation and hands it back
//! with the result, so an io_uring submission can never outlive the memory it
//! points at (a dropped future parks the buffer until the kernel completes it).
//!
//! Drivers here: `file` (pread/pwrite, optional O_DIRECT), `uring` (io_uring,
//! O_DIRECT, registered buffers) and `fault` (an in-memory device that keeps the
//! written and the durable image apart and injects faults, for crash tests and
//! the deterministic simulation).
//!
//! This crate knows nothing about the scoutfs format; it may not depend on the
//! engine.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

mod buf;
pub use buf::{AlignedBuf, BufPool};

pub mod fault;
pub mod file;
mod os;
pub mod uring;

pub use fault::{CrashMode, FaultConfig, FaultDevice};
pub use file::FileDevice;
pub use os::OpenOptions;
pub use uring::{UringDevice, UringRing};

/// Alignment every offset and length given to a [`BlockDevice`] must have: the
/// small scoutfs block, which is also the largest logical sector size we meet.
pub const IO_ALIGN_BYTES: usize = 4096;

/// A boxed, owned future: drivers return `'static` futures so that the caller
/// may hold them across awaits and the executor may move them freely.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of a read or write: the buffer always comes back, with or without
/// an error, so the caller can reuse it.
pub type BufResult = (AlignedBuf, io::Result<()>);

/// A device that stores bytes at aligned offsets.
///
/// Ordering contract: a write is durable only after a later [`flush`] has
/// completed. Writes that overlap and are in flight together have no defined
/// order; the engine never issues them.
///
/// [`flush`]: BlockDevice::flush
pub trait BlockDevice: Send + Sync + 'static {
    /// Reads `buf.len()` bytes at byte `offset` into `buf`. Both must be
    /// multiples of [`IO_ALIGN_BYTES`] and lie within [`size_bytes`].
    ///
    /// [`size_bytes`]: BlockDevice::size_bytes
    fn read_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult>;

    /// Writes all of `buf` at byte `offset`; same alignment rules as reads.
    fn write_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> IoFuture<io::Result<()>>;

    /// Tells the device the range no longer holds data. Reads of a discarded
    /// range return unspecified contents (zeros on every driver here).
    fn discard(&self, offset: u64, len: u64) -> IoFuture<io::Result<()>>;

    /// Size of the device in bytes.
    fn size_bytes(&self) -> u64;
}

/// What an executor calls when it has no runnable task: block until an I/O
/// completion or a wake-up arrives, or until `timeout` passes.
pub trait Park: Send + Sync + 'static {
    fn park(&self, timeout: Option<Duration>) -> io::Result<()>;

    /// Wakes a thread blocked in [`Park::park`] from any other thread.
    fn unpark(&self);
}

/// Checks the alignment contract of [`BlockDevice`]; drivers call it first so a
/// misaligned request is an `EINVAL`, never a partial or undefined transfer.
pub fn check_io(offset: u64, len: u64, size_bytes: u64) -> io::Result<()> {
    let align = IO_ALIGN_BYTES as u64;
    if !offset.is_multiple_of(align) || !len.is_multiple_of(align) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}
