//! The kernel's FUSE side of one mount, as far as coherence goes
//! (fs/fuse/{dir,inode,file,dev}.c):
//!
//! * Dentries carry the connection epoch sampled *before* their LOOKUP
//!   was sent and an expiry; a dentry is used only while both hold.
//!   `NOTIFY_INC_EPOCH` bumps the epoch and so expires every dentry,
//!   including one whose LOOKUP is in flight.
//! * Inodes carry `nlookup` (one per entry reply; FORGET gives them back
//!   when the inode is evicted), cached attributes with an expiry, and
//!   `attr_version`. A request samples the connection's attr_version
//!   counter when sent; its reply's attributes are dropped if the inode's
//!   attr_version has moved past that sample (`fuse_change_attributes`).
//!   `NOTIFY_INVAL_INODE` on a cached inode bumps its attr_version and
//!   expires its attributes; on an inode the kernel does not have (not yet
//!   instantiated by a reply in flight, or evicted) it does nothing
//!   (ENOENT). A new inode starts at attr_version 0 and takes whatever its
//!   first reply says.
//! * i_rwsem: lookups hold the parent's shared, create/unlink/rename its
//!   exclusive, readdir shared, a direct write and a truncate the file's
//!   exclusive, all while the request is in the daemon.
//!   `NOTIFY_INVAL_ENTRY` takes the parent's exclusively
//!   (`fuse_reverse_inval_entry`).
//! * READDIRPLUS links each entry when the reply is parsed and stamps its
//!   dentry with the epoch read then (`fuse_direntplus_link`), though its
//!   attr_version was sampled at the send.
//! * Page cache (page-cache mode only): a READ of a missing page holds the
//!   folio lock while the request is in the daemon; `NOTIFY_INVAL_INODE`
//!   with offset >= 0 takes each folio lock to drop the page
//!   (`invalidate_inode_pages2_range`). With FOPEN_DIRECT_IO nothing is
//!   cached and no folio lock is held.
//!
//! The workload's system calls run here as tasks; every read is checked
//! against the history (a read that starts after a write returned
//! anywhere sees it).

use std::collections::BTreeMap;
use std::time::Duration;

use super::daemon::{self, Blocking, Rep, Req, WOp};
use super::wait::{RwSem, Rx, Tid};
use super::{with, Obj, Seen, Wait, World, NAMES, ROOT, W};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ver: u64,
    pub size: u64,
}

#[derive(Default)]
pub struct KInode {
    pub nlookup: u64,
    pub attr: Option<(Attr, Duration)>,
    pub attr_version: u64,
    /// Open files and system calls using the inode.
    pub refs: u32,
    pub page: Option<(u64, Vec<u64>)>,
    pub rwsem: RwSem,
    pub folio: RwSem,
}

#[derive(Debug, Clone, Copy)]
pub struct Dentry {
    pub ino: u64,
    pub epoch: u64,
    pub until: Duration,
    pub ver: u64,
}

pub struct Kernel {
    pub epoch: u64,
    pub attr_ctr: u64,
    pub inodes: BTreeMap<u64, KInode>,
    pub dents: BTreeMap<String, Dentry>,
    pub syscalls: u64,
    pub notifications: u64,
    /// INVAL_INODE notifications that found no inode, per inode.
    pub missed: BTreeMap<u64, u64>,
    /// New inodes whose attributes came from a reply that raced a missed
    /// INVAL_INODE of them.
    pub racy_instantiations: u64,
}

impl Kernel {
    pub fn new() -> Kernel {
        let mut inodes = BTreeMap::new();
        inodes.insert(
            ROOT,
            KInode {
                refs: 1,
                ..KInode::default()
            },
        );
        Kernel {
            epoch: 0,
            attr_ctr: 0,
            inodes,
            dents: BTreeMap::new(),
            syscalls: 0,
            notifications: 0,
            missed: BTreeMap::new(),
            racy_instantiations: 0,
        }
    }

