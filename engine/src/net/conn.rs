//! The reliable messaging layer of one logical connection (reference §5.1):
//! a sans-IO state machine that outlives the sockets it runs over.
//!
//! What it guarantees, given a transport with TCP semantics per socket:
//! * Each request gets a nonzero `id` chosen here and a `seq` from a counter
//!   that only increases over the life of the connection; responses get a
//!   `seq` too. Every frame sent carries `recv_seq`, the highest seq received,
//!   filled in at the moment it is (re)sent.
//! * Requests stay queued until their response arrives; responses stay queued
//!   until the peer acknowledges them (its `recv_seq` ≥ their seq). On a new
//!   socket both queues are resent in seq order, so seqs on any one socket
//!   strictly increase and the receiver drops everything at or below its own
//!   `recv_seq` as a duplicate.
//! * A response is delivered at most once, matched by id (and command); a
//!   response to an unknown id is dropped (a duplicate after a resend).
//! * Greetings are inline and take no part in seq handling; exactly one
//!   greeting per socket and it must come first: a client accepts only a
//!   greeting reply first, anything else (or a second greeting) drops the
//!   socket. Server-side greeting requests are taken by [`super::server`].
//! * A client whose greeting reply names a new server term drops its queued
//!   responses and pending inbound requests (they belong to the old server),
//!   resets `recv_seq` and resends its requests.
//!
//! Nothing here reads a clock, touches a socket or spawns: inputs are method
//! calls, outputs are [`Action`]s pushed onto a vector, in order.
//! Touches `net::framer`, `net::greeting` and `format::net`.

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use super::framer::{Framer, Msg};
use super::greeting::check_greeting_reply;
use super::{Action, ReqRef, SockId};
use crate::format::net::{Cmd, NetGreeting, GREETING_FLAG_FAREWELL, NET_MAX_DATA_BYTES};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Debug)]
enum Phase {
    /// Client: greeting sent with this id, waiting for its reply.
    AwaitGreetingReply { id: u64, sent: NetGreeting },
    /// Greeting exchanged: messages flow.
    Ready,
}

#[derive(Debug)]
struct Sock {
    id: SockId,
    framer: Framer,
    phase: Phase,
}

/// One logical connection, client or server side.
#[derive(Debug)]
pub struct Conn {
    role: Role,
    /// Server side: the client's rid. Client side: our own rid.
    rid: u64,
    sock: Option<Sock>,
    next_seq: u64,
    next_id: u64,
    recv_seq: u64,
    /// Unanswered requests by seq.
    requests: BTreeMap<u64, Msg>,
    /// Request id → its seq in `requests`.
    pending: BTreeMap<u64, u64>,
    /// Unacknowledged responses by seq.
    responses: BTreeMap<u64, Msg>,
    /// Peer requests delivered and not yet answered: id → command.
    inbound: BTreeMap<u64, Cmd>,
    /// Bumped whenever inbound requests stop being answerable.
    session: u64,
    /// Client: the greeting to send (its term is replaced by `server_term`).
    greeting: NetGreeting,
    /// Client: term of the last server that replied (0 before any).
    server_term: u64,
    /// Server: a successful farewell reply has been queued.
    farewell_replied: bool,
}

impl Conn {
    /// A client connection; `greeting` names the volume, format version,
    /// our rid and flags (its `server_term` is ignored).
    pub fn new_client(greeting: NetGreeting) -> Conn {
        let rid = greeting.rid.get();
        Conn::new(Role::Client, rid, greeting)
    }

    pub(crate) fn new_server(rid: u64, session: u64) -> Conn {
        let mut c = Conn::new(Role::Server, rid, NetGreeting::default());
        c.session = session;
        c
    }

