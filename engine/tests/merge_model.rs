//! Log merge against a model of forest reads (reference §2.2–§2.5).
//!
//! Each test builds log trees and an `fs_root` directly with the btree over a
//! `FaultDevice`-backed cache, runs the server half (`merge::server`) and the
//! mount half (`merge::client`) in turn, committing (writing the dirty
//! blocks) between steps as the server and mounts would, and then checks:
//! * `fs_root` holds exactly what a forest read of the inputs gave before
//!   (per key the highest seq, tombstones hide, `.totl.` deltas summed);
//! * totl sums are right even when merges stop early and resume (no double
//!   counting, 38d36c9f/5e2009f9);
//! * a subtree merge that would split its root stops with REMAIN and the
//!   resumed merge finishes correctly;
//! * a key also present in an older input never goes back in time (trap 9's
//!   scenario, plus 5f577857: no input is dropped);
//! * every block handed out is, at the end, either referenced by a live tree
//!   or freed exactly once (nothing leaked, nothing double-freed), once the
//!   background freeing finished.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use drivers::{AlignedBuf, FaultDevice};
use engine::alloc::list_blknos;
use engine::block::{BlockCache, Result, SeqSource};
use engine::btree::{BoxFuture, Btree, ListItem, ListOp, MetaAllocator};
use engine::format::alloc::AllocListBlock;
use engine::format::btree::ITEM_FLAG_DELETION;
use engine::format::items::log_trees_key;
use engine::format::items::{totl_key, TotlValue};
use engine::format::log_trees::{LogMergeComplete, LogTrees, LOG_MERGE_COMP_FLAG_REMAIN};
use engine::format::superblock::{AllocListHead, BtreeRoot, SuperBlock};
use engine::format::{BlockRef, Key, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST};
use engine::merge::client::{self, MergeLimits};
use engine::merge::server::{self, CommitOutcome, ServerAllocs, StartMerge};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn seqs(seed: u64) -> SeqSource {
    let rng = std::sync::Mutex::new(SmallRng::seed_from_u64(seed));
    Arc::new(move || rng.lock().unwrap().gen())
}

const FSID: u64 = 0x3e26e;
const DEV_BLOCKS: u64 = 1 << 17;

/// Bump allocator that never reuses a blkno and records every free.
#[derive(Default)]
struct Ledger {
    next: u64,
    issued: BTreeSet<u64>,
    freed: BTreeMap<u64, u32>,
}

impl Ledger {
    fn take(&mut self) -> u64 {
        let b = self.next;
        self.next += 1;
        assert!(b < DEV_BLOCKS, "test device full");
        self.issued.insert(b);
        b
    }

    fn release(&mut self, b: u64) {
        assert!(self.issued.contains(&b), "freed {b} that was never issued");
        let n = self.freed.entry(b).or_default();
        *n += 1;
        assert_eq!(*n, 1, "block {b} freed twice");
    }
}

impl MetaAllocator for Ledger {
    fn alloc_meta(&mut self) -> BoxFuture<'_, Result<u64>> {
        let b = self.take();
        Box::pin(std::future::ready(Ok(b)))
    }

    fn free_meta(&mut self, blkno: u64) -> BoxFuture<'_, Result<()>> {
        self.release(blkno);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct Allocs {
    cache: Arc<BlockCache>,
    ledger: Ledger,
    fill_blocks: u64,
    reclaimed_lists: usize,
}

impl ServerAllocs for Allocs {
    fn meta(&mut self) -> &mut dyn MetaAllocator {
        &mut self.ledger
    }

