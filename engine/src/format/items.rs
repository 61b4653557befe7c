//! Item values and the key builders of the item catalogue (reference §1.5).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::{fs_type, index_type, zone, Key, ORPHAN_TYPE, QUOTA_RULE_TYPE};
use super::quorum::Timespec;
use super::superblock::InetAddr;
use super::{assert_layout, FormatError, FORMAT_VERSION_V2};

pub const INODE_FLAG_TRUNCATE: u32 = 0x1;
pub const INODE_FLAG_RETENTION: u32 = 0x2;
pub const ROOT_INO: u64 = 1;
/// The first inode number mkfs leaves for users.
pub const FIRST_USER_INO: u64 = 1024;

/// The inode value; `proj` exists only in format version 2.
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
pub struct Inode {
    pub size: U64,
    pub meta_seq: U64,
    pub data_seq: U64,
    pub data_version: U64,
    pub online_blocks: U64,
    pub offline_blocks: U64,
    pub next_readdir_pos: U64,
    pub next_xattr_id: U64,
    pub version: U64,
    pub nlink: U32,
    pub uid: U32,
    pub gid: U32,
    pub mode: U32,
    pub rdev: U32,
    pub flags: U32,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub crtime: Timespec,
    pub proj: U64,
}
assert_layout!(Inode, 168, size @ 0, version @ 64, nlink @ 72, flags @ 92, atime @ 96,
    ctime @ 112, mtime @ 128, crtime @ 144, proj @ 160);
pub const INODE_V1_BYTES: usize = 160;
pub const INODE_V2_BYTES: usize = 168;

impl Inode {
    /// Decodes an inode value: 160 bytes on any version, 168 only on v2
    /// (a v2 volume may keep inodes written before an upgrade).
    pub fn decode(val: &[u8], fmt_vers: u64) -> Result<Inode, FormatError> {
        let ok = val.len() == INODE_V1_BYTES
            || (val.len() == INODE_V2_BYTES && fmt_vers >= FORMAT_VERSION_V2);
        if !ok {
            return Err(FormatError::Corrupt(format!(
                "inode value of {} bytes on format version {fmt_vers}",
                val.len()
            )));
        }
        let mut bytes = [0u8; INODE_V2_BYTES];
        bytes[..val.len()].copy_from_slice(val);
        Ok(Inode::read_from_bytes(&bytes).expect("exact size"))
    }

    /// The stored bytes for a format version.
    pub fn encode(&self, fmt_vers: u64) -> &[u8] {
        let len = if fmt_vers >= FORMAT_VERSION_V2 {
            INODE_V2_BYTES
        } else {
            INODE_V1_BYTES
        };
        &self.as_bytes()[..len]
    }
}

/// scoutfs's own directory entry types (not Linux DT_* values).
pub mod dt {
    pub const FIFO: u8 = 0;
    pub const CHR: u8 = 1;
    pub const DIR: u8 = 2;
    pub const BLK: u8 = 3;
    pub const REG: u8 = 4;
    pub const LNK: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const WHT: u8 = 7;
}

/// The fixed front of DIRENT, READDIR and LINK_BACKREF values; the name follows.
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
pub struct DirentHeader {
    pub ino: U64,
    pub hash: U64,
    pub pos: U64,
    pub ty: u8,
    pub pad: [u8; 7],
}
assert_layout!(DirentHeader, 32);
pub const DIRENT_HEADER_BYTES: usize = 32;
pub const NAME_MAX: usize = 255;

/// Splits a dirent value into its header and name.
pub fn decode_dirent(val: &[u8]) -> Result<(&DirentHeader, &[u8]), FormatError> {
    let (hdr, name) = DirentHeader::ref_from_prefix(val)
        .map_err(|_| FormatError::Corrupt(format!("dirent value of {} bytes", val.len())))?;
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(FormatError::Corrupt(format!(
            "dirent name of {} bytes",
            name.len()
        )));
    }
    Ok((hdr, name))
}

/// Part 0 of an xattr starts with this header, then name, then value bytes.
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
pub struct XattrHeader {
    pub val_len: U16,
    pub name_len: u8,
    pub pad: [u8; 5],
}
assert_layout!(XattrHeader, 8);
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 65535;

/// Items an xattr of these sizes occupies.
pub fn xattr_nr_parts(name_len: usize, val_len: usize) -> usize {
    (8 + name_len + val_len).div_ceil(super::MAX_VAL_SIZE)
}

pub const EXTENT_FLAG_OFFLINE: u8 = 0x1;
pub const EXTENT_FLAG_UNWRITTEN: u8 = 0x2;

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
pub struct DataExtent {
    pub blkno: U64,
    pub flags: u8,
    pub pad: [u8; 7],
}
assert_layout!(DataExtent, 16);

/// `.totl.` running totals (delta items).
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
pub struct TotlValue {
    pub total: U64,
    pub count: U64,
}
assert_layout!(TotlValue, 16);

