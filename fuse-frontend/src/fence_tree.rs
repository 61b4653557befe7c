//! The cluster part of a mount's status tree (reference §6.4, the
//! original's sysfs `fence/` and `quorum/` directories), kept by a thread
//! of its own from the moment the node starts: a leader publishes the
//! fences it needs before it serves, long before the mount exists.
//!
//! * `fence/<rid-hex>/`: `elapsed_secs`, `error`, `fenced`, `ipv4_addr`,
//!   `reason`, `rid`, one value and a newline each. A fence agent answers
//!   by writing `1` into `fenced` or `error`; this thread reads both every
//!   [`POLL`] and passes the answer to the node's [`Fencer`]
//!   (docs/decisions.md, "Fence requests in the status tree"). A request
//!   the node no longer has is removed with its directory.
//! * `quorum/`: `term`, `is_leader` (0 or 1) and `server_addr` (the
//!   `ip:port` of the server this node runs, empty when none).
//! * `client_locks`: the mount's cached cluster locks, one line each (the
//!   original's debugfs file of that name), once the mount is up
//!   ([`FenceTree::set_locks`]); rewritten at most every
//!   [`LOCKS_INTERVAL`] when it changed. What a hang report reads.
//!
//! Guarantees: the thread never waits on the engine (the fencer and the
//! status are plain locks), so an agent's answer reaches the node however
//! busy the mount is; files are replaced by rename, except `fenced` and
//! `error`, which the agent writes in place and this thread only rewrites
//! when the node's own answer (the local fence) makes them 1.
//!
//! Touches `engine::node::{fencer, fence_requests, member}`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use engine::node::fence_requests::{Answer, RequestView, State};
use engine::node::fencer::Fencer;
use engine::node::member::StatusSource;

/// How often answers are looked for and `elapsed_secs` refreshed.
pub const POLL: Duration = Duration::from_millis(100);

fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Whether `path` holds the value 1 (what `echo 1 > file` leaves).
fn is_one(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

/// How often `client_locks` may be rewritten.
pub const LOCKS_INTERVAL: Duration = Duration::from_secs(1);

/// The lock table's text, from a plain lock (never waits on the engine).
pub type LocksSource = Arc<dyn Fn() -> String + Send + Sync>;

/// The running thread.
pub struct FenceTree {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    locks: Arc<std::sync::Mutex<Option<LocksSource>>>,
    thread: Option<JoinHandle<()>>,
}

struct Keeper {
    dir: PathBuf,
    fencer: Option<Arc<Fencer>>,
    status: StatusSource,
    /// What was last written per request: (elapsed_secs, state).
    shown: BTreeMap<u64, (u64, State)>,
    quorum: Option<(u64, bool, String)>,
    locks: Arc<std::sync::Mutex<Option<LocksSource>>>,
    /// The last `client_locks` written, and poll rounds since.
    locks_shown: Option<String>,
    locks_rounds: u32,
}

impl Keeper {
    fn sync(&mut self) {
        if let Some(f) = self.fencer.clone() {
            self.sync_fences(&f);
        }
        self.sync_quorum();
        self.sync_locks();
    }

    fn sync_locks(&mut self) {
        self.locks_rounds += 1;
        if (self.locks_rounds as u128) * POLL.as_millis() < LOCKS_INTERVAL.as_millis() {
            return;
        }
        let source = self.locks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(source) = source else {
            return;
        };
        let text = source();
        if self.locks_shown.as_ref() == Some(&text) {
            return;
        }
        if write_atomic(&self.dir.join("client_locks"), &text).is_ok() {
            self.locks_shown = Some(text);
            self.locks_rounds = 0;
        }
    }

    fn sync_fences(&mut self, fencer: &Fencer) {
        let fence_dir = self.dir.join("fence");
        let reqs = fencer.requests();
        // Answers first: what the agent wrote since the last pass.
        for r in &reqs {
            if r.state != State::Pending || !self.shown.contains_key(&r.rid) {
                continue;
            }
            let d = fence_dir.join(format!("{:016x}", r.rid));
            let answer = if is_one(&d.join("error")) {
                Some(Answer::Error)
            } else if is_one(&d.join("fenced")) {
                Some(Answer::Fenced)
            } else {
                None
            };
            if let Some(a) = answer {
                let _ = fencer.answer(r.rid, a);
            }
        }
        let reqs = fencer.requests();
        let live: Vec<u64> = reqs.iter().map(|r| r.rid).collect();
        for rid in self.shown.keys().copied().collect::<Vec<_>>() {
            if !live.contains(&rid) {
                let _ = std::fs::remove_dir_all(fence_dir.join(format!("{rid:016x}")));
                self.shown.remove(&rid);
            }
        }
        for r in &reqs {
            if self.shown.get(&r.rid) == Some(&(r.elapsed_secs, r.state)) {
                continue;
            }
            if self.publish(&fence_dir, r).is_ok() {
                self.shown.insert(r.rid, (r.elapsed_secs, r.state));
            }
        }
    }

    fn publish(&self, fence_dir: &Path, r: &RequestView) -> io::Result<()> {
        let d = fence_dir.join(format!("{:016x}", r.rid));
        if !self.shown.contains_key(&r.rid) {
            // A directory left from an earlier request of this rid (a
            // stopped server) would carry its old answers.
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d)?;
            write_atomic(&d.join("rid"), &format!("{:016x}\n", r.rid))?;
            write_atomic(&d.join("ipv4_addr"), &format!("{}\n", r.ipv4))?;
            write_atomic(&d.join("reason"), &format!("{}\n", r.reason.as_str()))?;
            write_atomic(&d.join("fenced"), "0\n")?;
            write_atomic(&d.join("error"), "0\n")?;
        }
        write_atomic(&d.join("elapsed_secs"), &format!("{}\n", r.elapsed_secs))?;
        // The node's own outcome (local fence, timeout) shows too.
        match r.state {
            State::Fenced if !is_one(&d.join("fenced")) => write_atomic(&d.join("fenced"), "1\n")?,
            State::Error if !is_one(&d.join("error")) => write_atomic(&d.join("error"), "1\n")?,
            _ => {}
        }
        Ok(())
    }

    fn sync_quorum(&mut self) {
        let (st, addr) = (self.status)();
        let now = (
            st.quorum_term,
            st.leader,
            addr.map(|a| a.to_string()).unwrap_or_default(),
        );
        if self.quorum.as_ref() == Some(&now) {
            return;
        }
        let q = self.dir.join("quorum");
        let written = std::fs::create_dir_all(&q)
            .and_then(|()| write_atomic(&q.join("term"), &format!("{}\n", now.0)))
            .and_then(|()| write_atomic(&q.join("is_leader"), &format!("{}\n", now.1 as u8)))
            .and_then(|()| write_atomic(&q.join("server_addr"), &format!("{}\n", now.2)));
        if written.is_ok() {
            self.quorum = Some(now);
        }
    }
}

