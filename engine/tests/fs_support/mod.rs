//! Test support for `engine::fs`: an in-memory `Items` (a BTreeMap) and a
//! simple `Transactions` (counter allocators, a seq that moves on sync), a
//! fresh volume with mkfs's root inode, a deterministic clock, and an
//! invariant checker that reads the items the way §1.5 defines them and
//! checks what `scoutfs check` checks across items plus the POSIX counts
//! (directory sizes and nlinks, extents vs. online blocks).
//!
//! Touches only the public engine API and the `fault` driver.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use drivers::FaultDevice;
use engine::format::hash::{dirent_name_hash, xattr_name_hash};
use engine::format::items::{
    decode_dirent, dirent_key, inode_key, link_backref_key, meta_seq_key, readdir_key,
    xattr_nr_parts, DataExtent, Inode, XattrHeader, ROOT_INO,
};
use engine::format::key::{fs_type, index_type, zone, Key};
use engine::format::Key as FKey;
use engine::fs::{Ctx, Fs, Time};
use engine::item::api::{HoldGuard, ItemFuture, Items, Transactions};
use engine::runtime::Sim;
use zerocopy::FromBytes;

pub const DATA_DEV_BYTES: u64 = 1 << 32;
pub const FIRST_DATA_BLKNO: u64 = 64;

#[derive(Default)]
pub struct MemItems {
    pub map: Mutex<BTreeMap<Key, Vec<u8>>>,
}

impl MemItems {
    pub fn snapshot(&self) -> BTreeMap<Key, Vec<u8>> {
        self.map.lock().unwrap().clone()
    }
}

fn ready<T: Send + 'static>(r: Result<T, i32>) -> ItemFuture<'static, T> {
    Box::pin(async move { r })
}

impl Items for MemItems {
    fn lookup(&self, key: FKey) -> ItemFuture<'_, Option<Vec<u8>>> {
        ready(Ok(self.map.lock().unwrap().get(&key).cloned()))
    }

    fn next(&self, first: FKey, last: FKey) -> ItemFuture<'_, Option<(FKey, Vec<u8>)>> {
        let r = if first > last {
            None
        } else {
            self.map
                .lock()
                .unwrap()
                .range(first..=last)
                .next()
                .map(|(k, v)| (*k, v.clone()))
        };
        ready(Ok(r))
    }

    fn prev(&self, last: FKey, first: FKey) -> ItemFuture<'_, Option<(FKey, Vec<u8>)>> {
        let r = if first > last {
            None
        } else {
            self.map
                .lock()
                .unwrap()
                .range(first..=last)
                .next_back()
                .map(|(k, v)| (*k, v.clone()))
        };
        ready(Ok(r))
    }

    fn create(&self, key: FKey, val: Vec<u8>) -> ItemFuture<'_, ()> {
        let mut m = self.map.lock().unwrap();
        let r = match m.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => Err(libc::EEXIST),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(val);
                Ok(())
            }
        };
        ready(r)
    }

    fn update(&self, key: FKey, val: Vec<u8>) -> ItemFuture<'_, ()> {
        let mut m = self.map.lock().unwrap();
        let r = match m.get_mut(&key) {
            Some(v) => {
                *v = val;
                Ok(())
            }
            None => Err(libc::ENOENT),
        };
        ready(r)
    }

    fn delete(&self, key: FKey) -> ItemFuture<'_, ()> {
        let r = match self.map.lock().unwrap().remove(&key) {
            Some(_) => Ok(()),
            None => Err(libc::ENOENT),
        };
        ready(r)
    }

    fn create_force(&self, key: FKey, val: Vec<u8>) -> ItemFuture<'_, ()> {
        let mut m = self.map.lock().unwrap();
        if key.zone == zone::XATTR_TOTL {
            // Delta items: sum with what is there (§2.5).
            let add = |a: &[u8], b: &[u8], at: usize| {
                let x = u64::from_le_bytes(a[at..at + 8].try_into().unwrap());
                let y = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                x.wrapping_add(y).to_le_bytes()
            };
            let new = match m.get(&key) {
                Some(old) => {
                    let mut v = add(old, &val, 0).to_vec();
                    v.extend_from_slice(&add(old, &val, 8));
                    v
                }
                None => val,
            };
            if new.iter().all(|&b| b == 0) {
                m.remove(&key);
            } else {
                m.insert(key, new);
            }
        } else {
            m.insert(key, val);
        }
        ready(Ok(()))
    }

    fn delete_force(&self, key: FKey) -> ItemFuture<'_, ()> {
        self.map.lock().unwrap().remove(&key);
        ready(Ok(()))
    }
}

