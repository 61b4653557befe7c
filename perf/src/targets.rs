//! The filesystems a run measures, each prepared and torn down by the
//! harness on the disk holding its work directory: scoutfs (mkfs on
//! sparse image files, mounted through the `mount.scoutfs` helper with a
//! quorum slot, as users mount it), ext4 and xfs on loop devices with
//! direct I/O, tmpfs, and bindfs (a FUSE passthrough over the ext4 mount,
//! or over the work directory without ext4) so FUSE's own cost shows.
//!
//! Guarantees: every mount, loop device and daemon is registered with
//! [`crate::cleanup`] before the next step, so an interrupted setup leaves
//! nothing behind; [`Target::teardown`] undoes one target completely.
//! Uses [`crate::sys`], [`crate::cleanup`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cleanup::{self, Res};
use crate::sys;
use crate::Ctx;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Scoutfs,
    Ext4,
    Xfs,
    Tmpfs,
    Bindfs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Scoutfs => "scoutfs",
            Kind::Ext4 => "ext4",
            Kind::Xfs => "xfs",
            Kind::Tmpfs => "tmpfs",
            Kind::Bindfs => "bindfs",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Scoutfs,
            Kind::Ext4,
            Kind::Xfs,
            Kind::Tmpfs,
            Kind::Bindfs,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }

    pub fn all() -> Vec<Kind> {
        vec![
            Kind::Scoutfs,
            Kind::Ext4,
            Kind::Xfs,
            Kind::Tmpfs,
            Kind::Bindfs,
        ]
    }
}

/// One mounted filesystem the workloads run on.
#[derive(Debug)]
pub struct Target {
    pub kind: Kind,
    /// Where workloads create their files.
    pub root: PathBuf,
    /// The filesystem's own processes (FUSE daemons), for CPU and RSS.
    pub pids: Vec<u32>,
    res: Vec<Res>,
}

impl Target {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn ours(&self) -> bool {
        self.kind == Kind::Scoutfs
    }

    /// Makes everything written so far durable: `scoutfs sync` (FUSE has
    /// no syncfs request for us) or syncfs(2).
    pub fn sync(&self, ctx: &Ctx) {
        if self.kind == Kind::Scoutfs {
            let _ = sys::run(
                &ctx.scoutfs.to_string_lossy(),
                &["sync", "-p", &self.root.to_string_lossy()],
            );
            return;
        }
        if let Ok(f) = std::fs::File::open(&self.root) {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on a descriptor we hold open.
            unsafe { libc::syncfs(f.as_raw_fd()) };
        }
    }

    /// CPU seconds of the filesystem's processes so far.
    pub fn cpu(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| sys::cpu_secs(p)).sum()
    }

    pub fn reset_rss(&self) {
        self.pids.iter().for_each(|&p| sys::reset_peak_rss(p));
    }

    pub fn peak_rss(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| sys::peak_rss_mib(p)).sum()
    }

    /// One target standing for several mounts of one volume: the first
    /// mount's root, every daemon's CPU and RSS. Tearing it down does
    /// nothing; the mounts' own targets do that.
    pub fn group(mounts: &[Target]) -> Target {
        Target {
            kind: mounts[0].kind,
            root: mounts[0].root.clone(),
            pids: mounts.iter().flat_map(|t| t.pids.iter().copied()).collect(),
            res: Vec::new(),
        }
    }

    /// Unmounts, stops the daemons, detaches the loop device.
    pub fn teardown(mut self) {
        while let Some(r) = self.res.pop() {
            cleanup::release(&r);
        }
    }
}

fn track(res: &mut Vec<Res>, r: Res) {
    cleanup::push(r.clone());
    res.push(r);
}

