//! The lock traps of reference §11 (1–8) and §4.3–§4.6 as scripted
//! scenarios: each test drives `engine::lock`'s client and server through
//! the exact interleaving that broke the original, delivering messages by
//! hand so the order is the point of the test. `lock_sim.rs` covers the
//! same ground at random; these pin each case down by name.

use std::collections::{BTreeMap, VecDeque};

use engine::format::key::Key;
use engine::format::net::{NetLock, LOCK_RECOVER_MAX_LOCKS};
use engine::lock::{
    inode_lock, ClientAction, ClientEvent, LockClient, LockClientConfig, LockMode, LockMsg,
    LockRange, LockServer, ServerAction, ServerEvent, UserId,
};

use LockMode::{Null, Read, Write, WriteOnly};

fn a() -> LockRange {
    inode_lock(0)
}

fn b() -> LockRange {
    inode_lock(1024)
}

/// Something a client sent the server, waiting for delivery.
#[derive(Debug, Clone)]
enum Up {
    Request { token: u64, nl: NetLock },
    InvReply { token: u64, nl: NetLock },
    Recover { locks: Vec<NetLock> },
}

/// Something the server sent a client, waiting for delivery.
#[derive(Debug, Clone)]
enum Down {
    Grant { nl: NetLock },
    Invalidate { token: u64, nl: NetLock },
    Recover { token: u64, key: Key },
}

/// A hand-driven cluster: messages queue per connection until a test
/// delivers them; owner write-backs wait until a test finishes them.
struct Cluster {
    srv: LockServer<u64>,
    core: u64,
    clients: BTreeMap<u64, LockClient<u64>>,
    up: BTreeMap<u64, VecDeque<Up>>,
    down: BTreeMap<u64, VecDeque<Down>>,
    /// Owner invalidations asked for and not yet finished.
    owner: Vec<(u64, LockRange, LockMode, LockMode)>,
    granted: Vec<(u64, UserId, LockMode, u64)>,
    would_block: Vec<(u64, UserId)>,
    farewell_ready: Vec<u64>,
    fenced: Vec<u64>,
    next_token: u64,
}

impl Cluster {
    fn new(rids: &[u64], idle: usize) -> Cluster {
        let mut c = Cluster {
            srv: LockServer::new(),
            core: 0,
            clients: BTreeMap::new(),
            up: BTreeMap::new(),
            down: BTreeMap::new(),
            owner: Vec::new(),
            granted: Vec::new(),
            would_block: Vec::new(),
            farewell_ready: Vec::new(),
            fenced: Vec::new(),
            next_token: 1,
        };
        for &rid in rids {
            c.add_client(rid, idle);
            c.server(ServerEvent::Greeted { rid });
        }
        c
    }

    fn add_client(&mut self, rid: u64, idle: usize) {
        self.clients.insert(
            rid,
            LockClient::new(LockClientConfig {
                lock_idle_count: idle,
            }),
        );
        self.up.insert(rid, VecDeque::new());
        self.down.insert(rid, VecDeque::new());
    }

    fn server(&mut self, ev: ServerEvent<u64>) {
        for a in self.srv.handle(&mut self.core, ev) {
            match a {
                ServerAction::Grant { rid, nl, .. } => self
                    .down
                    .get_mut(&rid)
                    .unwrap()
                    .push_back(Down::Grant { nl }),
                ServerAction::Invalidate { rid, nl } => {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.down
                        .get_mut(&rid)
                        .unwrap()
                        .push_back(Down::Invalidate { token, nl })
                }
                ServerAction::Recover { rid, key } => {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.down
                        .get_mut(&rid)
                        .unwrap()
                        .push_back(Down::Recover { token, key })
                }
                ServerAction::Fence { rid } => self.fenced.push(rid),
                ServerAction::FarewellReady { rid } => self.farewell_ready.push(rid),
                ServerAction::BadMessage { rid, reason } => panic!("{rid}: {reason}"),
            }
        }
        self.srv.check_invariants().unwrap();
    }