impl FenceTree {
    /// Starts keeping `dir/fence` (when `fencer` is given: quorum members)
    /// and `dir/quorum`.
    pub fn start(
        dir: PathBuf,
        fencer: Option<Arc<Fencer>>,
        status: StatusSource,
    ) -> io::Result<FenceTree> {
        std::fs::create_dir_all(&dir)?;
        // Ours from now on: a daemon killed before its control socket
        // came up still leaves a tree that the next one removes.
        write_atomic(&dir.join("pid"), &format!("{}\n", std::process::id()))?;
        if fencer.is_some() {
            std::fs::create_dir_all(dir.join("fence"))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let locks = Arc::new(std::sync::Mutex::new(None));
        let mut keeper = Keeper {
            dir: dir.clone(),
            fencer,
            status,
            shown: BTreeMap::new(),
            quorum: None,
            locks: locks.clone(),
            locks_shown: None,
            locks_rounds: 0,
        };
        let flag = stop.clone();
        // The daemon's own thread, outside the engine (like the control
        // thread): it only reads locks and writes files.
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::Builder::new()
            .name("scoutfs-fence".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    keeper.sync();
                    std::thread::park_timeout(POLL);
                }
            })?;
        Ok(FenceTree {
            dir,
            stop,
            locks,
            thread: Some(thread),
        })
    }

    /// Publishes the mount's lock table from now on.
    pub fn set_locks(&self, source: LocksSource) {
        *self.locks.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Stops the thread and removes its files (and the tree's directory
    /// if nothing else is left in it).
    pub fn stop(mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(self.dir.join("fence"));
        let _ = std::fs::remove_dir_all(self.dir.join("quorum"));
        let _ = std::fs::remove_file(self.dir.join("client_locks"));
        if std::fs::read_dir(&self.dir).is_ok_and(|d| d.count() == 1) {
            let _ = std::fs::remove_file(self.dir.join("pid"));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for FenceTree {
    fn drop(&mut self) {
        self.halt();
    }
}
