//! Pure functions over the quorum blocks (reference §1.10, §6.2, §6.3).
//!
//! Everyone reads the same fifteen quorum blocks on the metadata device, so
//! everything here is a deterministic function of those blocks and the
//! quorum configuration in the super block:
//!
//! * [`encode_quorum_block`] / [`decode_quorum_block`]: the 4 KiB block at
//!   `QUORUM_BLKNO + slot`, sealed and checked like the original (crc, magic,
//!   fsid, blkno). Decoding never panics on hostile bytes.
//! * [`greatest_term`]: where an agent starts its term (trap 4495dbdc).
//! * [`find_server`]: where clients look for the server.
//! * [`fence_requests`]: which earlier leaders a new leader must fence before
//!   it serves.
//!
//! No I/O and no clocks: callers read and write the blocks.

use crate::format::block::{check_fixed_block, seal_block};
use crate::format::quorum::{
    QuorumBlock, QUORUM_EVENT_ELECT, QUORUM_EVENT_FENCE, QUORUM_EVENT_STOP,
};
use crate::format::superblock::{InetAddr, QuorumConfig};
use crate::format::{
    read_struct, FormatError, MAGIC_QUORUM, QUORUM_BLKNO, QUORUM_MAX_SLOTS, SM_BLOCK_SIZE,
};
use zerocopy::IntoBytes;

/// All quorum blocks, indexed by slot. Blocks of slots that are not
/// configured are ignored by every function here (they may be zeroed).
pub type QuorumBlocks = [QuorumBlock; QUORUM_MAX_SLOTS];

/// A zeroed set of blocks: what a freshly made volume's never-written slots
/// look like once decoded.
pub fn empty_blocks() -> QuorumBlocks {
    [QuorumBlock::default(); QUORUM_MAX_SLOTS]
}

/// The small-block number of a slot's quorum block on the metadata device.
pub fn quorum_blkno(slot: usize) -> u64 {
    assert!(slot < QUORUM_MAX_SLOTS, "quorum slot {slot} out of range");
    QUORUM_BLKNO + slot as u64
}

/// Whether the super block configures this slot.
pub fn slot_present(qconf: &QuorumConfig, slot: usize) -> bool {
    slot < QUORUM_MAX_SLOTS && qconf.slots[slot].addr.is_v4()
}

/// Number of configured slots.
pub fn slot_count(qconf: &QuorumConfig) -> usize {
    qconf.active_slots().count()
}

/// Votes a candidate needs (reference §6.1): 1 with fewer than 3 slots (two
/// members can both elect themselves and fencing settles it), else a
/// majority.
pub fn votes_needed(qconf: &QuorumConfig) -> usize {
    let slots = slot_count(qconf);
    if slots < 3 {
        1
    } else {
        slots / 2 + 1
    }
}

/// Seals a quorum block for `slot` into a full small block, ready to write.
/// The header's seq is kept as the caller left it.
pub fn encode_quorum_block(blk: &QuorumBlock, fsid: u64, slot: usize) -> Vec<u8> {
    let mut out = vec![0u8; SM_BLOCK_SIZE];
    out[..std::mem::size_of::<QuorumBlock>()].copy_from_slice(blk.as_bytes());
    seal_block(
        &mut out,
        MAGIC_QUORUM,
        fsid,
        quorum_blkno(slot),
        blk.hdr.seq.get(),
    );
    out
}

/// Checks and decodes a slot's quorum block as the original's
/// `read_quorum_block` does (crc, magic, fsid, blkno). The BEGIN rid check
/// is the agent's business.
pub fn decode_quorum_block(
    bytes: &[u8],
    fsid: u64,
    slot: usize,
) -> Result<QuorumBlock, FormatError> {
    if slot >= QUORUM_MAX_SLOTS {
        return Err(FormatError::Corrupt(format!(
            "quorum slot {slot} out of range"
        )));
    }
    if bytes.len() != SM_BLOCK_SIZE {
        return Err(FormatError::Short {
            need: SM_BLOCK_SIZE,
            got: bytes.len(),
        });
    }
    let hdr = check_fixed_block(bytes, MAGIC_QUORUM, quorum_blkno(slot))?;
    if hdr.fsid.get() != fsid {
        return Err(FormatError::Corrupt(format!(
            "quorum block {slot} fsid {:016x} != {fsid:016x}",
            hdr.fsid.get()
        )));
    }
    let blk: &QuorumBlock = read_struct(bytes)?;
    Ok(*blk)
}

