//! Opening devices and the synchronous syscalls shared by the `file` and
//! `uring` drivers.
//!
//! What it guarantees: [`open_device`] returns a read-write (or, when asked,
//! read-only) descriptor for a regular file or a block device, with the size
//! fixed at open (fstat for files, `BLKGETSIZE64` for block devices), and with
//! the exclusivity the options asked for (`O_EXCL` for block devices, a
//! non-blocking `flock(LOCK_EX)` held for the life of the descriptor for files,
//! `EBUSY` when someone else holds it). The transfer helpers loop over short
//! transfers and `EINTR` so that a call either moves every byte or fails.
//!
//! It touches only the OS; it knows nothing of futures or rings.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

// Block-device ioctls (linux/fs.h). The `_IOR` encoding below holds for the
// architectures whose ioctl numbers use the generic layout (x86_64, aarch64,
// riscv64, loongarch64), which are the ones this project runs on.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272; // _IOR(0x12, 114, u64)
const BLKDISCARD: libc::c_ulong = 0x1277; // _IO(0x12, 119)
const BLKZEROOUT: libc::c_ulong = 0x127f; // _IO(0x12, 127)
const BLKSSZGET: libc::c_ulong = 0x1268; // _IO(0x12, 104)

/// Largest chunk of zeros written at once when discard falls back to writes.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// How to open a device; shared by [`crate::file::FileDevice`] and
/// [`crate::uring::UringDevice`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open with `O_DIRECT` (bypass the page cache). Requires a filesystem or
    /// device that supports it and a logical sector size ≤ 4 KiB.
    pub direct: bool,
    /// Refuse to share the device: `O_EXCL` for block devices (the kernel's
    /// exclusive claim, which also conflicts with mounts), a non-blocking
    /// `flock(LOCK_EX)` for regular files. Fails with `EBUSY` when taken.
    pub exclusive: bool,
    /// Open `O_RDONLY`, for tools that only look (print, check): writes and
    /// discards then fail with `EBADF`.
    pub read_only: bool,
}

impl Default for OpenOptions {
    /// Buffered, not exclusive: the embedded default on image files.
    fn default() -> Self {
        Self {
            direct: false,
            exclusive: false,
            read_only: false,
        }
    }
}

impl OpenOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    pub fn exclusive(mut self, on: bool) -> Self {
        self.exclusive = on;
        self
    }

    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }
}

/// An open device: the descriptor, its fixed size and what kind it is.
#[derive(Debug)]
pub(crate) struct OpenedDevice {
    pub file: File,
    pub size_bytes: u64,
    pub is_block: bool,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Opens `path` read-write (read-only if asked) as described in the module
/// comment.
pub(crate) fn open_device(path: &Path, opts: &OpenOptions) -> io::Result<OpenedDevice> {
    // Look first (without opening) so O_EXCL is only given to block devices:
    // on a regular file without O_CREAT its meaning is undefined.
    let is_block = std::fs::metadata(path)?.file_type().is_block_device();
    let mut flags = libc::O_CLOEXEC;
    if opts.direct {
        flags |= libc::O_DIRECT;
    }
    if opts.exclusive && is_block {
        flags |= libc::O_EXCL;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .custom_flags(flags)
        .open(path)?;
    let meta = file.metadata()?;
    let size_bytes = if meta.file_type().is_block_device() {
        block_size_bytes(&file)?
    } else if meta.file_type().is_file() {
        if opts.exclusive {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                return Err(match err.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => errno(libc::EBUSY),
                    _ => err,
                });
            }
        }
        meta.len()
    } else {
        return Err(errno(libc::ENODEV));
    };
    if is_block {
        let sector = logical_sector_bytes(&file)?;
        if sector as usize > crate::IO_ALIGN_BYTES {
            return Err(errno(libc::EINVAL));
        }
    }
    Ok(OpenedDevice {
        file,
        size_bytes,
        is_block,
    })
}

fn block_size_bytes(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live local of that type.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn logical_sector_bytes(file: &File) -> io::Result<u32> {
    let mut sector: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut sector as *mut libc::c_int) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sector as u32)
}

/// Reads exactly `buf.len()` bytes at `offset`; end of file inside the range
/// is `EIO` (the size was fixed at open, so it means the file shrank).
pub(crate) fn pread_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    // read_exact_at loops over short reads and EINTR.
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => errno(libc::EIO),
        _ => e,
    })
}

/// Writes all of `buf` at `offset`, looping over short writes and `EINTR`.
pub(crate) fn pwrite_full(file: &File, offset: u64, buf: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset).map_err(|e| match e.kind() {
        io::ErrorKind::WriteZero => errno(libc::EIO),
        _ => e,
    })
}

/// `fdatasync`, retried on `EINTR`.
pub(crate) fn fdatasync(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a descriptor we own.
        let rc = unsafe { libc::fdatasync(file.as_raw_fd()) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

/// Discards `[offset, offset + len)` so that it reads back as zeros.
///
/// Files: `fallocate(PUNCH_HOLE | KEEP_SIZE)`. Block devices: `BLKDISCARD`,
/// which on loop devices punches holes in the backing file (zeros); on other
/// devices a discard may leave old data, so the caller's contract is
/// "unspecified contents". When the device refuses (`EOPNOTSUPP`), block
/// devices try `BLKZEROOUT` and then everything falls back to writing zeros.
pub(crate) fn discard(dev: &OpenedDevice, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let fd = dev.file.as_raw_fd();
    let first = if dev.is_block {
        block_range_ioctl(fd, BLKDISCARD, offset, len)
    } else {
        punch_hole(fd, offset, len)
    };
    match first {
        Ok(()) => return Ok(()),
        Err(err) if !is_unsupported(&err) => return Err(err),
        Err(_) => {}
    }
    if dev.is_block {
        match block_range_ioctl(fd, BLKZEROOUT, offset, len) {
            Ok(()) => return Ok(()),
            Err(err) if !is_unsupported(&err) => return Err(err),
            Err(_) => {}
        }
    }
    write_zeros(&dev.file, offset, len)
}

fn punch_hole(fd: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn block_range_ioctl(fd: libc::c_int, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD/BLKZEROOUT read two u64s (start, length) through the
    // pointer, which points at a live local array of exactly that shape.
    let rc = unsafe { libc::ioctl(fd, req, range.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn write_zeros(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    // An aligned buffer works with and without O_DIRECT.
    let chunk = ZERO_FILL_CHUNK_BYTES.min(len as usize);
    let zeros = crate::AlignedBuf::new(chunk);
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(chunk as u64) as usize;
        pwrite_full(file, offset, &zeros[..n])?;
        offset += n as u64;
    }
    Ok(())
}
