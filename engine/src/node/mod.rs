//! A node's runtime glue: the sans-IO state machines of [`crate::net`]
//! driven over real byte streams, so mounts reach their server across a
//! network.
//!
//! * [`transport`]: connecting, listening, reading and writing bytes (TCP in
//!   production).
//! * [`client`]: the mount's [`crate::link::ServerLink`] over the network,
//!   reconnecting and resending.
//! * [`serve`]: the server answering mounts.
//! * [`farewell`]: which unmounting quorum members the server lets go.
//! * [`quorum`]: the election agent's thread (UDP and quorum blocks).
//! * [`fence`]: the local fence action (a flock per rid).
//! * [`fence_requests`]: fence requests as a sans-IO state machine.
//! * [`fencer`]: a node's fence requests, answered by an agent or the
//!   local fence.
//! * [`locks`]: a mount's cluster locks over its connection.
//! * [`member`]: a whole node: agent, the server it starts when elected,
//!   and its mount's link.

pub mod client;
pub mod farewell;
pub mod fence;
pub mod fence_requests;
pub mod fencer;
pub mod fs_locks;
pub mod locks;
pub mod member;
pub mod open_map;
pub mod quorum;
pub mod serve;
pub mod transport;

pub use client::{NetClient, ServerRequests};
pub use member::{Node, NodeConfig, NodeStatus};
pub use serve::NetServer;
pub use transport::{TcpTransport, Transport};

/// A handler's result as a response frame carries it: (errno, payload).
pub(crate) fn wire_reply(res: crate::link::CallResult) -> (i32, Vec<u8>) {
    match res {
        Ok(p) => (0, p),
        Err(e) => (e, Vec::new()),
    }
}
