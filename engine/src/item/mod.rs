//! The mount's item layer.
//!
//! * [`api`]: the `Items` and `Transactions` traits filesystem operations use.
//! * [`cache`]: the item cache (cached key ranges, negative caching, dirty
//!   items, the read/commit barrier) the mount implements them with.
pub mod api;
pub mod cache;

pub use api::{HoldGuard, ItemFuture, Items, Transactions};
pub use cache::ItemCache;
