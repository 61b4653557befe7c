//! The production executor: one engine thread that polls tasks, fires
//! timers, and parks in a [`drivers::Park`] when it has nothing to do.
//!
//! Shape (ARCHITECTURE.md §2.4): one executor per mount, unpinned, spin budget
//! 0 by default, so an idle mount sleeps in the kernel instead of burning a
//! vCPU that a heartbeat needs. The thread that calls [`Executor::block_on`]
//! becomes the engine thread for the duration of the call.
//!
//! * Tasks are `async-task` runnables queued on one crossbeam channel. A wake
//!   from the engine thread only queues; a wake from any other thread (the
//!   blocking pool, a spawn from outside) queues and then calls
//!   [`Park::unpark`], so a parked engine thread always sees it.
//! * Timers live in one ordered set per executor; the park timeout is the time
//!   to the earliest deadline. The clock is `Instant`-based, relative to the
//!   executor's creation.
//! * After every batch of at most [`RUN_BATCH_MAX`] tasks the loop polls the
//!   park with a zero timeout, so I/O completions are reaped even when tasks
//!   keep each other busy.
//! * Calls that can block or re-enter the daemon go to a blocking pool of
//!   threads that grows on demand up to a limit and shrinks when idle.
//! * Dropping the [`Executor`] cancels every task still alive.
//!
//! [`ThreadPark`] is the park used when no io_uring ring drives the thread.
//!
//! This is the one module of the engine allowed to read the real clock and
//! start threads; each such use carries a local `allow` saying why.

use super::{ClearOnDrop, ThreadMark};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_task::Runnable;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use drivers::Park;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::tasks::{self, ActiveSet};
use super::timer::{TimerKey, Timers};
use super::{JoinHandle, Runtime};

/// Most tasks run between two polls of the park for I/O completions.
pub const RUN_BATCH_MAX: usize = 64;

/// Default limit on blocking-pool threads. High enough that calls which
/// re-enter the daemon (and so wait for other blocking calls) cannot use up
/// the pool in any realistic mount; each idle thread costs only its stack.
pub const BLOCKING_THREADS_MAX_DEFAULT: usize = 64;

/// How long an idle blocking-pool thread waits for work before it exits.
pub const BLOCKING_KEEPALIVE_DEFAULT: Duration = Duration::from_secs(10);

/// Knobs of the production executor.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// How many zero-timeout polls of the park to make, when idle, before
    /// parking for real. 0 (the default) parks at once: calm, not fast.
    pub spin_budget: u32,
    /// Upper bound on blocking-pool threads.
    pub blocking_threads_max: usize,
    /// Idle time after which a blocking-pool thread exits.
    pub blocking_keepalive: Duration,
    /// Seed of [`Runtime::random_u64`]; `None` draws one from the OS.
    pub random_seed: Option<u64>,
}

impl Default for ExecutorConfig {
    fn default() -> ExecutorConfig {
        ExecutorConfig {
            spin_budget: 0,
            blocking_threads_max: BLOCKING_THREADS_MAX_DEFAULT,
            blocking_keepalive: BLOCKING_KEEPALIVE_DEFAULT,
            random_seed: None,
        }
    }
}

/// The production executor. See the module documentation.
pub struct Executor {
    shared: Arc<Shared>,
}

/// State shared by the executor, its [`Runtime`] handles and its wakers.
pub(crate) struct Shared {
    queue_tx: Sender<Runnable>,
    queue_rx: Receiver<Runnable>,
    park: Arc<dyn Park>,
    timers: Mutex<Timers>,
    active: ActiveSet,
    rng: Mutex<SmallRng>,
    start: Instant,
    /// Set while some thread is inside `block_on`.
    running: AtomicBool,
    /// Set when the executor is dropped: queued tasks are no longer run.
    closed: AtomicBool,
    pool: Arc<BlockingPool>,
    spin_budget: u32,
}

