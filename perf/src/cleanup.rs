//! Everything the harness sets up that outlives a function call (mounts,
//! loop devices, daemon processes, its work directory) is registered here
//! and undone on every way out: the normal end, Ctrl-C / SIGTERM / SIGHUP,
//! and a panic.
//!
//! Guarantees: [`undo_all`] runs at most once at a time, undoes in reverse
//! order of registration (a FUSE passthrough over ext4 goes before ext4,
//! the mount before its loop device), and after it has started any new
//! registration is undone on the spot, so a workload racing with Ctrl-C
//! cannot leave something behind. Uses [`crate::sys`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sys;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Res {
    /// A mount point to unmount.
    Mount(PathBuf),
    /// A loop device to detach.
    Loop(String),
    /// A daemon to stop (after its mount is gone it exits by itself).
    Pid(u32),
    /// A directory tree to remove.
    Dir(PathBuf),
}

static REG: Mutex<Vec<Res>> = Mutex::new(Vec::new());
static CLOSING: AtomicBool = AtomicBool::new(false);
/// Set once the main thread has stopped touching the mounts.
static MAIN_IDLE: AtomicBool = AtomicBool::new(false);

/// Marks the run closing without undoing anything yet: workloads see it
/// and stop.
pub fn begin_closing() {
    CLOSING.store(true, Ordering::SeqCst);
}

/// The main thread calls this when it has stopped for good after an
/// interrupt; it never returns (the signal thread exits the process).
pub fn main_idle() -> ! {
    MAIN_IDLE.store(true, Ordering::SeqCst);
    loop {
        std::thread::park();
    }
}

/// Whether the run is being torn down (workloads stop early).
pub fn closing() -> bool {
    CLOSING.load(Ordering::SeqCst)
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Res>> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `r`; when the run is already closing it is undone at once.
pub fn push(r: Res) {
    let mut reg = lock();
    if closing() {
        drop(reg);
        undo(&r);
        return;
    }
    reg.push(r);
}

/// Undoes `r` now and forgets it.
pub fn release(r: &Res) {
    let mut reg = lock();
    reg.retain(|x| x != r);
    drop(reg);
    undo(r);
}

fn undo(r: &Res) {
    match r {
        Res::Mount(dir) => {
            sys::unmount(dir);
            // The mount's daemon (found by the mount point in its command
            // line): after an unmount it commits and exits by itself; one
            // that never mounted is stopped.
            for pid in sys::pids_with(&format!("{} ", dir.display())) {
                if !sys::wait_gone(pid, Duration::from_secs(10)) {
                    sys::stop(pid);
                }
            }
        }
        Res::Loop(dev) => sys::loop_detach(dev),
        Res::Pid(pid) => {
            // A daemon whose mount went away commits and exits by itself:
            // give it that chance before it is stopped.
            if !sys::wait_gone(*pid, Duration::from_secs(20)) {
                sys::stop(*pid);
            }
        }
        Res::Dir(dir) => {
            if no_mounts_under(dir) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Never remove a tree something is still mounted in: that would delete
/// the mounted filesystem's files.
fn no_mounts_under(dir: &Path) -> bool {
    !sys::mount_points().iter().any(|m| m.starts_with(dir))
}

/// The run's work directory: everything the run makes has it in its
/// path (mount points, loop backing files, daemon command lines).
static TAG: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the work directory the final sweep of [`undo_all`] looks for.
pub fn set_tag(dir: &Path) {
    *TAG.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
}

/// Undoes everything registered and marks the run closing: mounts first,
/// newest first (a passthrough before what it passes through to; FUSE
/// daemons then commit and exit by themselves), then daemons and loop
/// devices; then a sweep for anything under the work directory that was
/// being set up when the run was interrupted (mounted or attached but not
/// registered yet); the work directory last.
pub fn undo_all() {
    // One undo at a time: the signal thread and the main thread's normal
    // end may both get here; the second waits and finds nothing left.
    static UNDOING: Mutex<()> = Mutex::new(());
    let _one = UNDOING.lock().unwrap_or_else(|e| e.into_inner());
    CLOSING.store(true, Ordering::SeqCst);
    let rank = |r: &Res| match r {
        Res::Mount(_) => 0,
        Res::Pid(_) => 1,
        Res::Loop(_) => 2,
        Res::Dir(_) => 3,
    };
    let next = |max: u8| {
        let mut reg = lock();
        let best = (0..reg.len())
            .rev()
            .filter(|&i| rank(&reg[i]) <= max)
            .min_by_key(|&i| rank(&reg[i]));
        best.map(|i| reg.remove(i))
    };
    while let Some(r) = next(2) {
        undo(&r);
    }
    sweep();
    while let Some(r) = next(3) {
        undo(&r);
    }
}

/// Sweeps until nothing of the run is left (a lazily detached mount lets
/// go of its loop device only once its last user is gone) or 30 s pass.
fn sweep() {
    let Some(tag) = TAG.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let t = tag.to_string_lossy().into_owned();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        sweep_once(&tag);
        let left = sys::mount_points().iter().any(|m| m.starts_with(&tag))
            || !sys::pids_with(&t).is_empty()
            || !sys::loops_with(&t).is_empty();
        if !left || std::time::Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sweep_once(tag: &Path) {
    let mut mounts: Vec<PathBuf> = sys::mount_points()
        .into_iter()
        .filter(|m| m.starts_with(tag))
        .collect();
    // Deepest first: bindfs-like mounts inside others go before them.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        undo(&Res::Mount(m));
    }
    for pid in sys::pids_with(&tag.to_string_lossy()) {
        sys::stop(pid);
    }
    for dev in sys::loops_with(&tag.to_string_lossy()) {
        sys::loop_detach(&dev);
    }
}

static PIPE_W: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::SeqCst);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// Installs the Ctrl-C / SIGTERM / SIGHUP handling and the panic hook.
/// The handler only writes the signal number to a pipe; a thread reads it,
/// undoes everything and exits with 128 + signal. The panic hook prints
/// the panic, undoes everything and exits with 101.
pub fn install() {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("scoutfs-perf: cannot create the signal pipe: Ctrl-C will not clean up");
        return;
    }
    PIPE_W.store(fds[1], Ordering::SeqCst);
    let reader = fds[0];
    std::thread::spawn(move || {
        let mut b = 0u8;
        // SAFETY: read(2) into a local byte from our own pipe.
        let n = unsafe { libc::read(reader, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            eprintln!("\nscoutfs-perf: signal {b}: cleaning up (mounts, loop devices, daemons)");
            // Let the workloads stop first (they check between operations),
            // so unmounting finds no open files and need not detach lazily.
            begin_closing();
            let end = std::time::Instant::now() + Duration::from_secs(15);
            while !MAIN_IDLE.load(Ordering::SeqCst) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            undo_all();
            eprintln!("scoutfs-perf: cleaned up");
            std::process::exit(128 + i32::from(b));
        }
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only calls
        // write(2); installed before any workload thread runs.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("scoutfs-perf: panic: cleaning up");
        undo_all();
        std::process::exit(101);
    }));
}