/// Transactions: the seq moves on each sync; data blocks come from a
/// counter (`alloc_chunk` blocks at most per call, `alloc_gap` blocks
/// skipped between calls); inode numbers from 1024 upward.
pub struct MemTrans {
    pub seq: AtomicU64,
    pub next_data: AtomicU64,
    pub next_ino: AtomicU64,
    pub inode_count: AtomicI64,
    pub alloc_chunk: AtomicU64,
    pub alloc_gap: AtomicU64,
    pub holds: AtomicU64,
    pub syncs: AtomicU64,
    /// Blocks freed (blkno, count), in order.
    pub freed: Mutex<Vec<(u64, u64)>>,
    /// `.srch.` entries logged, in order.
    pub srch: Mutex<Vec<engine::format::srch::SrchEntry>>,
}

impl Default for MemTrans {
    fn default() -> Self {
        MemTrans {
            seq: AtomicU64::new(1),
            next_data: AtomicU64::new(FIRST_DATA_BLKNO),
            next_ino: AtomicU64::new(1024),
            inode_count: AtomicI64::new(1),
            alloc_chunk: AtomicU64::new(u64::MAX),
            alloc_gap: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            freed: Mutex::new(Vec::new()),
            srch: Mutex::new(Vec::new()),
        }
    }
}

impl MemTrans {
    pub fn freed_blocks(&self) -> u64 {
        self.freed.lock().unwrap().iter().map(|f| f.1).sum()
    }
}

impl Transactions for MemTrans {
    fn hold(&self, _allocating: bool) -> ItemFuture<'_, HoldGuard> {
        self.holds.fetch_add(1, Ordering::SeqCst);
        ready(Ok(HoldGuard(Box::new(()))))
    }

    fn sync(&self) -> ItemFuture<'_, ()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        ready(Ok(()))
    }

    fn trans_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    fn alloc_data(&self, max_blocks: u64) -> ItemFuture<'_, (u64, u64)> {
        let n = max_blocks
            .min(self.alloc_chunk.load(Ordering::SeqCst))
            .max(1);
        let gap = self.alloc_gap.load(Ordering::SeqCst);
        let blkno = self.next_data.fetch_add(n + gap, Ordering::SeqCst);
        let r = if (blkno + n) << 12 > DATA_DEV_BYTES {
            Err(libc::ENOSPC)
        } else {
            Ok((blkno, n))
        };
        ready(r)
    }

    fn free_data(&self, blkno: u64, count: u64) -> ItemFuture<'_, ()> {
        self.freed.lock().unwrap().push((blkno, count));
        ready(Ok(()))
    }

    fn alloc_inodes(&self, count: u64) -> ItemFuture<'_, (u64, u64)> {
        let first = self.next_ino.fetch_add(count, Ordering::SeqCst);
        ready(Ok((first, count)))
    }

    fn add_inode_count(&self, delta: i64) {
        self.inode_count.fetch_add(delta, Ordering::SeqCst);
    }

    fn srch_add(&self, entry: engine::format::srch::SrchEntry) {
        self.srch.lock().unwrap().push(entry);
    }
}

/// A fresh volume and its `Fs`.
pub struct Vol {
    pub items: Arc<MemItems>,
    pub trans: Arc<MemTrans>,
    pub dev: Arc<FaultDevice>,
    pub fs: Fs,
    pub fmt_vers: u64,
    pub clock: Arc<AtomicU64>,
}

