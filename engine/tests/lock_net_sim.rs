//! Deterministic simulation of the cluster locks over the real messaging
//! layer: one lock server, several mounts, socket drops, failovers,
//! farewells and fencing, all driven from one seed.
//!
//! `lock_sim.rs` drives `engine::lock::{LockServer, LockClient}` over its
//! own ordered message model. This one carries every lock message as real
//! frames through `engine::net`: each mount's [`Conn`] (client side) and
//! the server's [`ServerNet`] exchange greetings, LOCK requests and their
//! grants, the server's LOCK invalidation requests and their replies, and
//! LOCK_RECOVER requests and replies over [`SimNet`], a seeded TCP-like
//! network that splits sends into random chunks, delays them, and breaks
//! sockets with each end noticing after its own delay. So the lock state
//! machines see exactly what the net layer delivers: resends across
//! reconnects (deduplicated by seq), requests of an old server answered
//! into a dead session, a new server's term resetting the connection, and
//! disconnected clients expiring into fences.
//!
//! The workload, the data model and the checks are `lock_sim.rs`'s, shared
//! with it in `lock_support` (this file has only the net glue): each mount
//! runs a few user tasks that take one or two locks in the global order
//! (READ, WRITE, WRITE_ONLY, sometimes non-blocking), and caches one
//! counter per lock name the way the item cache would; a small
//! `lock_idle_count` shrinks the LRU all the time.
//!
//! Disruption: sockets break at random moments; the server fails over at
//! random and deliberately at the three moments of an invalidation a client
//! is working through (its users still hold the lock, the owner writes
//! back, the reply was just sent), and at those same moments the client's
//! socket alone is dropped instead. A failover starts a new [`ServerNet`]
//! with a higher term and a [`LockServer::recovering`] of every mounted rid;
//! clients greet the new term and answer LOCK_RECOVER. Mounts leave by
//! farewell, and are killed; a killed mount's connection state expires in
//! the [`ServerNet`] (or its recovery times out) and it is fenced.
//!
//! Checked after every step: no two mounts hold incompatible modes on
//! overlapping ranges (a write-back in progress still holds the old mode);
//! readers see the latest value; write grants outrank every write_seq in
//! use; the server's view of a recovered mount covers what it holds; both
//! state machines' own invariants; a live mount is never fenced. At the
//! end: every user finished (no hang, no lost grant), every request was
//! answered exactly once, nothing is left queued, WRITE_ONLY deltas add up;
//! and over many seeds every targeted window was actually hit.
//!
//! Each seed replays exactly. `SCOUTFS_LOCK_SEEDS=N` runs N seeds (default
//! 1,000); `SCOUTFS_LOCK_SEED=S` runs only seed S with a trace. A failure
//! prints its seed.

mod lock_support;

use std::collections::BTreeMap;
use std::time::Duration;

use engine::format::net::{Cmd, NetGreeting, NetLock};
use engine::lock::wire::{
    decode_lock, decode_recover_reply, decode_recover_request, encode_lock, encode_recover_reply,
    encode_recover_request,
};
use engine::lock::{ClientEvent, ServerAction, ServerEvent, LOCK_RECOVERY_TIMEOUT};
use engine::net::sim::{End, SimEvent, SimNet, SimNetConfig};
use engine::net::{check_greeting, Action, Conn, GreetingKind, ReqRef, ServerNet, SockId};
use lock_support::{
    ms, pick_names, rid_of, run_seed, CState, Cfg, Client, Ev, LockNet, NetStats, Rng, Sim, Window,
};

const FSID: u64 = 0x5c0f_10c4;
const FMT_VERS: u64 = 2;
/// Longest wait before a client retries connecting (the original retries
/// every 100 ms).
const RECONNECT_DELAY_MS_MAX: u64 = 100;

