//! `scoutfs print META [-S]`: dumps every metadata structure as text.
//!
//! Guarantees: the output is the original tool's text for every structure it
//! printed (byte for byte on the mkfs vectors); structures it did not print
//! (bloom blocks) use the same style. Bad blocks are reported inline as
//! `  (…)` lines and printing continues; nothing here panics on device
//! content, and cycles or level mismatches in refs never recurse unbounded.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use engine::format::alloc::{AllocListBlock, ALLOC_LIST_MAX_BLKNOS};
use engine::format::block::{block_crc, BlockHeader};
use engine::format::bloom::BloomBlock;
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::btree_block::BlockView;
use engine::format::items::{
    indx_fields, DataExtent, DirentHeader, Inode, MountedClient, QuotaRule, TotlValue, XattrHeader,
};
use engine::format::key::{fs_type, index_type, srch_type, zone, DiskKey, Key};
use engine::format::log_trees::*;
use engine::format::quorum::{QuorumBlock, QUORUM_EVENT_NAMES};
use engine::format::srch::{
    decode_entry, SrchBlockHeader, SrchCompact, SrchEntry, SrchFile, SrchParent,
    SRCH_BLOCK_SAFE_BYTES, SRCH_PARENT_REFS,
};
use engine::format::superblock::{
    uuid_string, AllocListHead, AllocRoot, BtreeRoot, SuperBlock, SUPER_FLAG_META_BDEV,
    VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT,
};
use engine::format::*;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::args::{self, OptSpec};
use crate::dev::{self, BlockDevice};

const CMD: &str = "print";

/// Decodes a struct from the front of a value, zero-filling a short value
/// so that printing shows what is there (the shortness is reported apart).
fn val_struct<T: FromBytes + KnownLayout + Immutable + Copy>(val: &[u8]) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    let n = val.len().min(buf.len());
    buf[..n].copy_from_slice(&val[..n]);
    T::read_from_bytes(&buf).unwrap_or_else(|_| {
        T::read_from_bytes(&vec![0u8; std::mem::size_of::<T>()])
            .ok()
            .unwrap_or_else(|| unreachable!())
    })
}

fn sk(k: &Key) -> String {
    format!(
        "{}.{}.{}.{}.{}.{}",
        k.zone, k.first, k.ty, k.second, k.third, k.fourth
    )
}

fn dsk(k: &DiskKey) -> String {
    sk(&Key::from_disk_unchecked(k))
}

fn printable(name: &[u8]) -> String {
    name.iter()
        .take(255)
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

fn hdr_line(out: &mut String, block: &[u8]) {
    let Ok(hdr) = BlockHeader::read_from_prefix(block).map(|(h, _)| h) else {
        return;
    };
    let crc = block_crc(block);
    let valid = if crc != hdr.crc.get() {
        format!("(!= {crc:08x}) ")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  hdr: crc {:08x} {valid}magic {:08x} fsid {:x} blkno {} seq {}",
        hdr.crc.get(),
        hdr.magic.get(),
        hdr.fsid.get(),
        hdr.blkno.get(),
        hdr.seq.get()
    );
}

fn al_head(h: &AllocListHead) -> String {
    format!(
        "blkno {} seq {} total_nr {} first_nr {} flags 0x{:x}",
        h.ref_.blkno.get(),
        h.ref_.seq.get(),
        h.total_nr.get(),
        h.first_nr.get(),
        h.flags.get()
    )
}

fn alc_root(r: &AllocRoot) -> String {
    format!(
        "blkno {} seq {} height {} total_len {} flags 0x{:x}",
        r.root.ref_.blkno.get(),
        r.root.ref_.seq.get(),
        r.root.height,
        r.total_len.get(),
        r.flags.get()
    )
}

fn btroot(r: &BtreeRoot) -> String {
    format!(
        "blkno {} seq {} height {}",
        r.ref_.blkno.get(),
        r.ref_.seq.get(),
        r.height
    )
}

fn btr_fmt(r: &BtreeRoot) -> String {
    format!(
        "blkno {} seq {:016x} height {}",
        r.ref_.blkno.get(),
        r.ref_.seq.get(),
        r.height
    )
}

fn sre(e: &SrchEntry) -> String {
    format!("{:016x}.{}.{}", e.hash.get(), e.ino.get(), e.id.get())
}

fn srf(f: &SrchFile) -> String {
    format!(
        "f {} l {} blks {} ents {} hei {} blkno {} seq {:016x}",
        sre(&f.first),
        sre(&f.last),
        f.blocks.get(),
        f.entries.get(),
        f.height,
        f.ref_.blkno.get(),
        f.ref_.seq.get()
    )
}

/// Which item printer a tree uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fs,
    Alloc,
    LogTrees,
    Srch,
    Mounted,
    LogMerge,
}