    /// `fuse_change_attributes`.
    fn change_attributes(&mut self, ino: u64, a: Attr, until: Duration, sampled: u64) {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return;
        };
        if sampled != 0 && i.attr_version > sampled {
            return;
        }
        self.attr_ctr += 1;
        i.attr_version = self.attr_ctr;
        i.attr = Some((a, until));
    }

    /// `fuse_iget` for an entry reply: instantiate if needed, one more
    /// lookup, then the attributes.
    fn iget(&mut self, ino: u64, a: Attr, until: Duration, sampled: u64) {
        if !self.inodes.contains_key(&ino) && self.missed.get(&ino).is_some_and(|&at| at > sampled)
        {
            self.racy_instantiations += 1;
        }
        self.inodes.entry(ino).or_default().nlookup += 1;
        self.change_attributes(ino, a, until, sampled);
    }

    /// Points the dentry of `name` at `ino`, stamped with `epoch`.
    fn link(&mut self, name: &str, ino: u64, ver: u64, epoch: u64, until: Duration) {
        self.dents.insert(
            name.into(),
            Dentry {
                ino,
                epoch,
                until,
                ver,
            },
        );
    }

    /// `NOTIFY_INVAL_INODE(ino, -1)`: never blocks.
    pub fn inval_inode_attr(&mut self, ino: u64) {
        self.notifications += 1;
        self.attr_ctr += 1;
        let ctr = self.attr_ctr;
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.attr_version = ctr;
            i.attr = None;
        } else {
            self.missed.insert(ino, ctr);
        }
    }

    /// What the kernel does to an inode after its own WRITE, SETATTR or
    /// UNLINK returns (`fuse_write_update_attr`, `fuse_entry_unlinked`):
    /// a new attr_version, so a GETATTR or LOOKUP reply sent before it is
    /// not cached, and the attributes expired.
    fn changed(&mut self, ino: u64) {
        self.attr_ctr += 1;
        let ctr = self.attr_ctr;
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.attr_version = ctr;
            i.attr = None;
        }
    }

    /// `NOTIFY_INC_EPOCH`: never blocks.
    pub fn inc_epoch(&mut self) {
        self.notifications += 1;
        self.epoch += 1;
    }

    fn valid_dentry(&self, name: &str, now: Duration) -> Option<Dentry> {
        self.dents
            .get(name)
            .filter(|d| d.epoch == self.epoch && now < d.until)
            .copied()
    }

    fn valid_attr(&self, ino: u64, now: Duration) -> Option<Attr> {
        self.inodes[&ino]
            .attr
            .filter(|(_, until)| now < *until)
            .map(|(a, _)| a)
    }
}

fn sem(w: &mut World, m: usize, ino: u64, folio: bool) -> &mut RwSem {
    let i = w.mounts[m].k.inodes.entry(ino).or_default();
    if folio {
        &mut i.folio
    } else {
        &mut i.rwsem
    }
}

async fn take(w: &W, m: usize, t: Tid, ino: u64, folio: bool, excl: bool, why: &str) {
    let rx: Option<Rx<()>> = with(w, |w| {
        let rx = sem(w, m, ino, folio).take(t, excl);
        if rx.is_some() {
            let what = if folio { "folio lock" } else { "i_rwsem" };
            w.wait(
                t,
                format!("m{m} {why} waits for {what} of inode {ino}"),
                Wait::Sem { m, ino, folio },
            );
        }
        rx
    });
    if let Some(rx) = rx {
        rx.await;
        with(w, |w| w.unwait(t));
    }
}

fn give(w: &mut World, m: usize, t: Tid, ino: u64, folio: bool) {
    sem(w, m, ino, folio).release(t);
}