/// The net layer's own sim tasks.
#[derive(Debug, Clone)]
enum NetEv {
    /// The client (re)connects to whatever server is up.
    Reconnect { slot: usize, inc: u64 },
    /// The server decides on a greeting waiting on `sock`.
    Decide {
        term: u64,
        sock: SockId,
        greeting: NetGreeting,
    },
    /// `ServerNet::tick` for expiring disconnected clients.
    Tick { term: u64 },
    /// A random socket break, rescheduled while work remains.
    Chaos,
}

/// The simulated sockets, and who dialed each.
struct Wire {
    simnet: SimNet,
    /// Who owns each socket: (client slot, incarnation, server term).
    socks: BTreeMap<SockId, (usize, u64, u64)>,
    /// Chance of a random socket break per chaos tick.
    chaos_permille: u64,
}

struct ClientWire {
    conn: Conn,
    /// The socket the client believes it is connected on.
    sock: Option<SockId>,
    /// A [`NetEv::Reconnect`] is scheduled.
    reconnecting: bool,
}

struct SrvWire {
    server: ServerNet,
    /// Farewell requests waiting for [`ServerAction::FarewellReady`].
    farewell_reqs: BTreeMap<u64, ReqRef>,
}

#[derive(Debug, Default, Clone, Copy)]
struct WireStats {
    drop_windows: [u64; 3],
    sock_breaks: u64,
    reconnects_same_term: u64,
    new_server_greetings: u64,
    stale_replies: u64,
}

impl NetStats for WireStats {
    fn add(&mut self, o: &WireStats) {
        for i in 0..3 {
            self.drop_windows[i] += o.drop_windows[i];
        }
        self.sock_breaks += o.sock_breaks;
        self.reconnects_same_term += o.reconnects_same_term;
        self.new_server_greetings += o.new_server_greetings;
        self.stale_replies += o.stale_replies;
    }
}

impl LockNet for Wire {
    type Token = ReqRef;
    type Req = Cmd;
    type Ev = NetEv;
    type Client = ClientWire;
    type Srv = SrvWire;
    type Stats = WireStats;

    const NAME: &'static str = "lock_net_sim";
    const MAX_STEPS: u64 = 1_000_000;
    /// Well above the 20 s reconnect expiry plus the 30 s recovery timeout.
    const MAX_TIME_MS: u64 = 600_000;
    const RECOVERY_TIMEOUT_MS: u64 = LOCK_RECOVERY_TIMEOUT.as_millis() as u64;
    const AFTER_SLACK_MS: u64 = 2;

    fn build(seed: u64, trace: bool) -> Sim<Wire> {
        let mut rng = Rng(seed ^ 0x10c4_2e75);
        let names = pick_names(&mut rng);
        let max_delay = rng.range(1, 10);
        let cfg = Cfg::draw(&mut rng, Window::of_seed(seed), |_| max_delay);
        let chaos_permille = rng.range(0, 300);
        let simnet = SimNet::new(
            rng.next(),
            SimNetConfig {
                delay_max: ms(max_delay),
                chunk_bytes_max: if rng.chance(300) {
                    rng.range(1, 64) as usize
                } else {
                    1500
                },
                notice_delay_max: ms(rng.range(1, 60)),
            },
        );
        let crash_budget = rng.range(0, 3) as u32;
        let srv = SrvWire {
            server: ServerNet::new(1),
            farewell_reqs: BTreeMap::new(),
        };
        let wire = Wire {
            simnet,
            socks: BTreeMap::new(),
            chaos_permille,
        };
        let mut sim = Sim::new(rng, trace, cfg, names, crash_budget, srv, wire);
        let nr = sim.add_clients();
        sim.at(0, Ev::ServerStart);
        sim.at(1, Ev::Net(NetEv::Chaos));
        sim.random_faults(nr);
        sim
    }

