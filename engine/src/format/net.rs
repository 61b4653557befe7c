//! Wire structures of the TCP protocol between mounts and the server, and the
//! UDP quorum election message (reference §5.1–§5.3, §6.2, §12).
//!
//! [`decode_frame`] applies every check the original makes before a message
//! reaches a handler; anything it refuses means "drop the connection". UDP
//! quorum messages that fail [`decode_quorum_message`] are silently ignored by
//! the election.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::hash::crc_block;
use super::key::DiskKey;
use super::superblock::BtreeRoot;
use super::{assert_layout, read_struct, FormatError, QUORUM_MAX_SLOTS};

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
pub struct NetHeader {
    pub seq: U64,
    pub recv_seq: U64,
    pub id: U64,
    pub data_len: U16,
    pub cmd: u8,
    pub flags: u8,
    pub error: u8,
    pub pad: [u8; 3],
}
assert_layout!(NetHeader, 32, seq @ 0, recv_seq @ 8, id @ 16, data_len @ 24, cmd @ 26,
    flags @ 27, error @ 28);

pub const NET_HEADER_BYTES: usize = 32;
/// Largest payload after the header.
pub const NET_MAX_DATA_BYTES: usize = 1100;
pub const NET_FLAG_RESPONSE: u8 = 0x1;
pub const NET_KNOWN_FLAGS: u8 = NET_FLAG_RESPONSE;

/// Commands, numbered as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Cmd {
    Greeting = 0,
    AllocInodes = 1,
    GetLogTrees = 2,
    CommitLogTrees = 3,
    SyncLogTrees = 4,
    GetRoots = 5,
    GetLastSeq = 6,
    Lock = 7,
    LockRecover = 8,
    SrchGetCompact = 9,
    SrchCommitCompact = 10,
    GetLogMerge = 11,
    CommitLogMerge = 12,
    OpenInoMap = 13,
    GetVolopt = 14,
    SetVolopt = 15,
    ClearVolopt = 16,
    ResizeDevices = 17,
    Statfs = 18,
    Farewell = 19,
}

impl Cmd {
    pub fn from_wire(v: u8) -> Option<Cmd> {
        use Cmd::*;
        const ALL: [Cmd; 20] = [
            Greeting,
            AllocInodes,
            GetLogTrees,
            CommitLogTrees,
            SyncLogTrees,
            GetRoots,
            GetLastSeq,
            Lock,
            LockRecover,
            SrchGetCompact,
            SrchCommitCompact,
            GetLogMerge,
            CommitLogMerge,
            OpenInoMap,
            GetVolopt,
            SetVolopt,
            ClearVolopt,
            ResizeDevices,
            Statfs,
            Farewell,
        ];
        ALL.get(v as usize).copied()
    }
}

/// Error codes on the wire; every other errno travels as EINVAL.
pub const NET_ERR_NONE: u8 = 0;
pub const NET_ERR_ENOENT: u8 = 1;
pub const NET_ERR_ENOMEM: u8 = 2;
pub const NET_ERR_EIO: u8 = 3;
pub const NET_ERR_ENOSPC: u8 = 4;
pub const NET_ERR_EINVAL: u8 = 5;
pub const NET_ERR_ENOLINK: u8 = 6;

/// Maps an errno to its wire code.
pub fn errno_to_wire(errno: i32) -> u8 {
    match errno {
        0 => NET_ERR_NONE,
        libc::ENOENT => NET_ERR_ENOENT,
        libc::ENOMEM => NET_ERR_ENOMEM,
        libc::EIO => NET_ERR_EIO,
        libc::ENOSPC => NET_ERR_ENOSPC,
        libc::ENOLINK => NET_ERR_ENOLINK,
        _ => NET_ERR_EINVAL,
    }
}

/// Maps a wire code back to an errno; codes ≥ 7 are invalid.
pub fn wire_to_errno(code: u8) -> Option<i32> {
    Some(match code {
        NET_ERR_NONE => 0,
        NET_ERR_ENOENT => libc::ENOENT,
        NET_ERR_ENOMEM => libc::ENOMEM,
        NET_ERR_EIO => libc::EIO,
        NET_ERR_ENOSPC => libc::ENOSPC,
        NET_ERR_EINVAL => libc::EINVAL,
        NET_ERR_ENOLINK => libc::ENOLINK,
        _ => return None,
    })
}

pub const GREETING_FLAG_FAREWELL: u64 = 0x1;
pub const GREETING_FLAG_QUORUM: u64 = 0x2;

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
pub struct NetGreeting {
    pub fsid: U64,
    pub fmt_vers: U64,
    pub server_term: U64,
    pub rid: U64,
    pub flags: U64,
}
assert_layout!(NetGreeting, 40);

