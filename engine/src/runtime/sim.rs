//! The deterministic simulation runtime: one thread, a virtual clock, seeded
//! randomness and a seeded scheduler, so that a seed replays exactly.
//!
//! Guarantees:
//! * Given the same seed and the same program, every run polls the same tasks
//!   in the same order, reads the same clock values and draws the same random
//!   numbers (on the same platform and dependency versions: `SmallRng` is not
//!   portable across `rand` releases or pointer widths).
//! * Which runnable task (or the main future) is polled next is drawn from a
//!   seeded RNG among all that are runnable, so different seeds explore
//!   different interleavings.
//! * The clock starts at 0 and moves only when nothing is runnable: it then
//!   jumps straight to the earliest timer deadline. A one-hour sleep costs no
//!   real time.
//! * If the main future is pending, nothing is runnable and no timer is set,
//!   [`Sim::try_block_on`] returns [`SimError::Deadlock`] naming the seed.
//! * Tasks run on the thread that calls `block_on`. Wakes from other threads
//!   are not expected (they make the run depend on the OS scheduler), but are
//!   still delivered: before declaring a deadlock the simulation waits a grace
//!   period of real time ([`FOREIGN_WAKE_GRACE_DEFAULT`]) for one.
//!
//! Scheduler randomness and [`super::Runtime::random_u64`] draw from two
//! generators derived from the seed, so adding a random draw to engine code
//! does not by itself reshuffle the interleaving.

use super::{ClearOnDrop, ThreadMark};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use async_task::Runnable;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::tasks::{self, ActiveSet};
use super::timer::{TimerKey, Timers};
use super::{JoinHandle, Runtime};

/// Real time the simulation waits, by default, for a wake from another thread
/// before it declares a deadlock.
pub const FOREIGN_WAKE_GRACE_DEFAULT: Duration = Duration::from_millis(20);

/// Mixed into the seed for the generator behind `random_u64`, so that it and
/// the scheduler's generator are independent streams.
const USER_RNG_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// Why a simulation stopped without its main future completing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error(
        "simulation deadlock (seed {seed}): main future pending, no runnable task, no timer; \
         virtual time {now:?}, {tasks} tasks alive"
    )]
    Deadlock {
        seed: u64,
        now: Duration,
        tasks: usize,
    },
    #[error(
        "simulation reached its time limit {limit:?} (seed {seed}) with the main future pending"
    )]
    TimeLimit { seed: u64, limit: Duration },
}

/// The deterministic simulation. See the module documentation.
pub struct Sim {
    shared: Arc<Shared>,
}

/// State shared by the simulation, its [`Runtime`] handles and its wakers.
pub(crate) struct Shared {
    seed: u64,
    state: Mutex<State>,
    /// Signalled on a wake from a thread other than the simulation's.
    foreign: Condvar,
    active: ActiveSet,
    /// Set while some thread is inside `block_on`.
    running: AtomicBool,
}

struct State {
    now: Duration,
    ready: Vec<Runnable>,
    timers: Timers,
    main_woken: bool,
    sched_rng: SmallRng,
    user_rng: SmallRng,
    time_limit: Option<Duration>,
    foreign_wake_grace: Duration,
    polls: u64,
    foreign_wakes: u64,
}

/// What the scheduler does next.
enum Step {
    PollMain,
    Run(Runnable),
    Wake(Vec<Waker>),
    Idle,
}

thread_local! {
    /// Address of the `Shared` of the simulation running on this thread, or 0.
    static SIM: Cell<usize> = const { Cell::new(0) };
}

