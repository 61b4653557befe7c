//! Synchronous reads for the offline checker (and the offline tools).
//!
//! The checker walks a volume depth first with plain recursion, so it reads
//! through a [`BlockDevice`] one block at a time and waits for each read with
//! [`block_on`]. Every driver's futures either complete at their first poll
//! (`file`), wake themselves until done (`fault` with a completion delay, and
//! `uring` when no executor drives its ring), so a thread-parking `block_on`
//! is enough. It must not be called from inside an executor task whose
//! executor parks on the same io_uring ring: nobody would reap the ring.
//!
//! Touches `drivers` only.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use drivers::{AlignedBuf, BlockDevice, IO_ALIGN_BYTES};

use crate::format::{LG_BLOCK_SIZE, SM_BLOCK_SIZE};

/// Runs `future` to completion on the calling thread, parking it while the
/// future is pending.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Reads `len` bytes at byte `offset`. Offset and length must be multiples
/// of [`IO_ALIGN_BYTES`]; a range past the device end is an error
/// (`EINVAL` from the driver), never a panic.
pub fn read_bytes(dev: &dyn BlockDevice, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    check_len(len)?;
    let (buf, res) = block_on(dev.read_at(offset, AlignedBuf::new(len)));
    res?;
    Ok(buf.to_vec())
}

/// Writes all of `bytes` at byte `offset` (same alignment rules as reads).
pub fn write_bytes(dev: &dyn BlockDevice, offset: u64, bytes: &[u8]) -> io::Result<()> {
    check_len(bytes.len())?;
    let (_, res) = block_on(dev.write_at(offset, AlignedBuf::from_slice(bytes)));
    res
}

/// Makes every completed write durable.
pub fn flush(dev: &dyn BlockDevice) -> io::Result<()> {
    block_on(dev.flush())
}

/// `AlignedBuf` asserts its length; turn a bad one into `EINVAL` first.
fn check_len(len: usize) -> io::Result<()> {
    if len == 0 || !len.is_multiple_of(IO_ALIGN_BYTES) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

fn block_offset(blkno: u64, size: usize) -> io::Result<u64> {
    blkno
        .checked_mul(size as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Reads one large (64 KiB) metadata block.
pub fn read_lg(dev: &dyn BlockDevice, blkno: u64) -> io::Result<Vec<u8>> {
    read_bytes(dev, block_offset(blkno, LG_BLOCK_SIZE)?, LG_BLOCK_SIZE)
}

/// Reads one small (4 KiB) block.
pub fn read_sm(dev: &dyn BlockDevice, blkno: u64) -> io::Result<Vec<u8>> {
    read_bytes(dev, block_offset(blkno, SM_BLOCK_SIZE)?, SM_BLOCK_SIZE)
}