    fn fill_list(&mut self, count: u64) -> BoxFuture<'_, Result<AllocListHead>> {
        let n = if self.fill_blocks > 0 {
            self.fill_blocks
        } else {
            count
        }
        .min(8185);
        let blkno = self.ledger.take();
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        {
            let lb = AllocListBlock::mut_from_bytes(&mut buf[..]).unwrap();
            for i in 0..n as usize {
                lb.blknos[i] = self.ledger.take().into();
            }
            lb.nr = (n as u32).into();
        }
        let seq = self.cache.new_seq();
        let r = self
            .cache
            .put_dirty(blkno, seq, MAGIC_ALLOC_LIST, buf)
            .map(|_| AllocListHead {
                ref_: BlockRef::new(blkno, seq),
                total_nr: n.into(),
                first_nr: (n as u32).into(),
                flags: 0.into(),
            });
        Box::pin(std::future::ready(r))
    }

    fn reclaim_list(&mut self, head: AllocListHead) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (entries, blocks) = list_blknos(&self.cache, &head).await?;
            for b in entries.into_iter().chain(blocks) {
                self.ledger.release(b);
                self.cache.forget(b);
            }
            self.reclaimed_lists += 1;
            Ok(())
        })
    }
}

/// One version of an item in a log tree.
#[derive(Debug, Clone)]
struct Version {
    seq: u64,
    del: bool,
    val: Vec<u8>,
}

struct World {
    btree: Btree,
    cache: Arc<BlockCache>,
    allocs: Allocs,
    sup: SuperBlock,
    seq: u64,
    /// Log trees as written: (rid, nr) → versions by key.
    logs: BTreeMap<(u64, u64), BTreeMap<Key, Version>>,
    /// What fs_root holds.
    fs: BTreeMap<Key, (u64, Vec<u8>)>,
}

fn totl_val(total: u64, count: u64) -> Vec<u8> {
    TotlValue {
        total: total.into(),
        count: count.into(),
    }
    .as_bytes()
    .to_vec()
}

fn totl_of(v: &[u8]) -> (u64, u64) {
    let t = TotlValue::read_from_bytes(v).unwrap();
    (t.total.get(), t.count.get())
}

