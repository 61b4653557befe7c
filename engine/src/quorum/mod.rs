//! Quorum: electing the one mount that runs the server, and making sure no
//! earlier leader still serves when it starts (reference §6).
//!
//! * [`agent`]: the election of §6.2 as a sans-IO state machine. It takes
//!   events (datagrams, timer expiry, block I/O completions, server
//!   reports) and returns actions (datagrams, block reads and writes, timer,
//!   server start/stop). It owns no socket, clock, device or thread, and is
//!   deterministic given its inputs and seed.
//! * [`blocks`]: pure functions over the fifteen quorum blocks: encoding,
//!   the starting term, where clients find the server, and which earlier
//!   leaders a new leader must fence (§6.3).
//!
//! Guarantee (with fencing that kills what it fences before reporting
//! success, and quorum blocks on one linearizable device): at most one
//! server serves at any time. The deterministic simulation in
//! `engine/tests/quorum_sim.rs` checks this on every step.
//!
//! Touches only `format` (quorum block, election message, quorum config).

pub mod agent;
pub mod blocks;

pub use agent::{
    Action, Agent, AgentConfig, AgentError, ConfigError, Input, LogLevel, Role, ServerState,
};
pub use blocks::{
    decode_quorum_block, empty_blocks, encode_quorum_block, fence_requests, find_server,
    greatest_term, votes_needed, FenceReason, FenceRequest, QuorumBlocks, ServerLocation,
};
