//! SimKernel: a model of the kernel's FUSE side, several mounts of it, and
//! our lock-invalidation protocol driven against it from a seed
//! (TESTING.md §9, ARCHITECTURE §2.6). docs/kernel-model.md describes it.
//!
//! * [`kernel`]: per mount the dentry cache (epoch, timeouts), inodes with
//!   attribute cache (attr_version rules), lookup counts and FORGET, page
//!   cache (page-cache mode only), i_rwsem and folio locks, how each
//!   notification blocks, and the system calls of the workload.
//! * [`daemon`]: per mount our side: the real `LockClient` (and one real
//!   `LockServer`), requests served under cluster locks over an item cache,
//!   the frontend's lookup table, and the invalidation in the production
//!   order (`engine::node::fs_locks::invalidate_steps`, then
//!   `fuse_frontend::notify::revocations`) or a broken variant.
//! * here: the world, the network, the history checker, the seed runner
//!   and the wait-for graph printed when a seed deadlocks.
//!
//! Everything runs as tasks of the engine's deterministic simulation
//! runtime, so a seed replays exactly.

pub mod daemon;
pub mod kernel;
pub mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use engine::lock::{ClientEvent, LockServer, ServerEvent};
use engine::runtime::{Runtime, Sim, SimError};

use wait::Tid;

pub type W = Arc<Mutex<World>>;

pub fn with<R>(w: &W, f: impl FnOnce(&mut World) -> R) -> R {
    f(&mut w.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The root directory (inode group 0); all names live in it.
pub const ROOT: u64 = 1;
pub const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// The inode groups files are spread over (first inode of each group).
pub const GROUPS: [u64; 3] = [0, 1024, 2048];

pub fn group_of(ino: u64) -> u64 {
    engine::lock::inode_lock(ino).start.first
}

/// How notifications are sent around an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// What we ship: `invalidate_steps` then `revocations` before the
    /// answer (non-blocking only), nothing after.
    Production,
    /// The naive flow §2.6 rules out: also INVAL_ENTRY for the directory's
    /// names and page-range INVAL_INODE before the answer.
    BlockingBefore,
    /// The production plan before the answer, the blocking ones after it
    /// from a notifier task that holds nothing.
    BlockingAfter,
}

#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub notify: Notify,
    /// Buffered I/O through the kernel page cache (READ holds the folio
    /// lock) instead of FOPEN_DIRECT_IO.
    pub page_cache: bool,
    /// Entry replies cache the attributes of inodes the kernel does not
    /// hold yet (the frontend before `notify::entry_attr_timeout`).
    pub first_lookup_attrs: bool,
    /// READDIRPLUS entries carry the LOOKUP entry timeout (the frontend
    /// before `notify::readdirplus_entry_timeout`).
    pub readdirplus_entries: bool,
    /// The workload lists with READDIRPLUS (`ls -l`) too.
    pub readdirplus: bool,
    /// Broken on purpose: an invalidation drops dirty items unwritten.
    pub drop_dirty: bool,
    /// Broken on purpose: an invalidation revokes nothing in the kernel.
    pub no_revocation: bool,
}

pub const PRODUCTION: Variant = Variant {
    notify: Notify::Production,
    page_cache: false,
    first_lookup_attrs: false,
    readdirplus_entries: false,
    readdirplus: true,
    drop_dirty: false,
    no_revocation: false,
};

/// What one seed draws.
#[derive(Debug, Clone)]
pub struct Cfg {
    pub mounts: usize,
    pub procs: usize,
    pub ops: usize,
    pub attr_timeout: Duration,
    pub lock_idle_count: usize,
    pub max_net_us: u64,
    pub shrink_pct: u64,
}

/// Seeded randomness of the workload (the scheduler has its own).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// What a reader can observe, each with a version per object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Obj {
    File(u64),
    Name(String),
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Data(Vec<u64>),
    Ent(Option<u64>),
    List(Vec<String>),
}

/// What a read returned.
#[derive(Debug, Clone)]
pub enum Seen {
    Data(Vec<u64>),
    Size(u64),
    Ent(Option<u64>),
    List(Vec<String>),
}

