//! What the two lock simulations share: the seeded workload, the data model
//! and the invariant checks. `lock_sim.rs` carries the lock messages over
//! its own ordered message model, `lock_net_sim.rs` over the real net layer
//! (`engine::net` on a `SimNet`); the mounts' users, their cached counters,
//! the server failovers, farewells and kills, and everything checked after
//! each step and at the end are the same in both, so they live here once
//! and a fix to the model or a new check applies to both.
//!
//! A simulation is a [`Sim`] over a [`LockNet`]: the type that holds the
//! network's own state and carries the lock messages. The shared code calls
//! into it wherever messages are sent or a connection is made or broken,
//! and it calls back into the shared code with what the network delivers.
//! Everything draws from the one seeded [`Rng`] in the same order as
//! before the split, so each seed still replays exactly the same run.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use engine::format::key::{index_type, Key};
use engine::format::net::NetLock;
use engine::lock::{
    compatible, inode_lock, lock_order, orphan_lock, seq_index_lock, ClientAction, ClientEvent,
    LockClient, LockClientConfig, LockMode, LockRange, LockServer, ServerAction, ServerEvent,
    UserId,
};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn rid_of(inc: u64) -> u64 {
    0x1000 + inc
}

/// Where in a client's invalidation a targeted disruption lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The client's users still hold the lock.
    Before,
    /// The owner is writing back.
    During,
    /// The client just sent its reply.
    After,
}

impl Window {
    /// The window a seed targets (none for a quarter of the seeds).
    pub fn of_seed(seed: u64) -> Option<Window> {
        match seed % 4 {
            0 => None,
            1 => Some(Window::Before),
            2 => Some(Window::During),
            _ => Some(Window::After),
        }
    }
}

/// The lock names of a run: one to four of them.
pub fn pick_names(rng: &mut Rng) -> Vec<LockRange> {
    let all = [
        inode_lock(0),
        inode_lock(1024),
        orphan_lock(),
        seq_index_lock(index_type::META_SEQ, 0),
    ];
    let names_nr = rng.range(1, all.len() as u64) as usize;
    all[..names_nr].to_vec()
}

/// Sim tasks. `Net` carries the network's own.
#[derive(Debug, Clone)]
pub enum Ev<E> {
    UserWake { slot: usize, inc: u64, user: usize },
    OwnerDone { slot: usize, inc: u64, start: Key },
    ServerCrash,
    ServerStart,
    RecoveryTimeout { term: u64 },
    FenceDone { rid: u64, term: u64 },
    ClientKill { slot: usize },
    ClientStart { slot: usize },
    Net(E),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Acquiring,
    Holding,
    Done,
}

#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub uid: UserId,
    pub range: LockRange,
    pub mode: LockMode,
    pub write_seq: u64,
}

