//! The checksums and hashes baked into the format.
//!
//! * [`crc_block`]: CRC-32C with the register seeded to all ones and **no**
//!   final inversion (the complement of textbook CRC-32C). It checksums blocks,
//!   quorum messages, and xattr names.
//! * FNV-1a 32 (dirent names, leaf hash table) and 64 (bloom bits, srch
//!   entries, quota rule hashes).
//! * The dirent fingerprint that orders directory entries by name prefix.

/// CRC-32C as the original computes it: seed !0, no final xor.
pub fn crc_block(bytes: &[u8]) -> u32 {
    // The crc32c crate implements the textbook form (seed 0 presented as
    // pre- and post-inverted). Its value is the complement of ours.
    !crc32c::crc32c(bytes)
}

/// The xattr item's `name_hash`: the same CRC over the name bytes.
pub fn xattr_name_hash(name: &[u8]) -> u64 {
    crc_block(name) as u64
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV32_OFFSET, |h, &b| {
        (h ^ b as u32).wrapping_mul(FNV32_PRIME)
    })
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET, |h, &b| {
        (h ^ b as u64).wrapping_mul(FNV64_PRIME)
    })
}

/// 32 bits sampled evenly from the name, most significant first, so that
/// entries with equal FNV hashes still sort roughly by name.
pub fn dirent_fingerprint(name: &[u8]) -> u32 {
    let total_bits = name.len() * 8;
    let stride = (total_bits / 32).max(1);
    let mut fp = 0u32;
    for k in 0..32usize {
        let bit = k * stride;
        if bit >= total_bits {
            break;
        }
        let set = name[bit / 8] & (0x80 >> (bit % 8)) != 0;
        if set {
            fp |= 1 << (31 - k);
        }
    }
    fp
}

/// The dirent and readdir keys' `name_hash`.
pub fn dirent_name_hash(name: &[u8]) -> u64 {
    ((dirent_fingerprint(name) as u64) << 32) | fnv1a32(name) as u64
}

/// Zig-zag encoding used by srch entry deltas.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