/// The history: every version of every object, the latest one, and the
/// latest one whose system call has returned (a read that starts later
/// must see at least that one).
#[derive(Default)]
pub struct Truth {
    pub latest: BTreeMap<Obj, u64>,
    pub vals: BTreeMap<(Obj, u64), Val>,
    pub completed: BTreeMap<Obj, u64>,
}

/// What the daemons share with disk: one group of items per lock.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub files: BTreeMap<u64, (u64, Vec<u64>)>,
    pub ents: BTreeMap<String, (u64, Option<u64>)>,
    pub dir_ver: u64,
}

/// What a blocked task waits for (for the deadlock report).
#[derive(Debug, Clone)]
pub enum Wait {
    Sem { m: usize, ino: u64, folio: bool },
    Reply { handler: Tid },
    Cluster { m: usize, group: u64 },
}

pub struct Mount {
    pub k: kernel::Kernel,
    pub d: daemon::Daemon,
}

pub struct World {
    pub me: Weak<Mutex<World>>,
    pub rt: Runtime,
    pub rng: Rng,
    pub cfg: Cfg,
    pub var: Variant,
    pub server: LockServer<u64>,
    pub core_seq: u64,
    pub next_id: u64,
    conn_last: BTreeMap<(usize, bool), Duration>,
    pub mounts: Vec<Mount>,
    pub disk: BTreeMap<u64, Group>,
    pub truth: Truth,
    pub waits: BTreeMap<Tid, (String, Wait)>,
    /// Cluster lock users per (mount, group) and invalidations running.
    pub holds: BTreeMap<(usize, u64), BTreeSet<Tid>>,
    pub invalidating: BTreeMap<(usize, u64), Tid>,
    pub failures: Vec<String>,
    pub trace: Option<Vec<String>>,
    pub next_ino: u64,
    pub next_val: u64,
}

impl World {
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// How long a thread takes to run again after it was woken: mostly
    /// at once, sometimes late.
    pub fn gap(&mut self) -> Duration {
        Duration::from_micros(if self.rng.pct(70) {
            0
        } else {
            self.rng.below(400)
        })
    }

    pub fn fail(&mut self, msg: String) {
        let msg = format!("[{:?}] {msg}", self.rt.now());
        self.log(format!("FAIL {msg}"));
        self.failures.push(msg);
    }

