//! The offline consistency check of a whole volume (`scoutfs check`), as a
//! library so that crash-consistency tests can run it on the image a crash
//! leaves behind.
//!
//! [`check_volume`] walks every structure reachable from the meta super
//! (trees, alloc lists, free extents, blooms, srch files, quorum blocks,
//! fs items of fs_root merged with every log tree) and reports each fault
//! with the path that reached it (`super.meta_alloc[0] -> blkno 1029 (level
//! 0)`). docs/mkfs-print-check.md lists every check.
//!
//! Guarantees: never panics on device content; never follows a ref it has
//! already followed (so no cycles); reports every meta block referenced
//! twice, every meta/data block neither referenced nor free (leaked) and
//! every block claimed twice (referenced and free, or free twice). A damaged
//! block is a fault and the walk goes on around it; only an unreadable or
//! missing super stops the check ([`CannotRun`]).
//!
//! Reads are synchronous (see [`io`]): call it from a plain thread or a test
//! body, not from an executor task that drives an io_uring ring.
//!
//! Touches `format` (decoding) and `drivers::BlockDevice` (reads); nothing
//! else of the engine, so it checks what is on the device, not what a cache
//! believes.

mod coverage;
pub mod io;
mod items;
mod walk;

use std::collections::BTreeMap;

use drivers::BlockDevice;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::format::block::check_fixed_block;
use crate::format::key::{srch_type, zone, Key};
use crate::format::log_trees::{LogMergeComplete, LogMergeFreeing, LogTrees};
use crate::format::quorum::QuorumBlock;
use crate::format::srch::{SrchCompact, SrchFile, SRCH_COMPACT_FLAG_DELETE};
use crate::format::superblock::{self, SuperBlock, SUPER_FLAG_META_BDEV};
use crate::format::{
    block, FormatError, DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, FORMAT_VERSION_MIN,
    LG_BLOCK_SIZE, MAGIC_BLOOM, MAGIC_QUORUM, MAGIC_SUPER, META_DEV_START_BLKNO, QUORUM_BLKNO,
    QUORUM_MAX_SLOTS, SM_BLOCK_SIZE, SUPER_BLKNO,
};

/// Faults of one kind (leaks, overlaps) listed before the rest are only
/// counted.
pub const MAX_RANGE_FAULTS: usize = 64;

/// What sort of problem a [`Fault`] is, for tests that accept some kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// The super, a quorum block, or device sizes disagree with the volume.
    Super,
    /// A block could not be read or failed its checks (crc, magic, fsid,
    /// blkno, seq), or a ref points outside the metadata blocks.
    Block,
    /// Structure inside or across blocks: levels, heights, key order, empty
    /// blocks, leaf hash tables, list and srch layout.
    Structure,
    /// Counters that disagree with what they count (alloc totals, both
    /// free-extent indexes, bloom bits).
    Totals,
    /// An item's value, or an invariant between items of the merged fs view.
    Item,
    /// Blocks neither referenced nor free.
    Leak,
    /// Blocks claimed twice: referenced twice, referenced and free, or free
    /// twice.
    Overlap,
    /// A claim on blocks outside the device's block range.
    OutOfRange,
}

/// One fault: the path that reached the problem and what is wrong there.
/// Displays as `path: msg`, or just `msg` for volume-wide faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The chain of structures and blocks that reached the fault; empty for
    /// faults about ranges of blocks (leaks, overlaps).
    pub path: String,
    pub msg: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}: {}", self.path, self.msg)
        }
    }
}

/// The result of a check that ran.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every fault, in the order found.
    pub faults: Vec<Fault>,
    pub fsid: u64,
    pub fmt_vers: u64,
    /// The super's totals (meta clamped to the device size).
    pub total_meta_blocks: u64,
    pub total_data_blocks: u64,
    /// Distinct metadata blocks reached through refs.
    pub meta_blocks_referenced: u64,
    /// Blocks read from the devices, super and quorum blocks included.
    pub blocks_read: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }

    /// Each fault as the CLI prints it.
    pub fn messages(&self) -> Vec<String> {
        self.faults.iter().map(|f| f.to_string()).collect()
    }
}

