//! The mount's side of the network: a [`ServerLink`] over a [`Conn`] and a
//! [`Transport`] (reference §5.1–§5.2).
//!
//! Guarantees:
//! * Calls may be made before the first connection and across reconnects:
//!   the connection queues each request until its response arrives and
//!   resends it on every new socket (handlers are replay-safe, §3.2).
//! * One task keeps a socket up: it asks `locate` where the server is,
//!   connects, greets (inline, by [`Conn`]) and, when the socket ends,
//!   tries again after a short, growing pause. The server may move
//!   (failover): `locate` is asked again before each attempt.
//! * Frames leave in the order the state machine produced them: one writer
//!   task per socket drains a channel.
//! * Requests from the server (lock invalidations, SYNC_LOG_TREES) go to
//!   the [`ServerRequests`] handler set with [`NetClient::set_handler`];
//!   without one they are answered EOPNOTSUPP.
//! * A greeting the server refuses (another volume, a rid it reclaimed)
//!   fails every call, queued or later, with the errno it gave.
//!
//! Touches `net` (the state machines), `link`, `runtime` and
//! [`super::transport`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use super::transport::{StreamReader, StreamWriter, Transport};
use super::wire_reply;
use crate::format::net::{Cmd, NetGreeting};
use crate::link::{CallFuture, CallResult, ServerLink};
use crate::lock::wire::answer_holding_nothing;
use crate::net::{Action, Conn, ReqRef, SockId};
use crate::runtime::{JoinHandle, Runtime};

/// First pause between connection attempts ...
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);
/// ... doubling up to this.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// Where the server is now (from the quorum blocks, or a fixed address).
pub type Locate =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send>> + Send + Sync>;

/// Answers the server's requests to this mount.
pub trait ServerRequests: Send + Sync + 'static {
    /// Handles one request: the reply payload or an errno.
    fn request(&self, cmd: Cmd, data: Vec<u8>) -> CallFuture;
}

/// Lock traffic, handed over in the order it arrived (§4.5: grants and
/// invalidations of one lock must be processed strictly in order).
#[derive(Debug)]
pub enum LockInbound {
    /// The response to a request sent with [`NetClient::send_lock_request`].
    Grant { errno: i32, data: Vec<u8> },
    /// A LOCK (invalidation) or LOCK_RECOVER request from the server;
    /// answer it with [`NetClient::respond`].
    Request {
        req: ReqRef,
        cmd: Cmd,
        data: Vec<u8>,
    },
}

/// Counters for tests and the status tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub connects: u64,
    pub greetings: u64,
    pub disconnects: u64,
}

struct State {
    conn: Conn,
    next_sock: u64,
    /// The socket being written, and its writer task's channel.
    writer: Option<(SockId, mpsc::UnboundedSender<Vec<u8>>)>,
    calls: BTreeMap<u64, oneshot::Sender<CallResult>>,
    refused: Option<i32>,
    stats: ClientStats,
    /// Sends a wake to the connection task when the socket ends.
    lost: Option<mpsc::UnboundedSender<SockId>>,
    /// Where lock traffic goes, and the ids of our lock requests.
    lock_sink: Option<mpsc::UnboundedSender<LockInbound>>,
    lock_ids: std::collections::BTreeSet<u64>,
}

struct Shared {
    rt: Runtime,
    st: Mutex<State>,
    handler: Mutex<Option<Arc<dyn ServerRequests>>>,
}