    pub fn log(&mut self, s: String) {
        let now = self.rt.now();
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>9}us {s}", now.as_micros()));
        }
    }

    pub fn w(&self) -> W {
        self.me.upgrade().expect("world alive")
    }

    /// A new version of `obj` made from `base`; a base other than the
    /// latest version is a lost update.
    pub fn mutate(&mut self, obj: Obj, base: u64, val: Val) -> u64 {
        let latest = self.truth.latest.get(&obj).copied().unwrap_or(0);
        if base != latest {
            self.fail(format!(
                "lost update: {obj:?} changed from version {base}, latest is {latest}"
            ));
        }
        let ver = latest + 1;
        self.truth.latest.insert(obj.clone(), ver);
        self.truth.vals.insert((obj, ver), val);
        ver
    }

    /// A system call that changed `muts` returned.
    pub fn complete(&mut self, muts: &[(Obj, u64)]) {
        for (o, v) in muts {
            let c = self.truth.completed.entry(o.clone()).or_default();
            *c = (*c).max(*v);
        }
    }

    /// Checks a read of `obj` at version `ver` that started when the
    /// completed versions were `floor`.
    pub fn observe(
        &mut self,
        who: &str,
        floor: &BTreeMap<Obj, u64>,
        obj: Obj,
        ver: u64,
        seen: Seen,
    ) {
        let min = floor.get(&obj).copied().unwrap_or(0);
        if ver < min {
            self.fail(format!(
                "stale read by {who}: {obj:?} version {ver} seen after version {min} returned"
            ));
        }
        let Some(val) = self.truth.vals.get(&(obj.clone(), ver)) else {
            self.fail(format!("{who}: {obj:?} version {ver} never existed"));
            return;
        };
        let ok = match (&seen, val) {
            (Seen::Data(d), Val::Data(v)) => d == v,
            (Seen::Size(s), Val::Data(v)) => *s == v.len() as u64,
            (Seen::Ent(e), Val::Ent(v)) => e == v,
            (Seen::List(l), Val::List(v)) => l == v,
            _ => false,
        };
        if !ok {
            self.fail(format!(
                "{who}: {obj:?} version {ver} read as {seen:?}, was {val:?}"
            ));
        }
    }

    pub fn wait(&mut self, t: Tid, what: String, wt: Wait) {
        self.waits.insert(t, (what, wt));
    }

    pub fn unwait(&mut self, t: Tid) {
        self.waits.remove(&t);
    }

    /// Sends a lock message over the connection of mount `m` (each
    /// direction keeps its order, like TCP).
    pub fn send(&mut self, m: usize, to_server: bool, msg: Msg) {
        let delay = Duration::from_micros(20 + self.rng.below(self.cfg.max_net_us));
        let last = self
            .conn_last
            .get(&(m, to_server))
            .copied()
            .unwrap_or_default();
        let at = (self.rt.now() + delay).max(last + Duration::from_micros(1));
        self.conn_last.insert((m, to_server), at);
        let w = self.w();
        let rt = self.rt.clone();
        self.rt
            .spawn(async move {
                rt.sleep_until(at).await;
                with(&w, |w| match msg {
                    Msg::Server(ev) => daemon::server_event(w, ev),
                    Msg::Client(m, ev) => daemon::client_event(w, m, ev),
                });
            })
            .detach();
    }

    /// The wait-for graph of the blocked tasks: a cycle if there is one,
    /// and every wait.
    pub fn wait_report(&self) -> String {
        let edges = |t: Tid| -> Vec<Tid> {
            let Some((_, wt)) = self.waits.get(&t) else {
                return Vec::new();
            };
            match wt {
                Wait::Sem { m, ino, folio } => self.mounts[*m]
                    .k
                    .inodes
                    .get(ino)
                    .map(|i| if *folio { &i.folio } else { &i.rwsem })
                    .map(|s| s.holders())
                    .unwrap_or_default(),
                Wait::Reply { handler } => vec![*handler],
                Wait::Cluster { m, group } => {
                    let mut v: Vec<Tid> = Vec::new();
                    for (&(om, g), inv) in &self.invalidating {
                        if g == *group {
                            v.push(*inv);
                            let _ = om;
                        }
                    }
                    for (&(om, g), hs) in &self.holds {
                        if g == *group && (om != *m || self.invalidating.contains_key(&(om, g))) {
                            v.extend(hs.iter().filter(|&&h| h != t));
                        }
                    }
                    v
                }
            }
        };
        let mut out = String::new();
        let mut cycle = None;
        'outer: for &start in self.waits.keys() {
            let mut path = vec![start];
            let mut seen = BTreeSet::from([start]);
            // Depth-first over the first unexplored edge that leads on.
            let mut stack = vec![edges(start).into_iter()];
            while let Some(it) = stack.last_mut() {
                match it.next() {
                    Some(n) if n == start => {
                        cycle = Some(path.clone());
                        break 'outer;
                    }
                    Some(n) if !seen.contains(&n) && self.waits.contains_key(&n) => {
                        seen.insert(n);
                        path.push(n);
                        stack.push(edges(n).into_iter());
                    }
                    Some(_) => {}
                    None => {
                        stack.pop();
                        path.pop();
                    }
                }
            }
        }
        if let Some(c) = cycle {
            out.push_str("wait-for cycle:\n");
            for t in c {
                out.push_str(&format!("  task {t}: {}\n", self.waits[&t].0));
            }
        } else {
            out.push_str("no wait-for cycle among model tasks (a stall)\n");
        }
        out.push_str("blocked tasks:\n");
        for (t, (what, wt)) in &self.waits {
            out.push_str(&format!("  task {t}: {what} [{wt:?}]\n"));
        }
        out
    }
}

pub enum Msg {
    Server(ServerEvent<u64>),
    Client(usize, ClientEvent<u64>),
}

