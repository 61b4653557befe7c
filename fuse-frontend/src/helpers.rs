//! `mount.scoutfs` and `umount.fuse.scoutfs`: what mount(8) and umount(8)
//! run for scoutfs (ARCHITECTURE §2.11). The `scoutfsd` binary acts as
//! either when called by that name (install them as symlinks to it in
//! /sbin, where mount(8) and umount(8) look).
//!
//! `mount.scoutfs DATA DIR [-sfnv] [-o OPTIONS] [-t TYPE]`:
//! validates the options ([`ScoutfsOptions`]), the devices (both hold a
//! scoutfs super of one volume, META on the metadata device only, not one
//! device twice, `quorum_slot_nr` a configured slot) and the directory,
//! then forks the daemon ([`crate::launch`]) and returns once it has
//! mounted. It dies with mount(8) (`PR_SET_PDEATHSIG`), and a daemon whose
//! helper died exits with nothing mounted. Exit codes are mount(8)'s:
//! 1 bad invocation, 32 mount failure.
//!
//! `umount.fuse.scoutfs DIR [-flnrv] [-t TYPE]`: finds the mount's daemon
//! (mountinfo → by-dev → ident) and asks it to unmount through the
//! control socket: the daemon calls umount2 itself (EBUSY: "target is
//! busy", the daemon stays), commits, says farewell and exits, and only
//! then does the helper return. `-f` aborts the FUSE connection through
//! fusectl, kills the daemon (SIGKILL, no farewell: the leader fences it
//! like a crashed node) and detaches the mount.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::format::superblock::{SuperBlock, SUPER_FLAG_META_BDEV};
use engine::format::{MAGIC_SUPER, SM_BLOCK_SIZE, SUPER_BLKNO};
use zerocopy::FromBytes;

use crate::control::client::Client;
use crate::control::sock;
use crate::control::StatusTree;
use crate::daemon::{canonical_dir, mount_dev, strerror, usable_mountpoint, Config};
use crate::launch::{spawn_daemon, Launched};
use crate::options::ScoutfsOptions;

/// mount(8)'s exit codes.
pub const EX_USAGE: i32 = 1;
pub const EX_FAIL: i32 = 32;

const MOUNT_PROG: &str = "mount.scoutfs";
const MOUNT_FUSE_PROG: &str = "mount.fuse.scoutfs";
const UMOUNT_PROG: &str = "umount.fuse.scoutfs";
/// How long `umount -f` waits for the killed daemon to be gone.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// Where fusectl lives.
const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Reads the super block of a device (file or block device).
fn read_super(path: &Path) -> Result<SuperBlock, String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| {
        format!(
            "failed to open '{}': {} ({})",
            path.display(),
            strerror(errno_of(&e)),
            errno_of(&e)
        )
    })?;
    let mut buf = vec![0u8; SM_BLOCK_SIZE];
    f.read_exact_at(&mut buf, SUPER_BLKNO * SM_BLOCK_SIZE as u64)
        .map_err(|e| format!("'{}': cannot read the super block: {e}", path.display()))?;
    let (sb, _) = SuperBlock::read_from_prefix(&buf)
        .map_err(|_| format!("'{}': short super block", path.display()))?;
    if sb.hdr.magic.get() != MAGIC_SUPER {
        return Err(format!(
            "'{}' does not hold a scoutfs super block",
            path.display()
        ));
    }
    Ok(sb)
}

