//! Our side of each mount in the model: the real lock client and server
//! state machines, requests served under cluster locks over an item
//! cache, the frontend's lookup table, and invalidations run in the
//! production order (or a broken variant).
//!
//! The item cache is one [`Group`] per inode group: loaded from disk under
//! a readable lock, changed under WRITE (a change from anything but the
//! latest version is a lost update), written back and dropped when an
//! invalidation asks, as `trans::Mount::invalidate_lock` does.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::lock::{
    inode_lock, lock_order, ClientAction, ClientEvent, LockClient, LockClientConfig, LockMode,
    LockRange, ServerAction, ServerEvent, UserId,
};
use engine::node::fs_locks::{invalidate_steps, InvalidateStep};
use fuse_frontend::notify::{
    entry_attr_timeout, readdirplus_entry_timeout, revocations, Revocation,
};

use super::kernel::{self, Attr};
use super::wait::{oneshot, Tid, Tx};
use super::{group_of, with, Group, Msg, Notify, Obj, Val, Wait, World, GROUPS, ROOT, W};

pub struct Daemon {
    pub client: LockClient<u64>,
    /// The frontend's kernel lookup counts (`notify::LookupTable`).
    pub lookups: BTreeMap<u64, u64>,
    pub cache: BTreeMap<u64, (Group, bool)>,
    waiting: BTreeMap<UserId, Tx<()>>,
    pub invalidations: u64,
}

/// A request from the kernel.
#[derive(Debug, Clone)]
pub enum Req {
    Lookup(String),
    Getattr(u64),
    Read(u64),
    Write(u64, WOp),
    Create(String),
    Unlink(String),
    Rename(String, String),
    Readdir,
    Readdirplus,
}

#[derive(Debug, Clone, Copy)]
pub enum WOp {
    Put(u64),
    Append(u64),
    Truncate,
}

#[derive(Debug, Clone)]
pub enum Rep {
    Entry {
        ino: u64,
        ent_ver: u64,
        attr: Attr,
        timeout: Duration,
        attr_timeout: Duration,
        /// What a CREATE changed (empty for LOOKUP).
        muts: Vec<(Obj, u64)>,
    },
    NoEnt {
        ent_ver: u64,
    },
    Exists {
        ent_ver: u64,
        ino: u64,
    },
    Attr {
        attr: Attr,
        timeout: Duration,
    },
    Data {
        ver: u64,
        data: Vec<u64>,
    },
    Done {
        muts: Vec<(Obj, u64)>,
    },
    List {
        ver: u64,
        names: Vec<String>,
    },
    /// READDIRPLUS: the listing, each entry with its attributes.
    ListPlus {
        ver: u64,
        ents: Vec<PlusEnt>,
    },
}

#[derive(Debug, Clone)]
pub struct PlusEnt {
    pub name: String,
    pub ino: u64,
    pub ent_ver: u64,
    pub attr: Attr,
    pub timeout: Duration,
    pub attr_timeout: Duration,
}

/// The volume: the root directory with "a" and "b", two empty files in
/// different groups; every mount greeted.
pub fn setup(w: &mut World) {
    for g in GROUPS {
        w.disk.insert(g, Group::default());
    }
    // Names nobody created yet: absent at version 0.
    for n in super::NAMES {
        w.truth
            .vals
            .insert((Obj::Name(n.into()), 0), Val::Ent(None));
    }
    for (name, ino) in [("a", 2u64), ("b", 1025)] {
        let v = w.mutate(Obj::File(ino), 0, Val::Data(Vec::new()));
        w.disk
            .get_mut(&group_of(ino))
            .unwrap()
            .files
            .insert(ino, (v, Vec::new()));
        let ev = w.mutate(Obj::Name(name.into()), 0, Val::Ent(Some(ino)));
        w.disk
            .get_mut(&0)
            .unwrap()
            .ents
            .insert(name.into(), (ev, Some(ino)));
    }
    let dv = w.mutate(Obj::Dir, 0, Val::List(vec!["a".into(), "b".into()]));
    w.disk.get_mut(&0).unwrap().dir_ver = dv;
    let completed = w.truth.latest.clone();
    w.truth.completed = completed;
    let cfg = LockClientConfig {
        lock_idle_count: w.cfg.lock_idle_count,
    };
    for m in 0..w.cfg.mounts {
        w.mounts.push(super::Mount {
            k: kernel::Kernel::new(),
            d: Daemon {
                client: LockClient::new(cfg),
                lookups: BTreeMap::new(),
                cache: BTreeMap::new(),
                waiting: BTreeMap::new(),
                invalidations: 0,
            },
        });
        let acts = w
            .server
            .handle(&mut w.core_seq, ServerEvent::Greeted { rid: m as u64 + 1 });
        assert!(acts.is_empty());
    }
}

