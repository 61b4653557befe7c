//! Helpers of the FUSE frontend tests: sparse image files formatted with
//! `engine::mkfs` (what `scoutfs mkfs` writes), the `scoutfsd` binary run
//! in the foreground until it reports the mount, unmounting, and the
//! offline check (`engine::check`, what `scoutfs check` runs).
//!
//! Tests that mount need root and /dev/fuse: [`skip_without_fuse`] prints
//! why and tells the test to return when either is missing.
#![allow(dead_code)]

pub mod watchdog;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::mkfs::{format_volume, MkfsOptions};

/// Image sizes: sparse, large enough that the metadata reserve (§1.7)
/// leaves room for allocating transactions.
pub const META_BYTES: u64 = 16 << 30;
pub const DATA_BYTES: u64 = 16 << 30;
/// How long a daemon may take to mount or to exit.
pub const DAEMON_WAIT: Duration = Duration::from_secs(60);

pub const SCOUTFSD: &str = env!("CARGO_BIN_EXE_scoutfsd");

/// `Some(reason)` when this process cannot mount FUSE filesystems.
pub fn fuse_unavailable() -> Option<String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: mounting needs CAP_SYS_ADMIN".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    None
}

/// tmpfs for image files when the machine has it, else the temp dir.
pub fn fast_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Prints why the test is skipped; true when it must return.
pub fn skip_without_fuse(test: &str) -> bool {
    match fuse_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// A formatted volume on two sparse image files and a mount point, all in
/// a temporary directory others may traverse (pjdfstest switches users).
pub struct Volume {
    pub dir: tempfile::TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub mnt: PathBuf,
}

/// A loopback port free for both TCP (the server) and UDP (the election).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("local addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Volume {
    pub fn new() -> Volume {
        Volume::new_in(&std::env::temp_dir())
    }

    /// A volume of the default sizes whose images live under `parent`.
    pub fn new_in(parent: &Path) -> Volume {
        Volume::new_sized(parent, META_BYTES, DATA_BYTES)
    }

    /// A volume of the given device sizes under `parent`. Tests that
    /// commit often put small images on tmpfs ([`fast_dir`]), where a
    /// device flush costs nothing; they must stay small there: the
    /// allocators move on through the whole device as commits go by (COW),
    /// so a sparse image ends up using all of its size in memory.
    pub fn new_sized(parent: &Path, meta_bytes: u64, data_bytes: u64) -> Volume {
        Volume::new_with_slots(parent, meta_bytes, data_bytes, 1)
    }

    /// A volume with `slots` quorum slots (each on its own loopback port).
    pub fn new_with_slots(parent: &Path, meta_bytes: u64, data_bytes: u64, slots: usize) -> Volume {
        // Mounts with quorum_slot_nr=0 serve on this address: one free
        // port per volume, so tests running side by side don't meet.
        let addrs: Vec<_> = (0..slots)
            .map(|_| (std::net::Ipv4Addr::LOCALHOST, free_port()))
            .collect();
        Volume::new_with_addrs(parent, meta_bytes, data_bytes, &addrs)
    }

    /// A volume whose quorum slots 0.. are at `addrs` (the netns rig's
    /// hosts).
    pub fn new_with_addrs(
        parent: &Path,
        meta_bytes: u64,
        data_bytes: u64,
        addrs: &[(std::net::Ipv4Addr, u16)],
    ) -> Volume {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let meta = dir.path().join("meta.img");
        let data = dir.path().join("data.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        for (p, size) in [(&meta, meta_bytes), (&data, data_bytes)] {
            let f = std::fs::File::create(p).expect("image file");
            f.set_len(size).expect("sparse size");
        }
        {
            let m = FileDevice::open(&meta, &OpenOptions::new()).expect("open meta");
            let d = FileDevice::open(&data, &OpenOptions::new()).expect("open data");
            let mut opts = MkfsOptions::default();
            for (slot, a) in opts.quorum_slots.iter_mut().zip(addrs) {
                *slot = Some(*a);
            }
            format_volume(&m, &d, &opts).expect("mkfs");
        }
        Volume {
            dir,
            meta,
            data,
            mnt,
        }
    }

    /// The offline check's faults (empty when clean).
    pub fn check(&self) -> Vec<String> {
        let ro = OpenOptions::new().read_only(true);
        let m = FileDevice::open(&self.meta, &ro).expect("open meta");
        let d = FileDevice::open(&self.data, &ro).expect("open data");
        match engine::check::check_volume(&m, Some(&d as &dyn BlockDevice), &mut |_| {}) {
            Ok(report) => report.messages(),
            Err(e) => vec![format!("check could not run: {e}")],
        }
    }

    pub fn assert_clean(&self, what: &str) {
        let faults = self.check();
        assert!(faults.is_empty(), "{what}: check found faults: {faults:#?}");
    }

    /// Whether something is mounted on the mount point.
    pub fn mounted(&self) -> bool {
        mount_entry(&self.mnt).is_some()
    }
}

/// The /proc/mounts line of `dir`, if mounted.
pub fn mount_entry(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let dir = dir.to_str()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(dir))
        .map(str::to_string)
}

