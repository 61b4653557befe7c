//! The /dev/fuse side: mounting, the worker threads, unmounting.
//!
//! [`mount`] opens /dev/fuse and calls mount(2) itself (fuse-backend-rs's
//! own mount forces `nosuid,nodev`), with the options scoutfs mounts carry
//! (cli-contract: `fsname=<data device>`, type `fuse.scoutfs`,
//! `default_permissions`, `allow_other`, `dev`, `suid`). A dead FUSE mount
//! left on the directory by a crashed daemon (ENOTCONN) is detached first.
//!
//! [`Workers`] runs several threads that each read one request at a time
//! from the device and answer it through fuse-backend-rs's `Server`: with
//! the engine call of each parked in its own thread, that many requests
//! are in flight. When every worker is inside a request one more starts
//! (up to [`WORKERS_MAX`]): requests waiting for offline data may hold
//! their worker for as long as a restore takes. They all return once the kernel ends the connection
//! (unmount: the device read fails with ENODEV) or [`FuseSession::wake`]
//! is called.
//!
//! Each request's header is peeked first: the opcodes fuse-backend-rs's
//! `Server` cannot serve (INIT's newer flags, TMPFILE, INTERRUPT, the
//! long SETXATTR) go to [`crate::dispatch`], the rest to the `Server`.
//! Every request's unique id is published to the filesystem for the
//! duration of its handling ([`crate::filesystem::set_current_request`]),
//! so an operation that waits (for offline data) can be interrupted by
//! FUSE_INTERRUPT — a reader killed with SIGKILL stays in the kernel until
//! its request is answered.
//!
//! Touches the kernel (mount(2), umount2(2), /dev/fuse), the FUSE server
//! and our dispatch; nothing of the engine.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;

use crate::dispatch::{Dispatch, Handled};
use crate::filesystem::ScoutFuse;

/// Bytes of one request buffer: fuse-backend-rs's session buffer (256
/// pages and a header page). The kernel is told `max_read` of that size so
/// no READ reply outgrows it.
const MAX_READ_BYTES: usize = 256 * 4096 + 4096;

fn os_err(what: String, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// What the mount shows in /proc/mounts.
#[derive(Debug, Clone)]
pub struct MountSpec<'a> {
    pub mountpoint: &'a Path,
    /// The source column: the data device path, like a kernel scoutfs mount.
    pub fsname: &'a str,
    pub subtype: &'a str,
    pub allow_other: bool,
}

/// Detaches a dead FUSE mount (its daemon gone: ENOTCONN) from `dir`.
fn detach_stale(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let c = cstring(dir.as_os_str().as_bytes())?;
            // SAFETY: `c` is a valid NUL-terminated path for the call.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(os_err(
                    format!("detaching the stale mount on {}", dir.display()),
                    io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Mounts a FUSE filesystem on `spec.mountpoint` and returns a session
/// holding the connection.
pub fn mount(spec: &MountSpec<'_>) -> io::Result<FuseSession> {
    detach_stale(spec.mountpoint)?;
    let mut session = FuseSession::new(spec.mountpoint, spec.fsname, spec.subtype, false)
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
    let dir = session.mountpoint().to_path_buf();
    let md = std::fs::metadata(&dir).map_err(|e| os_err(format!("stat {}", dir.display()), e))?;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| os_err("open /dev/fuse".into(), e))?;
    let mut opts = format!(
        "default_permissions,fd={},rootmode={:o},user_id={},group_id={},max_read={}",
        dev.as_raw_fd(),
        md.mode() & libc::S_IFMT,
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        unsafe { libc::getuid() },
        // SAFETY: as above.
        unsafe { libc::getgid() },
        MAX_READ_BYTES,
    );
    if spec.allow_other {
        opts.push_str(",allow_other");
    }
    let source = cstring(spec.fsname.as_bytes())?;
    let target = cstring(dir.as_os_str().as_bytes())?;
    let fstype = cstring(format!("fuse.{}", spec.subtype).as_bytes())?;
    let data = cstring(opts.as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; flags 0 asks for dev, suid, exec and read-write.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(os_err(
            format!("mount {} on {}", spec.fsname, dir.display()),
            io::Error::last_os_error(),
        ));
    }
    set_nonblocking(&dev)?;
    session.set_fuse_file(dev);
    Ok(session)
}

