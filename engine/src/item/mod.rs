//! The mount's item layer: the API filesystem operations use ([`api`]).
pub mod api;

pub use api::{HoldGuard, ItemFuture, Items, Transactions};