fn short_note(out: &mut String, val: &[u8], need: usize) {
    if val.len() < need {
        let _ = writeln!(out, "      (value of {} bytes, expected {need})", val.len());
    }
}

fn print_fs_value(out: &mut String, k: &Key, val: &[u8]) {
    let o = out;
    match (k.zone, k.ty) {
        (zone::INODE_INDEX, t) if (index_type::META_SEQ..=index_type::DATA_SEQ).contains(&t) => {
            let _ = writeln!(o, "      index: major {} ino {}", k.second, k.third);
        }
        (zone::ORPHAN, engine::format::key::ORPHAN_TYPE) => {
            let _ = writeln!(o, "    orphan: ino {}", k.second);
        }
        (zone::QUOTA, _) => {
            short_note(o, val, 48);
            let r: QuotaRule = val_struct(val);
            let _ = writeln!(
                o,
                "    quota rule: hash 0x{:016x} coll_nr {}",
                k.second, k.third
            );
            let _ = writeln!(
                o,
                "      [{} {},{},{:x} {},{},{:x} {},{},{:x} {} {} {:x}]",
                r.prio,
                r.name_val[0].get(),
                r.name_source[0],
                r.name_flags[0],
                r.name_val[1].get(),
                r.name_source[1],
                r.name_flags[1],
                r.name_val[2].get(),
                r.name_source[2],
                r.name_flags[2],
                r.op,
                r.limit.get(),
                r.rule_flags
            );
        }
        (zone::XATTR_TOTL, _) => {
            short_note(o, val, 16);
            let t: TotlValue = val_struct(val);
            let _ = writeln!(
                o,
                "    xattr totl: {}.{}.{} = {}, {}",
                k.first,
                k.second,
                k.third,
                t.total.get() as i64,
                t.count.get() as i64
            );
        }
        (zone::XATTR_INDX, _) => {
            let (major, minor, ino, xid) = indx_fields(k);
            let _ = writeln!(
                o,
                "    xattr indx: major {major} minor {minor} ino {ino} xid {xid}"
            );
        }
        (zone::FS, fs_type::INODE) => {
            short_note(o, val, items::INODE_V1_BYTES);
            let i: Inode = val_struct(val);
            let _ = writeln!(
                o,
                "    inode: ino {} size {} version {} proj {} nlink {}",
                k.first,
                i.size.get(),
                i.version.get(),
                i.proj.get(),
                i.nlink.get()
            );
            let _ = writeln!(
                o,
                "      uid {} gid {} mode 0{:o} rdev 0x{:x} flags 0x{:x}",
                i.uid.get(),
                i.gid.get(),
                i.mode.get(),
                i.rdev.get(),
                i.flags.get()
            );
            let _ = writeln!(
                o,
                "      next_readdir_pos {} meta_seq {} data_seq {} data_version {}",
                i.next_readdir_pos.get(),
                i.meta_seq.get(),
                i.data_seq.get(),
                i.data_version.get()
            );
            let _ = writeln!(
                o,
                "      atime {}.{:08} ctime {}.{:08}",
                i.atime.sec.get(),
                i.atime.nsec.get(),
                i.ctime.sec.get(),
                i.ctime.nsec.get()
            );
            let _ = writeln!(
                o,
                "      mtime {}.{:08}",
                i.mtime.sec.get(),
                i.mtime.nsec.get()
            );
        }
        (zone::FS, fs_type::XATTR) => {
            let _ = writeln!(
                o,
                "    xattr: ino {} name_hash {:08x} id {} part {}",
                k.first, k.second as u32, k.third, k.fourth
            );
            if k.fourth == 0 {
                short_note(o, val, 8);
                let h: XattrHeader = val_struct(val);
                let nl = h.name_len as usize;
                let name = val.get(8..(8 + nl).min(val.len())).unwrap_or(&[]);
                let _ = writeln!(
                    o,
                    "      name_len {} val_len {} name {}",
                    h.name_len,
                    h.val_len.get(),
                    printable(name)
                );
            }
        }
        (zone::FS, fs_type::DIRENT | fs_type::READDIR | fs_type::LINK_BACKREF) => {
            short_note(o, val, 32);
            let d: DirentHeader = val_struct(val);
            let name = val.get(32..).unwrap_or(&[]);
            let _ = writeln!(
                o,
                "    dirent: dir {} hash {:016x} pos {} type {} ino {}",
                k.first,
                d.hash.get(),
                d.pos.get(),
                d.ty,
                d.ino.get()
            );
            let _ = writeln!(o, "      name {}", printable(name));
        }
        (zone::FS, fs_type::SYMLINK) => {
            let mut v = val;
            if v.last() == Some(&0) {
                v = &v[..v.len() - 1];
            }
            let _ = writeln!(o, "    symlink: ino {} nr {}", k.first, k.second);
            let _ = writeln!(o, "      target {}", printable(v));
        }
        (zone::FS, fs_type::DATA_EXTENT) => {
            short_note(o, val, 16);
            let d: DataExtent = val_struct(val);
            let _ = writeln!(
                o,
                "    extent: ino {} iblock {} len {} blkno {} flags {:x}",
                k.first,
                k.second.wrapping_sub(k.third).wrapping_add(1),
                k.third,
                d.blkno.get(),
                d.flags
            );
        }
        _ => {
            let _ = writeln!(o, "      (unknown zone {} type {})", k.zone, k.ty);
        }
    }
}

