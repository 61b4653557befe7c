//! The timer set shared by both runtimes: one per executor, ordered by
//! deadline.
//!
//! Deadlines are [`Duration`]s since the runtime's start (real in production,
//! virtual in the simulation). Entries are keyed by `(deadline, sequence)` so
//! two timers with the same deadline fire in the order they were registered,
//! which keeps the simulation's wake order a pure function of its history.
//! The set only stores wakers; whether a timer has expired is always decided
//! by comparing the runtime's clock with the deadline, so a wake that races
//! with a registration can never be lost, only repeated.
//!
//! Touches nothing outside this module; the runtimes own the locking.

use std::collections::BTreeMap;
use std::task::Waker;
use std::time::Duration;

/// Identifies one registered timer: its deadline and its registration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub(crate) deadline: Duration,
    seq: u64,
}

/// Registered timers, earliest first.
#[derive(Default)]
pub(crate) struct Timers {
    entries: BTreeMap<TimerKey, Waker>,
    seq_next: u64,
}

impl Timers {
    /// Registers `waker` to be woken once the clock reaches `deadline`.
    pub(crate) fn insert(&mut self, deadline: Duration, waker: Waker) -> TimerKey {
        let key = TimerKey {
            deadline,
            seq: self.seq_next,
        };
        self.seq_next += 1;
        let old = self.entries.insert(key, waker);
        assert!(old.is_none(), "timer sequence numbers are unique");
        key
    }

    /// Replaces the waker of a registered timer (a future moved between
    /// tasks), or registers it again if it already fired.
    pub(crate) fn update(&mut self, key: TimerKey, waker: &Waker) {
        match self.entries.get_mut(&key) {
            Some(old) => {
                if !old.will_wake(waker) {
                    old.clone_from(waker);
                }
            }
            None => {
                self.entries.insert(key, waker.clone());
            }
        }
    }

    /// Forgets a timer; a no-op if it already fired.
    pub(crate) fn remove(&mut self, key: TimerKey) {
        self.entries.remove(&key);
    }

    /// The earliest deadline still registered.
    pub(crate) fn deadline_next(&self) -> Option<Duration> {
        self.entries.keys().next().map(|key| key.deadline)
    }

    /// Removes every timer whose deadline is at or before `now` and returns
    /// their wakers, earliest first. The caller wakes them after dropping its
    /// lock: a waker may call straight back into the runtime.
    pub(crate) fn take_due(&mut self, now: Duration) -> Vec<Waker> {
        let later = self.entries.split_off(&TimerKey {
            deadline: now,
            seq: u64::MAX,
        });
        let due = std::mem::replace(&mut self.entries, later);
        debug_assert!(due.keys().all(|key| key.deadline <= now));
        debug_assert!(self.entries.keys().all(|key| key.deadline > now));
        due.into_values().collect()
    }

    /// Empties the set, returning the wakers so the caller can drop them
    /// outside its lock.
    pub(crate) fn drain(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.entries).into_values().collect()
    }
}