    fn client(&mut self, rid: u64, ev: ClientEvent<u64>) {
        let acts = self.clients.get_mut(&rid).unwrap().handle(ev);
        for a in acts {
            match a {
                ClientAction::Request { nl } => {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.up
                        .get_mut(&rid)
                        .unwrap()
                        .push_back(Up::Request { token, nl })
                }
                ClientAction::InvalidateReply { token, nl } => self
                    .up
                    .get_mut(&rid)
                    .unwrap()
                    .push_back(Up::InvReply { token, nl }),
                ClientAction::RecoverReply { locks, .. } => self
                    .up
                    .get_mut(&rid)
                    .unwrap()
                    .push_back(Up::Recover { locks }),
                ClientAction::Granted {
                    user,
                    mode,
                    refresh_gen,
                    ..
                } => self.granted.push((rid, user, mode, refresh_gen)),
                ClientAction::WouldBlock { user } => self.would_block.push((rid, user)),
                ClientAction::Invalidate { range, old, new } => {
                    self.owner.push((rid, range, old, new))
                }
                ClientAction::BadMessage { reason } => panic!("{rid}: {reason}"),
            }
        }
        self.clients[&rid].check_invariants().unwrap();
    }

    fn lock(&mut self, rid: u64, user: u64, range: LockRange, mode: LockMode) {
        self.client(
            rid,
            ClientEvent::Lock {
                user: UserId(user),
                range,
                mode,
                nonblock: false,
            },
        );
    }

    fn unlock(&mut self, rid: u64, user: u64) {
        self.client(rid, ClientEvent::Unlock { user: UserId(user) });
    }

    fn has(&self, rid: u64, user: u64) -> bool {
        self.granted
            .iter()
            .any(|&(r, u, _, _)| r == rid && u == UserId(user))
    }

    /// Delivers one message from `rid` to the server.
    fn up1(&mut self, rid: u64) -> bool {
        let Some(m) = self.up.get_mut(&rid).unwrap().pop_front() else {
            return false;
        };
        match m {
            Up::Request { token, nl } => self.server(ServerEvent::Request { rid, token, nl }),
            Up::InvReply { nl, .. } => self.server(ServerEvent::InvalidateReply { rid, nl }),
            Up::Recover { locks } => self.server(ServerEvent::RecoverReply { rid, locks }),
        }
        true
    }

    /// Delivers one message from the server to `rid`.
    fn down1(&mut self, rid: u64) -> bool {
        let Some(m) = self.down.get_mut(&rid).unwrap().pop_front() else {
            return false;
        };
        let ev = match m {
            Down::Grant { nl } => ClientEvent::Grant { nl },
            Down::Invalidate { token, nl } => ClientEvent::InvalidateRequest { token, nl },
            Down::Recover { token, key } => ClientEvent::RecoverRequest { token, key },
        };
        self.client(rid, ev);
        true
    }

    /// Finishes the oldest owner write-back of `rid`.
    fn owner_done(&mut self, rid: u64) -> (LockMode, LockMode) {
        let i = self
            .owner
            .iter()
            .position(|o| o.0 == rid)
            .expect("owner work");
        let (_, range, old, new) = self.owner.remove(i);
        self.client(rid, ClientEvent::InvalidateDone { start: range.start });
        (old, new)
    }

    /// Delivers everything and finishes all owner work until quiet.
    fn settle(&mut self) {
        loop {
            let rids: Vec<u64> = self.clients.keys().copied().collect();
            let mut any = false;
            for &rid in &rids {
                while self.up1(rid) {
                    any = true;
                }
                while self.down1(rid) {
                    any = true;
                }
            }
            while let Some(&(rid, ..)) = self.owner.first() {
                self.owner_done(rid);
                any = true;
            }
            if !any {
                return;
            }
        }
    }

    fn mode(&self, rid: u64, range: LockRange) -> LockMode {
        self.clients[&rid]
            .view(&range.start)
            .map_or(Null, |v| v.mode)
    }

