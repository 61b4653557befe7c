//! Btree block layout: header, items with their AVL links, leaf hash table.
//!
//! Links are byte offsets relative to the `item_root` field (block offset
//! 32); 0 is null. Values are offsets from the block start.

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::DiskKey;
use super::{assert_layout, BlockHeader, LG_BLOCK_SIZE};

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
pub struct AvlNode {
    pub parent: U16,
    pub left: U16,
    pub right: U16,
    pub height: u8,
    pub pad: u8,
}
assert_layout!(AvlNode, 8, parent @ 0, left @ 2, right @ 4, height @ 6);

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
pub struct BtreeBlockHeader {
    pub hdr: BlockHeader,
    pub item_root: U16,
    pub nr_items: U16,
    pub total_item_bytes: U16,
    pub mid_free_len: U16,
    pub level: u8,
    pub pad: [u8; 7],
}
assert_layout!(BtreeBlockHeader, 48, hdr @ 0, item_root @ 32, nr_items @ 34,
    total_item_bytes @ 36, mid_free_len @ 38, level @ 40);

/// Item flag: this item is a deletion (tombstone) in a forest tree.
pub const ITEM_FLAG_DELETION: u8 = 0x1;

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
pub struct BtreeItem {
    pub node: AvlNode,
    pub key: DiskKey,
    pub seq: U64,
    pub val_off: U16,
    pub val_len: U16,
    pub flags: u8,
    pub pad: [u8; 3],
}
assert_layout!(BtreeItem, 56, node @ 0, key @ 8, seq @ 40, val_off @ 48, val_len @ 50, flags @ 52);

pub const BTREE_HEADER_BYTES: usize = std::mem::size_of::<BtreeBlockHeader>();
pub const BTREE_ITEM_BYTES: usize = std::mem::size_of::<BtreeItem>();
/// Links count from this block offset (the `item_root` field).
pub const AVL_LINK_BASE: usize = 32;
pub const LEAF_HASH_BUCKETS: usize = 1512;
pub const LEAF_HASH_BYTES: usize = LEAF_HASH_BUCKETS * 2;
/// Where a leaf's hash table starts; leaf values end here.
pub const LEAF_HASH_OFFSET: usize = LG_BLOCK_SIZE - LEAF_HASH_BYTES;
pub const PARENT_EMPTY_FREE: usize = LG_BLOCK_SIZE - BTREE_HEADER_BYTES;
pub const LEAF_EMPTY_FREE: usize = LEAF_HASH_OFFSET - BTREE_HEADER_BYTES;
/// A non-root block below this many item bytes joins a sibling.
pub const JOIN_LOW_WATER_BYTES: usize = (LG_BLOCK_SIZE - BTREE_HEADER_BYTES) / 4;

/// Bytes an item of `val_len` accounts for in `total_item_bytes`.
pub fn item_bytes(val_len: usize) -> usize {
    BTREE_ITEM_BYTES + val_len.next_multiple_of(8)
}

/// Home bucket of a key in a leaf's hash table.
pub fn leaf_hash_bucket(key: &DiskKey) -> usize {
    use zerocopy::IntoBytes;
    super::hash::fnv1a32(key.as_bytes()) as usize % LEAF_HASH_BUCKETS
}

/// Converts an item's block offset to the link value that points to it.
pub fn offset_to_link(off: usize) -> u16 {
    (off - AVL_LINK_BASE) as u16
}

pub fn link_to_offset(link: u16) -> Option<usize> {
    (link != 0).then_some(link as usize + AVL_LINK_BASE)
}