impl Sim {
    /// A simulation whose every choice derives from `seed`.
    pub fn new(seed: u64) -> Sim {
        let state = State {
            now: Duration::ZERO,
            ready: Vec::new(),
            timers: Timers::default(),
            main_woken: false,
            sched_rng: SmallRng::seed_from_u64(seed),
            user_rng: SmallRng::seed_from_u64(seed ^ USER_RNG_SALT),
            time_limit: None,
            foreign_wake_grace: FOREIGN_WAKE_GRACE_DEFAULT,
            polls: 0,
            foreign_wakes: 0,
        };
        Sim {
            shared: Arc::new(Shared {
                seed,
                state: Mutex::new(state),
                foreign: Condvar::new(),
                active: ActiveSet::default(),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// The seed this simulation was made with.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// A handle for engine code.
    pub fn runtime(&self) -> Runtime {
        Runtime::simulation(Arc::clone(&self.shared))
    }

    /// Current virtual time.
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    /// Stops `block_on` with [`SimError::TimeLimit`] instead of moving the
    /// clock past `limit` (a periodic timer otherwise keeps a stuck
    /// simulation running forever). `None`, the default, means no limit.
    pub fn set_time_limit(&self, limit: Option<Duration>) {
        self.shared.lock().time_limit = limit;
    }

    /// How long to wait, in real time, for a wake from another thread before
    /// declaring a deadlock. Only tests that wake the simulation from another
    /// thread on purpose need more than the default.
    pub fn set_foreign_wake_grace(&self, grace: Duration) {
        self.shared.lock().foreign_wake_grace = grace;
    }

    /// How many times a task or the main future has been polled so far.
    pub fn polls(&self) -> u64 {
        self.shared.lock().polls
    }

    /// How many wakes came from other threads (each one makes the run depend
    /// on the OS scheduler, so a replay may differ).
    pub fn foreign_wakes(&self) -> u64 {
        self.shared.lock().foreign_wakes
    }

    /// Runs the simulation until `future` completes. Panics, naming the seed,
    /// on deadlock or at the time limit; see [`Sim::try_block_on`].
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self.try_block_on(future) {
            Ok(output) => output,
            Err(err) => panic!("{err}"),
        }
    }

    /// Runs the simulation until `future` completes, or until it cannot make
    /// progress. Tasks still alive afterwards stay for the next call.
    pub fn try_block_on<F: Future>(&self, future: F) -> Result<F::Output, SimError> {
        let shared = &*self.shared;
        let was_running = shared.running.swap(true, Ordering::AcqRel);
        assert!(
            !was_running,
            "Sim::block_on called while this simulation is already running"
        );
        let _running = ClearOnDrop(&shared.running);
        let _thread = ThreadMark::enter(&SIM, shared.id());

        let main = Arc::new(MainWaker {
            shared: Arc::downgrade(&self.shared),
        });
        let waker = Waker::from(main);
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        shared.lock().main_woken = true;

        loop {
            let step = shared.lock().next_step(shared.seed)?;
            match step {
                Step::PollMain => {
                    if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                        return Ok(output);
                    }
                }
                Step::Run(runnable) => {
                    runnable.run();
                }
                Step::Wake(wakers) => {
                    for waker in wakers {
                        waker.wake();
                    }
                }
                Step::Idle => {
                    let state = shared.lock();
                    let grace = state.foreign_wake_grace;
                    let (state, _) = shared
                        .foreign
                        .wait_timeout_while(state, grace, |state| {
                            state.ready.is_empty() && !state.main_woken
                        })
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if state.ready.is_empty() && !state.main_woken {
                        let now = state.now;
                        drop(state);
                        return Err(SimError::Deadlock {
                            seed: shared.seed,
                            now,
                            tasks: tasks::lock_active(&shared.active).len(),
                        });
                    }
                }
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.shared.seed)
            .field("now", &self.shared.now())
            .field("tasks", &tasks::lock_active(&self.shared.active).len())
            .finish()
    }
}

impl State {
    fn next_step(&mut self, seed: u64) -> Result<Step, SimError> {
        let runnable_count = self.ready.len() + usize::from(self.main_woken);
        if runnable_count > 0 {
            self.polls += 1;
            let pick = self.sched_rng.gen_range(0..runnable_count);
            if pick == self.ready.len() {
                assert!(self.main_woken);
                self.main_woken = false;
                return Ok(Step::PollMain);
            }
            return Ok(Step::Run(self.ready.swap_remove(pick)));
        }
        match self.timers.deadline_next() {
            Some(deadline) => {
                if let Some(limit) = self.time_limit {
                    if deadline > limit {
                        return Err(SimError::TimeLimit { seed, limit });
                    }
                }
                self.now = self.now.max(deadline);
                let due = self.timers.take_due(self.now);
                assert!(!due.is_empty(), "the earliest timer is due at its deadline");
                Ok(Step::Wake(due))
            }
            None => Ok(Step::Idle),
        }
    }
}

impl Shared {
    fn id(&self) -> usize {
        self as *const Shared as usize
    }

    fn on_sim_thread(&self) -> bool {
        SIM.try_with(|sim| sim.get()).unwrap_or(0) == self.id()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are plain updates of the state; a panic inside
        // one (a task's panic unwinds outside any lock) cannot tear it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn now(&self) -> Duration {
        self.lock().now
    }

    pub(crate) fn random_u64(&self) -> u64 {
        self.lock().user_rng.next_u64()
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

    fn schedule(&self, runnable: Runnable) {
        let mut state = self.lock();
        state.ready.push(runnable);
        if !self.on_sim_thread() {
            state.foreign_wakes += 1;
            self.foreign.notify_one();
        }
    }

    fn wake_main(&self) {
        let mut state = self.lock();
        state.main_woken = true;
        if !self.on_sim_thread() {
            state.foreign_wakes += 1;
            self.foreign.notify_one();
        }
    }

    pub(crate) fn timer_insert(&self, deadline: Duration, waker: &Waker) -> TimerKey {
        self.lock().timers.insert(deadline, waker.clone())
    }

    pub(crate) fn timer_update(&self, key: TimerKey, waker: &Waker) {
        self.lock().timers.update(key, waker);
    }

    pub(crate) fn timer_remove(&self, key: TimerKey) {
        self.lock().timers.remove(key);
    }

    fn shut_down(&self) {
        // Wake every live task so its runnable is queued, then drop the
        // queued runnables (and with them the futures) outside the lock; a
        // future's drop may wake or spawn more, so repeat until empty.
        let wakers = tasks::lock_active(&self.active).take_all();
        for waker in wakers {
            waker.wake();
        }
        loop {
            let ready = std::mem::take(&mut self.lock().ready);
            if ready.is_empty() {
                break;
            }
            drop(ready);
        }
        let timers = self.lock().timers.drain();
        drop(timers);
    }
}

/// Waker of the future given to `block_on`.
struct MainWaker {
    shared: Weak<Shared>,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.wake_main();
        }
    }
}
