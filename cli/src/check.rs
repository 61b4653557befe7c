//! `scoutfs check META [DATA]`: an offline consistency check of a volume.
//!
//! Walks every structure reachable from the meta super (trees, alloc lists,
//! blooms, srch files, quorum blocks) and reports each fault with the path
//! that reached it. Guarantees: never panics on device content; never
//! follows a ref it has already followed (no cycles); reports every block
//! referenced twice, every meta/data block neither referenced nor free, and
//! every block both referenced and free. Exit 0 clean, 1 faults, 2 could not
//! run.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use engine::format::alloc::{extent_order, free_extent_from_key, AllocListBlock};
use engine::format::block::{check_block, check_fixed_block, Expect};
use engine::format::bloom::BloomBlock;
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::btree_block::BlockView;
use engine::format::hash::dirent_name_hash;
use engine::format::items::{DataExtent, DirentHeader, Inode};
use engine::format::key::{fs_type, index_type, srch_type, zone, Key};
use engine::format::log_trees::{LogMergeComplete, LogTrees};
use engine::format::quorum::QuorumBlock;
use engine::format::srch::{
    decode_entry, SrchBlockHeader, SrchCompact, SrchEntry, SrchFile, SrchParent,
};
use engine::format::superblock::{
    AllocListHead, AllocRoot, BtreeRoot, SuperBlock, SUPER_FLAG_META_BDEV,
};
use engine::format::*;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::args::{self, OptSpec};
use crate::dev::{self, Device, FileDev};

const CMD: &str = "check";
/// Faults of one kind listed before the rest are only counted.
const MAX_RANGE_FAULTS: usize = 64;

fn exact<T: FromBytes + KnownLayout + Immutable + Copy>(val: &[u8]) -> Option<T> {
    T::read_from_bytes(val).ok()
}

/// Which device an extent lives on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    Meta,
    Data,
}

/// One claim on a run of blocks: referenced by, or free in, `who`.
struct Claim {
    start: u64,
    len: u64,
    who: u32,
}

/// A merged fs item: (seq, flags, value, path).
type FsItem = (u64, u8, Vec<u8>, String);

/// Called for each leaf item: (checker, path, key, seq, flags, value).
type LeafFn<'f, 'a> = dyn FnMut(&mut Checker<'a>, &str, &Key, u64, u8, &[u8]) + 'f;

/// The state of one check run.
pub struct Checker<'a> {
    meta: &'a dyn Device,
    data: Option<&'a dyn Device>,
    pub faults: Vec<String>,
    fsid: u64,
    fmt_vers: u64,
    total_meta: u64,
    total_data: u64,
    names: Vec<String>,
    meta_claims: Vec<Claim>,
    data_claims: Vec<Claim>,
    /// Referenced meta blocks and who referenced them first.
    refd: BTreeMap<u64, u32>,
    fs_items: BTreeMap<Key, FsItem>,
    progress: Option<indicatif::ProgressBar>,
}

impl<'a> Checker<'a> {
    pub fn new(meta: &'a dyn Device, data: Option<&'a dyn Device>) -> Self {
        Checker {
            meta,
            data,
            faults: Vec::new(),
            fsid: 0,
            fmt_vers: 0,
            total_meta: 0,
            total_data: 0,
            names: Vec::new(),
            meta_claims: Vec::new(),
            data_claims: Vec::new(),
            refd: BTreeMap::new(),
            fs_items: BTreeMap::new(),
            progress: None,
        }
    }

    fn fault(&mut self, msg: String) {
        self.faults.push(msg);
    }

    fn name(&mut self, who: &str) -> u32 {
        self.names.push(who.to_string());
        (self.names.len() - 1) as u32
    }

    fn claim(&mut self, space: Space, start: u64, len: u64, who: u32) {
        let c = Claim { start, len, who };
        match space {
            Space::Meta => self.meta_claims.push(c),
            Space::Data => self.data_claims.push(c),
        }
    }

    fn tick(&self, msg: &str) {
        if let Some(p) = &self.progress {
            p.set_message(msg.to_string());
            p.tick();
        }
    }