/// The checks of the devices and the quorum slot.
fn check_devices(meta: &Path, data: &Path, opts: &ScoutfsOptions) -> Result<(), String> {
    let same = match (std::fs::metadata(meta), std::fs::metadata(data)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        return Err(format!(
            "metadev_path '{}' and the data device '{}' are the same device",
            meta.display(),
            data.display()
        ));
    }
    let msb = read_super(meta)?;
    let dsb = read_super(data)?;
    let meta_flag = |sb: &SuperBlock| sb.flags.get() & SUPER_FLAG_META_BDEV != 0;
    if !meta_flag(&msb) && meta_flag(&dsb) {
        return Err(format!(
            "the devices are swapped: '{}' is the metadata device and '{}' the data device",
            data.display(),
            meta.display()
        ));
    }
    if !meta_flag(&msb) {
        return Err(format!(
            "metadev_path '{}' is not a scoutfs metadata device",
            meta.display()
        ));
    }
    if meta_flag(&dsb) {
        return Err(format!(
            "'{}' is a metadata device, not a data device",
            data.display()
        ));
    }
    if msb.hdr.fsid.get() != dsb.hdr.fsid.get() {
        return Err(format!(
            "'{}' and '{}' belong to different filesystems (fsid {:016x} and {:016x})",
            meta.display(),
            data.display(),
            msb.hdr.fsid.get(),
            dsb.hdr.fsid.get()
        ));
    }
    if let Some(slot) = opts.quorum_slot_nr {
        if !msb.qconf.active_slots().any(|(i, _)| i == slot as usize) {
            return Err(format!(
                "quorum_slot_nr={slot} is not a configured quorum slot of this volume"
            ));
        }
    }
    Ok(())
}

/// Dies with the calling process's parent (mount(8)): a helper killed
/// while waiting takes its daemon's mount with it.
fn die_with_parent() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

/// `mount.scoutfs`: see the module comment. Returns the exit code.
pub fn mount_main(args: &[String]) -> i32 {
    mount_main_as(MOUNT_PROG, args)
}

/// `mount.fuse.scoutfs`, what mount(8) runs for a mount of type
/// `fuse.scoutfs` (a remount, or `mount -t fuse.scoutfs`): the same as
/// `mount.scoutfs` under its own name.
pub fn mount_fuse_main(args: &[String]) -> i32 {
    mount_main_as(MOUNT_FUSE_PROG, args)
}

fn mount_main_as(prog: &str, args: &[String]) -> i32 {
    let mut pos = Vec::new();
    let mut opts = String::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => match it.next() {
                Some(v) => {
                    if !opts.is_empty() {
                        opts.push(',');
                    }
                    opts.push_str(v);
                }
                None => return usage(MOUNT_PROG, "option '-o' requires an argument"),
            },
            "-t" | "-N" => {
                if it.next().is_none() {
                    return usage(MOUNT_PROG, &format!("option '{a}' requires an argument"));
                }
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" | "-i" => {}
            s if s.starts_with("-o") && s.len() > 2 => {
                if !opts.is_empty() {
                    opts.push(',');
                }
                opts.push_str(&s[2..]);
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return usage(MOUNT_PROG, &format!("invalid option '{s}'"))
            }
            _ => pos.push(a.clone()),
        }
    }
    if opts.split(',').any(|o| o == "remount") {
        // mount(8) passes the source too; `mount.scoutfs -o remount DIR`
        // by hand may not.
        let Some(dir) = pos.last().filter(|_| pos.len() <= 2) else {
            return usage(prog, "expected the mount point to remount");
        };
        if fake {
            return 0;
        }
        return match crate::remount::remount(Path::new(dir), &opts) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("{prog}: {msg}");
                EX_FAIL
            }
        };
    }
    let [data, dir] = pos.as_slice() else {
        return usage(prog, "expected the data device and the mount point");
    };
    let options = match ScoutfsOptions::parse(&opts) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{MOUNT_PROG}: {msg}");
            return EX_FAIL;
        }
    };
    let data = PathBuf::from(data);
    if let Err(msg) = check_devices(&options.metadev_path, &data, &options) {
        eprintln!("{MOUNT_PROG}: {msg}");
        return EX_FAIL;
    }
    let dir = PathBuf::from(dir);
    if !usable_mountpoint(&dir) {
        eprintln!(
            "{MOUNT_PROG}: mount point '{}' is not a directory",
            dir.display()
        );
        return EX_FAIL;
    }
    if fake {
        return 0;
    }
    let target = canonical_dir(&dir);
    let mut config = Config::new(options.metadev_path.clone(), data, dir);
    config.options = options;
    let source = std::path::absolute(&config.datadev).unwrap_or(config.datadev.clone());
    match spawn_daemon(config, MOUNT_PROG, die_with_parent) {
        Launched::Mounted(_) => {
            if let Err(e) = record_utab(&source, &target) {
                eprintln!("{MOUNT_PROG}: cannot record the mount in {UTAB}: {e}");
            }
            0
        }
        Launched::Failed(_) => EX_FAIL,
    }
}

