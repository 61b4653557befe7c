//! The quorum agent: the election of reference §6.2 as a sans-IO state
//! machine.
//!
//! The caller owns the UDP socket, the metadata device, the clock, the timer
//! and the server; the agent only answers [`Input`]s with [`Action`]s. Given
//! the same inputs (including the seed in [`AgentConfig`]) it produces the
//! same actions, so a simulation replays it exactly.
//!
//! What it guarantees, given a caller that performs the actions in order:
//! * Block updates are serialised: one read-modify-write of our slot's
//!   block at a time, each checking first that BEGIN still holds our rid (a
//!   different rid means two mounts share the slot: [`Action::Failed`]).
//! * ELECT is durable before the server is asked to start, and the fence
//!   requests handed to [`Action::StartServer`] come from a read of every
//!   block made after that write. If that read shows a greater ELECT term,
//!   a newer leader exists or existed: we step down instead of starting a
//!   server that nobody would fence (see [`Agent`] for the race this closes).
//! * A server is never reported as serving (FENCE written) before the
//!   caller reported fencing done, unless there was nothing to fence.
//! * The agent never starts an election while its server is not fully down,
//!   and only when its timeout passes with nothing valid received (a896984f).
//! * A server that stops, for any reason, leads to RESIGNATION and STOP; the
//!   agent carries on as a follower (e4dca8dd).
//! * Received bytes are never trusted: anything [`decode_quorum_message`]
//!   refuses, from an unconfigured slot or from ourselves is ignored.

use std::collections::VecDeque;
use std::time::Duration;

use zerocopy::IntoBytes;

use super::blocks::{
    fence_requests, find_server, greatest_elect_term, greatest_term, slot_present, votes_needed,
    FenceRequest, QuorumBlocks,
};
use crate::format::net::{
    decode_quorum_message, QuorumMessage, QUORUM_MSG_HEARTBEAT, QUORUM_MSG_REQUEST_VOTE,
    QUORUM_MSG_RESIGNATION, QUORUM_MSG_VOTE,
};
use crate::format::quorum::{
    QuorumBlock, Timespec, QUORUM_EVENT_BEGIN, QUORUM_EVENT_ELECT, QUORUM_EVENT_END,
    QUORUM_EVENT_FENCE, QUORUM_EVENT_NAMES, QUORUM_EVENT_STOP, QUORUM_EVENT_TERM,
};
use crate::format::superblock::QuorumConfig;
use crate::format::QUORUM_MAX_SLOTS;

/// Shortest election timeout.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
/// Election timeouts add a random 0..ELECTION_JITTER_MS (exclusive).
pub const ELECTION_JITTER_MS: u64 = 100;
/// A leader heartbeats this often.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// `quorum_heartbeat_timeout_ms` default and accepted range.
pub const HEARTBEAT_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const HEARTBEAT_TIMEOUT_MIN_MS: u64 = 2_000;
pub const HEARTBEAT_TIMEOUT_MAX_MS: u64 = 60_000;
/// How long a new leader waits for fencing before giving up its server.
pub const FENCE_TIMEOUT_MS: u64 = 15_000;
/// Size of an election datagram.
pub const QUORUM_MESSAGE_BYTES: usize = 32;

/// Everything an agent needs to know at construction.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub fsid: u64,
    /// This mount's rid (never 0).
    pub rid: u64,
    /// Our `quorum_slot_nr`; must be configured in `qconf`.
    pub slot: u8,
    pub qconf: QuorumConfig,
    /// `quorum_heartbeat_timeout_ms`, within the accepted range.
    pub heartbeat_timeout: Duration,
    /// How long the server may take to fence earlier leaders.
    pub fence_timeout: Duration,
    /// Wall-clock time at `now == 0`, stamped into block events (`now` is
    /// the monotonic time the caller passes to [`Agent::handle`]).
    pub wall_base: Duration,
    /// Seeds the election-timeout jitter; all randomness comes from here.
    pub seed: u64,
}

