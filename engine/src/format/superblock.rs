//! The super block and the roots it holds.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{assert_layout, BlockHeader, BlockRef, QUORUM_MAX_SLOTS};

/// A btree root: the top block and the tree's height (0 = empty tree).
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
pub struct BtreeRoot {
    pub ref_: BlockRef,
    pub height: u8,
    pub pad: [u8; 7],
}
assert_layout!(BtreeRoot, 24, ref_ @ 0, height @ 16);

impl BtreeRoot {
    pub fn is_empty(&self) -> bool {
        self.height == 0
    }
}

/// `alloc_root.flags`: the allocator is running low.
pub const ALLOC_FLAG_LOW: u32 = 0x1;

/// A free-extent allocator: a btree of extent items and their total.
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
pub struct AllocRoot {
    pub total_len: U64,
    pub flags: U32,
    pub pad: U32,
    pub root: BtreeRoot,
}
assert_layout!(AllocRoot, 40, total_len @ 0, flags @ 8, root @ 16);

/// The head of a singly linked list of alloc list blocks.
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
pub struct AllocListHead {
    pub ref_: BlockRef,
    pub total_nr: U64,
    pub first_nr: U32,
    pub flags: U32,
}
assert_layout!(AllocListHead, 32, ref_ @ 0, total_nr @ 16, first_nr @ 24, flags @ 28);

pub const INET_FAMILY_V4: u16 = 1;

/// The 32-byte address union; only IPv4 exists in the format.
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
pub struct InetAddr {
    pub family: U16,
    pub port: U16,
    /// Numeric IPv4 value, first dotted octet most significant.
    pub addr: U32,
    pub pad: [u8; 24],
}
assert_layout!(InetAddr, 32, family @ 0, port @ 2, addr @ 4);

impl InetAddr {
    pub fn v4(addr: std::net::Ipv4Addr, port: u16) -> Self {
        InetAddr {
            family: INET_FAMILY_V4.into(),
            port: port.into(),
            addr: u32::from(addr).into(),
            pad: [0; 24],
        }
    }

    pub fn is_v4(&self) -> bool {
        self.family.get() == INET_FAMILY_V4
    }

    pub fn ipv4(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(self.addr.get())
    }
}

impl std::fmt::Display for InetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ipv4(), self.port.get())
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
pub struct QuorumSlot {
    pub addr: InetAddr,
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
pub struct QuorumConfig {
    pub version: U64,
    pub slots: [QuorumSlot; QUORUM_MAX_SLOTS],
}
assert_layout!(QuorumConfig, 488, version @ 0, slots @ 8);

impl QuorumConfig {
    /// Configured slots in slot order.
    pub fn active_slots(&self) -> impl Iterator<Item = (usize, &InetAddr)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.addr.is_v4())
            .map(|(i, s)| (i, &s.addr))
    }
}

pub const VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT: u64 = 1 << 0;
/// Options the format defines; any other set bit is unknown.
pub const VOLOPT_KNOWN_BITS: u64 = VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VolumeOptions {
    pub set_bits: U64,
    pub data_alloc_zone_blocks: U64,
    pub reserved: [U64; 63],
}
assert_layout!(VolumeOptions, 520, set_bits @ 0, data_alloc_zone_blocks @ 8);

impl Default for VolumeOptions {
    fn default() -> Self {
        <Self as FromZeros>::new_zeroed()
    }
}

/// Super block flag: this copy lives on the metadata device.
pub const SUPER_FLAG_META_BDEV: u64 = 0x1;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SuperBlock {
    pub hdr: BlockHeader,
    pub id: U64,
    pub fmt_vers: U64,
    pub flags: U64,
    pub uuid: [u8; 16],
    pub seq: U64,
    pub next_ino: U64,
    pub inode_count: U64,
    pub total_meta_blocks: U64,
    pub total_data_blocks: U64,
    pub qconf: QuorumConfig,
    pub meta_alloc: [AllocRoot; 2],
    pub data_alloc: AllocRoot,
    pub server_meta_avail: [AllocListHead; 2],
    pub server_meta_freed: [AllocListHead; 2],
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub log_merge: BtreeRoot,
    pub mounted_clients: BtreeRoot,
    pub srch_root: BtreeRoot,
    pub volopt: VolumeOptions,
}
assert_layout!(SuperBlock, 1488,
    hdr @ 0, id @ 32, fmt_vers @ 40, flags @ 48, uuid @ 56, seq @ 72, next_ino @ 80,
    inode_count @ 88, total_meta_blocks @ 96, total_data_blocks @ 104, qconf @ 112,
    meta_alloc @ 600, data_alloc @ 680, server_meta_avail @ 720, server_meta_freed @ 784,
    fs_root @ 848, logs_root @ 872, log_merge @ 896, mounted_clients @ 920,
    srch_root @ 944, volopt @ 968);

impl Default for SuperBlock {
    fn default() -> Self {
        <Self as FromZeros>::new_zeroed()
    }
}

/// Formats a uuid the usual 8-4-4-4-12 way.
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    let h: Vec<String> = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}
