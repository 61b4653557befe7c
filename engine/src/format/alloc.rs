//! Allocator structures: list blocks and free-extent item keys.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::{zone, Key};
use super::{assert_layout, BlockHeader, BlockRef, FormatError, LG_BLOCK_SIZE};

/// Block numbers one list block holds.
pub const ALLOC_LIST_MAX_BLKNOS: usize = 8185;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct AllocListBlock {
    pub hdr: BlockHeader,
    pub next: BlockRef,
    pub start: U32,
    pub nr: U32,
    pub blknos: [U64; ALLOC_LIST_MAX_BLKNOS],
}
assert_layout!(AllocListBlock, LG_BLOCK_SIZE, hdr @ 0, next @ 32, start @ 48, nr @ 52, blknos @ 56);

impl AllocListBlock {
    /// The live entries, or an error if start/nr point outside the array.
    pub fn live(&self) -> Result<&[U64], FormatError> {
        let start = self.start.get() as usize;
        let nr = self.nr.get() as usize;
        match start.checked_add(nr) {
            Some(end) if end <= ALLOC_LIST_MAX_BLKNOS => Ok(&self.blknos[start..end]),
            _ => Err(FormatError::Corrupt(format!(
                "alloc list start {start} nr {nr} exceeds {ALLOC_LIST_MAX_BLKNOS}"
            ))),
        }
    }
}

/// `floor(log8(len))`: extents of equal order share an order-index bucket.
pub fn extent_order(len: u64) -> u64 {
    debug_assert!(len > 0);
    (63 - len.max(1).leading_zeros() as u64) / 3
}

/// The by-position key of a free extent `[start, start+len)`.
pub fn free_blkno_key(start: u64, len: u64) -> Key {
    Key::new(zone::FREE_EXTENT_BLKNO, start + len - 1, 0, len, 0, 0)
}

/// The by-order key: largest orders sort first.
pub fn free_order_key(start: u64, len: u64) -> Key {
    Key::new(
        zone::FREE_EXTENT_ORDER,
        u64::MAX - extent_order(len),
        0,
        start + len - 1,
        len,
        0,
    )
}

/// A free extent decoded from either of its keys: (start, len).
pub fn free_extent_from_key(key: &Key) -> Option<(u64, u64)> {
    let (last, len) = match key.zone {
        zone::FREE_EXTENT_BLKNO => (key.first, key.second),
        zone::FREE_EXTENT_ORDER => (key.second, key.third),
        _ => return None,
    };
    if len == 0 || len - 1 > last {
        return None;
    }
    Some((last - len + 1, len))
}
