//! The scoutfs engine.
//!
//! * [`format`]: every on-disk structure, byte for byte, with the checksums and
//!   hashes the original uses.
pub mod format;
