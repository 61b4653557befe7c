//! `.srch.` xattr search (reference §1.9, §7.3, §8.3): the files of
//! entries `(fnv1a64(name), ino, id)` that creating or deleting a `.srch.`
//! xattr logs, their rotation into `srch_root`, their compaction into
//! sorted files, and searches over them.
//!
//! * [`file`](mod@file): the on-disk files (read leaves, append with COW, free).
//! * [`server`]: the server's half: rotating a mount's log file into
//!   `srch_root`, handing out and committing compactions, cancelling a
//!   gone mount's compactions.
//! * [`compact`]: the mount's half of a compaction (merge inputs into a
//!   sorted output, drop pairs, free the inputs afterwards).
//! * [`search`]: a search over the files of one set of stable roots.
//!
//! The pairing rule everything relies on: an entry is logged once when its
//! xattr is created and once, identical, when it is deleted; inode numbers
//! and xattr ids are never reused, so an entry appears at most twice, and
//! a reader seeing it twice (in any files) treats it as gone.
//!
//! Touches `block`, `btree`, `alloc` and `format` only.

pub mod compact;
pub mod file;
pub mod search;
pub mod server;

use crate::format::key::{srch_type, zone};
use crate::format::Key;

/// A mount's log file is rotated into `srch_root` at a commit once it has
/// this many blocks (1 MiB), and always when its tree is finalized.
pub const LOG_ROTATE_BLOCKS: u64 = 16;
/// Files one compaction combines.
pub const COMPACT_NR: usize = crate::format::srch::SRCH_COMPACT_NR;
/// Sorted files of one tier have the same `fls64(blocks) / COMPACT_ORDER`.
pub const COMPACT_ORDER: u32 = 2;
/// Entries one search tracks before it narrows its range (§8.3).
pub const SEARCH_LIMIT: usize = 1_000_000;

/// `32/0/LOG/blkno`: a rotated log file.
pub fn log_key(blkno: u64) -> Key {
    Key::new(zone::SRCH, 0, srch_type::LOG, blkno, 0, 0)
}

/// `32/0/BLOCKS/blocks/blkno`: a sorted file.
pub fn blocks_key(blocks: u64, blkno: u64) -> Key {
    Key::new(zone::SRCH, 0, srch_type::BLOCKS, blocks, blkno, 0)
}

/// `32/0/PENDING/id`: a compaction waiting for a mount.
pub fn pending_key(id: u64) -> Key {
    Key::new(zone::SRCH, 0, srch_type::PENDING, id, 0, 0)
}

/// `32/0/BUSY/rid/id`: a compaction a mount is working on.
pub fn busy_key(rid: u64, id: u64) -> Key {
    Key::new(zone::SRCH, 0, srch_type::BUSY, rid, id, 0)
}

/// The tier of a sorted file of `blocks` blocks.
pub fn tier(blocks: u64) -> u32 {
    (64 - blocks.leading_zeros()) / COMPACT_ORDER
}