pub fn server_event(w: &mut World, ev: ServerEvent<u64>) {
    let acts = w.server.handle(&mut w.core_seq, ev);
    if let Err(e) = w.server.check_invariants() {
        w.fail(format!("lock server: {e}"));
    }
    for a in acts {
        match a {
            ServerAction::Grant { rid, nl, .. } => w.send(
                rid as usize - 1,
                false,
                Msg::Client(rid as usize - 1, ClientEvent::Grant { nl }),
            ),
            ServerAction::Invalidate { rid, nl } => {
                let token = w.id();
                let m = rid as usize - 1;
                w.send(
                    m,
                    false,
                    Msg::Client(m, ClientEvent::InvalidateRequest { token, nl }),
                );
            }
            other => w.fail(format!("lock server: unexpected {other:?}")),
        }
    }
}

pub fn client_event(w: &mut World, m: usize, ev: ClientEvent<u64>) {
    let acts = w.mounts[m].d.client.handle(ev);
    if let Err(e) = w.mounts[m].d.client.check_invariants() {
        w.fail(format!("lock client {m}: {e}"));
    }
    let rid = m as u64 + 1;
    for a in acts {
        match a {
            ClientAction::Request { nl } => {
                let token = w.id();
                w.send(
                    m,
                    true,
                    Msg::Server(ServerEvent::Request { rid, token, nl }),
                );
            }
            ClientAction::InvalidateReply { nl, .. } => {
                w.log(format!("m{m} answers invalidation of {}", nl.key.first));
                w.send(
                    m,
                    true,
                    Msg::Server(ServerEvent::InvalidateReply { rid, nl }),
                );
            }
            ClientAction::Granted { user, .. } => {
                if let Some(tx) = w.mounts[m].d.waiting.remove(&user) {
                    tx.send(());
                }
            }
            ClientAction::Invalidate { range, old, new } => {
                let ww = w.w();
                let t = w.id();
                w.invalidating.insert((m, range.start.first), t);
                w.mounts[m].d.invalidations += 1;
                w.log(format!(
                    "m{m} task {t} invalidates group {} {old:?} -> {new:?}",
                    range.start.first
                ));
                w.rt.spawn(invalidation(ww, m, t, range, old, new)).detach();
            }
            other => w.fail(format!("lock client {m}: unexpected {other:?}")),
        }
    }
}

/// Takes `mode` on the groups of `inos` in the global order, as
/// `fs::locking::lock_inodes` does.
async fn lock(w: &W, m: usize, t: Tid, inos: &[u64], mode: LockMode) -> Vec<(UserId, u64)> {
    let ranges = lock_order(inos.iter().map(|&i| inode_lock(i)).collect());
    let mut held = Vec::new();
    for r in ranges {
        let g = r.start.first;
        let rx = with(w, |w| {
            let user = UserId(w.id());
            let (tx, rx) = oneshot();
            w.mounts[m].d.waiting.insert(user, tx);
            w.wait(
                t,
                format!("m{m} request waits for {mode:?} on group {g}"),
                Wait::Cluster { m, group: g },
            );
            client_event(
                w,
                m,
                ClientEvent::Lock {
                    user,
                    range: r,
                    mode,
                    nonblock: false,
                },
            );
            held.push((user, g));
            rx
        });
        rx.await;
        with(w, |w| {
            w.unwait(t);
            w.holds.entry((m, g)).or_default().insert(t);
        });
    }
    held
}

fn unlock(w: &mut World, m: usize, t: Tid, held: Vec<(UserId, u64)>) {
    for (user, g) in held {
        if let Some(h) = w.holds.get_mut(&(m, g)) {
            h.remove(&t);
        }
        client_event(w, m, ClientEvent::Unlock { user });
    }
}