/// libmount's table of userspace mount information.
const UTAB: &str = "/run/mount/utab";

/// libmount's escaping of utab values.
fn mangle(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// Drops utab lines of `target` (after an unmount).
fn remove_utab(target: &Path) {
    let Ok(text) = std::fs::read_to_string(UTAB) else {
        return;
    };
    let Ok(lock) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{UTAB}.lock"))
    else {
        return;
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return;
    }
    let want = format!("TARGET={}", mangle(&target.to_string_lossy()));
    let kept: String = text
        .lines()
        .filter(|l| !l.split(' ').any(|f| f == want))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != text {
        let tmp = format!("{UTAB}.scoutfs");
        if std::fs::write(&tmp, kept).is_ok() {
            let _ = std::fs::rename(&tmp, UTAB);
        }
    }
}

/// The mountinfo id of the newest mount on `dir`.
fn mount_id(dir: &Path) -> io::Result<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = mangle(&dir.to_string_lossy());
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .next_back()
        .ok_or_else(|| io::Error::other("not in mountinfo"))
}

/// Records the mount in utab the way libmount does, so that umount(8)
/// reads its type from mountinfo (`fuse.scoutfs`, not statfs's `fuse`)
/// and runs `umount.fuse.scoutfs`; `helper=` names that helper as well.
fn record_utab(source: &Path, target: &Path) -> io::Result<()> {
    use std::io::Write;
    let id = mount_id(target)?;
    let utab = Path::new(UTAB);
    std::fs::create_dir_all(utab.parent().unwrap_or(Path::new("/run/mount")))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{UTAB}.lock"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(utab)?;
    writeln!(
        f,
        "ID={id} SRC={} TARGET={} ROOT=/ OPTS=helper=fuse.scoutfs",
        mangle(&source.to_string_lossy()),
        mangle(&target.to_string_lossy())
    )
}

fn usage(prog: &str, msg: &str) -> i32 {
    eprintln!("{prog}: {msg}");
    if prog == MOUNT_PROG {
        eprintln!("Usage: {MOUNT_PROG} DATA-DEVICE DIR -o metadev_path=META-DEVICE[,OPTIONS]");
    } else {
        eprintln!("Usage: {UMOUNT_PROG} DIR [-f]");
    }
    EX_USAGE
}

/// A pidfd for `pid` (to wait for a process that is not our child).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` exits (or `limit` passes).
fn wait_exit(pidfd: &OwnedFd, limit: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.map(|d| d.as_millis() as i32).unwrap_or(-1);
    loop {
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            return false;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

fn umount2(dir: &Path, flags: i32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `umount.fuse.scoutfs`: see the module comment. Returns the exit code.
pub fn umount_main(args: &[String]) -> i32 {
    let mut pos = Vec::new();
    let mut force = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-t" | "-N" => {
                if it.next().is_none() {
                    return usage(UMOUNT_PROG, &format!("option '{a}' requires an argument"));
                }
            }
            s if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                for c in s[1..].chars() {
                    match c {
                        'f' => force = true,
                        'l' | 'n' | 'r' | 'v' | 'i' => {}
                        _ => return usage(UMOUNT_PROG, &format!("invalid option -- '{c}'")),
                    }
                }
            }
            _ => pos.push(a.clone()),
        }
    }
    let [dir] = pos.as_slice() else {
        return usage(UMOUNT_PROG, "expected one mount point");
    };
    let dir = canonical_dir(Path::new(dir));
    let dev = match mount_dev(&dir) {
        Ok(d) => d,
        Err(_) => {
            eprintln!("umount: {}: not mounted.", dir.display());
            return EX_FAIL;
        }
    };
    let ident = std::fs::read_to_string(sock::by_dev_path(dev.0, dev.1))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let code = if force {
        force_unmount(&dir, dev, ident.as_deref())
    } else {
        clean_unmount(&dir, ident.as_deref())
    };
    if code == 0 {
        remove_utab(&dir);
    }
    code
}

