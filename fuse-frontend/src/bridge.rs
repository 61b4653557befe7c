//! Hands filesystem operations from FUSE worker threads to the engine.
//!
//! A FUSE worker thread owns one request at a time and may block; the
//! engine thread never does. [`Bridge::run`] spawns the operation as a
//! task on the engine executor ([`Runtime::spawn`], callable from any
//! thread) and parks the worker on a channel until the task sends its
//! result, so as many requests are in flight as there are workers.
//!
//! Guarantees: the task runs to completion even if nobody waits for it
//! (it is detached, so a worker never cancels an operation half way); a
//! task that dies with its runtime (shutdown) answers EIO instead of
//! hanging the worker.
//!
//! [`Bridge::run_interruptible`] is for operations that change nothing
//! (lookups, attributes, reads, listings): a FUSE_INTERRUPT of the request
//! ([`Interrupts::interrupt`]) lets the worker answer EINTR at once while
//! the task finishes on its own (e.g. once the cluster lock it waits for
//! is granted) and its result is dropped. Operations that change things
//! are never abandoned: their caller must not see EINTR for a change that
//! then happens.
//!
//! Touches only [`engine::runtime::Runtime`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{mpsc, Arc, Mutex};

use engine::fs::FsResult;
use engine::runtime::Runtime;

/// The engine side of the frontend: where operations run.
#[derive(Clone, Debug)]
pub struct Bridge {
    rt: Runtime,
    interrupts: Arc<Interrupts>,
}

/// Interrupts remembered for requests not (yet) waiting interruptibly.
const EARLY_INTERRUPTS_MAX: usize = 256;

/// Workers waiting interruptibly, by request unique id.
#[derive(Default)]
pub struct Interrupts {
    state: Mutex<InterruptState>,
}

#[derive(Default)]
struct InterruptState {
    waiting: BTreeMap<u64, Box<dyn FnOnce() + Send>>,
    /// Interrupts that found no waiter: their request may register
    /// later (the INTERRUPT was read by another worker first).
    early: VecDeque<u64>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupts")
    }
}

impl Interrupts {
    fn state(&self) -> std::sync::MutexGuard<'_, InterruptState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// FUSE_INTERRUPT of request `unique`: its interruptible wait ends
    /// with EINTR (now, or when it registers).
    pub fn interrupt(&self, unique: u64) {
        if unique == 0 {
            return;
        }
        let mut st = self.state();
        match st.waiting.remove(&unique) {
            Some(wake) => {
                drop(st);
                wake();
            }
            None => {
                if st.early.len() >= EARLY_INTERRUPTS_MAX {
                    st.early.pop_front();
                }
                st.early.push_back(unique);
            }
        }
    }

    /// False when `unique` was interrupted already.
    fn register(&self, unique: u64, wake: Box<dyn FnOnce() + Send>) -> bool {
        let mut st = self.state();
        if let Some(i) = st.early.iter().position(|u| *u == unique) {
            st.early.remove(i);
            return false;
        }
        st.waiting.insert(unique, wake);
        true
    }

    fn unregister(&self, unique: u64) {
        self.state().waiting.remove(&unique);
    }
}

/// A positive errno as the io::Error the FUSE server replies with.
pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Bridge {
    pub fn new(rt: Runtime) -> Bridge {
        Bridge {
            rt,
            interrupts: Arc::new(Interrupts::default()),
        }
    }

    /// Where FUSE_INTERRUPT goes for [`Bridge::run_interruptible`].
    pub fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Runs `op` on the engine thread and waits for its result.
    pub fn run<T, F>(&self, op: F) -> io::Result<T>
    where
        F: Future<Output = FsResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.rt
            .spawn(async move {
                // The receiver is gone only if the worker itself is gone.
                let _ = tx.send(op.await);
            })
            .detach();
        match rx.recv() {
            Ok(r) => r.map_err(errno),
            Err(_) => Err(errno(libc::EIO)),
        }
    }

    /// [`Bridge::run`] for an operation that changes nothing, on behalf
    /// of FUSE request `tag` (0: none): an interrupt of the request ends
    /// the wait with EINTR; the task runs on and its result is dropped.
    pub fn run_interruptible<T, F>(&self, tag: u64, op: F) -> io::Result<T>
    where
        F: Future<Output = FsResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        if tag == 0 {
            return self.run(op);
        }
        // Room for the result and the interrupt: neither sender blocks
        // (the engine thread must not).
        let (tx, rx) = mpsc::sync_channel(2);
        let itx = tx.clone();
        let pid = crate::filesystem::current_pid();
        let wake = Box::new(move || {
            // The kernel sends FUSE_INTERRUPT for any signal, and passes
            // our EINTR on to the caller even when its handler would have
            // restarted the call (SA_RESTART): stat(2) failing with EINTR
            // breaks programs that merely got a SIGALRM. Only a dying
            // caller is answered early.
            if pid == 0 || fatal_signal_pending(pid) {
                let _ = itx.try_send(Err(libc::EINTR));
            }
        });
        if !self.interrupts.register(tag, wake) && (pid == 0 || fatal_signal_pending(pid)) {
            // Interrupted before we got here.
            return Err(errno(libc::EINTR));
        }
        self.rt
            .spawn(async move {
                let _ = tx.send(op.await);
            })
            .detach();
        let r = rx.recv();
        self.interrupts.unregister(tag);
        match r {
            Ok(r) => r.map_err(errno),
            Err(_) => Err(errno(libc::EIO)),
        }
    }

    /// Starts `op` on the engine thread without waiting (FORGET has no
    /// reply).
    pub fn start<F>(&self, op: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(op).detach();
    }
}

/// Whether thread `tid` has SIGKILL pending: a fatal signal (also one whose
/// default action kills, which the kernel turns into SIGKILL for the whole
/// process) or an explicit kill.
fn fatal_signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        // Gone already: nobody waits for the answer.
        return true;
    };
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|bits| bits & sigkill != 0)
}