    fn step(sim: &mut Sim<Wire>) -> bool {
        let net_at = sim.net.simnet.next_at();
        let task_at = sim.agenda.keys().next().map(|&(t, _)| t);
        match (net_at, task_at) {
            (None, None) => return false,
            (Some(n), Some(t)) if n <= t => {
                let ev = sim.net.simnet.pop().unwrap();
                sim.now = sim.net.simnet.now().as_millis() as u64;
                sim.deliver(ev);
                return true;
            }
            (Some(_), None) => {
                let ev = sim.net.simnet.pop().unwrap();
                sim.now = sim.net.simnet.now().as_millis() as u64;
                sim.deliver(ev);
                return true;
            }
            (_, Some(t)) => {
                sim.net.simnet.advance_to(t);
                sim.now = sim.net.simnet.now().as_millis() as u64;
            }
        }
        let (_, ev) = sim.agenda.pop_first().unwrap();
        sim.run_task(ev);
        true
    }

    fn net_task(sim: &mut Sim<Wire>, ev: NetEv) {
        match ev {
            NetEv::Reconnect { slot, inc } => {
                let c = &sim.clients[slot];
                if c.inc == inc && c.state != CState::Gone {
                    sim.reconnect(slot);
                }
            }
            NetEv::Decide {
                term,
                sock,
                greeting,
            } => {
                if sim.srv.up && term == sim.srv.term {
                    sim.decide(sock, greeting);
                }
            }
            NetEv::Tick { term } => {
                if sim.srv.up && term == sim.srv.term {
                    let mut out = Vec::new();
                    let now = sim.net.simnet.now();
                    sim.srv.net.server.tick(now, &mut out);
                    sim.server_net(out);
                }
            }
            NetEv::Chaos => {
                if sim.work_done() {
                    return;
                }
                if sim.rng.chance(sim.net.chaos_permille) {
                    let live = sim.net.simnet.live_socks();
                    if !live.is_empty() {
                        let sock = live[sim.rng.below(live.len() as u64) as usize];
                        sim.log(|| format!("CHAOS breaks {sock:?}"));
                        sim.stats.net.sock_breaks += 1;
                        sim.net.simnet.break_sock(sock, None);
                    }
                }
                let d = sim.rng.range(5, 80);
                sim.at(sim.now + d, Ev::Net(NetEv::Chaos));
            }
        }
    }

    fn new_client(_sim: &mut Sim<Wire>, inc: u64) -> ClientWire {
        let greeting = NetGreeting {
            fsid: FSID.into(),
            fmt_vers: FMT_VERS.into(),
            server_term: 0.into(),
            rid: rid_of(inc).into(),
            flags: 0.into(),
        };
        ClientWire {
            conn: Conn::new_client(greeting),
            sock: None,
            reconnecting: false,
        }
    }

    fn client_started(sim: &mut Sim<Wire>, slot: usize) {
        sim.schedule_reconnect(slot);
    }

    /// The mount's socket goes quiet; a killed mount's connection state
    /// expires in the server (or its recovery times out) and it is fenced.
    fn disconnect(sim: &mut Sim<Wire>, slot: usize) {
        if let Some(sock) = sim.clients[slot].net.sock.take() {
            sim.net.simnet.break_sock(sock, Some(End::Dialer));
        }
    }

    fn killed(_sim: &mut Sim<Wire>, _rid: u64) {}

    /// The farewell flag also goes in every later greeting, so a server
    /// that lost our state still takes it.
    fn farewell(sim: &mut Sim<Wire>, slot: usize) {
        let mut out = Vec::new();
        let c = &mut sim.clients[slot];
        c.net.conn.set_farewell(true);
        let id = c.net.conn.request(Cmd::Farewell, Vec::new(), &mut out);
        c.unanswered.insert(id, Cmd::Farewell);
        sim.client_net(slot, out);
    }

