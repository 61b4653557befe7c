//! The two blocking primitives of the model: a one-shot slot a task waits
//! on, and a kernel rw-semaphore (i_rwsem, and a folio lock as its
//! exclusive-only case) that remembers its holders for the wait-for graph.
//!
//! The semaphore is FIFO like the kernel's: once a waiter queues, later
//! arrivals queue behind it even if they would fit, so a waiting writer
//! (INVAL_ENTRY's `inode_lock`) holds back new readers (lookups).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    val: Option<T>,
    waker: Option<Waker>,
}

/// The sending half: `send` wakes the waiter.
pub struct Tx<T>(Arc<Mutex<Slot<T>>>);
/// The waiting half.
pub struct Rx<T>(Arc<Mutex<Slot<T>>>);

pub fn oneshot<T>() -> (Tx<T>, Rx<T>) {
    let s = Arc::new(Mutex::new(Slot {
        val: None,
        waker: None,
    }));
    (Tx(s.clone()), Rx(s))
}

impl<T> Tx<T> {
    pub fn send(self, v: T) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.val = Some(v);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

impl<T> Future for Rx<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match s.val.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A task of the model (a system call, a daemon request, an invalidation).
pub type Tid = u64;

#[derive(Default)]
pub struct RwSem {
    pub readers: Vec<Tid>,
    pub writer: Option<Tid>,
    waiters: VecDeque<(Tid, bool, Tx<()>)>,
}

impl RwSem {
    fn fits(&self, excl: bool) -> bool {
        self.writer.is_none() && (!excl || self.readers.is_empty())
    }

    fn grant(&mut self, t: Tid, excl: bool) {
        if excl {
            self.writer = Some(t);
        } else {
            self.readers.push(t);
        }
    }

    /// Takes the semaphore now (`None`) or queues and returns what to wait
    /// on; the grant is made by [`RwSem::release`] before the wake.
    pub fn take(&mut self, t: Tid, excl: bool) -> Option<Rx<()>> {
        if self.waiters.is_empty() && self.fits(excl) {
            self.grant(t, excl);
            return None;
        }
        let (tx, rx) = oneshot();
        self.waiters.push_back((t, excl, tx));
        Some(rx)
    }

    pub fn release(&mut self, t: Tid) {
        if self.writer == Some(t) {
            self.writer = None;
        } else {
            let i = self
                .readers
                .iter()
                .position(|&r| r == t)
                .expect("release by a holder");
            self.readers.swap_remove(i);
        }
        while let Some((_, excl, _)) = self.waiters.front() {
            if !self.fits(*excl) {
                break;
            }
            let (t, excl, tx) = self.waiters.pop_front().expect("front");
            self.grant(t, excl);
            tx.send(());
        }
    }

    pub fn holders(&self) -> Vec<Tid> {
        self.readers.iter().copied().chain(self.writer).collect()
    }

    pub fn busy(&self) -> bool {
        self.writer.is_some() || !self.readers.is_empty() || !self.waiters.is_empty()
    }
}
