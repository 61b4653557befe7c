//! The hang watchdog of the multi-mount tests (TESTING.md §9): a test
//! announces each step with a deadline; a step still running past it is
//! a hang. The watchdog then writes a report on stderr (every task in D
//! state or waiting for a FUSE answer, with its `/proc/PID/stack` and the
//! file its system call names; the test's daemons' threads; each daemon's
//! status tree under `/run/scoutfs/<ident>/`: quorum state, fence
//! requests, counters, busy client locks) and aborts the test's FUSE
//! connections (`/sys/fs/fuse/connections/N/abort`), so every request
//! stuck in those mounts fails (ECONNABORTED, then ENOTCONN) and the test
//! fails on its own instead of wedging CI. Only the connections of mounts
//! handed to [`Watchdog::watch`] are aborted, never another test's.
//!
//! `SCOUTFS_WATCHDOG_SECS=N` replaces every step's deadline (slow machines,
//! or a debugger attached).
//!
//! The lock table is the tree's `client_locks` (the locks of the mount's
//! lock client); the report shows the ones not idle. The server's side
//! (which mount waits for which) is not published yet.
//!
//! Touches only /proc, /sys/fs/fuse and the run directory; it never
//! stats a mount point (that could hang too), it reads mountinfo.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The status trees' directory (`$SCOUTFS_RUN_DIR` or `/run/scoutfs`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("SCOUTFS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/scoutfs"))
}

/// The fusectl connection number of the FUSE mount on `mnt`, from
/// mountinfo (the connection is named after the superblock's device
/// number, `major << 20 | minor`; FUSE's are anonymous, major 0).
pub fn fuse_connection(mnt: &Path) -> Option<u32> {
    let want = mnt.canonicalize().ok()?;
    let want = want.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The last mount on the point is the visible one.
    info.lines()
        .rev()
        .filter(|l| l.split_whitespace().nth(4) == Some(want))
        .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("fuse")))
        .filter_map(|l| {
            let (maj, min) = l.split_whitespace().nth(2)?.split_once(':')?;
            Some((maj.parse::<u32>().ok()? << 20) | min.parse::<u32>().ok()?)
        })
        .next()
}

#[derive(Default)]
struct State {
    /// The running step and when it must be done.
    step: Option<(String, Instant)>,
    conns: BTreeSet<u32>,
    pids: BTreeSet<u32>,
    mnts: BTreeSet<PathBuf>,
    /// The report, once the watchdog fired.
    fired: Option<String>,
    /// Writing the report and aborting right now.
    firing: bool,
    stop: bool,
}

struct Shared {
    name: String,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One test's watchdog; stops when dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A running step: done when dropped.
pub struct Step<'a> {
    wd: &'a Watchdog,
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.wd.shared.lock().step = None;
    }
}

