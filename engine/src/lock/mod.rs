//! Cluster range locks: the lock client and the lock server (reference §4),
//! as sans-IO state machines.
//!
//! Locks are what make every mount see one consistent filesystem: before a
//! mount may read or write the items of a key range it must hold a mode on
//! that range, and before the server grants a conflicting mode elsewhere
//! the holder commits and drops its cache. Getting this wrong loses data
//! silently, and the original's history (§4.5, §11 traps 1–8) shows the
//! bugs live in interleavings: a second invalidation arriving mid-reply,
//! duplicates across a failover, a farewell racing recovery. So both sides
//! are plain structs driven by `handle(event) -> actions`, with no socket,
//! clock, thread or cache access, and `engine/tests/lock_sim.rs` drives a
//! server and several clients from a seed through those interleavings,
//! checking on every step that no two mounts' users ever hold incompatible
//! modes on one range.
//!
//! * [`mode`]: modes, local use, server compatibility (§4.1).
//! * [`names`]: lock names / key ranges and the acquisition order (§4.2).
//! * [`wire`]: LOCK and LOCK_RECOVER payloads and their validation.
//! * [`client`]: a mount's locks: users, requests, invalidations, LRU,
//!   recovery reports.
//! * [`server`]: grants, invalidations, per-lock FIFO, recovery after
//!   failover, clients leaving.
//!
//! The glue (net layer, item cache, transactions) performs the actions:
//! it sends [`ClientAction::Request`] as a LOCK request and feeds the
//! response back as [`ClientEvent::Grant`]; it feeds LOCK requests from
//! the server as [`ClientEvent::InvalidateRequest`] and sends the
//! [`ClientAction::InvalidateReply`] as their response; on the server side
//! the mirror image with [`ServerEvent`] and [`ServerAction`].
//!
//! Touches only `format` (keys, `NetLock`, LOCK_RECOVER layout).

pub mod client;
pub mod mode;
pub mod names;
pub mod server;
pub mod wire;

pub use client::{
    ClientAction, ClientEvent, LockClient, LockClientConfig, LockView, UserId,
    LOCK_IDLE_COUNT_DEFAULT, LOCK_IDLE_COUNT_MAX, LOCK_IDLE_COUNT_MIN,
};
pub use mode::{compatible, invalidation_mode, LockMode};
pub use names::{
    indx_lock, inode_lock, lock_order, orphan_lock, quota_lock, rename_lock, seq_index_lock,
    totl_lock, zone_lock, LockRange, LOCK_INODE_GROUP_NR, LOCK_MAX_INODES, LOCK_SEQ_GROUP_NR,
};
pub use server::{
    LockServer, ServerAction, ServerEvent, FENCE_REASON_CLIENT_RECOVERY, LOCK_RECOVERY_TIMEOUT,
};
pub use wire::LockMsg;
