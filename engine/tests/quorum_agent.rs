//! Unit scenarios for the quorum agent, driven by hand, and hostile input.
//!
//! What it is for: pinning single behaviours of reference §6.2–§6.3 and the
//! traps of §11 item 26 (4495dbdc, bb3db7e2, e4dca8dd, a896984f) without the
//! simulation's randomness, and showing that no received bytes make the
//! agent panic.

use std::net::Ipv4Addr;
use std::time::Duration;

use engine::format::net::{
    decode_quorum_message, QuorumMessage, QUORUM_MSG_HEARTBEAT, QUORUM_MSG_REQUEST_VOTE,
    QUORUM_MSG_RESIGNATION, QUORUM_MSG_VOTE,
};
use engine::format::quorum::{
    QuorumBlock, QUORUM_EVENT_BEGIN, QUORUM_EVENT_ELECT, QUORUM_EVENT_END, QUORUM_EVENT_FENCE,
    QUORUM_EVENT_STOP, QUORUM_EVENT_TERM,
};
use engine::format::superblock::{InetAddr, QuorumConfig};
use engine::quorum::{
    decode_quorum_block, empty_blocks, encode_quorum_block, fence_requests, find_server,
    greatest_term, votes_needed, Action, Agent, AgentConfig, AgentError, ConfigError, Input,
    QuorumBlocks, Role, ServerState,
};
use zerocopy::IntoBytes;

const FSID: u64 = 0xf5;
const RID: u64 = 0x1234;

fn qconf(slots: &[u8]) -> QuorumConfig {
    let mut q = QuorumConfig::default();
    for &s in slots {
        q.slots[s as usize].addr = InetAddr::v4(Ipv4Addr::new(10, 0, 0, s + 1), 7000);
    }
    q
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn msg(term: u64, ty: u8, from: u8) -> Vec<u8> {
    QuorumMessage::new(FSID, term, ty, from).as_bytes().to_vec()
}

fn set_event(blocks: &mut QuorumBlocks, slot: usize, event: usize, rid: u64, term: u64) {
    blocks[slot].events[event].rid = rid.into();
    blocks[slot].events[event].term = term.into();
}

/// A harness that performs block I/O at once on an in-memory copy.
struct One {
    agent: Agent,
    blocks: QuorumBlocks,
    now: Duration,
    log: Vec<Action>,
}

impl One {
    fn new(slots: &[u8], slot: u8, blocks: QuorumBlocks) -> One {
        let cfg = AgentConfig::new(FSID, RID, slot, qconf(slots), 7);
        One {
            agent: Agent::new(cfg).unwrap(),
            blocks,
            now: Duration::ZERO,
            log: Vec::new(),
        }
    }

    /// Feeds an input and completes block I/O; returns the other actions.
    fn feed(&mut self, input: Input<'_>) -> Vec<Action> {
        let mut pending = self.agent.handle(self.now, input);
        let mut out = Vec::new();
        while !pending.is_empty() {
            let mut next = Vec::new();
            for a in pending {
                match a {
                    Action::ReadBlocks => {
                        let b = self.blocks;
                        next.extend(
                            self.agent
                                .handle(self.now, Input::BlocksRead { result: Ok(&b) }),
                        );
                    }
                    Action::WriteBlock { slot, block } => {
                        self.blocks[slot as usize] = *block;
                        next.extend(
                            self.agent
                                .handle(self.now, Input::BlockWritten { result: Ok(()) }),
                        );
                    }
                    other => {
                        self.log.push(other.clone());
                        out.push(other);
                    }
                }
            }
            pending = next;
        }
        out
    }

    fn start(&mut self) -> Vec<Action> {
        let b = self.blocks;
        self.feed(Input::Start { blocks: &b })
    }

    fn at(&mut self, t: Duration) -> Vec<Action> {
        self.now = t;
        self.feed(Input::Tick)
    }

    fn recv(&mut self, bytes: &[u8]) -> Vec<Action> {
        self.feed(Input::Recv {
            bytes,
            from_addr: None,
        })
    }

    fn ev(&self, slot: usize, event: usize) -> (u64, u64) {
        let e = self.blocks[slot].events[event];
        (e.rid.get(), e.term.get())
    }
}

fn sent(actions: &[Action], ty: u8) -> Vec<(Option<u8>, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to_slot, msg } => Some((Some(*to_slot), msg)),
            Action::Broadcast { msg } => Some((None, msg)),
            _ => None,
        })
        .filter_map(|(to, m)| {
            let m = decode_quorum_message(m, FSID).ok()?;
            (m.ty == ty).then_some((to, m.term.get()))
        })
        .collect()
}

