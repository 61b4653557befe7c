//! Byte-stream framer: turns arbitrary chunks of received TCP bytes into
//! whole, validated messages (reference §5.1).
//!
//! Guarantees:
//! * Every message handed out passed [`decode_frame`], so it carries a known
//!   command, known flags, an error code only on a response, a nonzero id and
//!   a nonzero seq unless it is a greeting.
//! * The first invalid frame yields a [`DropReason`]; the framer is then
//!   poisoned and refuses everything after it: the connection must be dropped.
//!   An oversized `data_len` is refused as soon as the header is complete,
//!   before any of its payload is awaited.
//! * At most one frame's worth of partial data is buffered
//!   ([`MAX_FRAME_BYTES`]), whatever the size of the chunks fed in.
//!
//! Touches only `format::net`.

use crate::format::net::{
    decode_frame, encode_frame, errno_to_wire, Cmd, NetHeader, NET_FLAG_RESPONSE, NET_HEADER_BYTES,
    NET_MAX_DATA_BYTES,
};

/// Largest frame on the wire: header plus the largest payload.
pub const MAX_FRAME_BYTES: usize = NET_HEADER_BYTES + NET_MAX_DATA_BYTES;

/// One validated message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub seq: u64,
    pub recv_seq: u64,
    pub id: u64,
    pub cmd: Cmd,
    pub is_response: bool,
    /// errno of a response, 0 for success; always 0 on requests.
    pub errno: i32,
    pub data: Vec<u8>,
}

impl Msg {
    /// Encodes the message; the errno is mapped through `errno_to_wire`.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.data.len() <= NET_MAX_DATA_BYTES,
            "payload over the protocol limit"
        );
        assert!(
            self.is_response || self.errno == 0,
            "a request carries no error"
        );
        let header = NetHeader {
            seq: self.seq.into(),
            recv_seq: self.recv_seq.into(),
            id: self.id.into(),
            data_len: (self.data.len() as u16).into(),
            cmd: self.cmd as u8,
            flags: if self.is_response {
                NET_FLAG_RESPONSE
            } else {
                0
            },
            error: errno_to_wire(self.errno),
            pad: [0; 3],
        };
        encode_frame(&header, &self.data)
    }
}

/// Why a byte stream must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropReason(pub String);

/// Incremental frame reassembly for one socket.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    poisoned: Option<DropReason>,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            buf: Vec::with_capacity(MAX_FRAME_BYTES),
            poisoned: None,
        }
    }

    /// Bytes of a partial frame currently held (never above [`MAX_FRAME_BYTES`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds one received chunk; whole messages are appended to `out` in
    /// arrival order. On the first invalid frame, the messages before it stay
    /// in `out` and the verdict is returned (and returned again on every later
    /// call).
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Msg>) -> Result<(), DropReason> {
        if let Some(reason) = &self.poisoned {
            return Err(reason.clone());
        }
        while !chunk.is_empty() {
            let need = self.needed();
            let take = (need - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            debug_assert!(self.buf.len() <= MAX_FRAME_BYTES);
            if self.buf.len() == NET_HEADER_BYTES {
                let data_len = self.data_len();
                if data_len > NET_MAX_DATA_BYTES {
                    return Err(
                        self.poison(format!("data_len {data_len} over {NET_MAX_DATA_BYTES}"))
                    );
                }
            }
            if self.buf.len() == self.needed() {
                let msg = match decode_frame(&self.buf) {
                    Ok(f) => Msg {
                        seq: f.header.seq.get(),
                        recv_seq: f.header.recv_seq.get(),
                        id: f.header.id.get(),
                        cmd: f.cmd,
                        is_response: f.is_response,
                        errno: f.errno,
                        data: f.data.to_vec(),
                    },
                    Err(e) => return Err(self.poison(e.to_string())),
                };
                self.buf.clear();
                out.push(msg);
            }
        }
        Ok(())
    }

    fn data_len(&self) -> usize {
        u16::from_le_bytes([self.buf[24], self.buf[25]]) as usize
    }

    /// Length of the frame being assembled, as far as it is known.
    fn needed(&self) -> usize {
        if self.buf.len() < NET_HEADER_BYTES {
            NET_HEADER_BYTES
        } else {
            NET_HEADER_BYTES + self.data_len()
        }
    }

    fn poison(&mut self, why: String) -> DropReason {
        let reason = DropReason(why);
        self.poisoned = Some(reason.clone());
        self.buf = Vec::new();
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, len: usize) -> Msg {
        Msg {
            seq: id,
            recv_seq: 0,
            id,
            cmd: Cmd::Statfs,
            is_response: false,
            errno: 0,
            data: vec![id as u8; len],
        }
    }

    #[test]
    fn reassembles_byte_by_byte() {
        let mut bytes = msg(1, 0).encode();
        bytes.extend(msg(2, NET_MAX_DATA_BYTES).encode());
        let mut f = Framer::new();
        let mut out = Vec::new();
        for b in &bytes {
            f.feed(std::slice::from_ref(b), &mut out).unwrap();
            assert!(f.buffered() <= MAX_FRAME_BYTES);
        }
        assert_eq!(out, vec![msg(1, 0), msg(2, NET_MAX_DATA_BYTES)]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn oversized_header_is_refused_before_its_payload() {
        let mut bytes = msg(1, 0).encode();
        bytes[24..26].copy_from_slice(&1101u16.to_le_bytes());
        let mut f = Framer::new();
        let mut out = Vec::new();
        assert!(f.feed(&bytes, &mut out).is_err());
        assert!(
            f.feed(&msg(2, 0).encode(), &mut out).is_err(),
            "stays poisoned"
        );
        assert!(out.is_empty());
    }
}