    fn send_request(sim: &mut Sim<Wire>, slot: usize, nl: NetLock) {
        let mut out = Vec::new();
        let c = &mut sim.clients[slot];
        let id = c.net.conn.request(Cmd::Lock, encode_lock(&nl), &mut out);
        c.unanswered.insert(id, Cmd::Lock);
        sim.client_net(slot, out);
    }

    fn invalidate_reply(sim: &mut Sim<Wire>, slot: usize, token: ReqRef, nl: NetLock) {
        // A request of an earlier server's session is not answered.
        if sim.respond(slot, token, encode_lock(&nl)) {
            Self::disrupt(sim, slot, Window::After);
        }
    }

    fn recover_reply(sim: &mut Sim<Wire>, slot: usize, token: ReqRef, locks: Vec<NetLock>) {
        sim.respond(slot, token, encode_recover_reply(&locks));
    }

    /// At a targeted window: fail the server over, or drop this client's
    /// socket alone (it reconnects to the same server and resends).
    fn disrupt(sim: &mut Sim<Wire>, slot: usize, w: Window) {
        if !sim.window_hit(w) {
            return;
        }
        if sim.rng.chance(500) {
            if let Some(sock) = sim.clients[slot].net.sock {
                if sim.net.simnet.is_alive(sock) {
                    sim.stats.net.drop_windows[w as usize] += 1;
                    sim.stats.net.sock_breaks += 1;
                    sim.log(|| format!("c{slot} socket dropped in {w:?}"));
                    sim.net.simnet.break_sock(sock, None);
                }
            }
            return;
        }
        sim.crash_in_window(w);
    }

    fn server_action(sim: &mut Sim<Wire>, a: ServerAction<ReqRef>) {
        let mut out = Vec::new();
        let server = &mut sim.srv.net.server;
        match a {
            ServerAction::Grant { rid, token, nl } => {
                server.respond(rid, token, 0, encode_lock(&nl), &mut out);
            }
            ServerAction::Invalidate { rid, nl } => {
                // No state kept: the client is gone and will be fenced.
                server.request(rid, Cmd::Lock, encode_lock(&nl), &mut out);
            }
            ServerAction::Recover { rid, key } => {
                let data = encode_recover_request(&key);
                server.request(rid, Cmd::LockRecover, data, &mut out);
            }
            ServerAction::Fence { rid } => sim.fence(rid, "client_recovery"),
            ServerAction::FarewellReady { rid } => {
                sim.mounted.remove(&rid);
                if let Some(req) = sim.srv.net.farewell_reqs.remove(&rid) {
                    server.respond(rid, req, 0, Vec::new(), &mut out);
                }
            }
            ServerAction::BadMessage { rid, reason } => {
                panic!("server: bad message from {rid:x}: {reason}")
            }
        }
        sim.server_net(out);
    }

    /// The server's sockets break; the clients notice on their own, after
    /// a delay.
    fn crashed(sim: &mut Sim<Wire>) {
        sim.srv.net.farewell_reqs.clear();
        let term = sim.srv.term;
        let dead: Vec<SockId> = sim
            .net
            .socks
            .iter()
            .filter(|(_, o)| o.2 == term)
            .map(|(&s, _)| s)
            .collect();
        for sock in dead {
            sim.net.simnet.break_sock(sock, Some(End::Acceptor));
        }
        let d = sim.rng.range(10, 300);
        sim.at(sim.now + d, Ev::ServerStart);
    }

    fn server_started(sim: &mut Sim<Wire>) {
        sim.srv.net.server = ServerNet::new(sim.srv.term);
        sim.srv.net.farewell_reqs.clear();
    }

    fn finish_client(c: &Client<Wire>, s: usize) {
        assert_eq!(c.net.conn.queued_requests(), 0, "c{s}: net requests queued");
        assert_eq!(
            c.net.conn.unanswered_inbound(),
            0,
            "c{s}: server requests unanswered"
        );
    }
}

impl Sim<Wire> {
    fn at_time_net(&mut self, at: Duration, ev: NetEv) {
        self.at_time(at, Ev::Net(ev));
    }

