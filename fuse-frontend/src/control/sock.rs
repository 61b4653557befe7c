//! Sockets of the control protocol: abstract `SOCK_SEQPACKET` unix
//! sockets named `@scoutfs/<ident>`, one message each way, a file
//! descriptor passed with `SCM_RIGHTS`, the peer's credentials from
//! `SO_PEERCRED`. Also where a mount's files live under `/run/scoutfs`
//! and how a path finds its mount's ident (st_dev → `by-dev/<maj>:<min>`).
//!
//! Used by the daemon's control thread and by every client; touches only
//! the kernel's socket calls.

use std::ffi::OsStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::proto::MSG_BYTES_MAX;

/// Where the daemons keep their status trees, unless `SCOUTFS_RUN_DIR`
/// says otherwise.
pub const RUN_DIR_DEFAULT: &str = "/run/scoutfs";

/// The directory of status trees (`$SCOUTFS_RUN_DIR` or `/run/scoutfs`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("SCOUTFS_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(RUN_DIR_DEFAULT))
}

/// `f.XXXXXX.r.YYYYYY`: the high 24 bits of fsid and rid in hex.
pub fn ident(fsid: u64, rid: u64) -> String {
    format!("f.{:06x}.r.{:06x}", fsid >> 40, rid >> 40)
}

/// The by-dev file naming the ident of the mount with this st_dev.
pub fn by_dev_path(major: u32, minor: u32) -> PathBuf {
    run_dir().join("by-dev").join(format!("{major}:{minor}"))
}

/// The ident of the scoutfs mount holding `path`, from its st_dev, or
/// None when no scoutfs daemon serves that device.
pub fn ident_of_path(path: &Path) -> io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)?;
    Ok(ident_of_dev(md.dev()))
}

/// The ident the by-dev file of `dev` (a st_dev) names.
pub fn ident_of_dev(dev: u64) -> Option<String> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let s = std::fs::read_to_string(by_dev_path(major, minor)).ok()?;
    let id = s.trim();
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn abstract_addr(ident: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let name = format!("scoutfs/{ident}");
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract: a leading NUL, then the name (not NUL-terminated).
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds and listens on `@scoutfs/<ident>`.
pub fn listen(ident: &str) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = abstract_addr(ident)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: listen on our own bound socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(fd)
}

/// Connects to `@scoutfs/<ident>`.
pub fn connect(ident: &str) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = abstract_addr(ident)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Accepts one connection (blocking).
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 on our listening socket; null address pointers are
    // allowed.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The connected peer's pid, uid and gid.
pub fn peer_cred(fd: &OwnedFd) -> io::Result<libc::ucred> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` has room for `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred)
}

/// Sets a receive timeout so a silent peer cannot hold the server.
pub fn set_recv_timeout(fd: &OwnedFd, secs: i64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Room for one descriptor's control message, aligned for cmsghdr.
#[repr(C)]
union CmsgBuf {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends one message, with `pass` in SCM_RIGHTS when given.
pub fn send(fd: &OwnedFd, msg: &[u8], pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
    match pass {
        Some(p) => send_fds(fd, msg, &[p]),
        None => send_fds(fd, msg, &[]),
    }
}

/// Descriptors one message carries at most (move-blocks passes two).
pub const PASS_FDS_MAX: usize = 2;

/// Sends one message with up to [`PASS_FDS_MAX`] descriptors in
/// SCM_RIGHTS.
pub fn send_fds(fd: &OwnedFd, msg: &[u8], pass: &[BorrowedFd<'_>]) -> io::Result<()> {
    if pass.len() > PASS_FDS_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // SAFETY: msghdr is plain data; fields are set below.
    let mut mh: libc::msghdr = unsafe { zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    if !pass.is_empty() {
        let data_len = (size_of::<RawFd>() * pass.len()) as u32;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        mh.msg_control = (&mut cbuf as *mut CmsgBuf).cast();
        mh.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf`, large enough for one
        // cmsghdr with PASS_FDS_MAX descriptors (space <= 64 bytes).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            for (i, p) in pass.iter().enumerate() {
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>().add(i), p.as_raw_fd());
            }
        }
    }
    // SAFETY: `mh` points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != msg.len() {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(())
}

/// Receives one message (at most [`MSG_BYTES_MAX`] bytes) and the
/// descriptor it carries, if any. A truncated message is EMSGSIZE; an
/// orderly shutdown with nothing sent is ECONNRESET.
pub fn recv(fd: &OwnedFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let (msg, fds) = recv_fds(fd)?;
    Ok((msg, fds.into_iter().next()))
}

/// [`recv`] keeping up to [`PASS_FDS_MAX`] descriptors, in the order
/// sent; any more a peer sent are closed.
pub fn recv_fds(fd: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MSG_BYTES_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; fields are set below.
    let mut mh: libc::msghdr = unsafe { zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    mh.msg_control = (&mut cbuf as *mut CmsgBuf).cast();
    mh.msg_controllen = 64;
    // SAFETY: `mh` points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut passed = Vec::new();
    // SAFETY: the kernel filled `mh.msg_control` with well-formed cmsgs
    // up to msg_controllen; CMSG_FIRSTHDR/NXTHDR stay inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    // Keep the first ones; close any extra a peer sent.
                    let owned = OwnedFd::from_raw_fd(raw);
                    if passed.len() < PASS_FDS_MAX {
                        passed.push(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    if mh.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    if n == 0 {
        return Err(io::Error::from_raw_os_error(libc::ECONNRESET));
    }
    buf.truncate(n as usize);
    Ok((buf, passed))
}

/// Whether a process exists and is not a zombie waiting to be reaped.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => !matches!(
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next()),
            Some("Z") | Some("X") | Some("x")
        ),
        Err(_) => false,
    }
}

/// `path` as bytes for messages.
pub fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Bytes from a message as a path.
pub fn bytes_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}