    /// Reads a large block through a ref, checking it; records the
    /// reference. None when the block is unusable (the fault is recorded).
    fn read_ref(&mut self, path: &str, r: &BlockRef, magic: u32) -> Option<Vec<u8>> {
        let blkno = r.blkno.get();
        let at = format!("{path} -> blkno {blkno}");
        if blkno < META_DEV_START_BLKNO || blkno >= self.total_meta {
            self.fault(format!(
                "{at}: outside metadata blocks {META_DEV_START_BLKNO}..{}",
                self.total_meta
            ));
            return None;
        }
        let who = self.name(&at);
        if let Some(prev) = self.refd.insert(blkno, who) {
            let p = self.names[prev as usize].clone();
            self.fault(format!("{at}: block referenced twice, also by {p}"));
            return None;
        }
        self.claim(Space::Meta, blkno, 1, who);
        let blk = match dev::read_lg(self.meta, blkno) {
            Ok(b) => b,
            Err(e) => {
                self.fault(format!("{at}: read failed: {e}"));
                return None;
            }
        };
        let want = Expect {
            magic,
            fsid: self.fsid,
            blkno,
            seq: r.seq.get(),
        };
        if let Err(e) = check_block(&blk, &want) {
            self.fault(format!("{at}: {e}"));
            return None;
        }
        Some(blk)
    }

    /// Walks a btree, calling `leaf` for every leaf item.
    fn btree(&mut self, path: &str, root: &BtreeRoot, leaf: &mut LeafFn<'_, 'a>) {
        self.tick(path);
        if root.height == 0 {
            if !root.ref_.is_null() {
                self.fault(format!(
                    "{path}: height 0 but ref blkno {}",
                    root.ref_.blkno.get()
                ));
            }
            return;
        }
        if root.height > BTREE_MAX_HEIGHT {
            self.fault(format!(
                "{path}: height {} exceeds {BTREE_MAX_HEIGHT}",
                root.height
            ));
            return;
        }
        if root.ref_.is_null() {
            self.fault(format!("{path}: height {} but null ref", root.height));
            return;
        }
        self.btree_block(path, &root.ref_, root.height - 1, None, None, true, leaf);
    }

    #[allow(clippy::too_many_arguments)]
    fn btree_block(
        &mut self,
        path: &str,
        r: &BlockRef,
        level: u8,
        lo: Option<Key>,
        hi: Option<Key>,
        is_root: bool,
        leaf: &mut LeafFn<'_, 'a>,
    ) {
        let Some(blk) = self.read_ref(path, r, MAGIC_BTREE) else {
            return;
        };
        let at = format!("{path} -> blkno {} (level {level})", r.blkno.get());
        let view = match BlockView::new(&blk) {
            Ok(v) => v,
            Err(e) => return self.fault(format!("{at}: {e}")),
        };
        if view.level() != level {
            return self.fault(format!("{at}: block has level {}", view.level()));
        }
        if view.is_empty() && !is_root {
            self.fault(format!("{at}: empty non-root block"));
        }
        if view.is_leaf() {
            if let Err(e) = view.check_hash_table() {
                self.fault(format!("{at}: {e}"));
            }
        }
        let mut prev = lo;
        for i in 0..view.len() {
            let key = view.key(i);
            if prev.is_some_and(|p| key <= p) || hi.is_some_and(|h| key > h) {
                self.fault(format!(
                    "{at} item {i}: key {key} outside its parent's range"
                ));
            }
            let raw = view.raw_item(view.offsets()[i]);
            if view.is_leaf() {
                let ipath = format!("{at} item {i}");
                leaf(self, &ipath, &key, raw.seq.get(), raw.flags, view.value(i));
            } else if let Some(child) = exact::<BlockRef>(view.value(i)) {
                let cpath = format!("{at} item {i}");
                self.btree_block(&cpath, &child, level - 1, prev, Some(key), false, leaf);
            }
            prev = Some(key);
        }
    }