    // ----- server side -------------------------------------------------

    /// The server fences `rid`: it must be a mount that was killed (a live
    /// one reconnects and recovers well within both timeouts).
    fn fence(&mut self, rid: u64, reason: &str) {
        self.stats.fences += 1;
        if let Some(slot) = self.slot_of(rid) {
            panic!("c{slot} (rid {rid:x}) is alive but fenced: {reason}");
        }
        self.fence_done_later(rid);
    }

    /// Carries out the server net layer's actions: socket I/O first, in
    /// order, then what they deliver to the lock server, in order.
    fn server_net(&mut self, out: Vec<Action>) {
        let term = self.srv.term;
        let mut delivered = Vec::new();
        for a in out {
            match a {
                Action::Send { sock, bytes } => self.net.simnet.send(sock, End::Acceptor, &bytes),
                Action::Close { sock, reason } => {
                    assert!(
                        reason.contains("newer greeting") || reason.contains("discarded"),
                        "server dropped a socket: {reason}"
                    );
                    self.net.simnet.break_sock(sock, Some(End::Acceptor));
                }
                other => delivered.push(other),
            }
        }
        for a in delivered {
            if !self.srv.up || self.srv.term != term {
                return;
            }
            match a {
                Action::Greeting { sock, greeting } => {
                    let d = self.rng.range(0, 10);
                    let ev = NetEv::Decide {
                        term,
                        sock,
                        greeting,
                    };
                    self.at(self.now + d, Ev::Net(ev));
                }
                Action::Request {
                    rid,
                    req,
                    cmd,
                    data,
                } => match cmd {
                    Cmd::Lock => {
                        let nl = decode_lock(&data).expect("LOCK payload");
                        self.server_event(ServerEvent::Request {
                            rid,
                            token: req,
                            nl,
                        });
                    }
                    Cmd::Farewell => {
                        self.farewell_received(rid);
                        self.srv.net.farewell_reqs.insert(rid, req);
                        self.server_event(ServerEvent::Farewell { rid });
                    }
                    other => panic!("server: unexpected request {other:?}"),
                },
                Action::Response {
                    rid,
                    cmd,
                    errno,
                    data,
                    ..
                } => {
                    if errno == libc::ENOTCONN {
                        // The client's state was discarded: it is fenced
                        // (expiry) or greeted afresh (first contact), and
                        // either path tells the lock server.
                        continue;
                    }
                    assert_eq!(errno, 0, "client answered {cmd:?} with {errno}");
                    match cmd {
                        Cmd::Lock => {
                            let nl = decode_lock(&data).expect("LOCK reply payload");
                            self.server_event(ServerEvent::InvalidateReply { rid, nl });
                        }
                        Cmd::LockRecover => {
                            let locks = decode_recover_reply(&data).expect("recover payload");
                            self.server_event(ServerEvent::RecoverReply { rid, locks });
                        }
                        other => panic!("server: unexpected response {other:?}"),
                    }
                }
                Action::Timer { deadline } => self.at_time_net(deadline, NetEv::Tick { term }),
                Action::Fence { rid, reason } => self.fence(rid, reason),
                Action::Forget { .. } => {}
                other => panic!("server: unexpected net action {other:?}"),
            }
        }
    }

    fn decide(&mut self, sock: SockId, greeting: NetGreeting) {
        check_greeting(&greeting, FSID, FMT_VERS).expect("client greeting is valid");
        let mut out = Vec::new();
        let kind = self.srv.net.server.accept_greeting(sock, &mut out);
        self.log(|| format!("server accepts {sock:?}: {kind:?} {greeting:?}"));
        self.server_net(out);
        let rid = greeting.rid.get();
        match kind {
            None | Some(GreetingKind::Reconnect) => {}
            Some(GreetingKind::FirstContact) | Some(GreetingKind::FarewellWithoutState) => {
                if greeting.server_term.get() == 0 {
                    // The mounted_clients item, committed before the reply.
                    self.mounted.insert(rid);
                }
                self.server_event(ServerEvent::Greeted { rid });
            }
            Some(GreetingKind::Gone) => {
                assert!(
                    self.slot_of(rid).is_none(),
                    "live rid {rid:x} reconnected after its state expired"
                );
            }
        }
    }

