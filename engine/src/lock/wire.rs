//! Payloads of the LOCK and LOCK_RECOVER commands (reference §4.3, §4.6,
//! §5.3) and their validation.
//!
//! The state machines speak [`NetLock`] directly so the glue only moves
//! these bytes; everything a peer sends is checked here, once, before it
//! reaches a state machine. The original leaves `write_seq` and the pad of
//! server→client invalidations uninitialised (§12), so neither is required
//! to be zero; the key's own pad is, because keys are hashed raw.

use zerocopy::IntoBytes;

use super::mode::LockMode;
use crate::format::key::Key;
use crate::format::net::{Cmd, NetLock, NetLockRecoverHeader, LOCK_RECOVER_MAX_LOCKS};
use crate::format::{read_struct, FormatError};

pub const NET_LOCK_BYTES: usize = std::mem::size_of::<NetLock>();
pub const LOCK_RECOVER_HEADER_BYTES: usize = std::mem::size_of::<NetLockRecoverHeader>();
/// Largest LOCK_RECOVER reply payload.
pub const LOCK_RECOVER_MAX_BYTES: usize =
    LOCK_RECOVER_HEADER_BYTES + LOCK_RECOVER_MAX_LOCKS * NET_LOCK_BYTES;

/// A [`NetLock`] with its key and modes decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockMsg {
    pub key: Key,
    pub write_seq: u64,
    pub old: LockMode,
    pub new: LockMode,
}

impl LockMsg {
    pub fn to_net(&self) -> NetLock {
        NetLock {
            key: self.key.to_disk(),
            write_seq: self.write_seq.into(),
            old_mode: self.old.to_wire(),
            new_mode: self.new.to_wire(),
            pad: [0; 6],
        }
    }

    /// Refuses bad key pads and modes outside NULL..=WRITE_ONLY.
    pub fn from_net(nl: &NetLock) -> Result<LockMsg, FormatError> {
        let mode = |v: u8| {
            LockMode::from_wire(v)
                .ok_or_else(|| FormatError::Corrupt(format!("lock mode {v} invalid")))
        };
        Ok(LockMsg {
            key: Key::from_disk(&nl.key)?,
            write_seq: nl.write_seq.get(),
            old: mode(nl.old_mode)?,
            new: mode(nl.new_mode)?,
        })
    }
}

pub fn encode_lock(nl: &NetLock) -> Vec<u8> {
    nl.as_bytes().to_vec()
}

/// A LOCK payload must be exactly one [`NetLock`].
pub fn decode_lock(bytes: &[u8]) -> Result<NetLock, FormatError> {
    if bytes.len() != NET_LOCK_BYTES {
        return Err(FormatError::Corrupt(format!(
            "LOCK payload of {} bytes, want {NET_LOCK_BYTES}",
            bytes.len()
        )));
    }
    Ok(*read_struct::<NetLock>(bytes)?)
}

/// The LOCK_RECOVER request: the key to continue from.
pub fn encode_recover_request(key: &Key) -> Vec<u8> {
    key.to_bytes().to_vec()
}

pub fn decode_recover_request(bytes: &[u8]) -> Result<Key, FormatError> {
    if bytes.len() != 32 {
        return Err(FormatError::Corrupt(format!(
            "LOCK_RECOVER request of {} bytes, want 32",
            bytes.len()
        )));
    }
    Key::from_disk(read_struct(bytes)?)
}

/// The answer of a mount that holds no locks at all (its lock client is
/// gone: an unmount waiting for its farewell): an invalidation is already
/// satisfied, and recovery finds nothing. Without it the server would wait
/// for an answer that never comes and fence the mount (trap: a member
/// unmounting while the leader changes).
pub fn answer_holding_nothing(cmd: Cmd, data: &[u8]) -> Result<Vec<u8>, i32> {
    match cmd {
        Cmd::Lock => {
            let m = decode_lock(data)
                .and_then(|nl| LockMsg::from_net(&nl))
                .map_err(|_| libc::EINVAL)?;
            Ok(encode_lock(
                &LockMsg {
                    new: LockMode::Null,
                    ..m
                }
                .to_net(),
            ))
        }
        Cmd::LockRecover => {
            decode_recover_request(data).map_err(|_| libc::EINVAL)?;
            Ok(encode_recover_reply(&[]))
        }
        _ => Err(libc::EOPNOTSUPP),
    }
}

