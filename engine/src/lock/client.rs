//! The lock client (reference §4.3–§4.6, `lock.c`) as a sans-IO state
//! machine.
//!
//! Why it is shaped this way:
//! * **One FIFO per lock for everything the server sends** (grants and
//!   invalidations), processed strictly in receive order (ad5662b8). The
//!   server may grant a lock and then, for another client, invalidate it
//!   right away; handling that invalidation before the grant would leave
//!   this mount holding a mode the server thinks it gave up. Across a
//!   failover the old and new server can also ask for the same
//!   invalidation twice; a FIFO makes duplicates harmless because each
//!   reply states the mode actually left.
//! * **No window between replying and finishing** (a27c54568c, a5ca5ee3,
//!   65ac4283). The original dropped a spinlock to send its reply, and a
//!   request arriving in that gap either hit a BUG or left the lock on a
//!   worker list nobody looked at. Here a reply, the pop of the queue and
//!   the start of the next queued request happen in one `handle` call; a
//!   later request simply joins the queue, and whatever queued work exists
//!   is always picked up by [`LockClient::handle`] before it returns.
//! * **An invalidation only waits for local users, then for the owner.**
//!   Once no user holds a mode the new mode can't serve, the lock's mode is
//!   lowered and [`ClientAction::Invalidate`] asks the owner (the item cache
//!   and transaction) to commit and drop what the range cached. The reply
//!   goes out only after [`ClientEvent::InvalidateDone`]. While any of this
//!   is pending, no new local user is admitted, so a stream of readers can't
//!   starve the invalidation.
//! * **Recovery reports the old mode mid-invalidation** (ca526e2b): until
//!   the reply is sent the owner may still be writing back, so a new server
//!   must keep believing we hold the old mode. It also covers any grant
//!   queued behind that invalidation (found by the simulation, seed 850:
//!   across two failovers a grant from the second server waited behind the
//!   first server's invalidation, and reporting only the old mode let the
//!   third server believe READ while the queued WRITE was still to come).
//! * **Idle locks are shrunk from an LRU, one request at a time**: when more
//!   than `lock_idle_count` unused locks are cached, the oldest asks the
//!   server for NULL; the server invalidates our own grant (so the owner
//!   drops the cache) and grants NULL, and the lock is freed. Bulk shrinking
//!   flooded the network in the original (f0c79966).
//! * `nonblock` callers get [`ClientAction::WouldBlock`] whenever they would
//!   have to wait, and send nothing.
//!
//! The client never talks to the network or the cache itself: it returns
//! actions and is told about their completion through events, so a
//! simulation can schedule every interleaving.
//!
//! Touches only `format` (keys, `NetLock`) and the rest of `lock`.

use std::collections::{BTreeMap, VecDeque};

use super::mode::LockMode;
use super::names::LockRange;
use super::wire::LockMsg;
use crate::format::key::Key;
use crate::format::net::{NetLock, LOCK_RECOVER_MAX_LOCKS};

/// `lock_idle_count` mount option: default and accepted range.
pub const LOCK_IDLE_COUNT_DEFAULT: usize = 10_000;
pub const LOCK_IDLE_COUNT_MIN: usize = 32;
pub const LOCK_IDLE_COUNT_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockClientConfig {
    /// Idle locks kept before the oldest is shrunk. The mount option is
    /// limited to [`LOCK_IDLE_COUNT_MIN`]..=[`LOCK_IDLE_COUNT_MAX`]; tests
    /// use smaller values to shrink all the time.
    pub lock_idle_count: usize,
}

impl Default for LockClientConfig {
    fn default() -> Self {
        LockClientConfig {
            lock_idle_count: LOCK_IDLE_COUNT_DEFAULT,
        }
    }
}

/// Names one local lock holder (or would-be holder). Chosen by the caller,
/// unique among those not yet unlocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u64);

