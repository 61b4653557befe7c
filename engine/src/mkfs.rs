//! Formatting a new volume: the blocks the original `mkfs` writes, built in
//! memory and written through [`BlockDevice`] (reference §1.1, §1.3, §1.7).
//!
//! What is written, in order (the original's layout and order):
//! * meta blkno 2: the `fs_root` leaf (the root inode and its meta_seq item);
//! * meta blkno 3: the first server transaction's avail list, naming the
//!   next [`SERVER_AVAIL_BLOCKS`] blknos (4..1028);
//! * meta blkno 1028: the data allocator (one extent, the whole data device
//!   from `DATA_DEV_START_BLKNO`);
//! * meta blknos 1029/1030: the two metadata extent trees, the rest of the
//!   metadata device split between them;
//! * the quorum blocks; then the data device's super; a flush of both
//!   devices; the meta super last, and a flush. A volume whose meta super
//!   didn't land is not a volume: nothing half written can be mounted.
//!
//! Guarantees: [`build_image`] is pure (no I/O, no clock, no randomness);
//! [`format_volume`] checks the layout fits before its first write. Policy
//! (minimum device sizes, `-A`, refusing to overwrite, zone-size rules and
//! every message a user sees) belongs to the caller, `scoutfs mkfs`.
//!
//! The writes wait on each device future on the calling thread (through
//! [`crate::check::io`]): call this outside any executor, or from a task
//! whose executor doesn't park on the device's own io_uring ring.
//!
//! Touches `format` and `drivers::BlockDevice` only.

use std::net::Ipv4Addr;

use drivers::BlockDevice;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::check::io::{flush, write_bytes};
use crate::format::alloc::{free_blkno_key, free_order_key, AllocListBlock};
use crate::format::block::seal_block;
use crate::format::btree::{BtreeItem, BTREE_HEADER_BYTES, BTREE_ITEM_BYTES};
use crate::format::btree_block::{encode_node, NodeItem};
use crate::format::items::{inode_key, meta_seq_key, Inode, FIRST_USER_INO, ROOT_INO};
use crate::format::superblock::{
    AllocRoot, BtreeRoot, InetAddr, SuperBlock, SUPER_FLAG_META_BDEV,
    VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT,
};
use crate::format::{
    BlockRef, FormatError, DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, LG_BLOCK_SHIFT, LG_BLOCK_SIZE,
    MAGIC_ALLOC_LIST, MAGIC_BTREE, MAGIC_QUORUM, MAGIC_SUPER, META_DEV_START_BLKNO, QUORUM_BLKNO,
    QUORUM_MAX_SLOTS, SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO,
};

/// Blocks in the first server avail list: 64 MiB of metadata.
pub const SERVER_AVAIL_BLOCKS: u64 = (64 << 20) >> LG_BLOCK_SHIFT;

/// What the new volume looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Quorum slot addresses; at least one should be set for a mountable
    /// volume (the CLI insists, tests may not care).
    pub quorum_slots: [Option<(Ipv4Addr, u16)>; QUORUM_MAX_SLOTS],
    /// Format version (1 or 2).
    pub fmt_vers: u64,
    /// `data_alloc_zone_blocks` volume option; 0 leaves it unset.
    pub data_alloc_zone_blocks: u64,
    /// Bytes of the metadata device to use; 0 means the whole device.
    pub meta_size_bytes: u64,
    /// Bytes of the data device to use; 0 means the whole device.
    pub data_size_bytes: u64,
    /// Fixed fsid instead of a random one (tests).
    pub fsid: Option<u64>,
    /// Fixed uuid instead of a random (version 4) one (tests).
    pub uuid: Option<[u8; 16]>,
    /// Fixed root inode time (seconds, nanoseconds) instead of now (tests).
    pub now: Option<(u64, u32)>,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            quorum_slots: [None; QUORUM_MAX_SLOTS],
            fmt_vers: FORMAT_VERSION_MAX,
            data_alloc_zone_blocks: 0,
            meta_size_bytes: 0,
            data_size_bytes: 0,
            fsid: None,
            uuid: None,
            now: None,
        }
    }
}

