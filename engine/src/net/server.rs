//! Server side of the messaging layer (reference §5.1, §5.2): accepted
//! sockets waiting for their greeting, and one [`Conn`] per client rid that
//! outlives its sockets.
//!
//! Guarantees:
//! * An accepted socket must first carry a greeting request; anything else,
//!   or any message before the server has decided on the greeting, drops it.
//! * The server decides on each greeting ([`ServerNet::classify_greeting`],
//!   then [`ServerNet::accept_greeting`] or [`ServerNet::refuse_greeting`])
//!   after checking it with [`super::greeting::check_greeting`]:
//!   - a greeting with a term other than ours is first contact: a fresh state
//!     (an older state for the rid is discarded, its requests fail);
//!   - a greeting with our term moves the rid's existing state, queues and
//!     counters included, onto the new socket (the newest greeting wins and
//!     the older socket is closed); a farewell reply already queued in that
//!     state is resent on the new socket (trap cb172668);
//!   - our term but no state left: accepted fresh only for a farewell,
//!     otherwise the socket is dropped.
//! * A state without a socket is kept [`RECONNECT_TIMEOUT`]; on expiry
//!   [`ServerNet::tick`] discards it and reports [`Action::Fence`] with
//!   reason `client_reconnect`, or [`Action::Forget`] when a farewell reply
//!   had been queued (the client left cleanly).
//! * When a state is discarded, each of its unanswered requests completes
//!   once with `ENOTCONN`.
//!
//! Time comes in as `now` arguments (runtime time since start). Touches
//! `net::conn`, `net::framer`, `format::net`.

use std::collections::BTreeMap;
use std::time::Duration;

use zerocopy::FromBytes;

use super::conn::Conn;
use super::framer::{Framer, Msg};
use super::greeting::is_farewell;
use super::{Action, ReqRef, SockId, FENCE_REASON_CLIENT_RECONNECT, RECONNECT_TIMEOUT};
use crate::format::net::{Cmd, NetGreeting};

/// What accepting a greeting would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreetingKind {
    /// The client has not reached this server before: fresh state (lock
    /// recovery and the open-map list start here).
    FirstContact,
    /// Same-term reconnect: the existing state moves onto the new socket.
    Reconnect,
    /// Same term, state gone, but the client is saying farewell: fresh state.
    FarewellWithoutState,
    /// Same term, state gone, no farewell: the socket is dropped.
    Gone,
}

#[derive(Debug)]
struct Pending {
    framer: Framer,
    /// The greeting received, waiting for the server's decision.
    greeting: Option<(u64, NetGreeting)>,
}

#[derive(Debug)]
struct Client {
    conn: Conn,
    /// When the disconnected state expires.
    deadline: Option<Duration>,
}

/// Every client connection of one server instance (one term).
#[derive(Debug)]
pub struct ServerNet {
    term: u64,
    pending: BTreeMap<SockId, Pending>,
    clients: BTreeMap<u64, Client>,
    by_sock: BTreeMap<SockId, u64>,
    next_session: u64,
}

