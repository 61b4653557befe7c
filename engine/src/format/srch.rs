//! srch files: sorted or append-only runs of `.srch.` xattr entries.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::hash::{unzigzag, zigzag};
use super::superblock::AllocListHead;
use super::{assert_layout, BlockHeader, BlockRef, FormatError, LG_BLOCK_SIZE};

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct SrchEntry {
    pub hash: U64,
    pub ino: U64,
    pub id: U64,
}
assert_layout!(SrchEntry, 24);

impl SrchEntry {
    pub fn new(hash: u64, ino: u64, id: u64) -> Self {
        SrchEntry {
            hash: hash.into(),
            ino: ino.into(),
            id: id.into(),
        }
    }

    fn fields(&self) -> [u64; 3] {
        [self.hash.get(), self.ino.get(), self.id.get()]
    }
}

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
pub struct SrchFile {
    pub first: SrchEntry,
    pub last: SrchEntry,
    pub ref_: BlockRef,
    pub blocks: U64,
    pub entries: U64,
    pub height: u8,
    pub pad: [u8; 7],
}
assert_layout!(SrchFile, 88, first @ 0, last @ 24, ref_ @ 48, blocks @ 64, entries @ 72, height @ 80);

pub const SRCH_PARENT_REFS: usize = 4094;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SrchParent {
    pub hdr: BlockHeader,
    pub refs: [BlockRef; SRCH_PARENT_REFS],
}
assert_layout!(SrchParent, LG_BLOCK_SIZE);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SrchBlockHeader {
    pub hdr: BlockHeader,
    pub first: SrchEntry,
    pub last: SrchEntry,
    pub tail: SrchEntry,
    pub entry_nr: U32,
    pub entry_bytes: U32,
}
assert_layout!(SrchBlockHeader, 112, entry_nr @ 104, entry_bytes @ 108);

pub const SRCH_BLOCK_DATA_BYTES: usize = LG_BLOCK_SIZE - 112;
/// Appending stops past this many encoded bytes: decoding reads whole u64s.
pub const SRCH_BLOCK_SAFE_BYTES: usize = 65398;
/// Largest encoding of one entry: the u16 of lengths plus three u64s.
pub const SRCH_ENTRY_MAX_BYTES: usize = 2 + 3 * 8;

pub const SRCH_COMPACT_FLAG_LOG: u8 = 1;
pub const SRCH_COMPACT_FLAG_SORTED: u8 = 2;
pub const SRCH_COMPACT_FLAG_DELETE: u8 = 4;
pub const SRCH_COMPACT_FLAG_DONE: u8 = 16;
pub const SRCH_COMPACT_FLAG_ERROR: u8 = 32;
pub const SRCH_COMPACT_NR: usize = 4;

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
pub struct SrchCompactInput {
    pub sfl: SrchFile,
    pub blk: U64,
    pub pos: U64,
}
assert_layout!(SrchCompactInput, 104);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SrchCompact {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub id: U64,
    pub nr: u8,
    pub flags: u8,
    pub pad: [u8; 6],
    pub out: SrchFile,
    pub inputs: [SrchCompactInput; SRCH_COMPACT_NR],
}
assert_layout!(SrchCompact, 584, id @ 64, nr @ 72, flags @ 73, out @ 80, inputs @ 168);

fn significant_bytes(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(8)
}

/// Appends the delta encoding of `entry` against `prev` to `out`: a u16 of
/// three 4-bit byte counts, then the three zig-zag diffs in that many bytes.
pub fn encode_entry(out: &mut Vec<u8>, prev: &SrchEntry, entry: &SrchEntry) {
    let diffs: [u64; 3] =
        std::array::from_fn(|i| zigzag(entry.fields()[i].wrapping_sub(prev.fields()[i]) as i64));
    let lens: [usize; 3] = diffs.map(significant_bytes);
    let header = (lens[0] | (lens[1] << 4) | (lens[2] << 8)) as u16;
    out.extend_from_slice(&header.to_le_bytes());
    for (d, l) in diffs.iter().zip(lens) {
        out.extend_from_slice(&d.to_le_bytes()[..l]);
    }
}

/// Decodes one entry at the front of `bytes`, returning it and its length.
pub fn decode_entry(bytes: &[u8], prev: &SrchEntry) -> Result<(SrchEntry, usize), FormatError> {
    let short = || FormatError::Corrupt("truncated srch entry".into());
    let header = u16::from_le_bytes(bytes.get(..2).ok_or_else(short)?.try_into().unwrap());
    let mut pos = 2;
    let mut fields = prev.fields();
    for (i, field) in fields.iter_mut().enumerate() {
        let len = ((header >> (4 * i)) & 0xf) as usize;
        if len > 8 {
            return Err(FormatError::Corrupt(format!(
                "srch entry field of {len} bytes"
            )));
        }
        let mut raw = [0u8; 8];
        raw[..len].copy_from_slice(bytes.get(pos..pos + len).ok_or_else(short)?);
        pos += len;
        *field = field.wrapping_add(unzigzag(u64::from_le_bytes(raw)) as u64);
    }
    if header >> 12 != 0 {
        return Err(FormatError::Corrupt(format!(
            "srch entry header {header:04x}"
        )));
    }
    Ok((SrchEntry::new(fields[0], fields[1], fields[2]), pos))
}