fn print_item(out: &mut String, kind: Kind, k: &Key, seq: u64, flags: u8, val: Option<&[u8]>) {
    match kind {
        Kind::Fs => {
            let _ = writeln!(
                out,
                "    {} {seq} {}",
                sk(k),
                if flags & ITEM_FLAG_DELETION != 0 {
                    'd'
                } else {
                    '-'
                }
            );
            if let Some(v) = val {
                if flags & ITEM_FLAG_DELETION == 0 {
                    print_fs_value(out, k, v);
                }
            }
        }
        Kind::Alloc => {
            if k.zone == zone::FREE_EXTENT_BLKNO {
                let _ = writeln!(
                    out,
                    "    free extent: blkno {} len {} end {}",
                    k.first.wrapping_sub(k.second).wrapping_add(1),
                    k.second,
                    k.first
                );
            } else {
                let _ = writeln!(
                    out,
                    "    free extent: blkno {} len {} order {}",
                    k.second.wrapping_sub(k.third).wrapping_add(1),
                    k.third,
                    u64::MAX - k.first
                );
            }
        }
        Kind::LogTrees => {
            let _ = writeln!(out, "    rid {} nr {}", k.first, k.second);
            if let Some(v) = val {
                short_note(out, v, std::mem::size_of::<LogTrees>());
                let lt: LogTrees = val_struct(v);
                let _ = writeln!(out, "      meta_avail: {}", al_head(&lt.meta_avail));
                let _ = writeln!(out, "      meta_freed: {}", al_head(&lt.meta_freed));
                let _ = writeln!(
                    out,
                    "      item_root: height {} blkno {} seq {}",
                    lt.item_root.height,
                    lt.item_root.ref_.blkno.get(),
                    lt.item_root.ref_.seq.get()
                );
                let _ = writeln!(
                    out,
                    "      bloom_ref: blkno {} seq {}",
                    lt.bloom_ref.blkno.get(),
                    lt.bloom_ref.seq.get()
                );
                let _ = writeln!(out, "      data_avail: {}", alc_root(&lt.data_avail));
                let _ = writeln!(out, "      data_freed: {}", alc_root(&lt.data_freed));
                let _ = writeln!(out, "      srch_file: {}", srf(&lt.srch_file));
                let _ = writeln!(
                    out,
                    "      inode_count_delta: {}",
                    lt.inode_count_delta.get() as i64
                );
                let _ = writeln!(
                    out,
                    "      get_trans_seq: {}",
                    lt.get_trans_seq.get() as i64
                );
                let _ = writeln!(
                    out,
                    "      commit_trans_seq: {}",
                    lt.commit_trans_seq.get() as i64
                );
                let _ = writeln!(out, "      max_item_seq: {}", lt.max_item_seq.get());
                let _ = writeln!(out, "      finalize_seq: {}", lt.finalize_seq.get());
                let _ = writeln!(out, "      rid: {:016x}", lt.rid.get());
                let _ = writeln!(out, "      nr: {}", lt.nr.get());
                let _ = writeln!(out, "      flags: {:x}", lt.flags.get());
                let _ = writeln!(
                    out,
                    "      data_alloc_zone_blocks: {}",
                    lt.data_alloc_zone_blocks.get()
                );
                out.push_str("      data_alloc_zones: ");
                for (i, w) in lt.data_alloc_zones.iter().enumerate() {
                    let mut z = w.get();
                    while z != 0 {
                        let bit = z.trailing_zeros();
                        let _ = write!(out, "{} ", i * 64 + bit as usize);
                        z &= z - 1;
                    }
                }
                out.push('\n');
            }
        }
        Kind::Srch => {
            let _ = writeln!(out, "    {}", sk(k));
            if let Some(v) = val {
                if k.ty == srch_type::PENDING || k.ty == srch_type::BUSY {
                    short_note(out, v, std::mem::size_of::<SrchCompact>());
                    let sc: SrchCompact = val_struct(v);
                    let _ = writeln!(
                        out,
                        "      compact {}: nr {} flags 0x{:x}",
                        if k.ty == srch_type::PENDING {
                            "pending"
                        } else {
                            "busy"
                        },
                        sc.nr,
                        sc.flags
                    );
                    for (i, inp) in sc.inputs.iter().enumerate().take(sc.nr as usize) {
                        let _ = writeln!(
                            out,
                            "        [{i}] blk {} pos {} sfl {}",
                            inp.blk.get(),
                            inp.pos.get(),
                            srf(&inp.sfl)
                        );
                    }
                } else {
                    short_note(out, v, std::mem::size_of::<SrchFile>());
                    let f: SrchFile = val_struct(v);
                    let _ = writeln!(out, "      {}", srf(&f));
                }
            }
        }
        Kind::Mounted => match val {
            Some(v) => {
                short_note(out, v, 33);
                let mc: MountedClient = val_struct(v);
                let _ = writeln!(
                    out,
                    "    rid {:016x} ipv4_addr {} flags 0x{:x}",
                    k.first,
                    mc.addr.ipv4(),
                    mc.flags
                );
            }
            None => {
                let _ = writeln!(out, "    rid {:016x}", k.first);
            }
        },
        Kind::LogMerge => {
            let Some(v) = val else {
                let _ = writeln!(out, "    {}", sk(k));
                return;
            };
            match k.zone {
                zone::LOG_MERGE_STATUS => {
                    short_note(out, v, std::mem::size_of::<LogMergeStatus>());
                    let s: LogMergeStatus = val_struct(v);
                    let _ = writeln!(
                        out,
                        "    status: next_range_key {} nr_req {} nr_comp {} seq {}",
                        dsk(&s.next_range_key),
                        s.nr_requests.get(),
                        s.nr_complete.get(),
                        s.seq.get()
                    );
                }
                zone::LOG_MERGE_RANGE => {
                    short_note(out, v, std::mem::size_of::<LogMergeRange>());
                    let r: LogMergeRange = val_struct(v);
                    let _ = writeln!(
                        out,
                        "    range: start {} end {}",
                        dsk(&r.start),
                        dsk(&r.end)
                    );
                }
                zone::LOG_MERGE_REQUEST => {
                    short_note(out, v, std::mem::size_of::<LogMergeRequest>());
                    let r: LogMergeRequest = val_struct(v);
                    let _ = writeln!(
                        out,
                        "    request: logs_root {} logs_root {} start {} end {} input_seq {} rid {:016x} seq {} flags 0x{:x}",
                        btroot(&r.logs_root), btroot(&r.root), dsk(&r.start), dsk(&r.end), r.input_seq.get(), r.rid.get(), r.seq.get(), r.flags.get()
                    );
                }
                zone::LOG_MERGE_COMPLETE => {
                    short_note(out, v, std::mem::size_of::<LogMergeComplete>());
                    let c: LogMergeComplete = val_struct(v);
                    let _ = writeln!(
                        out,
                        "    complete: root {} start {} end {} remain {} rid {:016x} seq {} flags {:x}",
                        btroot(&c.root), dsk(&c.start), dsk(&c.end), dsk(&c.remain), c.rid.get(), c.seq.get(), c.flags.get()
                    );
                }
                zone::LOG_MERGE_FREEING => {
                    short_note(out, v, std::mem::size_of::<LogMergeFreeing>());
                    let f: LogMergeFreeing = val_struct(v);
                    let _ = writeln!(
                        out,
                        "    freeing: root {} key {} seq {}",
                        btroot(&f.root),
                        dsk(&f.key),
                        f.seq.get()
                    );
                }
                z => {
                    let _ = writeln!(out, "    (unknown log merge key zone {z})");
                }
            }
        }
    }
}