    // ----- client side -------------------------------------------------

    fn schedule_reconnect(&mut self, slot: usize) {
        let c = &mut self.clients[slot];
        if c.net.reconnecting || c.state == CState::Gone {
            return;
        }
        c.net.reconnecting = true;
        let inc = c.inc;
        let d = self.rng.range(0, RECONNECT_DELAY_MS_MAX);
        self.at(self.now + d, Ev::Net(NetEv::Reconnect { slot, inc }));
    }

    fn reconnect(&mut self, slot: usize) {
        self.clients[slot].net.reconnecting = false;
        if self.clients[slot].net.sock.is_some() {
            return;
        }
        if !self.srv.up {
            // Connection refused: try again later.
            self.schedule_reconnect(slot);
            return;
        }
        let sock = self.net.simnet.connect();
        let inc = self.clients[slot].inc;
        self.net.socks.insert(sock, (slot, inc, self.srv.term));
        self.srv.net.server.accepted(sock);
        let mut out = Vec::new();
        let c = &mut self.clients[slot];
        c.net.sock = Some(sock);
        c.net.conn.connected(sock, &mut out);
        self.log(|| format!("c{slot} connects on {sock:?}"));
        self.client_net(slot, out);
    }

    /// Answers the server request `token`; false (counted as stale) when it
    /// belongs to an earlier session.
    fn respond(&mut self, slot: usize, token: ReqRef, data: Vec<u8>) -> bool {
        let mut out = Vec::new();
        if self.clients[slot]
            .net
            .conn
            .respond(token, 0, data, &mut out)
        {
            self.client_net(slot, out);
            true
        } else {
            self.stats.net.stale_replies += 1;
            false
        }
    }

    /// Carries out a client's net actions: socket I/O first, in order, then
    /// what they deliver to the lock client, in order.
    fn client_net(&mut self, slot: usize, out: Vec<Action>) {
        let inc = self.clients[slot].inc;
        let mut delivered = Vec::new();
        for a in out {
            match a {
                Action::Send { sock, bytes } => self.net.simnet.send(sock, End::Dialer, &bytes),
                Action::Close { sock, reason } => {
                    assert!(
                        reason.contains("replaced"),
                        "c{slot} dropped a socket: {reason}"
                    );
                    self.net.simnet.break_sock(sock, Some(End::Dialer));
                }
                other => delivered.push(other),
            }
        }
        for a in delivered {
            let c = &self.clients[slot];
            if c.inc != inc || c.state == CState::Gone {
                return;
            }
            match a {
                Action::Request { req, cmd, data, .. } => match cmd {
                    Cmd::Lock => {
                        let nl = decode_lock(&data).expect("LOCK payload");
                        self.invalidate_request(slot, req, nl);
                    }
                    Cmd::LockRecover => {
                        let key = decode_recover_request(&data).expect("recover payload");
                        self.recover_request(slot, req, key);
                    }
                    other => panic!("c{slot}: unexpected request {other:?}"),
                },
                Action::Response {
                    id,
                    cmd,
                    errno,
                    data,
                    ..
                } => {
                    let want = self.clients[slot].unanswered.remove(&id);
                    assert_eq!(want, Some(cmd), "c{slot}: response {id} unknown or twice");
                    assert_eq!(errno, 0, "c{slot}: {cmd:?} answered with {errno}");
                    match cmd {
                        Cmd::Lock => {
                            let nl = decode_lock(&data).expect("LOCK grant payload");
                            self.client_event(slot, ClientEvent::Grant { nl });
                        }
                        Cmd::Farewell => self.farewell_answered(slot),
                        other => panic!("c{slot}: unexpected response {other:?}"),
                    }
                }
                Action::Greeted {
                    server_term,
                    new_server,
                } => {
                    self.log(|| format!("c{slot} greeted term {server_term} new {new_server}"));
                    if new_server {
                        self.stats.net.new_server_greetings += 1;
                    } else {
                        self.stats.net.reconnects_same_term += 1;
                    }
                }
                other => panic!("c{slot}: unexpected net action {other:?}"),
            }
        }
    }

