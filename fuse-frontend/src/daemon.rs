//! One mount's daemon: devices → in-process server → greeting → mount →
//! FUSE, until unmounted or told to stop.
//!
//! [`serve`] is the whole life of a single-node mount (the networked
//! server, quorum and the lock client come later):
//!
//! 1. Opens the metadata and data devices with the `file` driver
//!    (exclusively: a second daemon on the same devices gets EBUSY).
//! 2. Starts the production executor; the calling thread is its engine
//!    thread whenever it is inside `block_on`.
//! 3. Opens the [`Server`] in-process, greets it with a fresh rid, opens
//!    the [`Mount`] (commit timer and merge worker on) and the [`Fs`]; a
//!    background task advances the server's freeing of merged trees.
//! 4. Mounts FUSE on the directory (only now, after the greeting, as
//!    ARCHITECTURE §2.11 asks), starts the worker threads and calls
//!    [`Config::on_ready`] (what a mount helper waits for).
//! 5. Serves until the kernel ends the connection (`umount DIR`) or a
//!    SIGTERM/SIGINT/SIGHUP arrives (the daemon then detaches the mount
//!    itself), then commits, says farewell and returns.
//!
//! Every failure is a [`ServeError`] naming what failed with the errno, and
//! nothing is left mounted. Touches `engine` (runtime, server, trans, fs),
//! `drivers` (file devices), [`crate::session`] and [`crate::signals`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::format::net::{Cmd, NetGreeting};
use engine::fs::{Fs, Time};
use engine::link::ServerLink;
use engine::runtime::{Executor, JoinHandle, Runtime, ThreadPark};
use engine::server::{InProcessLink, Server, ServerOptions};
use engine::trans::{Mount, MountOptions};
use zerocopy::IntoBytes;

use crate::bridge::Bridge;
use crate::control::{self, Control, Identity};
use crate::fence_tree::FenceTree;
use crate::filesystem::{FuseOptions, ScoutFuse};
use crate::notify::Notifier;
use crate::options::ScoutfsOptions;
use crate::session::{self, MountSpec, Workers};
use crate::signals::SignalWatch;
use engine::lock::LockClientConfig;
use engine::node::fs_locks::{ClusterFsLocks, KernelSlot};

/// FUSE worker threads by default: enough to keep requests in flight on a
/// small machine without a thread per CPU.
pub const WORKERS_DEFAULT: usize = 4;
/// How often the daemon lets the server free merged log trees when idle.
pub const BACKGROUND_INTERVAL: Duration = Duration::from_secs(1);
/// The FUSE subtype: mounts show as `fuse.scoutfs`.
pub const SUBTYPE: &str = "scoutfs";

/// How to run one mount.
pub struct Config {
    pub metadev: PathBuf,
    pub datadev: PathBuf,
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub workers: usize,
    pub fuse: FuseOptions,
    pub mount: MountOptions,
    /// Let other users than the mounter in (the kernel's `allow_other`).
    pub allow_other: bool,
    /// The scoutfs mount options (shown in the status tree).
    pub options: ScoutfsOptions,
    /// Asked right before mount(2): false means whoever started the
    /// daemon is gone (a mount helper that died), so nothing is mounted.
    pub still_wanted: Option<Box<dyn Fn() -> bool + Send>>,
    /// Called once the filesystem is mounted and served; false means
    /// nobody took the news (the helper died meanwhile): the daemon then
    /// unmounts and stops.
    pub on_ready: Option<Box<dyn FnOnce() -> bool + Send>>,
    /// Serve the control socket and status tree (off only in tests that
    /// run several daemons of one volume image).
    pub control: bool,
}