    /// Walks an alloc list chain: list blocks are referenced, their entries free.
    fn alloc_list(&mut self, path: &str, head: &AllocListHead) {
        let mut r = head.ref_;
        let mut total = 0u64;
        let mut first = true;
        while !r.is_null() {
            let Some(blk) = self.read_ref(path, &r, MAGIC_ALLOC_LIST) else {
                return;
            };
            let at = format!("{path} -> blkno {}", r.blkno.get());
            let Some((lb, _)) = AllocListBlock::ref_from_prefix(&blk).ok() else {
                return;
            };
            let live = match lb.live() {
                Ok(l) => l.iter().map(|b| b.get()).collect::<Vec<u64>>(),
                Err(e) => return self.fault(format!("{at}: {e}")),
            };
            if first && live.len() as u64 != head.first_nr.get() as u64 {
                self.fault(format!(
                    "{at}: first_nr {} but block holds {}",
                    head.first_nr.get(),
                    live.len()
                ));
            }
            first = false;
            total += live.len() as u64;
            let who = self.name(&format!("{at} (free list)"));
            for b in live {
                self.claim(Space::Meta, b, 1, who);
            }
            r = lb.next;
        }
        if total != head.total_nr.get() {
            self.fault(format!(
                "{path}: total_nr {} but lists hold {total}",
                head.total_nr.get()
            ));
        }
    }

    /// Walks a free extent tree; both indexes must agree and sum to total_len.
    fn alloc_root(&mut self, path: &str, root: &AllocRoot, space: Space) {
        let mut by_blkno: Vec<(u64, u64)> = Vec::new();
        let mut by_order: Vec<(u64, u64)> = Vec::new();
        self.btree(path, &root.root, &mut |c, ip, k, _, _, v| {
            if !v.is_empty() {
                c.fault(format!(
                    "{ip}: free extent item with a {} byte value",
                    v.len()
                ));
            }
            match free_extent_from_key(k) {
                Some((s, l))
                    if k.zone == zone::FREE_EXTENT_BLKNO
                        && k.ty == 0
                        && k.third == 0
                        && k.fourth == 0 =>
                {
                    by_blkno.push((s, l))
                }
                Some((s, l)) if k.zone == zone::FREE_EXTENT_ORDER && k.ty == 0 && k.fourth == 0 => {
                    if k.first != u64::MAX - extent_order(l) {
                        c.fault(format!("{ip}: order key {k} doesn't match len {l}"));
                    }
                    by_order.push((s, l));
                }
                _ => c.fault(format!("{ip}: key {k} is not a free extent")),
            }
        });
        by_order.sort_unstable();
        if by_blkno != by_order {
            self.fault(format!(
                "{path}: blkno and order indexes disagree ({} vs {} extents)",
                by_blkno.len(),
                by_order.len()
            ));
        }
        let sum: u64 = by_blkno.iter().fold(0u64, |a, e| a.wrapping_add(e.1));
        if sum != root.total_len.get() {
            self.fault(format!(
                "{path}: total_len {} but extents hold {sum}",
                root.total_len.get()
            ));
        }
        let who = self.name(&format!("{path} (free extents)"));
        for (s, l) in by_blkno {
            self.claim(space, s, l, who);
        }
    }

    fn srch_file(&mut self, path: &str, f: &SrchFile) {
        if f.ref_.is_null() {
            return;
        }
        if f.height == 0 || f.height > 16 {
            return self.fault(format!("{path}: srch file height {}", f.height));
        }
        self.srch_block(path, &f.ref_, f.height - 1);
    }

    fn srch_block(&mut self, path: &str, r: &BlockRef, level: u8) {
        let magic = if level > 0 {
            MAGIC_SRCH_PARENT
        } else {
            MAGIC_SRCH_BLOCK
        };
        let Some(blk) = self.read_ref(path, r, magic) else {
            return;
        };
        let at = format!("{path} -> blkno {} (srch level {level})", r.blkno.get());
        if level > 0 {
            let Some((p, _)) = SrchParent::ref_from_prefix(&blk).ok() else {
                return;
            };
            let refs: Vec<BlockRef> = p.refs.iter().copied().filter(|r| !r.is_null()).collect();
            for child in refs {
                self.srch_block(&at, &child, level - 1);
            }
            return;
        }
        let Some((sb, _)) = SrchBlockHeader::ref_from_prefix(&blk).ok() else {
            return;
        };
        let data = &blk[std::mem::size_of::<SrchBlockHeader>()..];
        let mut prev = SrchEntry::new(0, 0, 0);
        let mut pos = 0usize;
        for i in 0..sb.entry_nr.get() {
            match decode_entry(data.get(pos..).unwrap_or(&[]), &prev) {
                Ok((e, n)) => {
                    pos += n;
                    prev = e;
                }
                Err(e) => return self.fault(format!("{at}: entry {i}: {e}")),
            }
        }
        if pos != sb.entry_bytes.get() as usize {
            self.fault(format!(
                "{at}: entry_bytes {} but entries use {pos}",
                sb.entry_bytes.get()
            ));
        }
    }