/// The root inode and meta_seq item mkfs writes.
pub fn mkfs_items(items: &MemItems, fmt_vers: u64) {
    let mut i = Inode {
        next_readdir_pos: 2.into(),
        nlink: 2.into(),
        mode: 0o040755u32.into(),
        ..Inode::default()
    };
    i.atime.sec = 1.into();
    i.ctime = i.atime;
    i.mtime = i.atime;
    i.crtime = i.atime;
    let mut m = items.map.lock().unwrap();
    m.insert(meta_seq_key(0, ROOT_INO), Vec::new());
    m.insert(inode_key(ROOT_INO), i.encode(fmt_vers).to_vec());
}

impl Vol {
    pub fn new(fmt_vers: u64) -> Vol {
        let items = Arc::new(MemItems::default());
        mkfs_items(&items, fmt_vers);
        let trans = Arc::new(MemTrans::default());
        let dev = Arc::new(FaultDevice::new(DATA_DEV_BYTES));
        let clock = Arc::new(AtomicU64::new(1000));
        let c = clock.clone();
        let fs = Fs::new(
            items.clone(),
            trans.clone(),
            dev.clone(),
            fmt_vers,
            Box::new(move || Time {
                sec: c.fetch_add(1, Ordering::SeqCst),
                nsec: 7,
            }),
        );
        Vol {
            items,
            trans,
            dev,
            fs,
            fmt_vers,
            clock,
        }
    }

    pub fn inode(&self, ino: u64) -> Option<Inode> {
        let m = self.items.map.lock().unwrap();
        m.get(&inode_key(ino))
            .map(|v| Inode::decode(v, self.fmt_vers).expect("inode decodes"))
    }

    pub fn count(&self, zone_: u8, ty: u8) -> usize {
        self.items
            .map
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.zone == zone_ && (zone_ != zone::FS || k.ty == ty))
            .count()
    }

    /// Items in the FS zone belonging to `ino`.
    pub fn items_of(&self, ino: u64) -> Vec<(Key, Vec<u8>)> {
        self.items
            .map
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.zone == zone::FS && k.first == ino)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Checks every cross-item invariant; panics with all faults found.
    pub fn check(&self) {
        let faults = check_items(&self.items.snapshot(), self.fmt_vers);
        assert!(
            faults.is_empty(),
            "invariants broken:\n{}",
            faults.join("\n")
        );
    }
}

pub fn run<F: std::future::Future>(f: F) -> F::Output {
    Sim::new(1).block_on(f)
}

pub fn user() -> Ctx {
    Ctx {
        uid: 1000,
        gid: 100,
        umask: 0o022,
        cap_sys_admin: false,
    }
}

pub fn root() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        umask: 0,
        cap_sys_admin: true,
    }
}