/// Printing state: the device, output and what has gone wrong.
pub struct Printer<'a> {
    dev: &'a dyn BlockDevice,
    pub out: String,
    pub errors: usize,
}

impl<'a> Printer<'a> {
    pub fn new(dev: &'a dyn BlockDevice) -> Self {
        Printer {
            dev,
            out: String::new(),
            errors: 0,
        }
    }

    fn note(&mut self, msg: String) {
        self.errors += 1;
        let _ = writeln!(self.out, "  ({msg})");
    }

    fn read_lg(&mut self, blkno: u64) -> Option<Vec<u8>> {
        match dev::read_lg(self.dev, blkno) {
            Ok(b) => Some(b),
            Err(e) => {
                self.note(format!("read blkno {blkno} failed: {e}"));
                None
            }
        }
    }

    /// Prints the blocks of one level of a btree, reached through parents.
    fn btree_level(
        &mut self,
        which: &str,
        blkno: u64,
        kind: Kind,
        level: u8,
        expect_level: u8,
        seen: &mut BTreeSet<u64>,
    ) {
        let Some(blk) = self.read_lg(blkno) else {
            return;
        };
        let view = match BlockView::new(&blk) {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(self.out, "{which} btree blkno {blkno}");
                self.note(format!("bad btree block blkno {blkno}: {e}"));
                return;
            }
        };
        if view.level() != expect_level {
            let _ = writeln!(self.out, "{which} btree blkno {blkno}");
            self.note(format!(
                "btree blkno {blkno} has level {} where {expect_level} was expected",
                view.level()
            ));
            return;
        }
        let h = view.header;
        if h.level == level {
            let _ = writeln!(self.out, "{which} btree blkno {blkno}");
            let _ = writeln!(
                self.out,
                "  crc {:08x} fsid {:x} seq {} blkno {} ",
                h.hdr.crc.get(),
                h.hdr.fsid.get(),
                h.hdr.seq.get(),
                h.hdr.blkno.get()
            );
            if block_crc(&blk) != h.hdr.crc.get() {
                self.note(format!("bad crc: computed {:08x}", block_crc(&blk)));
            }
            let _ = writeln!(
                self.out,
                "  total_item_bytes {} mid_free_len {}",
                h.total_item_bytes.get(),
                h.mid_free_len.get()
            );
            let _ = writeln!(
                self.out,
                "  level {} nr_items {} item_root.node {}",
                h.level,
                h.nr_items.get(),
                h.item_root.get()
            );
            if h.level == 0 {
                self.leaf_hash(&view);
            }
        }
        for i in 0..view.len() {
            let off = view.offsets()[i];
            let it = view.raw_item(off);
            let key = view.key(i);
            let val = view.value(i);
            if level < h.level {
                let Ok((r, _)) = BlockRef::read_from_prefix(val) else {
                    continue;
                };
                let child = r.blkno.get();
                if child != 0 {
                    if !seen.insert(child) {
                        self.note(format!("btree blkno {child} referenced again"));
                        continue;
                    }
                    self.btree_level(which, child, kind, level, h.level - 1, seen);
                }
                continue;
            }
            let _ = writeln!(
                self.out,
                "  [{i}] off {off} par {} l {} r {} h {} vo {} vl {}",
                it.node.parent.get(),
                it.node.left.get(),
                it.node.right.get(),
                it.node.height,
                it.val_off.get(),
                it.val_len.get()
            );
            if h.level > 0 {
                print_item(&mut self.out, kind, &key, 0, 0, None);
                let r: BlockRef = val_struct(val);
                let _ = writeln!(
                    self.out,
                    "    ref blkno {} seq {}",
                    r.blkno.get(),
                    r.seq.get()
                );
            } else {
                print_item(&mut self.out, kind, &key, it.seq.get(), it.flags, Some(val));
            }
        }
    }

    fn leaf_hash(&mut self, view: &BlockView) {
        let o = &mut self.out;
        o.push_str("  item hash: ");
        let mut col = 13usize;
        let mut nr = 0;
        for (i, b) in view.hash_buckets().iter().enumerate() {
            if b.get() == 0 {
                continue;
            }
            nr += 1;
            let s = format!("{i},{} ", b.get());
            col += s.len();
            if col >= 78 {
                o.push_str("\n   ");
                col = 3;
            }
            o.push_str(&s);
        }
        if col != 3 {
            o.push('\n');
        }
        let n = btree::LEAF_HASH_BUCKETS;
        let _ = writeln!(o, "    ({nr} / {n} populated, {}% load)", nr * 100 / n);
    }

    /// Prints a btree breadth first: all parents before their children.
    fn btree(&mut self, which: &str, root: &BtreeRoot, kind: Kind) {
        if root.height > BTREE_MAX_HEIGHT {
            self.note(format!(
                "{which} root height {} exceeds {BTREE_MAX_HEIGHT}",
                root.height
            ));
            return;
        }
        for level in (0..root.height).rev() {
            let mut seen = BTreeSet::new();
            seen.insert(root.ref_.blkno.get());
            self.btree_level(
                which,
                root.ref_.blkno.get(),
                kind,
                level,
                root.height - 1,
                &mut seen,
            );
        }
    }

    /// Leaf items of a tree, in key order, for walking what they point to.
    fn leaf_items(&mut self, root: &BtreeRoot) -> Vec<(Key, Vec<u8>)> {
        let mut items = Vec::new();
        if root.height == 0 || root.height > BTREE_MAX_HEIGHT || root.ref_.blkno.get() == 0 {
            return items;
        }
        let mut stack = vec![(root.ref_.blkno.get(), root.height - 1)];
        let mut seen = BTreeSet::new();
        while let Some((blkno, lvl)) = stack.pop() {
            if !seen.insert(blkno) {
                continue;
            }
            let Ok(blk) = dev::read_lg(self.dev, blkno) else {
                continue;
            };
            let Ok(view) = BlockView::new(&blk) else {
                continue;
            };
            if view.level() != lvl {
                continue;
            }
            if lvl == 0 {
                for i in 0..view.len() {
                    items.push((view.key(i), view.value(i).to_vec()));
                }
            } else {
                for i in (0..view.len()).rev() {
                    if let Ok((r, _)) = BlockRef::read_from_prefix(view.value(i)) {
                        if r.blkno.get() != 0 {
                            stack.push((r.blkno.get(), lvl - 1));
                        }
                    }
                }
            }
        }
        items
    }

    fn alloc_list(&mut self, name: &str, head_ref: &BlockRef) {
        let mut blkno = head_ref.blkno.get();
        let mut seen = BTreeSet::new();
        while blkno != 0 {
            if !seen.insert(blkno) {
                self.note(format!("alloc list blkno {blkno} repeats"));
                return;
            }
            let Some(blk) = self.read_lg(blkno) else {
                return;
            };
            let Ok((lblk, _)) = AllocListBlock::ref_from_prefix(&blk) else {
                return;
            };
            let _ = writeln!(self.out, "{name} alloc_list_block blkno {blkno}");
            hdr_line(&mut self.out, &blk);
            let (st, nr) = (lblk.start.get() as usize, lblk.nr.get() as usize);
            let _ = writeln!(
                self.out,
                "  next blkno {} seq {} start {st} nr {nr}",
                lblk.next.blkno.get(),
                lblk.next.seq.get()
            );
            if st >= ALLOC_LIST_MAX_BLKNOS
                || nr > ALLOC_LIST_MAX_BLKNOS
                || st + nr > ALLOC_LIST_MAX_BLKNOS
            {
                let _ = writeln!(self.out, "  (invalid start and nr fields)");
                self.errors += 1;
            } else if nr > 0 {
                let o = &mut self.out;
                o.push_str("  exts: ");
                let mut wid = 8usize;
                let (mut start, mut len) = (0u64, 0u64);
                let b = &lblk.blknos[st..st + nr];
                for i in 0..nr {
                    if len == 0 {
                        start = b[i].get();
                    }
                    len += 1;
                    if i == nr - 1 || start.wrapping_add(len) != b[i + 1].get() {
                        if wid >= 72 {
                            o.push_str("\n        ");
                            wid = 9;
                        }
                        let s = format!("{start},{len} ");
                        wid += s.len();
                        o.push_str(&s);
                        len = 0;
                    }
                }
                o.push('\n');
            }
            blkno = lblk.next.blkno.get();
        }
    }

    fn srch_block(&mut self, r: &BlockRef, level: i32, depth: usize) {
        let blkno = r.blkno.get();
        if blkno == 0 {
            return;
        }
        if depth > 32 {
            self.note(format!("srch blkno {blkno} too deep"));
            return;
        }
        let Some(blk) = self.read_lg(blkno) else {
            return;
        };
        let _ = writeln!(
            self.out,
            "srch {}block blkno {blkno}",
            if level > 0 { "parent " } else { "" }
        );
        hdr_line(&mut self.out, &blk);
        if level > 0 {
            let Ok((p, _)) = SrchParent::ref_from_prefix(&blk) else {
                return;
            };
            let refs: Vec<(usize, BlockRef)> = p
                .refs
                .iter()
                .take(SRCH_PARENT_REFS)
                .copied()
                .enumerate()
                .filter(|(_, r)| r.blkno.get() != 0)
                .collect();
            for (i, r) in &refs {
                let _ = writeln!(
                    self.out,
                    "  [{i}]: blkno {} seq {}",
                    r.blkno.get(),
                    r.seq.get()
                );
            }
            for (_, r) in &refs {
                self.srch_block(r, level - 1, depth + 1);
            }
            return;
        }
        let Ok((sb, _)) = SrchBlockHeader::ref_from_prefix(&blk) else {
            return;
        };
        let _ = writeln!(
            self.out,
            "  first {} last {} tail {}",
            sre(&sb.first),
            sre(&sb.last),
            sre(&sb.tail)
        );
        let _ = writeln!(
            self.out,
            "  entry_nr {} entry_bytes {}",
            sb.entry_nr.get(),
            sb.entry_bytes.get()
        );
        let data = &blk[std::mem::size_of::<SrchBlockHeader>()..];
        let mut prev = SrchEntry::new(0, 0, 0);
        let mut pos = 0usize;
        for i in 0..sb.entry_nr.get() {
            if pos > SRCH_BLOCK_SAFE_BYTES {
                self.note("srch entries run past the safe bytes".into());
                break;
            }
            match decode_entry(&data[pos.min(data.len())..], &prev) {
                Ok((e, n)) => {
                    pos += n;
                    let _ = writeln!(self.out, "  [{i}]: ({n}) {}", sre(&e));
                    prev = e;
                }
                Err(e) => {
                    self.note(format!("srch entry {i}: {e}"));
                    break;
                }
            }
        }
    }

    fn srch_file(&mut self, f: &SrchFile) {
        self.srch_block(&f.ref_, f.height as i32 - 1, 0);
    }

    fn bloom(&mut self, r: &BlockRef) {
        let blkno = r.blkno.get();
        if blkno == 0 {
            return;
        }
        let Some(blk) = self.read_lg(blkno) else {
            return;
        };
        let Ok((b, _)) = BloomBlock::ref_from_prefix(&blk) else {
            return;
        };
        let _ = writeln!(self.out, "bloom block blkno {blkno}");
        hdr_line(&mut self.out, &blk);
        let set: u32 = b.bits.iter().map(|x| x.count_ones()).sum();
        let _ = writeln!(self.out, "  total_set {} bits_set {set}", b.total_set.get());
    }

    fn quorum_blocks(&mut self) {
        for i in 0..QUORUM_MAX_SLOTS as u64 {
            let blkno = QUORUM_BLKNO + i;
            let blk = match dev::read_sm(self.dev, blkno) {
                Ok(b) => b,
                Err(e) => {
                    self.note(format!("read quorum blkno {blkno} failed: {e}"));
                    return;
                }
            };
            let Ok((q, _)) = QuorumBlock::ref_from_prefix(&blk) else {
                return;
            };
            let _ = writeln!(self.out, "quorum blkno {blkno} (slot {i})");
            hdr_line(&mut self.out, &blk);
            let _ = writeln!(self.out, "  write_nr {}", q.write_nr.get());
            for (e, name) in q.events.iter().zip(QUORUM_EVENT_NAMES) {
                let _ = writeln!(
                    self.out,
                    "  {name:>12}: rid {:016x} term {} write_nr {} ts {}.{:08}",
                    e.rid.get(),
                    e.term.get(),
                    e.write_nr.get(),
                    e.ts.sec.get(),
                    e.ts.nsec.get()
                );
            }
        }
    }

    fn super_block(&mut self, blk: &[u8], s: &SuperBlock) {
        let o = &mut self.out;
        let _ = writeln!(o, "super blkno {SUPER_BLKNO}");
        hdr_line(o, blk);
        let _ = writeln!(
            o,
            "  fmt_vers {} uuid {}",
            s.fmt_vers.get(),
            uuid_string(&s.uuid)
        );
        let _ = writeln!(o, "  flags: 0x{:016x}", s.flags.get());
        let _ = writeln!(
            o,
            "  next_ino {} inode_count {} seq {}",
            s.next_ino.get(),
            s.inode_count.get(),
            s.seq.get()
        );
        let _ = writeln!(
            o,
            "  total_meta_blocks {} total_data_blocks {}",
            s.total_meta_blocks.get(),
            s.total_data_blocks.get()
        );
        for i in 0..2 {
            let _ = writeln!(o, "  meta_alloc[{i}]: {}", alc_root(&s.meta_alloc[i]));
        }
        let _ = writeln!(o, "  data_alloc: {}", alc_root(&s.data_alloc));
        for i in 0..2 {
            let _ = writeln!(
                o,
                "  server_meta_avail[{i}]: {}",
                al_head(&s.server_meta_avail[i])
            );
        }
        for i in 0..2 {
            let _ = writeln!(
                o,
                "  server_meta_freed[{i}]: {}",
                al_head(&s.server_meta_freed[i])
            );
        }
        let _ = writeln!(o, "  fs_root: {}", btr_fmt(&s.fs_root));
        let _ = writeln!(o, "  logs_root: {}", btr_fmt(&s.logs_root));
        let _ = writeln!(o, "  log_merge: {}", btr_fmt(&s.log_merge));
        let _ = writeln!(o, "  mounted_clients: {}", btr_fmt(&s.mounted_clients));
        let _ = writeln!(o, "  srch_root: {}", btr_fmt(&s.srch_root));
        let _ = writeln!(o, "  volume options:");
        let _ = writeln!(o, "    set_bits: {:016x}", s.volopt.set_bits.get());
        if s.volopt.set_bits.get() & VOLOPT_DATA_ALLOC_ZONE_BLOCKS_BIT != 0 {
            let _ = writeln!(
                o,
                "    data_alloc_zone_blocks: {}",
                s.volopt.data_alloc_zone_blocks.get()
            );
        }
        let _ = writeln!(o, "  quorum config version {}", s.qconf.version.get());
        for (i, addr) in s.qconf.active_slots() {
            let _ = writeln!(o, "    quorum slot {i:2}: {addr}");
        }
    }

    /// Prints the whole volume; Err is an errno for the failure trailer.
    pub fn volume(&mut self, skip_huge: bool) -> Result<(), i32> {
        let blk = dev::read_sm(self.dev, SUPER_BLKNO).map_err(|e| {
            eprintln!("read blkno {SUPER_BLKNO} failed: {e}");
            e.raw_os_error().unwrap_or(libc::EIO)
        })?;
        let s: SuperBlock = val_struct(&blk);
        self.super_block(&blk, &s);
        if s.flags.get() & SUPER_FLAG_META_BDEV == 0 {
            eprintln!("**** Printing from data device is not allowed ****");
            return Err(libc::EINVAL);
        }
        self.quorum_blocks();
        self.btree("mounted_clients", &s.mounted_clients, Kind::Mounted);
        self.btree("log_merge", &s.log_merge, Kind::LogMerge);
        for i in 0..2 {
            self.alloc_list(
                &format!("server_meta_avail[{i}]"),
                &s.server_meta_avail[i].ref_,
            );
        }
        for i in 0..2 {
            self.alloc_list(
                &format!("server_meta_freed[{i}]"),
                &s.server_meta_freed[i].ref_,
            );
        }
        if !skip_huge {
            for i in 0..2 {
                self.btree(
                    &format!("meta_alloc[{i}]"),
                    &s.meta_alloc[i].root,
                    Kind::Alloc,
                );
            }
            self.btree("data_alloc", &s.data_alloc.root, Kind::Alloc);
        }
        self.btree("srch_root", &s.srch_root, Kind::Srch);
        self.btree("logs_root", &s.logs_root, Kind::LogTrees);
        if !skip_huge {
            for (k, v) in self.leaf_items(&s.srch_root) {
                if k.ty == srch_type::PENDING || k.ty == srch_type::BUSY {
                    let sc: SrchCompact = val_struct(&v);
                    for inp in sc.inputs.iter().take(sc.nr as usize) {
                        self.srch_file(&inp.sfl);
                    }
                } else {
                    let f: SrchFile = val_struct(&v);
                    self.srch_file(&f);
                }
            }
        }
        for (_, v) in self.leaf_items(&s.logs_root) {
            let lt: LogTrees = val_struct(&v);
            self.alloc_list("lt_meta_avail", &lt.meta_avail.ref_);
            self.alloc_list("lt_meta_freed", &lt.meta_freed.ref_);
            self.btree("data_avail", &lt.data_avail.root, Kind::Alloc);
            self.btree("data_freed", &lt.data_freed.root, Kind::Alloc);
            self.srch_file(&lt.srch_file);
            self.bloom(&lt.bloom_ref);
            self.btree("", &lt.item_root, Kind::Fs);
        }
        if !skip_huge {
            self.btree("fs_root", &s.fs_root, Kind::Fs);
        }
        Ok(())
    }
}

