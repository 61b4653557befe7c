//! The local fence action (ARCHITECTURE §2.10): every node holds an
//! exclusive `flock` on `<dir>/<rid>.lock` (by default
//! `/run/scoutfs/rid/`) for as long as it runs. To fence a rid, SIGKILL the
//! holder named in the file, wait until the lock is free (the kernel drops
//! it only once the process is gone, in-flight io_uring writes included),
//! and report it fenced. A rid whose lock is already free, a node that
//! crashed or lost power, is fenced at once: that is how a remount after
//! kill -9 comes up on its own.
//!
//! Only nodes on this host can be fenced this way; across hosts a site
//! fence script (or cutting the node off the shared devices) does it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::Runtime;

/// Where rid locks live by default.
pub const RID_LOCK_DIR: &str = "/run/scoutfs/rid";
/// How long a fenced holder may take to die.
pub const FENCE_WAIT: Duration = Duration::from_secs(10);
/// How often a fence checks whether the lock came free.
const FENCE_POLL: Duration = Duration::from_millis(20);

fn lock_path(dir: &Path, rid: u64) -> PathBuf {
    dir.join(format!("{rid:016x}.lock"))
}

/// Takes `flock(fd, op)`; false when it would block.
fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this File owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// This node's hold on its rid lock: released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct RidLock {
    _file: File,
    path: PathBuf,
}

impl RidLock {
    /// Creates and locks `<dir>/<rid>.lock`, writing our pid into it.
    pub fn take(dir: &Path, rid: u64) -> std::io::Result<RidLock> {
        std::fs::create_dir_all(dir)?;
        let path = lock_path(dir, rid);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        if !flock(&f, libc::LOCK_EX | libc::LOCK_NB)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is held by another process", path.display()),
            ));
        }
        f.set_len(0)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        Ok(RidLock { _file: f, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RidLock {
    fn drop(&mut self) {
        // A clean exit leaves nothing behind; the lock goes with the file.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `rid` ran on this host and is gone: its lock file is there and
/// nobody holds the lock (a crash or kill -9 leaves exactly that). A rid
/// that never ran here is not known dead.
pub fn is_dead_here(dir: &Path, rid: u64) -> bool {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_path(dir, rid))
    else {
        return false;
    };
    let free = flock(&f, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false);
    if free {
        // SAFETY: unlocking a descriptor this File owns.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    free
}

/// Whether some other open of `path` holds an exclusive flock on it (how
/// the node sees a running `scoutfs fenced`). A missing file is not held.
pub fn flock_held_elsewhere(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    match flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(true) => {
            // SAFETY: unlocking a descriptor this File owns.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            false
        }
        Ok(false) => true,
        Err(_) => false,
    }
}

/// Fences `rid` on this host (see the module documentation). Blocking: run
/// it with [`Runtime::spawn_blocking`].
pub fn fence_local_blocking(dir: &Path, rid: u64, wait: Duration) -> std::io::Result<()> {
    let path = lock_path(dir, rid);
    let mut f = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        // No lock file: the node exited cleanly (or never ran here).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if flock(&f, libc::LOCK_EX | libc::LOCK_NB)? {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    if let Ok(pid) = text.trim().parse::<libc::pid_t>() {
        if pid > 0 && pid as u32 != std::process::id() {
            // SAFETY: sending a signal has no memory effects here.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let mut waited = Duration::ZERO;
    while waited < wait {
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB)? {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        // A blocking-pool thread: sleeping here holds up nothing else.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(FENCE_POLL);
        waited += FENCE_POLL;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("rid {rid:016x} still holds {}", path.display()),
    ))
}

/// Fences `rid` from the engine: the blocking work runs on the pool.
pub async fn fence_local(rt: &Runtime, dir: PathBuf, rid: u64) -> Result<(), i32> {
    rt.spawn_blocking(move || fence_local_blocking(&dir, rid, FENCE_WAIT))
        .await
        .map_err(|e| e.raw_os_error().unwrap_or(libc::ETIMEDOUT))
}
