//! Walking refs: btrees, alloc lists, free-extent trees and srch files.
//!
//! Every block reached through a ref is recorded once in `refd` (a second
//! ref to it is an overlap fault and is not followed, which also cuts
//! cycles) and claimed for coverage; list entries and free extents are
//! claimed as free.

use zerocopy::FromBytes;

use crate::format::alloc::{extent_order, free_extent_from_key, AllocListBlock};
use crate::format::block::{check_block, Expect};
use crate::format::btree_block::BlockView;
use crate::format::key::{zone, Key};
use crate::format::srch::{decode_entry, SrchBlockHeader, SrchEntry, SrchFile, SrchParent};
use crate::format::superblock::{AllocListHead, AllocRoot, BtreeRoot};
use crate::format::{
    BlockRef, BTREE_MAX_HEIGHT, MAGIC_ALLOC_LIST, MAGIC_BTREE, MAGIC_SRCH_BLOCK, MAGIC_SRCH_PARENT,
    META_DEV_START_BLKNO,
};

use super::{exact, Checker, FaultKind, Space};

/// Tallest srch file the walk follows.
const SRCH_MAX_HEIGHT: u8 = 16;

/// Called for each leaf item: (checker, path, key, seq, flags, value).
pub(super) type LeafFn<'f, 'a> = dyn FnMut(&mut Checker<'a>, &str, &Key, u64, u8, &[u8]) + 'f;

impl<'a> Checker<'a> {
    /// Reads a large block through a ref, checking it; records the
    /// reference. None when the block is unusable (the fault is recorded).
    pub(super) fn read_ref(&mut self, path: &str, r: &BlockRef, magic: u32) -> Option<Vec<u8>> {
        let blkno = r.blkno.get();
        let at = format!("{path} -> blkno {blkno}");
        if blkno < META_DEV_START_BLKNO || blkno >= self.total_meta {
            let msg = format!(
                "outside metadata blocks {META_DEV_START_BLKNO}..{}",
                self.total_meta
            );
            self.fault(FaultKind::Block, at, msg);
            return None;
        }
        let who = self.name(&at);
        if let Some(prev) = self.refd.insert(blkno, who) {
            let p = self.names[prev as usize].clone();
            self.fault(
                FaultKind::Overlap,
                at,
                format!("block referenced twice, also by {p}"),
            );
            return None;
        }
        self.claim(Space::Meta, blkno, 1, who);
        let blk = match self.read_lg(blkno) {
            Ok(b) => b,
            Err(e) => {
                self.fault(FaultKind::Block, at, format!("read failed: {e}"));
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
            self.fault(FaultKind::Block, at, e.to_string());
            return None;
        }
        Some(blk)
    }

    /// Walks a btree, calling `leaf` for every leaf item.
    pub(super) fn btree(&mut self, path: &str, root: &BtreeRoot, leaf: &mut LeafFn<'_, 'a>) {
        self.tick(path);
        let s = FaultKind::Structure;
        if root.height == 0 {
            if !root.ref_.is_null() {
                let msg = format!("height 0 but ref blkno {}", root.ref_.blkno.get());
                self.fault(s, path, msg);
            }
            return;
        }
        if root.height > BTREE_MAX_HEIGHT {
            let msg = format!("height {} exceeds {BTREE_MAX_HEIGHT}", root.height);
            self.fault(s, path, msg);
            return;
        }
        if root.ref_.is_null() {
            self.fault(s, path, format!("height {} but null ref", root.height));
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
        let s = FaultKind::Structure;
        let at = format!("{path} -> blkno {} (level {level})", r.blkno.get());
        let view = match BlockView::new(&blk) {
            Ok(v) => v,
            Err(e) => return self.fault(s, at, e.to_string()),
        };
        if view.level() != level {
            return self.fault(s, at, format!("block has level {}", view.level()));
        }
        if view.is_empty() && !is_root {
            self.fault(s, at.as_str(), "empty non-root block");
        }
        if view.is_leaf() {
            if let Err(e) = view.check_hash_table() {
                self.fault(s, at.as_str(), e.to_string());
            }
        }
        let mut prev = lo;
        for i in 0..view.len() {
            let key = view.key(i);
            let ipath = format!("{at} item {i}");
            if prev.is_some_and(|p| key <= p) || hi.is_some_and(|h| key > h) {
                let msg = format!("key {key} outside its parent's range");
                self.fault(s, ipath.as_str(), msg);
            }
            let raw = view.raw_item(view.offsets()[i]);
            if view.is_leaf() {
                leaf(self, &ipath, &key, raw.seq.get(), raw.flags, view.value(i));
            } else if let Some(child) = exact::<BlockRef>(view.value(i)) {
                self.btree_block(&ipath, &child, level - 1, prev, Some(key), false, leaf);
            }
            prev = Some(key);
        }
    }

    /// Records the blocks of a merge completion's subtree not spliced yet.
    /// Its merge COWed only the paths it changed: the other blocks are
    /// still `fs_root`'s, already recorded, and are not walked again.
    pub(super) fn completion_tree(&mut self, path: &str, root: &BtreeRoot) {
        self.unread_tree(path, root, None);
    }

    /// Records the blocks of a merged tree that `free_blocks` has not
    /// freed yet: it frees in key order, a block once every key below its
    /// parent item's key (the largest key under it) is behind `from`, so
    /// the blocks left are those whose parent key is at least `from` (the
    /// root always). Their items are not checked: nothing reads them.
    pub(super) fn freeing_tree(&mut self, path: &str, root: &BtreeRoot, from: &Key) {
        self.unread_tree(path, root, Some(from));
    }

    /// Records the blocks of a tree whose items nothing reads: a
    /// completion's subtree (`from` None: blocks already recorded are
    /// `fs_root`'s and end the descent) or a tree being freed (only the
    /// parents keyed at or past `from`).
    fn unread_tree(&mut self, path: &str, root: &BtreeRoot, from: Option<&Key>) {
        self.tick(path);
        if root.height == 0 || root.ref_.is_null() {
            return;
        }
        if root.height > BTREE_MAX_HEIGHT {
            let msg = format!("height {} exceeds {BTREE_MAX_HEIGHT}", root.height);
            return self.fault(FaultKind::Structure, path, msg);
        }
        self.unread_block(path, &root.ref_, root.height - 1, from);
    }

    fn unread_block(&mut self, path: &str, r: &BlockRef, level: u8, from: Option<&Key>) {
        if from.is_none() && self.refd.contains_key(&r.blkno.get()) {
            return;
        }
        let Some(blk) = self.read_ref(path, r, MAGIC_BTREE) else {
            return;
        };
        if level == 0 {
            return;
        }
        let at = format!("{path} -> blkno {} (level {level})", r.blkno.get());
        let view = match BlockView::new(&blk) {
            Ok(v) => v,
            Err(e) => return self.fault(FaultKind::Structure, at, e.to_string()),
        };
        if view.level() != level {
            let msg = format!("block has level {}", view.level());
            return self.fault(FaultKind::Structure, at, msg);
        }
        for i in 0..view.len() {
            if from.is_some_and(|f| view.key(i) < *f) {
                continue;
            }
            if let Some(child) = exact::<BlockRef>(view.value(i)) {
                self.unread_block(&format!("{at} item {i}"), &child, level - 1, from);
            }
        }
    }

    /// Walks an alloc list chain: list blocks are referenced, their entries free.
    pub(super) fn alloc_list(&mut self, path: &str, head: &AllocListHead) {
        self.alloc_list_of(path, head, false);
    }

    /// The freed list of a merge completion not spliced yet: the blocks
    /// its merge COWed away are still in `fs_root` until the splice (which
    /// frees them), so an entry already referenced is in use, not free.
    /// Must run after every tree that can reference them was walked.
    pub(super) fn pending_freed_list(&mut self, path: &str, head: &AllocListHead) {
        self.alloc_list_of(path, head, true);
    }

    fn alloc_list_of(&mut self, path: &str, head: &AllocListHead, pending: bool) {
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
                Err(e) => return self.fault(FaultKind::Structure, at, e.to_string()),
            };
            if first && live.len() as u64 != head.first_nr.get() as u64 {
                let msg = format!(
                    "first_nr {} but block holds {}",
                    head.first_nr.get(),
                    live.len()
                );
                self.fault(FaultKind::Totals, at.as_str(), msg);
            }
            first = false;
            total += live.len() as u64;
            let who = self.name(&format!("{at} (free list)"));
            for b in live {
                if !(pending && self.refd.contains_key(&b)) {
                    self.claim(Space::Meta, b, 1, who);
                }
            }
            r = lb.next;
        }
        if total != head.total_nr.get() {
            let msg = format!("total_nr {} but lists hold {total}", head.total_nr.get());
            self.fault(FaultKind::Totals, path, msg);
        }
    }

    /// Walks a free extent tree; both indexes must agree and sum to total_len.
    pub(super) fn alloc_root(&mut self, path: &str, root: &AllocRoot, space: Space) {
        let mut by_blkno: Vec<(u64, u64)> = Vec::new();
        let mut by_order: Vec<(u64, u64)> = Vec::new();
        self.btree(path, &root.root, &mut |c, ip, k, _, _, v| {
            if !v.is_empty() {
                let msg = format!("free extent item with a {} byte value", v.len());
                c.fault(FaultKind::Item, ip, msg);
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
                        let msg = format!("order key {k} doesn't match len {l}");
                        c.fault(FaultKind::Item, ip, msg);
                    }
                    by_order.push((s, l));
                }
                _ => c.fault(FaultKind::Item, ip, format!("key {k} is not a free extent")),
            }
        });
        by_order.sort_unstable();
        if by_blkno != by_order {
            let msg = format!(
                "blkno and order indexes disagree ({} vs {} extents)",
                by_blkno.len(),
                by_order.len()
            );
            self.fault(FaultKind::Totals, path, msg);
        }
        let sum: u64 = by_blkno.iter().fold(0u64, |a, e| a.wrapping_add(e.1));
        if sum != root.total_len.get() {
            let msg = format!("total_len {} but extents hold {sum}", root.total_len.get());
            self.fault(FaultKind::Totals, path, msg);
        }
        let who = self.name(&format!("{path} (free extents)"));
        for (s, l) in by_blkno {
            self.claim(space, s, l, who);
        }
    }

    /// Walks a srch file: every block once, every leaf's entries decoded
    /// and matched against its header (count, bytes, smallest, largest,
    /// last appended), the file's counts and bounds against its leaves,
    /// and, for `sorted` files (BLOCKS items, compaction outputs), entries
    /// in order across the whole file (equal neighbours are allowed: the
    /// original's compaction leaves pairs that straddle a leaf boundary).
    pub(super) fn srch_file(&mut self, path: &str, f: &SrchFile, sorted: bool) {
        if f.ref_.is_null() {
            if f.blocks.get() != 0 || f.entries.get() != 0 || f.height != 0 {
                let msg = format!(
                    "empty srch file with blocks {} entries {} height {}",
                    f.blocks.get(),
                    f.entries.get(),
                    f.height
                );
                self.fault(FaultKind::Structure, path, msg);
            }
            return;
        }
        if f.height == 0 || f.height > SRCH_MAX_HEIGHT {
            let msg = format!("srch file height {}", f.height);
            return self.fault(FaultKind::Structure, path, msg);
        }
        let mut w = SrchWalk {
            sorted,
            ..SrchWalk::default()
        };
        self.srch_block(path, &f.ref_, f.height - 1, &mut w);
        if w.broken {
            return;
        }
        if w.leaves != f.blocks.get() || w.entries != f.entries.get() {
            let msg = format!(
                "srch file says {} blocks {} entries, has {} leaves {} entries",
                f.blocks.get(),
                f.entries.get(),
                w.leaves,
                w.entries
            );
            self.fault(FaultKind::Totals, path, msg);
        }
        if let (Some(lo), Some(hi)) = (w.min, w.max) {
            if key_of(&f.first) != lo || key_of(&f.last) != hi {
                let msg = "srch file first/last are not its smallest/largest entries";
                self.fault(FaultKind::Structure, path, msg);
            }
        }
    }

    fn srch_block(&mut self, path: &str, r: &BlockRef, level: u8, w: &mut SrchWalk) {
        let magic = if level > 0 {
            MAGIC_SRCH_PARENT
        } else {
            MAGIC_SRCH_BLOCK
        };
        let Some(blk) = self.read_ref(path, r, magic) else {
            w.broken = true;
            return;
        };
        let at = format!("{path} -> blkno {} (srch level {level})", r.blkno.get());
        if level > 0 {
            let Some((p, _)) = SrchParent::ref_from_prefix(&blk).ok() else {
                w.broken = true;
                return;
            };
            // Files are never sparse: used refs come first.
            let used = p.refs.iter().take_while(|r| !r.is_null()).count();
            if p.refs[used..].iter().any(|r| !r.is_null()) {
                self.fault(FaultKind::Structure, at.as_str(), "srch parent with a hole");
            }
            let refs: Vec<BlockRef> = p.refs[..used].to_vec();
            for child in refs {
                self.srch_block(&at, &child, level - 1, w);
            }
            return;
        }
        let Some((sb, _)) = SrchBlockHeader::ref_from_prefix(&blk).ok() else {
            w.broken = true;
            return;
        };
        w.leaves += 1;
        let data = &blk[std::mem::size_of::<SrchBlockHeader>()..];
        let mut prev = SrchEntry::new(0, 0, 0);
        let mut pos = 0usize;
        let (mut lo, mut hi) = (None, None);
        for i in 0..sb.entry_nr.get() {
            match decode_entry(data.get(pos..).unwrap_or(&[]), &prev) {
                Ok((e, n)) => {
                    pos += n;
                    prev = e;
                    let k = key_of(&e);
                    if w.sorted && w.last_sorted.is_some_and(|l| l > k) {
                        w.broken = true;
                        let msg = format!("sorted srch file entry {i} out of order");
                        return self.fault(FaultKind::Structure, at, msg);
                    }
                    w.last_sorted = Some(k);
                    lo = Some(lo.map_or(k, |l: (u64, u64, u64)| l.min(k)));
                    hi = Some(hi.map_or(k, |h: (u64, u64, u64)| h.max(k)));
                }
                Err(e) => {
                    w.broken = true;
                    return self.fault(FaultKind::Structure, at, format!("entry {i}: {e}"));
                }
            }
        }
        w.entries += sb.entry_nr.get() as u64;
        if pos != sb.entry_bytes.get() as usize {
            let msg = format!("entry_bytes {} but entries use {pos}", sb.entry_bytes.get());
            self.fault(FaultKind::Structure, at.as_str(), msg);
        }
        if let (Some(l), Some(h)) = (lo, hi) {
            if key_of(&sb.first) != l || key_of(&sb.last) != h || key_of(&sb.tail) != key_of(&prev)
            {
                let msg = "srch block first/last/tail disagree with its entries";
                self.fault(FaultKind::Structure, at.as_str(), msg);
            }
            w.min = Some(w.min.map_or(l, |m| m.min(l)));
            w.max = Some(w.max.map_or(h, |m| m.max(h)));
        }
    }
}

/// What a srch file walk gathered.
#[derive(Default)]
struct SrchWalk {
    sorted: bool,
    broken: bool,
    leaves: u64,
    entries: u64,
    min: Option<(u64, u64, u64)>,
    max: Option<(u64, u64, u64)>,
    last_sorted: Option<(u64, u64, u64)>,
}

fn key_of(e: &SrchEntry) -> (u64, u64, u64) {
    (e.hash.get(), e.ino.get(), e.id.get())
}