/// The daemon unmounts, commits, says farewell and exits; we return after.
fn clean_unmount(dir: &Path, ident: Option<&str>) -> i32 {
    let client = ident.map(Client::new);
    let hello = client.as_ref().map(|c| c.hello());
    let (client, pid) = match (client, hello) {
        (Some(c), Some(Ok(h))) => (c, h.pid as i32),
        _ => {
            // No daemon answers: a mount whose daemon died. Detach it.
            return match umount2(dir, libc::MNT_DETACH) {
                Ok(()) => {
                    StatusTree::remove_stale();
                    0
                }
                Err(e) => {
                    eprintln!("umount: {}: {}", dir.display(), strerror(errno_of(&e)));
                    EX_FAIL
                }
            };
        }
    };
    let pidfd = pidfd_open(pid).ok();
    match client.unmount() {
        Ok(()) => {
            if let Some(fd) = pidfd {
                wait_exit(&fd, None);
            }
            0
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            eprintln!("umount: {}: target is busy.", dir.display());
            EX_FAIL
        }
        Err(e) => {
            let n = errno_of(&e);
            eprintln!("umount: {}: {} ({n})", dir.display(), strerror(n));
            EX_FAIL
        }
    }
}

/// Makes sure fusectl is mounted; true when its directory is usable.
fn fusectl_ready() -> bool {
    let dir = Path::new(FUSECTL_DIR);
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(2) == Some("fusectl")))
        .unwrap_or(false);
    if mounted {
        return true;
    }
    if !dir.is_dir() {
        return false;
    }
    // SAFETY: constant NUL-terminated strings for the call.
    let r = unsafe {
        libc::mount(
            c"fusectl".as_ptr(),
            c"/sys/fs/fuse/connections".as_ptr(),
            c"fusectl".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    r == 0
}

/// Aborts the connection, kills the daemon without farewell, detaches.
fn force_unmount(dir: &Path, dev: (u32, u32), ident: Option<&str>) -> i32 {
    // fusectl names a connection by the kernel's dev_t: major << 20 | minor.
    let conn = (u64::from(dev.0) << 20) | u64::from(dev.1);
    if fusectl_ready() {
        let abort = Path::new(FUSECTL_DIR).join(conn.to_string()).join("abort");
        let _ = std::fs::write(abort, b"1");
    }
    let pid = ident.and_then(|id| {
        std::fs::read_to_string(sock::run_dir().join(id).join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    });
    if let Some(pid) = pid.filter(|&p| p > 1) {
        let pidfd = pidfd_open(pid).ok();
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(fd) = pidfd {
            if !wait_exit(&fd, Some(KILL_WAIT)) {
                eprintln!("umount: the daemon (pid {pid}) did not exit");
            }
        }
    }
    let code = match umount2(dir, libc::MNT_DETACH) {
        Ok(()) => 0,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 0,
        Err(e) => {
            eprintln!("umount: {}: {}", dir.display(), strerror(errno_of(&e)));
            EX_FAIL
        }
    };
    StatusTree::remove_stale();
    code
}