/// What happened, fed to [`LockClient::handle`]. `T` names a server request
/// so that it can be answered (the net layer's request ref).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent<T> {
    /// A local user wants `mode` (not NULL) on `range`. Answered with
    /// [`ClientAction::Granted`], now or later, or with
    /// [`ClientAction::WouldBlock`] if `nonblock` and it can't be granted now.
    Lock {
        user: UserId,
        range: LockRange,
        mode: LockMode,
        nonblock: bool,
    },
    /// The user releases its lock, or gives up waiting for it.
    Unlock { user: UserId },
    /// The server's response to our LOCK request.
    Grant { nl: NetLock },
    /// A LOCK request from the server: give up a mode.
    InvalidateRequest { token: T, nl: NetLock },
    /// LOCK_RECOVER from a new server.
    RecoverRequest { token: T, key: Key },
    /// The owner finished the [`ClientAction::Invalidate`] of this lock.
    InvalidateDone { start: Key },
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction<T> {
    /// Send a LOCK request to the server.
    Request { nl: NetLock },
    /// Answer the server's LOCK request `token`.
    InvalidateReply { token: T, nl: NetLock },
    /// Answer the server's LOCK_RECOVER request `token`.
    RecoverReply { token: T, locks: Vec<NetLock> },
    /// The user now holds `mode`. Items written under it take seqs of at
    /// least `write_seq`; inodes loaded under an older `refresh_gen` must be
    /// reread.
    Granted {
        user: UserId,
        range: LockRange,
        mode: LockMode,
        write_seq: u64,
        refresh_gen: u64,
    },
    /// A `nonblock` lock that would have had to wait (EAGAIN).
    WouldBlock { user: UserId },
    /// Before the server may be told we went from `old` to `new`: commit the
    /// transaction if `old` could write and the range has dirty items, and
    /// unless this is WRITE → READ, drop every cached item of the range.
    /// Answer with [`ClientEvent::InvalidateDone`].
    Invalidate {
        range: LockRange,
        old: LockMode,
        new: LockMode,
    },
    /// The server sent something that breaks the protocol; it was ignored.
    BadMessage { reason: String },
}

#[derive(Debug, Clone)]
enum Incoming<T> {
    Grant(LockMsg),
    Invalidate { token: T, msg: LockMsg },
}

#[derive(Debug)]
struct Lock<T> {
    range: LockRange,
    /// What local users may be granted (already lowered while the owner
    /// works through an invalidation).
    mode: LockMode,
    write_seq: u64,
    refresh_gen: u64,
    /// The mode asked of the server and not yet answered.
    request: Option<LockMode>,
    /// Grants and invalidations in receive order; the head is in progress.
    queue: VecDeque<Incoming<T>>,
    /// The head invalidation waits for [`ClientEvent::InvalidateDone`].
    owner_busy: bool,
    /// The mode held before the head invalidation lowered `mode`, until its
    /// reply is sent: what recovery must report.
    invalidating_mode: Option<LockMode>,
    /// Local holders per mode (indexed by wire value).
    holders: [u32; 4],
    waiters: VecDeque<UserId>,
    lru_tick: Option<u64>,
}

impl<T> Lock<T> {
    fn new(range: LockRange) -> Self {
        Lock {
            range,
            mode: LockMode::Null,
            write_seq: 0,
            refresh_gen: 0,
            request: None,
            queue: VecDeque::new(),
            owner_busy: false,
            invalidating_mode: None,
            holders: [0; 4],
            waiters: VecDeque::new(),
            lru_tick: None,
        }
    }

