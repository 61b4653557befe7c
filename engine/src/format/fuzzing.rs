//! Entry points that feed arbitrary bytes to every on-disk decoder.
//!
//! The cargo-fuzz targets in `fuzz/` and the randomized tests in
//! `engine/tests/decode_hostile.rs` call these, so CI exercises the same
//! paths without a nightly toolchain. Each function must return normally on
//! any input: an `Err` is fine, a panic is a bug.

use super::alloc::AllocListBlock;
use super::block::{check_block, check_crc, Expect};
use super::bloom::BloomBlock;
use super::btree_block::BlockView;
use super::items::{decode_dirent, indx_fields, Inode};
use super::key::{DiskKey, Key};
use super::log_trees::LogTrees;
use super::quorum::QuorumBlock;
use super::srch::{decode_entry, SrchBlockHeader, SrchEntry, SRCH_BLOCK_DATA_BYTES};
use super::superblock::SuperBlock;
use super::{read_struct, LG_BLOCK_SIZE, MAGIC_BTREE};

/// Pads or truncates input to one large block.
fn as_lg_block(data: &[u8]) -> Vec<u8> {
    let mut block = data.to_vec();
    block.resize(LG_BLOCK_SIZE, 0);
    block
}

/// A btree block: header checks, AVL walk, every key, value and hash probe.
pub fn btree_block(data: &[u8]) {
    let block = as_lg_block(data);
    let _ = check_block(
        &block,
        &Expect {
            magic: MAGIC_BTREE,
            fsid: 0,
            blkno: 0,
            seq: 0,
        },
    );
    if let Ok(view) = BlockView::new(&block) {
        let _ = view.check_hash_table();
        for i in 0..view.len() {
            let item = view.node_item(i);
            let _ = view.hash_find(&item.key.to_disk());
            let _ = view.lower_bound(&item.key);
            let _ = Inode::decode(&item.val, 2);
            let _ = decode_dirent(&item.val);
        }
    }
}

/// Fixed-size structures read straight from bytes.
pub fn fixed_structs(data: &[u8]) {
    let _ = check_crc(data);
    if let Ok(sb) = read_struct::<SuperBlock>(data) {
        sb.qconf
            .active_slots()
            .for_each(|(_, a)| drop(a.to_string()));
    }
    let _ = read_struct::<QuorumBlock>(data);
    let _ = read_struct::<LogTrees>(data);
    if let Ok(dk) = read_struct::<DiskKey>(data) {
        if let Ok(k) = Key::from_disk(dk) {
            let _ = (k.inc(), k.dec(), indx_fields(&k));
        }
    }
    for vers in [1, 2, 3] {
        let _ = Inode::decode(data, vers);
    }
}

/// List, bloom and srch blocks.
pub fn list_bloom_srch_blocks(data: &[u8]) {
    let block = as_lg_block(data);
    if let Ok(list) = read_struct::<AllocListBlock>(&block) {
        let _ = list.live();
    }
    if let Ok(bloom) = read_struct::<BloomBlock>(&block) {
        let _ = bloom.may_contain(&Key::MIN);
    }
    if let Ok(hdr) = read_struct::<SrchBlockHeader>(&block) {
        let body = &block[std::mem::size_of::<SrchBlockHeader>()..];
        let len = (hdr.entry_bytes.get() as usize).min(SRCH_BLOCK_DATA_BYTES);
        let mut pos = 0;
        let mut prev = SrchEntry::default();
        while pos < len {
            match decode_entry(&body[pos..len], &prev) {
                Ok((e, used)) => {
                    prev = e;
                    pos += used;
                }
                Err(_) => break,
            }
        }
    }
}

/// TCP frames and UDP election datagrams.
pub fn net_messages(data: &[u8]) {
    if let Ok(frame) = super::net::decode_frame(data) {
        let _ = read_struct::<super::net::NetLock>(frame.data);
        let _ = read_struct::<super::net::NetGreeting>(frame.data);
    }
    let fsid = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let _ = super::net::decode_quorum_message(data, fsid);
}