/// A mount's connection to the server.
pub struct NetClient {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl NetClient {
    /// Starts connecting to the server `locate` names, greeting with
    /// `greeting` (fsid, format version, rid, flags).
    pub fn start(
        rt: Runtime,
        transport: Arc<dyn Transport>,
        greeting: NetGreeting,
        locate: Locate,
    ) -> NetClient {
        let (lost_tx, lost_rx) = mpsc::unbounded();
        let shared = Arc::new(Shared {
            rt: rt.clone(),
            st: Mutex::new(State {
                conn: Conn::new_client(greeting),
                next_sock: 1,
                writer: None,
                calls: BTreeMap::new(),
                refused: None,
                stats: ClientStats::default(),
                lost: Some(lost_tx),
                lock_sink: None,
                lock_ids: std::collections::BTreeSet::new(),
            }),
            handler: Mutex::new(None),
        });
        let task = rt.spawn(connect_loop(
            Arc::downgrade(&shared),
            transport,
            locate,
            lost_rx,
        ));
        NetClient {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Sets the handler of the server's requests.
    pub fn set_handler(&self, handler: Arc<dyn ServerRequests>) {
        *self
            .shared
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Routes lock traffic to `sink`, in arrival order.
    pub fn set_lock_sink(&self, sink: mpsc::UnboundedSender<LockInbound>) {
        self.shared.lock().lock_sink = Some(sink);
    }

    /// Stops routing lock traffic (the lock client is going away): later
    /// LOCK and LOCK_RECOVER requests are answered as by a mount holding
    /// no locks.
    pub fn clear_lock_sink(&self) {
        self.shared.lock().lock_sink = None;
    }

    /// Answers a request the lock client will never see (it went away
    /// with the request still queued) as a mount holding no locks.
    pub fn answer_holding_nothing(&self, req: ReqRef, cmd: Cmd, data: &[u8]) {
        let (errno, payload) = wire_reply(answer_holding_nothing(cmd, data));
        self.respond(req, errno, payload);
    }

    /// Sends a LOCK request whose response goes to the lock sink.
    pub fn send_lock_request(&self, payload: Vec<u8>) -> Result<(), i32> {
        let mut st = self.shared.lock();
        if let Some(e) = st.refused {
            return Err(e);
        }
        let mut out = Vec::new();
        let id = st.conn.request(Cmd::Lock, payload, &mut out);
        st.lock_ids.insert(id);
        self.shared.apply(&mut st, out);
        Ok(())
    }

    /// Answers a server request delivered to the lock sink.
    pub fn respond(&self, req: ReqRef, errno: i32, payload: Vec<u8>) {
        let mut out = Vec::new();
        let mut st = self.shared.lock();
        st.conn.respond(req, errno, payload, &mut out);
        self.shared.apply(&mut st, out);
    }

    /// Sets the FAREWELL flag of later greetings (an unmount in progress:
    /// a server that lost our state still takes the farewell).
    pub fn set_farewell(&self, on: bool) {
        self.shared.lock().conn.set_farewell(on);
    }

    /// Whether a socket is up and greeted.
    pub fn is_ready(&self) -> bool {
        self.shared.lock().conn.is_ready()
    }

    pub fn stats(&self) -> ClientStats {
        self.shared.lock().stats
    }

    /// Drops the current socket as if the network failed (tests; the
    /// reconnect path).
    pub fn drop_socket(&self) {
        let mut out = Vec::new();
        let mut st = self.shared.lock();
        st.conn.close(&mut out, "dropped on request");
        self.shared.apply(&mut st, out);
    }

    /// Stops connecting and fails every call still waiting with ENOTCONN.
    pub fn stop(&self) {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut out = Vec::new();
        let mut st = self.shared.lock();
        st.conn.close(&mut out, "client stopped");
        st.refused.get_or_insert(libc::ENOTCONN);
        self.shared.apply(&mut st, out);
        for (_, tx) in std::mem::take(&mut st.calls) {
            let _ = tx.send(Err(libc::ENOTCONN));
        }
    }
}

impl Drop for NetClient {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ServerLink for NetClient {
    fn call(&self, cmd: Cmd, payload: Vec<u8>) -> CallFuture {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if let Some(e) = st.refused {
                return Box::pin(async move { Err(e) });
            }
            if payload.len() > crate::format::net::NET_MAX_DATA_BYTES {
                return Box::pin(async { Err(libc::EINVAL) });
            }
            let mut out = Vec::new();
            let id = st.conn.request(cmd, payload, &mut out);
            st.calls.insert(id, tx);
            self.shared.apply(&mut st, out);
        }
        Box::pin(async move { rx.await.unwrap_or(Err(libc::ENOTCONN)) })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out the state machine's actions, in order.
    fn apply(self: &Arc<Self>, st: &mut State, out: Vec<Action>) {
        for a in out {
            match a {
                Action::Send { sock, bytes } => {
                    if let Some((s, tx)) = &st.writer {
                        if *s == sock {
                            let _ = tx.unbounded_send(bytes);
                        }
                    }
                }
                Action::Close { sock, .. } => {
                    if st.writer.as_ref().is_some_and(|(s, _)| *s == sock) {
                        // Dropping the channel ends the writer task, which
                        // shuts the socket down and so ends the reader.
                        st.writer = None;
                    }
                    st.conn.disconnected(sock);
                    if let Some(lost) = &st.lost {
                        let _ = lost.unbounded_send(sock);
                    }
                }
                Action::Response {
                    id, errno, data, ..
                } => {
                    if st.lock_ids.remove(&id) {
                        if let Some(sink) = &st.lock_sink {
                            let _ = sink.unbounded_send(LockInbound::Grant { errno, data });
                        }
                    } else if let Some(tx) = st.calls.remove(&id) {
                        let _ = tx.send(if errno == 0 { Ok(data) } else { Err(errno) });
                    }
                }
                Action::Request { req, cmd, data, .. } => match cmd {
                    Cmd::Lock | Cmd::LockRecover => {
                        let unrouted = match &st.lock_sink {
                            Some(sink) => sink
                                .unbounded_send(LockInbound::Request { req, cmd, data })
                                .err()
                                .map(|e| e.into_inner()),
                            None => Some(LockInbound::Request { req, cmd, data }),
                        };
                        if let Some(LockInbound::Request { req, cmd, data }) = unrouted {
                            // No lock client: this mount holds nothing.
                            let (errno, payload) = wire_reply(answer_holding_nothing(cmd, &data));
                            let mut more = Vec::new();
                            st.conn.respond(req, errno, payload, &mut more);
                            self.apply(st, more);
                        }
                    }
                    _ => self.serve_request(req, cmd, data),
                },
                Action::Greeted { .. } => st.stats.greetings += 1,
                Action::GreetingFailed { errno } => {
                    let e = if errno == 0 { libc::EIO } else { errno };
                    st.refused = Some(e);
                    for (_, tx) in std::mem::take(&mut st.calls) {
                        let _ = tx.send(Err(e));
                    }
                }
                // Server-side actions never come from a client connection.
                Action::Greeting { .. }
                | Action::Timer { .. }
                | Action::Fence { .. }
                | Action::Forget { .. } => {}
            }
        }
    }

    fn serve_request(self: &Arc<Self>, req: ReqRef, cmd: Cmd, data: Vec<u8>) {
        let handler = self
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let weak = Arc::downgrade(self);
        self.rt
            .spawn(async move {
                let res = match handler {
                    Some(h) => h.request(cmd, data).await,
                    None => Err(libc::EOPNOTSUPP),
                };
                let Some(me) = weak.upgrade() else {
                    return;
                };
                let (errno, payload) = wire_reply(res);
                let mut out = Vec::new();
                let mut st = me.lock();
                st.conn.respond(req, errno, payload, &mut out);
                me.apply(&mut st, out);
            })
            .detach();
    }
}

async fn connect_loop(
    weak: Weak<Shared>,
    transport: Arc<dyn Transport>,
    locate: Locate,
    mut lost: mpsc::UnboundedReceiver<SockId>,
) {
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let Some(rt) = weak.upgrade().map(|s| s.rt.clone()) else {
            return;
        };
        let stream = match locate().await {
            Some(addr) => transport.connect(addr).await.ok(),
            None => None,
        };
        let Some(stream) = stream else {
            rt.sleep(delay).await;
            delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            continue;
        };
        let Some(shared) = weak.upgrade() else {
            stream.writer.shutdown();
            return;
        };
        let sock = {
            let mut st = shared.lock();
            if st.refused.is_some() {
                stream.writer.shutdown();
                return;
            }
            let sock = SockId(st.next_sock);
            st.next_sock += 1;
            st.stats.connects += 1;
            let (tx, rx) = mpsc::unbounded();
            st.writer = Some((sock, tx));
            rt.spawn(write_loop(stream.writer, rx)).detach();
            rt.spawn(read_loop(weak.clone(), sock, stream.reader))
                .detach();
            let mut out = Vec::new();
            st.conn.connected(sock, &mut out);
            shared.apply(&mut st, out);
            sock
        };
        drop(shared);
        // Wait until this socket is gone.
        loop {
            match lost.next().await {
                Some(s) if s == sock => break,
                Some(_) => continue,
                None => return,
            }
        }
        if let Some(shared) = weak.upgrade() {
            shared.lock().stats.disconnects += 1;
        }
        // The server was there a moment ago: try again soon.
        delay = RECONNECT_DELAY_MIN;
        rt.sleep(delay).await;
    }
}

/// Writes each queued frame in order; shuts the socket down when the
/// channel closes or a write fails.
pub(crate) async fn write_loop(
    mut writer: Box<dyn StreamWriter>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(bytes) = rx.next().await {
        if writer.write(bytes).await.is_err() {
            break;
        }
    }
    writer.shutdown();
}

async fn read_loop(weak: Weak<Shared>, sock: SockId, mut reader: Box<dyn StreamReader>) {
    loop {
        let chunk = reader.read().await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut out = Vec::new();
        let mut st = shared.lock();
        match chunk {
            Ok(bytes) if !bytes.is_empty() => {
                st.conn.recv(sock, &bytes, &mut out);
                shared.apply(&mut st, out);
                if st.conn.sock() != Some(sock) {
                    return;
                }
            }
            _ => {
                if st.conn.sock() == Some(sock) {
                    st.conn.close(&mut out, "connection lost");
                    shared.apply(&mut st, out);
                }
                return;
            }
        }
    }
}