/// What [`format_volume`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct MkfsSummary {
    pub fsid: u64,
    pub uuid: [u8; 16],
    /// The meta device's super as written.
    pub sb: SuperBlock,
}

/// Why formatting failed.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    /// The devices can't hold the layout (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// A write or flush failed part way.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything mkfs will write, built in memory first.
#[derive(Debug, Clone)]
pub struct Image {
    /// Large metadata blocks by blkno, in write order.
    pub meta_blocks: Vec<(u64, Vec<u8>)>,
    /// Small quorum blocks by (small) blkno.
    pub quorum_blocks: Vec<(u64, Vec<u8>)>,
    pub data_super: Vec<u8>,
    pub meta_super: Vec<u8>,
    /// The meta super as written.
    pub sb: SuperBlock,
}

/// Encodes a leaf of `items` the way the original mkfs lays out appended
/// items: every item's seq is 1; the last appended item is the root with the
/// earlier ones chained down its left links; the root keeps height 0.
fn mkfs_leaf(items: Vec<NodeItem>, out: &mut [u8]) -> Result<(), FormatError> {
    let items: Vec<NodeItem> = items
        .into_iter()
        .map(|mut i| {
            i.seq = 1;
            i
        })
        .collect();
    encode_node(0, &items, out)?;
    // The original appends each item as the new root with the previous root
    // as its left child; for the two-item leaves mkfs writes this matches
    // encode_node's shape except that the root's height byte stays 0.
    if items.len() == 2 {
        let off = BTREE_HEADER_BYTES + BTREE_ITEM_BYTES;
        let it = BtreeItem::mut_from_prefix(&mut out[off..])
            .map_err(|_| FormatError::Short { need: off, got: 0 })?
            .0;
        it.node.height = 0;
    }
    Ok(())
}

fn root_at(blkno: u64) -> BtreeRoot {
    BtreeRoot {
        ref_: BlockRef::new(blkno, 1),
        height: 1,
        pad: [0; 7],
    }
}

fn alloc_leaf(
    fsid: u64,
    blkno: u64,
    start: u64,
    len: u64,
    root: &mut AllocRoot,
) -> Result<Vec<u8>, FormatError> {
    let mut blk = vec![0u8; LG_BLOCK_SIZE];
    mkfs_leaf(
        vec![
            NodeItem::new(free_blkno_key(start, len), vec![]),
            NodeItem::new(free_order_key(start, len), vec![]),
        ],
        &mut blk,
    )?;
    seal_block(&mut blk, MAGIC_BTREE, fsid, blkno, 1);
    root.total_len = len.into();
    root.root = root_at(blkno);
    Ok(blk)
}

fn invalid(e: impl std::fmt::Display) -> MkfsError {
    MkfsError::Invalid(e.to_string())
}