    /// Kills the server: a new one recovering every client.
    fn failover(&mut self) {
        let rids: Vec<u64> = self.clients.keys().copied().collect();
        self.srv = LockServer::recovering(rids.iter().copied());
        for q in self.up.values_mut() {
            // Responses and requests to the dead server are gone; callers
            // resend requests themselves where the test needs it.
            q.clear();
        }
    }
}

fn recover_report(c: &mut Cluster, rid: u64) -> Vec<LockMsg> {
    c.client(
        rid,
        ClientEvent::RecoverRequest {
            token: 99,
            key: Key::MIN,
        },
    );
    match c.up.get_mut(&rid).unwrap().pop_back() {
        Some(Up::Recover { locks }) => locks
            .iter()
            .map(|nl| LockMsg::from_net(nl).unwrap())
            .collect(),
        other => panic!("no recovery reply: {other:?}"),
    }
}

/// Trap 1 (a27c54568c): a second invalidation arriving while the first is
/// being finished (owner still writing back) or right after its reply must
/// be accepted and processed, not trip an assertion.
#[test]
fn trap1_second_invalidation_during_and_right_after_the_reply() {
    let mut c = Cluster::new(&[1, 2, 3], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    assert!(c.has(1, 10));
    c.unlock(1, 10);

    // Mount 2 wants READ: W → R invalidation of mount 1. Mount 3 wants
    // WRITE behind it: R → NULL follows as soon as the first reply lands.
    c.lock(2, 20, a(), Read);
    c.lock(3, 30, a(), Write);
    c.up1(2);
    c.up1(3);
    c.down1(1);
    assert_eq!(c.owner.len(), 1, "W → R write-back started");

    // Reply to the first invalidation; the server immediately sends the
    // second one, which reaches the client in the same instant.
    assert_eq!(c.owner_done(1), (Write, Read));
    c.up1(1);
    c.down1(1);
    assert_eq!(c.owner.len(), 1, "second invalidation processed at once");
    assert_eq!(c.owner_done(1), (Read, Null));
    c.settle();
    assert!(c.has(2, 20));
    c.unlock(2, 20);
    c.settle();
    assert!(c.has(3, 30));
}

/// Trap 1, the "during" window: the second request for the same lock
/// arrives while the owner is still writing back for the first (here a
/// duplicate after a failover).
#[test]
fn trap1_duplicate_invalidation_while_the_owner_writes_back() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    c.unlock(1, 10);
    c.lock(2, 20, a(), Write);
    c.up1(2);
    c.down1(1);
    assert_eq!(c.owner.len(), 1);
    // The same request again (a new server asking after failover).
    let nl = LockMsg {
        key: a().start,
        write_seq: 0,
        old: Write,
        new: Null,
    }
    .to_net();
    c.client(1, ClientEvent::InvalidateRequest { token: 500, nl });
    assert_eq!(c.owner.len(), 1, "queued, not started twice");
    c.owner_done(1);
    // Both answered, in order, each stating the mode actually left.
    let replies: Vec<(u64, LockMode)> = c.up[&1]
        .iter()
        .map(|m| match m {
            Up::InvReply { token, nl } => (*token, LockMode::from_wire(nl.new_mode).unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1], (500, Null));
    assert!(replies.iter().all(|r| r.1 == Null));
    c.settle();
    assert!(c.has(2, 20));
}

/// Traps 2 and 3 (a5ca5ee3, 65ac4283): after a lock received another
/// invalidation mid-processing, its waiting users must still be served:
/// nothing may stay parked where no worker looks.
#[test]
fn traps2_3_waiters_are_served_after_back_to_back_invalidations() {
    let mut c = Cluster::new(&[1, 2, 3], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    c.lock(2, 20, a(), Read);
    c.lock(3, 30, a(), Write);
    c.up1(2);
    c.up1(3);
    c.down1(1); // W → R waits for user 10
                // A local user of mount 1 wants WRITE again meanwhile: it must wait
                // (an invalidation is pending), not starve the invalidation.
    c.lock(1, 11, a(), Write);
    assert!(!c.has(1, 11));
    c.unlock(1, 10);
    c.settle();
    // Everybody got their turn in FIFO order at the server.
    assert!(c.has(2, 20));
    c.unlock(2, 20);
    c.settle();
    assert!(c.has(3, 30));
    c.unlock(3, 30);
    c.settle();
    assert!(c.has(1, 11), "the waiter behind two invalidations hung");
}

/// Trap 4 (ad5662b8): grants and invalidations of one lock are processed
/// strictly in receive order. A grant that arrives behind an invalidation
/// still waiting for local users waits too, and the invalidation is
/// computed against the mode held before that grant.
#[test]
fn trap4_grant_queued_behind_an_invalidation_is_applied_after_it() {
    let mut c = Cluster::new(&[1], 100);
    c.lock(1, 10, a(), Read);
    c.settle();
    // Another user wants WRITE: an upgrade request goes out.
    c.lock(1, 11, a(), Write);
    let Some(Up::Request { nl, .. }) = c.up[&1].back().cloned() else {
        panic!("no upgrade request");
    };
    assert_eq!(nl.new_mode, Write.to_wire());
    // A stale R → NULL invalidation (old server) arrives first, then the
    // new server's grant of WRITE.
    let inv = LockMsg {
        key: a().start,
        write_seq: 0,
        old: Read,
        new: Null,
    }
    .to_net();
    c.client(1, ClientEvent::InvalidateRequest { token: 7, nl: inv });
    let grant = LockMsg {
        key: a().start,
        write_seq: 42,
        old: Read,
        new: Write,
    }
    .to_net();
    c.client(1, ClientEvent::Grant { nl: grant });
    assert_eq!(
        c.mode(1, a()),
        Read,
        "grant must wait behind the invalidation"
    );
    assert!(!c.has(1, 11));
    c.unlock(1, 10);
    assert_eq!(c.owner_done(1), (Read, Null));
    assert_eq!(c.mode(1, a()), Write);
    assert!(c.has(1, 11));
    let gen = c.granted.iter().find(|g| g.1 == UserId(11)).unwrap().3;
    assert!(gen > 0, "READ → NULL → WRITE must bump refresh_gen");
}

/// Trap 4, duplicates: an invalidation for a lock the client no longer has
/// is answered at once with NULL.
#[test]
fn trap4_invalidation_of_an_unknown_lock_is_answered_at_once() {
    let mut c = Cluster::new(&[1], 100);
    let inv = LockMsg {
        key: b().start,
        write_seq: 0,
        old: Write,
        new: Read,
    }
    .to_net();
    c.client(1, ClientEvent::InvalidateRequest { token: 9, nl: inv });
    match c.up[&1].back() {
        Some(Up::InvReply { token: 9, nl }) => assert_eq!(nl.new_mode, Null.to_wire()),
        other => panic!("{other:?}"),
    }
    assert!(c.owner.is_empty());
}

/// Trap 5 (ca526e2b): a LOCK_RECOVER answer given while an invalidation is
/// being processed reports the old mode, both while users still hold the
/// lock and while the owner writes back; afterwards the new one.
#[test]
fn trap5_recovery_reports_the_old_mode_mid_invalidation() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    let ws = c.clients[&1].view(&a().start).unwrap().write_seq;
    c.lock(2, 20, a(), Write);
    c.up1(2);
    c.down1(1);
    // Users still hold it.
    let r = recover_report(&mut c, 1);
    assert_eq!((r[0].old, r[0].new, r[0].write_seq), (Write, Write, ws));
    c.unlock(1, 10);
    assert_eq!(c.owner.len(), 1);
    assert_eq!(c.mode(1, a()), Null, "mode already lowered for local users");
    // The owner is writing back.
    let r = recover_report(&mut c, 1);
    assert_eq!(r[0].new, Write);
    c.owner_done(1);
    // Done: nothing left to report.
    assert!(recover_report(&mut c, 1).is_empty());
}

/// Seed 850 of lock_sim: a grant queued behind an unfinished invalidation
/// counts in the recovery report (joined with the old mode).
#[test]
fn recovery_report_covers_grants_queued_behind_an_invalidation() {
    let mut c = Cluster::new(&[1], 100);
    c.lock(1, 10, a(), Read);
    c.settle();
    c.lock(1, 11, a(), WriteOnly);
    let inv = LockMsg {
        key: a().start,
        write_seq: 0,
        old: Read,
        new: Null,
    }
    .to_net();
    c.client(1, ClientEvent::InvalidateRequest { token: 7, nl: inv });
    let grant = LockMsg {
        key: a().start,
        write_seq: 77,
        old: Null,
        new: WriteOnly,
    }
    .to_net();
    c.client(1, ClientEvent::Grant { nl: grant });
    let r = recover_report(&mut c, 1);
    assert_eq!(r.len(), 1);
    // READ now or WRITE_ONLY later: only WRITE conflicts with both.
    assert_eq!(r[0].new, Write);
    assert_eq!(r[0].write_seq, 77);
}

/// Trap 6 (c313b71b / 55dde87b): a lock whose invalidation waits for its
/// users must not hold up other locks' grants and invalidations.
#[test]
fn trap6_one_blocked_lock_does_not_block_the_others() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Write);
    c.lock(1, 11, b(), Write);
    c.settle();
    c.unlock(1, 11);
    c.lock(2, 20, a(), Write);
    c.lock(2, 21, b(), Write);
    c.settle();
    // Lock a is stuck behind user 10; lock b went through.
    assert!(!c.has(2, 20));
    assert!(c.has(2, 21));
    c.unlock(1, 10);
    c.settle();
    assert!(c.has(2, 20));
}