/// Why a seed failed.
#[derive(Debug)]
pub enum Failure {
    Deadlock(String),
    Check(String),
}

pub struct Outcome {
    pub syscalls: u64,
    pub notifications: u64,
    pub invalidations: u64,
    pub racy_instantiations: u64,
}

impl Cfg {
    pub fn draw(rng: &mut Rng) -> Cfg {
        Cfg {
            mounts: 2 + rng.below(2) as usize,
            procs: 1 + rng.below(3) as usize,
            ops: 8 + rng.below(16) as usize,
            attr_timeout: [
                Duration::ZERO,
                Duration::from_millis(2),
                Duration::from_millis(50),
                Duration::from_secs(1),
            ][rng.below(4) as usize],
            lock_idle_count: 1 + rng.below(4) as usize,
            max_net_us: 50 + rng.below(2000),
            shrink_pct: rng.below(30),
        }
    }
}

/// Runs one seed of `var`: Ok with counts, or why it failed (and the trace
/// when `trace`).
pub fn run_seed(seed: u64, var: Variant, trace: bool) -> Result<Outcome, (Failure, Vec<String>)> {
    let sim = Sim::new(seed);
    sim.set_foreign_wake_grace(Duration::ZERO);
    // A stall past this virtual deadline fails the seed even if some timer
    // keeps the clock going.
    sim.set_time_limit(Some(Duration::from_secs(120)));
    let rt = sim.runtime();
    let mut rng = Rng(seed ^ 0x5eed_4e41_0000_0006);
    let cfg = Cfg::draw(&mut rng);
    let w: W = Arc::new_cyclic(|me| {
        Mutex::new(World {
            me: me.clone(),
            rt: rt.clone(),
            rng,
            cfg: cfg.clone(),
            var,
            server: LockServer::new(),
            core_seq: 1,
            next_id: 0,
            conn_last: BTreeMap::new(),
            mounts: Vec::new(),
            disk: BTreeMap::new(),
            truth: Truth::default(),
            waits: BTreeMap::new(),
            holds: BTreeMap::new(),
            invalidating: BTreeMap::new(),
            failures: Vec::new(),
            trace: trace.then(Vec::new),
            next_ino: 3,
            next_val: 1,
        })
    });
    with(&w, |w| {
        daemon::setup(w);
        w.log(format!("seed {seed} {cfg:?} {var:?}"));
    });
    let main = {
        let w = w.clone();
        let rt = rt.clone();
        async move {
            let mut procs = Vec::new();
            for m in 0..cfg.mounts {
                for p in 0..cfg.procs {
                    procs.push(rt.spawn(kernel::process(w.clone(), m, p)));
                }
            }
            for p in procs {
                p.await;
            }
            // Let FORGETs and late messages land.
            rt.sleep(Duration::from_secs(5)).await;
        }
    };
    let res = sim.try_block_on(main);
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    let trace_out = g.trace.take().unwrap_or_default();
    match res {
        Err(SimError::Deadlock { now, .. }) => {
            let r = format!("seed {seed}: deadlock at {now:?}\n{}", g.wait_report());
            return Err((Failure::Deadlock(r), trace_out));
        }
        Err(SimError::TimeLimit { limit, .. }) => {
            let r = format!("seed {seed}: stalled past {limit:?}\n{}", g.wait_report());
            return Err((Failure::Deadlock(r), trace_out));
        }
        Ok(()) => {}
    }
    daemon::final_checks(&mut g);
    if !g.failures.is_empty() {
        return Err((
            Failure::Check(format!(
                "seed {seed} ({var:?}): {}",
                g.failures.join("\n  ")
            )),
            trace_out,
        ));
    }
    let out = Outcome {
        syscalls: g.mounts.iter().map(|m| m.k.syscalls).sum(),
        notifications: g.mounts.iter().map(|m| m.k.notifications).sum(),
        invalidations: g.mounts.iter().map(|m| m.d.invalidations).sum(),
        racy_instantiations: g.mounts.iter().map(|m| m.k.racy_instantiations).sum(),
    };
    drop(g);
    Ok(out)
}