/// Sends a request to the daemon and waits for its reply; the daemon
/// serves it as its own task (a FUSE worker thread).
async fn request(w: &W, m: usize, t: Tid, req: Req) -> Rep {
    let (rx, rt) = with(w, |w| {
        let h = w.id();
        let (tx, rx) = super::wait::oneshot();
        w.log(format!("m{m} task {t} sends {req:?} (handler {h})"));
        w.wait(
            t,
            format!("m{m} task {t} waits for the reply to {req:?}"),
            Wait::Reply { handler: h },
        );
        let ww = w.w();
        let rt = w.rt.clone();
        let delay = Duration::from_micros(w.rng.below(100));
        w.rt.spawn(async move {
            rt.sleep(delay).await;
            let rep = daemon::serve(&ww, m, h, req).await;
            tx.send(rep);
        })
        .detach();
        (rx, w.rt.clone())
    });
    let rep = rx.await;
    // The requester runs again some time after the reply was written.
    let gap = with(w, |w| w.gap());
    rt.sleep(gap).await;
    with(w, |w| {
        w.unwait(t);
        w.log(format!("m{m} task {t} got {rep:?}"));
    });
    rep
}

/// A notification that blocks in the kernel, written from task `t`.
pub async fn notify_blocking(w: &W, m: usize, t: Tid, b: Blocking) {
    with(w, |w| {
        w.mounts[m].k.notifications += 1;
        w.log(format!("m{m} task {t} notifies {b:?}"));
    });
    match b {
        Blocking::Entry(name) => {
            take(w, m, t, ROOT, false, true, "INVAL_ENTRY").await;
            with(w, |w| {
                w.mounts[m].k.dents.remove(&name);
                give(w, m, t, ROOT, false);
            });
        }
        Blocking::Pages(ino) => {
            let cached = with(w, |w| {
                let k = &mut w.mounts[m].k;
                k.inval_inode_attr(ino);
                k.notifications -= 1;
                k.inodes.contains_key(&ino)
            });
            if cached {
                take(w, m, t, ino, true, true, "INVAL_INODE(pages)").await;
                with(w, |w| {
                    w.mounts[m].k.inodes.get_mut(&ino).expect("pinned").page = None;
                    give(w, m, t, ino, true);
                });
            }
        }
    }
}

/// Resolves `name` in the root: a valid dentry, or a LOOKUP under the
/// parent's i_rwsem (shared, unless the caller holds it). On success the
/// inode is pinned for the caller.
async fn walk(
    w: &W,
    m: usize,
    t: Tid,
    floor: &BTreeMap<Obj, u64>,
    name: &str,
    parent_held: bool,
) -> Option<u64> {
    let who = format!("m{m} task {t} lookup {name}");
    let hit = with(w, |w| {
        let now = w.rt.now();
        let d = w.mounts[m].k.valid_dentry(name, now)?;
        w.observe(
            &who,
            floor,
            Obj::Name(name.into()),
            d.ver,
            Seen::Ent(Some(d.ino)),
        );
        w.mounts[m]
            .k
            .inodes
            .get_mut(&d.ino)
            .expect("dentry's inode")
            .refs += 1;
        Some(d.ino)
    });
    if hit.is_some() {
        return hit;
    }
    if !parent_held {
        take(w, m, t, ROOT, false, false, "lookup").await;
    }
    let (epoch, av) = with(w, |w| (w.mounts[m].k.epoch, w.mounts[m].k.attr_ctr));
    let rep = request(w, m, t, Req::Lookup(name.into())).await;
    with(w, |w| {
        let now = w.rt.now();
        let r = match rep {
            Rep::Entry {
                ino,
                ent_ver,
                attr,
                timeout,
                attr_timeout,
                ..
            } => {
                let k = &mut w.mounts[m].k;
                k.link(name, ino, ent_ver, epoch, now + timeout);
                k.iget(ino, attr, now + attr_timeout, av);
                k.inodes.get_mut(&ino).expect("instantiated").refs += 1;
                w.observe(
                    &who,
                    floor,
                    Obj::Name(name.into()),
                    ent_ver,
                    Seen::Ent(Some(ino)),
                );
                Some(ino)
            }
            Rep::NoEnt { ent_ver } => {
                w.mounts[m].k.dents.remove(name);
                w.observe(
                    &who,
                    floor,
                    Obj::Name(name.into()),
                    ent_ver,
                    Seen::Ent(None),
                );
                None
            }
            other => {
                w.fail(format!("{who}: reply {other:?}"));
                None
            }
        };
        if !parent_held {
            give(w, m, t, ROOT, false);
        }
        r
    })
}