thread_local! {
    /// Address of the `Shared` of the executor this thread is the engine
    /// thread of, or 0.
    static ENGINE: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few plain updates; a panic inside one
    // cannot leave the data torn, so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Executor {
    /// An executor that parks in `park` when idle.
    pub fn new(park: Arc<dyn Park>) -> Executor {
        Executor::with_config(park, ExecutorConfig::default())
    }

    /// An executor with explicit knobs.
    pub fn with_config(park: Arc<dyn Park>, config: ExecutorConfig) -> Executor {
        assert!(
            config.blocking_threads_max > 0,
            "the blocking pool needs at least one thread"
        );
        let rng = match config.random_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            // Production randomness is seeded once from the OS; the
            // simulation seeds from its own seed instead.
            #[allow(clippy::disallowed_methods)]
            None => SmallRng::from_entropy(),
        };
        let (queue_tx, queue_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            queue_tx,
            queue_rx,
            park,
            timers: Mutex::new(Timers::default()),
            active: ActiveSet::default(),
            rng: Mutex::new(rng),
            // The production clock is real time by definition.
            #[allow(clippy::disallowed_methods)]
            start: Instant::now(),
            running: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            pool: BlockingPool::new(config.blocking_threads_max, config.blocking_keepalive),
            spin_budget: config.spin_budget,
        });
        Executor { shared }
    }

    /// A handle for engine code.
    pub fn runtime(&self) -> Runtime {
        Runtime::production(Arc::clone(&self.shared))
    }

    /// Makes the calling thread the engine thread and runs tasks until
    /// `future` completes. `future` itself is polled on this thread and need
    /// not be `Send`. Tasks still alive when it returns stay queued for the
    /// next `block_on`.
    ///
    /// Panics if called while another `block_on` of this executor runs, if a
    /// task panics, or if the park fails with anything but `EINTR`.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let shared = &*self.shared;
        let was_running = shared.running.swap(true, Ordering::AcqRel);
        assert!(
            !was_running,
            "Executor::block_on called while this executor is already running"
        );
        let _running = ClearOnDrop(&shared.running);
        let _engine = ThreadMark::enter(&ENGINE, shared.id());

        let main = Arc::new(MainWaker {
            woken: AtomicBool::new(true),
            park: Arc::clone(&shared.park),
            engine_id: shared.id(),
        });
        let waker = Waker::from(Arc::clone(&main));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        let mut spins: u32 = 0;

        loop {
            if main.woken.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                    return output;
                }
            }

            let mut ran: usize = 0;
            while ran < RUN_BATCH_MAX {
                match shared.queue_rx.try_recv() {
                    Ok(runnable) => {
                        runnable.run();
                        ran += 1;
                    }
                    Err(_) => break,
                }
            }

            let deadline_next = shared.fire_due_timers();

            if ran > 0 {
                // Busy: reap whatever I/O completed, without sleeping.
                spins = 0;
                shared.park(Some(Duration::ZERO));
                continue;
            }
            if !shared.queue_rx.is_empty() || main.woken.load(Ordering::Acquire) {
                spins = 0;
                continue;
            }
            if spins < shared.spin_budget {
                spins += 1;
                shared.park(Some(Duration::ZERO));
                continue;
            }
            spins = 0;
            let timeout = deadline_next.map(|deadline| deadline.saturating_sub(shared.now()));
            shared.park(timeout);
        }
    }
}

impl Default for Executor {
    /// An executor parking in a [`ThreadPark`].
    fn default() -> Executor {
        Executor::new(Arc::new(ThreadPark::new()))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("now", &self.shared.now())
            .field("tasks", &tasks::lock_active(&self.shared.active).len())
            .finish()
    }
}

impl Shared {
    fn id(&self) -> usize {
        self as *const Shared as usize
    }

    fn on_engine_thread(&self) -> bool {
        ENGINE.try_with(|engine| engine.get()).unwrap_or(0) == self.id()
    }

    pub(crate) fn now(&self) -> Duration {
        // The production clock is real time by definition.
        #[allow(clippy::disallowed_methods)]
        self.start.elapsed()
    }

    pub(crate) fn random_u64(&self) -> u64 {
        lock(&self.rng).next_u64()
    }

    pub(crate) fn spawn<F>(this: &Arc<Shared>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let shared = Arc::clone(this);
        tasks::spawn_tracked(&this.active, future, move |runnable| {
            shared.schedule(runnable)
        })
    }

    pub(crate) fn spawn_blocking<F, T>(this: &Arc<Shared>, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let pool = Arc::clone(&this.pool);
        tasks::spawn_untracked(async move { f() }, move |runnable| {
            BlockingPool::submit(&pool, runnable)
        })
    }

    fn schedule(&self, runnable: Runnable) {
        // The receiver lives in `self`, so the send cannot fail. After
        // shutdown the runnable just waits in the queue, never run, until the
        // last handle on `self` goes.
        let sent = self.queue_tx.send(runnable);
        debug_assert!(sent.is_ok());
        if !self.on_engine_thread() && !self.closed.load(Ordering::Acquire) {
            self.park.unpark();
        }
    }

    pub(crate) fn timer_insert(&self, deadline: Duration, waker: &Waker) -> TimerKey {
        let key = lock(&self.timers).insert(deadline, waker.clone());
        if !self.on_engine_thread() {
            // A parked engine thread computed its timeout without this timer.
            self.park.unpark();
        }
        key
    }

    pub(crate) fn timer_update(&self, key: TimerKey, waker: &Waker) {
        lock(&self.timers).update(key, waker);
        if !self.on_engine_thread() {
            self.park.unpark();
        }
    }

    pub(crate) fn timer_remove(&self, key: TimerKey) {
        lock(&self.timers).remove(key);
    }

    /// Wakes every timer that is due; returns the earliest deadline left.
    fn fire_due_timers(&self) -> Option<Duration> {
        let now = self.now();
        let (due, deadline_next) = {
            let mut timers = lock(&self.timers);
            let due = timers.take_due(now);
            (due, timers.deadline_next())
        };
        for waker in due {
            waker.wake();
        }
        deadline_next
    }