pub const LOCK_MODE_NULL: u8 = 0;
pub const LOCK_MODE_READ: u8 = 1;
pub const LOCK_MODE_WRITE: u8 = 2;
pub const LOCK_MODE_WRITE_ONLY: u8 = 3;
pub const LOCK_MODE_INVALID: u8 = 4;

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
pub struct NetLock {
    pub key: DiskKey,
    /// Left unset by the original in server→client invalidations.
    pub write_seq: U64,
    pub old_mode: u8,
    pub new_mode: u8,
    pub pad: [u8; 6],
}
assert_layout!(NetLock, 48, key @ 0, write_seq @ 32, old_mode @ 40, new_mode @ 41);

/// Locks one LOCK_RECOVER reply carries.
pub const LOCK_RECOVER_MAX_LOCKS: usize = 22;

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
pub struct NetLockRecoverHeader {
    pub nr: U16,
    pub pad: [u8; 6],
}
assert_layout!(NetLockRecoverHeader, 8);

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
pub struct NetRoots {
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub srch_root: BtreeRoot,
}
assert_layout!(NetRoots, 72);

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
pub struct NetInodeAlloc {
    pub ino: U64,
    pub nr: U64,
}
assert_layout!(NetInodeAlloc, 16);

/// One decoded, validated frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub header: &'a NetHeader,
    pub cmd: Cmd,
    pub is_response: bool,
    /// The errno of a response (0 for success).
    pub errno: i32,
    pub data: &'a [u8],
}

fn invalid(msg: String) -> FormatError {
    FormatError::Corrupt(msg)
}

/// Validates one frame occupying all of `bytes` (header + data_len bytes).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FormatError> {
    let header: &NetHeader = read_struct(bytes)?;
    let data_len = header.data_len.get() as usize;
    if data_len > NET_MAX_DATA_BYTES {
        return Err(invalid(format!(
            "data_len {data_len} over {NET_MAX_DATA_BYTES}"
        )));
    }
    if bytes.len() != NET_HEADER_BYTES + data_len {
        return Err(invalid(format!(
            "frame of {} bytes, header says {}",
            bytes.len(),
            NET_HEADER_BYTES + data_len
        )));
    }
    let cmd = Cmd::from_wire(header.cmd)
        .ok_or_else(|| invalid(format!("unknown command {}", header.cmd)))?;
    if header.flags & !NET_KNOWN_FLAGS != 0 {
        return Err(invalid(format!("unknown flags {:#x}", header.flags)));
    }
    // Greetings take no part in seq handling; everything else must carry one.
    if header.seq.get() == 0 && cmd != Cmd::Greeting {
        return Err(invalid("seq 0".into()));
    }
    if header.id.get() == 0 {
        return Err(invalid("id 0".into()));
    }
    let is_response = header.flags & NET_FLAG_RESPONSE != 0;
    let errno = wire_to_errno(header.error)
        .ok_or_else(|| invalid(format!("error code {} out of range", header.error)))?;
    if !is_response && header.error != NET_ERR_NONE {
        return Err(invalid("request carries an error".into()));
    }
    Ok(Frame {
        header,
        cmd,
        is_response,
        errno,
        data: &bytes[NET_HEADER_BYTES..],
    })
}

