//! Named scenarios for the reliable messaging layer (reference §5.1–§5.2,
//! §11 items 20–21, §12): greeting order rules, resend and duplicate drop,
//! the new-server reset, newest greeting wins, the 20 s expiry and fence,
//! and trap cb172668 (a farewell reply already queued when a reconnecting
//! connection's state is moved).
//!
//! Bytes move synchronously between the two state machines here; the
//! seeded network is exercised by net_sim.rs.

use std::time::Duration;

use engine::format::net::{Cmd, NetGreeting};
use engine::net::{Action, Conn, GreetingKind, Msg, ReqRef, ServerNet, SockId, RECONNECT_TIMEOUT};
use zerocopy::IntoBytes;

const RID: u64 = 9;

fn greeting(term: u64, flags: u64) -> NetGreeting {
    NetGreeting {
        fsid: 1.into(),
        fmt_vers: 2.into(),
        server_term: term.into(),
        rid: RID.into(),
        flags: flags.into(),
    }
}

fn bytes_to(out: &[Action], sock: SockId) -> Vec<u8> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { sock: s, bytes } if *s == sock => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn closed(out: &[Action], sock: SockId) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::Close { sock: s, .. } if *s == sock))
}

fn requests(out: &[Action]) -> Vec<(ReqRef, Cmd, Vec<u8>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Request { req, cmd, data, .. } => Some((*req, *cmd, data.clone())),
            _ => None,
        })
        .collect()
}

fn responses(out: &[Action]) -> Vec<(u64, Cmd, i32, Vec<u8>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Response {
                id,
                cmd,
                errno,
                data,
                ..
            } => Some((*id, *cmd, *errno, data.clone())),
            _ => None,
        })
        .collect()
}

/// A client and a server joined by explicit, lossless or lossy, hops.
struct Pair {
    client: Conn,
    server: ServerNet,
    now: Duration,
    next_sock: u64,
}

impl Pair {
    fn new(term: u64) -> Pair {
        Pair {
            client: Conn::new_client(greeting(0, 0)),
            server: ServerNet::new(term),
            now: Duration::ZERO,
            next_sock: 1,
        }
    }

    /// Opens a socket and completes the greeting; returns the socket, the
    /// server's outcome and what the client produced after the reply.
    fn connect(&mut self) -> (SockId, GreetingKind, Vec<Action>) {
        let sock = SockId(self.next_sock);
        self.next_sock += 1;
        let mut c_out = Vec::new();
        self.server.accepted(sock);
        self.client.connected(sock, &mut c_out);
        let mut s_out = Vec::new();
        self.server
            .recv(sock, &bytes_to(&c_out, sock), self.now, &mut s_out);
        assert!(matches!(s_out[..], [Action::Greeting { .. }]), "{s_out:?}");
        let kind = self.server.accept_greeting(sock, &mut s_out).unwrap();
        let mut c_out = Vec::new();
        self.client.recv(sock, &bytes_to(&s_out, sock), &mut c_out);
        (sock, kind, c_out)
    }

    /// Client → server bytes of `out` on `sock`; returns the server's output.
    fn deliver_to_server(&mut self, sock: SockId, out: &[Action]) -> Vec<Action> {
        let mut s_out = Vec::new();
        self.server
            .recv(sock, &bytes_to(out, sock), self.now, &mut s_out);
        s_out
    }

    fn deliver_to_client(&mut self, sock: SockId, out: &[Action]) -> Vec<Action> {
        let mut c_out = Vec::new();
        self.client.recv(sock, &bytes_to(out, sock), &mut c_out);
        c_out
    }

    fn break_sock(&mut self, sock: SockId) {
        self.client.disconnected(sock);
        let mut s_out = Vec::new();
        self.server.closed(sock, self.now, &mut s_out);
    }
}

