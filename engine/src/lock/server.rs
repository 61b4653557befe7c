//! The lock server (reference §4.3, §4.6, `lock_server.c`) as a sans-IO
//! state machine.
//!
//! Why it is shaped this way:
//! * Per lock name a node holds `granted`, `invalidated` (grants we asked a
//!   client to give up and whose reply we await) and a FIFO of `requested`
//!   entries in receive order. A node is only processed while nothing is
//!   invalidated, so a client has at most one invalidation in flight per
//!   lock, and requests are granted strictly in the order they arrived:
//!   nobody can starve, and a client always sees grants and invalidations
//!   of one lock in the order the server decided them.
//! * A node is freed the moment it is empty, inside the same `handle` call
//!   that emptied it. The original freed nodes outside its index lock and
//!   lost a concurrent request (69d9040e); here there is no "outside".
//! * After a failover the new server knows nothing. Until every client that
//!   was mounted has reported its locks (LOCK_RECOVER) or been fenced, no
//!   node is processed: granting anything earlier could conflict with a
//!   grant the old server made. Clients report the mode they had *before*
//!   an invalidation they are still working through (ca526e2b), so the
//!   recovered state may overstate what clients hold, never understate it;
//!   an overstated grant costs one extra invalidation that the client
//!   answers at once.
//! * A farewell from a client still owing its recovery waits for it
//!   (e1491297): dropping its locks first and then accepting its late
//!   recovery reply would recreate locks held by nobody. Messages from a
//!   rid the server doesn't know (never greeted, or gone) are ignored for
//!   the same reason.
//! * Sending to a disconnected client is the glue's problem and never an
//!   error here (e54f8d3e): its invalidated entries simply wait until the
//!   client is fenced and [`ServerEvent::ClientGone`] drops them.
//!
//! Write seqs: every WRITE and WRITE_ONLY grant takes the next core seq, the
//! same counter the server hands out transaction seqs from, so an item
//! written under a later grant always carries a greater seq (trap 10). The
//! caller passes that counter into [`LockServer::handle`]; recovery raises it
//! above every write seq clients report.
//!
//! Touches only `format` (keys, `NetLock`) and the rest of `lock`.

use std::collections::{BTreeMap, VecDeque};

use super::mode::{compatible, invalidation_mode, LockMode};
use super::wire::LockMsg;
use crate::format::key::Key;
use crate::format::net::{NetLock, LOCK_RECOVER_MAX_LOCKS};

/// How long a new server waits for mounted clients to recover their locks
/// before fencing the rest (§4.6).
pub const LOCK_RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The fence reason for clients that never finished lock recovery.
pub const FENCE_REASON_CLIENT_RECOVERY: &str = "client_recovery";

