//! Block header, block references and the checks every read goes through.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{assert_layout, hash::crc_block, read_struct, read_struct_mut, FormatError};

/// The 32-byte header at the start of every metadata block.
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
pub struct BlockHeader {
    pub crc: U32,
    pub magic: U32,
    pub fsid: U64,
    pub seq: U64,
    pub blkno: U64,
}
assert_layout!(BlockHeader, 32, crc @ 0, magic @ 4, fsid @ 8, seq @ 16, blkno @ 24);

/// A pointer to a block: where it is and which write of it we expect.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct BlockRef {
    pub blkno: U64,
    pub seq: U64,
}
assert_layout!(BlockRef, 16, blkno @ 0, seq @ 8);

impl BlockRef {
    pub fn new(blkno: u64, seq: u64) -> Self {
        Self {
            blkno: blkno.into(),
            seq: seq.into(),
        }
    }

    /// A zero blkno means "no block".
    pub fn is_null(&self) -> bool {
        self.blkno.get() == 0
    }
}

/// The checksum stored in a block of any size: it covers everything after
/// the crc field itself.
pub fn block_crc(block: &[u8]) -> u32 {
    crc_block(&block[4..])
}

/// Fills in header fields and the crc of a block about to be written.
pub fn seal_block(block: &mut [u8], magic: u32, fsid: u64, blkno: u64, seq: u64) {
    {
        let hdr: &mut BlockHeader = read_struct_mut(block).expect("block holds a header");
        hdr.magic = magic.into();
        hdr.fsid = fsid.into();
        hdr.blkno = blkno.into();
        hdr.seq = seq.into();
    }
    let crc = block_crc(block);
    let hdr: &mut BlockHeader = read_struct_mut(block).expect("block holds a header");
    hdr.crc = crc.into();
}

/// Verifies the crc of a block, whatever it holds.
pub fn check_crc(block: &[u8]) -> Result<&BlockHeader, FormatError> {
    let hdr: &BlockHeader = read_struct(block)?;
    let computed = block_crc(block);
    if hdr.crc.get() != computed {
        return Err(FormatError::Crc {
            stored: hdr.crc.get(),
            computed,
        });
    }
    Ok(hdr)
}

/// What a reader expects of a block it reaches.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub magic: u32,
    pub fsid: u64,
    pub blkno: u64,
    pub seq: u64,
}

/// The full check of a block read through a ref (reference §1.2): a bad crc
/// is corruption; a crc-valid block with the wrong magic, fsid, blkno or seq
/// was rewritten after the ref was taken, which is staleness.
pub fn check_block<'a>(block: &'a [u8], want: &Expect) -> Result<&'a BlockHeader, FormatError> {
    let hdr = check_crc(block)?;
    if hdr.magic.get() != want.magic {
        return Err(FormatError::Stale(format!(
            "blkno {} magic {:08x} expected {:08x}",
            want.blkno,
            hdr.magic.get(),
            want.magic
        )));
    }
    if hdr.fsid.get() != want.fsid {
        return Err(FormatError::Stale(format!(
            "blkno {} fsid {:x} expected {:x}",
            want.blkno,
            hdr.fsid.get(),
            want.fsid
        )));
    }
    if hdr.blkno.get() != want.blkno || hdr.seq.get() != want.seq {
        return Err(FormatError::Stale(format!(
            "blkno {} seq {:x} read blkno {} seq {:x}",
            want.blkno,
            want.seq,
            hdr.blkno.get(),
            hdr.seq.get()
        )));
    }
    Ok(hdr)
}

/// Checks a fixed-location block (super, quorum) whose header must name its
/// own location but whose seq is not known in advance.
pub fn check_fixed_block(
    block: &[u8],
    magic: u32,
    blkno: u64,
) -> Result<&BlockHeader, FormatError> {
    let hdr = check_crc(block)?;
    if hdr.magic.get() != magic {
        return Err(FormatError::Magic {
            expected: magic,
            got: hdr.magic.get(),
        });
    }
    if hdr.blkno.get() != blkno {
        return Err(FormatError::Corrupt(format!(
            "block at {blkno} claims blkno {}",
            hdr.blkno.get()
        )));
    }
    Ok(hdr)
}
