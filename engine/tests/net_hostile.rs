//! Hostile input into the framer and the connection state machines: random
//! bytes and mutated valid frames, cut into random chunks, must end in
//! frames or a drop verdict, never a panic, and never buffer more than one
//! frame. Every frame the framer lets through must be a valid frame.

use engine::format::net::{decode_frame, Cmd, NetGreeting, NetHeader, NET_HEADER_BYTES};
use engine::net::{Action, Conn, Framer, Msg, ServerNet, SockId, MAX_FRAME_BYTES};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use zerocopy::IntoBytes;

fn seeds() -> u64 {
    std::env::var("SCOUTFS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn valid_stream(rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..rng.gen_range(1..6u64) {
        let is_response = rng.gen();
        let len = rng.gen_range(0..=1100usize);
        let msg = Msg {
            seq: i + 1,
            recv_seq: rng.gen_range(0..10),
            id: rng.gen_range(1..100),
            cmd: Cmd::from_wire(rng.gen_range(0..20)).unwrap(),
            is_response,
            errno: if is_response && rng.gen() {
                libc::EIO
            } else {
                0
            },
            data: (0..len).map(|_| rng.gen()).collect(),
        };
        bytes.extend(msg.encode());
    }
    bytes
}

fn mutate(rng: &mut SmallRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..4) {
            0 => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                // Header fields are where the validation lives.
                let i = rng.gen_range(0..NET_HEADER_BYTES.min(bytes.len()));
                bytes[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..bytes.len());
                bytes.truncate(i.max(1));
            }
            _ => {
                let i = rng.gen_range(0..=bytes.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
                bytes.splice(i..i, junk);
            }
        }
    }
}

fn chunks<'a>(rng: &mut SmallRng, mut bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = rng.gen_range(1..=bytes.len().min(2000));
        out.push(&bytes[..n]);
        bytes = &bytes[n..];
    }
    out
}

fn hostile_bytes(rng: &mut SmallRng) -> Vec<u8> {
    if rng.gen_range(0..3) == 0 {
        (0..rng.gen_range(1..4000)).map(|_| rng.gen()).collect()
    } else {
        let mut b = valid_stream(rng);
        mutate(rng, &mut b);
        b
    }
}

#[test]
fn net_hostile_framer_frames_or_drops() {
    let (mut frames, mut drops) = (0, 0);
    for seed in 0..seeds() * 4 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let bytes = hostile_bytes(&mut rng);
        let mut f = Framer::new();
        let mut out = Vec::new();
        let mut dropped = false;
        for c in chunks(&mut rng, &bytes) {
            let r = f.feed(c, &mut out);
            assert!(f.buffered() <= MAX_FRAME_BYTES, "seed {seed}");
            if r.is_err() {
                dropped = true;
                assert!(
                    f.feed(&[0], &mut Vec::new()).is_err(),
                    "seed {seed}: poisoned"
                );
                break;
            }
        }
        for m in &out {
            assert!(
                decode_frame(&m.encode()).is_ok(),
                "seed {seed}: invalid frame let through"
            );
        }
        frames += out.len();
        drops += dropped as usize;
    }
    assert!(
        frames > 0 && drops > 0,
        "both outcomes seen: {frames} frames, {drops} drops"
    );
}

#[test]
fn net_hostile_valid_streams_reassemble_exactly() {
    for seed in 0..seeds() {
        let mut rng = SmallRng::seed_from_u64(seed);
        let bytes = valid_stream(&mut rng);
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in chunks(&mut rng, &bytes) {
            f.feed(c, &mut out).unwrap();
        }
        let again: Vec<u8> = out.iter().flat_map(|m| m.encode()).collect();
        assert_eq!(again, bytes, "seed {seed}");
        assert_eq!(f.buffered(), 0);
    }
}

fn header(seq: u64, id: u64, cmd: u8, flags: u8, error: u8, data_len: u16) -> Vec<u8> {
    let h = NetHeader {
        seq: seq.into(),
        recv_seq: 0.into(),
        id: id.into(),
        data_len: data_len.into(),
        cmd,
        flags,
        error,
        pad: [0; 3],
    };
    let mut b = h.as_bytes().to_vec();
    b.resize(NET_HEADER_BYTES + data_len as usize, 0);
    b
}

#[test]
fn net_hostile_each_rule_drops() {
    let bad = [
        ("oversized", header(1, 1, 7, 0, 0, 1101)),
        ("unknown cmd", header(1, 1, 20, 0, 0, 0)),
        ("unknown flag", header(1, 1, 7, 2, 0, 0)),
        ("error code 7", header(1, 1, 7, 1, 7, 0)),
        ("error on a request", header(1, 1, 7, 0, 3, 0)),
        ("seq 0", header(0, 1, 7, 0, 0, 0)),
        ("id 0", header(1, 0, 7, 0, 0, 0)),
        ("greeting id 0", header(0, 0, 0, 0, 0, 0)),
    ];
    for (what, bytes) in bad {
        let mut f = Framer::new();
        let mut out = Vec::new();
        assert!(f.feed(&bytes, &mut out).is_err(), "{what} accepted");
        assert!(out.is_empty());
    }
    let mut f = Framer::new();
    let mut out = Vec::new();
    f.feed(&header(0, 1, 0, 0, 0, 0), &mut out).unwrap();
    assert_eq!(out.len(), 1, "a greeting may carry seq 0");
}

fn greeting(term: u64) -> NetGreeting {
    NetGreeting {
        fsid: 1.into(),
        fmt_vers: 2.into(),
        server_term: term.into(),
        rid: 9.into(),
        flags: 0.into(),
    }
}

#[test]
fn net_hostile_bytes_into_conn_and_server() {
    for seed in 0..seeds() {
        let mut rng = SmallRng::seed_from_u64(seed);
        let now = Duration::from_secs(1);
        // Client waiting for a greeting reply, and one that is ready.
        let mut client = Conn::new_client(greeting(0));
        let mut out = Vec::new();
        client.connected(SockId(1), &mut out);
        let bytes = hostile_bytes(&mut rng);
        for c in chunks(&mut rng, &bytes) {
            client.recv(SockId(1), c, &mut out);
        }
        // Server: hostile bytes on a fresh socket, and after a greeting.
        let mut server = ServerNet::new(3);
        server.accepted(SockId(1));
        for c in chunks(&mut rng, &bytes) {
            server.recv(SockId(1), c, now, &mut out);
        }
        server.accepted(SockId(2));
        let g = Msg {
            seq: 0,
            recv_seq: 0,
            id: 1,
            cmd: Cmd::Greeting,
            is_response: false,
            errno: 0,
            data: greeting(0).as_bytes().to_vec(),
        };
        server.recv(SockId(2), &g.encode(), now, &mut out);
        server.accept_greeting(SockId(2), &mut out);
        for c in chunks(&mut rng, &bytes) {
            server.recv(SockId(2), c, now, &mut out);
        }
        for a in &out {
            if let Action::Request { req, .. } = a {
                server.respond(9, *req, libc::EIO, vec![], &mut out.clone());
            }
        }
        server.tick(now + Duration::from_secs(60), &mut out);
    }
}
