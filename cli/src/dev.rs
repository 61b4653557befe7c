//! Device access for the offline tools, through the `drivers` crate only.
//!
//! Devices are opened as [`drivers::FileDevice`]s and every read and write
//! goes through the [`BlockDevice`] trait (the `file` driver's futures
//! complete at their first poll, so the synchronous wrappers of
//! [`engine::check::io`] wait for them). print and check open read-only;
//! mkfs opens exclusively (a `flock` on files, `O_EXCL` on block devices), so
//! two mkfs runs on one device cannot interleave their writes. Tests can pass
//! any other [`BlockDevice`] (e.g. `drivers::FaultDevice`, or an overlay) to
//! the functions that take one. Reads past the end of a device are errors,
//! never panics.

use std::io;
use std::path::Path;

pub use drivers::{BlockDevice, FileDevice};
pub use engine::check::io::{flush, read_bytes, read_lg, read_sm, write_bytes};

/// Opens `path` read-only, for print and check.
pub fn open_read_only(path: &Path) -> io::Result<FileDevice> {
    FileDevice::open(path, &drivers::OpenOptions::new().read_only(true))
}

/// Opens `path` read-write and exclusively, for mkfs: `EBUSY` when another
/// process holds it.
pub fn open_exclusive(path: &Path) -> io::Result<FileDevice> {
    FileDevice::open(path, &drivers::OpenOptions::new().exclusive(true))
}