/// Trap 7 (69d9040e): a lock node freed by a NULL grant is gone at once and
/// a request right behind it is not lost; the same during recovery
/// (seed 999 of lock_sim).
#[test]
fn trap7_node_freed_and_a_new_request_is_served() {
    let mut c = Cluster::new(&[1, 2], 1);
    c.lock(1, 10, a(), Read);
    c.settle();
    c.unlock(1, 10);
    c.lock(1, 11, b(), Read);
    c.settle();
    c.unlock(1, 11);
    // Two idle locks with lock_idle_count 1: the next lock call (of a
    // third lock) shrinks the oldest (a).
    c.lock(1, 12, inode_lock(2048), Read);
    c.settle();
    assert!(
        c.clients[&1].view(&a().start).is_none(),
        "shrunk lock freed"
    );
    assert_eq!(c.srv.node_count(), 2, "server node of a freed");
    assert_eq!(c.srv.held_mode(1, &a().start), Null);
    c.lock(2, 20, a(), Write);
    c.settle();
    assert!(c.has(2, 20));

    // During recovery: a fenced client's locks empty a node while another
    // client still owes its recovery.
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Read);
    c.settle();
    c.failover();
    c.server(ServerEvent::Greeted { rid: 1 });
    c.down1(1);
    c.up1(1);
    c.down1(1);
    c.up1(1);
    assert!(c.srv.is_recovering(), "rid 2 still owes recovery");
    c.server(ServerEvent::ClientGone { rid: 1 });
    c.srv.check_invariants().unwrap();
    assert_eq!(c.srv.node_count(), 0);
}