impl AgentConfig {
    /// A configuration with the reference's default timeouts.
    pub fn new(fsid: u64, rid: u64, slot: u8, qconf: QuorumConfig, seed: u64) -> Self {
        AgentConfig {
            fsid,
            rid,
            slot,
            qconf,
            heartbeat_timeout: Duration::from_millis(HEARTBEAT_TIMEOUT_DEFAULT_MS),
            fence_timeout: Duration::from_millis(FENCE_TIMEOUT_MS),
            wall_base: Duration::ZERO,
            seed,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("quorum slot {0} is not configured in the super block")]
    SlotNotConfigured(u8),
    #[error("quorum_heartbeat_timeout_ms {0} outside {HEARTBEAT_TIMEOUT_MIN_MS}..={HEARTBEAT_TIMEOUT_MAX_MS}")]
    HeartbeatTimeout(u128),
    #[error("rid 0 is reserved")]
    ZeroRid,
}

/// Why an agent stopped participating in quorum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("quorum block begin rid {found:016x} != our rid {ours:016x}, are multiple mounts configured with this slot?")]
    SlotInUse { ours: u64, found: u64 },
    #[error("quorum block I/O error {0}")]
    Io(i32),
}

/// What happened, fed to [`Agent::handle`] with the current monotonic time.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Start the agent with every slot's block as read at start (blocks of
    /// unconfigured slots may be anything).
    Start { blocks: &'a QuorumBlocks },
    /// A datagram arrived on the election socket. The sender's address is
    /// informational: the message names its slot (as in the original).
    Recv {
        bytes: &'a [u8],
        from_addr: Option<std::net::SocketAddr>,
    },
    /// The timer set by the last [`Action::SetTimer`] may have expired.
    /// Ticks at any other time are harmless.
    Tick,
    /// Answer to [`Action::ReadBlocks`] (an errno on failure).
    BlocksRead {
        result: Result<&'a QuorumBlocks, i32>,
    },
    /// Answer to [`Action::WriteBlock`], once the write is durable.
    BlockWritten { result: Result<(), i32> },
    /// The server started by [`Action::StartServer`] in `term` finished
    /// fencing (every request answered), or failed to.
    FencingDone { term: u64, result: Result<(), i32> },
    /// The server of `term` is up and serving. Only valid after
    /// `FencingDone` succeeded, unless it had nothing to fence.
    ServerUp { term: u64 },
    /// The server of `term` has fully stopped, cleanly or not (`err`).
    ServerStopped { term: u64, err: Option<i32> },
    /// The mount is going away: stop the server, resign, write STOP and END.
    Shutdown,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a datagram to one slot's address.
    Send {
        to_slot: u8,
        msg: [u8; QUORUM_MESSAGE_BYTES],
    },
    /// Send a datagram to every configured slot but ours.
    Broadcast {
        msg: [u8; QUORUM_MESSAGE_BYTES],
    },
    /// Read every slot's quorum block; answer with [`Input::BlocksRead`].
    ReadBlocks,
    /// Write our slot's block (seal it with
    /// [`super::blocks::encode_quorum_block`]); answer with
    /// [`Input::BlockWritten`] once durable.
    WriteBlock {
        slot: u8,
        block: Box<QuorumBlock>,
    },
    /// Arm the single timer; it replaces any earlier one.
    SetTimer {
        deadline: Duration,
    },
    /// Start the server asynchronously. It must fence every request (and
    /// report [`Input::FencingDone`]) before serving, then report
    /// [`Input::ServerUp`].
    StartServer {
        term: u64,
        fence_requests: Vec<FenceRequest>,
    },
    /// Stop the server of `term`; answer with [`Input::ServerStopped`].
    StopServer {
        term: u64,
    },
    Log {
        level: LogLevel,
        msg: String,
    },
    /// The agent stopped participating; it ignores everything from now on
    /// except a server stop. The mount should be remounted.
    Failed {
        error: AgentError,
    },
    /// Shutdown finished: END is durable.
    Exited,
}