    fn held_modes(&self) -> impl Iterator<Item = LockMode> + '_ {
        LockMode::ALL
            .into_iter()
            .filter(|m| self.holders[m.to_wire() as usize] > 0)
    }

    fn holders_fit(&self, mode: LockMode) -> bool {
        self.held_modes().all(|m| mode.covers(m))
    }

    fn unused(&self) -> bool {
        self.holders == [0; 4]
            && self.waiters.is_empty()
            && self.request.is_none()
            && self.queue.is_empty()
    }

    /// The mode and write_seq a new server must believe we hold: the mode
    /// before an invalidation still in progress (ca526e2b), joined with
    /// every grant still queued behind it. Those grants came from an older
    /// server and will be applied; reporting less would let the new server
    /// grant a conflicting mode that we then take anyway.
    fn recovery(&self) -> (LockMode, u64) {
        let mut mode = self.invalidating_mode.unwrap_or(self.mode);
        let mut write_seq = self.write_seq;
        for i in &self.queue {
            if let Incoming::Grant(m) = i {
                mode = mode.join(m.new);
                write_seq = write_seq.max(m.write_seq);
            }
        }
        (mode, write_seq)
    }
}

#[derive(Debug, Clone, Copy)]
struct User {
    start: Key,
    mode: LockMode,
    held: bool,
}

/// A read-only view of one cached lock, for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockView {
    pub range: LockRange,
    pub mode: LockMode,
    pub write_seq: u64,
    pub refresh_gen: u64,
    pub request: Option<LockMode>,
    /// Grants and invalidations received and not yet finished.
    pub queued: usize,
    pub owner_busy: bool,
    /// What LOCK_RECOVER would report for this lock now.
    pub recovery_mode: LockMode,
    pub holders: usize,
    pub waiters: usize,
}

/// The mount side of the cluster locks.
#[derive(Debug)]
pub struct LockClient<T> {
    cfg: LockClientConfig,
    locks: BTreeMap<Key, Lock<T>>,
    users: BTreeMap<UserId, User>,
    /// Idle granted locks, oldest first.
    lru: BTreeMap<u64, Key>,
    lru_tick: u64,
    refresh_gen: u64,
}

impl<T: Clone> LockClient<T> {
    pub fn new(cfg: LockClientConfig) -> Self {
        assert!(cfg.lock_idle_count > 0, "lock_idle_count must be positive");
        LockClient {
            cfg,
            locks: BTreeMap::new(),
            users: BTreeMap::new(),
            lru: BTreeMap::new(),
            lru_tick: 0,
            refresh_gen: 0,
        }
    }

    pub fn view(&self, start: &Key) -> Option<LockView> {
        self.locks.get(start).map(|l| LockView {
            range: l.range,
            mode: l.mode,
            write_seq: l.write_seq,
            refresh_gen: l.refresh_gen,
            request: l.request,
            queued: l.queue.len(),
            owner_busy: l.owner_busy,
            recovery_mode: l.recovery().0,
            holders: l.holders.iter().map(|&n| n as usize).sum(),
            waiters: l.waiters.len(),
        })
    }

    /// The mode this mount's cache of `key` is entitled to: that of the
    /// cached lock whose range holds the key, NULL without one.
    pub fn mode_at(&self, key: &Key) -> LockMode {
        self.locks
            .range(..=*key)
            .next_back()
            .filter(|(_, l)| *key <= l.range.end)
            .map_or(LockMode::Null, |(_, l)| l.mode)
    }