fn start_server(actions: &[Action]) -> Option<(u64, usize)> {
    actions.iter().find_map(|a| match a {
        Action::StartServer {
            term,
            fence_requests,
        } => Some((*term, fence_requests.len())),
        _ => None,
    })
}

#[test]
fn quorum_config_is_checked() {
    let mut cfg = AgentConfig::new(FSID, RID, 3, qconf(&[0, 1]), 0);
    assert_eq!(
        Agent::new(cfg.clone()).unwrap_err(),
        ConfigError::SlotNotConfigured(3)
    );
    cfg.slot = 1;
    cfg.heartbeat_timeout = ms(1_999);
    assert!(matches!(
        Agent::new(cfg.clone()),
        Err(ConfigError::HeartbeatTimeout(1999))
    ));
    cfg.heartbeat_timeout = ms(60_001);
    assert!(Agent::new(cfg.clone()).is_err());
    cfg.heartbeat_timeout = ms(60_000);
    assert!(Agent::new(cfg).is_ok());
}

#[test]
fn quorum_votes_needed_follows_slot_count() {
    assert_eq!(votes_needed(&qconf(&[0])), 1);
    assert_eq!(votes_needed(&qconf(&[0, 9])), 1);
    assert_eq!(votes_needed(&qconf(&[0, 1, 2])), 2);
    assert_eq!(votes_needed(&qconf(&[0, 1, 2, 3])), 3);
    assert_eq!(votes_needed(&qconf(&[0, 1, 2, 3, 4])), 3);
}

/// 4495dbdc: the term starts from the greatest term in any slot, and BEGIN
/// records it with our rid and a bumped write_nr.
#[test]
fn quorum_starts_from_greatest_term_and_writes_begin() {
    let mut blocks = empty_blocks();
    set_event(&mut blocks, 2, QUORUM_EVENT_TERM, 99, 41);
    set_event(&mut blocks, 0, QUORUM_EVENT_STOP, 98, 17);
    blocks[0].write_nr = 5.into();
    // Unconfigured slots and events without a rid do not count.
    set_event(&mut blocks, 7, QUORUM_EVENT_TERM, 97, 500);
    set_event(&mut blocks, 1, QUORUM_EVENT_TERM, 0, 400);
    assert_eq!(greatest_term(&blocks, &qconf(&[0, 1, 2])), 41);
    let mut one = One::new(&[0, 1, 2], 0, blocks);
    one.start();
    assert_eq!(one.agent.term(), 41);
    assert_eq!(one.ev(0, QUORUM_EVENT_BEGIN), (RID, 41));
    assert_eq!(one.blocks[0].write_nr.get(), 6);
    assert_eq!(one.blocks[0].events[QUORUM_EVENT_BEGIN].write_nr.get(), 6);
}

/// Election timeout 250..350 ms when no leader shows in the blocks; the
/// heartbeat timeout when one does.
#[test]
fn quorum_start_timeout_depends_on_live_leader() {
    let timer = |acts: &[Action]| {
        acts.iter().rev().find_map(|a| match a {
            Action::SetTimer { deadline } => Some(*deadline),
            _ => None,
        })
    };
    let mut one = One::new(&[0, 1, 2], 0, empty_blocks());
    let t = timer(&one.start()).unwrap();
    assert!(t >= ms(250) && t < ms(350), "{t:?}");

    let mut blocks = empty_blocks();
    set_event(&mut blocks, 1, QUORUM_EVENT_ELECT, 77, 3);
    let mut one = One::new(&[0, 1, 2], 0, blocks);
    assert_eq!(timer(&one.start()).unwrap(), ms(10_000));
}

/// A single slot elects itself: candidate, leader, heartbeat, ELECT, then
/// the server; FENCE once it is up; heartbeats every 100 ms.
#[test]
fn quorum_single_slot_elects_itself_and_writes_elect_then_fence() {
    let mut one = One::new(&[4], 4, empty_blocks());
    one.start();
    let acts = one.at(ms(400));
    assert_eq!(one.agent.role(), Role::Leader);
    assert_eq!(one.ev(4, QUORUM_EVENT_ELECT), (RID, 1));
    assert_eq!(start_server(&acts), Some((1, 0)));
    one.feed(Input::ServerUp { term: 1 });
    assert_eq!(one.agent.server(), ServerState::Up { term: 1 });
    assert_eq!(one.ev(4, QUORUM_EVENT_FENCE), (RID, 1));
    assert_eq!(
        find_server(&one.blocks, &qconf(&[4])).map(|l| (l.slot, l.term)),
        Some((4, 1))
    );
}