/// The channels poll the device and read it without blocking, as
/// fuse-backend-rs's own mount sets it up.
fn set_nonblocking(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os_err("fcntl /dev/fuse".into(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Lazily unmounts `dir` (the daemon's own unmount on SIGTERM: processes
/// still inside see the connection end when the daemon exits).
pub fn unmount_lazy(dir: &Path) -> io::Result<()> {
    let c = cstring(dir.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // Already gone (unmounted from outside) is fine.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(os_err(format!("unmount {}", dir.display()), e));
        }
    }
    Ok(())
}

/// Most FUSE worker threads a session grows to. Requests waiting for
/// offline data keep their worker; the pool grows when every worker is
/// busy, so waiting readers never leave the stager (which must open the
/// file through FUSE) or anyone else without a worker.
pub const WORKERS_MAX: usize = 256;

/// What every worker of a session shares.
struct Pool {
    session: Arc<FuseSession>,
    server: Arc<Server<Arc<ScoutFuse>>>,
    dispatch: Dispatch,
    /// Workers started, and workers inside a request.
    started: AtomicUsize,
    busy: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts one more worker (unless at [`WORKERS_MAX`]).
    fn grow(self: &Arc<Self>) -> io::Result<()> {
        let nr = self.started.fetch_add(1, Ordering::AcqRel);
        if nr >= WORKERS_MAX {
            self.started.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
        let mut ch = match self.session.new_channel() {
            Ok(ch) => ch,
            Err(e) => {
                self.started.fetch_sub(1, Ordering::AcqRel);
                return Err(io::Error::other(e.to_string()));
            }
        };
        let pool = self.clone();
        // FUSE workers block in the kernel (device reads) and on their
        // engine call by design: they are the frontend's own threads,
        // not engine code.
        #[allow(clippy::disallowed_methods)]
        let t = std::thread::Builder::new()
            .name(format!("scoutfs-fuse-{nr}"))
            .spawn(move || serve_channel(&mut ch, &pool));
        match t {
            Ok(t) => {
                self.threads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t);
                Ok(())
            }
            Err(e) => {
                self.started.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}

/// The worker threads of one session.
pub struct Workers {
    pool: Arc<Pool>,
}

impl Workers {
    /// Starts `count` threads serving `session` with `fs` (through our
    /// dispatch and fuse-backend-rs's `Server`); more start while all are
    /// busy (up to [`WORKERS_MAX`]).
    pub fn start(
        session: Arc<FuseSession>,
        fs: Arc<ScoutFuse>,
        count: usize,
    ) -> io::Result<Workers> {
        let pool = Arc::new(Pool {
            session,
            server: Arc::new(Server::new(fs.clone())),
            dispatch: Dispatch::new(fs),
            started: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        for _ in 0..count.clamp(1, WORKERS_MAX) {
            pool.grow()?;
        }
        Ok(Workers { pool })
    }

    /// Workers started so far (tests).
    pub fn count(&self) -> usize {
        self.pool.started.load(Ordering::Acquire)
    }

    /// Waits until every worker has returned (those started meanwhile
    /// too).
    pub fn join(self) {
        loop {
            let t = self
                .pool
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            match t {
                Some(t) => {
                    let _ = t.join();
                }
                None => return,
            }
        }
    }
}

fn serve_channel(ch: &mut fuse_backend_rs::transport::FuseChannel, pool: &Arc<Pool>) {
    use fuse_backend_rs::abi::fuse_abi::InHeader;
    use fuse_backend_rs::Error as FuseError;
    loop {
        match ch.get_request() {
            Ok(Some((reader, mut writer))) => {
                let mut peek = reader.clone();
                let header = peek.read_obj::<InHeader>().ok();
                let ours = header.filter(|h| pool.dispatch.wants(h));
                if let Some(h) = &ours {
                    if h.opcode == fuse_backend_rs::abi::fuse_abi::Opcode::Interrupt as u32 {
                        // Quick and without a reply: not counted as busy.
                        let _ = pool.dispatch.handle(h, peek, &mut writer);
                        continue;
                    }
                }
                let busy = pool.busy.fetch_add(1, Ordering::AcqRel) + 1;
                if busy >= pool.started.load(Ordering::Acquire) {
                    // Every worker is inside a request (some may wait for
                    // offline data for long): keep one free to read.
                    if let Err(e) = pool.grow() {
                        eprintln!("scoutfsd: starting a FUSE worker failed: {e}");
                    }
                }
                crate::filesystem::set_current_request(
                    header.map_or(0, |h| h.unique),
                    header.map_or(0, |h| h.pid),
                );
                let handled = match &ours {
                    Some(h) => match pool.dispatch.handle(h, peek, &mut writer) {
                        Ok(Handled::Done) => Ok(()),
                        Ok(Handled::PassOn) => pool
                            .server
                            .handle_message(reader, writer.into(), None, None)
                            .map(|_| ()),
                        Err(e) => Err(FuseError::EncodeMessage(e)),
                    },
                    None => pool
                        .server
                        .handle_message(reader, writer.into(), None, None)
                        .map(|_| ()),
                };
                crate::filesystem::set_current_request(0, 0);
                pool.busy.fetch_sub(1, Ordering::AcqRel);
                match handled {
                    Ok(()) => {}
                    // The kernel no longer waits for this reply (the
                    // request was interrupted or the connection ended).
                    Err(FuseError::EncodeMessage(e))
                        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) => {}
                    Err(e) => eprintln!("scoutfsd: request failed: {e}"),
                }
            }
            Ok(None) => return,
            Err(e) => {
                // fuse-backend-rs reports the end of the connection
                // (unmount, abort) as an epoll error: not worth a word.
                let msg = e.to_string();
                if !msg.contains("epoll error") {
                    eprintln!("scoutfsd: reading /dev/fuse failed: {msg}");
                }
                return;
            }
        }
    }
}
