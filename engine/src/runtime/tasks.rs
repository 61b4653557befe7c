//! Spawning and bookkeeping of tasks, shared by both runtimes.
//!
//! Every spawned task is registered in an [`ActiveTasks`] set together with
//! its waker, and removes itself when its future completes or is dropped. When
//! a runtime shuts down it wakes every registered task while its queue is
//! closed to running, then drops the queued runnables: this cancels tasks
//! that wait forever (on a channel nobody will send on, say) and breaks the
//! reference cycles runtime → queue → task → runtime handle.
//!
//! Touches only `async-task`; the runtimes supply the schedule function.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use std::collections::BTreeMap;

use async_task::Runnable;

use super::JoinHandle;

/// The tasks of one runtime that have not finished yet.
#[derive(Default)]
pub(crate) struct ActiveTasks {
    wakers: BTreeMap<u64, Waker>,
    id_next: u64,
}

/// Shared handle on an [`ActiveTasks`] set.
pub(crate) type ActiveSet = Arc<Mutex<ActiveTasks>>;

pub(crate) fn lock_active(active: &ActiveSet) -> MutexGuard<'_, ActiveTasks> {
    // A panic while holding this short lock cannot leave the map torn, so a
    // poisoned lock is still usable.
    active
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ActiveTasks {
    pub(crate) fn len(&self) -> usize {
        self.wakers.len()
    }

    /// Removes and returns every registered waker; the caller wakes them
    /// outside the lock.
    pub(crate) fn take_all(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.wakers).into_values().collect()
    }
}

/// Removes a task from its active set when its future is dropped, whether it
/// completed or was cancelled.
struct Deregister {
    active: ActiveSet,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        lock_active(&self.active).wakers.remove(&self.id);
    }
}

/// Spawns `future` as a task registered in `active`, scheduled by `schedule`,
/// and schedules its first poll.
pub(crate) fn spawn_tracked<F, S>(
    active: &ActiveSet,
    future: F,
    schedule: S,
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: Fn(Runnable) + Send + Sync + 'static,
{
    let id = {
        let mut set = lock_active(active);
        let id = set.id_next;
        set.id_next += 1;
        id
    };
    let deregister = Deregister {
        active: Arc::clone(active),
        id,
    };
    let future = async move {
        let _deregister = deregister;
        future.await
    };
    let (runnable, task) = async_task::spawn(future, schedule);
    // Registered before the first schedule: if the runtime is shutting down
    // and drops the runnable at once, the deregistration finds the entry.
    let old = lock_active(active).wakers.insert(id, runnable.waker());
    assert!(old.is_none(), "task ids are unique");
    runnable.schedule();
    JoinHandle::new(task)
}

/// Spawns a task that is not tracked (the blocking pool's closures, which
/// cannot be cancelled once running). A panic inside is caught and resumed
/// in whoever awaits the handle.
pub(crate) fn spawn_untracked<F, S>(future: F, schedule: S) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: Fn(Runnable) + Send + Sync + 'static,
{
    let (runnable, task) = async_task::Builder::new()
        .propagate_panic(true)
        .spawn(move |_| future, schedule);
    runnable.schedule();
    JoinHandle::new(task)
}