#[test]
fn net_request_response_round_trip_and_ack_frees_responses() {
    let mut p = Pair::new(5);
    let (sock, kind, c_out) = p.connect();
    assert_eq!(kind, GreetingKind::FirstContact);
    assert!(c_out.contains(&Action::Greeted {
        server_term: 5,
        new_server: true
    }));
    let mut out = Vec::new();
    let id = p.client.request(Cmd::Statfs, vec![1, 2, 3], &mut out);
    let s_out = p.deliver_to_server(sock, &out);
    let (req, cmd, data) = requests(&s_out).pop().unwrap();
    assert_eq!((cmd, data), (Cmd::Statfs, vec![1, 2, 3]));
    let mut s_out = Vec::new();
    assert!(p.server.respond(RID, req, libc::EEXIST, vec![], &mut s_out));
    assert!(
        !p.server.respond(RID, req, 0, vec![], &mut s_out),
        "answered twice"
    );
    assert_eq!(p.server.conn(RID).unwrap().queued_responses(), 1);
    let c_out = p.deliver_to_client(sock, &s_out);
    assert_eq!(
        responses(&c_out),
        vec![(id, Cmd::Statfs, libc::EINVAL, vec![])],
        "EEXIST travels as EINVAL"
    );
    assert_eq!(p.client.queued_requests(), 0);
    // The next client message acknowledges the response.
    let mut out = Vec::new();
    p.client.request(Cmd::GetRoots, vec![], &mut out);
    p.deliver_to_server(sock, &out);
    assert_eq!(p.server.conn(RID).unwrap().queued_responses(), 0);
}

#[test]
fn net_resend_after_same_term_reconnect_drops_duplicates() {
    let mut p = Pair::new(5);
    let (sock1, _, _) = p.connect();
    let mut out = Vec::new();
    let id1 = p.client.request(Cmd::AllocInodes, vec![1], &mut out);
    let id2 = p.client.request(Cmd::GetLastSeq, vec![2], &mut out);
    let s_out = p.deliver_to_server(sock1, &out);
    let reqs = requests(&s_out);
    let mut s_out = Vec::new();
    p.server.respond(RID, reqs[0].0, 0, vec![7], &mut s_out);
    // The socket breaks before the response arrives.
    p.break_sock(sock1);
    let (sock2, kind, c_out) = p.connect();
    assert_eq!(kind, GreetingKind::Reconnect);
    assert!(c_out.contains(&Action::Greeted {
        server_term: 5,
        new_server: false
    }));
    // The server resent its response right after the greeting reply.
    assert_eq!(responses(&c_out), vec![(id1, Cmd::AllocInodes, 0, vec![7])]);
    // The client resent id2; the server drops it as a duplicate.
    let s_out2 = p.deliver_to_server(sock2, &c_out);
    assert!(
        requests(&s_out2).is_empty(),
        "duplicate delivered: {s_out2:?}"
    );
    let mut s_out = Vec::new();
    p.server.respond(RID, reqs[1].0, 0, vec![8], &mut s_out);
    let c_out = p.deliver_to_client(sock2, &s_out);
    assert_eq!(responses(&c_out), vec![(id2, Cmd::GetLastSeq, 0, vec![8])]);
    assert_eq!(p.client.queued_requests(), 0);
}

#[test]
fn net_server_resends_queued_response_after_greeting_reply() {
    let mut p = Pair::new(5);
    let (sock1, _, _) = p.connect();
    let mut out = Vec::new();
    let id = p.client.request(Cmd::AllocInodes, vec![1], &mut out);
    let reqs = requests(&p.deliver_to_server(sock1, &out));
    let mut lost = Vec::new();
    p.server.respond(RID, reqs[0].0, 0, vec![7], &mut lost);
    p.break_sock(sock1);
    let (_, _, c_out) = p.connect();
    assert_eq!(responses(&c_out), vec![(id, Cmd::AllocInodes, 0, vec![7])]);
    assert_eq!(p.client.queued_requests(), 0);
}