/// The LOCK_RECOVER reply: a header and at most 22 locks.
pub fn encode_recover_reply(locks: &[NetLock]) -> Vec<u8> {
    assert!(locks.len() <= LOCK_RECOVER_MAX_LOCKS);
    let hdr = NetLockRecoverHeader {
        nr: (locks.len() as u16).into(),
        pad: [0; 6],
    };
    let mut out = Vec::with_capacity(LOCK_RECOVER_HEADER_BYTES + locks.len() * NET_LOCK_BYTES);
    out.extend_from_slice(hdr.as_bytes());
    for nl in locks {
        out.extend_from_slice(nl.as_bytes());
    }
    out
}

pub fn decode_recover_reply(bytes: &[u8]) -> Result<Vec<NetLock>, FormatError> {
    let hdr: &NetLockRecoverHeader = read_struct(bytes)?;
    let nr = hdr.nr.get() as usize;
    if nr > LOCK_RECOVER_MAX_LOCKS {
        return Err(FormatError::Corrupt(format!(
            "LOCK_RECOVER reply of {nr} locks (max {LOCK_RECOVER_MAX_LOCKS})"
        )));
    }
    let want = LOCK_RECOVER_HEADER_BYTES + nr * NET_LOCK_BYTES;
    if bytes.len() != want {
        return Err(FormatError::Corrupt(format!(
            "LOCK_RECOVER reply of {} bytes, header says {want}",
            bytes.len()
        )));
    }
    Ok(bytes[LOCK_RECOVER_HEADER_BYTES..]
        .chunks_exact(NET_LOCK_BYTES)
        .map(|c| *read_struct::<NetLock>(c).expect("exact chunk"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(first: u64, old: LockMode, new: LockMode) -> LockMsg {
        LockMsg {
            key: Key::new(16, first, 0, 0, 0, 0),
            write_seq: 77,
            old,
            new,
        }
    }

    #[test]
    fn lock_round_trips_and_modes_are_checked() {
        let m = msg(1024, LockMode::Read, LockMode::Write);
        let bytes = encode_lock(&m.to_net());
        assert_eq!(bytes.len(), 48);
        assert_eq!(bytes[40], 1);
        assert_eq!(bytes[41], 2);
        let back = LockMsg::from_net(&decode_lock(&bytes).unwrap()).unwrap();
        assert_eq!(back, m);

        let mut bad = bytes.clone();
        bad[41] = 4;
        assert!(LockMsg::from_net(&decode_lock(&bad).unwrap()).is_err());
        assert!(decode_lock(&bytes[..47]).is_err());
        // Uninitialised pad after the modes is accepted (§12).
        let mut pad = bytes;
        pad[47] = 0xaa;
        assert!(LockMsg::from_net(&decode_lock(&pad).unwrap()).is_ok());
    }

    #[test]
    fn recover_reply_round_trips_and_is_bounded() {
        let locks: Vec<NetLock> = (0..LOCK_RECOVER_MAX_LOCKS as u64)
            .map(|i| msg(i * 1024, LockMode::Write, LockMode::Write).to_net())
            .collect();
        let bytes = encode_recover_reply(&locks);
        assert_eq!(bytes.len(), LOCK_RECOVER_MAX_BYTES);
        assert_eq!(decode_recover_reply(&bytes).unwrap(), locks);
        assert_eq!(
            decode_recover_reply(&encode_recover_reply(&[])).unwrap(),
            vec![]
        );

        let mut over = bytes.clone();
        over[0] = 23;
        assert!(decode_recover_reply(&over).is_err());
        assert!(decode_recover_reply(&bytes[..bytes.len() - 1]).is_err());

        let k = Key::new(16, 5, 4, 3, 2, 1);
        assert_eq!(
            decode_recover_request(&encode_recover_request(&k)).unwrap(),
            k
        );
    }
}