    fn fs_tree(&mut self, path: &str, root: &BtreeRoot) {
        self.btree(path, root, &mut |c, ip, k, seq, flags, v| {
            if flags & ITEM_FLAG_DELETION == 0 {
                c.fs_value(ip, k, v);
            }
            let replace = c.fs_items.get(k).is_none_or(|e| seq >= e.0);
            if replace {
                c.fs_items
                    .insert(*k, (seq, flags, v.to_vec(), ip.to_string()));
            }
        });
    }

    /// Per-item value checks.
    fn fs_value(&mut self, ip: &str, k: &Key, v: &[u8]) {
        let bad = |what: &str| format!("{ip}: {what} item {k} with a {} byte value", v.len());
        let ok = match (k.zone, k.ty) {
            (zone::INODE_INDEX, index_type::META_SEQ | index_type::DATA_SEQ) => v.is_empty(),
            (zone::ORPHAN, _) => v.is_empty(),
            (zone::QUOTA, _) => v.len() == 48,
            (zone::XATTR_TOTL, _) => v.len() == 16,
            (zone::XATTR_INDX, _) => v.is_empty(),
            (zone::FS, fs_type::INODE) => Inode::decode(v, self.fmt_vers).is_ok(),
            (zone::FS, fs_type::XATTR) => !v.is_empty() && v.len() <= MAX_VAL_SIZE,
            (zone::FS, fs_type::DIRENT | fs_type::READDIR | fs_type::LINK_BACKREF) => {
                (33..=32 + 255).contains(&v.len())
            }
            (zone::FS, fs_type::SYMLINK) => !v.is_empty() && v.len() <= MAX_VAL_SIZE,
            (zone::FS, fs_type::DATA_EXTENT) => v.len() == 16,
            _ => {
                self.fault(format!("{ip}: unknown item {k}"));
                return;
            }
        };
        if !ok {
            self.fault(bad("bad"));
        }
    }

