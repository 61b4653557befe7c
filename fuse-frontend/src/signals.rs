//! SIGTERM/SIGINT/SIGHUP for the daemon, without async-signal handlers.
//!
//! [`SignalWatch::block`] blocks the signals in the calling thread before
//! any other thread exists, so every thread started later inherits the
//! mask and the signals stay pending for the watcher thread, which takes
//! them with `sigtimedwait` and runs the daemon's stop action in plain
//! thread context. [`SignalWatch::stop`] ends the watcher and restores the
//! caller's mask. Touches only the process's signal state.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How often the watcher looks at its stop flag.
const POLL_MS: libc::c_long = 200;

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The blocked signal set and the mask to restore.
pub struct SignalWatch {
    set: libc::sigset_t,
    old: libc::sigset_t,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatch {
    /// Blocks the stop signals in this thread (and in every thread it
    /// starts from now on).
    pub fn block() -> io::Result<SignalWatch> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above, filled in by pthread_sigmask below.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for s in SIGNALS {
            // SAFETY: as above; `s` is a valid signal number.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        // SAFETY: both pointers are valid sigset_t values of this frame.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(SignalWatch {
            set,
            old,
            done: Arc::new(AtomicBool::new(false)),
            thread: None,
        })
    }

    /// Starts the watcher: `on_signal` runs once, on the first signal.
    pub fn watch(&mut self, on_signal: impl FnOnce(i32) + Send + 'static) -> io::Result<()> {
        let set = self.set;
        let done = self.done.clone();
        // The watcher waits in sigtimedwait: a thread of the daemon, not
        // engine code.
        #[allow(clippy::disallowed_methods)]
        let t = std::thread::Builder::new()
            .name("scoutfs-signals".into())
            .spawn(move || {
                let timeout = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: POLL_MS * 1_000_000,
                };
                while !done.load(Ordering::Acquire) {
                    // SAFETY: `set` and `timeout` are valid for the call;
                    // a null siginfo pointer is allowed.
                    let s = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
                    if s > 0 {
                        on_signal(s);
                        return;
                    }
                }
            })?;
        self.thread = Some(t);
        Ok(())
    }

    /// Ends the watcher and restores the mask [`SignalWatch::block`] found.
    pub fn stop(mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: `old` is the valid mask saved by `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}
