//! Quorum blocks: one small block per slot recording election events.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{assert_layout, BlockHeader};

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct Timespec {
    pub sec: U64,
    pub nsec: U32,
    pub pad: [u8; 4],
}
assert_layout!(Timespec, 16);

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct QuorumEvent {
    pub write_nr: U64,
    pub rid: U64,
    pub term: U64,
    pub ts: Timespec,
}
assert_layout!(QuorumEvent, 40);

pub const QUORUM_EVENT_BEGIN: usize = 0;
pub const QUORUM_EVENT_TERM: usize = 1;
pub const QUORUM_EVENT_ELECT: usize = 2;
pub const QUORUM_EVENT_FENCE: usize = 3;
pub const QUORUM_EVENT_STOP: usize = 4;
pub const QUORUM_EVENT_END: usize = 5;
pub const QUORUM_EVENT_NR: usize = 6;
pub const QUORUM_EVENT_NAMES: [&str; QUORUM_EVENT_NR] =
    ["begin", "term", "elect", "fence", "stop", "end"];

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct QuorumBlock {
    pub hdr: BlockHeader,
    pub write_nr: U64,
    pub events: [QuorumEvent; QUORUM_EVENT_NR],
}
assert_layout!(QuorumBlock, 280, hdr @ 0, write_nr @ 32, events @ 40);