    fn deliver(&mut self, ev: SimEvent) {
        let now = self.net.simnet.now();
        match ev {
            SimEvent::Data {
                sock,
                to: End::Dialer,
                bytes,
            } => {
                let Some(slot) = self.live_owner(sock) else {
                    return;
                };
                let mut out = Vec::new();
                self.clients[slot].net.conn.recv(sock, &bytes, &mut out);
                let c = &self.clients[slot];
                if c.net.sock == Some(sock) && c.net.conn.sock() != Some(sock) {
                    panic!("c{slot} dropped its socket: {out:?}");
                }
                self.client_net(slot, out);
            }
            SimEvent::Closed {
                sock,
                to: End::Dialer,
            } => {
                let Some(slot) = self.live_owner(sock) else {
                    return;
                };
                if self.clients[slot].net.conn.disconnected(sock) {
                    self.log(|| format!("c{slot} notices {sock:?} closed"));
                    self.clients[slot].net.sock = None;
                    self.schedule_reconnect(slot);
                }
            }
            SimEvent::Data {
                sock,
                to: End::Acceptor,
                bytes,
            } => {
                if self.server_owns(sock) {
                    let mut out = Vec::new();
                    self.srv.net.server.recv(sock, &bytes, now, &mut out);
                    self.server_net(out);
                }
            }
            SimEvent::Closed {
                sock,
                to: End::Acceptor,
            } => {
                if self.server_owns(sock) {
                    let mut out = Vec::new();
                    self.srv.net.server.closed(sock, now, &mut out);
                    self.server_net(out);
                }
            }
        }
    }

    /// The client slot whose current incarnation dialed `sock`.
    fn live_owner(&self, sock: SockId) -> Option<usize> {
        let &(slot, inc, _) = self.net.socks.get(&sock)?;
        let c = &self.clients[slot];
        (c.inc == inc && c.state != CState::Gone).then_some(slot)
    }

    fn server_owns(&self, sock: SockId) -> bool {
        self.srv.up
            && self
                .net
                .socks
                .get(&sock)
                .is_some_and(|o| o.2 == self.srv.term)
    }
}

#[test]
fn lock_net_sim_many_seeds() {
    if let Some(total) = lock_support::many_seeds::<Wire>() {
        // The net layer's own interleavings must actually happen too.
        let net = &total.net;
        assert!(net.drop_windows.iter().all(|&n| n > 0), "{total:?}");
        assert!(
            net.reconnects_same_term > 0 && net.new_server_greetings > 0,
            "{total:?}"
        );
        assert!(net.stale_replies > 0, "{total:?}");
    }
}

/// Seed 5: after a failover a mount's first-contact greeting to the new
/// server was accepted, and the server queued LOCK_RECOVER behind its
/// greeting reply, but the socket broke before the mount read the reply.
/// The mount greeted again with its old term: first contact again, so the
/// net layer discarded the connection state (the LOCK_RECOVER failed with
/// ENOTCONN) and the lock server, told `Greeted` a second time, did not ask
/// again because it had asked once. The live mount was fenced at the
/// recovery timeout. Every greeting of a rid owing recovery now asks.
#[test]
fn regression_seed_5_second_first_contact_asks_recovery_again() {
    run_seed::<Wire>(5, false);
}