#[derive(Debug)]
pub struct User {
    pub phase: Phase,
    pub ops_left: u32,
    pub plan: Vec<(LockRange, LockMode)>,
    pub nonblock: bool,
    pub next: usize,
    pub held: Vec<Held>,
    pub pending: Option<UserId>,
    pub would_block: bool,
    pub uid_counter: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Cache {
    /// The counter as loaded and changed locally; None when not cached.
    pub value: Option<u64>,
    pub dirty: bool,
    /// The greatest write_seq the dirty value was written under.
    pub ws: u64,
    /// refresh_gen of the lock when the value was loaded.
    pub gen: u64,
    /// WRITE_ONLY increments not yet written back.
    pub delta: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CState {
    Alive,
    /// Farewell sent, waiting for its reply.
    Leaving,
    Gone,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Data {
    pub disk: u64,
    pub disk_ws: u64,
    pub truth: u64,
    pub disk_delta: u64,
    pub truth_delta: u64,
}

pub struct Client<N: LockNet> {
    pub inc: u64,
    pub rid: u64,
    pub state: CState,
    pub lc: LockClient<N::Token>,
    pub users: Vec<User>,
    /// Our requests (LOCK, FAREWELL) by id, not answered yet.
    pub unanswered: BTreeMap<u64, N::Req>,
    /// Owner write-backs in progress: (old, new) per lock.
    pub owner: BTreeMap<Key, (LockMode, LockMode)>,
    pub cache: BTreeMap<Key, Cache>,
    pub last_reply_at: BTreeMap<Key, u64>,
    pub restarts_left: u32,
    pub net: N::Client,
}

pub struct Srv<N: LockNet> {
    /// The generation (term) of the current (or last) server; 0 before the
    /// first.
    pub term: u64,
    pub up: bool,
    pub ls: LockServer<N::Token>,
    pub core: u64,
    pub net: N::Srv,
}

/// Counters of what the network's own code saw, summed over seeds.
pub trait NetStats: Debug + Default + Clone + Copy {
    fn add(&mut self, o: &Self);
}

impl NetStats for () {
    fn add(&mut self, _: &()) {}
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats<X> {
    pub grants: u64,
    pub second_inv_before: u64,
    pub second_inv_during: u64,
    pub second_inv_after: u64,
    pub crashes: u64,
    pub crash_windows: [u64; 3],
    pub recover_reports_mid_invalidation: u64,
    pub farewells: u64,
    pub farewells_during_recovery: u64,
    pub kills: u64,
    pub fences: u64,
    pub shrinks: u64,
    pub would_blocks: u64,
    pub writes: u64,
    pub net: X,
}

impl<X: NetStats> Stats<X> {
    pub fn add(&mut self, o: &Stats<X>) {
        self.grants += o.grants;
        self.second_inv_before += o.second_inv_before;
        self.second_inv_during += o.second_inv_during;
        self.second_inv_after += o.second_inv_after;
        self.crashes += o.crashes;
        for i in 0..3 {
            self.crash_windows[i] += o.crash_windows[i];
        }
        self.recover_reports_mid_invalidation += o.recover_reports_mid_invalidation;
        self.farewells += o.farewells;
        self.farewells_during_recovery += o.farewells_during_recovery;
        self.kills += o.kills;
        self.fences += o.fences;
        self.shrinks += o.shrinks;
        self.would_blocks += o.would_blocks;
        self.writes += o.writes;
        self.net.add(&o.net);
    }
}

pub struct Cfg {
    pub users: usize,
    pub ops: (u64, u64),
    pub idle_count: usize,
    pub window: Option<Window>,
    pub crash_permille: u64,
    pub farewell_permille: u64,
    pub nonblock_permille: u64,
    /// The network's largest delivery delay.
    pub max_delay: u64,
}

impl Cfg {
    /// Draws the workload's shape; `max_delay` is drawn last.
    pub fn draw(
        rng: &mut Rng,
        window: Option<Window>,
        max_delay: impl FnOnce(&mut Rng) -> u64,
    ) -> Cfg {
        let users = rng.range(2, 3) as usize;
        let ops = (4, rng.range(8, 16));
        let idle_count = rng.range(1, 3) as usize;
        let nonblock_permille = rng.range(0, 150);
        Cfg {
            users,
            ops,
            idle_count,
            window,
            crash_permille: if window.is_some() { 250 } else { 0 },
            farewell_permille: 500,
            nonblock_permille,
            max_delay: max_delay(rng),
        }
    }
}

/// A network the lock messages cross: its state lives in the [`Sim`]'s
/// `net` (and in each [`Client`]'s and the [`Srv`]'s `net`). The shared
/// code calls these where a network does something of its own.
pub trait LockNet: Sized {
    /// How the lock client names a server request to answer it.
    type Token: Clone + Debug;
    /// What a client keeps of each request it sent.
    type Req: Debug;
    /// The network's own sim tasks.
    type Ev: Debug;
    type Client;
    type Srv;
    type Stats: NetStats;

    /// The test's name, in what it prints.
    const NAME: &'static str;
    const MAX_STEPS: u64;
    /// Virtual time after which a seed that still has work counts as hung.
    const MAX_TIME_MS: u64;
    const RECOVERY_TIMEOUT_MS: u64;
    /// How long after a mount's invalidation reply a next invalidation of
    /// the same lock still counts as landing "after": twice the largest
    /// delay, plus this.
    const AFTER_SLACK_MS: u64;

    /// The simulation of `seed`, with its tasks scheduled.
    fn build(seed: u64, trace: bool) -> Sim<Self>;
    /// Runs the next network delivery or sim task; false when none is left.
    fn step(sim: &mut Sim<Self>) -> bool;
    fn net_task(sim: &mut Sim<Self>, ev: Self::Ev);

    /// The network state of a new mount incarnation.
    fn new_client(sim: &mut Sim<Self>, inc: u64) -> Self::Client;
    /// A mount (incarnation) was just created in `slot`.
    fn client_started(sim: &mut Sim<Self>, slot: usize);
    /// The mount in `slot` just went away (killed or after its farewell).
    fn disconnect(sim: &mut Sim<Self>, slot: usize);
    /// The test killed mount `rid` (already gone).
    fn killed(sim: &mut Sim<Self>, rid: u64);
    /// The mount in `slot`, its state already Leaving, says farewell.
    fn farewell(sim: &mut Sim<Self>, slot: usize);
    fn send_request(sim: &mut Sim<Self>, slot: usize, nl: NetLock);
    fn invalidate_reply(sim: &mut Sim<Self>, slot: usize, token: Self::Token, nl: NetLock);
    fn recover_reply(sim: &mut Sim<Self>, slot: usize, token: Self::Token, locks: Vec<NetLock>);
    /// A targeted window `w` of the mount in `slot` was reached.
    fn disrupt(sim: &mut Sim<Self>, slot: usize, w: Window);

    fn server_action(sim: &mut Sim<Self>, a: ServerAction<Self::Token>);
    /// The server just crashed (`up` is false, its lock state gone).
    fn crashed(sim: &mut Sim<Self>);
    /// A new server is up with its lock state.
    fn server_started(sim: &mut Sim<Self>);

    /// The network's own end-of-run checks of a live mount.
    fn finish_client(_c: &Client<Self>, _slot: usize) {}
}

pub struct Sim<N: LockNet> {
    pub rng: Rng,
    /// Virtual time in whole ms, the unit of every delay.
    pub now: u64,
    /// Sim tasks by (time, insertion order).
    pub agenda: BTreeMap<(Duration, u64), Ev<N::Ev>>,
    pub order: u64,
    pub trace: bool,
    pub cfg: Cfg,
    pub names: Vec<LockRange>,
    pub srv: Srv<N>,
    /// The mounted_clients items: rids a new server must recover.
    pub mounted: BTreeSet<u64>,
    pub committed_seq: u64,
    /// The greatest `max_item_seq` of any committed log tree: every new
    /// server starts above it.
    pub max_item_seq: u64,
    pub core_high: u64,
    pub crash_budget: u32,
    pub crash_scheduled: bool,
    pub clients: Vec<Client<N>>,
    pub data: BTreeMap<Key, Data>,
    pub next_inc: u64,
    pub stats: Stats<N::Stats>,
    /// The network's own state.
    pub net: N,
}

impl<N: LockNet> Sim<N> {
    pub fn new(
        rng: Rng,
        trace: bool,
        cfg: Cfg,
        names: Vec<LockRange>,
        crash_budget: u32,
        srv_net: N::Srv,
        net: N,
    ) -> Sim<N> {
        let data = names.iter().map(|n| (n.start, Data::default())).collect();
        Sim {
            rng,
            now: 0,
            agenda: BTreeMap::new(),
            order: 0,
            trace,
            cfg,
            names,
            srv: Srv {
                term: 0,
                up: false,
                ls: LockServer::new(),
                core: 0,
                net: srv_net,
            },
            mounted: BTreeSet::new(),
            committed_seq: 0,
            max_item_seq: 0,
            core_high: 0,
            crash_budget,
            crash_scheduled: false,
            clients: Vec::new(),
            data,
            next_inc: 1,
            stats: Stats::default(),
            net,
        }
    }

    /// Creates the first mounts and schedules their users; returns how many.
    pub fn add_clients(&mut self) -> usize {
        let nr = self.rng.range(3, 4) as usize;
        for slot in 0..nr {
            let c = self.new_client();
            self.clients.push(c);
            let inc = self.clients[slot].inc;
            for u in 0..self.cfg.users {
                let at = self.rng.range(0, 20);
                self.at(at, Ev::UserWake { slot, inc, user: u });
            }
            N::client_started(self, slot);
        }
        nr
    }

    /// A random crash and a random kill, independent of any window.
    pub fn random_faults(&mut self, nr: usize) {
        if self.rng.chance(300) {
            let t = self.rng.range(50, 1500);
            self.at(t, Ev::ServerCrash);
        }
        if self.rng.chance(250) {
            let slot = self.rng.below(nr as u64) as usize;
            let t = self.rng.range(20, 1500);
            self.at(t, Ev::ClientKill { slot });
        }
    }

    pub fn new_client(&mut self) -> Client<N> {
        let inc = self.next_inc;
        self.next_inc += 1;
        let users = (0..self.cfg.users)
            .map(|_| User {
                phase: Phase::Idle,
                ops_left: self.rng.range(self.cfg.ops.0, self.cfg.ops.1) as u32,
                plan: Vec::new(),
                nonblock: false,
                next: 0,
                held: Vec::new(),
                pending: None,
                would_block: false,
                uid_counter: 0,
            })
            .collect();
        let net = N::new_client(self, inc);
        Client {
            inc,
            rid: rid_of(inc),
            state: CState::Alive,
            lc: LockClient::new(LockClientConfig {
                lock_idle_count: self.cfg.idle_count,
            }),
            users,
            unanswered: BTreeMap::new(),
            owner: BTreeMap::new(),
            cache: BTreeMap::new(),
            last_reply_at: BTreeMap::new(),
            restarts_left: 1,
            net,
        }
    }

    pub fn log(&self, s: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:6}] {}", self.now, s());
        }
    }

    pub fn at(&mut self, at_ms: u64, ev: Ev<N::Ev>) {
        self.at_time(ms(at_ms), ev);
    }

    pub fn at_time(&mut self, at: Duration, ev: Ev<N::Ev>) {
        self.order += 1;
        self.agenda.insert((at, self.order), ev);
    }

    pub fn slot_of(&self, rid: u64) -> Option<usize> {
        self.clients
            .iter()
            .position(|c| c.rid == rid && c.state != CState::Gone)
    }

    /// Runs one sim task.
    pub fn run_task(&mut self, ev: Ev<N::Ev>) {
        match ev {
            Ev::UserWake { slot, inc, user } => {
                if self.clients[slot].inc == inc {
                    self.user_wake(slot, user);
                }
            }
            Ev::OwnerDone { slot, inc, start } => {
                let c = &self.clients[slot];
                if c.inc == inc && c.state != CState::Gone {
                    self.owner_done(slot, start);
                }
            }
            Ev::ServerCrash => self.crash(),
            Ev::ServerStart => self.start_server(),
            Ev::RecoveryTimeout { term } => {
                if self.srv.up && term == self.srv.term {
                    self.server_event(ServerEvent::RecoveryTimedOut);
                }
            }
            Ev::FenceDone { rid, term } => {
                if self.srv.up && term == self.srv.term {
                    self.server_event(ServerEvent::ClientGone { rid });
                    self.mounted.remove(&rid);
                }
            }
            Ev::ClientKill { slot } => {
                if self.clients[slot].state == CState::Alive {
                    let rid = self.clients[slot].rid;
                    self.kill(slot);
                    N::killed(self, rid);
                }
            }
            Ev::ClientStart { slot } => {
                let c = self.new_client();
                let restarts = self.clients[slot].restarts_left;
                self.clients[slot] = c;
                self.clients[slot].restarts_left = restarts;
                let inc = self.clients[slot].inc;
                self.log(|| format!("c{slot} START rid {:x}", rid_of(inc)));
                for user in 0..self.cfg.users {
                    let d = self.rng.range(0, 20);
                    self.at(self.now + d, Ev::UserWake { slot, inc, user });
                }
                N::client_started(self, slot);
            }
            Ev::Net(e) => N::net_task(self, e),
        }
    }

    // ----- server side -------------------------------------------------

    pub fn server_event(&mut self, ev: ServerEvent<N::Token>) {
        self.log(|| format!("server <- {ev:?}"));
        let acts = self.srv.ls.handle(&mut self.srv.core, ev);
        self.core_high = self.core_high.max(self.srv.core);
        for a in acts {
            self.log(|| format!("server -> {a:?}"));
            if let ServerAction::Grant { nl, .. } = &a {
                self.stats.grants += 1;
                self.check_write_grant(nl);
            }
            N::server_action(self, a);
        }
    }

    /// The fenced `rid` is reclaimed a little later.
    pub fn fence_done_later(&mut self, rid: u64) {
        let d = self.rng.range(50, 300);
        let term = self.srv.term;
        self.at(self.now + d, Ev::FenceDone { rid, term });
    }

    /// A farewell request reached the server.
    pub fn farewell_received(&mut self, rid: u64) {
        self.stats.farewells += 1;
        if self.srv.ls.client_recovering(rid) {
            self.stats.farewells_during_recovery += 1;
        }
    }

    /// A write grant must outrank every write_seq still in use on that lock
    /// (held, or being written back): recovery raises the new server's seq
    /// above what clients report for exactly this.
    fn check_write_grant(&self, nl: &NetLock) {
        let mode = LockMode::from_wire(nl.new_mode).unwrap();
        if !mode.can_write() {
            return;
        }
        let key = Key::from_disk(&nl.key).unwrap();
        let ws = nl.write_seq.get();
        for (s, c) in self.clients.iter().enumerate() {
            if c.state == CState::Gone {
                continue;
            }
            if let Some(v) = c.lc.view(&key) {
                assert!(
                    !v.recovery_mode.can_write() || v.write_seq < ws,
                    "write grant of {key} with write_seq {ws} while c{s} still uses {:?} under {}",
                    v.recovery_mode,
                    v.write_seq
                );
            }
        }
    }

    pub fn crash(&mut self) {
        if !self.srv.up {
            return;
        }
        self.stats.crashes += 1;
        self.log(|| "SERVER CRASH".into());
        self.srv.up = false;
        self.srv.ls = LockServer::new();
        self.crash_scheduled = false;
        N::crashed(self);
    }

    pub fn start_server(&mut self) {
        self.srv.term += 1;
        self.srv.up = true;
        self.srv.core = self.committed_seq.max(self.max_item_seq);
        self.srv.ls = if self.mounted.is_empty() {
            LockServer::new()
        } else {
            let term = self.srv.term;
            self.at(
                self.now + N::RECOVERY_TIMEOUT_MS,
                Ev::RecoveryTimeout { term },
            );
            LockServer::recovering(self.mounted.iter().copied())
        };
        self.log(|| {
            format!(
                "SERVER START term {} mounted {:x?}",
                self.srv.term, self.mounted
            )
        });
        N::server_started(self);
    }

    /// Whether a targeted disruption happens at window `w` now; if so it
    /// is taken from the budget.
    pub fn window_hit(&mut self, w: Window) -> bool {
        if self.cfg.window != Some(w)
            || !self.srv.up
            || self.crash_scheduled
            || self.crash_budget == 0
            || !self.rng.chance(self.cfg.crash_permille)
        {
            return false;
        }
        self.crash_budget -= 1;
        true
    }

    /// The server fails over in window `w`, a little later, so some
    /// messages in flight still land.
    pub fn crash_in_window(&mut self, w: Window) {
        self.crash_scheduled = true;
        self.stats.crash_windows[w as usize] += 1;
        let d = self.rng.range(0, 2);
        self.at(self.now + d, Ev::ServerCrash);
    }

    // ----- client side -------------------------------------------------

    pub fn client_event(&mut self, slot: usize, ev: ClientEvent<N::Token>) {
        self.log(|| format!("c{slot} <- {ev:?}"));
        let acts = self.clients[slot].lc.handle(ev);
        for a in acts {
            self.client_action(slot, a);
        }
    }

    fn client_action(&mut self, slot: usize, a: ClientAction<N::Token>) {
        self.log(|| format!("c{slot} -> {a:?}"));
        match a {
            ClientAction::Request { nl } => {
                if nl.new_mode == LockMode::Null.to_wire() {
                    self.stats.shrinks += 1;
                }
                N::send_request(self, slot, nl);
            }
            ClientAction::InvalidateReply { token, nl } => {
                let start = Key::from_disk(&nl.key).unwrap();
                self.clients[slot].last_reply_at.insert(start, self.now);
                N::invalidate_reply(self, slot, token, nl);
            }
            ClientAction::RecoverReply { token, locks } => {
                N::recover_reply(self, slot, token, locks)
            }
            ClientAction::Granted {
                user,
                range,
                mode,
                write_seq,
                refresh_gen,
            } => self.granted(slot, user, range, mode, write_seq, refresh_gen),
            ClientAction::WouldBlock { user } => {
                self.stats.would_blocks += 1;
                let inc = self.clients[slot].inc;
                let (ui, u) = self.user_of(slot, user);
                u.pending = None;
                u.would_block = true;
                self.wake_user(slot, inc, ui, 0);
            }
            ClientAction::Invalidate { range, old, new } => {
                let c = &mut self.clients[slot];
                let prev = c.owner.insert(range.start, (old, new));
                assert!(prev.is_none(), "two owner invalidations of {}", range.start);
                let inc = c.inc;
                let d = if self.cfg.window == Some(Window::During) && self.rng.chance(500) {
                    self.rng.range(50, 200)
                } else if self.rng.chance(300) {
                    0
                } else {
                    self.rng.range(1, self.cfg.max_delay * 2)
                };
                self.at(
                    self.now + d,
                    Ev::OwnerDone {
                        slot,
                        inc,
                        start: range.start,
                    },
                );
                N::disrupt(self, slot, Window::During);
            }
            ClientAction::BadMessage { reason } => panic!("client {slot}: bad message: {reason}"),
        }
    }

    /// The server's LOCK request (an invalidation) reached the mount.
    pub fn invalidate_request(&mut self, slot: usize, token: N::Token, nl: NetLock) {
        let start = Key::from_disk(&nl.key).unwrap();
        let c = &self.clients[slot];
        if let Some(v) = c.lc.view(&start) {
            if v.queued > 0 && v.owner_busy {
                self.stats.second_inv_during += 1;
            } else if v.queued > 0 {
                self.stats.second_inv_before += 1;
            }
        }
        if c.last_reply_at
            .get(&start)
            .is_some_and(|&t| self.now - t <= self.cfg.max_delay * 2 + N::AFTER_SLACK_MS)
        {
            self.stats.second_inv_after += 1;
        }
        self.client_event(slot, ClientEvent::InvalidateRequest { token, nl });
        let v = self.clients[slot].lc.view(&start);
        if v.is_some_and(|v| v.queued > 0 && !v.owner_busy && v.holders > 0) {
            N::disrupt(self, slot, Window::Before);
        }
    }

    /// A new server's LOCK_RECOVER reached the mount.
    pub fn recover_request(&mut self, slot: usize, token: N::Token, key: Key) {
        let mid = self.clients[slot]
            .lc
            .views()
            .filter(|v| v.owner_busy && v.range.start >= key)
            .count();
        self.stats.recover_reports_mid_invalidation += mid as u64;
        self.client_event(slot, ClientEvent::RecoverRequest { token, key });
    }

    /// The server answered the mount's farewell: it is gone.
    pub fn farewell_answered(&mut self, slot: usize) {
        let c = &mut self.clients[slot];
        assert_eq!(c.state, CState::Leaving);
        c.state = CState::Gone;
        N::disconnect(self, slot);
        self.log(|| format!("c{slot} GONE after farewell"));
        self.restart_later(slot);
    }

    fn user_of(&mut self, slot: usize, uid: UserId) -> (usize, &mut User) {
        let ui = (uid.0 >> 32) as usize;
        let u = &mut self.clients[slot].users[ui];
        assert_eq!(u.pending, Some(uid), "answer for a user not waiting");
        (ui, u)
    }

    fn granted(
        &mut self,
        slot: usize,
        uid: UserId,
        range: LockRange,
        mode: LockMode,
        write_seq: u64,
        refresh_gen: u64,
    ) {
        let inc = self.clients[slot].inc;
        let (ui, u) = self.user_of(slot, uid);
        u.pending = None;
        u.held.push(Held {
            uid,
            range,
            mode,
            write_seq,
        });
        u.next += 1;
        if mode.can_read() {
            let d = self.data[&range.start];
            let c = self.clients[slot].cache.entry(range.start).or_default();
            match c.value {
                None => {
                    c.value = Some(d.disk);
                    c.gen = refresh_gen;
                }
                Some(_) => assert_eq!(
                    c.gen, refresh_gen,
                    "c{slot}: cache of {} survived a non-readable period",
                    range.start
                ),
            }
            assert_eq!(
                c.value,
                Some(d.truth),
                "c{slot}: {mode:?} reader of {} sees a stale value",
                range.start
            );
        }
        self.wake_user(slot, inc, ui, 0);
    }

    fn owner_done(&mut self, slot: usize, start: Key) {
        let (old, new) = self.clients[slot].owner.remove(&start).expect("owner work");
        if old.can_write() {
            self.write_back(slot, start);
        }
        let c = &mut self.clients[slot];
        if !(old == LockMode::Write && new == LockMode::Read) {
            if let Some(e) = c.cache.remove(&start) {
                assert!(!e.dirty && e.delta == 0, "dropping unwritten changes");
            }
        }
        self.client_event(slot, ClientEvent::InvalidateDone { start });
    }

    /// Commits the client's changes to one lock's counter.
    fn write_back(&mut self, slot: usize, start: Key) {
        let Some(c) = self.clients[slot].cache.get_mut(&start) else {
            return;
        };
        let d = self.data.get_mut(&start).unwrap();
        if c.dirty {
            assert!(c.ws >= d.disk_ws, "disk write_seq going backwards");
            d.disk = c.value.unwrap();
            d.disk_ws = c.ws;
            c.dirty = false;
        }
        let ws = c.ws;
        d.disk_delta += c.delta;
        c.delta = 0;
        self.commit(ws);
    }

    /// A mount's commit of changes written under seqs up to `ws`: its log
    /// tree's `max_item_seq`, which every later server starts above (§2.1).
    /// A running server persists its core seq with the commit and raises
    /// it to the tree's `max_item_seq` first: a commit reaching a new
    /// server can carry seqs the old one handed out and never persisted.
    fn commit(&mut self, ws: u64) {
        self.max_item_seq = self.max_item_seq.max(ws);
        if self.srv.up {
            self.srv.core = self.srv.core.max(ws);
            self.core_high = self.core_high.max(self.srv.core);
            self.committed_seq = self.committed_seq.max(self.srv.core);
        }
    }

    /// The mount dies: its unwritten changes are lost and it goes quiet;
    /// the server fences it.
    pub fn kill(&mut self, slot: usize) {
        if self.clients[slot].state == CState::Gone {
            return;
        }
        self.stats.kills += 1;
        self.log(|| format!("KILL c{slot}"));
        self.clients[slot].state = CState::Gone;
        N::disconnect(self, slot);
        let c = &mut self.clients[slot];
        for (k, e) in &c.cache {
            let d = self.data.get_mut(k).unwrap();
            if e.dirty {
                // Only a WRITE holder has dirty data, so nobody else wrote
                // after what is on disk.
                d.truth = d.disk;
            }
            d.truth_delta -= e.delta;
        }
        c.cache.clear();
        c.owner.clear();
        self.restart_later(slot);
    }

    fn restart_later(&mut self, slot: usize) {
        let c = &mut self.clients[slot];
        if c.restarts_left > 0 && self.rng.chance(700) {
            c.restarts_left -= 1;
            let d = self.rng.range(10, 400);
            self.at(self.now + d, Ev::ClientStart { slot });
        }
    }

    fn user_wake(&mut self, slot: usize, ui: usize) {
        if self.clients[slot].state != CState::Alive {
            return;
        }
        let inc = self.clients[slot].inc;
        let u = &self.clients[slot].users[ui];
        if u.pending.is_some() {
            return;
        }
        if u.would_block {
            self.end_op(slot, inc, ui, false);
            return;
        }
        match u.phase {
            Phase::Done => {}
            Phase::Idle => {
                if u.ops_left == 0 {
                    self.clients[slot].users[ui].phase = Phase::Done;
                    self.maybe_farewell(slot);
                    return;
                }
                let k = if self.names.len() > 1 && self.rng.chance(400) {
                    2
                } else {
                    1
                };
                let mut picks = BTreeSet::new();
                while picks.len() < k {
                    picks.insert(self.rng.below(self.names.len() as u64) as usize);
                }
                let ranges = lock_order(picks.iter().map(|&i| self.names[i]).collect());
                let plan = ranges
                    .into_iter()
                    .map(|r| {
                        let p = self.rng.below(100);
                        let m = if p < 45 {
                            LockMode::Read
                        } else if p < 85 {
                            LockMode::Write
                        } else {
                            LockMode::WriteOnly
                        };
                        (r, m)
                    })
                    .collect();
                let nonblock = self.rng.chance(self.cfg.nonblock_permille);
                let u = &mut self.clients[slot].users[ui];
                u.plan = plan;
                u.nonblock = nonblock;
                u.next = 0;
                u.phase = Phase::Acquiring;
                self.acquire_next(slot, ui);
            }
            Phase::Acquiring => self.acquire_next(slot, ui),
            Phase::Holding => self.end_op(slot, inc, ui, true),
        }
    }

    /// The user finished its operation (or gave up on it): it lets go of
    /// what it holds and idles a little before the next one.
    fn end_op(&mut self, slot: usize, inc: u64, ui: usize, check: bool) {
        self.release_all(slot, ui, check);
        let u = &mut self.clients[slot].users[ui];
        u.would_block = false;
        u.ops_left -= 1;
        u.phase = Phase::Idle;
        let d = self.rng.range(0, 30);
        self.wake_user(slot, inc, ui, d);
    }

    /// Wakes user `ui` of incarnation `inc` in `slot`, `d` ms from now.
    fn wake_user(&mut self, slot: usize, inc: u64, ui: usize, d: u64) {
        self.at(
            self.now + d,
            Ev::UserWake {
                slot,
                inc,
                user: ui,
            },
        );
    }

    fn acquire_next(&mut self, slot: usize, ui: usize) {
        let inc = self.clients[slot].inc;
        let u = &mut self.clients[slot].users[ui];
        if u.next == u.plan.len() {
            u.phase = Phase::Holding;
            let held = u.held.clone();
            for h in held {
                self.write(slot, &h);
            }
            let d = self.rng.range(0, 40);
            self.wake_user(slot, inc, ui, d);
            return;
        }
        let (range, mode) = u.plan[u.next];
        u.uid_counter += 1;
        let uid = UserId(((ui as u64) << 32) | u.uid_counter);
        u.pending = Some(uid);
        let nonblock = u.nonblock;
        self.client_event(
            slot,
            ClientEvent::Lock {
                user: uid,
                range,
                mode,
                nonblock,
            },
        );
    }

    fn write(&mut self, slot: usize, h: &Held) {
        let start = h.range.start;
        let d = self.data.get_mut(&start).unwrap();
        let c = self.clients[slot].cache.entry(start).or_default();
        match h.mode {
            LockMode::Write => {
                assert!(
                    h.write_seq > d.disk_ws,
                    "c{slot}: WRITE of {start} under write_seq {} but disk has {}",
                    h.write_seq,
                    d.disk_ws
                );
                let v = c.value.expect("WRITE holder has the value cached");
                assert_eq!(v, d.truth, "c{slot}: writer of {start} sees a stale value");
                c.value = Some(v + 1);
                c.dirty = true;
                c.ws = c.ws.max(h.write_seq);
                d.truth += 1;
                self.stats.writes += 1;
            }
            LockMode::WriteOnly => {
                c.delta += 1;
                d.truth_delta += 1;
            }
            _ => {}
        }
    }

    fn release_all(&mut self, slot: usize, ui: usize, check: bool) {
        let held = std::mem::take(&mut self.clients[slot].users[ui].held);
        for h in held.iter().rev() {
            if check && h.mode.can_read() {
                let d = self.data[&h.range.start];
                let c = self.clients[slot].cache[&h.range.start];
                assert_eq!(
                    c.value,
                    Some(d.truth),
                    "c{slot}: {:?} holder of {} saw the value change under it",
                    h.mode,
                    h.range.start
                );
            }
            self.client_event(slot, ClientEvent::Unlock { user: h.uid });
        }
    }

    fn maybe_farewell(&mut self, slot: usize) {
        let c = &self.clients[slot];
        if c.state != CState::Alive || c.users.iter().any(|u| u.phase != Phase::Done) {
            return;
        }
        if !self.rng.chance(self.cfg.farewell_permille) {
            return;
        }
        // Unmount: commit everything, then say farewell.
        let keys: Vec<Key> = self.clients[slot].cache.keys().copied().collect();
        for k in keys {
            self.write_back(slot, k);
        }
        self.clients[slot].state = CState::Leaving;
        self.log(|| format!("c{slot} FAREWELL"));
        N::farewell(self, slot);
    }

    /// No work left anywhere: every mount is gone or done and not leaving.
    pub fn work_done(&self) -> bool {
        self.clients.iter().all(|c| {
            c.state == CState::Gone
                || (c.state == CState::Alive && c.users.iter().all(|u| u.phase == Phase::Done))
        })
    }

    // ----- checks --------------------------------------------------------

    /// What each live mount may be using right now: its users' modes, plus
    /// the old mode of any lock whose write-back is still running.
    fn holdings(&self, slot: usize) -> Vec<(LockRange, LockMode)> {
        let c = &self.clients[slot];
        let mut h: Vec<(LockRange, LockMode)> = c
            .users
            .iter()
            .flat_map(|u| u.held.iter().map(|h| (h.range, h.mode)))
            .collect();
        for (start, &(old, _)) in &c.owner {
            let range = self.names.iter().find(|n| n.start == *start).unwrap();
            h.push((*range, old));
        }
        h
    }

    /// The invariants that hold after every step.
    pub fn check(&self) {
        let live: Vec<usize> = (0..self.clients.len())
            .filter(|&s| self.clients[s].state == CState::Alive)
            .collect();
        for &s in &live {
            if let Err(e) = self.clients[s].lc.check_invariants() {
                panic!("c{s}: {e}");
            }
        }
        if self.srv.up {
            if let Err(e) = self.srv.ls.check_invariants() {
                panic!("server: {e}");
            }
        }
        let holdings: Vec<(usize, Vec<(LockRange, LockMode)>)> =
            live.iter().map(|&s| (s, self.holdings(s))).collect();
        for (i, (a, ha)) in holdings.iter().enumerate() {
            for (b, hb) in &holdings[i + 1..] {
                for (ra, ma) in ha {
                    for (rb, mb) in hb {
                        assert!(
                            !ra.overlaps(rb) || compatible(*ma, *mb, false),
                            "c{a} holds {ma:?} and c{b} holds {mb:?} on {}",
                            ra.start
                        );
                    }
                }
            }
        }
        if self.srv.up {
            for &s in &live {
                let c = &self.clients[s];
                if self.srv.ls.client_recovering(c.rid) {
                    continue;
                }
                for v in c.lc.views() {
                    let mine = v.recovery_mode;
                    if mine == LockMode::Null {
                        continue;
                    }
                    let theirs = self.srv.ls.held_mode(c.rid, &v.range.start);
                    assert!(
                        theirs.dominates(mine),
                        "c{s} holds {mine:?} on {} but the server believes {theirs:?}",
                        v.range.start
                    );
                }
            }
        }
    }

    /// What must hold once nothing is left to run.
    pub fn finish(&self) {
        for (s, c) in self.clients.iter().enumerate() {
            if c.state == CState::Gone {
                continue;
            }
            if c.state == CState::Leaving {
                panic!("c{s}: farewell never answered");
            }
            for (ui, u) in c.users.iter().enumerate() {
                assert!(
                    u.phase == Phase::Done,
                    "c{s} user {ui} hangs in {:?} waiting for {:?}; locks {:?}",
                    u.phase,
                    u.pending,
                    c.lc.views().collect::<Vec<_>>()
                );
            }
            for v in c.lc.views() {
                assert!(
                    v.request.is_none() && v.queued == 0 && v.waiters == 0 && v.holders == 0,
                    "c{s}: lock left busy: {v:?}"
                );
            }
            assert!(c.unanswered.is_empty(), "c{s}: requests never answered");
            N::finish_client(c, s);
        }
        assert!(
            self.srv.up && !self.srv.ls.is_recovering(),
            "server never recovered"
        );
        for (k, d) in &self.data {
            let pending: u64 = self
                .clients
                .iter()
                .filter(|c| c.state != CState::Gone)
                .filter_map(|c| c.cache.get(k))
                .map(|e| e.delta)
                .sum();
            assert_eq!(
                d.disk_delta + pending,
                d.truth_delta,
                "WRITE_ONLY deltas of {k} lost"
            );
        }
    }
}

/// Runs `seed` to quiescence, checking after every step.
pub fn run_seed<N: LockNet>(seed: u64, trace: bool) -> Stats<N::Stats> {
    let mut sim = N::build(seed, trace);
    let mut steps = 0u64;
    while N::step(&mut sim) {
        sim.check();
        steps += 1;
        assert!(
            steps < N::MAX_STEPS && sim.now < N::MAX_TIME_MS,
            "seed {seed}: no quiescence after {steps} steps, {} ms",
            sim.now
        );
    }
    sim.finish();
    sim.stats
}

fn run_seed_reporting<N: LockNet>(seed: u64) -> Stats<N::Stats> {
    match std::panic::catch_unwind(|| run_seed::<N>(seed, false)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "{}: FAILING SEED {seed} (rerun with SCOUTFS_LOCK_SEED={seed})",
                N::NAME
            );
            std::panic::resume_unwind(e)
        }
    }
}

