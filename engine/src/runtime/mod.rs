//! The runtime seam: the only way engine code reaches time, randomness and
//! concurrency.
//!
//! Engine code holds a [`Runtime`] handle and uses it to spawn tasks, read the
//! clock, sleep, draw random numbers, yield and hand blocking calls to a
//! thread pool. Two runtimes sit behind the one handle:
//!
//! * [`executor::Executor`], production: one engine thread polling tasks, a
//!   timer set, a [`drivers::Park`] (the io_uring ring, or [`executor::ThreadPark`])
//!   to sleep in when idle, and a small blocking pool.
//! * [`sim::Sim`], the deterministic simulation: one thread, a virtual clock
//!   that jumps to the next deadline when nothing can run, seeded randomness
//!   and a seeded choice of which runnable task to poll next, so a seed
//!   replays the same interleaving exactly.
//!
//! Guarantees, on both runtimes:
//! * [`Runtime::now`] is monotonic and starts at zero when the runtime is made.
//! * A [`Sleep`] completes only once `now() >= deadline`; timers with the same
//!   deadline are woken in the order they were registered.
//! * Dropping a [`JoinHandle`] cancels its task; [`JoinHandle::detach`] lets it
//!   run on. Awaiting a handle whose task was cancelled because its runtime shut
//!   down panics.
//! * A panic inside a spawned task unwinds out of `block_on` (crash-only); a
//!   panic inside a [`Runtime::spawn_blocking`] closure is resumed in whoever
//!   awaits its handle.
//!
//! Engine code must not use `Instant`, `SystemTime`, `thread_rng`,
//! `thread::spawn`, std `HashMap`/`HashSet` or `futures::select!`: each breaks
//! replay in the simulation. The workspace `clippy.toml` bans them; only the
//! production executor, which must reach the real clock and real threads,
//! allows them, each at its use site.
//!
//! Touches `drivers::Park` (production idle step) and nothing else of the engine.

pub mod executor;
pub mod sim;
mod tasks;
pub mod test_util;
mod timer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use executor::{Executor, ExecutorConfig, ThreadPark};
pub use sim::{Sim, SimError};
pub use test_util::for_each_runtime;

use timer::TimerKey;

/// Which runtime a [`Runtime`] handle drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The production executor: real clock, real threads.
    Production,
    /// The deterministic simulation: virtual clock, one thread, seeded.
    Simulation,
}

/// A cheap, cloneable handle on the runtime that drives the engine.
///
/// Tasks spawned through it run on the runtime's one engine thread, whichever
/// thread called `spawn`.
#[derive(Clone)]
pub struct Runtime {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Production(Arc<executor::Shared>),
    Simulation(Arc<sim::Shared>),
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("kind", &self.kind())
            .field("now", &self.now())
            .finish()
    }
}

impl Runtime {
    pub(crate) fn production(shared: Arc<executor::Shared>) -> Runtime {
        Runtime {
            inner: Inner::Production(shared),
        }
    }

    pub(crate) fn simulation(shared: Arc<sim::Shared>) -> Runtime {
        Runtime {
            inner: Inner::Simulation(shared),
        }
    }

    /// Which runtime this handle drives.
    pub fn kind(&self) -> RuntimeKind {
        match &self.inner {
            Inner::Production(_) => RuntimeKind::Production,
            Inner::Simulation(_) => RuntimeKind::Simulation,
        }
    }

    /// The simulation's seed, or `None` in production.
    pub fn sim_seed(&self) -> Option<u64> {
        match &self.inner {
            Inner::Production(_) => None,
            Inner::Simulation(shared) => Some(shared.seed()),
        }
    }

