//! The daemon's control socket and status tree (ARCHITECTURE §2.7): what
//! the original's ioctls and sysfs/debugfs files give its utilities.
//!
//! * [`Control::start`] binds the abstract unix socket `@scoutfs/<ident>`
//!   (`<ident>` = `f.XXXXXX.r.YYYYYY`, [`sock::ident`]), writes the status
//!   tree `/run/scoutfs/<ident>/` and `/run/scoutfs/by-dev/<maj>:<min>`
//!   (the ident, for clients that start from a path), and starts the
//!   control thread.
//! * The control thread serves one request per connection, one connection
//!   at a time ([`proto`] is the format, docs/control-socket.md the
//!   reference), and refreshes the counters every second. Each operation
//!   checks what the original's ioctl checked, with the peer's uid and pid
//!   from `SO_PEERCRED` and its effective capabilities from
//!   `/proc/<pid>/status`. A passed file descriptor is identified with
//!   `statx(AT_EMPTY_PATH | AT_STATX_DONT_SYNC)` and closed on this
//!   thread, never on the engine executor (closing a file of our own mount
//!   re-enters the daemon through FUSE). Engine work runs on the executor
//!   through the [`Bridge`], like a FUSE request.
//! * Queries of committed state (stat, walk-inodes) commit this mount's
//!   open transaction first, and walks stop at the server's last stable
//!   seq (reference §8.1), so `touch f; sync; scoutfs walk-inodes …` shows
//!   what the original shows.
//! * Unmount: the thread calls umount2 itself; on success it keeps the
//!   connection, and [`Stopped::reply_unmount`] answers it once the daemon
//!   has committed and said farewell.
//! * [`Control::stop`] ends the thread; [`StatusTree::remove`] removes the
//!   files. Status files left by a daemon that died are removed by the next
//!   daemon that starts ([`StatusTree::remove_stale`]).
//!
//! Touches `engine::fs`, `engine::trans::Mount` (commit, counters), the
//! server link (STATFS, GET_LAST_SEQ), [`crate::bridge`], the kernel
//! (sockets, statx, umount2) and the files under the run directory.

mod archive;
pub mod client;
pub mod proto;
pub mod sock;
mod tags;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::format::items::{EXTENT_FLAG_OFFLINE, EXTENT_FLAG_UNWRITTEN};
use engine::format::net::{Cmd, NetStatfs};
use engine::fs::{Fs, IndexKind};
use engine::link::ServerLink;
use engine::server::alloc::MetaBudget;
use engine::trans::Mount;
use zerocopy::FromBytes;

use crate::bridge::Bridge;
use crate::options::ScoutfsOptions;
use proto::{
    Dec, Enc, Op, StatReply, StatfsReply, WalkPos, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN,
    FIEMAP_EXTENT_UNWRITTEN, INDEX_DATA_SEQ, INDEX_META_SEQ, REFS_BYTES_MAX, REQ_HEADER_BYTES,
    REQ_MAGIC, WALK_BATCH_MAX,
};

/// How long the thread waits for a connection before looking at its stop
/// flag and the counters.
const POLL_MS: i32 = 250;
/// Counters are rewritten at most this often.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);
/// A client that connected must send its request within this.
const REQUEST_TIMEOUT_SECS: i64 = 5;
/// Referring entries per reply.
const REFS_BATCH_MAX: usize = 1024;
/// Inode numbers per GET_ALLOCATED_INOS reply (one lock group).
const ALLOCATED_MAX: usize = engine::fs::INODE_GROUP_NR as usize;

/// Capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;

/// What the control socket serves from: the mount's engine side.
#[derive(Clone)]
pub struct Engine {
    pub fs: Arc<Fs>,
    pub mount: Arc<Mount>,
    pub link: Arc<dyn ServerLink>,
    pub bridge: Bridge,
    /// Tells the kernel to drop cached attributes of inodes an operation
    /// here changed (None when there is no FUSE session, e.g. tests).
    pub notify: Option<crate::notify::KernelNotify>,
}

/// Who this mount is and what the status tree shows.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fsid: u64,
    pub rid: u64,
    pub fmt_vers: u64,
    /// Absolute mount point.
    pub mountpoint: PathBuf,
    /// The mount's st_dev (major, minor).
    pub dev: (u32, u32),
    pub datadev: PathBuf,
    pub options: ScoutfsOptions,
}

