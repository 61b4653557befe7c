//! Our own dispatch of the FUSE requests fuse-backend-rs 0.14's `Server`
//! cannot serve, in front of it on the /dev/fuse loop (DEPENDENCIES.md:
//! its ABI structs and `Reader`/`Writer`, our own dispatch where its
//! `Server` falls short).
//!
//! * `FUSE_INIT`: its `Server` keeps only the flags its `FsOptions` knows
//!   (protocol 7.33) and drops the rest, so `FUSE_DIRECT_IO_ALLOW_MMAP`
//!   (shared mmap of our direct-I/O files) and `FUSE_SETXATTR_EXT` (the
//!   SGID rule of setfacl) could never be negotiated. We answer INIT here
//!   with every flag [`ScoutFuse::init_flags`] wants, the same limits its
//!   `Server` would give.
//! * `FUSE_TMPFILE` (opcode 51, unknown to it: ENOSYS): decoded like
//!   CREATE and answered with `entry_out` + `open_out`
//!   ([`ScoutFuse::tmpfile`]).
//! * `FUSE_SETXATTR` once `SETXATTR_EXT` is on: the kernel then sends the
//!   longer `fuse_setxattr_in` its `Server` would misparse.
//! * `FUSE_INTERRUPT` (which it drops): handed to [`OnInterrupt`] with the
//!   interrupted request's unique id; no reply (the request answers).
//!
//! Everything else goes on to the `Server` ([`Handled::PassOn`]).
//! Guarantees: a malformed request gets EINVAL (or EIO), never a panic;
//! every request handled here gets exactly one reply (INTERRUPT none).
//!
//! Touches [`crate::filesystem`] and the reply side of /dev/fuse.

use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, InitIn2, InitOut, InterruptIn, OpenOut, OutHeader,
};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::transport::{FuseDevWriter, Reader};
use vm_memory::ByteValued;

use crate::filesystem::{OnInterrupt, ScoutFuse};

/// Opcodes we take ourselves (include/uapi/linux/fuse.h).
const OP_SETXATTR: u32 = 21;
const OP_INIT: u32 = 26;
const OP_INTERRUPT: u32 = 36;
const OP_TMPFILE: u32 = 51;

/// The protocol we speak: 7.33, as fuse-backend-rs's structs are laid out
/// (the kernel keeps to the older layouts for a lower minor; the flags we
/// add are honoured whatever the minor).
const KERNEL_MAJOR: u32 = 7;
const KERNEL_MINOR: u32 = 33;
/// `fuse_init_in.flags`: `flags2` follows (fuse.h FUSE_INIT_EXT).
const INIT_EXT: u64 = 1 << 30;
/// `fuse_init_out` sizes of protocols before 7.5 and 7.23 (fuse.h).
const COMPAT_INIT_OUT_BYTES: usize = 8;
const COMPAT_22_INIT_OUT_BYTES: usize = 24;
/// Pages per request, as fuse-backend-rs's session buffer holds (1 MiB).
const MAX_PAGES: u16 = 256;
const PAGE_BYTES: u32 = 4096;
/// `fuse_setxattr_in.setxattr_flags`: clear S_ISGID (the caller is
/// outside the owning group and lacks CAP_FSETID).
const SETXATTR_ACL_KILL_SGID: u32 = 1;
/// fuse.h FUSE_SETXATTR_EXT.
pub const FLAG_SETXATTR_EXT: u64 = 1 << 29;
/// fuse.h FUSE_DIRECT_IO_ALLOW_MMAP (flags2 bit 4).
pub const FLAG_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;

/// What [`Dispatch::handle`] did with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Answered here (or, for INTERRUPT, needs no answer).
    Done,
    /// Not ours: the `Server` answers it.
    PassOn,
}

/// `fuse_setxattr_in` of SETXATTR_EXT (fuse.h, 7.33).
#[repr(C)]
#[derive(Debug, Default, Copy, Clone)]
struct SetxattrInExt {
    size: u32,
    flags: u32,
    setxattr_flags: u32,
    padding: u32,
}
// SAFETY: plain integers, no padding, every bit pattern valid.
unsafe impl ByteValued for SetxattrInExt {}

/// The dispatch in front of the `Server` of one session.
pub struct Dispatch {
    fs: Arc<ScoutFuse>,
    on_interrupt: OnInterrupt,
    /// SETXATTR_EXT was negotiated: SETXATTR requests carry the long
    /// header.
    setxattr_ext: AtomicBool,
}

impl Dispatch {
    pub fn new(fs: Arc<ScoutFuse>) -> Dispatch {
        let on_interrupt = fs.on_interrupt();
        Dispatch {
            fs,
            on_interrupt,
            setxattr_ext: AtomicBool::new(false),
        }
    }