    /// Spawns `future` as a task on the engine thread.
    ///
    /// The handle is awaitable; dropping it cancels the task, [`JoinHandle::detach`]
    /// lets it run to completion unobserved.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.inner {
            Inner::Production(shared) => executor::Shared::spawn(shared, future),
            Inner::Simulation(shared) => sim::Shared::spawn(shared, future),
        }
    }

    /// Runs `f`, which may block or re-enter the daemon (fd calls on our own
    /// mount, fdatasync, mount/umount2, fence scripts), away from the engine
    /// thread, and returns a handle on its result.
    ///
    /// Production runs it on the blocking pool; the simulation runs it on its
    /// own thread as an ordinary task (so it must not block on the simulation
    /// itself).
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match &self.inner {
            Inner::Production(shared) => executor::Shared::spawn_blocking(shared, f),
            Inner::Simulation(shared) => sim::Shared::spawn(shared, async move { f() }),
        }
    }

    /// Time since the runtime was made: monotonic, real in production, virtual
    /// in the simulation (where it advances only while no task can run).
    pub fn now(&self) -> Duration {
        match &self.inner {
            Inner::Production(shared) => shared.now(),
            Inner::Simulation(shared) => shared.now(),
        }
    }

    /// A future that completes `duration` from now.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        let deadline = self.now().saturating_add(duration);
        self.sleep_until(deadline)
    }

    /// A future that completes once [`Runtime::now`] reaches `deadline`.
    pub fn sleep_until(&self, deadline: Duration) -> Sleep {
        Sleep {
            runtime: self.clone(),
            deadline,
            key: None,
        }
    }

    /// Runs `future` for at most `duration`: `Err(Elapsed)` if the time ran
    /// out first (the future is then dropped). The future is polled before the
    /// timer, so a future that is ready wins a tie.
    pub fn timeout<F: Future>(
        &self,
        duration: Duration,
        future: F,
    ) -> impl Future<Output = Result<F::Output, Elapsed>> {
        let mut sleep = self.sleep(duration);
        async move {
            let mut future = std::pin::pin!(future);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(output) = future.as_mut().poll(cx) {
                    return Poll::Ready(Ok(output));
                }
                match Pin::new(&mut sleep).poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        }
    }

    /// A random number: seeded from the OS at start in production, from the
    /// seed in the simulation.
    pub fn random_u64(&self) -> u64 {
        match &self.inner {
            Inner::Production(shared) => shared.random_u64(),
            Inner::Simulation(shared) => shared.random_u64(),
        }
    }

    /// Lets other runnable tasks go first, then continues.
    pub fn yield_now(&self) -> YieldNow {
        YieldNow { yielded: false }
    }

    fn timer_insert(&self, deadline: Duration, waker: &std::task::Waker) -> TimerKey {
        match &self.inner {
            Inner::Production(shared) => shared.timer_insert(deadline, waker),
            Inner::Simulation(shared) => shared.timer_insert(deadline, waker),
        }
    }

    fn timer_update(&self, key: TimerKey, waker: &std::task::Waker) {
        match &self.inner {
            Inner::Production(shared) => shared.timer_update(key, waker),
            Inner::Simulation(shared) => shared.timer_update(key, waker),
        }
    }

    fn timer_remove(&self, key: TimerKey) {
        match &self.inner {
            Inner::Production(shared) => shared.timer_remove(key),
            Inner::Simulation(shared) => shared.timer_remove(key),
        }
    }
}

/// Handle on a spawned task: await it for the task's output.
///
/// Dropping the handle cancels the task (at its next `.await`); call
/// [`JoinHandle::detach`] to let it run on.
#[must_use = "dropping a JoinHandle cancels its task; call .detach() to let it run"]
pub struct JoinHandle<T> {
    task: async_task::FallibleTask<T>,
}

impl<T> JoinHandle<T> {
    fn new(task: async_task::Task<T>) -> JoinHandle<T> {
        JoinHandle {
            task: task.fallible(),
        }
    }

    /// Lets the task run to completion with nobody awaiting it.
    pub fn detach(self) {
        self.task.detach();
    }

    /// Whether the task has finished (completed or been cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Cancels the task and waits until it is gone: `Some(output)` if it had
    /// already completed.
    pub async fn cancel(self) -> Option<T> {
        self.task.cancel().await
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Ready(Some(output)) => Poll::Ready(output),
            Poll::Ready(None) => {
                panic!("awaited a task that was cancelled: its runtime shut down or it panicked")
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Future returned by [`Runtime::sleep`] and [`Runtime::sleep_until`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct Sleep {
    runtime: Runtime,
    deadline: Duration,
    key: Option<TimerKey>,
}

impl Sleep {
    /// When this sleep completes, in [`Runtime::now`] terms.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.runtime.now() >= self.deadline {
            if let Some(key) = self.key.take() {
                self.runtime.timer_remove(key);
            }
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => self.runtime.timer_update(key, cx.waker()),
            None => {
                let key = self.runtime.timer_insert(self.deadline, cx.waker());
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.runtime.timer_remove(key);
        }
    }
}

/// Future returned by [`Runtime::yield_now`].
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The error of [`Runtime::timeout`]: the time ran out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Clears a flag when dropped, panicking or not.
pub(crate) struct ClearOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Records in a thread-local which runtime this thread is driving, for a
/// scope, and restores the previous value after (runtimes may nest).
pub(crate) struct ThreadMark {
    key: &'static std::thread::LocalKey<std::cell::Cell<usize>>,
    previous: usize,
}

impl ThreadMark {
    pub(crate) fn enter(
        key: &'static std::thread::LocalKey<std::cell::Cell<usize>>,
        id: usize,
    ) -> ThreadMark {
        let previous = key.with(|cell| cell.replace(id));
        ThreadMark { key, previous }
    }
}

impl Drop for ThreadMark {
    fn drop(&mut self) {
        self.key.with(|cell| cell.set(self.previous));
    }
}