/// a896984f: a stream of invalid or stale messages does not hold off the
/// election, while a valid heartbeat does.
#[test]
fn quorum_timeout_fires_only_without_valid_current_messages() {
    let mut one = One::new(&[0, 1, 2], 0, empty_blocks());
    one.start();
    one.now = ms(200);
    one.recv(&msg(1, QUORUM_MSG_HEARTBEAT, 1));
    assert_eq!(one.agent.term(), 1);
    // Heartbeat timeout now: nothing happens at 5 s even with junk arriving.
    one.now = ms(5_000);
    one.recv(&[0u8; 32]);
    one.recv(&msg(0, QUORUM_MSG_HEARTBEAT, 1));
    one.at(ms(5_000));
    assert_eq!(one.agent.role(), Role::Follower);
    // Past the heartbeat timeout, junk is "nothing received".
    one.now = ms(10_300);
    let acts = one.recv(&msg(0, QUORUM_MSG_HEARTBEAT, 2));
    assert_eq!(one.agent.role(), Role::Candidate);
    assert_eq!(one.agent.term(), 2);
    assert_eq!(one.ev(0, QUORUM_EVENT_TERM), (RID, 2), "term persisted");
    assert_eq!(sent(&acts, QUORUM_MSG_REQUEST_VOTE), vec![(None, 2)]);
}

/// Votes: once per term to the first requester; a candidate with a
/// majority leads; a resignation shortens the timeout.
#[test]
fn quorum_votes_once_per_term_and_counts_majority() {
    let mut one = One::new(&[0, 1, 2], 0, empty_blocks());
    one.start();
    let a = one.recv(&msg(1, QUORUM_MSG_REQUEST_VOTE, 1));
    assert_eq!(sent(&a, QUORUM_MSG_VOTE), vec![(Some(1), 1)]);
    let b = one.recv(&msg(1, QUORUM_MSG_REQUEST_VOTE, 2));
    assert!(
        sent(&b, QUORUM_MSG_VOTE).is_empty(),
        "second requester gets nothing"
    );
    // Heartbeat from the winner, then its resignation: election timeout.
    one.now = ms(100);
    one.recv(&msg(1, QUORUM_MSG_HEARTBEAT, 1));
    one.now = ms(200);
    one.recv(&msg(1, QUORUM_MSG_RESIGNATION, 1));
    one.at(ms(560));
    assert_eq!(one.agent.role(), Role::Candidate);
    assert_eq!(one.agent.term(), 2);
    let acts = one.recv(&msg(2, QUORUM_MSG_VOTE, 2));
    assert_eq!(one.agent.role(), Role::Leader);
    assert_eq!(sent(&acts, QUORUM_MSG_HEARTBEAT), vec![(None, 2)]);
    assert_eq!(
        start_server(&acts),
        Some((2, 0)),
        "slot 1 led without writing ELECT here"
    );
}

/// bb3db7e2 and §6.3: a new leader heartbeats while its server fences, gets
/// the earlier leader as a fence request, and may not serve before fencing.
#[test]
fn quorum_heartbeats_during_fencing_and_fence_before_serving() {
    let mut blocks = empty_blocks();
    set_event(&mut blocks, 1, QUORUM_EVENT_ELECT, 0xaaa, 3);
    let mut one = One::new(&[0, 1], 0, blocks);
    one.start();
    let acts = one.at(ms(10_000));
    assert_eq!(one.agent.role(), Role::Leader);
    assert_eq!(start_server(&acts), Some((4, 1)));
    let mut hb = 0;
    for t in (10_100..=12_000).step_by(100) {
        hb += sent(&one.at(ms(t)), QUORUM_MSG_HEARTBEAT).len();
    }
    assert!(hb >= 19, "heartbeats while fencing: {hb}");
    // Up before fencing is refused.
    let acts = one.feed(Input::ServerUp { term: 4 });
    assert!(acts.contains(&Action::StopServer { term: 4 }));
}

/// e4dca8dd: a failed server start makes the leader resign and write STOP,
/// and the agent stays in the election.
#[test]
fn quorum_failed_server_start_keeps_the_agent() {
    let mut one = One::new(&[0], 0, empty_blocks());
    one.start();
    one.at(ms(400));
    let acts = one.feed(Input::ServerStopped {
        term: 1,
        err: Some(-5),
    });
    assert_eq!(sent(&acts, QUORUM_MSG_RESIGNATION), vec![(None, 1)]);
    assert_eq!(one.ev(0, QUORUM_EVENT_STOP), (RID, 1));
    assert_eq!(one.agent.role(), Role::Follower);
    assert!(!one.agent.is_finished());
    one.at(ms(1_000));
    assert_eq!(one.agent.role(), Role::Leader);
    assert_eq!(one.agent.term(), 2);
}