/// Builds the blocks of a new filesystem of `meta_size` and `data_size`
/// bytes. Pure: the caller supplies the fsid, uuid and root inode time.
#[allow(clippy::field_reassign_with_default)]
pub fn build_image(
    opts: &MkfsOptions,
    meta_size: u64,
    data_size: u64,
    fsid: u64,
    uuid: [u8; 16],
    now: (u64, u32),
) -> Result<Image, MkfsError> {
    let last_meta = (meta_size >> LG_BLOCK_SHIFT)
        .checked_sub(1)
        .ok_or_else(|| invalid("meta device too small"))?;
    let last_data = (data_size >> SM_BLOCK_SHIFT)
        .checked_sub(1)
        .ok_or_else(|| invalid("data device too small"))?;
    let mut next_meta = META_DEV_START_BLKNO;
    // Blocks mkfs itself uses: fs root, list, data alloc, two meta allocs.
    if last_meta < next_meta + 4 + SERVER_AVAIL_BLOCKS || last_data < DATA_DEV_START_BLKNO {
        return Err(invalid("device too small to hold a filesystem"));
    }
    let mut sb = SuperBlock::default();
    sb.fmt_vers = opts.fmt_vers.into();
    sb.uuid = uuid;
    sb.next_ino = FIRST_USER_INO.into();
    sb.inode_count = 1.into();
    sb.seq = 1.into();
    sb.total_meta_blocks = (last_meta + 1).into();
    sb.total_data_blocks = (last_data + 1).into();
    sb.qconf.version = 1.into();
    for (i, s) in opts.quorum_slots.iter().enumerate() {
        if let Some((addr, port)) = s {
            sb.qconf.slots[i].addr = InetAddr::v4(*addr, *port);
        }
    }
    if opts.data_alloc_zone_blocks != 0 {
        sb.volopt.set_bits = VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT.into();
        sb.volopt.data_alloc_zone_blocks = opts.data_alloc_zone_blocks.into();
    }
    let mut blocks = Vec::new();

    // fs root: the root inode and its meta_seq index item.
    let blkno = next_meta;
    next_meta += 1;
    let mut inode = Inode::new_zeroed();
    inode.next_readdir_pos = 2.into();
    inode.nlink = 2.into();
    inode.mode = (0o040755u32).into();
    for ts in [
        &mut inode.atime,
        &mut inode.ctime,
        &mut inode.mtime,
        &mut inode.crtime,
    ] {
        ts.sec = now.0.into();
        ts.nsec = now.1.into();
    }
    let mut blk = vec![0u8; LG_BLOCK_SIZE];
    mkfs_leaf(
        vec![
            NodeItem::new(meta_seq_key(0, ROOT_INO), vec![]),
            NodeItem::new(inode_key(ROOT_INO), inode.encode(opts.fmt_vers).to_vec()),
        ],
        &mut blk,
    )
    .map_err(invalid)?;
    seal_block(&mut blk, MAGIC_BTREE, fsid, blkno, 1);
    sb.fs_root = root_at(blkno);
    blocks.push((blkno, blk));

    // The first server transaction's avail list.
    let blkno = next_meta;
    next_meta += 1;
    let mut blk = vec![0u8; LG_BLOCK_SIZE];
    {
        let lblk =
            AllocListBlock::mut_from_bytes(&mut blk).map_err(|_| invalid("alloc list layout"))?;
        for i in 0..SERVER_AVAIL_BLOCKS as usize {
            lblk.blknos[i] = next_meta.into();
            next_meta += 1;
        }
        lblk.nr = (SERVER_AVAIL_BLOCKS as u32).into();
    }
    seal_block(&mut blk, MAGIC_ALLOC_LIST, fsid, blkno, 1);
    sb.server_meta_avail[0].ref_ = BlockRef::new(blkno, 1);
    sb.server_meta_avail[0].total_nr = SERVER_AVAIL_BLOCKS.into();
    sb.server_meta_avail[0].first_nr = (SERVER_AVAIL_BLOCKS as u32).into();
    blocks.push((blkno, blk));

    // The data allocator holds one extent.
    let blkno = next_meta;
    next_meta += 1;
    let blk = alloc_leaf(
        fsid,
        blkno,
        DATA_DEV_START_BLKNO,
        last_data - DATA_DEV_START_BLKNO + 1,
        &mut sb.data_alloc,
    )
    .map_err(invalid)?;
    blocks.push((blkno, blk));

    // The rest of the metadata device, split across the two meta allocators.
    let mut meta_start = next_meta + 2;
    let meta_len = (last_meta - meta_start + 1).div_ceil(2);
    for i in 0..2 {
        let blkno = next_meta;
        next_meta += 1;
        let len = meta_len.min(last_meta - meta_start + 1);
        let blk =
            alloc_leaf(fsid, blkno, meta_start, len, &mut sb.meta_alloc[i]).map_err(invalid)?;
        blocks.push((blkno, blk));
        meta_start += meta_len;
    }

    let quorum_blocks = (0..QUORUM_MAX_SLOTS as u64)
        .map(|i| {
            let mut q = vec![0u8; SM_BLOCK_SIZE];
            seal_block(&mut q, MAGIC_QUORUM, fsid, QUORUM_BLKNO + i, 1);
            (QUORUM_BLKNO + i, q)
        })
        .collect();

    let mut data_super = vec![0u8; SM_BLOCK_SIZE];
    data_super[..std::mem::size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal_block(&mut data_super, MAGIC_SUPER, fsid, SUPER_BLKNO, 1);
    sb.flags = SUPER_FLAG_META_BDEV.into();
    let mut meta_super = vec![0u8; SM_BLOCK_SIZE];
    meta_super[..std::mem::size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal_block(&mut meta_super, MAGIC_SUPER, fsid, SUPER_BLKNO, 1);
    let sb = *SuperBlock::ref_from_prefix(&meta_super)
        .map_err(|_| invalid("super layout"))?
        .0;
    Ok(Image {
        meta_blocks: blocks,
        quorum_blocks,
        data_super,
        meta_super,
        sb,
    })
}

// mkfs runs outside any engine runtime, before a volume (and so any seeded
// simulation) exists: the OS is the right entropy source here.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut out))
        .is_ok();
    if !ok {
        // Fall back to time and address entropy: uniqueness, not secrecy.
        let t = wall_clock().0;
        let mut h = t ^ (&out as *const _ as u64);
        for b in out.iter_mut() {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (h >> 33) as u8;
        }
    }
    out
}

/// The wall clock at microsecond resolution (the original takes
/// gettimeofday). mkfs stamps the root inode before any runtime exists.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> (u64, u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs(), now.subsec_micros() * 1000)
}

