//! Network messaging between mounts and the server (reference §5.1–§5.2),
//! as sans-IO state machines: bytes and events in, [`Action`]s out. No
//! sockets, clocks or threads here; the runtime glue moves bytes and reads
//! the clock, so a simulation replays any run exactly.
//!
//! * [`framer`]: received byte chunks → validated messages, or a verdict to
//!   drop the connection; never buffers more than one frame.
//! * [`conn`]: the reliable layer of one logical connection (seq, recv_seq,
//!   resend and ack queues, greeting order, new-server reset).
//! * [`server`]: the server's accepted sockets and per-rid states (greeting
//!   decisions, same-term reconnect, 20 s expiry and fencing).
//! * [`greeting`]: the greeting checks.
//! * [`sim`]: a deterministic, seeded TCP-like network for tests and the
//!   engine's simulation.
//!
//! Touches `format::net` and nothing else of the engine.

use std::time::Duration;

use crate::format::net::{Cmd, NetGreeting};

pub mod conn;
pub mod framer;
pub mod greeting;
pub mod server;
pub mod sim;

pub use conn::{Conn, Role};
pub use framer::{DropReason, Framer, Msg, MAX_FRAME_BYTES};
pub use greeting::{check_greeting, check_greeting_reply, GreetingError};
pub use server::{GreetingKind, ServerNet};

/// How long the server keeps a disconnected client's state before fencing it.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The fence reason reported when a client's state expires.
pub const FENCE_REASON_CLIENT_RECONNECT: &str = "client_reconnect";

/// A socket, named by whoever owns the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockId(pub u64);

/// Names a delivered peer request so that it can be answered; stale once
/// the session it came from has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqRef {
    pub session: u64,
    pub id: u64,
}

/// What the state machines ask of their driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the socket.
    Send { sock: SockId, bytes: Vec<u8> },
    /// Close the socket; nothing more will be sent or read on it.
    Close { sock: SockId, reason: String },
    /// A request from the peer (`rid`: the client's on the server, our own on
    /// a client); answer it with `respond(req, …)`.
    Request {
        rid: u64,
        req: ReqRef,
        cmd: Cmd,
        data: Vec<u8>,
    },
    /// The response to our request `id`, delivered exactly once.
    Response {
        rid: u64,
        id: u64,
        cmd: Cmd,
        errno: i32,
        data: Vec<u8>,
    },
    /// Client: the greeting exchange finished; `new_server` when the term
    /// differs from the last server's.
    Greeted { server_term: u64, new_server: bool },
    /// Client: the server refused the greeting or replied with a bad one.
    GreetingFailed { errno: i32 },
    /// Server: a greeting request waits on `sock` for a decision.
    Greeting { sock: SockId, greeting: NetGreeting },
    /// Server: call `tick` at or after `deadline`.
    Timer { deadline: Duration },
    /// Server: the client's state expired; fence it.
    Fence { rid: u64, reason: &'static str },
    /// Server: the state of a client that said farewell expired.
    Forget { rid: u64 },
}