    fn park(&self, timeout: Option<Duration>) {
        loop {
            match self.park.park(timeout) {
                Ok(()) => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => panic!("executor park failed: {err}"),
            }
        }
    }

    fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        // Waking every live task queues its runnable; dropping the queued
        // runnables then drops the futures. Wakers are woken and dropped
        // outside every lock: a future's drop may call back in here.
        let wakers = tasks::lock_active(&self.active).take_all();
        for waker in wakers {
            waker.wake();
        }
        while let Ok(runnable) = self.queue_rx.try_recv() {
            drop(runnable);
        }
        let timers = lock(&self.timers).drain();
        drop(timers);
    }
}

/// Waker of the future given to `block_on`.
struct MainWaker {
    woken: AtomicBool,
    park: Arc<dyn Park>,
    engine_id: usize,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if ENGINE.try_with(|engine| engine.get()).unwrap_or(0) != self.engine_id {
            self.park.unpark();
        }
    }
}

/// Threads for calls that may block. Grows when a job finds no idle thread,
/// up to its limit; a thread idle for the keepalive exits.
///
/// The pool outlives its executor by at most the keepalive: a job submitted
/// after the executor is dropped still runs (nobody awaits it), which keeps
/// async-task's rule that a schedule function never drops a runnable.
struct BlockingPool {
    tx: Sender<Runnable>,
    rx: Receiver<Runnable>,
    state: Mutex<PoolState>,
    threads_max: usize,
    keepalive: Duration,
}

struct PoolState {
    threads: usize,
    /// Idle threads not yet promised to a queued job.
    idle: usize,
}

impl BlockingPool {
    fn new(threads_max: usize, keepalive: Duration) -> Arc<BlockingPool> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(BlockingPool {
            tx,
            rx,
            state: Mutex::new(PoolState {
                threads: 0,
                idle: 0,
            }),
            threads_max,
            keepalive,
        })
    }

    fn submit(this: &Arc<BlockingPool>, runnable: Runnable) {
        // The send and the promise of an idle thread both happen under
        // `state`, which a thread also holds when it decides to go idle or to
        // exit: so every queued job has a thread promised to it, or the pool
        // is at its limit.
        let mut state = lock(&this.state);
        let sent = this.tx.send(runnable);
        debug_assert!(sent.is_ok(), "the pool holds its own receiver");
        if state.idle > 0 {
            state.idle -= 1;
        } else if state.threads < this.threads_max {
            state.threads += 1;
            let pool = Arc::clone(this);
            // The blocking pool is real threads by definition.
            #[allow(clippy::disallowed_methods)]
            let spawned = std::thread::Builder::new()
                .name("scoutfs-blocking".into())
                .spawn(move || pool.worker());
            if let Err(err) = spawned {
                state.threads -= 1;
                // With at least one thread alive the job still runs, later.
                assert!(
                    state.threads > 0,
                    "cannot start any blocking-pool thread: {err}"
                );
            }
        }
    }

    fn worker(self: Arc<Self>) {
        loop {
            let queued = {
                let mut state = lock(&self.state);
                let queued = self.rx.try_recv().ok();
                if queued.is_none() {
                    state.idle += 1;
                }
                queued
            };
            let job = match queued {
                Some(job) => job,
                None => match self.rx.recv_timeout(self.keepalive) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        let mut state = lock(&self.state);
                        match self.rx.try_recv() {
                            Ok(job) => job,
                            Err(_) => {
                                // Nothing queued. Its idle count may be
                                // gone: a submit promised this thread a job
                                // that a thread finishing another one took
                                // first from the queue. Idle counts are
                                // interchangeable, and an idle thread still
                                // blocked in recv takes any job whether or
                                // not it was counted, so none starves.
                                state.idle = state.idle.saturating_sub(1);
                                state.threads -= 1;
                                return;
                            }
                        }
                    }
                },
            };
            // A panic inside the closure is caught by the task and resumed in
            // its awaiter, so `run` returns normally.
            job.run();
        }
    }
}

/// A [`Park`] for an engine thread with no I/O ring: a flag and a condition
/// variable. An `unpark` that comes before `park` is not lost: the next
/// `park` returns at once.
#[derive(Default)]
pub struct ThreadPark {
    notified: Mutex<bool>,
    condvar: Condvar,
}

impl ThreadPark {
    pub fn new() -> ThreadPark {
        ThreadPark::default()
    }
}

impl std::fmt::Debug for ThreadPark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPark")
            .field("notified", &*lock(&self.notified))
            .finish()
    }
}

impl Park for ThreadPark {
    fn park(&self, timeout: Option<Duration>) -> io::Result<()> {
        let notified = lock(&self.notified);
        let mut notified = match timeout {
            None => self
                .condvar
                .wait_while(notified, |notified| !*notified)
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(timeout) => {
                self.condvar
                    .wait_timeout_while(notified, timeout, |notified| !*notified)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0
            }
        };
        *notified = false;
        Ok(())
    }

    fn unpark(&self) {
        *lock(&self.notified) = true;
        self.condvar.notify_one();
    }
}
