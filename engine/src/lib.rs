//! The scoutfs engine.
//!
//! * [`format`]: every on-disk structure, byte for byte, with the checksums and
//!   hashes the original uses.
//! * [`runtime`]: the executor and the deterministic simulation runtime.
pub mod format;
pub mod runtime;