    /// Cross-item invariants over the merged fs items.
    fn fs_cross(&mut self) {
        self.tick("fs items");
        let items = std::mem::take(&mut self.fs_items);
        let live = |k: &Key| items.get(k).filter(|e| e.1 & ITEM_FLAG_DELETION == 0);
        let mut faults = Vec::new();
        let who = self.name("file extents");
        let mut extents = Vec::new();
        for (k, (_, flags, v, ip)) in &items {
            if flags & ITEM_FLAG_DELETION != 0 {
                continue;
            }
            match (k.zone, k.ty) {
                (zone::FS, fs_type::INODE) => {
                    let Ok(ino) = Inode::decode(v, self.fmt_vers) else {
                        continue;
                    };
                    let n = k.first;
                    if live(&items::meta_seq_key(ino.meta_seq.get(), n)).is_none() {
                        faults.push(format!("{ip}: inode {n} has no meta_seq index item"));
                    }
                    let is_reg = ino.mode.get() & 0o170000 == 0o100000;
                    if is_reg && live(&items::data_seq_key(ino.data_seq.get(), n)).is_none() {
                        faults.push(format!("{ip}: inode {n} has no data_seq index item"));
                    }
                    let orphan = live(&items::orphan_key(n)).is_some();
                    if (ino.nlink.get() == 0) != orphan {
                        faults.push(format!(
                            "{ip}: inode {n} nlink {} but orphan item {}",
                            ino.nlink.get(),
                            if orphan { "present" } else { "missing" }
                        ));
                    }
                }
                (zone::INODE_INDEX, t) => {
                    let ok = live(&items::inode_key(k.third))
                        .and_then(|e| Inode::decode(&e.2, self.fmt_vers).ok())
                        .is_some_and(|i| {
                            if t == index_type::META_SEQ {
                                i.meta_seq.get() == k.second
                            } else {
                                i.data_seq.get() == k.second
                            }
                        });
                    if !ok {
                        faults.push(format!("{ip}: index item {k} matches no inode"));
                    }
                }
                (zone::ORPHAN, _) => {
                    let ok = live(&items::inode_key(k.third))
                        .and_then(|e| Inode::decode(&e.2, self.fmt_vers).ok())
                        .is_some_and(|i| i.nlink.get() == 0);
                    if !ok {
                        faults.push(format!("{ip}: orphan item {k} without an unlinked inode"));
                    }
                }
                (zone::FS, fs_type::DIRENT) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    let name = &v[32..];
                    let (dir, pos) = (k.first, k.third);
                    if d.hash.get() != k.second
                        || d.pos.get() != pos
                        || dirent_name_hash(name) != k.second
                    {
                        faults.push(format!("{ip}: dirent {k} hash/pos disagree with its value"));
                    }
                    if live(&items::readdir_key(dir, pos)).is_none_or(|e| e.2 != *v) {
                        faults.push(format!("{ip}: dirent {k} has no matching readdir item"));
                    }
                    if live(&items::link_backref_key(d.ino.get(), dir, pos))
                        .is_none_or(|e| e.2 != *v)
                    {
                        faults.push(format!("{ip}: dirent {k} has no matching link backref"));
                    }
                    if live(&items::inode_key(d.ino.get())).is_none() {
                        faults.push(format!(
                            "{ip}: dirent {k} names missing inode {}",
                            d.ino.get()
                        ));
                    }
                }
                (zone::FS, fs_type::READDIR) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    if live(&items::dirent_key(k.first, d.hash.get(), k.second)).is_none() {
                        faults.push(format!("{ip}: readdir {k} has no dirent"));
                    }
                }
                (zone::FS, fs_type::LINK_BACKREF) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    if live(&items::dirent_key(k.second, d.hash.get(), k.third)).is_none() {
                        faults.push(format!("{ip}: link backref {k} has no dirent"));
                    }
                }
                (zone::FS, fs_type::DATA_EXTENT) => {
                    let Some(d) = exact::<DataExtent>(v) else {
                        continue;
                    };
                    let (len, blkno) = (k.third, d.blkno.get());
                    if len == 0 || len - 1 > k.second {
                        faults.push(format!("{ip}: extent {k} has a bad length"));
                    } else if blkno != 0 {
                        extents.push((blkno, len));
                    }
                }
                _ => {}
            }
        }
        for f in faults {
            self.fault(f);
        }
        for (b, l) in extents {
            self.claim(Space::Data, b, l, who);
        }
    }

    /// Sorts claims and reports gaps (leaks) and overlaps.
    fn coverage(&mut self, space: Space, lo: u64, hi: u64) {
        let (mut claims, what) = match space {
            Space::Meta => (std::mem::take(&mut self.meta_claims), "meta"),
            Space::Data => (std::mem::take(&mut self.data_claims), "data"),
        };
        claims.sort_by_key(|c| (c.start, c.len));
        let mut cur = lo;
        let mut last_who: Option<u32> = None;
        let (mut leaks, mut dups) = (0usize, 0usize);
        let mut out = Vec::new();
        for c in &claims {
            let end = c.start.saturating_add(c.len);
            if c.start < lo || end > hi {
                out.push(format!(
                    "{}: {what} blocks {}..{} outside {lo}..{hi}",
                    self.names[c.who as usize], c.start, end
                ));
                continue;
            }
            if c.start > cur {
                leaks += 1;
                if leaks <= MAX_RANGE_FAULTS {
                    out.push(format!(
                        "{what} blocks {cur}..{} are neither referenced nor free (leaked)",
                        c.start
                    ));
                }
            } else if c.start < cur {
                dups += 1;
                if dups <= MAX_RANGE_FAULTS {
                    let prev = last_who
                        .map(|w| self.names[w as usize].clone())
                        .unwrap_or_default();
                    out.push(format!(
                        "{what} blocks {}..{} claimed by {} and also by {prev}",
                        c.start,
                        cur.min(end),
                        self.names[c.who as usize]
                    ));
                }
            }
            if end > cur {
                cur = end;
                last_who = Some(c.who);
            }
        }
        if cur < hi {
            leaks += 1;
            out.push(format!(
                "{what} blocks {cur}..{hi} are neither referenced nor free (leaked)"
            ));
        }
        if leaks > MAX_RANGE_FAULTS {
            out.push(format!(
                "{} more leaked {what} ranges",
                leaks - MAX_RANGE_FAULTS
            ));
        }
        if dups > MAX_RANGE_FAULTS {
            out.push(format!(
                "{} more doubly claimed {what} ranges",
                dups - MAX_RANGE_FAULTS
            ));
        }
        for f in out {
            self.fault(f);
        }
    }

    fn read_super(&mut self, dev: &dyn Device, which: &str) -> Result<(SuperBlock, bool), String> {
        let blk = dev::read_sm(dev, SUPER_BLKNO)
            .map_err(|e| format!("cannot read {which} super: {e}"))?;
        if blk.iter().all(|&b| b == 0) {
            return Err(format!("{which} device holds no scoutfs super"));
        }
        let sb = SuperBlock::read_from_prefix(&blk)
            .map_err(|_| "short super".to_string())?
            .0;
        let mut ok = true;
        if let Err(e) = check_fixed_block(&blk, MAGIC_SUPER, SUPER_BLKNO) {
            if matches!(e, FormatError::Magic { .. }) && block::check_crc(&blk).is_ok() {
                return Err(format!("{which} device holds no scoutfs super: {e}"));
            }
            self.fault(format!("{which} super (blkno {SUPER_BLKNO}): {e}"));
            ok = false;
        }
        Ok((sb, ok))
    }

    /// Runs the whole check. Err means the check could not run.
    pub fn run(&mut self) -> Result<(), String> {
        let (sb, _) = self.read_super(self.meta, "meta")?;
        self.fsid = sb.hdr.fsid.get();
        self.fmt_vers = sb.fmt_vers.get();
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&self.fmt_vers) {
            self.fault(format!(
                "meta super: format version {} outside {FORMAT_VERSION_MIN}..{FORMAT_VERSION_MAX}",
                self.fmt_vers
            ));
        }
        if sb.flags.get() & SUPER_FLAG_META_BDEV == 0 {
            self.fault("meta super: META flag not set".into());
        }
        self.total_meta = sb.total_meta_blocks.get();
        self.total_data = sb.total_data_blocks.get();
        let meta_size = self
            .meta
            .size()
            .map_err(|e| format!("cannot size meta device: {e}"))?;
        if self.total_meta > meta_size / LG_BLOCK_SIZE as u64 {
            self.fault(format!(
                "meta super: total_meta_blocks {} exceeds the {meta_size} byte device",
                self.total_meta
            ));
            self.total_meta = meta_size / LG_BLOCK_SIZE as u64;
        }
        if let Some(data) = self.data {
            let (dsb, _) = self.read_super(data, "data")?;
            if dsb.flags.get() & SUPER_FLAG_META_BDEV != 0 {
                self.fault("data super: META flag set".into());
            }
            if dsb.uuid != sb.uuid {
                self.fault("data super: uuid differs from the meta super".into());
            }
            if dsb.fmt_vers.get() != sb.fmt_vers.get() {
                self.fault(format!(
                    "data super: format version {} but meta has {}",
                    dsb.fmt_vers.get(),
                    sb.fmt_vers.get()
                ));
            }
            if dsb.hdr.fsid.get() != self.fsid {
                self.fault(format!(
                    "data super: fsid {:x} but meta has {:x}",
                    dsb.hdr.fsid.get(),
                    self.fsid
                ));
            }
            let dsize = data
                .size()
                .map_err(|e| format!("cannot size data device: {e}"))?;
            if self.total_data > dsize / SM_BLOCK_SIZE as u64 {
                self.fault(format!(
                    "meta super: total_data_blocks {} exceeds the {dsize} byte data device",
                    self.total_data
                ));
            }
        }
        if sb.qconf.active_slots().count() == 0 {
            self.fault("meta super: no quorum slots configured".into());
        }
        for (i, s) in sb.qconf.slots.iter().enumerate() {
            let f = s.addr.family.get();
            if f != 0 && f != superblock::INET_FAMILY_V4 {
                self.fault(format!(
                    "meta super: quorum slot {i} has address family {f}"
                ));
            }
        }
        for i in 0..QUORUM_MAX_SLOTS as u64 {
            let blkno = QUORUM_BLKNO + i;
            let at = format!("quorum blkno {blkno} (slot {i})");
            match dev::read_sm(self.meta, blkno) {
                Err(e) => self.fault(format!("{at}: read failed: {e}")),
                Ok(blk) => match check_fixed_block(&blk, MAGIC_QUORUM, blkno) {
                    Err(e) => self.fault(format!("{at}: {e}")),
                    Ok(h) if h.fsid.get() != self.fsid => {
                        self.fault(format!("{at}: fsid {:x}", h.fsid.get()))
                    }
                    Ok(_) => {
                        if QuorumBlock::read_from_prefix(&blk).is_err() {
                            self.fault(format!("{at}: short"));
                        }
                    }
                },
            }
        }

        for i in 0..2 {
            self.alloc_list(
                &format!("super.server_meta_avail[{i}]"),
                &sb.server_meta_avail[i],
            );
            self.alloc_list(
                &format!("super.server_meta_freed[{i}]"),
                &sb.server_meta_freed[i],
            );
            self.alloc_root(
                &format!("super.meta_alloc[{i}]"),
                &sb.meta_alloc[i],
                Space::Meta,
            );
        }
        self.alloc_root("super.data_alloc", &sb.data_alloc, Space::Data);
        self.fs_tree("super.fs_root", &sb.fs_root);

        let mut lts: Vec<(String, Key, LogTrees)> = Vec::new();
        self.btree(
            "super.logs_root",
            &sb.logs_root,
            &mut |c, ip, k, _, _, v| match exact::<LogTrees>(v) {
                Some(lt) if k.zone == zone::LOG_TREES => lts.push((ip.to_string(), *k, lt)),
                _ => c.fault(format!(
                    "{ip}: log_trees item {k} with a {} byte value",
                    v.len()
                )),
            },
        );
        for (ip, k, lt) in lts {
            if lt.rid.get() != k.first || lt.nr.get() != k.second {
                self.fault(format!(
                    "{ip}: value rid {:x} nr {} but key {k}",
                    lt.rid.get(),
                    lt.nr.get()
                ));
            }
            self.alloc_list(&format!("{ip}.meta_avail"), &lt.meta_avail);
            self.alloc_list(&format!("{ip}.meta_freed"), &lt.meta_freed);
            self.alloc_root(&format!("{ip}.data_avail"), &lt.data_avail, Space::Data);
            self.alloc_root(&format!("{ip}.data_freed"), &lt.data_freed, Space::Data);
            if !lt.bloom_ref.is_null() {
                let p = format!("{ip}.bloom_ref");
                if let Some(blk) = self.read_ref(&p, &lt.bloom_ref, MAGIC_BLOOM) {
                    if let Ok((b, _)) = BloomBlock::ref_from_prefix(&blk) {
                        let set: u64 = b.bits.iter().map(|x| x.count_ones() as u64).sum();
                        if set != b.total_set.get() {
                            self.fault(format!(
                                "{p} -> blkno {}: total_set {} but {set} bits set",
                                lt.bloom_ref.blkno.get(),
                                b.total_set.get()
                            ));
                        }
                    }
                }
            }
            self.srch_file(&format!("{ip}.srch_file"), &lt.srch_file);
            self.fs_tree(&format!("{ip}.item_root"), &lt.item_root);
        }

        let mut files: Vec<(String, SrchFile)> = Vec::new();
        let mut compacts: Vec<(String, SrchCompact)> = Vec::new();
        self.btree(
            "super.srch_root",
            &sb.srch_root,
            &mut |c, ip, k, _, _, v| {
                if k.zone != zone::SRCH {
                    return c.fault(format!("{ip}: key {k} in srch_root"));
                }
                match k.ty {
                    srch_type::LOG | srch_type::BLOCKS => match exact::<SrchFile>(v) {
                        Some(f) => files.push((ip.to_string(), f)),
                        None => c.fault(format!(
                            "{ip}: srch file item with a {} byte value",
                            v.len()
                        )),
                    },
                    srch_type::PENDING | srch_type::BUSY => match exact::<SrchCompact>(v) {
                        Some(sc) => compacts.push((ip.to_string(), sc)),
                        None => c.fault(format!(
                            "{ip}: srch compact item with a {} byte value",
                            v.len()
                        )),
                    },
                    t => c.fault(format!("{ip}: unknown srch type {t}")),
                }
            },
        );
        for (ip, f) in files {
            self.srch_file(&ip, &f);
        }
        for (ip, sc) in compacts {
            self.alloc_list(&format!("{ip}.meta_avail"), &sc.meta_avail);
            self.alloc_list(&format!("{ip}.meta_freed"), &sc.meta_freed);
            if sc.nr as usize > sc.inputs.len() {
                self.fault(format!("{ip}: compact nr {}", sc.nr));
            }
        }

        self.btree(
            "super.mounted_clients",
            &sb.mounted_clients,
            &mut |c, ip, k, _, _, v| {
                if k.zone != zone::MOUNTED_CLIENT || v.len() != 40 {
                    c.fault(format!(
                        "{ip}: mounted client item {k} with a {} byte value",
                        v.len()
                    ));
                }
            },
        );
        let mut completes = Vec::new();
        self.btree(
            "super.log_merge",
            &sb.log_merge,
            &mut |c, ip, k, _, _, v| {
                if k.zone == zone::LOG_MERGE_COMPLETE {
                    match exact::<LogMergeComplete>(v) {
                        Some(comp) => completes.push((ip.to_string(), comp)),
                        None => c.fault(format!(
                            "{ip}: log merge complete with a {} byte value",
                            v.len()
                        )),
                    }
                }
            },
        );
        for (ip, comp) in completes {
            self.alloc_list(&format!("{ip}.meta_avail"), &comp.meta_avail);
            self.alloc_list(&format!("{ip}.meta_freed"), &comp.meta_freed);
        }

        self.fs_cross();
        self.tick("coverage");
        self.coverage(Space::Meta, META_DEV_START_BLKNO, self.total_meta);
        self.coverage(Space::Data, DATA_DEV_START_BLKNO, self.total_data);
        Ok(())
    }
}

