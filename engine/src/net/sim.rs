//! A deterministic simulated TCP network for tests and the engine's
//! simulation: every choice comes from one seeded RNG, so a seed replays
//! exactly.
//!
//! Guarantees (TCP semantics per socket):
//! * Bytes sent on a live socket arrive at the other end in order, exactly
//!   once, split into chunks of random sizes, each after a random delay.
//! * [`SimNet::break_sock`] breaks a socket at any moment: everything in
//!   flight in both directions is lost, later sends are discarded, and each
//!   end that did not close it itself learns of it after its own random
//!   delay (so one end may still believe it is connected for a while).
//! * Nothing is reordered within a socket; across sockets (reconnects)
//!   anything goes.
//!
//! Time is virtual: [`SimNet::pop`] advances `now` to the next event.
//! Touches nothing else of the engine.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::SockId;

/// The two ends of a simulated socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// The end that connected.
    Dialer,
    /// The end that accepted.
    Acceptor,
}

impl End {
    pub fn other(self) -> End {
        match self {
            End::Dialer => End::Acceptor,
            End::Acceptor => End::Dialer,
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Something the network delivers to one end of a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    Data {
        sock: SockId,
        to: End,
        bytes: Vec<u8>,
    },
    Closed {
        sock: SockId,
        to: End,
    },
}

/// Delays and chunking.
#[derive(Debug, Clone, Copy)]
pub struct SimNetConfig {
    pub delay_max: Duration,
    /// Largest chunk a send is split into, in bytes.
    pub chunk_bytes_max: usize,
    /// Longest time an end takes to notice a broken socket.
    pub notice_delay_max: Duration,
}

impl Default for SimNetConfig {
    fn default() -> Self {
        SimNetConfig {
            delay_max: Duration::from_millis(5),
            chunk_bytes_max: 1500,
            notice_delay_max: Duration::from_millis(50),
        }
    }
}

#[derive(Debug)]
struct Link {
    alive: bool,
    /// Latest scheduled arrival per receiving end, to keep order.
    last_at: [Duration; 2],
}

/// The simulated network.
#[derive(Debug)]
pub struct SimNet {
    cfg: SimNetConfig,
    rng: SmallRng,
    now: Duration,
    next_sock: u64,
    links: BTreeMap<SockId, Link>,
    /// Scheduled deliveries by (time, insertion order).
    events: BTreeMap<(Duration, u64), SimEvent>,
    order: u64,
}

impl SimNet {
    pub fn new(seed: u64, cfg: SimNetConfig) -> SimNet {
        assert!(cfg.chunk_bytes_max >= 1);
        SimNet {
            cfg,
            rng: SmallRng::seed_from_u64(seed),
            now: Duration::ZERO,
            next_sock: 1,
            links: BTreeMap::new(),
            events: BTreeMap::new(),
            order: 0,
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Moves the clock forward (never back).
    pub fn advance_to(&mut self, t: Duration) {
        self.now = self.now.max(t);
    }

    /// The network's RNG, for callers that want their choices on the same seed.
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Opens a socket; both ends exist at once.
    pub fn connect(&mut self) -> SockId {
        let sock = SockId(self.next_sock);
        self.next_sock += 1;
        self.links.insert(
            sock,
            Link {
                alive: true,
                last_at: [self.now; 2],
            },
        );
        sock
    }

    pub fn is_alive(&self, sock: SockId) -> bool {
        self.links.get(&sock).is_some_and(|l| l.alive)
    }

    /// Live sockets, lowest id first.
    pub fn live_socks(&self) -> Vec<SockId> {
        self.links
            .iter()
            .filter(|(_, l)| l.alive)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Sends bytes from one end; discarded if the socket is broken.
    pub fn send(&mut self, sock: SockId, from: End, bytes: &[u8]) {
        let to = from.other();
        let Some(link) = self.links.get_mut(&sock).filter(|l| l.alive) else {
            return;
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self
                .rng
                .gen_range(1..=self.cfg.chunk_bytes_max.min(rest.len()));
            let delay = self.rng.gen_range(Duration::ZERO..=self.cfg.delay_max);
            let at = (self.now + delay).max(link.last_at[to.index()]);
            link.last_at[to.index()] = at;
            self.order += 1;
            self.events.insert(
                (at, self.order),
                SimEvent::Data {
                    sock,
                    to,
                    bytes: rest[..n].to_vec(),
                },
            );
            rest = &rest[n..];
        }
    }

    /// Breaks a socket: data in flight is lost. `closer` is the end that
    /// closed it itself (told nothing), `None` for a network failure.
    pub fn break_sock(&mut self, sock: SockId, closer: Option<End>) {
        let Some(link) = self.links.get_mut(&sock).filter(|l| l.alive) else {
            return;
        };
        link.alive = false;
        self.events
            .retain(|_, e| !matches!(e, SimEvent::Data { sock: s, .. } if *s == sock));
        for to in [End::Dialer, End::Acceptor] {
            if Some(to) != closer {
                let at = self.now
                    + self
                        .rng
                        .gen_range(Duration::ZERO..=self.cfg.notice_delay_max);
                self.order += 1;
                self.events
                    .insert((at, self.order), SimEvent::Closed { sock, to });
            }
        }
    }

    /// Time of the next delivery.
    pub fn next_at(&self) -> Option<Duration> {
        self.events.keys().next().map(|&(at, _)| at)
    }

    /// Takes the next delivery, advancing the clock to it.
    pub fn pop(&mut self) -> Option<SimEvent> {
        let ((at, _), ev) = self.events.pop_first()?;
        self.now = self.now.max(at);
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_once_and_breaks_lose_them() {
        let mut net = SimNet::new(
            7,
            SimNetConfig {
                chunk_bytes_max: 3,
                ..Default::default()
            },
        );
        let a = net.connect();
        let payload: Vec<u8> = (0..200u8).collect();
        net.send(a, End::Dialer, &payload[..100]);
        net.send(a, End::Dialer, &payload[100..]);
        let mut got = Vec::new();
        while let Some(ev) = net.pop() {
            match ev {
                SimEvent::Data {
                    to: End::Acceptor,
                    bytes,
                    ..
                } => got.extend(bytes),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, payload);
        net.send(a, End::Acceptor, &payload);
        net.break_sock(a, None);
        net.send(a, End::Dialer, &payload);
        let evs: Vec<_> = std::iter::from_fn(|| net.pop()).collect();
        assert_eq!(evs.len(), 2, "only the two close notices: {evs:?}");
        assert!(evs.iter().all(|e| matches!(e, SimEvent::Closed { .. })));
    }
}
