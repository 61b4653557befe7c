//! A small in-memory stand-in for the server, for the mount-side tests
//! (item cache, forest, transactions). Not a test file by itself: the
//! `item_*`, `forest_*`, `trans_*` and `client_*` tests include it with
//! `#[path]`.
//!
//! It keeps its state in memory but writes real blocks to the metadata
//! device: the `logs_root` btree of `log_trees` items, the mounts'
//! `meta_avail` lists and `data_avail` extent trees, and any trees a test
//! builds by hand. Every block it allocates comes from a bump allocator and
//! is never reused, so nothing it hands out can collide. `GET_ROOTS` returns
//! the roots of its last flush unless a test queued others or armed a gate.
//! Handlers are replay-safe the way §3.2 asks.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use drivers::{AlignedBuf, BlockDevice, FaultDevice};
use engine::alloc::free_extent;
use engine::block::{BlockCache, Result as BResult, SeqSource};
use engine::btree::{BoxFuture, Btree, ListItem, ListOp, MetaAllocator};
use engine::format::alloc::AllocListBlock;
use engine::format::block::seal_block;
use engine::format::bloom::{bloom_bits, BloomBlock};
use engine::format::items::log_trees_key;
use engine::format::log_trees::{LogTrees, LOG_TREES_FLAG_FINALIZED};
use engine::format::net::{Cmd, NetInodeAlloc, NetRoots};
use engine::format::superblock::{AllocListHead, AllocRoot, BtreeRoot, SuperBlock, ALLOC_FLAG_LOW};
use engine::format::{
    BlockRef, Key, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST, MAGIC_BLOOM, MAGIC_SUPER, SM_BLOCK_SHIFT,
    SM_BLOCK_SIZE, SUPER_BLKNO,
};
use engine::link::{CallFuture, ServerLink};
use futures::channel::oneshot;
use zerocopy::{FromBytes, IntoBytes};

pub const FSID: u64 = 0x5c0f_75fa_ce00_0001;
/// 64 GiB of sparse metadata device: 1 Mi large blocks.
pub const META_BYTES: u64 = 64 << 30;
pub const DATA_BYTES: u64 = 1 << 30;
/// Blocks the server itself allocates from.
const SERVER_BLKNO_START: u64 = 100;
const SERVER_BLKNO_END: u64 = 200_000;
/// Blocks handed to mounts in meta_avail lists.
const MOUNT_BLKNO_START: u64 = 200_000;
/// Data blocks each rid gets.
pub const DATA_BLOCKS_PER_RID: u64 = 10_000;
const DATA_BLKNO_START: u64 = 64;

/// Never reuses a block: frees are ignored.
#[derive(Debug)]
pub struct BumpAlloc {
    pub next: u64,
    pub end: u64,
}

impl MetaAllocator for BumpAlloc {
    fn alloc_meta(&mut self) -> BoxFuture<'_, BResult<u64>> {
        Box::pin(async move {
            assert!(self.next < self.end, "fake server out of blocks");
            self.next += 1;
            Ok(self.next - 1)
        })
    }

    fn free_meta(&mut self, _blkno: u64) -> BoxFuture<'_, BResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

