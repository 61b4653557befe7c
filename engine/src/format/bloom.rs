//! Per-log-tree bloom filter block, keyed by cluster lock start keys.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::hash::fnv1a64;
use super::{assert_layout, BlockHeader, Key, LG_BLOCK_SIZE};

pub const BLOOM_BITS: u64 = 523_968;
pub const BLOOM_BIT_BYTES: usize = (BLOOM_BITS / 8) as usize;
pub const BLOOM_NR_HASHES: usize = 3;
const BLOOM_HASH_SHIFT: u32 = 19;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct BloomBlock {
    pub hdr: BlockHeader,
    pub total_set: U64,
    pub bits: [u8; BLOOM_BIT_BYTES],
}
assert_layout!(BloomBlock, LG_BLOCK_SIZE, hdr @ 0, total_set @ 32, bits @ 40);

/// The three bit numbers a lock start key sets.
pub fn bloom_bits(lock_start: &Key) -> [u64; BLOOM_NR_HASHES] {
    let h = fnv1a64(&lock_start.to_bytes());
    std::array::from_fn(|i| (h >> (BLOOM_HASH_SHIFT * i as u32)) as u32 as u64 % BLOOM_BITS)
}

impl BloomBlock {
    /// Little-endian bit numbering: bit n is byte n/8, bit n%8.
    pub fn test_bit(&self, nr: u64) -> bool {
        self.bits[(nr / 8) as usize] & (1 << (nr % 8)) != 0
    }

    /// Sets a bit, counting it in `total_set` when it was clear.
    pub fn set_bit(&mut self, nr: u64) {
        if !self.test_bit(nr) {
            self.bits[(nr / 8) as usize] |= 1 << (nr % 8);
            self.total_set = (self.total_set.get() + 1).into();
        }
    }

    pub fn may_contain(&self, lock_start: &Key) -> bool {
        bloom_bits(lock_start).iter().all(|&b| self.test_bit(b))
    }
}