fn unpin(w: &mut World, m: usize, ino: u64) {
    w.mounts[m].k.inodes.get_mut(&ino).expect("pinned").refs -= 1;
}

/// stat/fstat: cached attributes while valid, else GETATTR.
async fn getattr(w: &W, m: usize, t: Tid, floor: &BTreeMap<Obj, u64>, ino: u64) {
    let who = format!("m{m} task {t} getattr {ino}");
    let cached = with(w, |w| {
        let now = w.rt.now();
        let a = w.mounts[m].k.valid_attr(ino, now)?;
        w.observe(&who, floor, Obj::File(ino), a.ver, Seen::Size(a.size));
        Some(())
    });
    if cached.is_some() {
        return;
    }
    let av = with(w, |w| w.mounts[m].k.attr_ctr);
    match request(w, m, t, Req::Getattr(ino)).await {
        Rep::Attr { attr, timeout } => with(w, |w| {
            let now = w.rt.now();
            w.mounts[m]
                .k
                .change_attributes(ino, attr, now + timeout, av);
            w.observe(&who, floor, Obj::File(ino), attr.ver, Seen::Size(attr.size));
        }),
        other => with(w, |w| w.fail(format!("{who}: reply {other:?}"))),
    }
}

async fn read(w: &W, m: usize, t: Tid, floor: &BTreeMap<Obj, u64>, ino: u64) {
    let who = format!("m{m} task {t} read {ino}");
    let page_cache = with(w, |w| w.var.page_cache);
    if page_cache {
        take(w, m, t, ino, true, true, "read").await;
        let hit = with(w, |w| {
            let p = w.mounts[m].k.inodes[&ino].page.clone();
            if let Some((ver, data)) = &p {
                w.observe(&who, floor, Obj::File(ino), *ver, Seen::Data(data.clone()));
                give(w, m, t, ino, true);
            }
            p.is_some()
        });
        if hit {
            return;
        }
    }
    let rep = request(w, m, t, Req::Read(ino)).await;
    with(w, |w| {
        match rep {
            Rep::Data { ver, data } => {
                if page_cache {
                    w.mounts[m].k.inodes.get_mut(&ino).expect("pinned").page =
                        Some((ver, data.clone()));
                }
                w.observe(&who, floor, Obj::File(ino), ver, Seen::Data(data));
            }
            other => w.fail(format!("{who}: reply {other:?}")),
        }
        if page_cache {
            give(w, m, t, ino, true);
        }
    });
}

/// write/append (direct I/O: the file's i_rwsem across the WRITE) and
/// truncate (SETATTR under it too).
async fn write(w: &W, m: usize, t: Tid, ino: u64, op: WOp) {
    let page_cache = with(w, |w| w.var.page_cache);
    take(w, m, t, ino, false, true, "write").await;
    if page_cache {
        take(w, m, t, ino, true, true, "write").await;
    }
    let rep = request(w, m, t, Req::Write(ino, op)).await;
    with(w, |w| {
        let k = &mut w.mounts[m].k;
        k.changed(ino);
        // Our own write: the kernel's copy of the page goes too.
        k.inodes.get_mut(&ino).expect("pinned").page = None;
        match rep {
            Rep::Done { muts } => w.complete(&muts),
            other => w.fail(format!("m{m} task {t} write: reply {other:?}")),
        }
        if page_cache {
            give(w, m, t, ino, true);
        }
        give(w, m, t, ino, false);
    });
}

/// The kernel's memory pressure: drop a dentry, evict unused inodes
/// (sending FORGET with their lookup count).
fn shrink(w: &mut World, m: usize) {
    let names: Vec<String> = w.mounts[m].k.dents.keys().cloned().collect();
    if !names.is_empty() {
        let n = names[w.rng.below(names.len() as u64) as usize].clone();
        w.mounts[m].k.dents.remove(&n);
    }
    let k = &w.mounts[m].k;
    let evict: Vec<(u64, u64)> = k
        .inodes
        .iter()
        .filter(|(&ino, i)| {
            ino != ROOT
                && i.refs == 0
                && !i.rwsem.busy()
                && !i.folio.busy()
                && !k.dents.values().any(|d| d.ino == ino)
        })
        .map(|(&ino, i)| (ino, i.nlookup))
        .collect();
    for (ino, n) in evict {
        w.mounts[m].k.inodes.remove(&ino);
        w.log(format!("m{m} evicts {ino}, FORGET {n}"));
        // The kernel hands queued FORGETs to the daemon before the
        // requests queued after them (fuse_dev_do_read), and forgetting
        // is a table update: it lands before any later LOOKUP is counted.
        daemon::forget(w, m, ino, n);
    }
}