pub fn seqs(seed: u64) -> SeqSource {
    let s = std::sync::Mutex::new(seed | 1);
    Arc::new(move || {
        let mut x = s.lock().unwrap();
        // xorshift64*
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A metadata device with just a super block (fsid, format version 2).
pub fn make_meta_device() -> Arc<FaultDevice> {
    let dev = FaultDevice::new(META_BYTES);
    let sb = SuperBlock {
        fmt_vers: 2.into(),
        ..Default::default()
    };
    let mut buf = AlignedBuf::new(SM_BLOCK_SIZE);
    buf[..std::mem::size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal_block(&mut buf, MAGIC_SUPER, FSID, SUPER_BLKNO, 1);
    let dev = Arc::new(dev);
    let d2 = dev.clone();
    block_on(async move {
        let (_, r) = d2.write_at(SUPER_BLKNO << SM_BLOCK_SHIFT, buf).await;
        r.unwrap();
        d2.flush().await.unwrap();
    });
    dev
}

pub struct State {
    pub seq: u64,
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub logs: BTreeMap<(u64, u64), LogTrees>,
    pub next_ino: u64,
    pub alloc: BumpAlloc,
    pub mount_next: u64,
    pub meta_per_trans: u64,
    pub stable: NetRoots,
    /// Roots GET_ROOTS returns instead of the stable ones, first first.
    pub roots_queue: VecDeque<NetRoots>,
    /// The next GET_ROOTS waits for this before replying.
    pub gate: Option<oneshot::Receiver<()>>,
    pub gate_taken: bool,
    pub calls: BTreeMap<u8, u64>,
    /// Fail the next N COMMIT_LOG_TREES with EIO.
    pub fail_commits: u64,
}

pub struct FakeServer {
    pub dev: Arc<FaultDevice>,
    pub cache: Arc<BlockCache>,
    pub btree: Btree,
    pub st: futures::lock::Mutex<State>,
}

impl FakeServer {
    pub fn new(dev: Arc<FaultDevice>) -> Arc<FakeServer> {
        let cache = Arc::new(BlockCache::new(dev.clone(), FSID, 1024, seqs(7)));
        Arc::new(FakeServer {
            dev,
            btree: Btree::new(cache.clone()),
            cache,
            st: futures::lock::Mutex::new(State {
                seq: 1,
                fs_root: BtreeRoot::default(),
                logs_root: BtreeRoot::default(),
                logs: BTreeMap::new(),
                next_ino: 4096,
                alloc: BumpAlloc {
                    next: SERVER_BLKNO_START,
                    end: SERVER_BLKNO_END,
                },
                mount_next: MOUNT_BLKNO_START,
                meta_per_trans: 2048,
                stable: NetRoots::default(),
                roots_queue: VecDeque::new(),
                gate: None,
                gate_taken: false,
                calls: BTreeMap::new(),
                fail_commits: 0,
            }),
        })
    }

    pub fn link(self: &Arc<Self>, rid: u64) -> Arc<dyn ServerLink> {
        Arc::new(FakeLink {
            server: self.clone(),
            rid,
        })
    }

    async fn flush(&self, st: &mut State) {
        self.cache.write_dirty_and_flush().await.unwrap();
        st.stable = NetRoots {
            fs_root: st.fs_root,
            logs_root: st.logs_root,
            srch_root: BtreeRoot::default(),
        };
    }

    async fn store_lt(&self, st: &mut State, lt: LogTrees) {
        let key = log_trees_key(lt.rid.get(), lt.nr.get());
        let mut root = st.logs_root;
        self.btree
            .force(&mut root, &mut st.alloc, &key, lt.as_bytes())
            .await
            .unwrap();
        st.logs_root = root;
        st.logs.insert((lt.rid.get(), lt.nr.get()), lt);
    }

    /// A fresh list of `nr` never-used blocks.
    fn new_list(&self, st: &mut State, nr: u64) -> AllocListHead {
        let blkno = st.mount_next;
        let first = blkno + 1;
        st.mount_next += nr + 1;
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        {
            let lb = AllocListBlock::mut_from_bytes(&mut buf[..]).unwrap();
            for i in 0..nr {
                lb.blknos[i as usize] = (first + i).into();
            }
            lb.nr = (nr as u32).into();
        }
        let seq = self.cache.new_seq();
        self.cache
            .put_dirty(blkno, seq, MAGIC_ALLOC_LIST, buf)
            .unwrap();
        AllocListHead {
            ref_: BlockRef::new(blkno, seq),
            total_nr: nr.into(),
            first_nr: (nr as u32).into(),
            flags: 0.into(),
        }
    }

    async fn get_log_trees(&self, rid: u64) -> Vec<u8> {
        let mut st = self.st.lock().await;
        let last = st
            .logs
            .range((rid, 0)..=(rid, u64::MAX))
            .next_back()
            .map(|(_, lt)| *lt);
        let mut lt = match last {
            Some(lt) if lt.flags.get() & LOG_TREES_FLAG_FINALIZED == 0 => lt,
            other => {
                let nr = other.map_or(1, |lt| lt.nr.get() + 1);
                let mut lt = LogTrees::new_zeroed();
                lt.rid = rid.into();
                lt.nr = nr.into();
                let mut data = AllocRoot::default();
                let start = DATA_BLKNO_START + rid * DATA_BLOCKS_PER_RID;
                free_extent(
                    &self.btree,
                    &mut st.alloc,
                    &mut data,
                    start,
                    DATA_BLOCKS_PER_RID,
                )
                .await
                .unwrap();
                // Like the real server (§12): under 1 GiB after the fill is
                // LOW, so the mount doesn't commit early hoping for more.
                data.flags = ALLOC_FLAG_LOW.into();
                lt.data_avail = data;
                lt
            }
        };
        if lt.get_trans_seq.get() > lt.commit_trans_seq.get() {
            // Replay of an open transaction: the same tree again.
            return lt.as_bytes().to_vec();
        }
        if lt.meta_avail.total_nr.get() < st.meta_per_trans / 2 {
            let nr = st.meta_per_trans;
            lt.meta_avail = self.new_list(&mut st, nr);
        }
        // Freed blocks are simply leaked: the bump allocators never reuse.
        lt.meta_freed = AllocListHead::default();
        st.seq += 1;
        lt.get_trans_seq = st.seq.into();
        self.store_lt(&mut st, lt).await;
        self.flush(&mut st).await;
        lt.as_bytes().to_vec()
    }

    async fn commit_log_trees(&self, rid: u64, payload: &[u8]) -> Result<Vec<u8>, i32> {
        let mut st = self.st.lock().await;
        if st.fail_commits > 0 {
            st.fail_commits -= 1;
            return Err(libc::EIO);
        }
        let mut lt = LogTrees::read_from_bytes(payload).map_err(|_| libc::EINVAL)?;
        let Some(cur) = st.logs.get(&(rid, lt.nr.get())).copied() else {
            return Err(libc::EINVAL);
        };
        if cur.commit_trans_seq == lt.get_trans_seq {
            return Ok(Vec::new());
        }
        if cur.get_trans_seq != lt.get_trans_seq || lt.rid.get() != rid {
            return Err(libc::EINVAL);
        }
        lt.commit_trans_seq = lt.get_trans_seq;
        self.store_lt(&mut st, lt).await;
        self.flush(&mut st).await;
        Ok(Vec::new())
    }

    async fn get_roots(&self) -> Vec<u8> {
        let (gate, roots) = {
            let mut st = self.st.lock().await;
            let gate = st.gate.take();
            if gate.is_some() {
                st.gate_taken = true;
            }
            let roots = st.roots_queue.pop_front().unwrap_or(st.stable);
            (gate, roots)
        };
        if let Some(g) = gate {
            let _ = g.await;
        }
        roots.as_bytes().to_vec()
    }

    pub async fn handle(&self, rid: u64, cmd: Cmd, payload: Vec<u8>) -> Result<Vec<u8>, i32> {
        *self.st.lock().await.calls.entry(cmd as u8).or_default() += 1;
        match cmd {
            Cmd::GetLogTrees => Ok(self.get_log_trees(rid).await),
            Cmd::CommitLogTrees => self.commit_log_trees(rid, &payload).await,
            Cmd::GetRoots => Ok(self.get_roots().await),
            Cmd::AllocInodes => {
                let count = u64::from_le_bytes(payload[..8].try_into().unwrap());
                let mut st = self.st.lock().await;
                let ia = NetInodeAlloc {
                    ino: st.next_ino.into(),
                    nr: count.into(),
                };
                st.next_ino += count;
                Ok(ia.as_bytes().to_vec())
            }
            _ => Err(libc::EINVAL),
        }
    }

    pub async fn calls(&self, cmd: Cmd) -> u64 {
        self.st
            .lock()
            .await
            .calls
            .get(&(cmd as u8))
            .copied()
            .unwrap_or(0)
    }

    // ---- hand-built forests ---------------------------------------------

    /// A tree of `(key, seq, flags, val)` items, written and flushed.
    pub async fn build_tree(&self, items: &[(Key, u64, u8, Vec<u8>)]) -> BtreeRoot {
        let mut sorted = items.to_vec();
        sorted.sort_by_key(|i| i.0);
        let list: Vec<ListItem> = sorted
            .into_iter()
            .map(|(key, seq, flags, val)| ListItem {
                key,
                seq,
                flags,
                op: ListOp::Put(val),
            })
            .collect();
        let mut st = self.st.lock().await;
        let mut root = BtreeRoot::default();
        self.btree
            .insert_list(&mut root, &mut st.alloc, &list)
            .await
            .unwrap();
        self.cache.write_dirty_and_flush().await.unwrap();
        root
    }

    /// A bloom block with the bits of `lock_starts`, written and flushed.
    pub async fn build_bloom(&self, lock_starts: &[Key]) -> BlockRef {
        let mut st = self.st.lock().await;
        let blkno = st.alloc.alloc_meta().await.unwrap();
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        {
            let bb = BloomBlock::mut_from_bytes(&mut buf[..]).unwrap();
            for k in lock_starts {
                for b in bloom_bits(k) {
                    bb.set_bit(b);
                }
            }
        }
        let seq = self.cache.new_seq();
        self.cache.put_dirty(blkno, seq, MAGIC_BLOOM, buf).unwrap();
        self.cache.write_dirty_and_flush().await.unwrap();
        BlockRef::new(blkno, seq)
    }

    /// Adds or replaces a committed log tree item.
    pub async fn put_log_tree(&self, rid: u64, nr: u64, item_root: BtreeRoot, bloom: BlockRef) {
        let mut st = self.st.lock().await;
        let mut lt = LogTrees::new_zeroed();
        lt.rid = rid.into();
        lt.nr = nr.into();
        lt.item_root = item_root;
        lt.bloom_ref = bloom;
        lt.get_trans_seq = 1.into();
        lt.commit_trans_seq = 1.into();
        lt.flags = LOG_TREES_FLAG_FINALIZED.into();
        self.store_lt(&mut st, lt).await;
        self.flush(&mut st).await;
    }

    pub async fn set_fs_root(&self, root: BtreeRoot) {
        let mut st = self.st.lock().await;
        st.fs_root = root;
        self.flush(&mut st).await;
    }

    pub async fn stable_roots(&self) -> NetRoots {
        self.st.lock().await.stable
    }

    /// Overwrites block `r.blkno` on the device with a valid block of
    /// another seq: whoever follows `r` now gets ESTALE.
    pub async fn rewrite_block(&self, r: &BlockRef, magic: u32) {
        let off = r.blkno.get() * LG_BLOCK_SIZE as u64;
        let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
        let (b, res) = self.dev.read_at(off, buf).await;
        res.unwrap();
        buf = b;
        seal_block(&mut buf, magic, FSID, r.blkno.get(), r.seq.get() ^ 0x5a5a);
        let (_, res) = self.dev.write_at(off, buf).await;
        res.unwrap();
        self.dev.flush().await.unwrap();
        self.cache.forget(r.blkno.get());
    }
}

use zerocopy::FromZeros;

/// Polls a future on this thread (device setup outside any runtime).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake};
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

struct FakeLink {
    server: Arc<FakeServer>,
    rid: u64,
}

impl ServerLink for FakeLink {
    fn call(&self, cmd: Cmd, payload: Vec<u8>) -> CallFuture {
        let server = self.server.clone();
        let rid = self.rid;
        Box::pin(async move { server.handle(rid, cmd, payload).await })
    }
}
