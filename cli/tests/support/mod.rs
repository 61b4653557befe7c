//! Helpers of the CLI tests that need a live mount: a volume on sparse
//! images served by a daemon thread of the test process
//! (`fuse_frontend::serve`), the real `scoutfs` binary, and output
//! helpers. Needs root and /dev/fuse: [`skip`] prints `SKIPPED …` and
//! tells the test to return otherwise.
#![allow(dead_code)]
// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::mkfs::{format_volume, MkfsOptions};
use fuse_frontend::control::client::Client;
use fuse_frontend::{serve, Config};

pub const SCOUTFS: &str = env!("CARGO_BIN_EXE_scoutfs");
pub const IMAGE_BYTES: u64 = 16 << 30;

pub fn skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: not root: mounting needs CAP_SYS_ADMIN");
        return true;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        eprintln!("SKIPPED {test}: cannot open /dev/fuse: {e}");
        return true;
    }
    false
}

/// Makes `meta.img` and `data.img` in `dir` (sparse, [`IMAGE_BYTES`]) with
/// the original mkfs's defaults and quorum slot 0 at `slot0`.
pub fn make_volume(dir: &Path, slot0: u16) -> (PathBuf, PathBuf) {
    let meta = dir.join("meta.img");
    let data = dir.join("data.img");
    for p in [&meta, &data] {
        std::fs::File::create(p)
            .unwrap()
            .set_len(IMAGE_BYTES)
            .unwrap();
    }
    let m = FileDevice::open(&meta, &OpenOptions::new()).unwrap();
    let d = FileDevice::open(&data, &OpenOptions::new()).unwrap();
    let mut opts = MkfsOptions::default();
    opts.quorum_slots[0] = Some((std::net::Ipv4Addr::LOCALHOST, slot0));
    format_volume(&m, &d, &opts).unwrap();
    (meta, data)
}

/// A volume on sparse images, served by a daemon thread of this process.
pub struct Mounted {
    _dir: tempfile::TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub mnt: PathBuf,
    daemon: Option<JoinHandle<Result<(), String>>>,
}

impl Mounted {
    pub fn new() -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // The embedded server never listens on slot 0's address.
        let (meta, data) = make_volume(dir.path(), 12345);
        let mut v = Mounted {
            _dir: dir,
            meta,
            data,
            mnt,
            daemon: None,
        };
        v.start();
        v
    }

    pub fn start(&mut self) {
        let (tx, rx) = mpsc::channel();
        let mut config = Config::new(self.meta.clone(), self.data.clone(), self.mnt.clone());
        config.on_ready = Some(Box::new(move || tx.send(()).is_ok()));
        // The daemon of these tests: a thread of the test process.
        let t = std::thread::spawn(move || serve(config).map_err(|e| e.to_string()));
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("daemon did not mount: {:?}", t.join());
        }
        self.daemon = Some(t);
    }

    /// Unmounts through the control socket (commit, farewell) and waits
    /// for the daemon; then checks the volume.
    pub fn unmount(&mut self) {
        let c = Client::for_path(&self.mnt).expect("client");
        c.unmount().expect("unmount");
        let r = self.daemon.take().unwrap().join().unwrap();
        assert_eq!(r, Ok(()));
        let ro = OpenOptions::new().read_only(true);
        let m = FileDevice::open(&self.meta, &ro).unwrap();
        let d = FileDevice::open(&self.data, &ro).unwrap();
        let report =
            engine::check::check_volume(&m, Some(&d as &dyn BlockDevice), &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.messages());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

/// A port free for both TCP and UDP on loopback (a quorum slot's address).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One volume mounted three times by daemon threads of this process: the
/// first holds quorum slot 0 and serves, the other two join as clients.
pub struct Cluster {
    _dir: tempfile::TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub mnts: Vec<PathBuf>,
    daemons: Vec<Option<JoinHandle<Result<(), String>>>>,
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (meta, data) = make_volume(dir.path(), free_port());
        let mut c = Cluster {
            _dir: dir,
            meta,
            data,
            mnts: Vec::new(),
            daemons: Vec::new(),
        };
        for i in 0..3 {
            let mnt = c._dir.path().join(format!("m{i}"));
            std::fs::create_dir(&mnt).unwrap();
            let (tx, rx) = mpsc::channel();
            let mut config = Config::new(c.meta.clone(), c.data.clone(), mnt.clone());
            if i == 0 {
                config.options.quorum_slot_nr = Some(0);
                config.options.quorum_heartbeat_timeout_ms = 2_000;
            }
            config.on_ready = Some(Box::new(move || tx.send(()).is_ok()));
            let t = std::thread::spawn(move || serve(config).map_err(|e| e.to_string()));
            if rx.recv_timeout(Duration::from_secs(120)).is_err() {
                panic!("daemon {i} did not mount: {:?}", t.join());
            }
            c.mnts.push(mnt);
            c.daemons.push(Some(t));
        }
        c
    }

    /// Unmounts the clients, then the server (the last quorum member
    /// leaves after them), and checks the volume.
    pub fn unmount(&mut self) {
        for i in (0..self.mnts.len()).rev() {
            let c = Client::for_path(&self.mnts[i]).expect("client");
            c.unmount().expect("unmount");
            let r = self.daemons[i].take().unwrap().join().unwrap();
            assert_eq!(r, Ok(()), "daemon {i}");
        }
        let ro = OpenOptions::new().read_only(true);
        let m = FileDevice::open(&self.meta, &ro).unwrap();
        let d = FileDevice::open(&self.data, &ro).unwrap();
        let report =
            engine::check::check_volume(&m, Some(&d as &dyn BlockDevice), &mut |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.messages());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (i, t) in self.daemons.iter_mut().enumerate().rev() {
            if let Some(t) = t.take() {
                let _ = Command::new("umount").arg("-l").arg(&self.mnts[i]).status();
                let _ = t.join();
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(t) = self.daemon.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            let _ = t.join();
        }
    }
}

pub fn scoutfs(args: &[&str]) -> Output {
    Command::new(SCOUTFS)
        .args(args)
        .output()
        .expect("run scoutfs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    let o = scoutfs(args);
    assert!(o.status.success(), "scoutfs {args:?}: {o:?}");
    stdout(&o)
}

/// (major, ino) rows of a walk's output (headers skipped).
pub fn walk_rows(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (f[1], f[3])
        })
        .collect()
}

pub fn plain_sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

pub fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}
