//! Device access for the offline tools.
//!
//! All reads and writes go through [`Device`] (`read_at`/`write_at`), so the
//! backing can change in one place (e.g. to `drivers::file::FileDevice`) and
//! tests can put an in-memory overlay over a real image. Reads past the end
//! of a device are errors, never panics.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// Positioned byte access to one device.
pub trait Device {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn sync(&self) -> io::Result<()>;
}

/// A regular file or block device.
pub struct FileDev {
    file: File,
}

impl FileDev {
    pub fn open(path: &Path, write: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(FileDev { file })
    }
}

/// Size of a block device through BLKGETSIZE64.
fn blkdev_size(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the life of `file`, and BLKGETSIZE64 writes
    // exactly one u64 through the pointer, which points at a live local.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl Device for FileDev {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn size(&self) -> io::Result<u64> {
        let md = self.file.metadata()?;
        if md.file_type().is_block_device() {
            blkdev_size(&self.file)
        } else if md.is_file() {
            Ok(md.len())
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A device whose reads see `patches` (offset, bytes) over a base device;
/// used by tests to corrupt an image without copying it.
pub struct Overlay<'a> {
    pub base: &'a dyn Device,
    pub patches: Vec<(u64, Vec<u8>)>,
}

impl Device for Overlay<'_> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.base.read_at(buf, off)?;
        let end = off + buf.len() as u64;
        for (poff, bytes) in &self.patches {
            let pend = poff + bytes.len() as u64;
            let lo = off.max(*poff);
            let hi = end.min(pend);
            if lo < hi {
                buf[(lo - off) as usize..(hi - off) as usize]
                    .copy_from_slice(&bytes[(lo - poff) as usize..(hi - poff) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _off: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }

    fn size(&self) -> io::Result<u64> {
        self.base.size()
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `len` bytes at `off`, failing cleanly past the device end.
pub fn read_vec(dev: &dyn Device, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, off)?;
    Ok(buf)
}

/// Reads one large (64 KiB) metadata block.
pub fn read_lg(dev: &dyn Device, blkno: u64) -> io::Result<Vec<u8>> {
    let off = blkno
        .checked_mul(engine::format::LG_BLOCK_SIZE as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    read_vec(dev, off, engine::format::LG_BLOCK_SIZE)
}

/// Reads one small (4 KiB) block.
pub fn read_sm(dev: &dyn Device, blkno: u64) -> io::Result<Vec<u8>> {
    let off = blkno
        .checked_mul(engine::format::SM_BLOCK_SIZE as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    read_vec(dev, off, engine::format::SM_BLOCK_SIZE)
}
