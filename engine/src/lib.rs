//! The scoutfs engine.
//!
//! * [`format`]: every on-disk and on-wire structure, byte for byte, with the
//!   checksums and hashes the original uses.
//! * [`runtime`]: the production executor and the deterministic simulation.
//! * [`block`]: the metadata block cache with copy-on-write.
//! * [`btree`]: the COW btree over that cache.
//! * [`alloc`]: list allocators and free-extent trees.
//! * [`check`]: the offline volume checker behind `scoutfs check`.
//! * [`mkfs`]: formatting a new volume (the blocks `scoutfs mkfs` writes).
//! * [`net`]: framing and reliable delivery across reconnects (sans-IO).
//! * [`quorum`]: the leader election (sans-IO).
//! * [`link`]: the mount ⇄ server request seam.
//! * [`item`]: the item API filesystem operations use.
//! * [`forest`]: reads merged across fs_root and the log trees.
//! * [`trans`]: the mount's transactions and its `Mount` handle.
//! * [`fs`]: filesystem operations (inodes, directories, xattrs, data) over that API.
//! * [`server`]: the server: supers, commits, allocators, request handlers.
//! * [`merge`]: log tree finalization, merge and splice.
//! * [`srch`]: `.srch.` xattr search: srch files, log rotation, compaction.
//! * [`lock`]: cluster range locks, client and server (sans-IO).
//! * [`node`]: the network glue: mounts and the server over TCP.
pub mod alloc;
pub mod block;
pub mod btree;
pub mod check;
pub mod forest;
pub mod format;
pub mod fs;
pub mod item;
pub mod link;
pub mod lock;
pub mod merge;
pub mod mkfs;
pub mod net;
pub mod node;
pub mod quorum;
pub mod runtime;
pub mod server;
pub mod srch;
pub mod trans;
pub mod weak;