/// Prints a volume to a string; the bool is true when every block decoded.
pub fn print_to_string(dev: &dyn BlockDevice, skip_huge: bool) -> (String, Result<(), i32>) {
    let mut p = Printer::new(dev);
    let r = p.volume(skip_huge);
    let r = match r {
        Ok(()) if p.errors > 0 => Err(libc::EIO),
        r => r,
    };
    (p.out, r)
}

const SPECS: &[OptSpec] = &[OptSpec {
    short: 'S',
    long: "skip-likely-huge",
    takes_arg: false,
    help: "Skip allocs, srch root and fs root to minimize output size",
}];

/// Entry point: `scoutfs print …`.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse(CMD, "META-DEV", "Print metadata structures", SPECS, argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if p.operands.len() > 1 {
        return args::usage_error(CMD, "more than one argument given");
    }
    let Some(path) = p.operands.first() else {
        return args::usage_error(CMD, "no metadata device argument given");
    };
    let skip = p.opts.iter().any(|(c, _)| *c == 'S');
    let dev = match dev::open_read_only(std::path::Path::new(path)) {
        Ok(d) => d,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            eprintln!(
                "failed to open '{path}': {} ({errno})",
                crate::strerror(errno)
            );
            return crate::failed(CMD, errno);
        }
    };
    let (out, r) = print_to_string(&dev, skip);
    print!("{out}");
    match r {
        Ok(()) => 0,
        Err(errno) => crate::failed(CMD, errno),
    }
}