/// One process of mount `m`: a seeded sequence of system calls.
pub async fn process(w: W, m: usize, p: usize) {
    let rt = with(&w, |w| w.rt.clone());
    let mut fds: Vec<u64> = Vec::new();
    let ops = with(&w, |w| w.cfg.ops);
    for _ in 0..ops {
        let (think, op, name, name2, val, t, floor) = with(&w, |w| {
            let think = Duration::from_micros(w.rng.below(3000));
            if w.rng.pct(w.cfg.shrink_pct) {
                shrink(w, m);
            }
            let op = w.rng.below(if w.var.readdirplus { 14 } else { 13 });
            let name = NAMES[w.rng.below(4) as usize];
            let mut name2 = NAMES[w.rng.below(4) as usize];
            if name2 == name {
                name2 = NAMES[(NAMES.iter().position(|n| *n == name).unwrap() + 1) % 4];
            }
            w.next_val += 1;
            let t = w.id();
            w.mounts[m].k.syscalls += 1;
            (
                think,
                op,
                name,
                name2,
                w.next_val,
                t,
                w.truth.completed.clone(),
            )
        });
        rt.sleep(think).await;
        with(&w, |w| {
            w.log(format!("m{m} p{p} task {t} syscall {op} {name} {name2}"))
        });
        let fd = (!fds.is_empty()).then(|| fds[(val as usize) % fds.len()]);
        match (op, fd) {
            (0, _) => {
                // stat(name)
                if let Some(ino) = walk(&w, m, t, &floor, name, false).await {
                    getattr(&w, m, t, &floor, ino).await;
                    with(&w, |w| unpin(w, m, ino));
                }
            }
            (1, _) | (2, None) => {
                // open(name): the inode stays pinned while open.
                if fds.len() >= 2 {
                    let ino = fds.remove(0);
                    with(&w, |w| unpin(w, m, ino));
                }
                if let Some(ino) = walk(&w, m, t, &floor, name, false).await {
                    fds.push(ino);
                }
            }
            (2, Some(ino)) => {
                fds.retain(|&f| f != ino);
                with(&w, |w| unpin(w, m, ino));
            }
            (3, Some(ino)) => getattr(&w, m, t, &floor, ino).await,
            (4, Some(ino)) | (5, Some(ino)) => read(&w, m, t, &floor, ino).await,
            (6, Some(ino)) => write(&w, m, t, ino, WOp::Put(val)).await,
            (7, Some(ino)) => write(&w, m, t, ino, WOp::Append(val)).await,
            (8, Some(ino)) => write(&w, m, t, ino, WOp::Truncate).await,
            (3..=8, None) | (9, _) => {
                // creat(name, O_EXCL)
                take(&w, m, t, ROOT, false, true, "create").await;
                let (epoch, av) = with(&w, |w| (w.mounts[m].k.epoch, w.mounts[m].k.attr_ctr));
                let rep = request(&w, m, t, Req::Create(name.into())).await;
                with(&w, |w| {
                    let now = w.rt.now();
                    let who = format!("m{m} task {t} create {name}");
                    match rep {
                        Rep::Entry {
                            ino,
                            ent_ver,
                            attr,
                            timeout,
                            attr_timeout,
                            muts,
                        } => {
                            let k = &mut w.mounts[m].k;
                            k.iget(ino, attr, now + attr_timeout, av);
                            k.link(name, ino, ent_ver, epoch, now + timeout);
                            w.complete(&muts);
                        }
                        Rep::Exists { ent_ver, ino } => w.observe(
                            &who,
                            &floor,
                            Obj::Name(name.into()),
                            ent_ver,
                            Seen::Ent(Some(ino)),
                        ),
                        other => w.fail(format!("{who}: reply {other:?}")),
                    }
                    give(w, m, t, ROOT, false);
                });
            }
            (10, _) => {
                // unlink(name)
                take(&w, m, t, ROOT, false, true, "unlink").await;
                if let Some(ino) = walk(&w, m, t, &floor, name, true).await {
                    let rep = request(&w, m, t, Req::Unlink(name.into())).await;
                    with(&w, |w| {
                        w.mounts[m].k.dents.remove(name);
                        w.mounts[m].k.changed(ino);
                        unpin(w, m, ino);
                        done(w, m, t, rep);
                    });
                }
                with(&w, |w| give(w, m, t, ROOT, false));
            }
            (11, _) => {
                // rename(name, name2)
                take(&w, m, t, ROOT, false, true, "rename").await;
                if let Some(ino) = walk(&w, m, t, &floor, name, true).await {
                    let other = walk(&w, m, t, &floor, name2, true).await;
                    let rep = request(&w, m, t, Req::Rename(name.into(), name2.into())).await;
                    with(&w, |w| {
                        w.mounts[m].k.dents.remove(name);
                        w.mounts[m].k.dents.remove(name2);
                        unpin(w, m, ino);
                        if let Some(o) = other {
                            unpin(w, m, o);
                        }
                        done(w, m, t, rep);
                    });
                }
                with(&w, |w| give(w, m, t, ROOT, false));
            }
            (13, _) => {
                // ls -l: READDIRPLUS under the directory's i_rwsem shared.
                // Each entry is linked when the reply is parsed
                // (fuse_direntplus_link): the epoch is read then, after
                // the reply, while attr_version was sampled at the send.
                take(&w, m, t, ROOT, false, false, "readdirplus").await;
                let av = with(&w, |w| w.mounts[m].k.attr_ctr);
                let rep = request(&w, m, t, Req::Readdirplus).await;
                with(&w, |w| {
                    let who = format!("m{m} task {t} readdirplus");
                    match rep {
                        Rep::ListPlus { ver, ents } => {
                            let now = w.rt.now();
                            let names = ents.iter().map(|e| e.name.clone()).collect();
                            for e in ents {
                                let k = &mut w.mounts[m].k;
                                let epoch = k.epoch;
                                // Found or new, every entry is a lookup.
                                k.iget(e.ino, e.attr, now + e.attr_timeout, av);
                                k.link(&e.name, e.ino, e.ent_ver, epoch, now + e.timeout);
                            }
                            w.observe(&who, &floor, Obj::Dir, ver, Seen::List(names));
                        }
                        other => w.fail(format!("{who}: reply {other:?}")),
                    }
                    give(w, m, t, ROOT, false);
                });
            }
            (12, _) => {
                // readdir(root): i_rwsem shared across READDIR.
                take(&w, m, t, ROOT, false, false, "readdir").await;
                let rep = request(&w, m, t, Req::Readdir).await;
                with(&w, |w| {
                    match rep {
                        Rep::List { ver, names } => {
                            let who = format!("m{m} task {t} readdir");
                            w.observe(&who, &floor, Obj::Dir, ver, Seen::List(names))
                        }
                        other => w.fail(format!("m{m} task {t} readdir: reply {other:?}")),
                    }
                    give(w, m, t, ROOT, false);
                });
            }
            _ => unreachable!(),
        }
        with(&w, |w| w.log(format!("m{m} p{p} task {t} returns")));
    }
    with(&w, |w| {
        for ino in fds {
            unpin(w, m, ino);
        }
    });
}

fn done(w: &mut World, m: usize, t: Tid, rep: Rep) {
    match rep {
        Rep::Done { muts } => w.complete(&muts),
        // Changed by another mount between our lookup and the request.
        Rep::NoEnt { .. } => {}
        other => w.fail(format!("m{m} task {t}: reply {other:?}")),
    }
}