/// A random fsid and version 4 uuid.
fn random_ids() -> (u64, [u8; 16]) {
    let fsid = u64::from_le_bytes(random_bytes::<8>());
    let mut uuid = random_bytes::<16>();
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    (fsid, uuid)
}

/// Chooses `opts.*_size_bytes` or the whole device.
fn used_size(opts_bytes: u64, dev: &dyn BlockDevice) -> u64 {
    match opts_bytes {
        0 => dev.size_bytes(),
        n => n.min(dev.size_bytes()),
    }
}

/// Formats a new volume on `meta` and `data`: builds the image, then writes
/// the metadata blocks, the quorum blocks and the data super, flushes both
/// devices, and writes and flushes the meta super last.
pub fn format_volume(
    meta: &dyn BlockDevice,
    data: &dyn BlockDevice,
    opts: &MkfsOptions,
) -> Result<MkfsSummary, MkfsError> {
    let meta_size = used_size(opts.meta_size_bytes, meta);
    let data_size = used_size(opts.data_size_bytes, data);
    let (rfsid, ruuid) = match (opts.fsid, opts.uuid) {
        (Some(f), Some(u)) => (f, u),
        _ => random_ids(),
    };
    let fsid = opts.fsid.unwrap_or(rfsid);
    let uuid = opts.uuid.unwrap_or(ruuid);
    let now = opts.now.unwrap_or_else(wall_clock);
    let img = build_image(opts, meta_size, data_size, fsid, uuid, now)?;

    for (blkno, blk) in &img.meta_blocks {
        write_bytes(meta, blkno << LG_BLOCK_SHIFT, blk)?;
    }
    for (blkno, blk) in &img.quorum_blocks {
        write_bytes(meta, blkno << SM_BLOCK_SHIFT, blk)?;
    }
    let super_off = SUPER_BLKNO << SM_BLOCK_SHIFT;
    write_bytes(data, super_off, &img.data_super)?;
    flush(data)?;
    flush(meta)?;
    write_bytes(meta, super_off, &img.meta_super)?;
    flush(meta)?;
    Ok(MkfsSummary {
        fsid,
        uuid,
        sb: img.sb,
    })
}