/// What happened, fed to [`LockServer::handle`]. `T` names a client's
/// request so that the grant can answer it (the net layer's request ref).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent<T> {
    /// A client's first contact with this server (any greeting that is not a
    /// same-term reconnect). Messages from rids that haven't greeted are
    /// ignored. For a rid still owing recovery, each one asks for its
    /// LOCK_RECOVER report from the start.
    Greeted { rid: u64 },
    /// A LOCK request: the client wants `nl.new_mode` on `nl.key`.
    Request { rid: u64, token: T, nl: NetLock },
    /// The client's response to our invalidation of `nl.key`.
    InvalidateReply { rid: u64, nl: NetLock },
    /// The client's response to LOCK_RECOVER; empty means "no more".
    RecoverReply { rid: u64, locks: Vec<NetLock> },
    /// [`LOCK_RECOVERY_TIMEOUT`] passed since the server started recovering.
    RecoveryTimedOut,
    /// The client said farewell; answer it once [`ServerAction::FarewellReady`]
    /// names it.
    Farewell { rid: u64 },
    /// The client was fenced and is being reclaimed: drop its locks.
    ClientGone { rid: u64 },
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction<T> {
    /// Answer the client's LOCK request `token` with this grant.
    Grant { rid: u64, token: T, nl: NetLock },
    /// Send a LOCK request (an invalidation) to the client.
    Invalidate { rid: u64, nl: NetLock },
    /// Send LOCK_RECOVER starting at `key` to the client.
    Recover { rid: u64, key: Key },
    /// The client failed to recover in time: fence it, then report
    /// [`ServerEvent::ClientGone`] (reason [`FENCE_REASON_CLIENT_RECOVERY`]).
    Fence { rid: u64 },
    /// The client's locks are gone; its farewell may be answered.
    FarewellReady { rid: u64 },
    /// The client sent something that breaks the protocol; the message was
    /// ignored. The glue should drop the connection.
    BadMessage { rid: u64, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    mode: LockMode,
    write_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Invalidated {
    grant: Grant,
    /// The mode we asked the client to go down to.
    to: LockMode,
}

#[derive(Debug, Clone)]
struct Queued<T> {
    rid: u64,
    token: T,
    mode: LockMode,
}

#[derive(Debug)]
struct Node<T> {
    granted: BTreeMap<u64, Grant>,
    invalidated: BTreeMap<u64, Invalidated>,
    requested: VecDeque<Queued<T>>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            granted: BTreeMap::new(),
            invalidated: BTreeMap::new(),
            requested: VecDeque::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.invalidated.is_empty() && self.requested.is_empty()
    }

    /// What `rid` may be holding: its grant, or the grant being invalidated.
    fn held(&self, rid: u64) -> Option<Grant> {
        self.granted
            .get(&rid)
            .copied()
            .or_else(|| self.invalidated.get(&rid).map(|i| i.grant))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    Done,
    Pending { fence_sent: bool },
}

#[derive(Debug, Clone, Copy)]
struct Client {
    recovery: Recovery,
    /// Farewell received while recovery was pending.
    farewell: bool,
}

/// The server side of the cluster locks. Generic over the token that names
/// a client request (the glue's request reference).
#[derive(Debug)]
pub struct LockServer<T> {
    nodes: BTreeMap<Key, Node<T>>,
    clients: BTreeMap<u64, Client>,
    /// Clients still owing recovery; nothing is processed while non-zero.
    recovering_nr: usize,
}

impl<T: Clone> Default for LockServer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> LockServer<T> {
    /// A server of a volume that had no mounted clients: nothing to recover.
    pub fn new() -> Self {
        LockServer {
            nodes: BTreeMap::new(),
            clients: BTreeMap::new(),
            recovering_nr: 0,
        }
    }

    /// A server taking over from another: every rid of `mounted_clients`
    /// must recover its locks (or be fenced) before any lock is processed.
    /// The caller arms a [`LOCK_RECOVERY_TIMEOUT`] timer if any rid was
    /// given.
    pub fn recovering(rids: impl IntoIterator<Item = u64>) -> Self {
        let mut s = Self::new();
        for rid in rids {
            let pending = Recovery::Pending { fence_sent: false };
            if s.clients
                .insert(
                    rid,
                    Client {
                        recovery: pending,
                        farewell: false,
                    },
                )
                .is_none()
            {
                s.recovering_nr += 1;
            }
        }
        s
    }

    /// Some mounted client still owes its lock recovery.
    pub fn is_recovering(&self) -> bool {
        self.recovering_nr > 0
    }

    /// `rid` still owes its lock recovery.
    pub fn client_recovering(&self, rid: u64) -> bool {
        matches!(
            self.clients.get(&rid).map(|c| c.recovery),
            Some(Recovery::Pending { .. })
        )
    }

    /// The mode the server believes `rid` may hold on `key`: its grant, or
    /// the old mode of a grant being invalidated.
    pub fn held_mode(&self, rid: u64, key: &Key) -> LockMode {
        self.nodes
            .get(key)
            .and_then(|n| n.held(rid))
            .map_or(LockMode::Null, |g| g.mode)
    }

    /// Lock names with any state.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Handles one event. `core_seq` is the server's core seq counter (the
    /// last seq handed out): write grants take `core_seq + 1`, recovery
    /// raises it.
    pub fn handle(&mut self, core_seq: &mut u64, ev: ServerEvent<T>) -> Vec<ServerAction<T>> {
        let mut out = Vec::new();
        match ev {
            ServerEvent::Greeted { rid } => self.greeted(rid, core_seq, &mut out),
            ServerEvent::Request { rid, token, nl } => {
                self.request(rid, token, &nl, core_seq, &mut out)
            }
            ServerEvent::InvalidateReply { rid, nl } => {
                self.invalidate_reply(rid, &nl, core_seq, &mut out)
            }
            ServerEvent::RecoverReply { rid, locks } => {
                self.recover_reply(rid, &locks, core_seq, &mut out)
            }
            ServerEvent::RecoveryTimedOut => {
                for (&rid, c) in self.clients.iter_mut() {
                    if let Recovery::Pending { fence_sent, .. } = &mut c.recovery {
                        if !*fence_sent {
                            *fence_sent = true;
                            out.push(ServerAction::Fence { rid });
                        }
                    }
                }
            }
            ServerEvent::Farewell { rid } => match self.clients.get_mut(&rid) {
                Some(c) if matches!(c.recovery, Recovery::Pending { .. }) => c.farewell = true,
                Some(_) => {
                    self.drop_client(rid, core_seq, &mut out);
                    out.push(ServerAction::FarewellReady { rid });
                }
                None => out.push(ServerAction::FarewellReady { rid }),
            },
            ServerEvent::ClientGone { rid } => self.drop_client(rid, core_seq, &mut out),
        }
        out
    }

    fn greeted(&mut self, rid: u64, core_seq: &mut u64, out: &mut Vec<ServerAction<T>>) {
        if self.clients.contains_key(&rid) {
            self.connection_reset(rid, core_seq, out);
        }
        let c = self.clients.entry(rid).or_insert(Client {
            recovery: Recovery::Done,
            farewell: false,
        });
        if matches!(c.recovery, Recovery::Pending { .. }) {
            // Every greeting of a rid still owing recovery asks from the
            // start, even if an earlier one already asked (found by
            // lock_net_sim, seed 5): a second first-contact greeting means
            // the client never saw our greeting reply, so it never saw the
            // LOCK_RECOVER queued behind it either, and the net layer has
            // discarded that connection state with the request in it.
            // Asking only once left the mount to be fenced at the recovery
            // timeout. Restarting is harmless: reports overwrite grants.
            out.push(ServerAction::Recover { rid, key: Key::MIN });
        }
    }

    /// A first-contact greeting from a rid we already know: the client
    /// never saw our earlier greeting reply, so it saw nothing we queued
    /// behind it, and the net layer has discarded that connection state
    /// with every message in it. The client resends its unanswered
    /// requests, so the queued copies (whose tokens are dead) go, or the
    /// resent ones would be refused as second requests; and the
    /// invalidations it never saw are sent again, or the locks they hold
    /// up would wait forever.
    fn connection_reset(&mut self, rid: u64, core_seq: &mut u64, out: &mut Vec<ServerAction<T>>) {
        let mut touched = Vec::new();
        for (&key, node) in self.nodes.iter_mut() {
            let before = node.requested.len();
            node.requested.retain(|q| q.rid != rid);
            if node.requested.len() != before {
                touched.push(key);
            }
            if let Some(inv) = node.invalidated.get(&rid) {
                out.push(ServerAction::Invalidate {
                    rid,
                    nl: LockMsg {
                        key,
                        write_seq: 0,
                        old: inv.grant.mode,
                        new: inv.to,
                    }
                    .to_net(),
                });
            }
        }
        for key in touched {
            self.process(key, core_seq, out);
        }
    }

    fn decode(&self, rid: u64, nl: &NetLock, out: &mut Vec<ServerAction<T>>) -> Option<LockMsg> {
        if !self.clients.contains_key(&rid) {
            // Departed or never greeted: a late message must not recreate
            // state for it.
            return None;
        }
        match LockMsg::from_net(nl) {
            Ok(m) => Some(m),
            Err(e) => {
                out.push(ServerAction::BadMessage {
                    rid,
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    fn request(
        &mut self,
        rid: u64,
        token: T,
        nl: &NetLock,
        core_seq: &mut u64,
        out: &mut Vec<ServerAction<T>>,
    ) {
        let Some(m) = self.decode(rid, nl, out) else {
            return;
        };
        let node = self.nodes.entry(m.key).or_insert_with(Node::new);
        if node.requested.iter().any(|q| q.rid == rid) {
            // A client has at most one request per lock outstanding, and the
            // net layer never delivers one twice.
            out.push(ServerAction::BadMessage {
                rid,
                reason: format!("second LOCK request for {} while one is queued", m.key),
            });
            return;
        }
        node.requested.push_back(Queued {
            rid,
            token,
            mode: m.new,
        });
        self.process(m.key, core_seq, out);
    }

    fn invalidate_reply(
        &mut self,
        rid: u64,
        nl: &NetLock,
        core_seq: &mut u64,
        out: &mut Vec<ServerAction<T>>,
    ) {
        let Some(m) = self.decode(rid, nl, out) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&m.key) else {
            return;
        };
        let Some(inv) = node.invalidated.get(&rid).copied() else {
            // Nothing outstanding: a stale reply. Harmless.
            return;
        };
        if m.new != LockMode::Null && m.new != inv.to {
            out.push(ServerAction::BadMessage {
                rid,
                reason: format!(
                    "invalidation of {} to {:?} answered with {:?}",
                    m.key, inv.to, m.new
                ),
            });
            return;
        }
        node.invalidated.remove(&rid);
        if m.new != LockMode::Null {
            node.granted.insert(
                rid,
                Grant {
                    mode: m.new,
                    write_seq: inv.grant.write_seq,
                },
            );
        }
        self.process(m.key, core_seq, out);
    }

    fn recover_reply(
        &mut self,
        rid: u64,
        locks: &[NetLock],
        core_seq: &mut u64,
        out: &mut Vec<ServerAction<T>>,
    ) {
        if !self.client_recovering(rid) {
            return;
        }
        if locks.len() > LOCK_RECOVER_MAX_LOCKS {
            out.push(ServerAction::BadMessage {
                rid,
                reason: format!("LOCK_RECOVER reply of {} locks", locks.len()),
            });
            return;
        }
        let mut last = None;
        for nl in locks {
            let Some(m) = self.decode(rid, nl, out) else {
                return;
            };
            last = Some(last.map_or(m.key, |l: Key| l.max(m.key)));
            *core_seq = (*core_seq).max(m.write_seq);
            if m.new == LockMode::Null {
                continue;
            }
            let node = self.nodes.entry(m.key).or_insert_with(Node::new);
            node.granted.insert(
                rid,
                Grant {
                    mode: m.new,
                    write_seq: m.write_seq,
                },
            );
        }
        if let Some(last) = last {
            out.push(ServerAction::Recover {
                rid,
                key: last.inc(),
            });
            return;
        }
        let c = self.clients.get_mut(&rid).expect("recovering client");
        c.recovery = Recovery::Done;
        self.recovering_nr -= 1;
        if c.farewell {
            self.drop_client(rid, core_seq, out);
            out.push(ServerAction::FarewellReady { rid });
        } else if self.recovering_nr == 0 {
            self.process_all(core_seq, out);
        }
    }

    fn drop_client(&mut self, rid: u64, core_seq: &mut u64, out: &mut Vec<ServerAction<T>>) {
        let Some(c) = self.clients.remove(&rid) else {
            return;
        };
        if matches!(c.recovery, Recovery::Pending { .. }) {
            self.recovering_nr -= 1;
        }
        let mut touched = Vec::new();
        for (key, node) in self.nodes.iter_mut() {
            let before = (
                node.granted.len(),
                node.invalidated.len(),
                node.requested.len(),
            );
            node.granted.remove(&rid);
            node.invalidated.remove(&rid);
            node.requested.retain(|q| q.rid != rid);
            let after = (
                node.granted.len(),
                node.invalidated.len(),
                node.requested.len(),
            );
            if before != after {
                touched.push(*key);
            }
        }
        for key in touched {
            self.process(key, core_seq, out);
        }
        if self.recovering_nr == 0 {
            // The client may have been the last one owing recovery.
            self.process_all(core_seq, out);
        }
    }

    fn process_all(&mut self, core_seq: &mut u64, out: &mut Vec<ServerAction<T>>) {
        let keys: Vec<Key> = self.nodes.keys().copied().collect();
        for key in keys {
            self.process(key, core_seq, out);
        }
    }

    /// Grants queued requests in order until one must wait for
    /// invalidations (or for recovery); frees the node if it ends up empty,
    /// recovery or not (a client dropped mid-recovery empties nodes too).
    fn process(&mut self, key: Key, core_seq: &mut u64, out: &mut Vec<ServerAction<T>>) {
        let recovering = self.recovering_nr > 0;
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        while !recovering && node.invalidated.is_empty() {
            let Some(head) = node.requested.front() else {
                break;
            };
            let (rid, mode) = (head.rid, head.mode);
            let conflicts: Vec<u64> = node
                .granted
                .iter()
                .filter(|(&g_rid, g)| !compatible(g.mode, mode, g_rid == rid))
                .map(|(&g_rid, _)| g_rid)
                .collect();
            for g_rid in conflicts {
                let grant = node.granted.remove(&g_rid).expect("listed");
                let to = invalidation_mode(grant.mode, mode);
                out.push(ServerAction::Invalidate {
                    rid: g_rid,
                    nl: LockMsg {
                        key,
                        write_seq: 0,
                        old: grant.mode,
                        new: to,
                    }
                    .to_net(),
                });
                node.invalidated.insert(g_rid, Invalidated { grant, to });
            }
            if !node.invalidated.is_empty() {
                break;
            }
            let head = node.requested.pop_front().expect("head");
            let prev = node.granted.remove(&rid).map_or(LockMode::Null, |g| g.mode);
            let write_seq = if mode.can_write() {
                *core_seq += 1;
                *core_seq
            } else {
                0
            };
            if mode != LockMode::Null {
                node.granted.insert(rid, Grant { mode, write_seq });
            }
            out.push(ServerAction::Grant {
                rid,
                token: head.token,
                nl: LockMsg {
                    key,
                    write_seq,
                    old: prev,
                    new: mode,
                }
                .to_net(),
            });
        }
        if node.is_empty() {
            self.nodes.remove(&key);
        }
    }

    /// Checks what must hold between events: no empty nodes, no NULL grants,
    /// a client in at most one of granted/invalidated, only known clients,
    /// and every two clients' holdings of a lock compatible.
    pub fn check_invariants(&self) -> Result<(), String> {
        let pending = self
            .clients
            .values()
            .filter(|c| matches!(c.recovery, Recovery::Pending { .. }))
            .count();
        if pending != self.recovering_nr {
            return Err(format!(
                "recovering count {} but {pending} pending",
                self.recovering_nr
            ));
        }
        for (key, node) in &self.nodes {
            if node.is_empty() {
                return Err(format!("empty node {key} kept"));
            }
            let mut held = Vec::new();
            for (&rid, g) in &node.granted {
                if g.mode == LockMode::Null {
                    return Err(format!("NULL grant of {key} to {rid:x}"));
                }
                if node.invalidated.contains_key(&rid) {
                    return Err(format!("{rid:x} both granted and invalidated on {key}"));
                }
                held.push((rid, g.mode));
            }
            for (&rid, inv) in &node.invalidated {
                held.push((rid, inv.grant.mode));
            }
            for q in &node.requested {
                held.push((q.rid, LockMode::Null));
            }
            for &(rid, _) in &held {
                if !self.clients.contains_key(&rid) {
                    return Err(format!("unknown rid {rid:x} on {key}"));
                }
            }
            for (i, &(a, am)) in held.iter().enumerate() {
                for &(b, bm) in &held[i + 1..] {
                    if a != b && !compatible(am, bm, false) {
                        return Err(format!(
                            "{key}: {a:x} holds {am:?} while {b:x} holds {bm:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