/// Election role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// Where our server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Down,
    /// Elected in `term`: ELECT being written, then every block read to
    /// compute fence requests. No server yet.
    Electing {
        term: u64,
    },
    /// Asked to start; `fenced` once fencing is done (or was not needed).
    Starting {
        term: u64,
        fenced: bool,
    },
    /// Serving.
    Up {
        term: u64,
    },
    /// Asked to stop; waiting for it to be fully down.
    Stopping {
        term: u64,
    },
}

impl ServerState {
    /// The term of the server this state is about, if any.
    pub fn term(&self) -> Option<u64> {
        match *self {
            ServerState::Down => None,
            ServerState::Electing { term }
            | ServerState::Starting { term, .. }
            | ServerState::Up { term }
            | ServerState::Stopping { term } => Some(term),
        }
    }
}

/// A queued block operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Record an event with a fixed term.
    Event { event: usize, term: u64 },
    /// Record TERM with whatever our term is when the write happens; skipped
    /// if that term is already durable.
    Term,
    /// After ELECT in `term` is durable: read everything, then start the
    /// server with its fence requests (or step down).
    Scan { term: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Idle,
    Reading(Op),
    Writing(Op),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    NotStarted,
    Running,
    ShuttingDown,
    Exited,
    Failed,
}

/// The election state machine of one quorum member.
///
/// One addition to the original's protocol closes a race the original leaves
/// to timing: leader A (term 1) and leader B (term 2) elected close together,
/// B reads the blocks before A's ELECT lands, so B does not fence A; A's own
/// read (made after its ELECT is durable, hence after B's read and B's ELECT)
/// sees ELECT 2 > 1, and A steps down instead of serving alongside B.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    votes_needed: usize,
    rng: u64,
    life: Life,
    role: Role,
    term: u64,
    /// Greatest term known durable in our block.
    persisted_term: u64,
    voted_for: Option<u8>,
    /// A vote granted (to that slot, in that term) but not sent until the
    /// term is durable.
    pending_vote: Option<(u8, u64)>,
    /// A candidacy whose REQUEST_VOTE waits for its term to be durable.
    pending_request: Option<u64>,
    vote_bits: u16,
    /// Follower/candidate: the election timeout; leader: next heartbeat.
    deadline: Duration,
    fence_deadline: Option<Duration>,
    last_timer: Option<Duration>,
    server: ServerState,
    io: Io,
    ops: VecDeque<Op>,
    /// Our own block as last read or written.
    our_block: QuorumBlock,
    /// Latest time passed to `handle`.
    now: Duration,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Agent, ConfigError> {
        if !slot_present(&cfg.qconf, cfg.slot as usize) {
            return Err(ConfigError::SlotNotConfigured(cfg.slot));
        }
        let hb = cfg.heartbeat_timeout.as_millis();
        if !(HEARTBEAT_TIMEOUT_MIN_MS as u128..=HEARTBEAT_TIMEOUT_MAX_MS as u128).contains(&hb) {
            return Err(ConfigError::HeartbeatTimeout(hb));
        }
        if cfg.rid == 0 {
            return Err(ConfigError::ZeroRid);
        }
        Ok(Agent {
            votes_needed: votes_needed(&cfg.qconf),
            rng: cfg.seed,
            cfg,
            life: Life::NotStarted,
            role: Role::Follower,
            term: 0,
            persisted_term: 0,
            voted_for: None,
            pending_vote: None,
            pending_request: None,
            vote_bits: 0,
            deadline: Duration::ZERO,
            fence_deadline: None,
            last_timer: None,
            server: ServerState::Down,
            io: Io::Idle,
            ops: VecDeque::new(),
            our_block: QuorumBlock::default(),
            now: Duration::ZERO,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn server(&self) -> ServerState {
        self.server
    }
    pub fn slot(&self) -> u8 {
        self.cfg.slot
    }
    pub fn rid(&self) -> u64 {
        self.cfg.rid
    }
    pub fn votes_needed(&self) -> usize {
        self.votes_needed
    }
    /// True once shutdown completed or the agent failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.life, Life::Exited | Life::Failed)
    }

    /// Feeds one input at monotonic time `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Duration, input: Input<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        self.now = self.now.max(now);
        match input {
            Input::Start { blocks } => self.start(now, blocks, &mut out),
            Input::Recv { bytes, .. } => self.recv(now, bytes, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::BlocksRead { result } => self.blocks_read(now, result, &mut out),
            Input::BlockWritten { result } => self.block_written(now, result, &mut out),
            Input::FencingDone { term, result } => self.fencing_done(term, result, &mut out),
            Input::ServerUp { term } => self.server_up(term, &mut out),
            Input::ServerStopped { term, err } => self.server_stopped(now, term, err, &mut out),
            Input::Shutdown => self.shutdown(&mut out),
        }
        self.pump(&mut out);
        self.arm_timer(&mut out);
        out
    }

    fn start(&mut self, now: Duration, blocks: &QuorumBlocks, out: &mut Vec<Action>) {
        if self.life != Life::NotStarted {
            log(
                out,
                LogLevel::Warn,
                "quorum agent started twice, ignored".into(),
            );
            return;
        }
        self.life = Life::Running;
        self.term = greatest_term(blocks, &self.cfg.qconf);
        // Votes are not persisted: an earlier mount of this slot may already
        // have voted in the term we start from, so we abstain in it.
        self.voted_for = Some(self.cfg.slot);
        self.deadline = if find_server(blocks, &self.cfg.qconf).is_some() {
            now + self.cfg.heartbeat_timeout
        } else {
            now + self.election_timeout()
        };
        // BEGIN claims the slot: written from the block read at start, without
        // the rid check every later update makes.
        self.our_block = blocks[self.cfg.slot as usize];
        self.write_event(QUORUM_EVENT_BEGIN, self.term, out);
    }

    fn recv(&mut self, now: Duration, bytes: &[u8], out: &mut Vec<Action>) {
        if self.life != Life::Running {
            return;
        }
        let Ok(msg) = decode_quorum_message(bytes, self.cfg.fsid) else {
            return self.check_timeout(now, out);
        };
        let from = msg.from;
        let term = msg.term.get();
        if from == self.cfg.slot
            || !slot_present(&self.cfg.qconf, from as usize)
            || term < self.term
        {
            // Invalid or stale: counts as nothing received (§12).
            return self.check_timeout(now, out);
        }

        if term > self.term {
            if self.role == Role::Leader {
                log(
                    out,
                    LogLevel::Warn,
                    format!(
                        "saw msg type {} from {from} for term {term} while leader in term {}, stopping server",
                        msg.ty, self.term
                    ),
                );
            }
            self.become_follower(term, out);
            self.deadline = if msg.ty == QUORUM_MSG_HEARTBEAT {
                now + self.cfg.heartbeat_timeout
            } else {
                now + self.election_timeout()
            };
            self.queue(Op::Term);
        }

        match msg.ty {
            QUORUM_MSG_HEARTBEAT => match self.role {
                Role::Leader => log(
                    out,
                    LogLevel::Warn,
                    format!("heartbeat from slot {from} in our own term {term} as leader"),
                ),
                Role::Candidate | Role::Follower => {
                    // Someone won this term; keep our vote (for ourselves if we
                    // stood) so we never vote twice in it.
                    self.role = Role::Follower;
                    self.vote_bits = 0;
                    self.deadline = now + self.cfg.heartbeat_timeout;
                }
            },
            QUORUM_MSG_RESIGNATION if self.role == Role::Follower => {
                self.deadline = now + self.election_timeout();
            }
            QUORUM_MSG_REQUEST_VOTE if self.role == Role::Follower && self.voted_for.is_none() => {
                self.voted_for = Some(from);
                self.pending_vote = Some((from, self.term));
                self.queue(Op::Term);
                self.send_pending(out);
            }
            QUORUM_MSG_VOTE if self.role == Role::Candidate => {
                let bit = 1u16 << from;
                if self.vote_bits & bit != 0 {
                    log(
                        out,
                        LogLevel::Warn,
                        format!(
                            "already received vote from {from} in term {}, are there multiple mounts with quorum_slot_nr={from}?",
                            self.term
                        ),
                    );
                }
                self.vote_bits |= bit;
                if self.vote_bits.count_ones() as usize >= self.votes_needed {
                    self.become_leader(now, out);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.life != Life::Running {
            return;
        }
        if let (
            Some(dl),
            ServerState::Starting {
                term,
                fenced: false,
            },
        ) = (self.fence_deadline, self.server)
        {
            if now >= dl {
                log(
                    out,
                    LogLevel::Error,
                    format!(
                        "fencing for term {term} not done after {:?}, stopping server",
                        self.cfg.fence_timeout
                    ),
                );
                self.stop_server(out);
            }
        }
        if self.role == Role::Leader {
            if now >= self.deadline {
                out.push(Action::Broadcast {
                    msg: self.message(QUORUM_MSG_HEARTBEAT, self.term),
                });
                self.deadline = now + Duration::from_millis(HEARTBEAT_INTERVAL_MS);
            }
            return;
        }
        self.check_timeout(now, out);
    }

    /// The election timeout, reached with nothing valid received since it
    /// was set. Only followers and candidates whose server is fully down
    /// stand for election.
    fn check_timeout(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.life != Life::Running || self.role == Role::Leader || now < self.deadline {
            return;
        }
        if self.server != ServerState::Down {
            self.deadline = now + self.election_timeout();
            return;
        }
        self.role = Role::Candidate;
        self.term += 1;
        self.voted_for = Some(self.cfg.slot);
        self.vote_bits = 1u16 << self.cfg.slot;
        self.pending_request = Some(self.term);
        self.deadline = now + self.election_timeout();
        self.queue(Op::Term);
        if self.vote_bits.count_ones() as usize >= self.votes_needed {
            self.become_leader(now, out);
        }
    }

    fn become_leader(&mut self, now: Duration, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Candidate);
        debug_assert_eq!(self.server, ServerState::Down, "candidates have no server");
        self.role = Role::Leader;
        log(
            out,
            LogLevel::Info,
            format!("elected leader in term {}", self.term),
        );
        // Heartbeat first so that nobody stands while ELECT is written and
        // the server fences (bb3db7e2).
        out.push(Action::Broadcast {
            msg: self.message(QUORUM_MSG_HEARTBEAT, self.term),
        });
        self.deadline = now + Duration::from_millis(HEARTBEAT_INTERVAL_MS);
        self.server = ServerState::Electing { term: self.term };
        self.queue(Op::Event {
            event: QUORUM_EVENT_ELECT,
            term: self.term,
        });
        self.queue(Op::Scan { term: self.term });
    }

    /// Follows `term` (greater than ours), giving up any leadership.
    fn become_follower(&mut self, term: u64, out: &mut Vec<Action>) {
        debug_assert!(term > self.term);
        self.role = Role::Follower;
        self.term = term;
        self.voted_for = None;
        self.vote_bits = 0;
        self.stop_server(out);
    }

    /// Stops whatever server we have. A server still being elected never
    /// started: record STOP for its term right away.
    fn stop_server(&mut self, out: &mut Vec<Action>) {
        match self.server {
            ServerState::Down | ServerState::Stopping { .. } => {}
            ServerState::Electing { term } => {
                self.server = ServerState::Down;
                self.queue(Op::Event {
                    event: QUORUM_EVENT_STOP,
                    term,
                });
            }
            ServerState::Starting { term, .. } | ServerState::Up { term } => {
                self.server = ServerState::Stopping { term };
                self.fence_deadline = None;
                out.push(Action::StopServer { term });
            }
        }
    }

    fn fencing_done(&mut self, term: u64, result: Result<(), i32>, out: &mut Vec<Action>) {
        if !matches!(self.life, Life::Running | Life::ShuttingDown) {
            return;
        }
        let ServerState::Starting {
            term: t,
            fenced: false,
        } = self.server
        else {
            return;
        };
        if t != term {
            return;
        }
        self.fence_deadline = None;
        match result {
            Ok(()) => self.server = ServerState::Starting { term, fenced: true },
            Err(errno) => {
                log(
                    out,
                    LogLevel::Error,
                    format!("fencing for term {term} failed: {errno}, stopping server"),
                );
                self.stop_server(out);
            }
        }
    }

    fn server_up(&mut self, term: u64, out: &mut Vec<Action>) {
        match self.server {
            ServerState::Starting {
                term: t,
                fenced: true,
            } if t == term => {
                self.server = ServerState::Up { term };
                self.queue(Op::Event {
                    event: QUORUM_EVENT_FENCE,
                    term,
                });
            }
            ServerState::Starting {
                term: t,
                fenced: false,
            } if t == term => {
                log(
                    out,
                    LogLevel::Error,
                    format!("server of term {term} up before fencing finished, stopping it"),
                );
                self.stop_server(out);
            }
            _ => {}
        }
    }

    fn server_stopped(
        &mut self,
        now: Duration,
        term: u64,
        err: Option<i32>,
        out: &mut Vec<Action>,
    ) {
        match self.server {
            ServerState::Starting { term: t, .. }
            | ServerState::Up { term: t }
            | ServerState::Stopping { term: t }
                if t == term => {}
            _ => return,
        }
        self.server = ServerState::Down;
        self.fence_deadline = None;
        if let Some(errno) = err {
            log(
                out,
                LogLevel::Warn,
                format!("server of term {term} stopped with error {errno}"),
            );
        }
        if self.life == Life::Failed {
            return;
        }
        let was_leader = self.role == Role::Leader && self.term == term;
        if was_leader || self.life == Life::ShuttingDown {
            // The resignation carries the server's term: followers of a newer
            // leader ignore it.
            out.push(Action::Broadcast {
                msg: self.message(QUORUM_MSG_RESIGNATION, term),
            });
        }
        if was_leader {
            self.role = Role::Follower;
            self.voted_for = None;
            self.vote_bits = 0;
            self.deadline = now + self.election_timeout();
        }
        self.queue(Op::Event {
            event: QUORUM_EVENT_STOP,
            term,
        });
        if self.life == Life::ShuttingDown {
            self.queue(Op::Event {
                event: QUORUM_EVENT_END,
                term: self.term,
            });
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        match self.life {
            Life::Running => {}
            Life::NotStarted => {
                self.life = Life::Exited;
                out.push(Action::Exited);
                return;
            }
            _ => return,
        }
        self.life = Life::ShuttingDown;
        self.role = Role::Follower;
        match self.server {
            ServerState::Down => self.queue(Op::Event {
                event: QUORUM_EVENT_END,
                term: self.term,
            }),
            ServerState::Electing { .. } => {
                self.stop_server(out);
                self.queue(Op::Event {
                    event: QUORUM_EVENT_END,
                    term: self.term,
                });
            }
            // END follows once the server reports it stopped.
            ServerState::Starting { .. } | ServerState::Up { .. } => self.stop_server(out),
            ServerState::Stopping { .. } => {}
        }
    }

    fn blocks_read(
        &mut self,
        now: Duration,
        result: Result<&QuorumBlocks, i32>,
        out: &mut Vec<Action>,
    ) {
        let Io::Reading(op) = self.io else {
            return;
        };
        if !matches!(self.life, Life::Running | Life::ShuttingDown) {
            return;
        }
        let blocks = match result {
            Ok(b) => b,
            Err(errno) => return self.fail(AgentError::Io(errno), out),
        };
        let ours = blocks[self.cfg.slot as usize];
        let found = ours.events[QUORUM_EVENT_BEGIN].rid.get();
        if found != self.cfg.rid {
            return self.fail(
                AgentError::SlotInUse {
                    ours: self.cfg.rid,
                    found,
                },
                out,
            );
        }
        self.our_block = ours;
        self.io = Io::Idle;
        match op {
            Op::Event { event, term } => self.write_event(event, term, out),
            Op::Term => {
                if self.term > self.persisted_term {
                    self.write_event(QUORUM_EVENT_TERM, self.term, out);
                }
            }
            Op::Scan { term } => self.scan(now, term, blocks, out),
        }
    }

    /// ELECT in `term` is durable and `blocks` were read afterwards.
    fn scan(&mut self, now: Duration, term: u64, blocks: &QuorumBlocks, out: &mut Vec<Action>) {
        if self.server != (ServerState::Electing { term }) {
            return; // lost the term meanwhile; STOP is already queued
        }
        let newest = greatest_elect_term(blocks, &self.cfg.qconf);
        if newest > term {
            log(
                out,
                LogLevel::Warn,
                format!("leader of term {term} found ELECT term {newest} in the quorum blocks, stepping down"),
            );
            debug_assert_eq!(self.term, term, "still leader of the term being started");
            self.become_follower(newest, out);
            self.deadline = now + self.election_timeout();
            self.queue(Op::Term);
            return;
        }
        let rival = self.cfg.qconf.active_slots().map(|(s, _)| s).find(|&s| {
            let ev = &blocks[s].events;
            s != self.cfg.slot as usize
                && ev[QUORUM_EVENT_ELECT].term.get() == term
                && ev[QUORUM_EVENT_ELECT].rid.get() != self.cfg.rid
        });
        if let Some(rival) = rival {
            // With fewer than 3 slots one vote elects, so two slots can lead
            // one term. Serving would leave two ELECT records of the same
            // term, and find_server could name the wrong one forever (a dead
            // leader's record in a lower slot). Stand again in a greater
            // term instead, whose leader fences whichever may still run.
            log(
                out,
                LogLevel::Warn,
                format!("slot {rival} was also elected in term {term}, standing again"),
            );
            self.role = Role::Follower;
            self.vote_bits = 0;
            self.stop_server(out);
            self.deadline = now + self.election_timeout();
            return;
        }
        let fence_requests = fence_requests(blocks, &self.cfg.qconf, self.cfg.rid, term);
        let fenced = fence_requests.is_empty();
        if !fenced {
            self.fence_deadline = Some(now + self.cfg.fence_timeout);
        }
        self.server = ServerState::Starting { term, fenced };
        out.push(Action::StartServer {
            term,
            fence_requests,
        });
    }

    fn block_written(&mut self, _now: Duration, result: Result<(), i32>, out: &mut Vec<Action>) {
        let Io::Writing(op) = self.io else {
            return;
        };
        if !matches!(self.life, Life::Running | Life::ShuttingDown) {
            return;
        }
        if let Err(errno) = result {
            return self.fail(AgentError::Io(errno), out);
        }
        self.io = Io::Idle;
        if let Op::Event { event, term } = op {
            // Every event's term counts: a restart starts from the greatest.
            self.persisted_term = self.persisted_term.max(term);
            self.send_pending(out);
            if event == QUORUM_EVENT_END {
                self.life = Life::Exited;
                self.ops.clear();
                out.push(Action::Exited);
            }
        }
    }

    /// Bumps `write_nr`, records the event in our block and writes it.
    fn write_event(&mut self, event: usize, term: u64, out: &mut Vec<Action>) {
        debug_assert!(event < QUORUM_EVENT_NAMES.len());
        let wall = self.cfg.wall_base.saturating_add(self.now);
        let blk = &mut self.our_block;
        let write_nr = blk.write_nr.get().wrapping_add(1);
        blk.write_nr = write_nr.into();
        let ev = &mut blk.events[event];
        ev.write_nr = write_nr.into();
        ev.rid = self.cfg.rid.into();
        ev.term = term.into();
        ev.ts = Timespec {
            sec: wall.as_secs().into(),
            nsec: wall.subsec_nanos().into(),
            pad: [0; 4],
        };
        self.io = Io::Writing(Op::Event { event, term });
        out.push(Action::WriteBlock {
            slot: self.cfg.slot,
            block: Box::new(*blk),
        });
    }

    /// Sends the vote and the vote request that waited for their term to
    /// be durable, if it now is and they still apply. Persisting the term
    /// before voting (as Raft does) keeps a mount that restarts from voting
    /// twice in one term, so one term never has two leaders with 3+ slots.
    fn send_pending(&mut self, out: &mut Vec<Action>) {
        if let Some((to, term)) = self.pending_vote {
            if term != self.term || self.role != Role::Follower {
                self.pending_vote = None;
            } else if self.persisted_term >= term {
                self.pending_vote = None;
                out.push(Action::Send {
                    to_slot: to,
                    msg: self.message(QUORUM_MSG_VOTE, term),
                });
            }
        }
        if let Some(term) = self.pending_request {
            if term != self.term || self.role != Role::Candidate {
                self.pending_request = None;
            } else if self.persisted_term >= term {
                self.pending_request = None;
                out.push(Action::Broadcast {
                    msg: self.message(QUORUM_MSG_REQUEST_VOTE, term),
                });
            }
        }
    }

    fn queue(&mut self, op: Op) {
        if matches!(self.life, Life::Exited | Life::Failed) {
            return;
        }
        if op == Op::Term && self.ops.contains(&Op::Term) {
            return;
        }
        self.ops.push_back(op);
    }

    /// Starts the next queued block operation if none is in flight.
    fn pump(&mut self, out: &mut Vec<Action>) {
        if self.io != Io::Idle || !matches!(self.life, Life::Running | Life::ShuttingDown) {
            return;
        }
        if let Some(op) = self.ops.pop_front() {
            self.io = Io::Reading(op);
            out.push(Action::ReadBlocks);
        }
    }

    fn fail(&mut self, error: AgentError, out: &mut Vec<Action>) {
        log(
            out,
            LogLevel::Error,
            format!("quorum agent stopping: {error}"),
        );
        self.life = Life::Failed;
        self.role = Role::Follower;
        self.io = Io::Idle;
        self.ops.clear();
        match self.server {
            ServerState::Starting { term, .. } | ServerState::Up { term } => {
                self.server = ServerState::Stopping { term };
                out.push(Action::StopServer { term });
            }
            ServerState::Electing { .. } => self.server = ServerState::Down,
            _ => {}
        }
        out.push(Action::Failed { error });
    }

    fn arm_timer(&mut self, out: &mut Vec<Action>) {
        let next = match self.life {
            Life::Running => Some(match self.fence_deadline {
                Some(f) => f.min(self.deadline),
                None => self.deadline,
            }),
            _ => None,
        };
        if let Some(next) = next {
            if self.last_timer != Some(next) {
                self.last_timer = Some(next);
                out.push(Action::SetTimer { deadline: next });
            }
        }
    }

    fn election_timeout(&mut self) -> Duration {
        let jitter = splitmix64(&mut self.rng) % ELECTION_JITTER_MS;
        Duration::from_millis(ELECTION_TIMEOUT_MIN_MS + jitter)
    }

    fn message(&self, ty: u8, term: u64) -> [u8; QUORUM_MESSAGE_BYTES] {
        let m = QuorumMessage::new(self.cfg.fsid, term, ty, self.cfg.slot);
        let mut out = [0u8; QUORUM_MESSAGE_BYTES];
        out.copy_from_slice(m.as_bytes());
        out
    }
}

fn log(out: &mut Vec<Action>, level: LogLevel, msg: String) {
    out.push(Action::Log { level, msg });
}

/// The splitmix64 step: a small, well-mixed deterministic generator.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const _: () = assert!(QUORUM_MAX_SLOTS <= 16, "vote bits live in a u16");