#[test]
fn net_new_server_resets_client_and_resends_requests() {
    let mut p = Pair::new(5);
    let (sock1, _, _) = p.connect();
    let mut out = Vec::new();
    let id = p
        .client
        .request(Cmd::CommitLogTrees, vec![3; 100], &mut out);
    p.deliver_to_server(sock1, &out);
    // The server asks the client something; the client answers, unacked.
    let mut s_out = Vec::new();
    p.server
        .request(RID, Cmd::SyncLogTrees, vec![], &mut s_out)
        .unwrap();
    let c_out = p.deliver_to_client(sock1, &s_out);
    let (req, _, _) = requests(&c_out).pop().unwrap();
    let mut c_out = Vec::new();
    assert!(p.client.respond(req, 0, vec![], &mut c_out));
    assert_eq!(p.client.queued_responses(), 1);
    assert!(p.client.recv_seq() > 0);
    // The server dies; a new one (term 6) takes over.
    p.client.disconnected(sock1);
    p.server = ServerNet::new(6);
    let (sock2, kind, c_out) = p.connect();
    assert_eq!(kind, GreetingKind::FirstContact);
    assert!(c_out.contains(&Action::Greeted {
        server_term: 6,
        new_server: true
    }));
    assert_eq!(
        p.client.queued_responses(),
        0,
        "old server's responses dropped"
    );
    assert_eq!(p.client.recv_seq(), 0);
    let s_out = p.deliver_to_server(sock2, &c_out);
    let reqs = requests(&s_out);
    assert_eq!(
        reqs.len(),
        1,
        "the request is resent, the old response is not"
    );
    let mut s_out = Vec::new();
    p.server.respond(RID, reqs[0].0, 0, vec![], &mut s_out);
    assert_eq!(
        responses(&p.deliver_to_client(sock2, &s_out)),
        vec![(id, Cmd::CommitLogTrees, 0, vec![])]
    );
    // A late answer to the old server's request is refused.
    assert!(!p.client.respond(req, 0, vec![], &mut Vec::new()));
}

#[test]
fn net_response_to_unknown_id_is_dropped() {
    let mut p = Pair::new(5);
    let (sock, _, _) = p.connect();
    let stray = Msg {
        seq: 1,
        recv_seq: 0,
        id: 77,
        cmd: Cmd::Statfs,
        is_response: true,
        errno: 0,
        data: vec![],
    };
    let mut c_out = Vec::new();
    p.client.recv(sock, &stray.encode(), &mut c_out);
    assert!(c_out.is_empty(), "{c_out:?}");
    assert!(p.client.is_ready());
}

#[test]
fn net_server_accepts_only_a_greeting_request_first() {
    let mut server = ServerNet::new(5);
    let mut out = Vec::new();
    server.accepted(SockId(1));
    let req = Msg {
        seq: 1,
        recv_seq: 0,
        id: 1,
        cmd: Cmd::Statfs,
        is_response: false,
        errno: 0,
        data: vec![],
    };
    server.recv(SockId(1), &req.encode(), Duration::ZERO, &mut out);
    assert!(closed(&out, SockId(1)));
    // A greeting reply is not a greeting request either.
    server.accepted(SockId(2));
    let reply = Msg {
        seq: 0,
        recv_seq: 0,
        id: 1,
        cmd: Cmd::Greeting,
        is_response: true,
        errno: 0,
        data: greeting(0, 0).as_bytes().to_vec(),
    };
    server.recv(SockId(2), &reply.encode(), Duration::ZERO, &mut out);
    assert!(closed(&out, SockId(2)));
}

#[test]
fn net_only_one_greeting_per_socket() {
    let mut p = Pair::new(5);
    let (sock, _, _) = p.connect();
    let again = Msg {
        seq: 0,
        recv_seq: 0,
        id: 50,
        cmd: Cmd::Greeting,
        is_response: false,
        errno: 0,
        data: greeting(5, 0).as_bytes().to_vec(),
    };
    let s_out = p.deliver_to_server(
        sock,
        &[Action::Send {
            sock,
            bytes: again.encode(),
        }],
    );
    assert!(closed(&s_out, sock), "server took a second greeting");
    let reply = Msg {
        is_response: true,
        ..again
    };
    let mut c_out = Vec::new();
    p.client.recv(sock, &reply.encode(), &mut c_out);
    assert!(closed(&c_out, sock), "client took a second greeting");
}