/// A leader that sees a newer term stops its server; it does not stand
/// again until the server is fully down.
#[test]
fn quorum_newer_term_stops_the_leader_server() {
    let mut one = One::new(&[0, 1, 2], 0, empty_blocks());
    one.start();
    one.at(ms(400));
    one.recv(&msg(1, QUORUM_MSG_VOTE, 1));
    one.feed(Input::ServerUp { term: 1 });
    let acts = one.recv(&msg(5, QUORUM_MSG_REQUEST_VOTE, 2));
    assert!(acts.contains(&Action::StopServer { term: 1 }));
    assert_eq!((one.agent.role(), one.agent.term()), (Role::Follower, 5));
    // Timeout passes but the server is still stopping: no candidacy.
    one.at(ms(2_000));
    assert_eq!(one.agent.role(), Role::Follower);
    one.feed(Input::ServerStopped { term: 1, err: None });
    assert_eq!(one.ev(0, QUORUM_EVENT_STOP), (RID, 1));
    one.at(ms(3_000));
    assert_eq!(one.agent.role(), Role::Candidate);
}

/// A leader whose post-ELECT read shows a greater ELECT steps down instead
/// of starting a server nobody would fence.
#[test]
fn quorum_leader_steps_down_when_blocks_show_a_newer_leader() {
    let mut one = One::new(&[0, 1], 0, empty_blocks());
    one.start();
    one.now = ms(400);
    let acts = one.agent.handle(one.now, Input::Tick);
    assert_eq!(one.agent.role(), Role::Leader);
    // Perform I/O by hand and slip a newer ELECT into slot 1 before the scan.
    let mut acts = acts;
    let mut started = false;
    for _ in 0..20 {
        let mut next = Vec::new();
        for a in acts {
            match a {
                Action::ReadBlocks => {
                    if one.ev(0, QUORUM_EVENT_ELECT).1 == 1 {
                        set_event(&mut one.blocks, 1, QUORUM_EVENT_ELECT, 0xbbb, 2);
                    }
                    let b = one.blocks;
                    next.extend(
                        one.agent
                            .handle(one.now, Input::BlocksRead { result: Ok(&b) }),
                    );
                }
                Action::WriteBlock { slot, block } => {
                    one.blocks[slot as usize] = *block;
                    next.extend(
                        one.agent
                            .handle(one.now, Input::BlockWritten { result: Ok(()) }),
                    );
                }
                Action::StartServer { .. } => started = true,
                _ => {}
            }
        }
        acts = next;
    }
    assert!(!started);
    assert_eq!((one.agent.role(), one.agent.term()), (Role::Follower, 2));
    assert_eq!(
        one.ev(0, QUORUM_EVENT_STOP),
        (RID, 1),
        "the unstarted term is recorded stopped"
    );
}

/// Two mounts on one slot: our BEGIN rid was overwritten.
#[test]
fn quorum_another_rid_in_begin_fails_the_agent() {
    let mut one = One::new(&[0, 1, 2], 0, empty_blocks());
    one.start();
    set_event(&mut one.blocks, 0, QUORUM_EVENT_BEGIN, 0x999, 0);
    let acts = one.recv(&msg(3, QUORUM_MSG_HEARTBEAT, 1));
    assert!(acts.contains(&Action::Failed {
        error: AgentError::SlotInUse {
            ours: RID,
            found: 0x999
        }
    }));
    assert!(one.agent.is_finished());
    assert_eq!(
        one.ev(0, QUORUM_EVENT_TERM),
        (0, 0),
        "nothing written after the conflict"
    );
}

/// Shutdown of a leader: stop the server, resign, STOP, END, exit.
#[test]
fn quorum_shutdown_stops_resigns_and_ends() {
    let mut one = One::new(&[0], 0, empty_blocks());
    one.start();
    one.at(ms(400));
    one.feed(Input::ServerUp { term: 1 });
    let acts = one.feed(Input::Shutdown);
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::StopServer { term: 1 }))
            .count(),
        1
    );
    let acts = one.feed(Input::ServerStopped { term: 1, err: None });
    assert_eq!(sent(&acts, QUORUM_MSG_RESIGNATION), vec![(None, 1)]);
    assert!(acts.contains(&Action::Exited));
    assert_eq!(one.ev(0, QUORUM_EVENT_STOP), (RID, 1));
    assert_eq!(one.ev(0, QUORUM_EVENT_END), (RID, 1));
    assert!(find_server(&one.blocks, &qconf(&[0])).is_none());
}

