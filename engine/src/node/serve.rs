//! The server's side of the network: a [`Server`] answering mounts over a
//! [`Transport`] through [`ServerNet`] (reference §5.1–§5.2).
//!
//! Guarantees:
//! * Every accepted socket must greet first; the greeting is checked
//!   (fsid, format version) and run through the server's GREETING handler,
//!   which records a first-contact mount in `mounted_clients` (committed
//!   before the reply) and refuses a reconnect from a mount it no longer
//!   knows; only then is the socket attached to the rid's connection state.
//! * Each request runs its handler as its own task and is answered on
//!   whichever socket carries the rid's connection when it completes; a
//!   response the client never acknowledged is resent after a reconnect.
//! * A disconnected client's state is kept [`crate::net::RECONNECT_TIMEOUT`];
//!   then it is reported to the fence hook (its locks and log tree are
//!   reclaimed once fenced, §5.4).
//!
//! Touches `net` (the state machines), `server`, `runtime` and
//! [`super::transport`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use zerocopy::IntoBytes;

use super::client::write_loop;
use super::farewell;
use super::open_map;
use super::transport::{Listener, StreamReader, Transport};
use super::wire_reply;
use crate::format::net::Cmd;
use crate::lock::wire::{decode_lock, decode_recover_reply, encode_lock, encode_recover_request};
use crate::lock::{
    LockServer, ServerAction, ServerEvent, FENCE_REASON_CLIENT_RECOVERY, LOCK_RECOVERY_TIMEOUT,
};
use crate::net::{check_greeting, Action, GreetingKind, ReqRef, ServerNet, SockId};
use crate::runtime::{JoinHandle, Runtime};
use crate::server::Server;

/// How often disconnected clients' deadlines are checked.
pub const TICK_INTERVAL: Duration = Duration::from_millis(500);

/// Called with a rid whose connection state expired without a farewell.
pub type FenceHook = Box<dyn Fn(u64, &'static str) + Send + Sync>;

/// Counters for tests and the status tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub accepted: u64,
    pub greetings: u64,
    pub refused: u64,
    pub requests: u64,
    pub fenced: u64,
}

struct State {
    net: ServerNet,
    /// Farewell requests waiting for the lock server (a client in lock
    /// recovery is answered only once it has recovered).
    farewells: BTreeMap<u64, ReqRef>,
    writers: BTreeMap<SockId, mpsc::UnboundedSender<Vec<u8>>>,
    next_sock: u64,
    stats: ServeStats,
    /// Farewells the lock server released, waiting for the quorum rule
    /// ([`farewell::may_leave`]), and whether a task is deciding them.
    leaving: BTreeMap<u64, ReqRef>,
    deciding_farewells: bool,
    /// OPEN_INO_MAP queries waiting for other mounts' answers.
    omap: open_map::Queries<ReqRef>,
    /// Each open socket's peer, and each greeted rid's last one (the
    /// address a fence request names).
    peers: BTreeMap<SockId, SocketAddr>,
    rid_peers: BTreeMap<u64, SocketAddr>,
}

struct Shared {
    rt: Runtime,
    server: Arc<Server>,
    st: Mutex<State>,
    fence: FenceHook,
    /// Lock events, handled in receive order by one task (§4.5: per-lock
    /// order is everything).
    locks: mpsc::UnboundedSender<LockEvent>,
}

type LockEvent = ServerEvent<ReqRef>;