    fn new(role: Role, rid: u64, greeting: NetGreeting) -> Conn {
        Conn {
            role,
            rid,
            sock: None,
            next_seq: 1,
            next_id: 1,
            recv_seq: 0,
            requests: BTreeMap::new(),
            pending: BTreeMap::new(),
            responses: BTreeMap::new(),
            inbound: BTreeMap::new(),
            session: 0,
            greeting,
            server_term: 0,
            farewell_replied: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }
    /// The socket currently carrying the connection, if any.
    pub fn sock(&self) -> Option<SockId> {
        self.sock.as_ref().map(|s| s.id)
    }
    /// Whether the greeting exchange on the current socket is done.
    pub fn is_ready(&self) -> bool {
        matches!(
            self.sock,
            Some(Sock {
                phase: Phase::Ready,
                ..
            })
        )
    }
    pub fn recv_seq(&self) -> u64 {
        self.recv_seq
    }
    pub fn queued_requests(&self) -> usize {
        self.requests.len()
    }
    pub fn queued_responses(&self) -> usize {
        self.responses.len()
    }
    /// Peer requests delivered to the caller and not yet answered.
    pub fn unanswered_inbound(&self) -> usize {
        self.inbound.len()
    }
    /// Client: the term of the server last greeted (0 before any).
    pub fn server_term(&self) -> u64 {
        self.server_term
    }
    pub(crate) fn farewell_replied(&self) -> bool {
        self.farewell_replied
    }

    /// Client: set or clear the FAREWELL flag sent in later greetings.
    pub fn set_farewell(&mut self, on: bool) {
        let flags = self.greeting.flags.get() & !GREETING_FLAG_FAREWELL;
        self.greeting.flags = (flags | if on { GREETING_FLAG_FAREWELL } else { 0 }).into();
    }

    /// Client: a new socket to the server is up. Any previous socket is
    /// closed; the greeting goes out first and nothing else until its reply.
    pub fn connected(&mut self, sock: SockId, out: &mut Vec<Action>) {
        assert_eq!(
            self.role,
            Role::Client,
            "servers attach sockets on greeting"
        );
        self.close(out, "replaced by a new socket");
        let id = self.alloc_id();
        let mut sent = self.greeting;
        sent.server_term = self.server_term.into();
        let greeting = Msg {
            seq: 0,
            recv_seq: 0,
            id,
            cmd: Cmd::Greeting,
            is_response: false,
            errno: 0,
            data: sent.as_bytes().to_vec(),
        };
        out.push(Action::Send {
            sock,
            bytes: greeting.encode(),
        });
        self.sock = Some(Sock {
            id: sock,
            framer: Framer::new(),
            phase: Phase::AwaitGreetingReply { id, sent },
        });
    }

    /// Server: move the connection onto `sock`, whose greeting request (id
    /// `greeting_id`) is answered with `reply` before anything is resent.
    pub(crate) fn attach(
        &mut self,
        sock: SockId,
        framer: Framer,
        greeting_id: u64,
        reply: &NetGreeting,
        out: &mut Vec<Action>,
    ) {
        assert_eq!(self.role, Role::Server);
        self.close(out, "newer greeting on another socket");
        let msg = Msg {
            seq: 0,
            recv_seq: 0,
            id: greeting_id,
            cmd: Cmd::Greeting,
            is_response: true,
            errno: 0,
            data: reply.as_bytes().to_vec(),
        };
        out.push(Action::Send {
            sock,
            bytes: msg.encode(),
        });
        self.sock = Some(Sock {
            id: sock,
            framer,
            phase: Phase::Ready,
        });
        self.resend(out);
    }

    /// The transport reports `sock` closed. Returns whether it was ours.
    pub fn disconnected(&mut self, sock: SockId) -> bool {
        if self.sock() == Some(sock) {
            self.sock = None;
            true
        } else {
            false
        }
    }

    /// Drops the current socket (if any) with a Close action.
    pub fn close(&mut self, out: &mut Vec<Action>, why: &str) {
        if let Some(s) = self.sock.take() {
            out.push(Action::Close {
                sock: s.id,
                reason: why.to_string(),
            });
        }
    }

    /// Queues a request; it is sent now if the connection is ready, and
    /// again on every new socket until its response arrives. Returns its id.
    /// Panics if `data` is over the protocol limit or `cmd` is a greeting.
    pub fn request(&mut self, cmd: Cmd, data: Vec<u8>, out: &mut Vec<Action>) -> u64 {
        assert!(cmd != Cmd::Greeting, "greetings are not queued");
        assert!(
            data.len() <= NET_MAX_DATA_BYTES,
            "request over the protocol limit"
        );
        let id = self.alloc_id();
        let seq = self.alloc_seq();
        let msg = Msg {
            seq,
            recv_seq: 0,
            id,
            cmd,
            is_response: false,
            errno: 0,
            data,
        };
        self.send_if_ready(&msg, out);
        self.pending.insert(id, seq);
        self.requests.insert(seq, msg);
        id
    }

    /// Answers a delivered peer request. Answers for requests of an earlier
    /// session (before a new server, or a fresh server-side state) or for
    /// ids already answered are ignored; returns whether it was queued.
    pub fn respond(
        &mut self,
        req: ReqRef,
        errno: i32,
        data: Vec<u8>,
        out: &mut Vec<Action>,
    ) -> bool {
        assert!(
            data.len() <= NET_MAX_DATA_BYTES,
            "response over the protocol limit"
        );
        if req.session != self.session {
            return false;
        }
        let Some(cmd) = self.inbound.remove(&req.id) else {
            return false;
        };
        if self.role == Role::Server && cmd == Cmd::Farewell && errno == 0 {
            self.farewell_replied = true;
        }
        let seq = self.alloc_seq();
        let msg = Msg {
            seq,
            recv_seq: 0,
            id: req.id,
            cmd,
            is_response: true,
            errno,
            data,
        };
        self.send_if_ready(&msg, out);
        self.responses.insert(seq, msg);
        true
    }

    /// Received bytes on `sock`. Bytes of a socket that is not ours (already
    /// replaced or dropped) are ignored.
    pub fn recv(&mut self, sock: SockId, bytes: &[u8], out: &mut Vec<Action>) {
        let Some(s) = self.sock.as_mut().filter(|s| s.id == sock) else {
            return;
        };
        let mut msgs = Vec::new();
        let verdict = s.framer.feed(bytes, &mut msgs);
        for msg in msgs {
            if let Err(why) = self.handle(msg, out) {
                self.close(out, &why);
                return;
            }
            if self.sock() != Some(sock) {
                return;
            }
        }
        if let Err(why) = verdict {
            self.close(out, &why.0);
        }
    }

    /// Handles one message already taken off our current socket.
    pub(crate) fn handle(&mut self, msg: Msg, out: &mut Vec<Action>) -> Result<(), String> {
        let sock = self.sock.as_mut().expect("handle needs a socket");
        if let Phase::AwaitGreetingReply { id, sent } = &sock.phase {
            if msg.cmd != Cmd::Greeting || !msg.is_response || msg.id != *id {
                return Err("first message is not the greeting reply".into());
            }
            let sent = *sent;
            return self.greeting_reply(msg, sent, out);
        }
        if msg.cmd == Cmd::Greeting {
            return Err("second greeting on a socket".into());
        }
        // The peer has everything up to its recv_seq: free those responses.
        let keep = self.responses.split_off(&(msg.recv_seq.saturating_add(1)));
        self.responses = keep;
        if msg.seq <= self.recv_seq {
            return Ok(()); // duplicate of a message received before a resend
        }
        self.recv_seq = msg.seq;
        if msg.is_response {
            let matched = self
                .pending
                .get(&msg.id)
                .copied()
                .filter(|seq| self.requests[seq].cmd == msg.cmd);
            if let Some(seq) = matched {
                self.pending.remove(&msg.id);
                self.requests.remove(&seq);
                out.push(Action::Response {
                    rid: self.rid,
                    id: msg.id,
                    cmd: msg.cmd,
                    errno: msg.errno,
                    data: msg.data,
                });
            }
            return Ok(());
        }
        if self.inbound.insert(msg.id, msg.cmd).is_some() {
            return Err(format!("request id {} reused while unanswered", msg.id));
        }
        let req = ReqRef {
            session: self.session,
            id: msg.id,
        };
        out.push(Action::Request {
            rid: self.rid,
            req,
            cmd: msg.cmd,
            data: msg.data,
        });
        Ok(())
    }

    fn greeting_reply(
        &mut self,
        msg: Msg,
        sent: NetGreeting,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let reply = match (msg.errno, NetGreeting::read_from_bytes(&msg.data)) {
            (0, Ok(reply)) => reply,
            (0, Err(_)) => return Err(format!("greeting reply of {} bytes", msg.data.len())),
            (errno, _) => {
                out.push(Action::GreetingFailed { errno });
                return Err(format!("greeting refused with errno {errno}"));
            }
        };
        if let Err(e) = check_greeting_reply(&reply, &sent) {
            out.push(Action::GreetingFailed { errno: e.errno() });
            return Err(format!("bad greeting reply: {e:?}"));
        }
        let term = reply.server_term.get();
        let new_server = term != self.server_term;
        if new_server {
            // The old server's requests died with it, and the new one starts
            // counting our messages from scratch.
            self.responses.clear();
            self.inbound.clear();
            self.session += 1;
            self.recv_seq = 0;
            self.server_term = term;
        }
        self.sock.as_mut().expect("greeting on a socket").phase = Phase::Ready;
        out.push(Action::Greeted {
            server_term: term,
            new_server,
        });
        self.resend(out);
        Ok(())
    }

    /// Server: the connection state is being discarded; every unanswered
    /// request of ours completes with ENOTCONN, exactly once.
    pub(crate) fn fail_pending(&mut self, out: &mut Vec<Action>) {
        for (id, seq) in std::mem::take(&mut self.pending) {
            let msg = self.requests.remove(&seq).expect("pending request queued");
            out.push(Action::Response {
                rid: self.rid,
                id,
                cmd: msg.cmd,
                errno: libc::ENOTCONN,
                data: Vec::new(),
            });
        }
        debug_assert!(self.requests.is_empty());
    }

    /// Sends both queues, merged in seq order, on the current socket.
    fn resend(&mut self, out: &mut Vec<Action>) {
        let Some(sock) = self.sock.as_ref().map(|s| s.id) else {
            return;
        };
        let mut reqs = self.requests.values().peekable();
        let mut resps = self.responses.values().peekable();
        loop {
            let next = match (reqs.peek(), resps.peek()) {
                (Some(a), Some(b)) if a.seq < b.seq => reqs.next(),
                (Some(_), Some(_)) => resps.next(),
                (Some(_), None) => reqs.next(),
                (None, Some(_)) => resps.next(),
                (None, None) => break,
            };
            let msg = next.expect("peeked");
            out.push(Action::Send {
                sock,
                bytes: encode_with_ack(msg, self.recv_seq),
            });
        }
    }

    fn send_if_ready(&self, msg: &Msg, out: &mut Vec<Action>) {
        if let Some(Sock {
            id,
            phase: Phase::Ready,
            ..
        }) = &self.sock
        {
            out.push(Action::Send {
                sock: *id,
                bytes: encode_with_ack(msg, self.recv_seq),
            });
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn alloc_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

fn encode_with_ack(msg: &Msg, recv_seq: u64) -> Vec<u8> {
    debug_assert!(msg.seq != 0 && msg.id != 0);
    let mut m = msg.clone();
    m.recv_seq = recv_seq;
    m.encode()
}
