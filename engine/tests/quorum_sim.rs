//! Deterministic simulation of quorum elections across a cluster.
//!
//! What it is for: driving several `engine::quorum::Agent`s from one seed
//! through a simulated UDP network (delay, loss, duplication, reordering,
//! partitions), one shared quorum-block device (like the metadata device all
//! mounts share), crashes and restarts (a restarted mount keeps only the
//! blocks and gets a new rid), graceful shutdowns, servers that come up after
//! a random delay or fail, and fencing that completes after a delay.
//!
//! Fencing is modelled as the reference's default fence action: the fenced
//! rid's mount is killed (its server dies on the spot) before the fence is
//! reported done, and it comes back later with a new rid. Killing only the
//! server would not do: a leader fenced while it is still writing ELECT
//! would start its server afterwards with nothing to stop it.
//!
//! What it checks, after every event:
//! * at most one server serves at any moment (so at most one per term);
//! * no two mounts ever serve in the same term, even one after the other
//!   (with 2 slots two may be *elected* in one term; the agent makes the one
//!   that sees the other stand again rather than serve);
//! * a server serves only after every fence request it was given completed,
//!   and only while its agent agrees it is the leader of that term;
//! * no agent fails (nobody shares a slot, the device never errors).
//!   And once faults stop and the cluster settles: exactly one server serves,
//!   every live agent follows its term, and `find_server` on the blocks names
//!   it.
//!
//! Each seed replays exactly. `SCOUTFS_SIM_SEEDS=N` runs N seeds per slot
//! count (default 500, so 2,000 in all); `SCOUTFS_SIM_SEED=S` runs only seed
//! S, with a trace. A failure prints its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::Ipv4Addr;
use std::time::Duration;

use engine::format::superblock::{InetAddr, QuorumConfig};
use engine::format::QUORUM_MAX_SLOTS;
use engine::quorum::{
    decode_quorum_block, empty_blocks, encode_quorum_block, find_server, Action, Agent,
    AgentConfig, Input, QuorumBlocks, Role, ServerState,
};

const FSID: u64 = 0x5c0u64 << 40 | 0xf5;
const HEARTBEAT_TIMEOUT_MS: u64 = 2_000;
/// Faults (crashes, partitions, loss, server failures) happen before this.
const FAULT_PHASE_US: u64 = 25_000_000;
/// Then the cluster has this long to settle on one leader.
const SETTLE_US: u64 = 45_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        to: u8,
        bytes: [u8; 32],
    },
    Timer {
        slot: u8,
        inc: u64,
        gen: u64,
    },
    ReadDone {
        slot: u8,
        inc: u64,
        blocks: Box<QuorumBlocks>,
    },
    WriteDone {
        slot: u8,
        inc: u64,
    },
    FenceDone {
        slot: u8,
        inc: u64,
        server_gen: u64,
        target: u64,
    },
    ServerUp {
        slot: u8,
        inc: u64,
        server_gen: u64,
    },
    ServerStopped {
        slot: u8,
        inc: u64,
        server_gen: u64,
        err: Option<i32>,
    },
    Crash {
        slot: u8,
    },
    Shutdown {
        slot: u8,
    },
    Restart {
        slot: u8,
    },
    Partition,
    Heal,
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Server {
    Down,
    /// Fencing the listed rids.
    Fencing {
        term: u64,
        pending: BTreeSet<u64>,
    },
    /// Fenced; coming up.
    Rising {
        term: u64,
    },
    Up {
        term: u64,
    },
    Stopping {
        term: u64,
    },
}

impl Server {
    fn term(&self) -> Option<u64> {
        match self {
            Server::Down => None,
            Server::Fencing { term, .. }
            | Server::Rising { term }
            | Server::Up { term }
            | Server::Stopping { term } => Some(*term),
        }
    }
}

struct Node {
    agent: Option<Agent>,
    inc: u64,
    rid: u64,
    timer_gen: u64,
    pending_write: Option<Vec<u8>>,
    server: Server,
    server_gen: u64,
    serving: bool,
    /// A restart is already scheduled.
    restarting: bool,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    qconf: QuorumConfig,
    slots: Vec<u8>,
    disk: Vec<Vec<u8>>,
    nodes: BTreeMap<u8, Node>,
    /// Partition group of each slot; messages cross only within a group.
    group: BTreeMap<u8, u8>,
    loss_permille: u64,
    served_terms: BTreeMap<u64, u64>,
    next_rid: u64,
    trace: bool,
    steps: u64,
}