#[test]
fn net_client_accepts_only_a_greeting_reply_first() {
    let mut client = Conn::new_client(greeting(0, 0));
    let mut out = Vec::new();
    client.connected(SockId(1), &mut out);
    let resp = Msg {
        seq: 1,
        recv_seq: 0,
        id: 1,
        cmd: Cmd::Statfs,
        is_response: true,
        errno: 0,
        data: vec![],
    };
    let mut c_out = Vec::new();
    client.recv(SockId(1), &resp.encode(), &mut c_out);
    assert!(closed(&c_out, SockId(1)));
    assert_eq!(client.sock(), None);
    // A refusing reply is reported and drops the socket.
    client.connected(SockId(2), &mut out);
    let refusal = Msg {
        seq: 0,
        recv_seq: 0,
        id: 2,
        cmd: Cmd::Greeting,
        is_response: true,
        errno: libc::EINVAL,
        data: vec![],
    };
    let mut c_out = Vec::new();
    client.recv(SockId(2), &refusal.encode(), &mut c_out);
    assert!(c_out.contains(&Action::GreetingFailed {
        errno: libc::EINVAL
    }));
    assert!(closed(&c_out, SockId(2)));
}

#[test]
fn net_newest_greeting_wins() {
    let mut p = Pair::new(5);
    let (sock1, _, _) = p.connect();
    // The server has not noticed sock1 break when the client reconnects.
    p.client.disconnected(sock1);
    let sock2 = SockId(p.next_sock);
    p.next_sock += 1;
    let mut c_out = Vec::new();
    p.server.accepted(sock2);
    p.client.connected(sock2, &mut c_out);
    let mut s_out = p.deliver_to_server(sock2, &c_out);
    assert_eq!(
        p.server.accept_greeting(sock2, &mut s_out),
        Some(GreetingKind::Reconnect)
    );
    assert!(closed(&s_out, sock1), "older socket closed");
    assert_eq!(p.server.conn(RID).unwrap().sock(), Some(sock2));
    // Late bytes or a late close on the old socket change nothing.
    let mut out = Vec::new();
    p.server.closed(sock1, p.now, &mut out);
    assert!(out.is_empty() && p.server.next_deadline().is_none());
}