/// The cached items of `ino`'s group, loaded if needed; the lock must let
/// this mount read (write when `write`).
fn group(w: &mut World, m: usize, ino: u64, write: bool) -> &mut (Group, bool) {
    let g = group_of(ino);
    let mode = w.mounts[m]
        .d
        .client
        .view(&inode_lock(ino).start)
        .map(|v| v.mode)
        .unwrap_or(LockMode::Null);
    if !mode.can_read() || (write && !mode.can_write()) {
        w.fail(format!("m{m} uses group {g} under {mode:?}"));
    }
    let disk = w.disk[&g].clone();
    let e = w.mounts[m].d.cache.entry(g).or_insert((disk, false));
    if write {
        e.1 = true;
    }
    e
}

fn ent(w: &mut World, m: usize, name: &str) -> (u64, Option<u64>) {
    group(w, m, ROOT, false)
        .0
        .ents
        .get(name)
        .copied()
        .unwrap_or((0, None))
}

/// The inode's items; a missing inode was lost (an update never written
/// back), reported rather than panicking.
fn file(w: &mut World, m: usize, ino: u64) -> (u64, Vec<u64>) {
    match group(w, m, ino, false).0.files.get(&ino) {
        Some(f) => f.clone(),
        None => {
            w.fail(format!("lost update: m{m} finds no inode {ino}"));
            (0, Vec::new())
        }
    }
}

fn attr(w: &mut World, m: usize, ino: u64) -> Attr {
    let (ver, data) = file(w, m, ino);
    Attr {
        ver,
        size: data.len() as u64,
    }
}

fn set_ent(w: &mut World, m: usize, name: &str, ino: Option<u64>, muts: &mut Vec<(Obj, u64)>) {
    let (base, _) = ent(w, m, name);
    let v = w.mutate(Obj::Name(name.into()), base, Val::Ent(ino));
    group(w, m, ROOT, true).0.ents.insert(name.into(), (v, ino));
    muts.push((Obj::Name(name.into()), v));
}

