//! Metadata and data block allocators (reference §1.7).
//!
//! * [`list`]: the list allocator a transaction allocates metadata from. It
//!   takes blknos from an `avail` list and records every free in a `freed`
//!   list; a block freed in a transaction is never handed out again before
//!   that transaction commits, because frees never go back to `avail`. The
//!   list blocks themselves are COWed with blocks from `avail` and their old
//!   copies recorded in `freed`. It implements `btree::MetaAllocator`.
//! * [`extent`]: the free-extent allocator over an `AllocRoot` btree: two
//!   value-less items per free extent (by position and by order), allocation
//!   from the front of the largest extent, merging frees, exact `total_len`.
//! * Moving blknos between the two (the server's fill and drain):
//!   [`list::move_to_list`] and [`list::empty_list_into_extents`].
//!
//! Touches `block` (cache), `btree` and `format`.

pub mod extent;
pub mod list;

pub use extent::{alloc_extent, check_extents, free_extent, set_low_flag, ExtentCheck};
pub use list::{empty_list_into_extents, list_blknos, move_to_list, ListAlloc};
