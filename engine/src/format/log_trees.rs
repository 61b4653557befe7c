//! Per-mount log tree descriptors and log-merge bookkeeping items.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::srch::SrchFile;
use super::superblock::{AllocListHead, AllocRoot, BtreeRoot};
use super::{assert_layout, key::DiskKey, BlockRef};

/// Words in the per-mount data allocation zone bitmap (1024 bits).
pub const DATA_ALLOC_ZONE_WORDS: usize = 16;
pub const DATA_ALLOC_MAX_ZONES: usize = DATA_ALLOC_ZONE_WORDS * 64;
pub const LOG_TREES_FLAG_FINALIZED: u64 = 0x1;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogTrees {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub item_root: BtreeRoot,
    pub bloom_ref: BlockRef,
    pub data_avail: AllocRoot,
    pub data_freed: AllocRoot,
    pub srch_file: SrchFile,
    pub data_alloc_zone_blocks: U64,
    pub data_alloc_zones: [U64; DATA_ALLOC_ZONE_WORDS],
    pub inode_count_delta: U64,
    pub get_trans_seq: U64,
    pub commit_trans_seq: U64,
    pub max_item_seq: U64,
    pub finalize_seq: U64,
    pub rid: U64,
    pub nr: U64,
    pub flags: U64,
}
assert_layout!(LogTrees, 472, meta_avail @ 0, meta_freed @ 32, item_root @ 64, bloom_ref @ 88,
    data_avail @ 104, data_freed @ 144, srch_file @ 184, data_alloc_zone_blocks @ 272,
    data_alloc_zones @ 280, inode_count_delta @ 408, get_trans_seq @ 416,
    commit_trans_seq @ 424, max_item_seq @ 432, finalize_seq @ 440, rid @ 448, nr @ 456,
    flags @ 464);

/// `44/0`: the running merge.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogMergeStatus {
    pub next_range_key: DiskKey,
    pub nr_requests: U64,
    pub nr_complete: U64,
    pub seq: U64,
}
assert_layout!(LogMergeStatus, 56);

/// `48/..`: a key range still to merge.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogMergeRange {
    pub start: DiskKey,
    pub end: DiskKey,
}
assert_layout!(LogMergeRange, 64);

pub const LOG_MERGE_REQUEST_FLAG_SUBTREE: u64 = 0x1;

/// `52/rid/0/seq`: work handed to a mount.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogMergeRequest {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub logs_root: BtreeRoot,
    pub root: BtreeRoot,
    pub start: DiskKey,
    pub end: DiskKey,
    pub input_seq: U64,
    pub rid: U64,
    pub seq: U64,
    pub flags: U64,
}
assert_layout!(LogMergeRequest, 208);

pub const LOG_MERGE_COMP_FLAG_REMAIN: u64 = 0x1;
pub const LOG_MERGE_COMP_FLAG_ERROR: u64 = 0x2;

/// `56/seq`: a finished request waiting to be spliced.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogMergeComplete {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub root: BtreeRoot,
    pub start: DiskKey,
    pub end: DiskKey,
    pub remain: DiskKey,
    pub rid: U64,
    pub seq: U64,
    pub flags: U64,
}
assert_layout!(LogMergeComplete, 208);

/// `60/seq`: a merged input tree being freed in the background.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LogMergeFreeing {
    pub root: BtreeRoot,
    pub key: DiskKey,
    pub seq: U64,
}
assert_layout!(LogMergeFreeing, 64);