pub const QUOTA_OP_INODE: u8 = 0;
pub const QUOTA_OP_DATA: u8 = 1;
pub const QUOTA_RULE_FLAG_TOTL_COUNT: u8 = 0x1;
pub const QUOTA_SOURCE_LITERAL: u8 = 0;
pub const QUOTA_SOURCE_PROJ: u8 = 1;
pub const QUOTA_SOURCE_UID: u8 = 2;
pub const QUOTA_SOURCE_GID: u8 = 3;
pub const QUOTA_NAME_FLAG_SELECT: u8 = 0x1;

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
pub struct QuotaRule {
    pub name_val: [U64; 3],
    pub limit: U64,
    pub prio: u8,
    pub op: u8,
    pub rule_flags: u8,
    pub name_source: [u8; 3],
    pub name_flags: [u8; 3],
    pub pad: [u8; 7],
}
assert_layout!(QuotaRule, 48, limit @ 24, prio @ 32, op @ 33, rule_flags @ 34,
    name_source @ 35, name_flags @ 38);

impl QuotaRule {
    /// The rule key's hash: fnv1a64 of the value with its pad zeroed.
    pub fn rule_hash(&self) -> u64 {
        let mut r = *self;
        r.pad = [0; 7];
        super::hash::fnv1a64(r.as_bytes())
    }
}

pub const MOUNTED_CLIENT_FLAG_QUORUM: u8 = 0x1;

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
pub struct MountedClient {
    pub addr: InetAddr,
    pub flags: u8,
    /// Left uninitialised by the original: never required to be zero.
    pub pad: [u8; 7],
}
assert_layout!(MountedClient, 40);

pub fn inode_key(ino: u64) -> Key {
    Key::new(zone::FS, ino, fs_type::INODE, 0, 0, 0)
}

pub fn xattr_key(ino: u64, name_hash: u64, id: u64, part: u8) -> Key {
    Key::new(zone::FS, ino, fs_type::XATTR, name_hash, id, part)
}

pub fn dirent_key(dir: u64, name_hash: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, fs_type::DIRENT, name_hash, pos, 0)
}

pub fn readdir_key(dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, fs_type::READDIR, pos, 0, 0)
}

pub fn link_backref_key(ino: u64, dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, ino, fs_type::LINK_BACKREF, dir, pos, 0)
}

pub fn symlink_key(ino: u64, chunk: u8) -> Key {
    Key::new(zone::FS, ino, fs_type::SYMLINK, chunk as u64, 0, 0)
}

pub fn data_extent_key(ino: u64, last_block: u64, len: u64) -> Key {
    Key::new(zone::FS, ino, fs_type::DATA_EXTENT, last_block, len, 0)
}

pub fn meta_seq_key(seq: u64, ino: u64) -> Key {
    Key::new(zone::INODE_INDEX, 0, index_type::META_SEQ, seq, ino, 0)
}

pub fn data_seq_key(seq: u64, ino: u64) -> Key {
    Key::new(zone::INODE_INDEX, 0, index_type::DATA_SEQ, seq, ino, 0)
}

pub fn orphan_key(ino: u64) -> Key {
    Key::new(zone::ORPHAN, 0, ORPHAN_TYPE, ino, 0, 0)
}

pub fn quota_rule_key(rule_hash: u64, collision_nr: u64) -> Key {
    Key::new(zone::QUOTA, 0, QUOTA_RULE_TYPE, rule_hash, collision_nr, 0)
}

pub fn totl_key(a: u64, b: u64, c: u64) -> Key {
    Key::new(zone::XATTR_TOTL, a, 0, b, c, 0)
}

/// `.indx.` keys are bit-packed so key order is (major, minor, ino, xid).
pub fn indx_key(major: u8, minor: u64, ino: u64, xid: u64) -> Key {
    Key::new(
        zone::XATTR_INDX,
        ((major as u64) << 56) | (minor >> 8),
        0,
        (minor << 56) | (ino >> 8),
        (ino << 56) | (xid >> 8),
        (xid & 0xff) as u8,
    )
}

/// Inverse of [`indx_key`]: (major, minor, ino, xid).
pub fn indx_fields(key: &Key) -> (u8, u64, u64, u64) {
    let major = (key.first >> 56) as u8;
    let minor = (key.first << 8) | (key.second >> 56);
    let ino = (key.second << 8) | (key.third >> 56);
    let xid = (key.third << 8) | key.fourth as u64;
    (major, minor, ino, xid)
}

pub fn log_trees_key(rid: u64, nr: u64) -> Key {
    Key::new(zone::LOG_TREES, rid, 0, nr, 0, 0)
}

pub fn mounted_client_key(rid: u64) -> Key {
    Key::new(zone::MOUNTED_CLIENT, rid, 0, 0, 0, 0)
}