impl Watchdog {
    /// A watchdog for test `name`, not yet watching any mount.
    pub fn new(name: &str) -> Watchdog {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || run(&s));
        Watchdog {
            shared,
            thread: Some(thread),
        }
    }

    /// Watches the FUSE mount on `mnt` (call once it is mounted; again
    /// after a remount) and the daemon `pid` serving it.
    pub fn watch(&self, mnt: &Path, pid: u32) {
        let conn = fuse_connection(mnt);
        let mut g = self.shared.lock();
        g.conns.extend(conn);
        g.pids.insert(pid);
        g.mnts.insert(mnt.to_path_buf());
    }

    /// Starts a step that must end (the guard dropped) within `limit`.
    pub fn step(&self, what: impl Into<String>, limit: Duration) -> Step<'_> {
        let limit = std::env::var("SCOUTFS_WATCHDOG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(limit);
        self.shared.lock().step = Some((what.into(), Instant::now() + limit));
        self.shared.cv.notify_all();
        Step { wd: self }
    }

    /// The report if the watchdog fired.
    /// The report if the watchdog fired (once it is complete: the stuck
    /// step may return as soon as its connection is aborted).
    pub fn fired(&self) -> Option<String> {
        let mut g = self.shared.lock();
        while g.firing {
            g = self.shared.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.fired.clone()
    }

    /// Fails the test if the watchdog fired (call where a step's error
    /// would otherwise hide why it failed).
    pub fn assert_quiet(&self) {
        if let Some(r) = self.fired() {
            panic!("{}: hang watchdog fired:\n{r}", self.shared.name);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Aborted mounts outlive their daemons (which exit on the abort),
        // and a daemon that is gone is no longer unmounted by its test's
        // cleanup: detach them so the test's directory can go.
        let fired = self.shared.lock().fired.is_some();
        if fired {
            let mnts = self.shared.lock().mnts.clone();
            for m in mnts {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&m)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared) {
    let mut g = s.lock();
    loop {
        if g.stop {
            return;
        }
        let now = Instant::now();
        let wait = match &g.step {
            Some((what, deadline)) if *deadline <= now && g.fired.is_none() => {
                let what = what.clone();
                let (conns, pids) = (g.conns.clone(), g.pids.clone());
                g.firing = true;
                drop(g);
                let report = fire(&s.name, &what, &conns, &pids);
                eprintln!("{report}");
                g = s.lock();
                g.fired = Some(report);
                g.firing = false;
                s.cv.notify_all();
                continue;
            }
            Some((_, deadline)) if g.fired.is_none() => *deadline - now,
            _ => Duration::from_secs(3600),
        };
        g =
            s.cv.wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
    }
}

/// `pid`'s (or a thread's) state letter from its stat file.
fn task_state(stat: &str) -> Option<char> {
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Every thread in D state on the machine, and every thread waiting for
/// a FUSE answer (the kernel waits interruptibly first, state S), with
/// its kernel stack.
pub fn stuck_tasks(out: &mut String) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut n = 0;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = task_state(&stat).unwrap_or('?');
            let stack = read_trim(&t.path().join("stack"));
            if state != 'D' && !stack.contains("request_wait_answer") {
                continue;
            }
            n += 1;
            let comm = read_trim(&t.path().join("comm"));
            let _ = writeln!(
                out,
                "-- stuck task {pid}/{} ({comm}) state {state}, {}:\n{stack}",
                t.file_name().to_string_lossy(),
                syscall(pid, &t.path()),
            );
        }
    }
    let _ = writeln!(out, "-- {n} tasks in D state or waiting for a FUSE answer");
}

/// The system call a task is in, and the file its first argument names
/// when that is a descriptor (which mount a stuck fsync waits on).
fn syscall(pid: u32, task: &Path) -> String {
    let sc = read_trim(&task.join("syscall"));
    let mut f = sc.split_whitespace();
    let nr = f.next().unwrap_or("?");
    let fd = f
        .next()
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    let target = fd
        .filter(|fd| *fd < 1 << 20)
        .and_then(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok());
    match target {
        Some(t) => format!("syscall {nr} on {}", t.display()),
        None => format!("syscall {nr}"),
    }
}

/// The daemon's threads, grouped by name, state and where the kernel
/// has them (a hang in the daemon itself shows as futex waits; a thread
/// in the kernel anywhere else is worth a look).
fn daemon_stacks(out: &mut String, pid: u32) {
    let _ = writeln!(out, "-- daemon {pid}:");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        let _ = writeln!(out, "   gone");
        return;
    };
    let mut groups: std::collections::BTreeMap<(String, char, String), usize> = Default::default();
    for t in tasks.flatten() {
        let stack = read_trim(&t.path().join("stack"));
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let comm = read_trim(&t.path().join("comm"));
        let top = stack.lines().next().unwrap_or("").to_string();
        *groups
            .entry((comm, task_state(&stat).unwrap_or('?'), top))
            .or_default() += 1;
    }
    for ((comm, state, top), n) in groups {
        let _ = writeln!(out, "   {n} x {comm} state {state:?}: {top}");
    }
}

/// The status tree of the daemon `pid`, if it has one.
fn status_tree(out: &mut String, pid: u32) {
    let Ok(trees) = std::fs::read_dir(run_dir()) else {
        return;
    };
    for t in trees.flatten() {
        let dir = t.path();
        if read_trim(&dir.join("pid")) != pid.to_string() {
            continue;
        }
        let _ = writeln!(out, "-- status tree {}:", dir.display());
        let mut files = Vec::new();
        collect_files(&dir, &mut files);
        files.sort();
        let mut counters = String::new();
        let mut locks = None;
        for f in files {
            let rel = f.strip_prefix(&dir).unwrap_or(&f).display().to_string();
            let v = read_trim(&f);
            if let Some(c) = rel.strip_prefix("counters/") {
                if v != "0" {
                    let _ = write!(counters, " {c}={v}");
                }
            } else if rel == "client_locks" {
                locks = Some(v);
            } else {
                let _ = writeln!(out, "   {rel}: {v}");
            }
        }
        let _ = writeln!(out, "   counters (nonzero):{counters}");
        match locks {
            // Idle granted locks say nothing: only those in use, asked
            // for, or in the middle of an invalidation.
            Some(t) => {
                let busy: Vec<&str> = t
                    .lines()
                    .filter(|l| {
                        !(l.contains("request None")
                            && l.contains("queued 0 ")
                            && l.contains("owner_busy 0 ")
                            && l.contains("holders 0 ")
                            && l.ends_with("waiters 0"))
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "   client_locks: {} cached, {} busy:",
                    t.lines().count(),
                    busy.len()
                );
                for l in busy {
                    let _ = writeln!(out, "     {l}");
                }
            }
            None => {
                let _ = writeln!(out, "   client_locks: none published");
            }
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_files(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Writes the report and aborts the connections; returns the report.
fn fire(name: &str, what: &str, conns: &BTreeSet<u32>, pids: &BTreeSet<u32>) -> String {
    let mut out = format!("== HANG in {name}: step \"{what}\" is past its deadline\n");
    stuck_tasks(&mut out);
    for &pid in pids {
        daemon_stacks(&mut out, pid);
        status_tree(&mut out, pid);
    }
    // Without fusectl there is nothing to abort through (a machine that
    // never mounted it, or one where it was unmounted): mount it.
    if !Path::new("/sys/fs/fuse/connections")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"])
            .status();
    }
    for c in conns {
        let abort = Path::new("/sys/fs/fuse/connections")
            .join(c.to_string())
            .join("abort");
        let res = std::fs::write(&abort, b"1");
        let _ = writeln!(out, "-- aborted FUSE connection {c}: {res:?}");
    }
    out
}
