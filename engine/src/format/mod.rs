//! The scoutfs on-disk format, versions 1 and 2, byte for byte.
//!
//! Every structure is a `#[repr(C)]` zerocopy type with little-endian fields;
//! sizes and field offsets are asserted at compile time against the layout of
//! the original `format.h` (scoutfs-reference.md §1). Decoding never trusts the
//! bytes: callers go through [`block::check_block`] or the `decode` helpers,
//! which return [`FormatError`] instead of panicking on short or hostile input.
//!
//! This module is pure data and arithmetic: no I/O, no allocation policy.

pub mod alloc;
pub mod block;
pub mod bloom;
pub mod btree;
pub mod btree_block;
pub mod fuzzing;
pub mod hash;
pub mod items;
pub mod key;
pub mod log_trees;
pub mod net;
pub mod quorum;
pub mod srch;
pub mod superblock;

pub use block::{BlockHeader, BlockRef};
pub use key::Key;

/// Lowest and highest format versions this implementation reads and writes.
pub const FORMAT_VERSION_MIN: u64 = 1;
pub const FORMAT_VERSION_MAX: u64 = 2;
/// Format version that added retention, project ids, quotas and `.indx.`.
pub const FORMAT_VERSION_V2: u64 = 2;

pub const SM_BLOCK_SHIFT: u32 = 12;
pub const SM_BLOCK_SIZE: usize = 1 << SM_BLOCK_SHIFT;
pub const LG_BLOCK_SHIFT: u32 = 16;
pub const LG_BLOCK_SIZE: usize = 1 << LG_BLOCK_SHIFT;
/// Small blocks per large block.
pub const SM_PER_LG: u64 = 1 << (LG_BLOCK_SHIFT - SM_BLOCK_SHIFT);

/// Super block location, in small-block units on both devices.
pub const SUPER_BLKNO: u64 = 16;
/// First quorum block (small-block units) on the metadata device.
pub const QUORUM_BLKNO: u64 = 17;
pub const QUORUM_MAX_SLOTS: usize = 15;
/// First metadata block the allocator may hand out (large-block units).
pub const META_DEV_START_BLKNO: u64 = 2;
/// First data block the allocator may hand out (small-block units).
pub const DATA_DEV_START_BLKNO: u64 = 64;
/// mkfs refuses smaller devices unless told otherwise.
pub const MKFS_MIN_DEVICE_BYTES: u64 = 64 << 30;

pub const MAGIC_SUPER: u32 = 0x103c_428b;
pub const MAGIC_BTREE: u32 = 0xe597_f96d;
pub const MAGIC_BLOOM: u32 = 0x3199_5604;
pub const MAGIC_SRCH_BLOCK: u32 = 0x897e_4a7d;
pub const MAGIC_SRCH_PARENT: u32 = 0xb23a_2a05;
pub const MAGIC_ALLOC_LIST: u32 = 0x8a93_ac83;
pub const MAGIC_QUORUM: u32 = 0xbc31_0868;
/// statfs `f_type` of the original ("SCOU").
pub const STATFS_MAGIC: u32 = 0x554f_4353;

/// Largest item value.
pub const MAX_VAL_SIZE: usize = 896;
/// Deepest btree the original builds.
pub const BTREE_MAX_HEIGHT: u8 = 20;

/// Why bytes failed to decode. Reads through a ref distinguish `Stale` (the
/// block was legitimately rewritten: ESTALE) from corruption (EIO).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("buffer of {got} bytes, need {need}")]
    Short { need: usize, got: usize },
    #[error("bad crc: stored {stored:08x}, computed {computed:08x}")]
    Crc { stored: u32, computed: u32 },
    #[error("bad magic {got:08x}, expected {expected:08x}")]
    Magic { expected: u32, got: u32 },
    #[error("stale block: {0}")]
    Stale(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
}

impl FormatError {
    /// The errno a filesystem operation reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FormatError::Stale(_) => libc::ESTALE,
            _ => libc::EIO,
        }
    }
}

/// Reads a zerocopy struct from the front of `bytes`, or reports how short
/// they were.
pub fn read_struct<T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
    bytes: &[u8],
) -> Result<&T, FormatError> {
    T::ref_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| FormatError::Short {
            need: std::mem::size_of::<T>(),
            got: bytes.len(),
        })
}

/// Mutable twin of [`read_struct`].
pub fn read_struct_mut<T: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::KnownLayout>(
    bytes: &mut [u8],
) -> Result<&mut T, FormatError> {
    let got = bytes.len();
    T::mut_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| FormatError::Short {
            need: std::mem::size_of::<T>(),
            got,
        })
}

/// Asserts a struct's size and field offsets at compile time.
macro_rules! assert_layout {
    ($ty:ty, $size:expr $(, $field:ident @ $off:expr)* $(,)?) => {
        const _: () = assert!(std::mem::size_of::<$ty>() == $size);
        $(const _: () = assert!(std::mem::offset_of!($ty, $field) == $off);)*
    };
}
pub(crate) use assert_layout;