fn qconf_for(slots: &[u8]) -> QuorumConfig {
    let mut q = QuorumConfig::default();
    for &s in slots {
        q.slots[s as usize].addr = InetAddr::v4(Ipv4Addr::new(10, 0, 0, s + 1), 7000 + s as u16);
    }
    q
}

impl Sim {
    fn new(seed: u64, nr_slots: usize, trace: bool) -> Sim {
        let mut rng = Rng(seed ^ 0xa5a5_5a5a_0f0f_f0f0);
        // Gaps are allowed: spread the slots over 0..15 from the seed.
        let mut slots: Vec<u8> = (0..QUORUM_MAX_SLOTS as u8).collect();
        for i in (1..slots.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            slots.swap(i, j);
        }
        slots.truncate(nr_slots);
        slots.sort_unstable();
        let qconf = qconf_for(&slots);
        let disk = (0..QUORUM_MAX_SLOTS)
            .map(|s| encode_quorum_block(&Default::default(), FSID, s))
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            qconf,
            slots: slots.clone(),
            disk,
            nodes: BTreeMap::new(),
            group: slots.iter().map(|&s| (s, 0)).collect(),
            loss_permille: 20,
            served_terms: BTreeMap::new(),
            next_rid: 1,
            trace,
            steps: 0,
        };
        for &s in &slots {
            sim.nodes.insert(
                s,
                Node {
                    agent: None,
                    inc: 0,
                    rid: 0,
                    timer_gen: 0,
                    pending_write: None,
                    server: Server::Down,
                    server_gen: 0,
                    serving: false,
                    restarting: true,
                },
            );
            let at = sim.rng.below(500_000);
            sim.push(at, Ev::Restart { slot: s });
        }
        // Fault schedule.
        let mut t = sim.rng.range(200_000, 2_000_000);
        while t < FAULT_PHASE_US {
            let slot = slots[sim.rng.below(slots.len() as u64) as usize];
            let ev = match sim.rng.below(10) {
                0..=2 => Ev::Crash { slot },
                3 => Ev::Shutdown { slot },
                4..=6 => Ev::Partition,
                _ => Ev::Heal,
            };
            sim.push(t, ev);
            t += sim.rng.range(200_000, 3_000_000);
        }
        sim.push(FAULT_PHASE_US, Ev::Heal);
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    fn faulty(&self) -> bool {
        self.now < FAULT_PHASE_US
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "quorum sim seed {} ({} slots {:?}) failed at t={}us step {}: {what}\nreplay: SCOUTFS_SIM_SEED={} SCOUTFS_SIM_SLOTS={} cargo test -p scoutfs-engine --test quorum_sim quorum_replay -- --nocapture",
            self.seed,
            self.slots.len(),
            self.slots,
            self.now,
            self.steps,
            self.seed,
            self.slots.len()
        );
    }

    fn read_disk(&self) -> QuorumBlocks {
        let mut blocks = empty_blocks();
        for &s in &self.slots {
            match decode_quorum_block(&self.disk[s as usize], FSID, s as usize) {
                Ok(b) => blocks[s as usize] = b,
                Err(e) => self.fail(format!("quorum block {s} does not decode: {e}")),
            }
        }
        blocks
    }

    fn run(&mut self) {
        let end = FAULT_PHASE_US + SETTLE_US;
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.steps += 1;
            self.step(q.ev);
            self.check_always();
        }
        self.now = end;
        self.check_settled();
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, bytes } => {
                if self.nodes[&to].agent.is_some() {
                    self.input(
                        to,
                        Input::Recv {
                            bytes: &bytes,
                            from_addr: None,
                        },
                    );
                }
            }
            Ev::Timer { slot, inc, gen } => {
                let n = &self.nodes[&slot];
                if n.inc == inc && n.timer_gen == gen && n.agent.is_some() {
                    self.input(slot, Input::Tick);
                }
            }
            Ev::ReadDone { slot, inc, blocks } => {
                if self.alive(slot, inc) {
                    self.input(
                        slot,
                        Input::BlocksRead {
                            result: Ok(&blocks),
                        },
                    );
                }
            }
            Ev::WriteDone { slot, inc } => {
                if self.alive(slot, inc) {
                    let bytes = self.nodes.get_mut(&slot).unwrap().pending_write.take();
                    if let Some(bytes) = bytes {
                        self.disk[slot as usize] = bytes;
                    }
                    self.input(slot, Input::BlockWritten { result: Ok(()) });
                }
            }
            Ev::FenceDone {
                slot,
                inc,
                server_gen,
                target,
            } => self.fence_done(slot, inc, server_gen, target),
            Ev::ServerUp {
                slot,
                inc,
                server_gen,
            } => self.server_up(slot, inc, server_gen),
            Ev::ServerStopped {
                slot,
                inc,
                server_gen,
                err,
            } => {
                let n = self.nodes.get_mut(&slot).unwrap();
                if n.inc != inc || n.server_gen != server_gen || n.agent.is_none() {
                    return;
                }
                let Some(term) = n.server.term() else { return };
                n.server = Server::Down;
                n.serving = false;
                self.input(slot, Input::ServerStopped { term, err });
            }
            Ev::Crash { slot } => self.crash(slot),
            Ev::Shutdown { slot } => {
                if self.nodes[&slot].agent.is_some() {
                    self.input(slot, Input::Shutdown);
                }
            }
            Ev::Restart { slot } => self.restart(slot),
            Ev::Partition => {
                for &s in &self.slots.clone() {
                    let g = self.rng.below(2) as u8;
                    self.group.insert(s, g);
                }
                self.loss_permille = self.rng.below(150);
            }
            Ev::Heal => {
                for g in self.group.values_mut() {
                    *g = 0;
                }
                self.loss_permille = if self.faulty() { self.rng.below(50) } else { 0 };
            }
        }
    }

    fn alive(&self, slot: u8, inc: u64) -> bool {
        let n = &self.nodes[&slot];
        n.inc == inc && n.agent.is_some()
    }

    fn crash(&mut self, slot: u8) {
        let coin = self.rng.chance(500);
        let n = self.nodes.get_mut(&slot).unwrap();
        if n.agent.is_none() {
            return;
        }
        n.agent = None;
        n.inc += 1;
        n.server = Server::Down;
        n.serving = false;
        // A write in flight when the mount died may or may not have landed.
        if let Some(bytes) = n.pending_write.take() {
            if coin {
                self.disk[slot as usize] = bytes;
            }
        }
        if self.trace {
            println!("{:>10} slot {slot} crashed", self.now);
        }
        self.schedule_restart(slot);
    }

    fn schedule_restart(&mut self, slot: u8) {
        let n = self.nodes.get_mut(&slot).unwrap();
        if n.restarting {
            return;
        }
        n.restarting = true;
        let at = self.now + self.rng.range(300_000, 4_000_000);
        self.push(at, Ev::Restart { slot });
    }

    fn restart(&mut self, slot: u8) {
        let rid = (self.next_rid << 8) | (slot as u64 + 1);
        self.next_rid += 1;
        let seed = self.rng.next();
        let blocks = self.read_disk();
        let mut cfg = AgentConfig::new(FSID, rid, slot, self.qconf, seed);
        cfg.heartbeat_timeout = Duration::from_millis(HEARTBEAT_TIMEOUT_MS);
        let agent = match Agent::new(cfg) {
            Ok(a) => a,
            Err(e) => self.fail(format!("agent config refused: {e}")),
        };
        let n = self.nodes.get_mut(&slot).unwrap();
        n.inc += 1;
        n.rid = rid;
        n.agent = Some(agent);
        n.restarting = false;
        n.server = Server::Down;
        n.serving = false;
        n.pending_write = None;
        if self.trace {
            println!("{:>10} slot {slot} starts with rid {rid:x}", self.now);
        }
        self.input(slot, Input::Start { blocks: &blocks });
    }

    fn input(&mut self, slot: u8, input: Input<'_>) {
        let now = Duration::from_micros(self.now);
        let actions = match self.nodes.get_mut(&slot).and_then(|n| n.agent.as_mut()) {
            Some(a) => a.handle(now, input),
            None => return,
        };
        for action in actions {
            self.act(slot, action);
        }
    }

    fn send(&mut self, from: u8, to: u8, bytes: [u8; 32]) {
        if self.group[&from] != self.group[&to] || self.rng.chance(self.loss_permille) {
            return;
        }
        let copies = if self.faulty() && self.rng.chance(30) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.faulty() && self.rng.chance(50) {
                self.rng.range(20_000, 400_000)
            } else {
                self.rng.range(50, 5_000)
            };
            self.push(self.now + delay, Ev::Deliver { to, bytes });
        }
    }

    fn act(&mut self, slot: u8, action: Action) {
        let inc = self.nodes[&slot].inc;
        if self.trace
            && !matches!(
                action,
                Action::SetTimer { .. } | Action::Broadcast { .. } | Action::Send { .. }
            )
        {
            println!("{:>10} slot {slot}: {action:?}", self.now);
        }
        match action {
            Action::Send { to_slot, msg } => self.send(slot, to_slot, msg),
            Action::Broadcast { msg } => {
                for to in self.slots.clone() {
                    if to != slot {
                        self.send(slot, to, msg);
                    }
                }
            }
            Action::ReadBlocks => {
                let blocks = Box::new(self.read_disk());
                let at = self.now + self.rng.range(10, 3_000);
                self.push(at, Ev::ReadDone { slot, inc, blocks });
            }
            Action::WriteBlock { slot: s, block } => {
                if s != slot {
                    self.fail(format!("slot {slot} wrote slot {s}'s block"));
                }
                let bytes = encode_quorum_block(&block, FSID, s as usize);
                let n = self.nodes.get_mut(&slot).unwrap();
                if n.pending_write.is_some() {
                    self.fail(format!("slot {slot} issued two writes at once"));
                }
                n.pending_write = Some(bytes);
                let at = self.now + self.rng.range(10, 8_000);
                self.push(at, Ev::WriteDone { slot, inc });
            }
            Action::SetTimer { deadline } => {
                let n = self.nodes.get_mut(&slot).unwrap();
                n.timer_gen += 1;
                let gen = n.timer_gen;
                self.push(deadline.as_micros() as u64, Ev::Timer { slot, inc, gen });
            }
            Action::StartServer {
                term,
                fence_requests,
            } => {
                let state = self.nodes[&slot].server.clone();
                if state != Server::Down {
                    self.fail(format!(
                        "slot {slot} started a server while one is {state:?}"
                    ));
                }
                let n = self.nodes.get_mut(&slot).unwrap();
                n.server_gen += 1;
                let server_gen = n.server_gen;
                let pending: BTreeSet<u64> = fence_requests.iter().map(|r| r.rid).collect();
                n.server = Server::Fencing {
                    term,
                    pending: pending.clone(),
                };
                // A start that fails outright (e4dca8dd).
                if self.faulty() && self.rng.chance(80) {
                    let at = self.now + self.rng.range(1_000, 300_000);
                    self.push(
                        at,
                        Ev::ServerStopped {
                            slot,
                            inc,
                            server_gen,
                            err: Some(-5),
                        },
                    );
                }
                if pending.is_empty() {
                    self.fencing_complete(slot, inc, server_gen);
                }
                for target in pending {
                    let delay = if self.faulty() && self.rng.chance(20) {
                        self.rng.range(14_000_000, 20_000_000)
                    } else {
                        self.rng.range(10_000, 1_500_000)
                    };
                    self.push(
                        self.now + delay,
                        Ev::FenceDone {
                            slot,
                            inc,
                            server_gen,
                            target,
                        },
                    );
                }
            }
            Action::StopServer { term } => {
                let state = self.nodes[&slot].server.clone();
                if state.term() != Some(term) {
                    self.fail(format!(
                        "slot {slot} stopped term {term} but server is {state:?}"
                    ));
                }
                let n = self.nodes.get_mut(&slot).unwrap();
                n.server = Server::Stopping { term };
                let server_gen = n.server_gen;
                let at = self.now + self.rng.range(100, 200_000);
                self.push(
                    at,
                    Ev::ServerStopped {
                        slot,
                        inc,
                        server_gen,
                        err: None,
                    },
                );
            }
            Action::Log { .. } => {}
            Action::Failed { error } => self.fail(format!("slot {slot} agent failed: {error}")),
            Action::Exited => {
                let state = self.nodes[&slot].server.clone();
                if state != Server::Down || self.nodes[&slot].serving {
                    self.fail(format!("slot {slot} exited with server {state:?}"));
                }
                let n = self.nodes.get_mut(&slot).unwrap();
                n.agent = None;
                n.inc += 1;
                self.schedule_restart(slot);
            }
        }
    }

    /// A fence completes: the fenced mount is killed first, then the fencing
    /// server learns of it.
    fn fence_done(&mut self, slot: u8, inc: u64, server_gen: u64, target: u64) {
        let victim = self
            .nodes
            .iter()
            .find(|(_, n)| n.agent.is_some() && n.rid == target)
            .map(|(s, _)| *s);
        if let Some(v) = victim {
            if self.trace {
                println!(
                    "{:>10} slot {slot} fenced rid {target:x} (slot {v})",
                    self.now
                );
            }
            self.crash(v);
        }
        let n = self.nodes.get_mut(&slot).unwrap();
        if n.inc != inc || n.server_gen != server_gen || n.agent.is_none() {
            return;
        }
        if let Server::Fencing { pending, .. } = &mut n.server {
            pending.remove(&target);
            if pending.is_empty() {
                self.fencing_complete(slot, inc, server_gen);
            }
        }
    }

    fn fencing_complete(&mut self, slot: u8, inc: u64, server_gen: u64) {
        let n = self.nodes.get_mut(&slot).unwrap();
        let Server::Fencing { term, .. } = n.server else {
            return;
        };
        n.server = Server::Rising { term };
        let at = self.now + self.rng.range(1_000, 300_000);
        self.push(
            at,
            Ev::ServerUp {
                slot,
                inc,
                server_gen,
            },
        );
        self.input(
            slot,
            Input::FencingDone {
                term,
                result: Ok(()),
            },
        );
    }

    fn server_up(&mut self, slot: u8, inc: u64, server_gen: u64) {
        let n = self.nodes.get_mut(&slot).unwrap();
        if n.inc != inc || n.server_gen != server_gen || n.agent.is_none() {
            return;
        }
        let Server::Rising { term } = n.server else {
            return;
        };
        let agent = n.agent.as_ref().unwrap();
        if agent.server() != (ServerState::Starting { term, fenced: true }) {
            let state = agent.server();
            self.fail(format!(
                "slot {slot} serving term {term} while its agent says {state:?}"
            ));
        }
        n.server = Server::Up { term };
        n.serving = true;
        let rid = n.rid;
        if let Some(&other) = self.served_terms.get(&term) {
            if other != rid {
                self.fail(format!(
                    "rids {other:x} and {rid:x} both served term {term}"
                ));
            }
        }
        self.served_terms.insert(term, rid);
        if self.trace {
            println!("{:>10} slot {slot} SERVING term {term}", self.now);
        }
        self.input(slot, Input::ServerUp { term });
        // A running server may die on its own.
        if self.faulty() && self.rng.chance(100) {
            let at = self.now + self.rng.range(100_000, 5_000_000);
            self.push(
                at,
                Ev::ServerStopped {
                    slot,
                    inc,
                    server_gen,
                    err: Some(-5),
                },
            );
        }
    }

    fn check_always(&self) {
        let serving: Vec<(u8, Option<u64>)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.serving)
            .map(|(s, n)| (*s, n.server.term()))
            .collect();
        if serving.len() > 1 {
            self.fail(format!("two servers serving at once: {serving:?}"));
        }
    }

    fn check_settled(&self) {
        let serving: Vec<(u8, u64)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.serving)
            .map(|(s, n)| (*s, n.server.term().unwrap_or(0)))
            .collect();
        if serving.len() != 1 {
            let states: Vec<String> = self
                .nodes
                .iter()
                .map(|(s, n)| match &n.agent {
                    Some(a) => format!(
                        "{s}:{:?}/t{}/{:?}/{:?}",
                        a.role(),
                        a.term(),
                        a.server(),
                        n.server
                    ),
                    None => format!("{s}:down"),
                })
                .collect();
            self.fail(format!(
                "after settling, serving = {serving:?}; nodes {states:?}"
            ));
        }
        let (leader, term) = serving[0];
        let blocks = self.read_disk();
        match find_server(&blocks, &self.qconf) {
            Some(loc) if loc.slot == leader as usize && loc.term == term => {}
            other => self.fail(format!(
                "find_server says {other:?}, slot {leader} serves term {term}"
            )),
        }
        for (s, n) in &self.nodes {
            let Some(a) = &n.agent else {
                self.fail(format!("slot {s} still down after settling"));
            };
            let want = if *s == leader {
                Role::Leader
            } else {
                Role::Follower
            };
            if a.term() != term || a.role() != want {
                self.fail(format!(
                    "slot {s} is {:?} in term {}, leader {leader} term {term}",
                    a.role(),
                    a.term()
                ));
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_seeds(nr_slots: usize) {
    let seeds = env_u64("SCOUTFS_SIM_SEEDS").unwrap_or(500);
    for i in 0..seeds {
        // Distinct seeds per slot count.
        let seed = (nr_slots as u64) << 32 | i;
        Sim::new(seed, nr_slots, false).run();
    }
}

#[test]
fn quorum_sim_1_slot() {
    run_seeds(1);
}

#[test]
fn quorum_sim_2_slots() {
    run_seeds(2);
}

#[test]
fn quorum_sim_3_slots() {
    run_seeds(3);
}

#[test]
fn quorum_sim_5_slots() {
    run_seeds(5);
}

/// Replays one seed with a trace: SCOUTFS_SIM_SEED=S SCOUTFS_SIM_SLOTS=N.
#[test]
fn quorum_replay() {
    let (Some(seed), Some(slots)) = (env_u64("SCOUTFS_SIM_SEED"), env_u64("SCOUTFS_SIM_SLOTS"))
    else {
        return;
    };
    Sim::new(seed, slots as usize, true).run();
}

// Seeds that found bugs, kept as regression tests. Each runs one whole
// simulation.

/// 2 slots: both slots elected themselves in term 5; the leader that fenced
/// the other served while the fenced slot's ELECT 5 stayed on disk with no
/// STOP, and find_server (ties go to the lowest slot) named the dead one.
/// Fixed by making a leader that sees another ELECT of its own term stand
/// again in a greater term instead of serving.
#[test]
fn quorum_regression_2_slots_same_term_find_server_names_dead_leader() {
    Sim::new(8589934624, 2, false).run();
}

/// 3 slots: a mount voted in term 19, crashed, restarted from the blocks
/// (votes are not persisted) and voted again in term 19, so two mounts led
/// and served term 19 one after the other. Fixed by abstaining in the start
/// term and sending votes and vote requests only once their term is durable.
#[test]
fn quorum_regression_3_slots_vote_twice_after_restart() {
    Sim::new(12884902775, 3, false).run();
}

/// 5 slots: the same double vote across a restart, in term 21.
#[test]
fn quorum_regression_5_slots_vote_twice_after_restart() {
    Sim::new(21474836868, 5, false).run();
}

/// 2 slots: a leader of term 3 stopped cleanly (STOP 3), and the other slot,
/// still at term 2, elected itself in term 3 and served it again. Fixed by
/// treating any other ELECT of our term, stopped or not, as a rival.
#[test]
fn quorum_regression_2_slots_term_reused_after_clean_stop() {
    Sim::new(8589934691, 2, false).run();
}

/// 2 slots: found that two leaders of one term are expected with one-vote
/// elections; it served both terms before the rival rule (a harness
/// expectation at first, now the same-term check holds for every slot count).
#[test]
fn quorum_regression_2_slots_both_elected_in_one_term() {
    Sim::new(8589934594, 2, false).run();
}

/// 2 slots: with the post-ELECT newer-leader check switched off, this seed
/// has a leader of term 4 whose ELECT landed after the term-5 leader read
/// the blocks: nobody fenced it and both served at once. It pins the check
/// that makes a leader step down when its post-ELECT read shows a greater
/// ELECT.
#[test]
fn quorum_regression_2_slots_late_elect_serves_beside_newer_leader() {
    Sim::new(8589935049, 2, false).run();
}