/// The invariants of §1.5/§7 over a whole item map.
pub fn check_items(m: &BTreeMap<Key, Vec<u8>>, fmt_vers: u64) -> Vec<String> {
    let mut f = Vec::new();
    let mut inodes = BTreeMap::new();
    for (k, v) in m {
        if k.zone == zone::FS && k.ty == fs_type::INODE {
            match Inode::decode(v, fmt_vers) {
                Ok(i) => {
                    let want = if fmt_vers >= 2 { 168 } else { 160 };
                    if v.len() != want {
                        f.push(format!("inode {} stored with {} bytes", k.first, v.len()));
                    }
                    inodes.insert(k.first, i);
                }
                Err(e) => f.push(format!("inode {}: {e}", k.first)),
            }
        }
    }
    // Per inode: counts we expect to match.
    let mut backrefs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut name_bytes: BTreeMap<u64, u64> = BTreeMap::new();
    let mut mapped: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut last_ext_end: BTreeMap<u64, u64> = BTreeMap::new();
    let mut data_claims: Vec<(u64, u64)> = Vec::new();
    for (k, v) in m {
        match (k.zone, k.ty) {
            (zone::INODE_INDEX, t) => {
                let ok = inodes.get(&k.third).is_some_and(|i| {
                    if t == index_type::META_SEQ {
                        i.meta_seq.get() == k.second
                    } else {
                        i.data_seq.get() == k.second && i.mode.get() & 0o170000 == 0o100000
                    }
                });
                if !ok || !v.is_empty() {
                    f.push(format!("index item {k:?} matches no inode"));
                }
            }
            (zone::ORPHAN, _) => {
                if inodes.get(&k.second).is_none_or(|i| i.nlink.get() != 0) {
                    f.push(format!("orphan {k:?} without an unlinked inode"));
                }
            }
            (zone::FS, ty) if ty != fs_type::INODE => {
                if !inodes.contains_key(&k.first) {
                    f.push(format!("item {k:?} of missing inode"));
                }
                match ty {
                    fs_type::DIRENT => {
                        let Ok((h, name)) = decode_dirent(v) else {
                            f.push(format!("bad dirent {k:?}"));
                            continue;
                        };
                        let (dir, pos) = (k.first, k.third);
                        if dirent_name_hash(name) != k.second
                            || h.hash.get() != k.second
                            || h.pos.get() != pos
                        {
                            f.push(format!("dirent {k:?} hash/pos"));
                        }
                        if m.get(&readdir_key(dir, pos)) != Some(v) {
                            f.push(format!("dirent {k:?} without readdir"));
                        }
                        if m.get(&link_backref_key(h.ino.get(), dir, pos)) != Some(v) {
                            f.push(format!("dirent {k:?} without backref"));
                        }
                        match inodes.get(&h.ino.get()) {
                            None => f.push(format!("dirent {k:?} names a missing inode")),
                            Some(t) => {
                                if engine::fs::mode_dt(t.mode.get()) != h.ty {
                                    f.push(format!("dirent {k:?} type {}", h.ty));
                                }
                                if t.mode.get() & 0o170000 == 0o040000 {
                                    *subdirs.entry(dir).or_default() += 1;
                                }
                            }
                        }
                        *name_bytes.entry(dir).or_default() += name.len() as u64;
                        if inodes
                            .get(&dir)
                            .is_some_and(|d| pos >= d.next_readdir_pos.get())
                        {
                            f.push(format!("dirent {k:?} pos beyond next_readdir_pos"));
                        }
                    }
                    fs_type::READDIR => {
                        let ok = decode_dirent(v).is_ok_and(|(h, n)| {
                            m.contains_key(&dirent_key(k.first, dirent_name_hash(n), k.second))
                                && h.pos.get() == k.second
                        });
                        if !ok {
                            f.push(format!("readdir {k:?} without dirent"));
                        }
                    }
                    fs_type::LINK_BACKREF => {
                        let ok = decode_dirent(v).is_ok_and(|(h, n)| {
                            h.ino.get() == k.first
                                && m.contains_key(&dirent_key(
                                    k.second,
                                    dirent_name_hash(n),
                                    k.third,
                                ))
                        });
                        if !ok {
                            f.push(format!("backref {k:?} without dirent"));
                        }
                        *backrefs.entry(k.first).or_default() += 1;
                    }
                    fs_type::XATTR => {
                        if v.is_empty() || v.len() > 896 {
                            f.push(format!("xattr part {k:?} of {} bytes", v.len()));
                        }
                        if k.fourth == 0 {
                            let (h, rest) = XattrHeader::read_from_prefix(v).unwrap();
                            let name = &rest[..h.name_len as usize];
                            if xattr_name_hash(name) != k.second || h.pad != [0; 5] {
                                f.push(format!("xattr {k:?} name hash"));
                            }
                            let n = xattr_nr_parts(name.len(), h.val_len.get() as usize);
                            let total = 8 + name.len() + h.val_len.get() as usize;
                            for p in 0..n {
                                let pk = Key {
                                    fourth: p as u8,
                                    ..*k
                                };
                                let want = (total - p * 896).min(896);
                                if m.get(&pk).map(|v| v.len()) != Some(want) {
                                    f.push(format!("xattr {k:?} part {p} missing or wrong size"));
                                }
                            }
                            let extra = Key {
                                fourth: n as u8,
                                ..*k
                            };
                            if n < 256 && m.contains_key(&extra) {
                                f.push(format!("xattr {k:?} has a part beyond {n}"));
                            }
                        }
                    }
                    fs_type::SYMLINK => {
                        if v.is_empty() || v.len() > 896 {
                            f.push(format!("symlink chunk {k:?}"));
                        }
                    }
                    fs_type::DATA_EXTENT => {
                        let d = DataExtent::read_from_bytes(v).unwrap();
                        let (last, len) = (k.second, k.third);
                        if len == 0 || len - 1 > last || d.pad != [0; 7] {
                            f.push(format!("extent {k:?} bad"));
                            continue;
                        }
                        let start = last - (len - 1);
                        if last_ext_end.get(&k.first).is_some_and(|&e| start < e) {
                            f.push(format!("extent {k:?} overlaps"));
                        }
                        last_ext_end.insert(k.first, last + 1);
                        let c = mapped.entry(k.first).or_default();
                        if d.blkno.get() != 0 {
                            c.0 += len;
                            data_claims.push((d.blkno.get(), len));
                        } else if d.flags & 1 != 0 {
                            c.1 += len;
                        } else {
                            f.push(format!("extent {k:?} unmapped and not offline"));
                        }
                    }
                    _ => f.push(format!("unknown item {k:?}")),
                }
            }
            (zone::FS, _) => {}
            (zone::XATTR_TOTL, _) | (zone::XATTR_INDX, _) => {}
            _ => f.push(format!("unexpected item {k:?}")),
        }
    }
    data_claims.sort();
    for w in data_claims.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            f.push(format!("data blocks {:?} and {:?} overlap", w[0], w[1]));
        }
    }
    for (&ino, i) in &inodes {
        let mode = i.mode.get();
        let is_dir = mode & 0o170000 == 0o040000;
        let nlink = i.nlink.get();
        if !m.contains_key(&meta_seq_key(i.meta_seq.get(), ino)) {
            f.push(format!("inode {ino} has no meta_seq item"));
        }
        if mode & 0o170000 == 0o100000
            && !m.contains_key(&engine::format::items::data_seq_key(i.data_seq.get(), ino))
        {
            f.push(format!("inode {ino} has no data_seq item"));
        }
        let orphan = m.contains_key(&engine::format::items::orphan_key(ino));
        if (nlink == 0) != orphan {
            f.push(format!("inode {ino} nlink {nlink} orphan {orphan}"));
        }
        if is_dir {
            let want = name_bytes.get(&ino).copied().unwrap_or(0);
            if i.size.get() != want {
                f.push(format!("dir {ino} size {} != names {want}", i.size.get()));
            }
            let want_nlink = if nlink == 0 {
                0
            } else {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            };
            if nlink != want_nlink {
                f.push(format!("dir {ino} nlink {nlink} != {want_nlink}"));
            }
            let refs = backrefs.get(&ino).copied().unwrap_or(0);
            if ino != ROOT_INO && refs != u32::from(nlink != 0) {
                f.push(format!("dir {ino} has {refs} backrefs"));
            }
        } else {
            let refs = backrefs.get(&ino).copied().unwrap_or(0);
            if refs != nlink {
                f.push(format!("inode {ino} nlink {nlink} but {refs} backrefs"));
            }
        }
        let (on, off) = mapped.get(&ino).copied().unwrap_or((0, 0));
        if i.online_blocks.get() != on || i.offline_blocks.get() != off {
            f.push(format!(
                "inode {ino} online/offline {}/{} but extents say {on}/{off}",
                i.online_blocks.get(),
                i.offline_blocks.get()
            ));
        }
        if i.flags.get() & 1 == 0 && mode & 0o170000 == 0o100000 {
            let end_block = i.size.get().div_ceil(4096);
            if last_ext_end.get(&ino).is_some_and(|&e| e > end_block) {
                f.push(format!("inode {ino} has extents past its size"));
            }
        }
    }
    f
}
