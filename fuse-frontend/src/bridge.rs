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
//! Touches only [`engine::runtime::Runtime`].

use std::future::Future;
use std::io;
use std::sync::mpsc;

use engine::fs::FsResult;
use engine::runtime::Runtime;

/// The engine side of the frontend: where operations run.
#[derive(Clone, Debug)]
pub struct Bridge {
    rt: Runtime,
}

/// A positive errno as the io::Error the FUSE server replies with.
pub fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Bridge {
    pub fn new(rt: Runtime) -> Bridge {
        Bridge { rt }
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

    /// Starts `op` on the engine thread without waiting (FORGET has no
    /// reply).
    pub fn start<F>(&self, op: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(op).detach();
    }
}