/// Encodes a frame into a fresh buffer.
pub fn encode_frame(header: &NetHeader, data: &[u8]) -> Vec<u8> {
    assert!(
        data.len() <= NET_MAX_DATA_BYTES,
        "payload over the protocol limit"
    );
    let mut hdr = *header;
    hdr.data_len = (data.len() as u16).into();
    let mut out = Vec::with_capacity(NET_HEADER_BYTES + data.len());
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Quorum election message types.
pub const QUORUM_MSG_REQUEST_VOTE: u8 = 0;
pub const QUORUM_MSG_VOTE: u8 = 1;
pub const QUORUM_MSG_HEARTBEAT: u8 = 2;
pub const QUORUM_MSG_RESIGNATION: u8 = 3;
pub const QUORUM_MSG_VERSION: u64 = 0;

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
pub struct QuorumMessage {
    pub fsid: U64,
    pub version: U64,
    pub term: U64,
    pub ty: u8,
    pub from: u8,
    pub pad: [u8; 2],
    pub crc: U32,
}
assert_layout!(QuorumMessage, 32, fsid @ 0, version @ 8, term @ 16, ty @ 24, from @ 25, crc @ 28);

impl QuorumMessage {
    pub fn new(fsid: u64, term: u64, ty: u8, from: u8) -> Self {
        let mut m = QuorumMessage {
            fsid: fsid.into(),
            version: QUORUM_MSG_VERSION.into(),
            term: term.into(),
            ty,
            from,
            pad: [0; 2],
            crc: 0.into(),
        };
        m.crc = crc_block(&m.as_bytes()[..28]).into();
        m
    }
}

/// Validates a received election datagram for a volume.
pub fn decode_quorum_message(bytes: &[u8], fsid: u64) -> Result<QuorumMessage, FormatError> {
    if bytes.len() != std::mem::size_of::<QuorumMessage>() {
        return Err(FormatError::Short {
            need: 32,
            got: bytes.len(),
        });
    }
    let m: &QuorumMessage = read_struct(bytes)?;
    let computed = crc_block(&bytes[..28]);
    if m.crc.get() != computed {
        return Err(FormatError::Crc {
            stored: m.crc.get(),
            computed,
        });
    }
    if m.fsid.get() != fsid {
        return Err(invalid(format!("fsid {:x}", m.fsid.get())));
    }
    if m.ty > QUORUM_MSG_RESIGNATION {
        return Err(invalid(format!("message type {}", m.ty)));
    }
    if m.from as usize >= QUORUM_MAX_SLOTS {
        return Err(invalid(format!("slot {}", m.from)));
    }
    Ok(*m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(cmd: u8, flags: u8, error: u8) -> NetHeader {
        NetHeader {
            seq: 1.into(),
            recv_seq: 0.into(),
            id: 9.into(),
            data_len: 0.into(),
            cmd,
            flags,
            error,
            pad: [0; 3],
        }
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let ok = encode_frame(&header(Cmd::Lock as u8, 0, 0), &[0u8; 48]);
        let f = decode_frame(&ok).unwrap();
        assert_eq!((f.cmd, f.is_response, f.data.len()), (Cmd::Lock, false, 48));
        assert!(
            decode_frame(&encode_frame(&header(20, 0, 0), &[])).is_err(),
            "unknown cmd"
        );
        assert!(
            decode_frame(&encode_frame(&header(7, 2, 0), &[])).is_err(),
            "unknown flag"
        );
        assert!(
            decode_frame(&encode_frame(&header(7, 0, 3), &[])).is_err(),
            "error on request"
        );
        assert!(
            decode_frame(&encode_frame(&header(7, 1, 7), &[])).is_err(),
            "error code 7"
        );
        let resp = encode_frame(&header(7, 1, NET_ERR_ENOSPC), &[]);
        assert_eq!(decode_frame(&resp).unwrap().errno, libc::ENOSPC);
        let mut zero_id = header(7, 0, 0);
        zero_id.id = 0.into();
        assert!(decode_frame(&encode_frame(&zero_id, &[])).is_err(), "id 0");
        assert!(decode_frame(&ok[..ok.len() - 1]).is_err(), "truncated");
    }

    #[test]
    fn unknown_errnos_travel_as_einval() {
        assert_eq!(errno_to_wire(libc::EEXIST), NET_ERR_EINVAL);
        assert_eq!(
            wire_to_errno(errno_to_wire(libc::ENOLINK)),
            Some(libc::ENOLINK)
        );
    }

    #[test]
    fn quorum_messages_check_crc_fsid_type_and_slot() {
        let m = QuorumMessage::new(0xabc, 5, QUORUM_MSG_HEARTBEAT, 2);
        assert_eq!(decode_quorum_message(m.as_bytes(), 0xabc).unwrap(), m);
        assert!(decode_quorum_message(m.as_bytes(), 0xabd).is_err());
        let mut bad = m.as_bytes().to_vec();
        bad[16] ^= 1;
        assert!(decode_quorum_message(&bad, 0xabc).is_err());
        let wrong_slot = QuorumMessage::new(0xabc, 5, QUORUM_MSG_VOTE, 15);
        assert!(decode_quorum_message(wrong_slot.as_bytes(), 0xabc).is_err());
    }
}

/// STATFS reply: totals and free counts from the stable super plus every
/// log tree's allocators.
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
pub struct NetStatfs {
    pub uuid: [u8; 16],
    pub free_meta_blocks: U64,
    pub total_meta_blocks: U64,
    pub free_data_blocks: U64,
    pub total_data_blocks: U64,
    pub inode_count: U64,
}
assert_layout!(NetStatfs, 56);
