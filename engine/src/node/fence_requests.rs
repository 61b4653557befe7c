//! Fence requests (reference §6.4) as a sans-IO state machine: which rids
//! the server asked to have fenced, why, since when, and what became of
//! each request. The driver ([`super::fencer`]) publishes the requests,
//! feeds in answers (from `scoutfs fenced` through the status tree, or from
//! the local flock fence) and the clock, and acts on the [`Event`]s.
//!
//! Guarantees:
//! * One request per rid. Asking again for a rid whose request is pending
//!   joins it; asking for a rid already fenced (now or earlier in this
//!   node's life: a fenced rid never comes back) is answered fenced at
//!   once and is never an error (trap 27, 205cfbdf).
//! * A request ends exactly once: `Fenced`, or `Failed` with `EIO` (the
//!   agent wrote `error=1`) or `ETIMEDOUT` (no answer within the timeout).
//!   Later answers to an ended request change nothing.
//! * A fenced request stays visible until the caller has reclaimed the rid
//!   and removes it; a failed one until the server stops ([`FenceTable::clear`]).
//!
//! Touches nothing: time comes in as arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long a request may stay unanswered before the server gives up and
/// stops, so that a new leader retries (§6.4).
pub const FENCE_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a rid must be fenced, as the status tree's `reason` file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The rid did not recover with a new server in time.
    ClientRecovery,
    /// The rid's connection stayed away past the reconnect timeout.
    ClientReconnect,
    /// An earlier leader found in the quorum blocks.
    QuorumBlockLeader,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientRecovery => "client_recovery",
            Reason::ClientReconnect => "client_reconnect",
            Reason::QuorumBlockLeader => "quorum_block_leader",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [
            Reason::ClientRecovery,
            Reason::ClientReconnect,
            Reason::QuorumBlockLeader,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Fenced,
    /// Answered with an error or timed out.
    Error,
}

/// What the fence agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Fenced,
    Error,
}

/// One request as the status tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    pub rid: u64,
    pub ipv4: Ipv4Addr,
    pub reason: Reason,
    pub elapsed_secs: u64,
    pub state: State,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new request: publish it and, without an agent, fence locally.
    Requested { rid: u64 },
    /// `rid` is fenced: waiters may reclaim it.
    Fenced { rid: u64 },
    /// The request failed (`EIO`: the agent's error; `ETIMEDOUT`: no
    /// answer; `ECANCELED`: the server stopped): the server must stop.
    Failed { rid: u64, errno: i32 },
}

#[derive(Debug, Clone)]
struct Req {
    ipv4: Ipv4Addr,
    reason: Reason,
    started: Duration,
    state: State,
}

/// The requests of one node.
#[derive(Debug)]
pub struct FenceTable {
    timeout: Duration,
    reqs: BTreeMap<u64, Req>,
    /// Every rid fenced in this node's life.
    fenced: BTreeSet<u64>,
}

impl FenceTable {
    pub fn new(timeout: Duration) -> FenceTable {
        FenceTable {
            timeout,
            reqs: BTreeMap::new(),
            fenced: BTreeSet::new(),
        }
    }

    /// Asks for `rid` to be fenced.
    pub fn request(
        &mut self,
        now: Duration,
        rid: u64,
        ipv4: Ipv4Addr,
        reason: Reason,
        out: &mut Vec<Event>,
    ) {
        if let Some(r) = self.reqs.get(&rid) {
            match r.state {
                State::Pending => {}
                State::Fenced => out.push(Event::Fenced { rid }),
                State::Error => out.push(Event::Failed {
                    rid,
                    errno: libc::EIO,
                }),
            }
            return;
        }
        let already = self.fenced.contains(&rid);
        self.reqs.insert(
            rid,
            Req {
                ipv4,
                reason,
                started: now,
                state: if already {
                    State::Fenced
                } else {
                    State::Pending
                },
            },
        );
        out.push(if already {
            Event::Fenced { rid }
        } else {
            Event::Requested { rid }
        });
    }

    /// An answer for `rid`'s request; `ENOENT` when there is none. An
    /// answer to an ended request is accepted and ignored (the agent may
    /// write `fenced=1` twice, or after a timeout).
    pub fn answer(&mut self, rid: u64, answer: Answer, out: &mut Vec<Event>) -> Result<(), i32> {
        let r = self.reqs.get_mut(&rid).ok_or(libc::ENOENT)?;
        if r.state != State::Pending {
            return Ok(());
        }
        match answer {
            Answer::Fenced => {
                r.state = State::Fenced;
                self.fenced.insert(rid);
                out.push(Event::Fenced { rid });
            }
            Answer::Error => {
                r.state = State::Error;
                out.push(Event::Failed {
                    rid,
                    errno: libc::EIO,
                });
            }
        }
        Ok(())
    }