/// Checks a volume: the faults found, or why the check could not run.
pub fn check_volume(meta: &dyn Device, data: Option<&dyn Device>) -> Result<Vec<String>, String> {
    let mut c = Checker::new(meta, data);
    c.run()?;
    Ok(c.faults)
}

const SPECS: &[OptSpec] = &[];

/// Entry point: `scoutfs check META [DATA]`.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse(
        CMD,
        "META-DEVICE [DATA-DEVICE]",
        "Check a filesystem offline",
        SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if p.operands.is_empty() {
        return args::usage_error(CMD, "no metadata device argument given");
    }
    if p.operands.len() > 2 {
        return args::usage_error(CMD, "more than two arguments given");
    }
    let open = |path: &str| {
        FileDev::open(std::path::Path::new(path), false).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            eprintln!(
                "failed to open '{path}': {} ({errno})",
                crate::strerror(errno)
            );
        })
    };
    let Ok(meta) = open(&p.operands[0]) else {
        return 2;
    };
    let data = match p.operands.get(1) {
        Some(d) => match open(d) {
            Ok(d) => Some(d),
            Err(()) => return 2,
        },
        None => None,
    };
    let mut c = Checker::new(&meta, data.as_ref().map(|d| d as &dyn Device));
    if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        c.progress = Some(pb);
    }
    let r = c.run();
    if let Some(pb) = c.progress.take() {
        pb.finish_and_clear();
    }
    match r {
        Err(m) => {
            eprintln!("check: {m}");
            2
        }
        Ok(()) if c.faults.is_empty() => {
            println!("no faults found");
            0
        }
        Ok(()) => {
            for f in &c.faults {
                println!("{f}");
            }
            println!("{} faults found", c.faults.len());
            1
        }
    }
}