    pub fn views(&self) -> impl Iterator<Item = LockView> + '_ {
        self.locks.keys().filter_map(|k| self.view(k))
    }

    /// Idle locks on the LRU.
    pub fn idle_count(&self) -> usize {
        self.lru.len()
    }

    /// Handles one event; the actions are to be carried out in order.
    ///
    /// Panics on caller bugs (a reused or unknown [`UserId`], a NULL lock
    /// request, an `InvalidateDone` nobody asked for); anything the server
    /// sends is checked and at worst reported as
    /// [`ClientAction::BadMessage`].
    pub fn handle(&mut self, ev: ClientEvent<T>) -> Vec<ClientAction<T>> {
        let mut out = Vec::new();
        match ev {
            ClientEvent::Lock {
                user,
                range,
                mode,
                nonblock,
            } => {
                self.lock(user, range, mode, nonblock, &mut out);
                self.shrink(&mut out);
            }
            ClientEvent::Unlock { user } => {
                let u = self
                    .users
                    .remove(&user)
                    .unwrap_or_else(|| panic!("unlock of unknown user {user:?}"));
                let lock = self.locks.get_mut(&u.start).expect("user's lock");
                if u.held {
                    let n = &mut lock.holders[u.mode.to_wire() as usize];
                    assert!(*n > 0);
                    *n -= 1;
                } else {
                    lock.waiters.retain(|&w| w != user);
                }
                self.pump(u.start, &mut out);
            }
            ClientEvent::Grant { nl } => self.grant(&nl, &mut out),
            ClientEvent::InvalidateRequest { token, nl } => {
                self.invalidate_request(token, &nl, &mut out)
            }
            ClientEvent::RecoverRequest { token, key } => {
                let locks = self
                    .locks
                    .range(key..)
                    .map(|(&k, l)| (k, l.recovery()))
                    .filter(|(_, (mode, _))| *mode != LockMode::Null)
                    .take(LOCK_RECOVER_MAX_LOCKS)
                    .map(|(k, (mode, write_seq))| {
                        LockMsg {
                            key: k,
                            write_seq,
                            old: mode,
                            new: mode,
                        }
                        .to_net()
                    })
                    .collect();
                out.push(ClientAction::RecoverReply { token, locks });
            }
            ClientEvent::InvalidateDone { start } => {
                let lock = self
                    .locks
                    .get_mut(&start)
                    .filter(|l| l.owner_busy)
                    .unwrap_or_else(|| panic!("InvalidateDone for {start} nobody asked for"));
                lock.owner_busy = false;
                Self::reply_head(lock, &mut out);
                self.pump(start, &mut out);
            }
        }
        out
    }

    fn lock(
        &mut self,
        user: UserId,
        range: LockRange,
        mode: LockMode,
        nonblock: bool,
        out: &mut Vec<ClientAction<T>>,
    ) {
        assert!(mode != LockMode::Null, "local lock requests want a mode");
        assert!(
            !self.users.contains_key(&user),
            "user {user:?} already locking"
        );
        let lock = self
            .locks
            .entry(range.start)
            .or_insert_with(|| Lock::new(range));
        assert_eq!(lock.range, range, "one lock name, two ranges");
        let grantable = lock.queue.is_empty() && lock.mode.covers(mode);
        if !grantable && nonblock {
            out.push(ClientAction::WouldBlock { user });
            self.settle_idle(range.start);
            return;
        }
        self.users.insert(
            user,
            User {
                start: range.start,
                mode,
                held: false,
            },
        );
        lock.waiters.push_back(user);
        self.pump(range.start, out);
    }

    fn grant(&mut self, nl: &NetLock, out: &mut Vec<ClientAction<T>>) {
        let m = match LockMsg::from_net(nl) {
            Ok(m) => m,
            Err(e) => {
                out.push(ClientAction::BadMessage {
                    reason: e.to_string(),
                });
                return;
            }
        };
        let Some(lock) = self.locks.get_mut(&m.key).filter(|l| l.request.is_some()) else {
            out.push(ClientAction::BadMessage {
                reason: format!("grant of {} that we did not request", m.key),
            });
            return;
        };
        lock.request = None;
        lock.queue.push_back(Incoming::Grant(m));
        self.pump(m.key, out);
    }

    fn invalidate_request(&mut self, token: T, nl: &NetLock, out: &mut Vec<ClientAction<T>>) {
        let m = match LockMsg::from_net(nl) {
            Ok(m) => m,
            Err(e) => {
                out.push(ClientAction::BadMessage {
                    reason: e.to_string(),
                });
                return;
            }
        };
        let Some(lock) = self.locks.get_mut(&m.key) else {
            // Not cached (perhaps freed while the servers changed): holding
            // nothing already satisfies any invalidation.
            out.push(ClientAction::InvalidateReply {
                token,
                nl: LockMsg {
                    new: LockMode::Null,
                    ..m
                }
                .to_net(),
            });
            return;
        };
        lock.queue.push_back(Incoming::Invalidate { token, msg: m });
        self.pump(m.key, out);
    }

    /// Sends the reply of the head invalidation and pops it.
    fn reply_head(lock: &mut Lock<T>, out: &mut Vec<ClientAction<T>>) {
        let Some(Incoming::Invalidate { token, msg }) = lock.queue.pop_front() else {
            unreachable!("reply without an invalidation at the head");
        };
        lock.invalidating_mode = None;
        out.push(ClientAction::InvalidateReply {
            token,
            nl: LockMsg {
                new: lock.mode,
                ..msg
            }
            .to_net(),
        });
    }

    /// Makes all the progress the lock allows: the queue, then waiting
    /// users, then a request for what they still need, then the LRU.
    fn pump(&mut self, start: Key, out: &mut Vec<ClientAction<T>>) {
        let Some(lock) = self.locks.get_mut(&start) else {
            return;
        };
        while !lock.owner_busy {
            match lock.queue.front() {
                None => break,
                Some(Incoming::Grant(m)) => {
                    let m = *m;
                    lock.queue.pop_front();
                    if !lock.holders_fit(m.new) {
                        out.push(ClientAction::BadMessage {
                            reason: format!(
                                "grant of {:?} on {} under local holders of {:?}",
                                m.new,
                                m.key,
                                lock.held_modes().collect::<Vec<_>>()
                            ),
                        });
                    }
                    if !lock.mode.can_read() && m.new.can_read() {
                        // Whatever was cached before may be stale now.
                        self.refresh_gen += 1;
                        lock.refresh_gen = self.refresh_gen;
                    }
                    lock.mode = m.new;
                    lock.write_seq = m.write_seq;
                }
                Some(Incoming::Invalidate { msg, .. }) => {
                    let left = lock.mode.invalidated_to(msg.new);
                    if !lock.holders_fit(left) {
                        break;
                    }
                    if left == lock.mode {
                        Self::reply_head(lock, out);
                        continue;
                    }
                    lock.invalidating_mode = Some(lock.mode);
                    out.push(ClientAction::Invalidate {
                        range: lock.range,
                        old: lock.mode,
                        new: left,
                    });
                    lock.mode = left;
                    lock.owner_busy = true;
                }
            }
        }
        if lock.queue.is_empty() {
            let mut still = VecDeque::new();
            while let Some(user) = lock.waiters.pop_front() {
                let u = self.users.get_mut(&user).expect("waiter is a user");
                if lock.mode.covers(u.mode) {
                    u.held = true;
                    lock.holders[u.mode.to_wire() as usize] += 1;
                    out.push(ClientAction::Granted {
                        user,
                        range: lock.range,
                        mode: u.mode,
                        write_seq: lock.write_seq,
                        refresh_gen: lock.refresh_gen,
                    });
                } else {
                    still.push_back(user);
                }
            }
            lock.waiters = still;
            if lock.request.is_none() && !lock.waiters.is_empty() {
                let modes: Vec<LockMode> =
                    lock.waiters.iter().map(|w| self.users[w].mode).collect();
                // The first waiter's mode, widened to WRITE when it reads
                // and another waiter writes: one round trip serves both.
                let mut want = modes[0];
                if want == LockMode::Read && modes.contains(&LockMode::Write) {
                    want = LockMode::Write;
                }
                lock.request = Some(want);
                out.push(ClientAction::Request {
                    nl: LockMsg {
                        key: start,
                        write_seq: 0,
                        old: lock.mode,
                        new: want,
                    }
                    .to_net(),
                });
            }
        }
        self.settle_idle(start);
    }

    /// Puts an unused lock on the LRU, frees it if it holds nothing, or
    /// takes a used one off the LRU.
    fn settle_idle(&mut self, start: Key) {
        let Some(lock) = self.locks.get_mut(&start) else {
            return;
        };
        if !lock.unused() {
            if let Some(t) = lock.lru_tick.take() {
                self.lru.remove(&t);
            }
            return;
        }
        if lock.mode == LockMode::Null {
            if let Some(t) = lock.lru_tick {
                self.lru.remove(&t);
            }
            self.locks.remove(&start);
            return;
        }
        if lock.lru_tick.is_none() {
            self.lru_tick += 1;
            lock.lru_tick = Some(self.lru_tick);
            self.lru.insert(self.lru_tick, start);
        }
    }

    /// Asks the server for NULL on the oldest idle locks until at most
    /// `lock_idle_count` remain idle.
    fn shrink(&mut self, out: &mut Vec<ClientAction<T>>) {
        while self.lru.len() > self.cfg.lock_idle_count {
            let (_, start) = self.lru.pop_first().expect("non-empty");
            let lock = self.locks.get_mut(&start).expect("lru lock");
            debug_assert!(lock.unused() && lock.mode != LockMode::Null);
            lock.lru_tick = None;
            lock.request = Some(LockMode::Null);
            out.push(ClientAction::Request {
                nl: LockMsg {
                    key: start,
                    write_seq: 0,
                    old: lock.mode,
                    new: LockMode::Null,
                }
                .to_net(),
            });
        }
    }

    /// Checks what must hold between events: holders fit the mode, users
    /// and holder counts agree, only unused non-NULL locks sit on the LRU,
    /// no unused NULL lock is kept, and `owner_busy` means an invalidation
    /// is at the head.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts: BTreeMap<Key, [u32; 4]> = BTreeMap::new();
        let mut waiting: BTreeMap<Key, usize> = BTreeMap::new();
        for (id, u) in &self.users {
            let Some(lock) = self.locks.get(&u.start) else {
                return Err(format!("user {id:?} on missing lock {}", u.start));
            };
            if u.held {
                counts.entry(u.start).or_default()[u.mode.to_wire() as usize] += 1;
            } else {
                *waiting.entry(u.start).or_default() += 1;
                if !lock.waiters.contains(id) {
                    return Err(format!("user {id:?} waits outside the waiters list"));
                }
            }
        }
        for (key, l) in &self.locks {
            let start = l.range.start;
            if *key != start {
                return Err(format!("lock {start} filed under {key}"));
            }
            if counts.get(key).copied().unwrap_or_default() != l.holders {
                return Err(format!("holder counts of {key} disagree with users"));
            }
            if waiting.get(key).copied().unwrap_or_default() != l.waiters.len() {
                return Err(format!("waiters of {key} disagree with users"));
            }
            if !l.holders_fit(l.mode) {
                return Err(format!("{key}: holders exceed mode {:?}", l.mode));
            }
            if l.owner_busy != l.invalidating_mode.is_some() {
                return Err(format!("{key}: owner_busy without invalidating mode"));
            }
            if l.owner_busy && !matches!(l.queue.front(), Some(Incoming::Invalidate { .. })) {
                return Err(format!("{key}: owner busy without an invalidation"));
            }
            if matches!(l.queue.front(), Some(Incoming::Grant(_))) {
                // A grant only ever waits behind an invalidation.
                return Err(format!("{key}: grant left unapplied at the head"));
            }
            if l.unused() && l.mode == LockMode::Null {
                return Err(format!("{key}: unused NULL lock kept"));
            }
            let on_lru = l.lru_tick.is_some_and(|t| self.lru.get(&t) == Some(key));
            if l.lru_tick.is_some() != on_lru {
                return Err(format!("{key}: LRU tick without LRU entry"));
            }
            if on_lru != l.unused() {
                return Err(format!("{key}: on LRU {on_lru} but unused {}", l.unused()));
            }
        }
        if self.lru.len() != self.locks.values().filter(|l| l.lru_tick.is_some()).count() {
            return Err("LRU has entries for missing locks".into());
        }
        Ok(())
    }
}