impl Config {
    /// The defaults for a mount of `metadev` + `datadev` on `mountpoint`.
    pub fn new(metadev: PathBuf, datadev: PathBuf, mountpoint: PathBuf) -> Config {
        Config {
            metadev: metadev.clone(),
            datadev,
            mountpoint,
            workers: WORKERS_DEFAULT,
            fuse: FuseOptions::default(),
            mount: MountOptions::default(),
            allow_other: true,
            options: ScoutfsOptions::new(metadev.clone()),
            still_wanted: None,
            on_ready: None,
            control: true,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("metadev", &self.metadev)
            .field("datadev", &self.datadev)
            .field("mountpoint", &self.mountpoint)
            .field("workers", &self.workers)
            .finish()
    }
}

/// `strerror(e)` without Rust's " (os error N)" suffix.
pub fn strerror(e: i32) -> String {
    let s = io::Error::from_raw_os_error(e).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Why [`serve`] stopped early.
#[derive(Debug)]
pub enum ServeError {
    /// A device could not be opened.
    Device { path: PathBuf, source: io::Error },
    /// The engine failed at `stage` with an errno.
    Engine { stage: String, errno: i32 },
    /// Mounting or serving FUSE failed.
    Fuse(io::Error),
    /// Whoever started the daemon (a mount helper) went away before the
    /// mount was reported: nothing is left mounted.
    Abandoned,
    /// Joining the volume as a quorum member failed.
    Node(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Device { path, source } => {
                let e = source.raw_os_error().unwrap_or(libc::EIO);
                write!(
                    f,
                    "failed to open '{}': {} ({e})",
                    path.display(),
                    strerror(e)
                )
            }
            ServeError::Engine { stage, errno } => {
                write!(f, "{stage}: {} ({errno})", strerror(*errno))
            }
            ServeError::Fuse(e) => write!(f, "{e}"),
            ServeError::Abandoned => {
                write!(f, "the mount helper went away: nothing left mounted")
            }
            ServeError::Node(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ServeError {}

fn engine_err(stage: impl Into<String>) -> impl FnOnce(i32) -> ServeError {
    let stage = stage.into();
    move |errno| ServeError::Engine { stage, errno }
}

/// The engine side of a running mount.
struct Node {
    conn: ServerConn,
    mount: Arc<Mount>,
    fs: Arc<Fs>,
    rt: Runtime,
    /// Where the kernel revocations go once FUSE is mounted (cluster
    /// mounts only).
    kernel: Option<KernelSlot>,
    /// The orphan scanner (stops when dropped).
    orphans: JoinHandle<()>,
}

/// Every `delay` (±20 %, so mounts don't scan in step) deletes the
/// orphans no mount holds (reference §7.5).
async fn orphan_scanner(fs: std::sync::Weak<Fs>, rt: Runtime, delay: Duration) {
    loop {
        let ms = delay.as_millis() as u64;
        let jitter = rt.random_u64() % (ms * 2 / 5 + 1);
        rt.sleep(Duration::from_millis(ms - ms / 5 + jitter)).await;
        let Some(fs) = fs.upgrade() else {
            return;
        };
        // Errors (a lost server, ENOSPC) are the next pass's to retry.
        let _ = fs.scan_orphans().await;
    }
}

/// Inode times are wall-clock time; the engine takes them through its
/// [`engine::fs::Clock`] so that only the frontend reads the real clock.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        sec: d.as_secs(),
        nsec: d.subsec_nanos(),
    }
}

/// Wall-clock time when `rt`'s clock read zero (quorum event stamps).
fn wall_base(rt: &Runtime) -> Duration {
    let now = wall_clock();
    Duration::new(now.sec, now.nsec).saturating_sub(rt.now())
}

fn open_device(path: &Path) -> Result<Arc<dyn BlockDevice>, ServeError> {
    let dev = FileDevice::open(path, &OpenOptions::new()).map_err(|source| ServeError::Device {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Arc::new(dev))
}

/// How this daemon uses its devices: alone (the embedded server) or shared
/// with the other mounts of a cluster. The claim is an flock on each
/// device, exclusive or shared, held for the daemon's life: an embedded
/// daemon and cluster daemons on one host refuse each other (EBUSY)
/// instead of running two servers on one volume.
struct DeviceClaim {
    _files: Vec<std::fs::File>,
}

fn claim_devices(paths: &[&Path], exclusive: bool) -> Result<DeviceClaim, ServeError> {
    use std::os::fd::AsRawFd;
    let mut files = Vec::new();
    for path in paths {
        let dev_err = |source: io::Error| ServeError::Device {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(dev_err)?;
        let how = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(dev_err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => io::Error::from_raw_os_error(libc::EBUSY),
                _ => e,
            }));
        }
        files.push(f);
    }
    Ok(DeviceClaim { _files: files })
}

async fn greet(link: &dyn ServerLink, fsid: u64, fmt_vers: u64, rid: u64) -> Result<(), i32> {
    let g = NetGreeting {
        fsid: fsid.into(),
        fmt_vers: fmt_vers.into(),
        // Term 0: a new mount, not a reconnect.
        server_term: 0.into(),
        rid: rid.into(),
        flags: 0.into(),
    };
    link.call(Cmd::Greeting, g.as_bytes().to_vec())
        .await
        .map(|_| ())
}

/// This mount's connection to the server: the link every request goes
/// through, who we are, and what keeps an in-process server going.
struct ServerConn {
    link: Arc<dyn ServerLink>,
    rid: u64,
    fsid: u64,
    fmt_vers: u64,
    /// The in-process server's background work (freeing merged trees).
    background: Option<JoinHandle<()>>,
    /// The in-process server, kept until after the farewell.
    server: Option<Arc<Server>>,
    /// The networked node (quorum member), shut down after the farewell.
    node: Option<engine::node::Node>,
    /// The metadata device, where a node whose farewell answer was lost
    /// finds whether it was reclaimed (networked nodes only).
    meta: Option<Arc<dyn BlockDevice>>,
    /// The flocks on the devices.
    _claim: DeviceClaim,
    /// The node's fence requests and quorum state in the status tree.
    fence_tree: Option<FenceTree>,
}

/// How the daemon obtains its server link. With `quorum_slot_nr` the
/// daemon is a quorum member ([`engine::node::Node`]): its agent elects a
/// leader among the volume's slots, the elected node fences earlier
/// leaders and serves over TCP on its slot's address, and this mount
/// reaches whichever node serves. Without a slot the server runs inside
/// this process (the embedded single-mount mode, docs/decisions.md).
async fn connect_server(
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    rt: Runtime,
    names: &str,
    options: &ScoutfsOptions,
    paths: &[&Path],
) -> Result<ServerConn, ServeError> {
    // Without a slot: a client of the cluster when the quorum blocks name
    // a server, else the embedded single-mount server (docs/decisions.md).
    let slot = options.quorum_slot_nr.map(|s| s as u8);
    let clustered = slot.is_some()
        || engine::node::member::server_recorded(&meta)
            .await
            .map_err(engine_err(format!("{names} do not hold a scoutfs volume")))?;
    if clustered {
        let claim = claim_devices(paths, false)?;
        return connect_node(meta, data, rt, names, options, slot, claim).await;
    }
    let claim = claim_devices(paths, true)?;
    let server = Server::open(meta, data, rt.clone(), ServerOptions::default())
        .await
        .map_err(engine_err(format!("{names} do not hold a scoutfs volume")))?;
    // A rid of 0 means "none" in the format: draw again.
    let rid = fresh_rid(&rt);
    let link: Arc<dyn ServerLink> = Arc::new(InProcessLink::new(server.clone(), rid));
    let (fsid, fmt_vers) = (server.fsid(), server.fmt_vers());
    greet(&*link, fsid, fmt_vers, rid)
        .await
        .map_err(engine_err("greeting the server"))?;
    let bg_server = server.clone();
    let bg_rt = rt.clone();
    let background = rt.spawn(async move {
        loop {
            bg_rt.sleep(BACKGROUND_INTERVAL).await;
            // Errors stop the server for every caller; the mount's own
            // calls report them.
            while let Ok(true) = bg_server.background().await {}
        }
    });
    Ok(ServerConn {
        link,
        rid,
        fsid,
        fmt_vers,
        background: Some(background),
        server: Some(server),
        node: None,
        meta: None,
        _claim: claim,
        fence_tree: None,
    })
}

fn fresh_rid(rt: &Runtime) -> u64 {
    // A rid of 0 means "none" in the format: draw again.
    loop {
        let r = rt.random_u64();
        if r != 0 {
            return r;
        }
    }
}

/// Starts this mount as a node (a quorum member in `slot`, or a client
/// only) and waits for the greeting of whichever node serves.
async fn connect_node(
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    rt: Runtime,
    names: &str,
    options: &ScoutfsOptions,
    slot: Option<u8>,
    claim: DeviceClaim,
) -> Result<ServerConn, ServeError> {
    let rid = fresh_rid(&rt);
    let meta_dev = meta.clone();
    let node = engine::node::Node::start(engine::node::NodeConfig {
        meta,
        data,
        rt: rt.clone(),
        transport: Arc::new(engine::node::TcpTransport::with_keepalive(
            rt.clone(),
            Duration::from_millis(options.tcp_keepalive_timeout_ms),
        )),
        rid,
        slot,
        rid_lock_dir: control::sock::run_dir().join("rid"),
        server: ServerOptions::default(),
        heartbeat_timeout: Some(Duration::from_millis(options.quorum_heartbeat_timeout_ms)),
        log: Arc::new(|level, msg| {
            if level != engine::quorum::LogLevel::Info {
                eprintln!("scoutfsd: {msg}");
            }
        }),
        wall_base: wall_base(&rt),
    })
    .await
    .map_err(|e| ServeError::Node(format!("{names}: {e}")))?;
    let sb = *node.super_block();
    let (fsid, fmt_vers) = (sb.hdr.fsid.get(), sb.fmt_vers.get());
    // Before the first call: as leader this node may have to have earlier
    // leaders fenced by an agent reading this tree before it serves.
    let tree = control::sock::run_dir().join(control::sock::ident(fsid, rid));
    let fence_tree = FenceTree::start(tree, node.fencer(), node.status_source())
        .map_err(|e| ServeError::Node(format!("status tree: {e}")))?;
    let link: Arc<dyn ServerLink> = node.link();
    // The greeting is the connection's own; this first call returns once
    // a server has taken it.
    link.call(Cmd::GetLastSeq, Vec::new())
        .await
        .map_err(engine_err("reaching the server"))?;
    Ok(ServerConn {
        link,
        rid,
        fsid,
        fmt_vers,
        background: None,
        server: None,
        node: Some(node),
        meta: Some(meta_dev),
        _claim: claim,
        fence_tree: Some(fence_tree),
    })
}

async fn bring_up(
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    rt: Runtime,
    opts: MountOptions,
    names: &str,
    options: &ScoutfsOptions,
    paths: &[&Path],
) -> Result<Node, ServeError> {
    let conn = connect_server(
        meta.clone(),
        data.clone(),
        rt.clone(),
        names,
        options,
        paths,
    )
    .await?;
    let rt2 = rt.clone();
    let mount = Mount::open(
        meta,
        data.clone(),
        conn.link.clone(),
        rt.clone(),
        conn.rid,
        opts,
    )
    .await
    .map_err(engine_err("opening the mount"))?;
    let mount = Arc::new(mount);
    let (fs, kernel) = match &conn.node {
        Some(node) => {
            let kernel = KernelSlot::default();
            let cfg = LockClientConfig {
                lock_idle_count: options.lock_idle_count as usize,
            };
            let locks = Arc::new(ClusterFsLocks::start(
                rt,
                node.link(),
                &mount,
                cfg,
                kernel.clone(),
            ));
            if let Some(tree) = &conn.fence_tree {
                let weak = Arc::downgrade(&locks);
                tree.set_locks(Arc::new(move || {
                    weak.upgrade().map(|l| l.table()).unwrap_or_default()
                }));
            }
            let cached = locks.cached.clone();
            let fs = Arc::new(Fs::with_locks(
                mount.clone(),
                mount.clone(),
                data,
                mount.fmt_vers(),
                Box::new(wall_clock),
                locks,
            ));
            let weak = Arc::downgrade(&fs);
            cached.set(Arc::new(move |group| {
                weak.upgrade()
                    .map(|fs| fs.cached_in_group(group))
                    .unwrap_or_default()
            }));
            (fs, Some(kernel))
        }
        None => {
            let fs = Arc::new(Fs::new(
                mount.clone(),
                mount.clone(),
                data,
                mount.fmt_vers(),
                Box::new(wall_clock),
            ));
            (fs, None)
        }
    };
    let orphans = rt2.spawn(orphan_scanner(
        Arc::downgrade(&fs),
        rt2.clone(),
        Duration::from_millis(options.orphan_scan_delay_ms),
    ));
    fs.set_stable_items(Arc::new(engine::weak::WeakReader::new(
        mount.block_cache().clone(),
    )));
    Ok(Node {
        conn,
        mount,
        fs,
        rt: rt2,
        kernel,
        orphans,
    })
}

/// Returns once the super no longer records `rid` as mounted: its
/// farewell was processed by a server that ended before the answer
/// reached us (the last quorum members leaving together, §5.4).
async fn reclaimed(meta: Arc<dyn BlockDevice>, rid: u64, rt: Runtime) {
    loop {
        rt.sleep(RECLAIMED_POLL).await;
        if let Ok(false) = engine::node::member::still_mounted(&meta, rid, &rt).await {
            return;
        }
    }
}

/// How often a mount waiting for its farewell answer looks at the super.
const RECLAIMED_POLL: Duration = Duration::from_secs(1);

/// How long a farewell may take before the daemon says what it waits for.
const FAREWELL_NOTICE: Duration = Duration::from_secs(5);

/// Commits what is open and says farewell (the open transaction would be
/// lost with the mount otherwise).
async fn shut_down(node: Node) -> Result<(), ServeError> {
    let Node {
        mut conn,
        mount,
        fs,
        rt,
        kernel: _,
        orphans,
    } = node;
    drop(orphans);
    drop(conn.background.take());
    fs.fsync().await.map_err(engine_err("final commit"))?;
    drop(fs);
    drop(mount);
    // The server lets a quorum member go only while enough members stay
    // for the mounts still there (reference §5.4): say so if it takes a
    // while. Dropping the handle cancels the notice.
    let notice = {
        let rt2 = rt.clone();
        rt.spawn(async move {
            rt2.sleep(FAREWELL_NOTICE).await;
            eprintln!(
                "scoutfsd: waiting for the server to accept the farewell: a quorum member \
                 leaves once enough quorum members remain for the other mounts, or when \
                 every remaining mount is a quorum member unmounting"
            );
        })
    };
    let farewell = conn.link.call(Cmd::Farewell, Vec::new());
    let res = match &conn.meta {
        None => farewell.await,
        Some(meta) => {
            let gone = reclaimed(meta.clone(), conn.rid, rt.clone());
            match futures::future::select(farewell, Box::pin(gone)).await {
                futures::future::Either::Left((res, _)) => res,
                futures::future::Either::Right(((), _)) => Ok(Vec::new()),
            }
        }
    };
    drop(notice);
    res.map_err(engine_err("farewell"))?;
    drop(conn.server.take());
    if let Some(node) = conn.node.take() {
        // The agent writes STOP and END through the engine: wait for its
        // thread off the engine thread.
        rt.spawn_blocking(move || node.shutdown()).await;
    }
    if let Some(t) = conn.fence_tree.take() {
        t.stop();
    }
    Ok(())
}

/// A directory, or a dead FUSE mount left by a daemon that died (ENOTCONN:
/// [`session::mount`] detaches it first).
pub fn usable_mountpoint(dir: &Path) -> bool {
    match std::fs::metadata(dir) {
        Ok(m) => m.is_dir(),
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
    }
}

/// Runs one mount until it is unmounted or signalled. See the module
/// comment.
pub fn serve(config: Config) -> Result<(), ServeError> {
    if !usable_mountpoint(&config.mountpoint) {
        return Err(ServeError::Fuse(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "mount point '{}' is not a directory",
                config.mountpoint.display()
            ),
        )));
    }
    let meta = open_device(&config.metadev)?;
    let data = open_device(&config.datadev)?;
    // Before any thread exists, so all of them inherit the mask.
    let mut signals = SignalWatch::block().map_err(ServeError::Fuse)?;
    let result = serve_mounted(meta, data, config, &mut signals);
    signals.stop();
    result
}