/// Prepares one target under `ctx.workdir`. `lower` is the ext4 target's
/// root when ext4 runs too (bindfs passes through to it).
pub fn setup(ctx: &Ctx, kind: Kind, lower: Option<&Path>) -> Result<Target, String> {
    match kind {
        Kind::Scoutfs => {
            let mut v = scoutfs_volume(ctx, "scoutfs", 1)?;
            Ok(v.remove(0))
        }
        Kind::Ext4 | Kind::Xfs => loop_fs(ctx, kind),
        Kind::Tmpfs => {
            let mut res = Vec::new();
            let mnt = ctx.workdir.join("tmpfs");
            mkdir(&mnt)?;
            sys::run(
                "mount",
                &["-t", "tmpfs", "-o", "size=50%", "scoutfs-perf", &s(&mnt)],
            )?;
            track(&mut res, Res::Mount(mnt.clone()));
            Ok(Target {
                kind,
                root: mnt,
                pids: Vec::new(),
                res,
            })
        }
        Kind::Bindfs => {
            let mut res = Vec::new();
            let src = match lower {
                Some(l) => l.join("bindfs-lower"),
                None => ctx.workdir.join("bindfs-lower"),
            };
            let mnt = ctx.workdir.join("bindfs");
            mkdir(&src)?;
            mkdir(&mnt)?;
            sys::run("bindfs", &[&s(&src), &s(&mnt)])?;
            track(&mut res, Res::Mount(mnt.clone()));
            let pids = sys::pids_with(&s(&mnt));
            for &p in &pids {
                track(&mut res, Res::Pid(p));
            }
            // The pids go before the mount in teardown order; re-order so
            // the mount goes first and the daemon exits by itself.
            res.sort_by_key(|r| matches!(r, Res::Mount(_)));
            Ok(Target {
                kind,
                root: mnt,
                pids,
                res,
            })
        }
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn loop_fs(ctx: &Ctx, kind: Kind) -> Result<Target, String> {
    let mut res = Vec::new();
    let img = ctx.workdir.join(format!("{}.img", kind.name()));
    let mnt = ctx.workdir.join(kind.name());
    mkdir(&mnt)?;
    sys::sparse_file(&img, ctx.profile.loop_image_bytes)
        .map_err(|e| format!("{}: {e}", img.display()))?;
    let dev = sys::loop_attach(&img)?;
    track(&mut res, Res::Loop(dev.clone()));
    match kind {
        Kind::Ext4 => sys::run("mkfs.ext4", &["-q", "-F", &dev])?,
        _ => sys::run("mkfs.xfs", &["-q", "-f", &dev])?,
    };
    sys::run("mount", &[&dev, &s(&mnt)])?;
    track(&mut res, Res::Mount(mnt.clone()));
    Ok(Target {
        kind,
        root: mnt,
        pids: Vec::new(),
        res,
    })
}

/// A loopback port free for both TCP (the server) and UDP (the election).
fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let t = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = t.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free loopback port".into())
}

/// How long one mount may take to come up.
const MOUNT_WAIT: Duration = Duration::from_secs(90);

/// Makes a volume with `slots` quorum slots and mounts it once per slot,
/// all daemons started together (a quorum of several slots elects a
/// leader only once a majority runs). Fails when any mount does not come
/// up; whatever came up is torn down again.
pub fn scoutfs_volume(ctx: &Ctx, name: &str, slots: usize) -> Result<Vec<Target>, String> {
    let dir = ctx.workdir.join(name);
    mkdir(&dir)?;
    let meta = dir.join("meta.img");
    let data = dir.join("data.img");
    sys::sparse_file(&meta, ctx.profile.scoutfs_meta_bytes).map_err(|e| e.to_string())?;
    sys::sparse_file(&data, ctx.profile.scoutfs_data_bytes).map_err(|e| e.to_string())?;
    let mut args = vec!["mkfs".to_string(), "-A".to_string()];
    for slot in 0..slots {
        args.push("-Q".into());
        args.push(format!("{slot},127.0.0.1,{}", free_port()?));
    }
    args.push(s(&meta));
    args.push(s(&data));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    sys::run(&s(&ctx.scoutfs), &argv)?;

    let mut helpers = Vec::new();
    let mut mnts = Vec::new();
    for slot in 0..slots {
        let mnt = dir.join(format!("mnt{slot}"));
        mkdir(&mnt)?;
        // Registered before mounting: an interrupt during the mount still
        // finds it (unmounting something not mounted does nothing, and
        // its daemon is found by the mount point in its command line).
        cleanup::push(Res::Mount(mnt.clone()));
        // stderr to a file, not a pipe: the forked daemon inherits it and
        // may hold it open long after the helper has returned.
        let log = dir.join(format!("mount{slot}.log"));
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&ctx.mount_helper)
            .arg(&data)
            .arg(&mnt)
            .arg("-o")
            .arg(format!(
                "metadev_path={},quorum_slot_nr={slot}",
                meta.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", ctx.mount_helper.display()))?;
        helpers.push((slot, child, log));
        mnts.push(mnt);
    }
    // Wait for every helper; the first failure ends the wait (the others
    // may wait for a quorum that will not form).
    let end = Instant::now() + MOUNT_WAIT;
    let mut failure = None;
    while !helpers.is_empty() && failure.is_none() {
        let mut i = 0;
        while i < helpers.len() {
            match helpers[i].1.try_wait() {
                Ok(Some(st)) => {
                    let (slot, _, log) = helpers.remove(i);
                    if !st.success() {
                        let msg = std::fs::read_to_string(&log).unwrap_or_default();
                        failure = Some(format!(
                            "mount of slot {slot} failed ({st}): {}",
                            msg.trim()
                        ));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    failure = Some(format!("waiting for mount.scoutfs: {e}"));
                    i += 1;
                }
            }
        }
        if Instant::now() >= end {
            failure.get_or_insert(format!(
                "{} of {slots} mounts did not come up within {} s",
                helpers.len(),
                MOUNT_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (_, mut child, _) in helpers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut targets = Vec::new();
    for mnt in &mnts {
        let mut res = Vec::new();
        // Daemons go after their mount in teardown: unmounting lets the
        // daemon commit, say farewell and exit by itself.
        let pids: Vec<u32> = sys::pids_with(&format!("{} ", mnt.display()));
        for &p in &pids {
            track(&mut res, Res::Pid(p));
        }
        res.push(Res::Mount(mnt.clone()));
        targets.push(Target {
            kind: Kind::Scoutfs,
            root: mnt.clone(),
            pids,
            res,
        });
    }
    if let Some(why) = failure {
        for t in targets {
            t.teardown();
        }
        return Err(why);
    }
    Ok(targets)
}
