//! A node's runtime glue: the sans-IO state machines of [`crate::net`]
//! driven over real byte streams, so mounts reach their server across a
//! network.
//!
//! * [`transport`]: connecting, listening, reading and writing bytes (TCP in
//!   production).
//! * [`client`]: the mount's [`crate::link::ServerLink`] over the network,
//!   reconnecting and resending.
//! * [`serve`]: the server answering mounts.
//! * [`quorum`]: the election agent's thread (UDP and quorum blocks).
//! * [`fence`]: the local fence action (a flock per rid).
//! * [`member`]: a whole node: agent, the server it starts when elected,
//!   and its mount's link.

pub mod client;
pub mod fence;
pub mod member;
pub mod quorum;
pub mod serve;
pub mod transport;

pub use client::{NetClient, ServerRequests};
pub use member::{Node, NodeConfig, NodeStatus};
pub use serve::NetServer;
pub use transport::{TcpTransport, Transport};