fn bump_dir(w: &mut World, m: usize, muts: &mut Vec<(Obj, u64)>) {
    let g = &group(w, m, ROOT, false).0;
    let base = g.dir_ver;
    let list: Vec<String> = g
        .ents
        .iter()
        .filter(|(_, e)| e.1.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let v = w.mutate(Obj::Dir, base, Val::List(list));
    group(w, m, ROOT, true).0.dir_ver = v;
    muts.push((Obj::Dir, v));
}

/// The frontend's `count_lookup`: every entry reply is one lookup;
/// returns the count before.
fn count_lookup(w: &mut World, m: usize, ino: u64) -> u64 {
    let n = w.mounts[m].d.lookups.entry(ino).or_insert(0);
    *n += 1;
    *n - 1
}

/// The frontend's `forget`.
pub fn forget(w: &mut World, m: usize, ino: u64, n: u64) {
    let l = &mut w.mounts[m].d.lookups;
    match l.get_mut(&ino) {
        Some(c) if *c > n => *c -= n,
        Some(_) => {
            l.remove(&ino);
        }
        None => {}
    }
}

/// Reads the entry `name` under the directory's lock alone (the first
/// step of an operation that learns an inode number from it).
async fn read_ent(w: &W, m: usize, t: Tid, name: &str) -> (u64, Option<u64>) {
    let h = lock(w, m, t, &[ROOT], LockMode::Read).await;
    with(w, |w| {
        let e = ent(w, m, name);
        unlock(w, m, t, h);
        e
    })
}

/// Serves one request as the frontend and `engine::fs` do: locks first,
/// items under them, the reply after they are given back.
pub async fn serve(w: &W, m: usize, t: Tid, req: Req) -> Rep {
    let timeout = with(w, |w| w.cfg.attr_timeout);
    match req {
        Req::Lookup(name) => loop {
            let (ev, e) = read_ent(w, m, t, &name).await;
            let Some(ino) = e else {
                return Rep::NoEnt { ent_ver: ev };
            };
            let h = lock(w, m, t, &[ROOT, ino], LockMode::Read).await;
            let again = with(w, |w| {
                let e = ent(w, m, &name);
                let a = (e.1 == Some(ino)).then(|| attr(w, m, ino));
                unlock(w, m, t, h);
                a.map(|a| (e.0, a))
            });
            let Some((ent_ver, attr)) = again else {
                continue;
            };
            // The FUSE worker thread builds the reply once the engine
            // executor has finished the operation: a window.
            let (rt, gap) = with(w, |w| (w.rt.clone(), w.gap()));
            rt.sleep(gap).await;
            return with(w, |w| {
                let before = count_lookup(w, m, ino);
                Rep::Entry {
                    ino,
                    ent_ver,
                    attr,
                    timeout,
                    attr_timeout: if w.var.first_lookup_attrs {
                        timeout
                    } else {
                        entry_attr_timeout(before, timeout)
                    },
                    muts: Vec::new(),
                }
            });
        },
        Req::Getattr(ino) => {
            let h = lock(w, m, t, &[ino], LockMode::Read).await;
            with(w, |w| {
                let a = attr(w, m, ino);
                unlock(w, m, t, h);
                Rep::Attr { attr: a, timeout }
            })
        }
        Req::Read(ino) => {
            let h = lock(w, m, t, &[ino], LockMode::Read).await;
            with(w, |w| {
                let (ver, data) = file(w, m, ino);
                unlock(w, m, t, h);
                Rep::Data { ver, data }
            })
        }
        Req::Write(ino, op) => {
            let h = lock(w, m, t, &[ino], LockMode::Write).await;
            with(w, |w| {
                let (base, mut data) = file(w, m, ino);
                match op {
                    WOp::Put(v) => data = vec![v],
                    WOp::Append(v) => data.push(v),
                    WOp::Truncate => data.clear(),
                }
                let ver = w.mutate(Obj::File(ino), base, Val::Data(data.clone()));
                group(w, m, ino, true).0.files.insert(ino, (ver, data));
                unlock(w, m, t, h);
                Rep::Done {
                    muts: vec![(Obj::File(ino), ver)],
                }
            })
        }
        Req::Create(name) => {
            let ino = with(w, |w| {
                let g = GROUPS[w.rng.below(GROUPS.len() as u64) as usize];
                w.next_ino += 1;
                g + w.next_ino
            });
            let h = lock(w, m, t, &[ROOT, ino], LockMode::Write).await;
            with(w, |w| {
                let (ev, e) = ent(w, m, &name);
                if let Some(old) = e {
                    unlock(w, m, t, h);
                    return Rep::Exists {
                        ent_ver: ev,
                        ino: old,
                    };
                }
                let mut muts = Vec::new();
                let fv = w.mutate(Obj::File(ino), 0, Val::Data(Vec::new()));
                group(w, m, ino, true).0.files.insert(ino, (fv, Vec::new()));
                muts.push((Obj::File(ino), fv));
                set_ent(w, m, &name, Some(ino), &mut muts);
                bump_dir(w, m, &mut muts);
                unlock(w, m, t, h);
                // CREATE replies carry timeout 0 (§2.6).
                count_lookup(w, m, ino);
                Rep::Entry {
                    ino,
                    ent_ver: muts[1].1,
                    attr: Attr { ver: fv, size: 0 },
                    timeout: Duration::ZERO,
                    attr_timeout: Duration::ZERO,
                    muts,
                }
            })
        }
        Req::Unlink(name) => loop {
            let (ev, e) = read_ent(w, m, t, &name).await;
            let Some(ino) = e else {
                return Rep::NoEnt { ent_ver: ev };
            };
            let h = lock(w, m, t, &[ROOT, ino], LockMode::Write).await;
            let done = with(w, |w| {
                let mut muts = Vec::new();
                if ent(w, m, &name).1 == Some(ino) {
                    set_ent(w, m, &name, None, &mut muts);
                    bump_dir(w, m, &mut muts);
                }
                unlock(w, m, t, h);
                muts
            });
            if !done.is_empty() {
                return Rep::Done { muts: done };
            }
        },
        Req::Rename(from, to) => loop {
            let h = lock(w, m, t, &[ROOT], LockMode::Read).await;
            let (fe, te) = with(w, |w| {
                let e = (ent(w, m, &from), ent(w, m, &to));
                unlock(w, m, t, h);
                e
            });
            let Some(ino) = fe.1 else {
                return Rep::NoEnt { ent_ver: fe.0 };
            };
            let mut inos = vec![ROOT, ino];
            inos.extend(te.1);
            let h = lock(w, m, t, &inos, LockMode::Write).await;
            let done = with(w, |w| {
                let mut muts = Vec::new();
                if ent(w, m, &from).1 == fe.1 && ent(w, m, &to).1 == te.1 {
                    set_ent(w, m, &to, Some(ino), &mut muts);
                    set_ent(w, m, &from, None, &mut muts);
                    bump_dir(w, m, &mut muts);
                }
                unlock(w, m, t, h);
                muts
            });
            if !done.is_empty() {
                return Rep::Done { muts: done };
            }
        },
        Req::Readdirplus => {
            // filesystem.rs readdir_attrs: the listing under the
            // directory's lock, then a getattr per entry.
            let h = lock(w, m, t, &[ROOT], LockMode::Read).await;
            let (ver, list) = with(w, |w| {
                let g = &group(w, m, ROOT, false).0;
                let list: Vec<(String, u64, u64)> = g
                    .ents
                    .iter()
                    .filter_map(|(n, e)| e.1.map(|i| (n.clone(), i, e.0)))
                    .collect();
                let ver = g.dir_ver;
                unlock(w, m, t, h);
                (ver, list)
            });
            let mut attrs = Vec::new();
            for (_, ino, _) in &list {
                let h = lock(w, m, t, &[*ino], LockMode::Read).await;
                attrs.push(with(w, |w| {
                    let a = attr(w, m, *ino);
                    unlock(w, m, t, h);
                    a
                }));
            }
            let (rt, gap) = with(w, |w| (w.rt.clone(), w.gap()));
            rt.sleep(gap).await;
            with(w, |w| {
                let first = w.var.first_lookup_attrs;
                let ents = list
                    .into_iter()
                    .zip(attrs)
                    .map(|((name, ino, ent_ver), attr)| {
                        let before = count_lookup(w, m, ino);
                        PlusEnt {
                            name,
                            ino,
                            ent_ver,
                            attr,
                            timeout: if w.var.readdirplus_entries {
                                timeout
                            } else {
                                readdirplus_entry_timeout(timeout)
                            },
                            attr_timeout: if first {
                                timeout
                            } else {
                                entry_attr_timeout(before, timeout)
                            },
                        }
                    })
                    .collect();
                Rep::ListPlus { ver, ents }
            })
        }
        Req::Readdir => {
            let h = lock(w, m, t, &[ROOT], LockMode::Read).await;
            with(w, |w| {
                let g = &group(w, m, ROOT, false).0;
                let names = g
                    .ents
                    .iter()
                    .filter(|(_, e)| e.1.is_some())
                    .map(|(n, _)| n.clone())
                    .collect();
                let ver = g.dir_ver;
                unlock(w, m, t, h);
                Rep::List { ver, names }
            })
        }
    }
}

/// A notification that may block in the kernel.
#[derive(Debug, Clone)]
pub enum Blocking {
    /// `NOTIFY_INVAL_ENTRY(ROOT, name)`.
    Entry(String),
    /// `NOTIFY_INVAL_INODE(ino, 0, 0)`: attributes and every page.
    Pages(u64),
}

/// The blocking notifications a naive daemon sends for `range`: every
/// name of the directory if the group holds it, every page of its inodes.
fn blocking_plan(w: &World, m: usize, range: LockRange) -> Vec<Blocking> {
    let g = range.start.first;
    let mut v = Vec::new();
    if g == group_of(ROOT) {
        v.extend(super::NAMES.iter().map(|n| Blocking::Entry(n.to_string())));
    }
    v.extend(
        w.mounts[m]
            .d
            .lookups
            .range(g..=g | 1023)
            .map(|(&i, _)| Blocking::Pages(i)),
    );
    v
}

/// What the lock client's `Invalidate` action runs (node/locks.rs spawns
/// the hook, then reports `InvalidateDone`), in the order of
/// `invalidate_steps`; the kernel step is the daemon's hook
/// (`notify::revocations` on the blocking pool).
async fn invalidation(w: W, m: usize, t: Tid, range: LockRange, old: LockMode, new: LockMode) {
    let rt = with(&w, |w| w.rt.clone());
    let g = range.start.first;
    let var = with(&w, |w| w.var);
    let mut after = Vec::new();
    for step in invalidate_steps(old, new) {
        match step {
            InvalidateStep::Mount { write_back, keep } => {
                let commit = with(&w, |w| {
                    Duration::from_micros(if w.rng.pct(50) { 0 } else { w.rng.below(500) })
                });
                rt.sleep(commit).await;
                with(&w, |w| {
                    let d = &mut w.mounts[m].d;
                    if let Some((grp, dirty)) = d.cache.get_mut(&g) {
                        if *dirty {
                            if var.drop_dirty {
                                // Broken on purpose: nothing written back.
                                *dirty = false;
                                if !keep {
                                    w.mounts[m].d.cache.remove(&g);
                                }
                            } else if write_back {
                                let grp = grp.clone();
                                *dirty = false;
                                w.disk.insert(g, grp);
                            } else {
                                w.fail(format!("m{m} dirty group {g} under {old:?}"));
                            }
                        }
                    }
                    if !keep {
                        w.mounts[m].d.cache.remove(&g);
                    }
                });
            }
            InvalidateStep::Kernel { kept } => {
                // The blocking pool: runs a little later.
                rt.yield_now().await;
                let (plan, blocking) = with(&w, |w| {
                    let plan = if var.no_revocation {
                        Vec::new()
                    } else {
                        revocations(range, kept, &w.mounts[m].d.lookups)
                    };
                    let blocking = if kept.can_read() || var.notify == Notify::Production {
                        Vec::new()
                    } else {
                        blocking_plan(w, m, range)
                    };
                    (plan, blocking)
                });
                for r in plan {
                    with(&w, |w| {
                        w.log(format!("m{m} task {t} notifies {r:?}"));
                        match r {
                            Revocation::InvalInode(ino) => w.mounts[m].k.inval_inode_attr(ino),
                            Revocation::IncEpoch => w.mounts[m].k.inc_epoch(),
                        }
                    });
                }
                match var.notify {
                    Notify::BlockingBefore => {
                        for b in blocking {
                            kernel::notify_blocking(&w, m, t, b).await;
                        }
                    }
                    Notify::BlockingAfter => after = blocking,
                    Notify::Production => {}
                }
            }
        }
    }
    with(&w, |w| {
        w.invalidating.remove(&(m, g));
        client_event(w, m, ClientEvent::InvalidateDone { start: range.start });
    });
    if !after.is_empty() {
        // The notifier thread: after the answer, holding nothing, when it
        // gets to it.
        let (n, gap) = with(&w, |w| (w.id(), w.gap()));
        rt.sleep(gap).await;
        for b in after {
            kernel::notify_blocking(&w, m, n, b).await;
        }
    }
}

/// After the run: every object's newest version is where a reader would
/// find it (dirty in the cache of the mount holding WRITE, else on disk),
/// lock counts match, and the daemons' lookup counts mirror the kernels'.
pub fn final_checks(w: &mut World) {
    let mut state: BTreeMap<u64, Group> = w.disk.clone();
    for (m, mt) in w.mounts.iter().enumerate() {
        for (g, (grp, dirty)) in &mt.d.cache {
            let mode =
                mt.d.client
                    .view(&inode_lock(*g).start)
                    .map(|v| v.mode)
                    .unwrap_or(LockMode::Null);
            if *dirty {
                if !mode.can_write() {
                    w.failures
                        .push(format!("m{m} keeps dirty group {g} under {mode:?}"));
                }
                state.insert(*g, grp.clone());
            }
        }
    }
    let mut errs = Vec::new();
    for (obj, &latest) in &w.truth.latest {
        let found = match obj {
            Obj::File(ino) => state[&group_of(*ino)].files.get(ino).map(|f| f.0),
            Obj::Name(n) => Some(state[&0].ents.get(n).map(|e| e.0).unwrap_or(0)),
            Obj::Dir => Some(state[&0].dir_ver),
        };
        if found != Some(latest) {
            errs.push(format!(
                "lost update: {obj:?} is at {found:?}, latest {latest}"
            ));
        }
    }
    for (m, mt) in w.mounts.iter().enumerate() {
        let kernel: BTreeMap<u64, u64> =
            mt.k.inodes
                .iter()
                .filter(|(&i, k)| i != ROOT && k.nlookup > 0)
                .map(|(&i, k)| (i, k.nlookup))
                .collect();
        if kernel != mt.d.lookups {
            errs.push(format!(
                "m{m} lookup counts: daemon {:?}, kernel {kernel:?}",
                mt.d.lookups
            ));
        }
    }
    w.failures.extend(errs);
}