/// Trap 8 (e1491297): a farewell from a client that still owes its lock
/// recovery waits for it; then its locks go, and nothing it sends later
/// recreates them.
#[test]
fn trap8_farewell_waits_for_that_clients_recovery() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    c.unlock(1, 10);
    c.failover();
    c.server(ServerEvent::Greeted { rid: 1 });
    c.server(ServerEvent::Farewell { rid: 1 });
    assert!(
        c.farewell_ready.is_empty(),
        "farewell answered before recovery"
    );
    c.down1(1);
    c.up1(1);
    assert_eq!(c.srv.held_mode(1, &a().start), Write, "recovered");
    c.down1(1);
    c.up1(1);
    assert_eq!(c.farewell_ready, vec![1]);
    assert_eq!(c.srv.held_mode(1, &a().start), Null, "dropped at farewell");
    // A late, duplicated recovery reply is ignored.
    let nl = LockMsg {
        key: a().start,
        write_seq: 3,
        old: Write,
        new: Write,
    }
    .to_net();
    c.server(ServerEvent::RecoverReply {
        rid: 1,
        locks: vec![nl],
    });
    assert_eq!(c.srv.held_mode(1, &a().start), Null);
    // Mount 2 recovers and can take the lock.
    c.server(ServerEvent::Greeted { rid: 2 });
    c.settle();
    assert!(!c.srv.is_recovering());
    c.lock(2, 20, a(), Write);
    c.settle();
    assert!(c.has(2, 20));
}