/// `dir` absolute with its parent canonicalized: what mountinfo shows,
/// found without a stat of `dir` itself (a dead FUSE mount may sit there).
pub fn canonical_dir(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(p), Some(name)) => p
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// The (major, minor) of the newest mount on `dir`, from mountinfo (no
/// stat: a stat of our own mount would wait for the engine).
pub fn mount_dev(dir: &Path) -> io::Result<(u32, u32)> {
    let f = mountinfo_fields(dir)?;
    f[2].split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| io::Error::other(format!("{}: bad mountinfo line", dir.display())))
}

/// Whether the mount on `dir` is read-only (`mount -o remount,ro`): its
/// mount or its superblock options start with `ro`.
pub fn mount_read_only(dir: &Path) -> bool {
    let Ok(f) = mountinfo_fields(dir) else {
        return false;
    };
    let ro = |opts: &str| opts.split(',').next() == Some("ro");
    ro(&f[5]) || f.last().is_some_and(|s| ro(s))
}

/// The fields of the newest mountinfo line of the mount on `dir`.
fn mountinfo_fields(dir: &Path) -> io::Result<Vec<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = dir.as_os_str().as_encoded_bytes();
    info.lines()
        .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .rfind(|f| f.len() >= 10 && unescape_mountinfo(&f[4]) == want)
        .ok_or_else(|| io::Error::other(format!("{} is not in mountinfo", dir.display())))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn serve_mounted(
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    config: Config,
    signals: &mut SignalWatch,
) -> Result<(), ServeError> {
    let Config {
        metadev,
        datadev,
        mountpoint,
        workers,
        fuse,
        mount: mount_opts,
        allow_other,
        options,
        still_wanted,
        on_ready,
        control,
    } = config;
    let exec = Executor::new(Arc::new(ThreadPark::new()));
    let rt = exec.runtime();
    let names = format!("'{}' and '{}'", metadev.display(), datadev.display());
    let node = exec.block_on(bring_up(
        meta,
        data,
        rt.clone(),
        mount_opts,
        &names,
        &options,
        &[metadev.as_path(), datadev.as_path()],
    ))?;

    // ARCHITECTURE §2.11: nothing is mounted for a helper that is gone.
    if still_wanted.as_ref().is_some_and(|wanted| !wanted()) {
        let _ = exec.block_on(shut_down(node));
        return Err(ServeError::Abandoned);
    }
    let mountpoint = canonical_dir(&mountpoint);
    // Like a kernel mount's source column: the data device, absolute.
    let fsname = std::path::absolute(&datadev)
        .unwrap_or_else(|_| datadev.to_path_buf())
        .to_string_lossy()
        .into_owned();
    let spec = MountSpec {
        mountpoint: &mountpoint,
        fsname: &fsname,
        subtype: SUBTYPE,
        allow_other,
    };
    let session = match session::mount(&spec) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = exec.block_on(shut_down(node));
            return Err(ServeError::Fuse(e));
        }
    };
    let bridge = Bridge::new(rt.clone());
    let fuse = FuseOptions {
        acl: options.acl,
        ..fuse
    };
    let frontend = ScoutFuse::new(
        node.fs.clone(),
        node.conn.link.clone(),
        bridge.clone(),
        fuse,
    );
    if let Some(slot) = &node.kernel {
        match session.get_fuse_file().map(|f| f.try_clone()) {
            Some(Ok(dev)) => {
                let notifier = Arc::new(Notifier::new(dev, frontend.lookup_table()));
                let nrt = rt.clone();
                let wfs = Arc::downgrade(&node.fs);
                slot.set(Arc::new(move |range, kept| {
                    let n = notifier.clone();
                    let rt = nrt.clone();
                    if range.start.zone == engine::format::key::zone::FS && !kept.can_read() {
                        if let Some(fs) = wfs.upgrade() {
                            fs.wake_group_data_waiters(range.start.first);
                        }
                    }
                    if range == engine::lock::quota_lock() && !kept.can_read() {
                        // A rule is changing on another mount (§9).
                        if let Some(fs) = wfs.upgrade() {
                            fs.invalidate_quota_rules();
                        }
                    }
                    Box::pin(async move {
                        let pages = n.clone();
                        rt.spawn_blocking(move || n.invalidate(range, kept)).await;
                        // Not awaited: the writeback of mapped pages takes
                        // the lock again, after the answer.
                        rt.spawn_blocking(move || pages.drop_pages(range, kept))
                            .detach();
                    })
                }));
            }
            _ => eprintln!("scoutfsd: no FUSE descriptor for lock revocations"),
        }
    }
    let frontend = Arc::new(frontend);
    let fail = |e: io::Error, node: Node| {
        let _ = session::unmount_lazy(&mountpoint);
        let _ = session.wake();
        let _ = exec.block_on(shut_down(node));
        Err(ServeError::Fuse(e))
    };
    let workers = match Workers::start(session.clone(), frontend.clone(), workers) {
        Ok(w) => w,
        Err(e) => return fail(e, node),
    };
    let control = if control {
        let started = mount_dev(&mountpoint).and_then(|dev| {
            let id = Identity {
                fsid: node.conn.fsid,
                rid: node.conn.rid,
                fmt_vers: node.conn.fmt_vers,
                mountpoint: mountpoint.clone(),
                dev,
                datadev: std::path::absolute(&datadev).unwrap_or_else(|_| datadev.clone()),
                options,
            };
            let engine = control::Engine {
                fs: node.fs.clone(),
                mount: node.mount.clone(),
                link: node.conn.link.clone(),
                bridge: bridge.clone(),
                notify: session
                    .get_fuse_file()
                    .and_then(|f| f.try_clone().ok())
                    .map(|f| crate::notify::KernelNotify::new(Arc::new(f))),
            };
            Control::start(id, engine)
        });
        match started {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = session::unmount_lazy(&mountpoint);
                let _ = session.wake();
                exec.block_on(rt.spawn_blocking(move || workers.join()));
                let _ = exec.block_on(shut_down(node));
                return Err(ServeError::Fuse(e));
            }
        }
    } else {
        None
    };
    let stop_session = session.clone();
    let stop_dir = mountpoint.to_path_buf();
    let watched = signals.watch(move |_sig| {
        // Detach first so nothing new comes in, then end the workers.
        if let Err(e) = session::unmount_lazy(&stop_dir) {
            eprintln!("scoutfsd: {e}");
        }
        let _ = stop_session.wake();
    });
    if let Err(e) = watched {
        eprintln!("scoutfsd: cannot watch for signals, unmounting: {e}");
        let _ = session::unmount_lazy(&mountpoint);
        let _ = session.wake();
    }
    let mut abandoned = false;
    if let Some(ready) = on_ready {
        if !ready() {
            // The helper died between our mount and its news: undo.
            abandoned = true;
            let _ = session::unmount_lazy(&mountpoint);
            let _ = session.wake();
        }
    }
    // Serve: the engine runs here until every worker has returned; the
    // control thread stops while the executor still runs (a request in
    // progress needs it).
    let mut stopped = exec.block_on(rt.spawn_blocking(move || {
        workers.join();
        control.map(Control::stop)
    }));
    drop(frontend);
    let done = exec.block_on(shut_down(node));
    if let Some(s) = stopped.as_mut() {
        let errno = match &done {
            Ok(()) => 0,
            Err(ServeError::Engine { errno, .. }) => *errno,
            Err(_) => libc::EIO,
        };
        s.reply_unmount(errno);
        s.remove_status();
    }
    drop(session);
    match done {
        Ok(()) if abandoned => Err(ServeError::Abandoned),
        other => other,
    }
}