/// A server listening for mounts.
pub struct NetServer {
    shared: Arc<Shared>,
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl NetServer {
    /// Listens on `addr` and serves `server` (whose term names this
    /// server instance in greetings). `recovering`: the mounts recorded in
    /// the super, whose locks the lock server recovers from their reports
    /// (§4.6) before granting anything they could conflict with.
    pub async fn start(
        rt: Runtime,
        server: Arc<Server>,
        transport: Arc<dyn Transport>,
        addr: SocketAddr,
        term: u64,
        recovering: Vec<u64>,
        fence: FenceHook,
    ) -> std::io::Result<NetServer> {
        let listener = transport.listen(addr).await?;
        let local = listener.local_addr();
        let (locks_tx, locks_rx) = mpsc::unbounded();
        let shared = Arc::new(Shared {
            rt: rt.clone(),
            server,
            st: Mutex::new(State {
                net: ServerNet::new(term),
                farewells: BTreeMap::new(),
                leaving: BTreeMap::new(),
                deciding_farewells: false,
                writers: BTreeMap::new(),
                next_sock: 1,
                stats: ServeStats::default(),
                omap: open_map::Queries::default(),
                peers: BTreeMap::new(),
                rid_peers: BTreeMap::new(),
            }),
            fence,
            locks: locks_tx,
        });
        let lock_server = if recovering.is_empty() {
            LockServer::new()
        } else {
            LockServer::recovering(recovering)
        };
        let mut tasks = vec![
            rt.spawn(accept_loop(Arc::downgrade(&shared), listener)),
            rt.spawn(tick_loop(Arc::downgrade(&shared))),
            rt.spawn(lock_loop(Arc::downgrade(&shared), lock_server, locks_rx)),
        ];
        let weak = Arc::downgrade(&shared);
        let rt2 = rt.clone();
        tasks.push(rt.spawn(async move {
            rt2.sleep(LOCK_RECOVERY_TIMEOUT).await;
            if let Some(s) = weak.upgrade() {
                let _ = s.locks.unbounded_send(ServerEvent::RecoveryTimedOut);
            }
        }));
        Ok(NetServer {
            shared,
            local,
            tasks,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> ServeStats {
        self.shared.lock().stats
    }

    /// Rids with connection state (connected or waiting to reconnect).
    pub fn rids(&self) -> Vec<u64> {
        self.shared.lock().net.rids().collect()
    }

    /// The address `rid` last greeted from, if it did with this server.
    pub fn peer_addr(&self, rid: u64) -> Option<SocketAddr> {
        self.shared.lock().rid_peers.get(&rid).copied()
    }

    /// The mount `rid` is gone for good (fenced and reclaimed): the lock
    /// server drops what it held.
    pub fn client_gone(&self, rid: u64) {
        {
            let mut st = self.shared.lock();
            self.shared.omap_gone(&mut st, rid);
        }
        let _ = self
            .shared
            .locks
            .unbounded_send(ServerEvent::ClientGone { rid });
    }

    /// Drops every client socket as if the network failed (tests).
    pub fn drop_sockets(&self) {
        let mut st = self.shared.lock();
        let now = self.shared.rt.now();
        let rids: Vec<u64> = st.net.rids().collect();
        let mut out = Vec::new();
        for rid in rids {
            st.net.disconnect(rid, now, &mut out);
        }
        self.shared.apply(&mut st, out);
    }
}

impl Drop for NetServer {
    fn drop(&mut self) {
        self.tasks.clear();
        let mut st = self.shared.lock();
        for (_, tx) in std::mem::take(&mut st.writers) {
            tx.close_channel();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(self: &Arc<Self>, st: &mut State, out: Vec<Action>) {
        for a in out {
            match a {
                Action::Send { sock, bytes } => {
                    if let Some(tx) = st.writers.get(&sock) {
                        let _ = tx.unbounded_send(bytes);
                    }
                }
                Action::Close { sock, .. } => {
                    // Ends the writer task, which shuts the socket down.
                    st.writers.remove(&sock);
                }
                Action::Greeting { sock, greeting } => {
                    let me = self.clone();
                    self.rt
                        .spawn(async move { me.decide_greeting(sock, greeting).await })
                        .detach();
                }
                Action::Request {
                    rid,
                    req,
                    cmd,
                    data,
                } => {
                    st.stats.requests += 1;
                    match cmd {
                        Cmd::Lock => match decode_lock(&data) {
                            Ok(nl) => self.lock_event(ServerEvent::Request {
                                rid,
                                token: req,
                                nl,
                            }),
                            Err(_) => {
                                let mut more = Vec::new();
                                st.net
                                    .respond(rid, req, libc::EINVAL, Vec::new(), &mut more);
                                self.apply(st, more);
                            }
                        },
                        Cmd::OpenInoMap => self.omap_query(st, rid, req, &data),
                        Cmd::Farewell => {
                            // Answered once the lock server lets the mount go.
                            st.farewells.insert(rid, req);
                            self.lock_event(ServerEvent::Farewell { rid });
                        }
                        _ => self.run_handler(rid, req, cmd, data),
                    }
                }
                Action::Response {
                    rid,
                    cmd,
                    errno,
                    data,
                    ..
                } => {
                    if cmd == Cmd::OpenInoMap {
                        self.omap_answer(st, rid, errno, &data);
                        continue;
                    }
                    if cmd == Cmd::SyncLogTrees {
                        // "Commit soon" needs no answer beyond its arrival.
                        continue;
                    }
                    // Answers to our invalidation and recovery requests.
                    let ev = match (cmd, errno) {
                        (Cmd::Lock, 0) => decode_lock(&data)
                            .ok()
                            .map(|nl| ServerEvent::InvalidateReply { rid, nl }),
                        (Cmd::LockRecover, 0) => decode_recover_reply(&data)
                            .ok()
                            .map(|locks| ServerEvent::RecoverReply { rid, locks }),
                        _ => None,
                    };
                    match ev {
                        Some(ev) => self.lock_event(ev),
                        // A failed or garbled answer: the client's
                        // connection is no longer trusted.
                        None if errno != libc::ENOTCONN => {
                            let mut more = Vec::new();
                            st.net.disconnect(rid, self.rt.now(), &mut more);
                            self.apply(st, more);
                        }
                        None => {}
                    }
                }
                Action::Fence { rid, reason } => {
                    st.stats.fenced += 1;
                    self.omap_gone(st, rid);
                    (self.fence)(rid, reason);
                }
                // Timers are polled by the tick task.
                Action::Timer { .. }
                | Action::Forget { .. }
                | Action::Greeted { .. }
                | Action::GreetingFailed { .. } => {}
            }
        }
    }

    /// OPEN_INO_MAP from `rid`: ask every other mount, answer when all
    /// have (§7.5).
    fn omap_query(self: &Arc<Self>, st: &mut State, rid: u64, req: ReqRef, data: &[u8]) {
        let mut out = Vec::new();
        match open_map::decode_args(data) {
            Ok((group, _)) => {
                let others: Vec<u64> = st.net.rids().collect();
                match st.omap.start(rid, req, group, others.iter().copied()) {
                    open_map::Started::Ask(id) => {
                        for o in others.into_iter().filter(|o| *o != rid) {
                            let args = open_map::encode_args(group, id);
                            // A mount without connection state has none to
                            // answer from: it is gone, or about to be fenced.
                            if st.net.request(o, Cmd::OpenInoMap, args, &mut out).is_none() {
                                for done in st.omap.gone(o) {
                                    self.omap_reply(st, done, &mut out);
                                }
                            }
                        }
                    }
                    open_map::Started::Done(done) => self.omap_reply(st, done, &mut out),
                }
            }
            Err(e) => {
                st.net.respond(rid, req, e, Vec::new(), &mut out);
            }
        }
        self.apply(st, out);
    }

    /// A mount's answer to our OPEN_INO_MAP request. One that can't
    /// answer is counted as holding nothing only when it is gone; a
    /// garbled answer costs it its connection, and the question is asked
    /// again when it reconnects.
    fn omap_answer(self: &Arc<Self>, st: &mut State, rid: u64, errno: i32, data: &[u8]) {
        let mut out = Vec::new();
        match (errno, open_map::decode_map(data)) {
            (0, Ok((group, id, bits))) => {
                if let Some(done) = st.omap.answer(id, rid, group, &bits) {
                    self.omap_reply(st, done, &mut out);
                }
            }
            (libc::ENOTCONN, _) => {}
            _ => st.net.disconnect(rid, self.rt.now(), &mut out),
        }
        self.apply(st, out);
    }

    fn omap_gone(self: &Arc<Self>, st: &mut State, rid: u64) {
        let mut out = Vec::new();
        for done in st.omap.gone(rid) {
            self.omap_reply(st, done, &mut out);
        }
        self.apply(st, out);
    }

    fn omap_reply(&self, st: &mut State, done: open_map::Done<ReqRef>, out: &mut Vec<Action>) {
        let map = open_map::encode_map(done.group_nr, 0, &done.bits);
        st.net.respond(done.asker, done.token, 0, map, out);
    }

    fn lock_event(&self, ev: LockEvent) {
        let _ = self.locks.unbounded_send(ev);
    }

    /// Runs one request's handler as its own task and answers it.
    fn run_handler(self: &Arc<Self>, rid: u64, req: ReqRef, cmd: Cmd, data: Vec<u8>) {
        let me = self.clone();
        self.rt
            .spawn(async move {
                let res = me.server.handle(rid, cmd, &data).await;
                me.answer(rid, req, res);
            })
            .detach();
    }

    /// Answers a handled request, and asks the mounts whose open
    /// transactions hold a log merge back to commit.
    fn answer(self: &Arc<Self>, rid: u64, req: ReqRef, res: crate::link::CallResult) {
        let (errno, payload) = wire_reply(res);
        let mut out = Vec::new();
        let mut st = self.lock();
        st.net.respond(rid, req, errno, payload, &mut out);
        for o in self.server.take_sync_requests() {
            // A mount without connection state commits on its own timer,
            // or is reclaimed.
            let _ = st.net.request(o, Cmd::SyncLogTrees, Vec::new(), &mut out);
        }
        self.apply(&mut st, out);
    }

    /// Answers the farewells [`farewell::may_leave`] allows, one decision
    /// at a time (two members deciding at once could both leave a quorum
    /// short), again after each departure until none more may go.
    fn decide_farewells(self: &Arc<Self>, st: &mut State) {
        if st.deciding_farewells || st.leaving.is_empty() {
            return;
        }
        st.deciding_farewells = true;
        let me = self.clone();
        self.rt
            .spawn(async move {
                loop {
                    let mounted = me.server.mounted_clients().await;
                    let go = {
                        let mut st = me.lock();
                        let asking = st.leaving.keys().copied().collect();
                        let go = match &mounted {
                            Ok((m, votes)) => farewell::may_leave(m, &asking, *votes),
                            // The server stopped: nothing more commits, and
                            // the farewells fail with its errno.
                            Err(_) => asking.into_iter().collect(),
                        };
                        if go.is_empty() {
                            st.deciding_farewells = false;
                            return;
                        }
                        go.into_iter()
                            .filter_map(|rid| st.leaving.remove(&rid).map(|r| (rid, r)))
                            .collect::<Vec<_>>()
                    };
                    // Every farewell of the decision is handled before any
                    // is answered: the leader's own mount may be among them,
                    // and its answer ends this server.
                    let mut done = Vec::with_capacity(go.len());
                    for (rid, req) in go {
                        done.push((rid, req, me.server.handle(rid, Cmd::Farewell, &[]).await));
                    }
                    for (rid, req, res) in done {
                        me.answer(rid, req, res);
                    }
                }
            })
            .detach();
    }

    /// Carries out the lock server's actions.
    fn apply_locks(self: &Arc<Self>, st: &mut State, actions: Vec<ServerAction<ReqRef>>) {
        let mut out = Vec::new();
        for a in actions {
            match a {
                ServerAction::Grant { rid, token, nl } => {
                    st.net.respond(rid, token, 0, encode_lock(&nl), &mut out);
                }
                ServerAction::Invalidate { rid, nl } => {
                    st.net.request(rid, Cmd::Lock, encode_lock(&nl), &mut out);
                }
                ServerAction::Recover { rid, key } => {
                    st.net.request(
                        rid,
                        Cmd::LockRecover,
                        encode_recover_request(&key),
                        &mut out,
                    );
                }
                ServerAction::Fence { rid } => {
                    st.stats.fenced += 1;
                    (self.fence)(rid, FENCE_REASON_CLIENT_RECOVERY);
                }
                ServerAction::FarewellReady { rid } => {
                    self.omap_gone(st, rid);
                    if let Some(req) = st.farewells.remove(&rid) {
                        st.leaving.insert(rid, req);
                        self.decide_farewells(st);
                    }
                }
                ServerAction::BadMessage { rid, .. } => {
                    st.net.disconnect(rid, self.rt.now(), &mut out);
                }
            }
        }
        self.apply(st, out);
    }

    async fn decide_greeting(self: Arc<Self>, sock: SockId, g: crate::format::net::NetGreeting) {
        let rid = g.rid.get();
        let kind = self.lock().net.classify_greeting(&g);
        let verdict = match check_greeting(&g, self.server.fsid(), self.server.fmt_vers()) {
            Err(e) => Err(e.errno()),
            Ok(()) if kind == GreetingKind::Gone => Err(libc::ESTALE),
            // The handler records a new mount (with its address), or
            // refuses one it reclaimed.
            Ok(()) => {
                let peer = self.lock().peers.get(&sock).copied();
                if let Some(SocketAddr::V4(a)) = peer {
                    self.server.note_greeting_addr(rid, a);
                }
                self.server
                    .handle(rid, Cmd::Greeting, g.as_bytes())
                    .await
                    .map(|_| ())
            }
        };
        let mut out = Vec::new();
        let mut st = self.lock();
        match verdict {
            Ok(()) => {
                st.stats.greetings += 1;
                if let Some(&peer) = st.peers.get(&sock) {
                    st.rid_peers.insert(rid, peer);
                }
                let kind = st.net.accept_greeting(sock, &mut out);
                if matches!(
                    kind,
                    Some(GreetingKind::FirstContact | GreetingKind::FarewellWithoutState)
                ) {
                    self.lock_event(ServerEvent::Greeted { rid });
                }
            }
            Err(e) => {
                st.stats.refused += 1;
                st.net.refuse_greeting(sock, e, &mut out);
            }
        }
        self.apply(&mut st, out);
    }
}

async fn lock_loop(
    weak: Weak<Shared>,
    mut locks: LockServer<ReqRef>,
    mut rx: mpsc::UnboundedReceiver<LockEvent>,
) {
    while let Some(ev) = rx.next().await {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let actions = shared
            .server
            .with_core_seq(|seq| locks.handle(seq, ev))
            .await;
        let mut st = shared.lock();
        shared.apply_locks(&mut st, actions);
    }
}

async fn accept_loop(weak: Weak<Shared>, listener: Box<dyn Listener>) {
    loop {
        let res = listener.accept().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let stream = match res {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or the like: don't spin.
                let rt = shared.rt.clone();
                drop(shared);
                rt.sleep(TICK_INTERVAL).await;
                continue;
            }
        };
        let mut st = shared.lock();
        let sock = SockId(st.next_sock);
        st.next_sock += 1;
        st.stats.accepted += 1;
        let (tx, rx) = mpsc::unbounded();
        st.writers.insert(sock, tx);
        st.peers.insert(sock, stream.peer);
        st.net.accepted(sock);
        shared.rt.spawn(write_loop(stream.writer, rx)).detach();
        shared
            .rt
            .spawn(read_loop(weak.clone(), sock, stream.reader))
            .detach();
    }
}

async fn read_loop(weak: Weak<Shared>, sock: SockId, mut reader: Box<dyn StreamReader>) {
    loop {
        let chunk = reader.read().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let now = shared.rt.now();
        let mut out = Vec::new();
        let mut st = shared.lock();
        match chunk {
            Ok(bytes) if !bytes.is_empty() && st.writers.contains_key(&sock) => {
                st.net.recv(sock, &bytes, now, &mut out);
                shared.apply(&mut st, out);
            }
            _ => {
                st.writers.remove(&sock);
                st.peers.remove(&sock);
                st.net.closed(sock, now, &mut out);
                shared.apply(&mut st, out);
                return;
            }
        }
    }
}

async fn tick_loop(weak: Weak<Shared>) {
    loop {
        let Some(rt) = weak.upgrade().map(|s| s.rt.clone()) else {
            return;
        };
        rt.sleep(TICK_INTERVAL).await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let now = shared.rt.now();
        let mut st = shared.lock();
        if st.net.next_deadline().is_some_and(|d| d <= now) {
            let mut out = Vec::new();
            st.net.tick(now, &mut out);
            shared.apply(&mut st, out);
        }
    }
}
