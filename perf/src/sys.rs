//! Thin wrappers over the system tools and /proc files the harness uses:
//! running a command with its output captured, mounting and unmounting,
//! loop devices, dropping the page cache, and the CPU time and peak RSS of
//! a process.
//!
//! Guarantees: every command failure comes back as an `Err` carrying the
//! command line and its stderr, never a panic. Touches no other module.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd args…`, returns its stdout; an error carries stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `name` is an executable in PATH.
pub fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// The mount points of /proc/mounts, decoded (`\040` is a space).
pub fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .collect()
}

pub fn is_mounted(dir: &Path) -> bool {
    mount_points().iter().any(|m| m == dir)
}

/// Unmounts `dir`: a plain umount first (a FUSE daemon then commits and
/// exits), then a lazy detach when it is busy.
pub fn unmount(dir: &Path) {
    if !is_mounted(dir) {
        return;
    }
    let d = dir.to_string_lossy();
    if run("umount", &[&d]).is_ok() && !is_mounted(dir) {
        return;
    }
    let _ = run("umount", &["-l", &d]);
}

/// Attaches `file` to a free loop device with direct I/O (so the page
/// cache does not hold the data twice: once above the filesystem, once in
/// the backing file); returns the device path.
pub fn loop_attach(file: &Path) -> Result<String, String> {
    let f = file.to_string_lossy();
    let out = run("losetup", &["--find", "--show", "--direct-io=on", &f])?;
    Ok(out.trim().to_string())
}

/// Detaches a loop device (the kernel defers it while still mounted).
pub fn loop_detach(dev: &str) {
    let _ = run("losetup", &["-d", dev]);
}

/// Loop devices whose backing file path contains `tag`.
pub fn loops_with(tag: &str) -> Vec<String> {
    run("losetup", &["-a"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(tag))
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
}

/// Writes back dirty pages and drops the clean page cache, so read
/// phases read from the device on every filesystem alike.
pub fn drop_caches() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// Processes whose command line contains `needle` (daemons the harness
/// started and only knows by their mount point).
pub fn pids_with(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let s = String::from_utf8_lossy(&c).replace('\0', " ");
                    s.contains(needle)
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its entry is left for the parent to reap.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            !matches!(s.rsplit(')').next().map(str::trim_start), Some(r) if r.starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid the harness started; no memory involved.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Waits until `pid` is gone, up to `limit`; true when it is.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Ends `pid`: SIGTERM, then SIGKILL when it has not gone in 10 s.
pub fn stop(pid: u32) {
    if !alive(pid) {
        return;
    }
    signal(pid, libc::SIGTERM);
    if !wait_gone(pid, Duration::from_secs(10)) {
        signal(pid, libc::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), 1-based from
    // field 3: utime is field 14, stime 15.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

/// Peak resident set (VmHWM) of a process in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets a process's peak RSS to its current RSS, so the next reading
/// covers one test only.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Creates a sparse file of `bytes`.
pub fn sparse_file(path: &Path, bytes: u64) -> io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(bytes)
}

/// Like [`drop_caches`], and also the dentry and inode caches.
pub fn drop_caches_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Tells the kernel a file is read at random (no readahead), as fio does
/// by default (`fadvise_hint=1`) for random workloads.
pub fn fadvise_random(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on a descriptor we hold; advice only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}