    /// Fails the requests left unanswered past the timeout.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Event>) {
        for (&rid, r) in self.reqs.iter_mut() {
            if r.state == State::Pending && now.saturating_sub(r.started) >= self.timeout {
                r.state = State::Error;
                out.push(Event::Failed {
                    rid,
                    errno: libc::ETIMEDOUT,
                });
            }
        }
    }

    /// When [`FenceTable::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.reqs
            .values()
            .filter(|r| r.state == State::Pending)
            .map(|r| r.started + self.timeout)
            .min()
    }

    /// The rid is reclaimed: its (fenced) request goes away. Pending and
    /// failed requests stay.
    pub fn remove(&mut self, rid: u64) {
        if self
            .reqs
            .get(&rid)
            .is_some_and(|r| r.state == State::Fenced)
        {
            self.reqs.remove(&rid);
        }
    }

    /// The server stopped: every request goes, pending ones fail with
    /// `ECANCELED`. What was fenced stays known.
    pub fn clear(&mut self, out: &mut Vec<Event>) {
        for (rid, r) in std::mem::take(&mut self.reqs) {
            if r.state == State::Pending {
                out.push(Event::Failed {
                    rid,
                    errno: libc::ECANCELED,
                });
            }
        }
    }

    pub fn state(&self, rid: u64) -> Option<State> {
        self.reqs.get(&rid).map(|r| r.state)
    }

    /// Every request, in rid order.
    pub fn views(&self, now: Duration) -> Vec<RequestView> {
        self.reqs
            .iter()
            .map(|(&rid, r)| RequestView {
                rid,
                ipv4: r.ipv4,
                reason: r.reason,
                elapsed_secs: now.saturating_sub(r.started).as_secs(),
                state: r.state,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn answered_request_is_fenced_then_removed() {
        let mut t = FenceTable::new(FENCE_ANSWER_TIMEOUT);
        let mut ev = Vec::new();
        t.request(secs(1), 5, IP, Reason::ClientRecovery, &mut ev);
        assert_eq!(ev, vec![Event::Requested { rid: 5 }]);
        let v = t.views(secs(4));
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].elapsed_secs, v[0].state), (3, State::Pending));
        ev.clear();
        t.answer(5, Answer::Fenced, &mut ev).unwrap();
        assert_eq!(ev, vec![Event::Fenced { rid: 5 }]);
        assert_eq!(t.next_deadline(), None);
        ev.clear();
        t.tick(secs(100), &mut ev);
        assert!(ev.is_empty(), "a fenced request cannot time out");
        t.remove(5);
        assert!(t.views(secs(100)).is_empty());
    }

    #[test]
    fn error_answer_fails_and_stays_until_clear() {
        let mut t = FenceTable::new(FENCE_ANSWER_TIMEOUT);
        let mut ev = Vec::new();
        t.request(secs(0), 9, IP, Reason::ClientReconnect, &mut ev);
        ev.clear();
        t.answer(9, Answer::Error, &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![Event::Failed {
                rid: 9,
                errno: libc::EIO
            }]
        );
        ev.clear();
        // A late fenced=1 does not revive it, and removal keeps it.
        t.answer(9, Answer::Fenced, &mut ev).unwrap();
        t.remove(9);
        assert!(ev.is_empty());
        assert_eq!(t.state(9), Some(State::Error));
        t.clear(&mut ev);
        assert!(ev.is_empty(), "an ended request has nobody to tell");
        assert_eq!(t.state(9), None);
    }

    #[test]
    fn unanswered_request_times_out_once() {
        let mut t = FenceTable::new(FENCE_ANSWER_TIMEOUT);
        let mut ev = Vec::new();
        t.request(secs(10), 3, IP, Reason::QuorumBlockLeader, &mut ev);
        ev.clear();
        assert_eq!(t.next_deadline(), Some(secs(40)));
        t.tick(secs(39), &mut ev);
        assert!(ev.is_empty());
        t.tick(secs(40), &mut ev);
        assert_eq!(
            ev,
            vec![Event::Failed {
                rid: 3,
                errno: libc::ETIMEDOUT
            }]
        );
        ev.clear();
        t.tick(secs(80), &mut ev);
        assert!(ev.is_empty());
        assert_eq!(t.answer(4, Answer::Fenced, &mut ev), Err(libc::ENOENT));
    }

    /// Trap 27: asking twice, or asking for a rid fenced before, is not an
    /// error and does not ask the agent again.
    #[test]
    fn double_fence_is_not_an_error() {
        let mut t = FenceTable::new(FENCE_ANSWER_TIMEOUT);
        let mut ev = Vec::new();
        t.request(secs(0), 7, IP, Reason::ClientRecovery, &mut ev);
        t.request(secs(1), 7, IP, Reason::ClientReconnect, &mut ev);
        assert_eq!(ev, vec![Event::Requested { rid: 7 }], "joined");
        ev.clear();
        t.answer(7, Answer::Fenced, &mut ev).unwrap();
        t.answer(7, Answer::Fenced, &mut ev).unwrap();
        assert_eq!(ev, vec![Event::Fenced { rid: 7 }]);
        ev.clear();
        t.request(secs(2), 7, IP, Reason::ClientReconnect, &mut ev);
        assert_eq!(ev, vec![Event::Fenced { rid: 7 }]);
        ev.clear();
        t.remove(7);
        // After reclaim and removal, and across a server stop.
        t.clear(&mut ev);
        t.request(secs(3), 7, IP, Reason::ClientRecovery, &mut ev);
        assert_eq!(ev, vec![Event::Fenced { rid: 7 }]);
        assert_eq!(t.state(7), Some(State::Fenced));
    }

    #[test]
    fn clear_cancels_pending_requests() {
        let mut t = FenceTable::new(FENCE_ANSWER_TIMEOUT);
        let mut ev = Vec::new();
        t.request(secs(0), 1, IP, Reason::ClientRecovery, &mut ev);
        t.request(secs(0), 2, IP, Reason::ClientRecovery, &mut ev);
        t.answer(2, Answer::Fenced, &mut ev).unwrap();
        ev.clear();
        t.clear(&mut ev);
        assert_eq!(
            ev,
            vec![Event::Failed {
                rid: 1,
                errno: libc::ECANCELED
            }]
        );
        assert!(t.views(secs(0)).is_empty());
        assert_eq!(
            Reason::parse("client_reconnect"),
            Some(Reason::ClientReconnect)
        );
        assert_eq!(Reason::parse("bogus"), None);
    }
}