/// A `scoutfsd -f` serving a volume.
pub struct Daemon {
    pub child: Child,
    pub mnt: PathBuf,
    /// Lines the daemon printed on stderr.
    pub log: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts the daemon and waits until it says the volume is mounted.
    pub fn start(v: &Volume) -> Daemon {
        Daemon::start_on(v, &v.mnt, None)
    }

    /// Starts a daemon of `v` on `mnt` with scoutfs mount options `opts`
    /// (e.g. `quorum_slot_nr=0`) and waits until it is mounted.
    pub fn start_on(v: &Volume, mnt: &Path, opts: Option<&str>) -> Daemon {
        Daemon::start_under(v, mnt, opts, &[])
    }

    /// [`Daemon::start_on`] with `scoutfsd` run by `wrapper` (e.g.
    /// `nsenter --net=/run/netns/H --`, a host of the netns rig).
    pub fn start_under(v: &Volume, mnt: &Path, opts: Option<&str>, wrapper: &[&str]) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(SCOUTFSD);
                c
            }
            None => Command::new(SCOUTFSD),
        };
        cmd.arg("--metadev")
            .arg(&v.meta)
            .arg("--datadev")
            .arg(&v.data)
            .arg("--mountpoint")
            .arg(mnt)
            .arg("-f");
        if let Some(o) = opts {
            cmd.arg("-o").arg(o);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start scoutfsd");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[scoutfsd] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + DAEMON_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("mounted on") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("scoutfsd did not report its mount: {:?}", child.wait());
                }
            }
        }
        assert!(
            mount_entry(mnt).is_some(),
            "scoutfsd said mounted but /proc/mounts disagrees"
        );
        Daemon {
            child,
            mnt: mnt.to_path_buf(),
            log: rx,
        }
    }

    /// Waits for the daemon to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DAEMON_WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "scoutfsd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `umount DIR`, then waits for a clean exit.
    pub fn unmount(mut self) {
        umount(&self.mnt);
        let st = self.wait();
        assert!(st.success(), "scoutfsd exited with {st}");
    }
}

/// Unmounts every daemon at once and waits for them. Quorum members of a
/// volume with several slots must leave together: the server answers a
/// member's farewell only while enough members stay for the others
/// (reference §5.4), so one by one the second to last would wait forever.
pub fn unmount_together(daemons: Vec<Daemon>) {
    std::thread::scope(|s| {
        for d in daemons {
            s.spawn(move || d.unmount());
        }
    });
}

/// Two mounts of one one-slot volume (images on [`fast_dir`]): the first
/// holds quorum slot 0 and serves, the second is its client.
pub fn two_mounts() -> (Volume, Daemon, Daemon) {
    let v = Volume::new_with_slots(&fast_dir(), 2 << 30, 16 << 30, 1);
    let (ma, mb) = (v.dir.path().join("a"), v.dir.path().join("b"));
    std::fs::create_dir(&ma).expect("mount point");
    std::fs::create_dir(&mb).expect("mount point");
    let a = Daemon::start_on(&v, &ma, Some("quorum_slot_nr=0"));
    let b = Daemon::start_on(&v, &mb, None);
    (v, a, b)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn umount(dir: &Path) {
    let st = Command::new("umount")
        .arg(dir)
        .status()
        .expect("run umount");
    if !st.success() {
        panic!(
            "umount {} failed: {st}\n{}",
            dir.display(),
            mount_users(dir)
        );
    }
}

/// What may keep the mount on `dir` busy, for a failed unmount: every
/// process with a descriptor, working directory, root or mapping there,
/// and every task waiting for a FUSE answer (a system call in progress
/// holds the mount too). Reads /proc only, never the mount.
pub fn mount_users(dir: &Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let inside = |p: &Path| p.starts_with(dir);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut hits = Vec::new();
        for link in ["cwd", "root"] {
            if let Ok(t) = std::fs::read_link(format!("/proc/{pid}/{link}")) {
                if inside(&t) {
                    hits.push(format!("{link} {}", t.display()));
                }
            }
        }
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if inside(&t) {
                    hits.push(format!(
                        "fd {} {}",
                        fd.file_name().to_string_lossy(),
                        t.display()
                    ));
                }
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let want = dir.to_string_lossy();
        hits.extend(
            maps.lines()
                .filter(|l| l.contains(want.as_ref()))
                .map(|l| format!("map {l}")),
        );
        for h in hits {
            let _ = writeln!(out, "-- pid {pid} ({}): {h}", comm.trim());
        }
    }
    watchdog::stuck_tasks(&mut out);
    out
}

/// A test tool: `$env` if set, else `name` in PATH, else
/// `$CARGO_HOME/bin/name` (where `cargo install` puts it).
pub fn find_tool(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    dirs.extend(cargo_home.map(|h| h.join("bin")));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A positive count from the environment, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// setxattr(2) of `name` on `path`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated strings and a value buffer of its length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// getxattr(2) of `name` on `path`.
pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Decompresses a `.zst` file with the `zstd` tool (sparse output: the
/// vectors' images are mostly zeroes).
pub fn unzstd(src: &Path, dst: &Path) -> Result<(), String> {
    let out = Command::new("zstd")
        .args(["-d", "-q", "-f", "--sparse", "-o"])
        .arg(dst)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run zstd: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "zstd -d {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