impl Identity {
    pub fn ident(&self) -> String {
        sock::ident(self.fsid, self.rid)
    }
}

/// Requests served, by outcome: the daemon's own counters.
#[derive(Default)]
struct OpCounters {
    served: AtomicU64,
    failed: AtomicU64,
    denied: AtomicU64,
}

/// The files under the run directory.
#[derive(Debug)]
pub struct StatusTree {
    dir: PathBuf,
    by_dev: PathBuf,
    ident: String,
}

fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl StatusTree {
    /// Writes the tree of `id` and its by-dev file.
    pub fn create(id: &Identity) -> io::Result<StatusTree> {
        let run = sock::run_dir();
        let ident = id.ident();
        let dir = run.join(&ident);
        std::fs::create_dir_all(run.join("by-dev"))?;
        // A dead daemon with the same ident (the same rid is unlikely but
        // possible) left this behind; our own cluster files
        // (fence_tree.rs) may be there already.
        let ours = std::fs::read_to_string(dir.join("pid"))
            .is_ok_and(|p| p.trim() == std::process::id().to_string());
        if !ours {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(dir.join("mount_options"))?;
        std::fs::create_dir_all(dir.join("counters"))?;
        let files = [
            ("fsid", format!("{:016x}\n", id.fsid)),
            ("rid", format!("{:016x}\n", id.rid)),
            ("pid", format!("{}\n", std::process::id())),
            ("format_version", format!("{}\n", id.fmt_vers)),
            (
                "mountpoint",
                format!("{}\n", id.mountpoint.to_string_lossy()),
            ),
            (
                "data_device_path",
                format!("{}\n", id.datadev.to_string_lossy()),
            ),
            (
                "data_device_maj_min",
                format!("{}:{}\n", id.dev.0, id.dev.1),
            ),
        ];
        for (name, text) in files {
            write_atomic(&dir.join(name), &text)?;
        }
        for (name, val) in id.options.status_entries() {
            write_atomic(&dir.join("mount_options").join(name), &format!("{val}\n"))?;
        }
        let by_dev = sock::by_dev_path(id.dev.0, id.dev.1);
        write_atomic(&by_dev, &format!("{ident}\n"))?;
        Ok(StatusTree { dir, by_dev, ident })
    }

    /// The tree's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rewrites every counter file whose value changed.
    fn write_counters(&self, counters: &[(&str, u64)], last: &mut Vec<(String, u64)>) {
        let dir = self.dir.join("counters");
        for (name, val) in counters {
            if last.iter().any(|(n, v)| n == name && v == val) {
                continue;
            }
            if write_atomic(&dir.join(name), &format!("{val}\n")).is_ok() {
                last.retain(|(n, _)| n != name);
                last.push((name.to_string(), *val));
            }
        }
    }

    /// Removes the tree and the by-dev file (if it still names us).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(s) = std::fs::read_to_string(&self.by_dev) {
            if s.trim() == self.ident {
                let _ = std::fs::remove_file(&self.by_dev);
            }
        }
    }

    /// Removes trees whose daemon is gone (killed) and by-dev files that
    /// name no tree.
    pub fn remove_stale() {
        let run = sock::run_dir();
        let Ok(entries) = std::fs::read_dir(&run) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name() == "by-dev" || !p.is_dir() {
                continue;
            }
            let pid = std::fs::read_to_string(p.join("pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if pid.is_some_and(|pid| !sock::process_alive(pid)) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        if let Ok(devs) = std::fs::read_dir(run.join("by-dev")) {
            for e in devs.flatten() {
                // Another daemon starting right now writes its by-dev file
                // as `NAME.tmp` before renaming it: empty or not, that
                // file is not stale (removing it failed that daemon's
                // start with ENOENT). One left by a crash goes once old.
                let tmp = e.path().extension().is_some_and(|x| x == "tmp");
                if tmp && !older_than(&e.path(), STALE_TMP_AGE) {
                    continue;
                }
                let named = std::fs::read_to_string(e.path()).unwrap_or_default();
                let named = named.trim();
                if named.is_empty() || !run.join(named).is_dir() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// How old a by-dev temporary file must be before it counts as left
/// behind by a crash.
const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `path` was last modified more than `age` ago (file times are
/// wall-clock times: the frontend reads the real clock).
#[allow(clippy::disallowed_methods)]
fn older_than(path: &Path, age: std::time::Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e > age)
}

/// What the control thread shares with the daemon.
struct Shared {
    stop: AtomicBool,
    /// The connection of an accepted UNMOUNT, answered after farewell.
    unmount: Mutex<Option<OwnedFd>>,
    ops: OpCounters,
}

/// The running control thread.
pub struct Control {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    status: Option<StatusTree>,
}

/// What is left once the thread stopped.
pub struct Stopped {
    unmount: Option<OwnedFd>,
    status: Option<StatusTree>,
}

impl Control {
    /// Binds the socket, writes the status tree and starts the thread.
    pub fn start(id: Identity, engine: Engine) -> io::Result<Control> {
        StatusTree::remove_stale();
        let ident = id.ident();
        let listener = sock::listen(&ident).map_err(|e| {
            io::Error::new(e.kind(), format!("control socket @scoutfs/{ident}: {e}"))
        })?;
        let status = StatusTree::create(&id)
            .map_err(|e| io::Error::new(e.kind(), format!("status tree for {ident}: {e}")))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            unmount: Mutex::new(None),
            ops: OpCounters::default(),
        });
        let thread_shared = shared.clone();
        let counters_dir = StatusTree {
            dir: status.dir.clone(),
            by_dev: status.by_dev.clone(),
            ident: status.ident.clone(),
        };
        // The control thread blocks in accept/poll and waits on engine
        // results: a daemon thread, not engine code.
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::Builder::new()
            .name("scoutfs-control".into())
            .spawn(move || serve(listener, id, engine, thread_shared, counters_dir))?;
        Ok(Control {
            shared,
            thread: Some(thread),
            status: Some(status),
        })
    }

    /// Ends the thread (waiting for a request in progress); keeps an
    /// accepted unmount's connection for [`Stopped::reply_unmount`]. Must
    /// not be called while the engine executor is idle: a request in
    /// progress waits for it.
    pub fn stop(mut self) -> Stopped {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let unmount = self
            .shared
            .unmount
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Stopped {
            unmount,
            status: self.status.take(),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(s) = self.status.take() {
            s.remove();
        }
    }
}

impl Stopped {
    /// Answers an unmount request with the daemon's final status (0, or
    /// the errno of a failed commit or farewell).
    pub fn reply_unmount(&mut self, errno: i32) {
        if let Some(conn) = self.unmount.take() {
            let mut e = Enc::default();
            e.i32(errno);
            let _ = sock::send(&conn, &e.0, None);
        }
    }

    /// Removes the status tree.
    pub fn remove_status(&mut self) {
        if let Some(s) = self.status.take() {
            s.remove();
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.remove_status();
    }
}

/// The control thread's loop.
fn serve(listener: OwnedFd, id: Identity, engine: Engine, shared: Arc<Shared>, status: StatusTree) {
    let mut last_counters: Vec<(String, u64)> = Vec::new();
    // (monotonic) time of the last counters write, as poll rounds.
    let mut since = COUNTERS_INTERVAL;
    let round = Duration::from_millis(POLL_MS as u64);
    while !shared.stop.load(Ordering::Acquire) {
        if since >= COUNTERS_INTERVAL {
            status.write_counters(&counters(&engine, &shared.ops), &mut last_counters);
            since = Duration::ZERO;
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if n <= 0 {
            since += round;
            continue;
        }
        since += round / 4;
        let Ok(conn) = sock::accept(&listener) else {
            continue;
        };
        handle(conn, &id, &engine, &shared);
    }
    // The tree itself belongs to Control (which removes it); this handle
    // only wrote counters.
    drop(status);
}

/// The daemon's counters: the mount's transaction, merge, srch compaction
/// and cache statistics and the control socket's own.
fn counters(engine: &Engine, ops: &OpCounters) -> Vec<(&'static str, u64)> {
    let t = engine.mount.stats();
    let m = engine.mount.merge_stats();
    let sc = engine.mount.srch_stats();
    let i = engine.mount.item_cache().stats();
    let b = engine.mount.block_cache().stats();
    let mut v = vec![
        ("block_cache_clean", b.clean as u64),
        ("block_cache_dirty", b.dirty as u64),
        ("block_cache_evictions", b.evictions),
        ("block_cache_reads", b.device_reads),
        ("block_cache_stale_rereads", b.stale_rereads),
        ("control_ops", ops.served.load(Ordering::Relaxed)),
        ("control_ops_denied", ops.denied.load(Ordering::Relaxed)),
        ("control_ops_failed", ops.failed.load(Ordering::Relaxed)),
        ("item_cache_items", i.items as u64),
        ("item_cache_misses", i.misses),
        ("item_cache_ranges", i.ranges as u64),
        ("item_cache_ranges_dropped", i.ranges_dropped),
        ("item_dirty", i.dirty as u64),
        ("item_dirty_bytes", i.dirty_bytes as u64),
        ("log_merge_errors", m.errors),
        ("log_merge_remains", m.remains),
        ("log_merge_requests", m.requests),
        ("srch_compact_dropped", sc.dropped),
        ("srch_compact_errors", sc.errors),
        ("srch_compact_freed_blocks", sc.freed),
        ("srch_compact_steps", sc.steps),
        ("srch_compact_written", sc.written),
        ("trans_commit_low_recheck", t.low_rechecks),
        ("trans_commit_pressure", t.pressure_commits),
        ("trans_commit_retries", t.retries),
        ("trans_commit_timer", t.timer_commits),
        ("trans_commits", t.commits),
    ];
    v.extend(engine.fs.archive_stats().entries());
    v.extend(engine.fs.tag_counters().snapshot());
    v.sort();
    v
}

/// The peer's effective capabilities, from /proc/<pid>/status.
fn has_cap(pid: i32, cap: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|bits| bits & (1u64 << cap) != 0)
}

fn reply_err(conn: &OwnedFd, errno: i32) {
    let mut e = Enc::default();
    e.i32(errno);
    let _ = sock::send(conn, &e.0, None);
}

/// Serves one connection: one request, one reply.
/// Operations that change the volume (EROFS on a read-only mount).
fn changes_volume(op: Op) -> bool {
    matches!(
        op,
        Op::SetAttrX
            | Op::Release
            | Op::Stage
            | Op::PunchOffline
            | Op::MoveBlocks
            | Op::QuotaAdd
            | Op::QuotaDel
            | Op::QuotaWipe
    )
}

fn handle(conn: OwnedFd, id: &Identity, engine: &Engine, shared: &Shared) {
    let _ = sock::set_recv_timeout(&conn, REQUEST_TIMEOUT_SECS);
    let Ok(cred) = sock::peer_cred(&conn) else {
        return;
    };
    let Ok((msg, mut fds)) = sock::recv_fds(&conn) else {
        return;
    };
    let second = if fds.len() > 1 { fds.pop() } else { None };
    let fd = fds.pop();
    let mut d = Dec::new(&msg);
    let op = match (d.u32(), d.u16(), d.u16()) {
        (Ok(REQ_MAGIC), Ok(op), Ok(_)) => Op::from_u16(op),
        _ => None,
    };
    let Some(op) = op else {
        shared.ops.failed.fetch_add(1, Ordering::Relaxed);
        reply_err(&conn, libc::EINVAL);
        return;
    };
    debug_assert!(msg.len() >= REQ_HEADER_BYTES);
    let body = &msg[REQ_HEADER_BYTES..];
    let need = match op {
        Op::InoPath | Op::ReferringEntries => Some(CAP_DAC_READ_SEARCH),
        Op::AllocatedInos
        | Op::Unmount
        | Op::DataWaitErr
        | Op::ReadXattrTotals
        | Op::ReadXattrIndex
        | Op::QuotaAdd
        | Op::QuotaDel
        | Op::QuotaWipe
        | Op::SearchXattrs => Some(CAP_SYS_ADMIN),
        _ => None,
    };
    if let Some(cap) = need {
        if !has_cap(cred.pid, cap) {
            shared.ops.denied.fetch_add(1, Ordering::Relaxed);
            reply_err(&conn, libc::EPERM);
            return;
        }
    }
    // What changes the volume refuses a read-only mount, as the
    // original's ioctls do (mnt_want_write): its files cannot be opened
    // for writing, but the quota rules need no file.
    if changes_volume(op) && crate::daemon::mount_read_only(&id.mountpoint) {
        shared.ops.failed.fetch_add(1, Ordering::Relaxed);
        reply_err(&conn, libc::EROFS);
        return;
    }
    if second.is_some() != op.takes_second_fd() {
        shared.ops.failed.fetch_add(1, Ordering::Relaxed);
        reply_err(&conn, libc::EINVAL);
        return;
    }
    let mut passed = Vec::new();
    for f in [fd.as_ref(), second.as_ref()].into_iter().flatten() {
        match file_ino(f, id) {
            Ok(ino) => passed.push(archive::Passed {
                ino,
                flags: fd_flags(f),
            }),
            Err(e) => {
                shared.ops.failed.fetch_add(1, Ordering::Relaxed);
                reply_err(&conn, e);
                return;
            }
        }
    }
    // Closing a file of our own mount re-enters the daemon (FLUSH,
    // RELEASE): here, on this thread, never on the executor.
    let had_fd = fd.is_some();
    drop(fd);
    drop(second);
    let ino = match (op.takes_fd(), had_fd) {
        (false, false) => None,
        (true, true) => passed.first().map(|p| p.ino),
        _ => {
            shared.ops.failed.fetch_add(1, Ordering::Relaxed);
            reply_err(&conn, libc::EINVAL);
            return;
        }
    };
    if archive::is_archive_op(op) {
        let ctx = engine::fs::Ctx {
            uid: cred.uid,
            gid: cred.gid,
            umask: 0,
            cap_sys_admin: has_cap(cred.pid, CAP_SYS_ADMIN),
        };
        match archive::run(op, body, &passed, ctx, engine) {
            Ok(reply) => {
                shared.ops.served.fetch_add(1, Ordering::Relaxed);
                let _ = sock::send(&conn, &reply.0, None);
            }
            Err(e) => {
                shared.ops.failed.fetch_add(1, Ordering::Relaxed);
                reply_err(&conn, e);
            }
        }
        return;
    }
    if op == Op::Unmount {
        match unmount(&id.mountpoint) {
            Ok(()) => {
                shared.ops.served.fetch_add(1, Ordering::Relaxed);
                *shared.unmount.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
            }
            Err(e) => {
                shared.ops.failed.fetch_add(1, Ordering::Relaxed);
                reply_err(&conn, e);
            }
        }
        return;
    }
    match run_op(op, body, ino, id, engine) {
        Ok(reply) => {
            shared.ops.served.fetch_add(1, Ordering::Relaxed);
            let _ = sock::send(&conn, &reply.0, None);
        }
        Err(e) => {
            shared.ops.failed.fetch_add(1, Ordering::Relaxed);
            reply_err(&conn, e);
        }
    }
}

/// The scoutfs inode number of a passed file: EXDEV when it is not on
/// this mount.
fn file_ino(f: &OwnedFd, id: &Identity) -> Result<u64, i32> {
    // SAFETY: statx is plain data.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names `f` itself; `stx`
    // is a valid out pointer.
    let r = unsafe {
        libc::statx(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_INO,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    if (stx.stx_dev_major, stx.stx_dev_minor) != id.dev {
        return Err(libc::EXDEV);
    }
    Ok(stx.stx_ino)
}

/// A passed descriptor's open flags (F_GETFL): access mode, O_APPEND,
/// O_DIRECT, O_DSYNC/O_SYNC as the caller opened it.
fn fd_flags(f: &OwnedFd) -> i32 {
    // SAFETY: F_GETFL on a descriptor we own; no memory involved.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    r.max(0)
}

/// umount2 of our own mount (not lazy: EBUSY while files are open there).
fn unmount(dir: &Path) -> Result<(), i32> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

fn decode_err(_: io::Error) -> i32 {
    libc::EINVAL
}

/// Runs one request on the engine and encodes its reply.
fn run_op(op: Op, body: &[u8], ino: Option<u64>, id: &Identity, e: &Engine) -> Result<Enc, i32> {
    let mut d = Dec::new(body);
    let mut out = Enc::reply_ok();
    let run = |r: io::Result<Enc>| r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
    match op {
        Op::Hello => {
            out.u64(id.fsid)
                .u64(id.rid)
                .u32(std::process::id())
                .bytes(sock::path_bytes(&id.mountpoint));
            Ok(out)
        }
        Op::Sync => {
            let fs = e.fs.clone();
            run(e.bridge.run(async move { fs.fsync().await }).map(|_| out))
        }
        Op::Statfs => {
            let (fsid, rid) = (id.fsid, id.rid);
            let link = e.link.clone();
            let r = e.bridge.run(async move {
                let reply = link.call(Cmd::Statfs, Vec::new()).await?;
                let s = NetStatfs::read_from_bytes(&reply).map_err(|_| libc::EIO)?;
                let committed_seq = last_seq(&*link).await?;
                let total_meta = s.total_meta_blocks.get();
                Ok(StatfsReply {
                    fsid,
                    rid,
                    committed_seq,
                    total_meta_blocks: total_meta,
                    total_data_blocks: s.total_data_blocks.get(),
                    free_meta_blocks: s.free_meta_blocks.get(),
                    free_data_blocks: s.free_data_blocks.get(),
                    // One mount: the reserve of §1.7 for one client.
                    reserved_meta_blocks: MetaBudget::for_device(total_meta).reserve(1, 0),
                    inode_count: s.inode_count.get(),
                })
            });
            run(r.map(|s| {
                s.encode(&mut out);
                out
            }))
        }
        Op::Stat => {
            let ino = ino.ok_or(libc::EINVAL)?;
            let fs = e.fs.clone();
            let r = e.bridge.run(async move {
                fs.fsync().await?;
                fs.getattr(ino).await
            });
            run(r.map(|a| {
                StatReply {
                    ino,
                    meta_seq: a.meta_seq,
                    data_seq: a.data_seq,
                    data_version: a.data_version,
                    online_blocks: a.online_blocks,
                    offline_blocks: a.offline_blocks,
                    crtime_sec: a.crtime.sec,
                    crtime_nsec: a.crtime.nsec,
                }
                .encode(&mut out);
                out
            }))
        }
        Op::WalkInodes => {
            let index = d.u8().map_err(decode_err)?;
            d.u8().map_err(decode_err)?;
            d.u16().map_err(decode_err)?;
            let nr = d.u32().map_err(decode_err)?.min(WALK_BATCH_MAX) as usize;
            let first = d.pos().map_err(decode_err)?;
            let last = d.pos().map_err(decode_err)?;
            let kind = match index {
                INDEX_META_SEQ => IndexKind::MetaSeq,
                INDEX_DATA_SEQ => IndexKind::DataSeq,
                _ => return Err(libc::EINVAL),
            };
            let (fs, link) = (e.fs.clone(), e.link.clone());
            let r = e.bridge.run(async move {
                // Committed state: ours first, then nothing past the last
                // stable seq.
                fs.fsync().await?;
                let stable = last_seq(&*link).await?;
                walk(&fs, kind, first, last, stable, nr).await
            });
            run(r.map(|ents| {
                out.u32(ents.len() as u32);
                for p in ents {
                    out.pos(p);
                }
                out
            }))
        }
        Op::InoPath => {
            let (ino, dir, pos) = (
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
            );
            let fs = e.fs.clone();
            let r = e
                .bridge
                .run(async move { fs.ino_path(ino, (dir, pos)).await?.ok_or(libc::ENOENT) });
            run(r.map(|p| {
                out.u64(p.dir).u64(p.pos).bytes(&p.path);
                out
            }))
        }
        Op::ReferringEntries => {
            let (ino, dir, pos) = (
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
            );
            let fs = e.fs.clone();
            let r = e.bridge.run(async move {
                fs.referring_dirents(ino, (dir, pos), REFS_BATCH_MAX + 1)
                    .await
            });
            run(r.map(|mut ents| {
                // Fit the reply; more follow when some were cut.
                let mut bytes = 0;
                let mut keep = 0;
                for (i, en) in ents.iter().enumerate() {
                    bytes += 24 + en.name.len();
                    if bytes > REFS_BYTES_MAX || i == REFS_BATCH_MAX {
                        break;
                    }
                    keep = i + 1;
                }
                let last = keep == ents.len();
                ents.truncate(keep);
                out.u32(ents.len() as u32).u32(u32::from(last));
                for en in ents {
                    out.u64(en.dir).u64(en.pos).u8(en.dtype).bytes(&en.name);
                }
                out
            }))
        }
        Op::AllocatedInos => {
            let start = d.u64().map_err(decode_err)?;
            let max = (d.u32().map_err(decode_err)? as usize).min(ALLOCATED_MAX);
            let fs = e.fs.clone();
            let r = e
                .bridge
                .run(async move { fs.allocated_inos(start, max).await });
            run(r.map(|inos| {
                out.u32(inos.len() as u32);
                for i in inos {
                    out.u64(i);
                }
                out
            }))
        }
        Op::Fiemap => {
            let ino = ino.ok_or(libc::EINVAL)?;
            let start = d.u64().map_err(decode_err)?;
            let max = d.u32().map_err(decode_err)? as usize;
            let fs = e.fs.clone();
            let r = e.bridge.run(async move { fs.extents(ino).await });
            run(r.map(|exts| {
                let exts: Vec<_> = exts
                    .into_iter()
                    .filter(|x| x.blkno != 0 || x.flags & EXTENT_FLAG_OFFLINE != 0)
                    .filter(|x| x.last() >= start)
                    .collect();
                let n = exts.len().min(max.max(1));
                let last = n == exts.len();
                out.u32(n as u32).u32(u32::from(last));
                for (i, x) in exts.iter().take(n).enumerate() {
                    let mut flags = 0;
                    if x.flags & EXTENT_FLAG_OFFLINE != 0 {
                        flags |= FIEMAP_EXTENT_UNKNOWN;
                    }
                    if x.flags & EXTENT_FLAG_UNWRITTEN != 0 {
                        flags |= FIEMAP_EXTENT_UNWRITTEN;
                    }
                    if last && i + 1 == n {
                        flags |= FIEMAP_EXTENT_LAST;
                    }
                    out.u64(x.start << engine::fs::BLOCK_SHIFT)
                        .u64(x.blkno << engine::fs::BLOCK_SHIFT)
                        .u64(x.len << engine::fs::BLOCK_SHIFT)
                        .u32(flags)
                        .u32(0);
                }
                out
            }))
        }
        Op::ReadXattrTotals
        | Op::ReadXattrIndex
        | Op::ListHiddenXattrs
        | Op::QuotaList
        | Op::QuotaAdd
        | Op::QuotaDel
        | Op::QuotaWipe
        | Op::SearchXattrs => tags::run_tag_op(op, &mut d, ino, e, out),
        _ => Err(libc::EINVAL),
    }
}

/// GET_LAST_SEQ: the last seq whose items are all committed.
async fn last_seq(link: &dyn ServerLink) -> Result<u64, i32> {
    let r = link.call(Cmd::GetLastSeq, Vec::new()).await?;
    let b: [u8; 8] = r
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(libc::EIO)?;
    Ok(u64::from_le_bytes(b))
}

/// One walk batch: entries in `first..=last` with major ≤ `stable`. The
/// index keys have no minor: a position's minor only orders within a seq.
async fn walk(
    fs: &Fs,
    kind: IndexKind,
    first: WalkPos,
    last: WalkPos,
    stable: u64,
    nr: usize,
) -> Result<Vec<WalkPos>, i32> {
    let mut last = last;
    if last.major > stable {
        last = WalkPos {
            major: stable,
            minor: u32::MAX,
            ino: u64::MAX,
        };
    }
    if first > last {
        return Ok(Vec::new());
    }
    // Entries have minor 0: a first position with minor > 0 starts after
    // every entry of its major.
    let from = if first.minor > 0 {
        match first.major.checked_add(1) {
            Some(m) => (m, 0),
            None => return Ok(Vec::new()),
        }
    } else {
        (first.major, first.ino)
    };
    let to = if last.minor > 0 {
        (last.major, u64::MAX)
    } else {
        (last.major, last.ino)
    };
    let ents = fs.walk_index(kind, from, to, nr).await?;
    Ok(ents
        .into_iter()
        .map(|(major, ino)| WalkPos {
            major,
            minor: 0,
            ino,
        })
        .collect())
}