/// §6.3 fence selection: live ELECTs and FENCE records between STOP and
/// ELECT, at or above the greatest FENCE term, up to ours, not our rid.
#[test]
fn quorum_fence_requests_follow_the_reference_rules() {
    let q = qconf(&[0, 1, 2, 3]);
    let mut b = empty_blocks();
    // Slot 0: leader of term 5 still running.
    set_event(&mut b, 0, QUORUM_EVENT_ELECT, 0xa, 5);
    // Slot 1: stopped leader of term 4: nothing to fence.
    set_event(&mut b, 1, QUORUM_EVENT_ELECT, 0xb, 4);
    set_event(&mut b, 1, QUORUM_EVENT_STOP, 0xb, 4);
    // Slot 2: an old leader recorded by FENCE 3 (never stopped), then a new
    // mount of that slot elected in 6, still running.
    set_event(&mut b, 2, QUORUM_EVENT_FENCE, 0xc1, 3);
    set_event(&mut b, 2, QUORUM_EVENT_ELECT, 0xc2, 6);
    // Slot 3: us, and a leader newer than our term is left alone.
    set_event(&mut b, 3, QUORUM_EVENT_ELECT, 0xd, 7);
    let reqs = fence_requests(&b, &q, 0xd, 7);
    let got: Vec<(u64, usize, u64)> = reqs.iter().map(|r| (r.rid, r.slot, r.term)).collect();
    assert_eq!(got, vec![(0xa, 0, 5), (0xc2, 2, 6), (0xc1, 2, 3)]);
    assert!(reqs
        .iter()
        .all(|r| r.reason.as_str() == "quorum_block_leader"));
    // FENCE 3 in slot 2 is the greatest: a leader of term 2 is skipped.
    set_event(&mut b, 1, QUORUM_EVENT_ELECT, 0xb, 2);
    set_event(&mut b, 1, QUORUM_EVENT_STOP, 0, 0);
    assert!(!fence_requests(&b, &q, 0xd, 7).iter().any(|r| r.rid == 0xb));
    // Newer than our term: skipped.
    assert!(!fence_requests(&b, &q, 0xd, 5).iter().any(|r| r.rid == 0xc2));
    // find_server: greatest live ELECT.
    assert_eq!(find_server(&b, &q).map(|l| (l.slot, l.term)), Some((3, 7)));
}

#[test]
fn quorum_blocks_round_trip_and_refuse_damage() {
    let mut blk = QuorumBlock {
        write_nr: 3.into(),
        ..Default::default()
    };
    blk.events[QUORUM_EVENT_ELECT].term = 9.into();
    let bytes = encode_quorum_block(&blk, FSID, 4);
    assert_eq!(bytes.len(), 4096);
    let back = decode_quorum_block(&bytes, FSID, 4).unwrap();
    assert_eq!(back.events, blk.events);
    assert!(decode_quorum_block(&bytes, FSID, 5).is_err(), "wrong slot");
    assert!(
        decode_quorum_block(&bytes, FSID + 1, 4).is_err(),
        "wrong fsid"
    );
    let mut bad = bytes.clone();
    bad[100] ^= 1;
    assert!(decode_quorum_block(&bad, FSID, 4).is_err(), "crc");
    assert!(
        decode_quorum_block(&bytes[..300], FSID, 4).is_err(),
        "short"
    );
    assert!(
        decode_quorum_block(&bytes, FSID, 99).is_err(),
        "slot out of range"
    );
}

/// Random datagrams, and well-formed ones with random fields, never panic
/// the agent; malformed ones never change its term.
#[test]
fn quorum_random_bytes_never_panic() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for slot in [0u8, 1] {
        let mut one = One::new(&[0, 1, 2], slot, empty_blocks());
        one.start();
        let term = one.agent.term();
        for i in 0..20_000u64 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            one.now = ms(i / 100);
            one.recv(&bytes);
            assert_eq!(one.agent.term(), term);
        }
        for i in 0..20_000u64 {
            let r = next();
            let m = QuorumMessage::new(FSID, r % 8, (r >> 8) as u8 % 4, (r >> 16) as u8 % 16);
            one.now = ms(200 + i / 100);
            one.recv(m.as_bytes());
            one.at(one.now);
            if i % 1000 == 0 {
                let up = one.agent.server();
                if let ServerState::Starting { term, .. } = up {
                    one.feed(Input::FencingDone {
                        term,
                        result: Ok(()),
                    });
                    one.feed(Input::ServerUp { term });
                }
            }
        }
        assert!(!one.agent.is_finished());
    }
}