    /// Whether a request with this header is ours (cheap: only the opcode).
    pub fn wants(&self, h: &InHeader) -> bool {
        match h.opcode {
            OP_INIT | OP_INTERRUPT | OP_TMPFILE => true,
            OP_SETXATTR => self.setxattr_ext.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Handles the request whose header `h` was just read from `r` (which
    /// holds the rest), answering through `w`.
    pub fn handle(
        &self,
        h: &InHeader,
        mut r: Reader<'_>,
        w: &mut FuseDevWriter<'_>,
    ) -> io::Result<Handled> {
        match h.opcode {
            OP_INTERRUPT => {
                if let Ok(i) = r.read_obj::<InterruptIn>() {
                    (self.on_interrupt)(i.unique);
                }
                Ok(Handled::Done)
            }
            OP_INIT => self.init(h, r, w),
            OP_TMPFILE => {
                let res = read_create(&mut r).and_then(|args| {
                    self.fs.tmpfile(&Context::from(h), h.nodeid, args).map(
                        |(entry, fh, open_flags)| {
                            let mut body = EntryOut::from(entry).as_slice().to_vec();
                            let open = OpenOut {
                                fh,
                                open_flags,
                                ..Default::default()
                            };
                            body.extend_from_slice(open.as_slice());
                            body
                        },
                    )
                });
                reply(w, h.unique, res).map(|_| Handled::Done)
            }
            OP_SETXATTR if self.setxattr_ext.load(Ordering::Acquire) => {
                let res = self.setxattr(h, &mut r).map(|()| Vec::new());
                reply(w, h.unique, res).map(|_| Handled::Done)
            }
            _ => Ok(Handled::PassOn),
        }
    }

    fn init(
        &self,
        h: &InHeader,
        mut r: Reader<'_>,
        w: &mut FuseDevWriter<'_>,
    ) -> io::Result<Handled> {
        let Ok(i) = r.read_obj::<InitIn>() else {
            return reply(w, h.unique, Err(errno(libc::EINVAL))).map(|_| Handled::Done);
        };
        if i.major != KERNEL_MAJOR {
            // Older or newer majors: the Server's own version dance.
            return Ok(Handled::PassOn);
        }
        let mut capable = u64::from(i.flags);
        if capable & INIT_EXT != 0 {
            match r.read_obj::<InitIn2>() {
                Ok(i2) => capable |= u64::from(i2.flags2) << 32,
                Err(_) => {
                    return reply(w, h.unique, Err(errno(libc::EINVAL))).map(|_| Handled::Done)
                }
            }
        }
        // INIT_EXT echoed: the kernel reads `flags2` (the high flags) only
        // when the reply's flags carry it.
        let enabled = capable & (self.fs.init_flags() | INIT_EXT);
        self.setxattr_ext
            .store(enabled & FLAG_SETXATTR_EXT != 0, Ordering::Release);
        let out = InitOut {
            major: KERNEL_MAJOR,
            minor: KERNEL_MINOR,
            max_readahead: i.max_readahead,
            flags: enabled as u32,
            // The kernel may keep that many requests in flight; the
            // worker pool grows to meet them.
            max_background: u16::MAX,
            congestion_threshold: (u16::MAX / 4) * 3,
            max_write: u32::from(MAX_PAGES) * PAGE_BYTES,
            time_gran: 1,
            max_pages: MAX_PAGES,
            flags2: (enabled >> 32) as u32,
            ..Default::default()
        };
        // Kernels older than 7.23 (7.5) take a shorter init_out.
        let size = match i.minor {
            0..=4 => COMPAT_INIT_OUT_BYTES,
            5..=22 => COMPAT_22_INIT_OUT_BYTES,
            _ => size_of::<InitOut>(),
        };
        let body = out.as_slice()[..size].to_vec();
        reply(w, h.unique, Ok(body)).map(|_| Handled::Done)
    }

    fn setxattr(&self, h: &InHeader, r: &mut Reader<'_>) -> io::Result<()> {
        let a = r
            .read_obj::<SetxattrInExt>()
            .map_err(|_| errno(libc::EINVAL))?;
        let body = read_rest(h, r, size_of::<SetxattrInExt>())?;
        let nul = body
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| errno(libc::EINVAL))?;
        let (name, value) = body.split_at(nul + 1);
        if value.len() != a.size as usize {
            return Err(errno(libc::EINVAL));
        }
        let name = CStr::from_bytes_with_nul(name).map_err(|_| errno(libc::EINVAL))?;
        let kill_sgid = a.setxattr_flags & SETXATTR_ACL_KILL_SGID != 0;
        self.fs
            .setxattr_with(&Context::from(h), h.nodeid, name, value, a.flags, kill_sgid)
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `fuse_create_in` and the name after it (a tmpfile's is "/": unused).
fn read_create(r: &mut Reader<'_>) -> io::Result<CreateIn> {
    r.read_obj::<CreateIn>().map_err(|_| errno(libc::EINVAL))
}

/// The request's bytes after its header and a `sub` byte argument.
fn read_rest(h: &InHeader, r: &mut Reader<'_>, sub: usize) -> io::Result<Vec<u8>> {
    let len = (h.len as usize)
        .checked_sub(size_of::<InHeader>() + sub)
        .ok_or_else(|| errno(libc::EINVAL))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|_| errno(libc::EINVAL))?;
    Ok(buf)
}

/// Writes one reply (header and body in one write, as /dev/fuse wants).
fn reply(w: &mut FuseDevWriter<'_>, unique: u64, res: io::Result<Vec<u8>>) -> io::Result<()> {
    let (error, body) = match res {
        Ok(b) => (0, b),
        Err(e) => (-e.raw_os_error().unwrap_or(libc::EIO), Vec::new()),
    };
    let hdr = OutHeader {
        len: (size_of::<OutHeader>() + body.len()) as u32,
        error,
        unique,
    };
    let mut msg = hdr.as_slice().to_vec();
    msg.extend_from_slice(&body);
    let n = w.write(&msg)?;
    if n != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of a FUSE reply",
        ));
    }
    Ok(())
}