impl ServerNet {
    pub fn new(term: u64) -> ServerNet {
        assert!(term != 0, "term 0 means no server");
        ServerNet {
            term,
            pending: BTreeMap::new(),
            clients: BTreeMap::new(),
            by_sock: BTreeMap::new(),
            next_session: 1,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The state of a client, if kept.
    pub fn conn(&self, rid: u64) -> Option<&Conn> {
        self.clients.get(&rid).map(|c| &c.conn)
    }

    /// Rids with kept state.
    pub fn rids(&self) -> impl Iterator<Item = u64> + '_ {
        self.clients.keys().copied()
    }

    /// A new socket was accepted.
    pub fn accepted(&mut self, sock: SockId) {
        let old = self.pending.insert(
            sock,
            Pending {
                framer: Framer::new(),
                greeting: None,
            },
        );
        assert!(
            old.is_none() && !self.by_sock.contains_key(&sock),
            "socket id reused"
        );
    }

    /// Bytes received on `sock`.
    pub fn recv(&mut self, sock: SockId, bytes: &[u8], now: Duration, out: &mut Vec<Action>) {
        if let Some(&rid) = self.by_sock.get(&sock) {
            let client = self.clients.get_mut(&rid).expect("socket of a kept client");
            client.conn.recv(sock, bytes, out);
            if client.conn.sock() != Some(sock) {
                self.detached(sock, rid, now, out);
            }
            return;
        }
        let Some(p) = self.pending.get_mut(&sock) else {
            return;
        };
        let mut msgs = Vec::new();
        let verdict = p.framer.feed(bytes, &mut msgs);
        let mut why = verdict.err().map(|r| r.0);
        for msg in msgs {
            if p.greeting.is_some() {
                why = Some("message before the greeting reply".into());
                break;
            }
            match parse_greeting(&msg) {
                Some(g) => {
                    p.greeting = Some((msg.id, g));
                    out.push(Action::Greeting { sock, greeting: g });
                }
                None => {
                    why = Some("first message is not a greeting request".into());
                    break;
                }
            }
        }
        if let Some(why) = why {
            self.pending.remove(&sock);
            out.push(Action::Close { sock, reason: why });
        }
    }

    /// The transport reports `sock` closed.
    pub fn closed(&mut self, sock: SockId, now: Duration, out: &mut Vec<Action>) {
        if self.pending.remove(&sock).is_some() {
            return;
        }
        if let Some(&rid) = self.by_sock.get(&sock) {
            let client = self.clients.get_mut(&rid).expect("socket of a kept client");
            assert!(client.conn.disconnected(sock));
            self.detached(sock, rid, now, out);
        }
    }

    fn detached(&mut self, sock: SockId, rid: u64, now: Duration, out: &mut Vec<Action>) {
        self.by_sock.remove(&sock);
        let deadline = now + RECONNECT_TIMEOUT;
        self.clients.get_mut(&rid).expect("kept client").deadline = Some(deadline);
        out.push(Action::Timer { deadline });
    }

    /// What accepting `g` would do (the server checks it first).
    pub fn classify_greeting(&self, g: &NetGreeting) -> GreetingKind {
        if g.server_term.get() != self.term {
            GreetingKind::FirstContact
        } else if self.clients.contains_key(&g.rid.get()) {
            GreetingKind::Reconnect
        } else if is_farewell(g) {
            GreetingKind::FarewellWithoutState
        } else {
            GreetingKind::Gone
        }
    }

    /// Accepts the greeting waiting on `sock` (see the module comment);
    /// `None` if the socket is gone or has no greeting waiting.
    pub fn accept_greeting(&mut self, sock: SockId, out: &mut Vec<Action>) -> Option<GreetingKind> {
        let (greeting_id, g) = self.pending.get(&sock)?.greeting?;
        let p = self.pending.remove(&sock).expect("looked up");
        let rid = g.rid.get();
        let kind = self.classify_greeting(&g);
        match kind {
            GreetingKind::Gone => {
                out.push(Action::Close {
                    sock,
                    reason: "reconnect after the state expired".into(),
                });
                return Some(kind);
            }
            GreetingKind::FirstContact | GreetingKind::FarewellWithoutState => {
                self.discard(rid, out);
                let session = self.next_session;
                self.next_session += 1;
                self.clients.insert(
                    rid,
                    Client {
                        conn: Conn::new_server(rid, session),
                        deadline: None,
                    },
                );
            }
            GreetingKind::Reconnect => {}
        }
        let client = self
            .clients
            .get_mut(&rid)
            .expect("state exists or was made");
        if let Some(old) = client.conn.sock() {
            self.by_sock.remove(&old);
        }
        client.deadline = None;
        let reply = NetGreeting {
            fsid: g.fsid,
            fmt_vers: g.fmt_vers,
            server_term: self.term.into(),
            rid: g.rid,
            flags: 0.into(),
        };
        client.conn.attach(sock, p.framer, greeting_id, &reply, out);
        self.by_sock.insert(sock, rid);
        Some(kind)
    }

    /// Refuses the greeting waiting on `sock`: an error reply (if `errno` is
    /// nonzero), then the socket is closed.
    pub fn refuse_greeting(&mut self, sock: SockId, errno: i32, out: &mut Vec<Action>) {
        let Some(p) = self.pending.remove(&sock) else {
            return;
        };
        if let (Some((id, _)), true) = (p.greeting, errno != 0) {
            let msg = Msg {
                seq: 0,
                recv_seq: 0,
                id,
                cmd: Cmd::Greeting,
                is_response: true,
                errno,
                data: Vec::new(),
            };
            out.push(Action::Send {
                sock,
                bytes: msg.encode(),
            });
        }
        out.push(Action::Close {
            sock,
            reason: "greeting refused".into(),
        });
    }

    /// Sends a request to client `rid`; `None` if no state is kept for it.
    pub fn request(
        &mut self,
        rid: u64,
        cmd: Cmd,
        data: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> Option<u64> {
        Some(self.clients.get_mut(&rid)?.conn.request(cmd, data, out))
    }

    /// Answers a request delivered from client `rid` (see [`Conn::respond`]).
    pub fn respond(
        &mut self,
        rid: u64,
        req: ReqRef,
        errno: i32,
        data: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> bool {
        match self.clients.get_mut(&rid) {
            Some(c) => c.conn.respond(req, errno, data, out),
            None => false,
        }
    }

    /// Closes client `rid`'s socket (the state is kept and its timer starts).
    pub fn disconnect(&mut self, rid: u64, now: Duration, out: &mut Vec<Action>) {
        let Some(c) = self.clients.get_mut(&rid) else {
            return;
        };
        if let Some(sock) = c.conn.sock() {
            c.conn.close(out, "disconnected by the server");
            self.detached(sock, rid, now, out);
        }
    }

    /// The earliest expiry of a disconnected client's state.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.clients.values().filter_map(|c| c.deadline).min()
    }

    /// Expires disconnected states whose deadline is at or before `now`.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        let expired: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&rid, _)| rid)
            .collect();
        for rid in expired {
            let farewell = self.clients[&rid].conn.farewell_replied();
            self.discard(rid, out);
            out.push(if farewell {
                Action::Forget { rid }
            } else {
                Action::Fence {
                    rid,
                    reason: FENCE_REASON_CLIENT_RECONNECT,
                }
            });
        }
    }

    fn discard(&mut self, rid: u64, out: &mut Vec<Action>) {
        if let Some(mut c) = self.clients.remove(&rid) {
            if let Some(sock) = c.conn.sock() {
                self.by_sock.remove(&sock);
            }
            c.conn.close(out, "state discarded");
            c.conn.fail_pending(out);
        }
    }
}

fn parse_greeting(msg: &Msg) -> Option<NetGreeting> {
    if msg.cmd != Cmd::Greeting || msg.is_response {
        return None;
    }
    NetGreeting::read_from_bytes(&msg.data).ok()
}