/// e54f8d3e / trap 27: an invalidation to a client that never answers (it
/// is disconnected) is not an error; the lock waits until the client is
/// fenced and its grants dropped.
#[test]
fn unreachable_holder_blocks_only_until_fenced() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.lock(1, 10, a(), Write);
    c.settle();
    c.lock(2, 20, a(), Read);
    c.up1(2);
    c.down.get_mut(&1).unwrap().clear(); // never delivered
    c.settle();
    assert!(!c.has(2, 20));
    c.server(ServerEvent::ClientGone { rid: 1 });
    c.settle();
    assert!(c.has(2, 20));
}

/// Recovery pages by 22 locks from the last key + 1, raises the core seq
/// above every reported write_seq, and times out into fencing.
#[test]
fn recovery_pages_raises_the_seq_and_fences_the_silent() {
    let mut c = Cluster::new(&[1, 2], 1000);
    let n = LOCK_RECOVER_MAX_LOCKS as u64 + 8;
    for i in 0..n {
        c.lock(1, 100 + i, inode_lock(i * 1024), WriteOnly);
    }
    c.settle();
    let top = c.core;
    c.failover();
    c.core = 0;
    c.server(ServerEvent::Greeted { rid: 1 });
    c.down1(1);
    let Some(Up::Recover { locks }) = c.up[&1].front().cloned() else {
        panic!("no report");
    };
    assert_eq!(locks.len(), LOCK_RECOVER_MAX_LOCKS);
    c.settle();
    for i in 0..n {
        assert_eq!(c.srv.held_mode(1, &inode_lock(i * 1024).start), WriteOnly);
    }
    assert!(c.core >= top, "core seq {} not raised to {top}", c.core);
    assert!(c.srv.is_recovering(), "rid 2 never greeted");
    c.server(ServerEvent::RecoveryTimedOut);
    assert_eq!(c.fenced, vec![2]);
    c.server(ServerEvent::RecoveryTimedOut);
    assert_eq!(c.fenced, vec![2], "fence asked once");
    c.server(ServerEvent::ClientGone { rid: 2 });
    assert!(!c.srv.is_recovering());
}

/// Requests queued during recovery are processed once it completes, in
/// arrival order.
#[test]
fn requests_wait_for_recovery_then_go_in_order() {
    let mut c = Cluster::new(&[1, 2, 3], 100);
    c.lock(1, 10, a(), Read);
    c.settle();
    c.failover();
    c.lock(2, 20, a(), Write);
    c.lock(3, 30, a(), Read);
    c.server(ServerEvent::Greeted { rid: 2 });
    c.server(ServerEvent::Greeted { rid: 3 });
    c.up1(2);
    c.up1(3);
    assert!(c.down[&1].is_empty(), "nothing processed during recovery");
    c.server(ServerEvent::Greeted { rid: 1 });
    c.settle();
    assert!(!c.has(2, 20), "mount 1 still reads");
    c.unlock(1, 10);
    c.settle();
    assert!(c.has(2, 20));
    assert!(!c.has(3, 30));
    c.unlock(2, 20);
    c.settle();
    assert!(c.has(3, 30));
}

/// LKF_NONBLOCK: an immediate EAGAIN and no request when it would wait.
#[test]
fn nonblock_would_block_sends_nothing() {
    let mut c = Cluster::new(&[1, 2], 100);
    c.client(
        1,
        ClientEvent::Lock {
            user: UserId(1),
            range: a(),
            mode: Read,
            nonblock: true,
        },
    );
    assert_eq!(c.would_block, vec![(1, UserId(1))]);
    assert!(c.up[&1].is_empty());
    assert!(c.clients[&1].view(&a().start).is_none());
    c.lock(1, 2, a(), Write);
    c.settle();
    c.client(
        1,
        ClientEvent::Lock {
            user: UserId(3),
            range: a(),
            mode: Read,
            nonblock: true,
        },
    );
    assert!(c.has(1, 3), "READ under WRITE is served at once");
}