#[test]
fn net_disconnected_state_expires_after_20s_and_fences() {
    let mut p = Pair::new(5);
    let (sock, _, _) = p.connect();
    let mut s_out = Vec::new();
    let id = p
        .server
        .request(RID, Cmd::LockRecover, vec![0; 32], &mut s_out)
        .unwrap();
    p.now = Duration::from_secs(100);
    let mut out = Vec::new();
    p.server.closed(sock, p.now, &mut out);
    let deadline = p.now + RECONNECT_TIMEOUT;
    assert_eq!(out, vec![Action::Timer { deadline }]);
    assert_eq!(p.server.next_deadline(), Some(deadline));
    let mut out = Vec::new();
    p.server.tick(deadline - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    p.server.tick(deadline, &mut out);
    assert_eq!(
        out,
        vec![
            Action::Response {
                rid: RID,
                id,
                cmd: Cmd::LockRecover,
                errno: libc::ENOTCONN,
                data: vec![]
            },
            Action::Fence {
                rid: RID,
                reason: "client_reconnect"
            },
        ]
    );
    assert!(p.server.conn(RID).is_none());
    // The client comes back with the same term and no farewell: dropped.
    let sock2 = SockId(50);
    let mut c_out = Vec::new();
    p.server.accepted(sock2);
    p.client.connected(sock2, &mut c_out);
    let mut s_out = p.deliver_to_server(sock2, &c_out);
    assert_eq!(
        p.server.accept_greeting(sock2, &mut s_out),
        Some(GreetingKind::Gone)
    );
    assert!(closed(&s_out, sock2));
}

#[test]
fn net_reconnect_within_20s_cancels_the_fence() {
    let mut p = Pair::new(5);
    let (sock, _, _) = p.connect();
    p.break_sock(sock);
    p.now += RECONNECT_TIMEOUT - Duration::from_millis(1);
    let (_, kind, _) = p.connect();
    assert_eq!(kind, GreetingKind::Reconnect);
    assert_eq!(p.server.next_deadline(), None);
    let mut out = Vec::new();
    p.server.tick(p.now + RECONNECT_TIMEOUT * 2, &mut out);
    assert!(out.is_empty());
}

/// Trap cb172668: the server has queued the farewell reply when the socket
/// breaks; the client reconnects (same term, FAREWELL flag) and the state
/// moved onto the new socket must carry the reply, delivered exactly once.
/// Expiry of a farewell state is not a fence.
#[test]
fn net_cb172668_farewell_reply_queued_when_state_moves() {
    let mut p = Pair::new(5);
    let (sock1, _, _) = p.connect();
    p.client.set_farewell(true);
    let mut out = Vec::new();
    let id = p.client.request(Cmd::Farewell, vec![], &mut out);
    let reqs = requests(&p.deliver_to_server(sock1, &out));
    let mut lost = Vec::new();
    p.server.respond(RID, reqs[0].0, 0, vec![], &mut lost);
    p.break_sock(sock1);
    let (sock2, kind, c_out) = p.connect();
    assert_eq!(kind, GreetingKind::Reconnect);
    assert_eq!(responses(&c_out), vec![(id, Cmd::Farewell, 0, vec![])]);
    // The reply resent again on yet another socket is a duplicate.
    p.break_sock(sock2);
    let (_, _, c_out) = p.connect();
    assert!(responses(&c_out).is_empty(), "farewell delivered twice");
    // The client leaves; its state expires without a fence.
    let sock = p.client.sock().unwrap();
    p.break_sock(sock);
    let mut out = Vec::new();
    p.server.tick(p.now + RECONNECT_TIMEOUT, &mut out);
    assert_eq!(out, vec![Action::Forget { rid: RID }]);
    // Reconnecting for a farewell after the state is gone is still accepted.
    let (_, kind, _) = p.connect();
    assert_eq!(kind, GreetingKind::FarewellWithoutState);
}

/// Trap 20 (EEXIST on a resent first greeting): a client whose first
/// greeting reply was lost greets again with term 0; the server treats it
/// as first contact again, discards the half-made state (its requests fail
/// with ENOTCONN) and the client sees a new server.
#[test]
fn net_lost_first_greeting_reply_is_first_contact_again() {
    let mut p = Pair::new(5);
    let sock1 = SockId(100);
    let mut c_out = Vec::new();
    p.server.accepted(sock1);
    p.client.connected(sock1, &mut c_out);
    let mut s_out = p.deliver_to_server(sock1, &c_out);
    p.server.accept_greeting(sock1, &mut s_out);
    let sid = p
        .server
        .request(RID, Cmd::LockRecover, vec![], &mut s_out)
        .unwrap();
    p.break_sock(sock1); // reply and request lost
    let sock2 = SockId(101);
    let mut c_out = Vec::new();
    p.server.accepted(sock2);
    p.client.connected(sock2, &mut c_out);
    let mut s_out = p.deliver_to_server(sock2, &c_out);
    assert_eq!(
        p.server.accept_greeting(sock2, &mut s_out),
        Some(GreetingKind::FirstContact)
    );
    assert!(responses(&s_out).contains(&(sid, Cmd::LockRecover, libc::ENOTCONN, vec![])));
    let c_out = p.deliver_to_client(sock2, &s_out);
    assert!(c_out.contains(&Action::Greeted {
        server_term: 5,
        new_server: true
    }));
}