/// Why a check could not run at all (exit 2 of `scoutfs check`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CannotRun(pub String);

/// Checks the volume on `meta` (and `data`, when given). `progress` is called
/// with the name of each structure as the walk reaches it.
pub fn check_volume(
    meta: &dyn BlockDevice,
    data: Option<&dyn BlockDevice>,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, CannotRun> {
    let mut c = Checker::new(meta, data, progress);
    c.run()?;
    Ok(c.report())
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

fn exact<T: FromBytes + KnownLayout + Immutable + Copy>(val: &[u8]) -> Option<T> {
    T::read_from_bytes(val).ok()
}

/// The state of one check run.
struct Checker<'a> {
    meta: &'a dyn BlockDevice,
    data: Option<&'a dyn BlockDevice>,
    progress: &'a mut dyn FnMut(&str),
    faults: Vec<Fault>,
    fsid: u64,
    fmt_vers: u64,
    total_meta: u64,
    total_data: u64,
    blocks_read: u64,
    /// Names of claimants, indexed by the `who` of claims.
    names: Vec<String>,
    meta_claims: Vec<Claim>,
    data_claims: Vec<Claim>,
    /// Referenced meta blocks and who referenced them first.
    refd: BTreeMap<u64, u32>,
    fs_items: BTreeMap<Key, FsItem>,
}

impl<'a> Checker<'a> {
    fn new(
        meta: &'a dyn BlockDevice,
        data: Option<&'a dyn BlockDevice>,
        progress: &'a mut dyn FnMut(&str),
    ) -> Self {
        Checker {
            meta,
            data,
            progress,
            faults: Vec::new(),
            fsid: 0,
            fmt_vers: 0,
            total_meta: 0,
            total_data: 0,
            blocks_read: 0,
            names: Vec::new(),
            meta_claims: Vec::new(),
            data_claims: Vec::new(),
            refd: BTreeMap::new(),
            fs_items: BTreeMap::new(),
        }
    }

    fn report(self) -> Report {
        Report {
            meta_blocks_referenced: self.refd.len() as u64,
            faults: self.faults,
            fsid: self.fsid,
            fmt_vers: self.fmt_vers,
            total_meta_blocks: self.total_meta,
            total_data_blocks: self.total_data,
            blocks_read: self.blocks_read,
        }
    }

    fn fault(&mut self, kind: FaultKind, path: impl Into<String>, msg: impl Into<String>) {
        self.faults.push(Fault {
            kind,
            path: path.into(),
            msg: msg.into(),
        });
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

    fn tick(&mut self, what: &str) {
        (self.progress)(what);
    }

    fn read_lg(&mut self, blkno: u64) -> std::io::Result<Vec<u8>> {
        self.blocks_read += 1;
        io::read_lg(self.meta, blkno)
    }

    fn read_sm(&mut self, dev: &dyn BlockDevice, blkno: u64) -> std::io::Result<Vec<u8>> {
        self.blocks_read += 1;
        io::read_sm(dev, blkno)
    }

    fn read_super(
        &mut self,
        dev: &dyn BlockDevice,
        which: &str,
    ) -> Result<(SuperBlock, bool), CannotRun> {
        let blk = self
            .read_sm(dev, SUPER_BLKNO)
            .map_err(|e| CannotRun(format!("cannot read {which} super: {e}")))?;
        if blk.iter().all(|&b| b == 0) {
            return Err(CannotRun(format!("{which} device holds no scoutfs super")));
        }
        let sb = SuperBlock::read_from_prefix(&blk)
            .map_err(|_| CannotRun("short super".to_string()))?
            .0;
        let mut ok = true;
        if let Err(e) = check_fixed_block(&blk, MAGIC_SUPER, SUPER_BLKNO) {
            if matches!(e, FormatError::Magic { .. }) && block::check_crc(&blk).is_ok() {
                return Err(CannotRun(format!(
                    "{which} device holds no scoutfs super: {e}"
                )));
            }
            self.fault(
                FaultKind::Super,
                format!("{which} super (blkno {SUPER_BLKNO})"),
                e.to_string(),
            );
            ok = false;
        }
        Ok((sb, ok))
    }

    /// The supers of both devices and how they agree.
    fn supers(&mut self) -> Result<SuperBlock, CannotRun> {
        let (sb, _) = self.read_super(self.meta, "meta")?;
        self.fsid = sb.hdr.fsid.get();
        self.fmt_vers = sb.fmt_vers.get();
        let s = FaultKind::Super;
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&self.fmt_vers) {
            self.fault(
                s,
                "meta super",
                format!(
                    "format version {} outside {FORMAT_VERSION_MIN}..{FORMAT_VERSION_MAX}",
                    self.fmt_vers
                ),
            );
        }
        if sb.flags.get() & SUPER_FLAG_META_BDEV == 0 {
            self.fault(s, "meta super", "META flag not set");
        }
        self.total_meta = sb.total_meta_blocks.get();
        self.total_data = sb.total_data_blocks.get();
        let meta_size = self.meta.size_bytes();
        if self.total_meta > meta_size / LG_BLOCK_SIZE as u64 {
            self.fault(
                s,
                "meta super",
                format!(
                    "total_meta_blocks {} exceeds the {meta_size} byte device",
                    self.total_meta
                ),
            );
            self.total_meta = meta_size / LG_BLOCK_SIZE as u64;
        }
        if let Some(data) = self.data {
            let (dsb, _) = self.read_super(data, "data")?;
            if dsb.flags.get() & SUPER_FLAG_META_BDEV != 0 {
                self.fault(s, "data super", "META flag set");
            }
            if dsb.uuid != sb.uuid {
                self.fault(s, "data super", "uuid differs from the meta super");
            }
            if dsb.fmt_vers.get() != sb.fmt_vers.get() {
                self.fault(
                    s,
                    "data super",
                    format!(
                        "format version {} but meta has {}",
                        dsb.fmt_vers.get(),
                        sb.fmt_vers.get()
                    ),
                );
            }
            if dsb.hdr.fsid.get() != self.fsid {
                self.fault(
                    s,
                    "data super",
                    format!("fsid {:x} but meta has {:x}", dsb.hdr.fsid.get(), self.fsid),
                );
            }
            let dsize = data.size_bytes();
            if self.total_data > dsize / SM_BLOCK_SIZE as u64 {
                self.fault(
                    s,
                    "meta super",
                    format!(
                        "total_data_blocks {} exceeds the {dsize} byte data device",
                        self.total_data
                    ),
                );
            }
        }
        Ok(sb)
    }

    /// Quorum configuration in the super and the quorum blocks.
    fn quorum(&mut self, sb: &SuperBlock) {
        let s = FaultKind::Super;
        if sb.qconf.active_slots().count() == 0 {
            self.fault(s, "meta super", "no quorum slots configured");
        }
        for (i, slot) in sb.qconf.slots.iter().enumerate() {
            let f = slot.addr.family.get();
            if f != 0 && f != superblock::INET_FAMILY_V4 {
                self.fault(
                    s,
                    "meta super",
                    format!("quorum slot {i} has address family {f}"),
                );
            }
        }
        for i in 0..QUORUM_MAX_SLOTS as u64 {
            let blkno = QUORUM_BLKNO + i;
            let at = format!("quorum blkno {blkno} (slot {i})");
            match self.read_sm(self.meta, blkno) {
                Err(e) => self.fault(FaultKind::Block, at, format!("read failed: {e}")),
                Ok(blk) => match check_fixed_block(&blk, MAGIC_QUORUM, blkno) {
                    Err(e) => self.fault(FaultKind::Block, at, e.to_string()),
                    Ok(h) if h.fsid.get() != self.fsid => {
                        self.fault(FaultKind::Block, at, format!("fsid {:x}", h.fsid.get()))
                    }
                    Ok(_) => {
                        if QuorumBlock::read_from_prefix(&blk).is_err() {
                            self.fault(FaultKind::Block, at, "short");
                        }
                    }
                },
            }
        }
    }

    /// Every log_trees item: its allocators, bloom, srch file and items.
    fn log_trees(&mut self, sb: &SuperBlock) {
        let mut lts: Vec<(String, Key, LogTrees)> = Vec::new();
        self.btree(
            "super.logs_root",
            &sb.logs_root,
            &mut |c, ip, k, _, _, v| match exact::<LogTrees>(v) {
                Some(lt) if k.zone == zone::LOG_TREES => lts.push((ip.to_string(), *k, lt)),
                _ => c.fault(
                    FaultKind::Item,
                    ip,
                    format!("log_trees item {k} with a {} byte value", v.len()),
                ),
            },
        );
        for (ip, k, lt) in lts {
            if lt.rid.get() != k.first || lt.nr.get() != k.second {
                self.fault(
                    FaultKind::Item,
                    ip.as_str(),
                    format!(
                        "value rid {:x} nr {} but key {k}",
                        lt.rid.get(),
                        lt.nr.get()
                    ),
                );
            }
            self.alloc_list(&format!("{ip}.meta_avail"), &lt.meta_avail);
            self.alloc_list(&format!("{ip}.meta_freed"), &lt.meta_freed);
            self.alloc_root(&format!("{ip}.data_avail"), &lt.data_avail, Space::Data);
            self.alloc_root(&format!("{ip}.data_freed"), &lt.data_freed, Space::Data);
            if !lt.bloom_ref.is_null() {
                let p = format!("{ip}.bloom_ref");
                if let Some(blk) = self.read_ref(&p, &lt.bloom_ref, MAGIC_BLOOM) {
                    if let Ok((b, _)) = crate::format::bloom::BloomBlock::ref_from_prefix(&blk) {
                        let set: u64 = b.bits.iter().map(|x| x.count_ones() as u64).sum();
                        if set != b.total_set.get() {
                            self.fault(
                                FaultKind::Totals,
                                format!("{p} -> blkno {}", lt.bloom_ref.blkno.get()),
                                format!("total_set {} but {set} bits set", b.total_set.get()),
                            );
                        }
                    }
                }
            }
            self.srch_file(&format!("{ip}.srch_file"), &lt.srch_file, false);
            self.fs_tree(&format!("{ip}.item_root"), &lt.item_root);
        }
    }

    /// The srch root: srch files and compaction items.
    fn srch_root(&mut self, sb: &SuperBlock) {
        let mut files: Vec<(String, bool, SrchFile)> = Vec::new();
        let mut compacts: Vec<(String, SrchCompact)> = Vec::new();
        self.btree(
            "super.srch_root",
            &sb.srch_root,
            &mut |c, ip, k, _, _, v| {
                if k.zone != zone::SRCH {
                    return c.fault(FaultKind::Item, ip, format!("key {k} in srch_root"));
                }
                match k.ty {
                    srch_type::LOG | srch_type::BLOCKS => match exact::<SrchFile>(v) {
                        Some(f) => {
                            // The key names the file: LOG by its first
                            // blkno, BLOCKS by size and blkno.
                            let want = if k.ty == srch_type::LOG {
                                (f.ref_.blkno.get(), 0)
                            } else {
                                (f.blocks.get(), f.ref_.blkno.get())
                            };
                            if (k.second, k.third) != want || k.first != 0 || k.fourth != 0 {
                                c.fault(FaultKind::Item, ip, format!("srch file item key {k}"));
                            }
                            files.push((ip.to_string(), k.ty == srch_type::BLOCKS, f));
                        }
                        None => c.fault(
                            FaultKind::Item,
                            ip,
                            format!("srch file item with a {} byte value", v.len()),
                        ),
                    },
                    srch_type::PENDING | srch_type::BUSY => match exact::<SrchCompact>(v) {
                        Some(sc) => compacts.push((ip.to_string(), sc)),
                        None => c.fault(
                            FaultKind::Item,
                            ip,
                            format!("srch compact item with a {} byte value", v.len()),
                        ),
                    },
                    t => c.fault(FaultKind::Item, ip, format!("unknown srch type {t}")),
                }
            },
        );
        for (ip, sorted, f) in files {
            self.srch_file(&ip, &f, sorted);
        }
        for (ip, sc) in compacts {
            self.alloc_list(&format!("{ip}.meta_avail"), &sc.meta_avail);
            self.alloc_list(&format!("{ip}.meta_freed"), &sc.meta_freed);
            if sc.nr as usize > sc.inputs.len() {
                self.fault(FaultKind::Item, ip, format!("compact nr {}", sc.nr));
                continue;
            }
            // Before the swap the inputs belong to their LOG/BLOCKS items
            // and the output so far to the compaction; in the delete phase
            // the output is a BLOCKS item and the inputs wait to be freed.
            if sc.flags & SRCH_COMPACT_FLAG_DELETE != 0 {
                for (i, inp) in sc.inputs[..sc.nr as usize].iter().enumerate() {
                    // Whether they were logs is no longer recorded.
                    self.srch_file(&format!("{ip}.in[{i}]"), &inp.sfl, false);
                }
            } else {
                self.srch_file(&format!("{ip}.out"), &sc.out, true);
            }
        }
    }

    /// Mounted clients and log merge items.
    fn mounts_and_merges(&mut self, sb: &SuperBlock) {
        self.btree(
            "super.mounted_clients",
            &sb.mounted_clients,
            &mut |c, ip, k, _, _, v| {
                if k.zone != zone::MOUNTED_CLIENT || v.len() != 40 {
                    c.fault(
                        FaultKind::Item,
                        ip,
                        format!("mounted client item {k} with a {} byte value", v.len()),
                    );
                }
            },
        );
        let mut completes = Vec::new();
        let mut freeing = Vec::new();
        self.btree(
            "super.log_merge",
            &sb.log_merge,
            &mut |c, ip, k, _, _, v| match k.zone {
                zone::LOG_MERGE_COMPLETE => match exact::<LogMergeComplete>(v) {
                    Some(comp) => completes.push((ip.to_string(), comp)),
                    None => c.fault(
                        FaultKind::Item,
                        ip,
                        format!("log merge complete with a {} byte value", v.len()),
                    ),
                },
                zone::LOG_MERGE_FREEING => match exact::<LogMergeFreeing>(v) {
                    Some(fr) => freeing.push((ip.to_string(), fr)),
                    None => c.fault(
                        FaultKind::Item,
                        ip,
                        format!("log merge freeing with a {} byte value", v.len()),
                    ),
                },
                _ => {}
            },
        );
        // A completion waiting for its splice (the mounts left before
        // asking for more merge work): its subtree is in use, and what its
        // merge freed is fs_root's until the splice.
        for (ip, comp) in completes {
            self.alloc_list(&format!("{ip}.meta_avail"), &comp.meta_avail);
            self.completion_tree(&format!("{ip}.root"), &comp.root);
            self.pending_freed_list(&format!("{ip}.meta_freed"), &comp.meta_freed);
        }
        // A merged tree the server had not finished freeing when it
        // stopped (the next server goes on): its blocks from the item's
        // key on are still allocated.
        for (ip, fr) in freeing {
            match Key::from_disk(&fr.key) {
                Ok(from) => self.freeing_tree(&format!("{ip}.root"), &fr.root, &from),
                Err(e) => self.fault(FaultKind::Item, ip, format!("freeing key: {e}")),
            }
        }
    }

    /// Runs the whole check.
    fn run(&mut self) -> Result<(), CannotRun> {
        self.tick("super");
        let sb = self.supers()?;
        self.quorum(&sb);
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
        self.log_trees(&sb);
        self.srch_root(&sb);
        self.mounts_and_merges(&sb);
        self.fs_cross();
        self.tick("coverage");
        self.coverage(Space::Meta, META_DEV_START_BLKNO, self.total_meta);
        self.coverage(Space::Data, DATA_DEV_START_BLKNO, self.total_data);
        Ok(())
    }
}