impl World {
    fn new(seed: u64) -> World {
        let dev = FaultDevice::new(DEV_BLOCKS * LG_BLOCK_SIZE as u64);
        let cache = Arc::new(BlockCache::new(Arc::new(dev), FSID, 4096, seqs(seed)));
        let btree = Btree::new(cache.clone());
        World {
            btree,
            cache: cache.clone(),
            allocs: Allocs {
                cache,
                ledger: Ledger {
                    next: 100,
                    ..Default::default()
                },
                fill_blocks: 0,
                reclaimed_lists: 0,
            },
            sup: SuperBlock::new_zeroed(),
            seq: 10,
            logs: BTreeMap::new(),
            fs: BTreeMap::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn commit(&self) {
        block_on(self.cache.write_dirty_and_flush()).unwrap();
    }

    /// Writes `items` (sorted) into a tree with the ledger.
    fn build_tree(&mut self, items: &[(Key, Version)]) -> BtreeRoot {
        let list: Vec<ListItem> = items
            .iter()
            .map(|(k, v)| ListItem {
                key: *k,
                seq: v.seq,
                flags: if v.del { ITEM_FLAG_DELETION } else { 0 },
                op: ListOp::Put(v.val.clone()),
            })
            .collect();
        let mut root = BtreeRoot::default();
        for chunk in list.chunks(512) {
            block_on(
                self.btree
                    .insert_list(&mut root, &mut self.allocs.ledger, chunk),
            )
            .unwrap();
        }
        self.commit();
        root
    }

    fn set_fs(&mut self, items: BTreeMap<Key, (u64, Vec<u8>)>) {
        let v: Vec<(Key, Version)> = items
            .iter()
            .map(|(k, (s, val))| {
                (
                    *k,
                    Version {
                        seq: *s,
                        del: false,
                        val: val.clone(),
                    },
                )
            })
            .collect();
        self.sup.fs_root = self.build_tree(&v);
        self.fs = items;
    }

    /// Adds a finalized log tree for (rid, nr).
    fn add_log(&mut self, rid: u64, nr: u64, items: BTreeMap<Key, Version>, finalized: bool) {
        let v: Vec<(Key, Version)> = items.iter().map(|(k, v)| (*k, v.clone())).collect();
        let root = self.build_tree(&v);
        let mut lt = LogTrees::new_zeroed();
        lt.item_root = root;
        lt.rid = rid.into();
        lt.nr = nr.into();
        lt.inode_count_delta = 3u64.into();
        let bloom = self.allocs.ledger.take();
        lt.bloom_ref = BlockRef::new(bloom, 1);
        if finalized {
            let fseq = self.next_seq();
            server::finalize(&mut lt, fseq);
        }
        block_on(self.btree.insert(
            &mut self.sup.logs_root,
            &mut self.allocs.ledger,
            &log_trees_key(rid, nr),
            lt.as_bytes(),
        ))
        .unwrap();
        self.commit();
        self.logs.insert((rid, nr), items);
    }

    /// What a forest read returns now (fs_root + every log tree).
    fn forest_read(&self) -> BTreeMap<Key, Vec<u8>> {
        let mut keys: BTreeSet<Key> = self.fs.keys().copied().collect();
        for t in self.logs.values() {
            keys.extend(t.keys());
        }
        let mut out = BTreeMap::new();
        for k in keys {
            let fs = self.fs.get(&k);
            let vers: Vec<&Version> = self.logs.values().filter_map(|t| t.get(&k)).collect();
            if k.zone == 12 {
                let (mut t, mut c) = fs.map_or((0, 0), |(_, v)| totl_of(v));
                for v in &vers {
                    if fs.is_some_and(|(fs_seq, _)| *fs_seq >= v.seq) || v.del {
                        continue;
                    }
                    let (dt, dc) = totl_of(&v.val);
                    t = t.wrapping_add(dt);
                    c = c.wrapping_add(dc);
                }
                if t != 0 || c != 0 {
                    out.insert(k, totl_val(t, c));
                }
                continue;
            }
            let mut best: Option<(u64, bool, Vec<u8>)> = fs.map(|(s, v)| (*s, false, v.clone()));
            for v in vers {
                if best.as_ref().is_none_or(|b| v.seq > b.0) {
                    best = Some((v.seq, v.del, v.val.clone()));
                }
            }
            if let Some((_, false, v)) = best {
                out.insert(k, v);
            }
        }
        out
    }

    fn fs_contents(&self) -> BTreeMap<Key, Vec<u8>> {
        let b = block_on(
            self.btree
                .range(&self.sup.fs_root, &Key::MIN, &Key::MAX, usize::MAX),
        )
        .unwrap();
        assert!(b.next.is_none());
        b.items.into_iter().map(|it| (it.key, it.val)).collect()
    }

    fn fs_seqs(&self) -> BTreeMap<Key, u64> {
        let b = block_on(
            self.btree
                .range(&self.sup.fs_root, &Key::MIN, &Key::MAX, usize::MAX),
        )
        .unwrap();
        b.items.into_iter().map(|it| (it.key, it.seq)).collect()
    }

    fn start(&mut self) {
        let mut s = self.seq;
        let mut ns = || {
            s += 1;
            s
        };
        let r = block_on(server::start_merge(
            &self.btree,
            &mut self.allocs,
            &mut self.sup,
            &mut ns,
        ))
        .unwrap();
        self.seq = s;
        assert!(matches!(r, StartMerge::Started { .. }), "{r:?}");
        self.commit();
    }

    /// Runs the merge to its end: up to `parallel` requests out at once,
    /// each merged with `limits`. Returns (requests, remains).
    fn run(&mut self, parallel: usize, limits: &MergeLimits) -> (usize, usize) {
        let (mut nreq, mut nrem) = (0, 0);
        for _round in 0..100_000 {
            let mut reqs = Vec::new();
            for i in 0..parallel {
                let mut s = self.seq;
                let mut ns = || {
                    s += 1;
                    s
                };
                let r = block_on(server::get_request(
                    &self.btree,
                    &mut self.allocs,
                    &mut self.sup,
                    7 + i as u64,
                    &mut ns,
                ))
                .unwrap();
                self.seq = s;
                self.commit();
                match r {
                    Some(r) => reqs.push(r),
                    None => break,
                }
            }
            if reqs.is_empty() {
                let st = block_on(server::merge_status(&self.btree, &self.sup)).unwrap();
                if st.is_none() {
                    return (nreq, nrem);
                }
                continue;
            }
            let comps: Vec<LogMergeComplete> = reqs
                .iter()
                .map(|req| {
                    let c = block_on(client::merge_request_with(&self.btree, req, limits)).unwrap();
                    self.commit();
                    c
                })
                .collect();
            for c in comps {
                nreq += 1;
                if c.flags.get() & LOG_MERGE_COMP_FLAG_REMAIN != 0 {
                    nrem += 1;
                }
                let out = block_on(server::commit_completion(
                    &self.btree,
                    &mut self.allocs,
                    &mut self.sup,
                    c.rid.get(),
                    &c,
                ))
                .unwrap();
                assert_eq!(out, CommitOutcome::Stored);
                // A resent completion is recognized and ignored.
                let again = block_on(server::commit_completion(
                    &self.btree,
                    &mut self.allocs,
                    &mut self.sup,
                    c.rid.get(),
                    &c,
                ))
                .unwrap();
                assert_eq!(again, CommitOutcome::Unknown);
                self.commit();
            }
        }
        panic!("merge did not finish");
    }

    fn free_all(&mut self) {
        while block_on(server::free_merged_trees(
            &self.btree,
            &mut self.allocs,
            &mut self.sup,
            37,
        ))
        .unwrap()
        {
            self.commit();
        }
        self.commit();
    }

    /// Every issued block is referenced by a live tree or freed, exactly
    /// once.
    fn account(&self) {
        let mut live: BTreeMap<u64, &str> = BTreeMap::new();
        let mut mark = |b: u64, what: &'static str| {
            if let Some(prev) = live.insert(b, what) {
                panic!("block {b} referenced by {what} and {prev}");
            }
        };
        for (root, what) in [
            (self.sup.fs_root, "fs_root"),
            (self.sup.logs_root, "logs_root"),
            (self.sup.log_merge, "log_merge"),
        ] {
            for b in block_on(self.btree.check(&root)).unwrap().blknos {
                mark(b, what);
            }
        }
        let trees = block_on(engine::merge::all_log_trees(
            &self.btree,
            &self.sup.logs_root,
        ))
        .unwrap();
        for (_, lt) in trees {
            for b in block_on(self.btree.check(&lt.item_root)).unwrap().blknos {
                mark(b, "log tree");
            }
            if !lt.bloom_ref.is_null() {
                mark(lt.bloom_ref.blkno.get(), "bloom");
            }
        }
        for b in &self.allocs.ledger.issued {
            let freed = self.allocs.ledger.freed.contains_key(b);
            match (live.get(b), freed) {
                (Some(w), true) => panic!("block {b} is free but referenced by {w}"),
                (None, false) => panic!("block {b} leaked"),
                _ => {}
            }
        }
        for b in live.keys() {
            assert!(
                self.allocs.ledger.issued.contains(b),
                "block {b} never issued"
            );
        }
    }
}

fn fs_key(rng: &mut SmallRng, space: u64) -> Key {
    Key::new(16, rng.gen_range(0..space), 4, rng.gen_range(0..4), 0, 0)
}

fn random_val(rng: &mut SmallRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

/// Random log trees with overlapping keys, tombstones and totl deltas over
/// a populated fs_root; merged with small limits so merges stop and resume.
fn random_merge(seed: u64, ntrees: usize, items_per: usize, limits: MergeLimits, parallel: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut w = World::new(seed);
    if limits.dirty_limit_blocks < 100 {
        // Small request lists, so many partial merges fit the test device.
        w.allocs.fill_blocks = 48;
    }
    let space = (items_per as u64 * 2).max(8);

    let mut fs = BTreeMap::new();
    for _ in 0..items_per {
        let s = w.next_seq();
        fs.insert(fs_key(&mut rng, space), (s, random_val(&mut rng, 300)));
        let tk = totl_key(1, rng.gen_range(0..16), 0);
        fs.insert(
            tk,
            (s, totl_val(rng.gen_range(1..100), rng.gen_range(1..5))),
        );
    }
    w.set_fs(fs);

    for t in 0..ntrees {
        let mut items = BTreeMap::new();
        for _ in 0..items_per {
            let s = w.next_seq();
            if rng.gen_bool(0.3) {
                let tk = totl_key(1, rng.gen_range(0..16), 0);
                let total = rng.gen_range(0..50u64).wrapping_sub(20);
                let count = rng.gen_range(0..3u64).wrapping_sub(1);
                items.insert(
                    tk,
                    Version {
                        seq: s,
                        del: false,
                        val: totl_val(total, count),
                    },
                );
            } else {
                let del = rng.gen_bool(0.25);
                items.insert(
                    fs_key(&mut rng, space),
                    Version {
                        seq: s,
                        del,
                        val: if del {
                            vec![]
                        } else {
                            random_val(&mut rng, 400)
                        },
                    },
                );
            }
        }
        w.add_log(t as u64 % 3 + 1, t as u64, items, true);
    }
    // Seqs interleave across trees: make some older trees hold newer
    // versions than younger ones (seq order is what counts, not tree order).
    let want = w.forest_read();
    w.start();
    let (nreq, nrem) = w.run(parallel, &limits);
    assert!(nreq > 0);
    if limits.dirty_limit_blocks < 100 {
        assert!(nrem > 0, "seed {seed}: no merge stopped early");
    }
    assert_eq!(w.fs_contents(), want, "seed {seed}");
    // Inputs are gone, the merge status too.
    assert!(
        block_on(engine::merge::all_log_trees(&w.btree, &w.sup.logs_root))
            .unwrap()
            .is_empty()
    );
    w.free_all();
    w.account();
}

#[test]
fn random_trees_merge_to_forest_read() {
    for seed in 0..6 {
        random_merge(seed, 1 + seed as usize % 5, 400, MergeLimits::default(), 1);
    }
}

#[test]
fn partial_merges_resume_without_double_counting() {
    let limits = MergeLimits {
        dirty_limit_blocks: 4,
        alloc_low_blocks: 8,
        window_bytes: 4096,
    };
    for seed in 10..14 {
        random_merge(seed, 4, 600, limits, 2);
    }
}

/// Keys shared by an older and a newer input, interleaved in seq: the
/// merged result holds the newest version of every key, and every key of
/// every input survives (no input is dropped when one of its items loses).
#[test]
fn items_never_go_back_in_time() {
    let mut w = World::new(77);
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    let mut want_seq = BTreeMap::new();
    for i in 0..3000u64 {
        let k = Key::new(16, i, 4, 0, 0, 0);
        let s1 = w.next_seq();
        let s2 = w.next_seq();
        // Alternate which tree holds the newer version.
        let (old, new) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        old.insert(
            k,
            Version {
                seq: s1,
                del: false,
                val: vec![1; 40],
            },
        );
        if i % 3 != 0 {
            new.insert(
                k,
                Version {
                    seq: s2,
                    del: false,
                    val: vec![2; 40],
                },
            );
            want_seq.insert(k, s2);
        } else {
            want_seq.insert(k, s1);
        }
    }
    w.add_log(1, 1, a, true);
    w.add_log(2, 1, b, true);
    w.allocs.fill_blocks = 48;
    let want = w.forest_read();
    w.start();
    let limits = MergeLimits {
        dirty_limit_blocks: 3,
        alloc_low_blocks: 8,
        window_bytes: 8192,
    };
    w.run(1, &limits);
    assert_eq!(w.fs_contents(), want);
    assert_eq!(w.fs_seqs(), want_seq);
    w.free_all();
    w.account();
}

/// fs_root of height 3: requests carry SUBTREE; an input that fills one
/// parent's range with large items makes the subtree root need a split, the
/// merge stops with REMAIN there, the server splits it while splicing, and
/// the resumed merge finishes with every item in place.
#[test]
fn subtree_merge_stops_before_root_split_and_resumes() {
    let mut w = World::new(5);
    w.allocs.fill_blocks = 8000;
    let big = vec![7u8; 896];
    let mut fs = BTreeMap::new();
    for i in 0..32_000u64 {
        fs.insert(Key::new(16, i * 1000, 4, 0, 0, 0), (5, big.clone()));
    }
    w.set_fs(fs);
    assert_eq!(w.sup.fs_root.height, 3, "test needs a tree of height 3");
    // Many new big items inside the first parent's key range.
    let mut items = BTreeMap::new();
    for i in 0..20_000u64 {
        let s = w.next_seq();
        items.insert(
            Key::new(16, 1 + (i % 1000) * 10, 4, i, 0, 0),
            Version {
                seq: s,
                del: false,
                val: big.clone(),
            },
        );
    }
    w.add_log(1, 1, items, true);
    let want = w.forest_read();
    w.start();
    let limits = MergeLimits {
        dirty_limit_blocks: 100_000,
        alloc_low_blocks: 64,
        window_bytes: 2 << 20,
    };
    let (nreq, nrem) = w.run(2, &limits);
    assert!(nrem > 0, "no merge stopped early ({nreq} requests)");
    assert_eq!(w.fs_contents(), want);
    w.free_all();
    w.account();
}

/// An ERROR completion puts the range back and reclaims the request's
/// lists; merging afterwards still finishes correctly.
#[test]
fn error_completion_restores_range() {
    let mut w = World::new(9);
    let mut items = BTreeMap::new();
    for i in 0..500u64 {
        let s = w.next_seq();
        items.insert(
            Key::new(16, i, 4, 0, 0, 0),
            Version {
                seq: s,
                del: false,
                val: vec![3; 20],
            },
        );
    }
    w.add_log(1, 1, items, true);
    let want = w.forest_read();
    w.start();
    let mut s = w.seq;
    let mut ns = || {
        s += 1;
        s
    };
    let req = block_on(server::get_request(
        &w.btree,
        &mut w.allocs,
        &mut w.sup,
        7,
        &mut ns,
    ))
    .unwrap()
    .expect("a request");
    w.seq = s;
    let before = w.allocs.reclaimed_lists;
    let out = block_on(server::commit_completion(
        &w.btree,
        &mut w.allocs,
        &mut w.sup,
        7,
        &client::error_completion(&req),
    ))
    .unwrap();
    assert_eq!(out, CommitOutcome::Failed);
    assert_eq!(w.allocs.reclaimed_lists, before + 2);
    w.commit();
    w.run(1, &MergeLimits::default());
    assert_eq!(w.fs_contents(), want);
    w.free_all();
    w.account();
}

/// Active (unfinalized, non-empty) trees block a merge start.
#[test]
fn active_trees_block_start() {
    let mut w = World::new(3);
    let mut items = BTreeMap::new();
    items.insert(
        Key::new(16, 1, 4, 0, 0, 0),
        Version {
            seq: 20,
            del: false,
            val: vec![1],
        },
    );
    w.add_log(1, 1, items.clone(), true);
    w.add_log(2, 1, items, false);
    let mut s = w.seq;
    let mut ns = || {
        s += 1;
        s
    };
    let r = block_on(server::start_merge(
        &w.btree,
        &mut w.allocs,
        &mut w.sup,
        &mut ns,
    ))
    .unwrap();
    assert_eq!(r, StartMerge::ActiveTrees(1));
}