/// The many-seeds test: `SCOUTFS_LOCK_SEED=S` runs seed S alone with a
/// trace, else `SCOUTFS_LOCK_SEEDS` seeds (default 1,000) run. With 100
/// seeds or more, the interleavings both simulations exist for must have
/// happened; the summed stats are returned so the caller can check its
/// network's own.
pub fn many_seeds<N: LockNet>() -> Option<Stats<N::Stats>> {
    if let Ok(seed) = std::env::var("SCOUTFS_LOCK_SEED") {
        let seed = seed.parse().expect("SCOUTFS_LOCK_SEED is a number");
        let stats = run_seed::<N>(seed, true);
        eprintln!("{}: seed {seed}: {stats:?}", N::NAME);
        return None;
    }
    let seeds: u64 = std::env::var("SCOUTFS_LOCK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut total = Stats::default();
    for seed in 0..seeds {
        total.add(&run_seed_reporting::<N>(seed));
    }
    eprintln!("{}: {seeds} seeds passed: {total:?}", N::NAME);
    if seeds < 100 {
        return None;
    }
    // The interleavings this exists for must actually happen.
    assert!(total.second_inv_before > 0, "{total:?}");
    assert!(total.second_inv_during > 0, "{total:?}");
    assert!(total.second_inv_after > 0, "{total:?}");
    assert!(total.crash_windows.iter().all(|&n| n > 0), "{total:?}");
    assert!(total.recover_reports_mid_invalidation > 0, "{total:?}");
    assert!(total.farewells_during_recovery > 0, "{total:?}");
    assert!(total.kills > 0 && total.fences > 0, "{total:?}");
    assert!(total.shrinks > 0 && total.would_blocks > 0, "{total:?}");
    Some(total)
}