/// The greatest term recorded by any event (with a rid) in any configured
/// slot: an agent starts there so that no member starts out ignoring the
/// others (4495dbdc).
pub fn greatest_term(blocks: &QuorumBlocks, qconf: &QuorumConfig) -> u64 {
    (0..QUORUM_MAX_SLOTS)
        .filter(|&s| slot_present(qconf, s))
        .flat_map(|s| blocks[s].events.iter())
        .filter(|ev| ev.rid.get() != 0)
        .map(|ev| ev.term.get())
        .max()
        .unwrap_or(0)
}

/// Where clients find the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLocation {
    pub slot: usize,
    pub addr: InetAddr,
    /// The ELECT term of that leader.
    pub term: u64,
}

/// Among configured slots, the one with the greatest ELECT term whose ELECT
/// term is greater than its STOP term (an elected leader that has not
/// recorded stopping). Ties keep the lowest slot, as the original does.
pub fn find_server(blocks: &QuorumBlocks, qconf: &QuorumConfig) -> Option<ServerLocation> {
    let mut best: Option<ServerLocation> = None;
    for (slot, addr) in qconf.active_slots() {
        let ev = &blocks[slot].events;
        let elect = ev[QUORUM_EVENT_ELECT].term.get();
        if elect > ev[QUORUM_EVENT_STOP].term.get() && elect > best.map_or(0, |b| b.term) {
            best = Some(ServerLocation {
                slot,
                addr: *addr,
                term: elect,
            });
        }
    }
    best
}

/// Why a fence request was made (the sysfs `reason` file of §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FenceReason {
    ClientRecovery,
    ClientReconnect,
    QuorumBlockLeader,
}

impl FenceReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FenceReason::ClientRecovery => "client_recovery",
            FenceReason::ClientReconnect => "client_reconnect",
            FenceReason::QuorumBlockLeader => "quorum_block_leader",
        }
    }
}

/// One earlier leader a new leader must fence before serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceRequest {
    pub rid: u64,
    pub slot: usize,
    /// The term in which that leader was elected (or fenced others).
    pub term: u64,
    pub addr: InetAddr,
    pub reason: FenceReason,
}

/// The earlier leaders a leader elected in `our_term` must fence
/// (reference §6.3, the original's `scoutfs_quorum_fence_leaders`).
///
/// Per slot, an ELECT event whose term is greater than the STOP term may still
/// be running, and a FENCE event with STOP < FENCE < ELECT is the record of
/// an earlier leader of that slot. `fenced` is the greatest FENCE term of any
/// slot: its leader fenced everything older. Every such old leader with
/// `fenced <= term <= our_term` and a rid other than ours is returned, once
/// per rid (the greatest term wins), in slot order.
pub fn fence_requests(
    blocks: &QuorumBlocks,
    qconf: &QuorumConfig,
    our_rid: u64,
    our_term: u64,
) -> Vec<FenceRequest> {
    let mut fenced = 0u64;
    let mut old: Vec<FenceRequest> = Vec::new();
    for (slot, addr) in qconf.active_slots() {
        let ev = &blocks[slot].events;
        let elect = ev[QUORUM_EVENT_ELECT];
        let fence = ev[QUORUM_EVENT_FENCE];
        let stop = ev[QUORUM_EVENT_STOP].term.get();
        if elect.term.get() > stop {
            old.push(request(slot, addr, elect.rid.get(), elect.term.get()));
        }
        if fence.term.get() > stop && fence.term.get() < elect.term.get() {
            old.push(request(slot, addr, fence.rid.get(), fence.term.get()));
        }
        fenced = fenced.max(fence.term.get());
    }

    let mut out: Vec<FenceRequest> = Vec::new();
    for req in old {
        if req.term == 0 || req.term < fenced || req.term > our_term || req.rid == our_rid {
            continue;
        }
        match out.iter_mut().find(|r| r.rid == req.rid) {
            Some(prev) if prev.term < req.term => *prev = req,
            Some(_) => {}
            None => out.push(req),
        }
    }
    out
}

fn request(slot: usize, addr: &InetAddr, rid: u64, term: u64) -> FenceRequest {
    FenceRequest {
        rid,
        slot,
        term,
        addr: *addr,
        reason: FenceReason::QuorumBlockLeader,
    }
}

/// The greatest ELECT term recorded in any configured slot, stopped or not.
pub fn greatest_elect_term(blocks: &QuorumBlocks, qconf: &QuorumConfig) -> u64 {
    qconf
        .active_slots()
        .map(|(s, _)| blocks[s].events[QUORUM_EVENT_ELECT].term.get())
        .max()
        .unwrap_or(0)
}