/// Same-client conversions go through an invalidation of our own grant:
/// WRITE → WRITE_ONLY must drop the cache first; READ → WRITE keeps it.
#[test]
fn own_grant_conversions() {
    let mut c = Cluster::new(&[1], 100);
    c.lock(1, 1, a(), Read);
    c.settle();
    c.unlock(1, 1);
    c.lock(1, 2, a(), Write);
    c.settle();
    assert!(c.owner.is_empty(), "READ → WRITE keeps the cache");
    assert!(c.has(1, 2));
    c.unlock(1, 2);
    c.lock(1, 3, a(), WriteOnly);
    c.up1(1);
    c.down1(1);
    assert_eq!(c.owner_done(1), (Write, Null));
    c.settle();
    assert!(c.has(1, 3));
    assert_eq!(c.mode(1, a()), WriteOnly);
}

/// A stale invalidation asking a WRITE_ONLY holder for READ leaves NULL
/// (WRITE_ONLY can't be narrowed to READ), and says so in the reply.
#[test]
fn stale_read_invalidation_of_write_only_leaves_null() {
    let mut c = Cluster::new(&[1], 100);
    c.lock(1, 1, a(), WriteOnly);
    c.settle();
    c.unlock(1, 1);
    let inv = LockMsg {
        key: a().start,
        write_seq: 0,
        old: Write,
        new: Read,
    }
    .to_net();
    c.client(1, ClientEvent::InvalidateRequest { token: 5, nl: inv });
    assert_eq!(c.owner_done(1), (WriteOnly, Null));
    match c.up[&1].back() {
        Some(Up::InvReply { token: 5, nl }) => assert_eq!(nl.new_mode, Null.to_wire()),
        other => panic!("{other:?}"),
    }
}

/// A client whose first greeting reply from this server was lost greets
/// again as first contact; the net layer discards its connection state
/// with everything queued in it. The invalidation it never saw is sent
/// again (else the writer waiting for it hangs), and the request it
/// resends replaces the queued one (else the server refuses it as a
/// second request and the client never gets its lock).
#[test]
fn a_second_first_contact_resends_invalidations_and_takes_resent_requests() {
    let mut c = Cluster::new(&[1, 2], 8);
    c.lock(1, 1, a(), Read);
    c.lock(2, 1, b(), Read);
    c.settle();
    assert!(c.has(1, 1) && c.has(2, 1));
    // 2 wants a WRITE (1 must be invalidated); 1 wants b WRITE (2 must).
    c.lock(2, 2, a(), Write);
    c.lock(1, 2, b(), Write);
    while c.up1(1) | c.up1(2) {}
    // 1's connection is lost before it saw the invalidation; it comes
    // back as first contact and resends its unanswered request.
    c.down.get_mut(&1).unwrap().clear();
    let resent: Vec<Up> = c.clients[&1]
        .views()
        .filter(|v| v.request.is_some())
        .map(|v| Up::Request {
            token: 1000,
            nl: LockMsg {
                key: v.range.start,
                write_seq: 0,
                old: v.mode,
                new: v.request.unwrap(),
            }
            .to_net(),
        })
        .collect();
    assert_eq!(resent.len(), 1, "1's request for b is unanswered");
    c.server(ServerEvent::Greeted { rid: 1 });
    c.up.get_mut(&1).unwrap().extend(resent);
    c.unlock(1, 1);
    c.unlock(2, 1);
    c.settle();
    assert!(
        c.has(2, 2),
        "2's WRITE on a waits for an invalidation 1 never saw"
    );
    assert!(c.has(1, 2), "1's resent request for b was refused");
    assert_eq!(c.mode(1, a()), Null);
    assert_eq!(c.mode(2, b()), Null);
}
