//! Shared helpers of the server tests: a minimal mkfs onto `FaultDevice`s
//! (the layout of `cli/src/mkfs.rs`, which lives in another crate), a
//! simulated mount that opens, fills and commits transactions over an
//! [`InProcessLink`], and the offline check.
//!
//! The simulated mount does what a real one does to the server's data
//! structures: it COWs xattr items into its log tree with blocks from its
//! meta_avail (through `ListAlloc`), frees old copies into its meta_freed,
//! moves data extents from data_avail to data_freed, writes and flushes its
//! blocks, then commits. Touches only the engine's public API.
#![allow(dead_code)]

use std::sync::Arc;

use drivers::{BlockDevice, FaultDevice};
use engine::alloc::{alloc_extent, free_extent, ListAlloc};
use engine::block::{BlockCache, Error};
use engine::btree::Btree;
use engine::format::alloc::{free_blkno_key, free_order_key, AllocListBlock};
use engine::format::block::seal_block;
use engine::format::btree_block::{encode_node, NodeItem};
use engine::format::items::{inode_key, meta_seq_key, xattr_key, Inode, FIRST_USER_INO, ROOT_INO};
use engine::format::key::zone;
use engine::format::log_trees::LogTrees;
use engine::format::net::{Cmd, NetGreeting, NetInodeAlloc, NetStatfs};
use engine::format::superblock::{
    AllocRoot, BtreeRoot, InetAddr, SuperBlock, SUPER_FLAG_META_BDEV,
};
use engine::format::*;
use engine::link::ServerLink;
use engine::runtime::Runtime;
use engine::server::{InProcessLink, Server, ServerOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Blocks in the first server avail list (as mkfs).
const SERVER_AVAIL_BLOCKS: u64 = (64 << 20) >> LG_BLOCK_SHIFT;

fn leaf(fsid: u64, blkno: u64, items: Vec<NodeItem>) -> Vec<u8> {
    let mut blk = vec![0u8; LG_BLOCK_SIZE];
    encode_node(0, &items, &mut blk).expect("mkfs leaf fits");
    seal_block(&mut blk, MAGIC_BTREE, fsid, blkno, 1);
    blk
}

fn root_at(blkno: u64) -> BtreeRoot {
    BtreeRoot {
        ref_: BlockRef::new(blkno, 1),
        height: 1,
        pad: [0; 7],
    }
}

fn write(dev: &FaultDevice, off: u64, bytes: &[u8]) {
    engine::check::io::write_bytes(dev, off, bytes).expect("mkfs write");
}

/// Formats a new volume the way `scoutfs mkfs -A` does, durably.
#[allow(clippy::field_reassign_with_default)]
pub fn mkfs(meta_bytes: u64, data_bytes: u64, seed: u64) -> (FaultDevice, FaultDevice) {
    let meta = FaultDevice::new(meta_bytes);
    let data = FaultDevice::new(data_bytes);
    let mut rng = SmallRng::seed_from_u64(seed);
    let fsid: u64 = rng.gen::<u64>() | 1;
    let last_meta = (meta_bytes >> LG_BLOCK_SHIFT) - 1;
    let last_data = (data_bytes >> SM_BLOCK_SHIFT) - 1;
    let mut sb = SuperBlock::default();
    sb.fmt_vers = FORMAT_VERSION_MAX.into();
    sb.uuid = rng.gen();
    sb.next_ino = FIRST_USER_INO.into();
    sb.inode_count = 1.into();
    sb.seq = 1.into();
    sb.total_meta_blocks = (last_meta + 1).into();
    sb.total_data_blocks = (last_data + 1).into();
    sb.qconf.version = 1.into();
    sb.qconf.slots[0].addr = InetAddr::v4(std::net::Ipv4Addr::new(127, 0, 0, 1), 12345);
    let mut next = META_DEV_START_BLKNO;
    let put = |blkno: u64, blk: &[u8]| write(&meta, blkno << LG_BLOCK_SHIFT, blk);

    let mut inode = Inode::new_zeroed();
    inode.next_readdir_pos = 2.into();
    inode.nlink = 2.into();
    inode.mode = 0o040755u32.into();
    let blkno = next;
    next += 1;
    put(
        blkno,
        &leaf(
            fsid,
            blkno,
            vec![
                NodeItem::new(meta_seq_key(0, ROOT_INO), vec![]),
                NodeItem::new(
                    inode_key(ROOT_INO),
                    inode.encode(FORMAT_VERSION_MAX).to_vec(),
                ),
            ],
        ),
    );
    sb.fs_root = root_at(blkno);

    let blkno = next;
    next += 1;
    let mut blk = vec![0u8; LG_BLOCK_SIZE];
    {
        let l = AllocListBlock::mut_from_bytes(&mut blk).unwrap();
        for i in 0..SERVER_AVAIL_BLOCKS as usize {
            l.blknos[i] = next.into();
            next += 1;
        }
        l.nr = (SERVER_AVAIL_BLOCKS as u32).into();
    }
    seal_block(&mut blk, MAGIC_ALLOC_LIST, fsid, blkno, 1);
    put(blkno, &blk);
    sb.server_meta_avail[0].ref_ = BlockRef::new(blkno, 1);
    sb.server_meta_avail[0].total_nr = SERVER_AVAIL_BLOCKS.into();
    sb.server_meta_avail[0].first_nr = (SERVER_AVAIL_BLOCKS as u32).into();

    let alloc_leaf = |blkno: u64, start: u64, len: u64, root: &mut AllocRoot| {
        put(
            blkno,
            &leaf(
                fsid,
                blkno,
                vec![
                    NodeItem::new(free_blkno_key(start, len), vec![]),
                    NodeItem::new(free_order_key(start, len), vec![]),
                ],
            ),
        );
        root.total_len = len.into();
        root.root = root_at(blkno);
    };
    let blkno = next;
    next += 1;
    alloc_leaf(
        blkno,
        DATA_DEV_START_BLKNO,
        last_data - DATA_DEV_START_BLKNO + 1,
        &mut sb.data_alloc,
    );
    let mut start = next + 2;
    let half = (last_meta - start + 1).div_ceil(2);
    for i in 0..2 {
        let blkno = next;
        next += 1;
        let len = half.min(last_meta - start + 1);
        alloc_leaf(blkno, start, len, &mut sb.meta_alloc[i]);
        start += half;
    }
    for i in 0..QUORUM_MAX_SLOTS as u64 {
        let mut q = vec![0u8; SM_BLOCK_SIZE];
        seal_block(&mut q, MAGIC_QUORUM, fsid, QUORUM_BLKNO + i, 1);
        write(&meta, (QUORUM_BLKNO + i) << SM_BLOCK_SHIFT, &q);
    }
    let mut sup = vec![0u8; SM_BLOCK_SIZE];
    sup[..std::mem::size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal_block(&mut sup, MAGIC_SUPER, fsid, SUPER_BLKNO, 1);
    write(&data, SUPER_BLKNO << SM_BLOCK_SHIFT, &sup);
    sb.flags = SUPER_FLAG_META_BDEV.into();
    sup[..std::mem::size_of::<SuperBlock>()].copy_from_slice(sb.as_bytes());
    seal_block(&mut sup, MAGIC_SUPER, fsid, SUPER_BLKNO, 1);
    write(&meta, SUPER_BLKNO << SM_BLOCK_SHIFT, &sup);
    engine::check::io::flush(&meta).unwrap();
    engine::check::io::flush(&data).unwrap();
    (meta, data)
}

/// The offline check's faults on a volume (empty when clean).
pub fn check(meta: &FaultDevice, data: &FaultDevice) -> Vec<String> {
    match engine::check::check_volume(meta, Some(data as &dyn BlockDevice), &mut |_| {}) {
        Ok(report) => report.messages(),
        Err(e) => vec![format!("check could not run: {e}")],
    }
}

pub fn assert_clean(meta: &FaultDevice, data: &FaultDevice, what: &str) {
    let faults = check(meta, data);
    assert!(
        faults.is_empty(),
        "{what}: check found {} faults: {:#?}",
        faults.len(),
        &faults[..faults.len().min(20)]
    );
}

pub async fn open(meta: &FaultDevice, data: &FaultDevice, rt: &Runtime) -> Arc<Server> {
    Server::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        rt.clone(),
        ServerOptions::default(),
    )
    .await
    .expect("server opens")
}

/// A simulated mount.
pub struct Client {
    pub rid: u64,
    pub link: InProcessLink,
    pub cache: Arc<BlockCache>,
    /// The log tree of the open transaction, once GET_LOG_TREES answered.
    pub lt: Option<LogTrees>,
    pub rng: SmallRng,
    /// Sequential mode: puts append at the right edge (ids counting up)
    /// with large values, deletions take the smallest keys, so trees grow
    /// and shrink by whole leaves.
    pub sequential: bool,
    pub next_id: u64,
}

impl Client {
    pub fn new(server: &Arc<Server>, meta: &FaultDevice, rt: &Runtime, rid: u64) -> Client {
        let r = rt.clone();
        Client {
            rid,
            link: InProcessLink::new(server.clone(), rid),
            cache: Arc::new(BlockCache::new(
                Arc::new(meta.clone()),
                server.fsid(),
                256,
                Arc::new(move || r.random_u64()),
            )),
            lt: None,
            rng: SmallRng::seed_from_u64(rid ^ rt.random_u64()),
            sequential: false,
            next_id: 1,
        }
    }

    pub async fn call(&self, cmd: Cmd, payload: Vec<u8>) -> Result<Vec<u8>, i32> {
        self.link.call(cmd, payload).await
    }

    pub fn greeting(&self, term: u64) -> Vec<u8> {
        let s = &self.link.server;
        NetGreeting {
            fsid: s.fsid().into(),
            fmt_vers: s.fmt_vers().into(),
            server_term: term.into(),
            rid: self.rid.into(),
            flags: 0.into(),
        }
        .as_bytes()
        .to_vec()
    }

    pub async fn greet(&self) -> Result<NetGreeting, i32> {
        let r = self.call(Cmd::Greeting, self.greeting(0)).await?;
        Ok(NetGreeting::read_from_bytes(&r).expect("greeting reply"))
    }

    pub async fn get_log_trees(&mut self) -> Result<LogTrees, i32> {
        let r = self.call(Cmd::GetLogTrees, vec![]).await?;
        let lt = LogTrees::read_from_bytes(&r).expect("log_trees reply");
        self.lt = Some(lt);
        Ok(lt)
    }

    pub async fn alloc_inodes(&self, count: u64) -> Result<NetInodeAlloc, i32> {
        let r = self
            .call(Cmd::AllocInodes, count.to_le_bytes().to_vec())
            .await?;
        Ok(NetInodeAlloc::read_from_bytes(&r).expect("inode alloc reply"))
    }

    pub async fn statfs(&self) -> Result<NetStatfs, i32> {
        let r = self.call(Cmd::Statfs, vec![]).await?;
        Ok(NetStatfs::read_from_bytes(&r).expect("statfs reply"))
    }

    pub async fn last_seq(&self) -> Result<u64, i32> {
        let r = self.call(Cmd::GetLastSeq, vec![]).await?;
        Ok(u64::from_le_bytes(r.try_into().expect("le64")))
    }

    /// Builds one transaction on the open log tree: `puts` new xattr items,
    /// `dels` deletions of existing ones, one data extent moved from avail to
    /// freed. Writes and flushes the blocks but does not commit. An
    /// allocator running dry is ENOSPC: the transaction's blocks are dropped
    /// and the open tree stays as the server gave it.
    pub async fn build(&mut self, puts: usize, dels: usize) -> Result<LogTrees, i32> {
        let base = self.lt.expect("a transaction is open");
        let mut lt = base;
        match self.build_inner(&mut lt, puts, dels).await {
            Ok(()) => {}
            Err(e) => {
                self.cache.discard_dirty();
                self.cache.drop_clean();
                return Err(e.errno());
            }
        }
        self.cache
            .write_dirty_and_flush()
            .await
            .map_err(|e| e.errno())?;
        Ok(lt)
    }

    async fn build_inner(
        &mut self,
        lt: &mut LogTrees,
        puts: usize,
        dels: usize,
    ) -> Result<(), Error> {
        let bt = Btree::new(self.cache.clone());
        let mut alloc = ListAlloc::new(self.cache.clone(), lt.meta_avail, lt.meta_freed);
        for _ in 0..puts {
            let (key, len) = if self.sequential {
                self.next_id += 1;
                (xattr_key(ROOT_INO, 1, self.next_id, 0), 800)
            } else {
                (
                    xattr_key(ROOT_INO, self.rng.gen(), self.rng.gen(), 0),
                    self.rng.gen_range(64..400),
                )
            };
            let val = vec![self.rng.gen::<u8>() | 1; len];
            bt.force(&mut lt.item_root, &mut alloc, &key, &val).await?;
        }
        for _ in 0..dels {
            let probe = if self.sequential {
                xattr_key(ROOT_INO, 0, 0, 0)
            } else {
                xattr_key(ROOT_INO, self.rng.gen(), 0, 0)
            };
            let found = match bt.next(&lt.item_root, &probe).await? {
                Some(it) if it.key.zone == zone::FS => Some(it),
                _ => bt
                    .next(&lt.item_root, &xattr_key(ROOT_INO, 0, 0, 0))
                    .await?
                    .filter(|it| it.key.zone == zone::FS),
            };
            if let Some(it) = found {
                bt.delete(&mut lt.item_root, &mut alloc, &it.key).await?;
            }
        }
        if lt.data_avail.total_len.get() > 0 {
            let want = self.rng.gen_range(1..64);
            let (start, len) = alloc_extent(&bt, &mut alloc, &mut lt.data_avail, want).await?;
            free_extent(&bt, &mut alloc, &mut lt.data_freed, start, len).await?;
        }
        lt.meta_avail = alloc.avail;
        lt.meta_freed = alloc.freed;
        lt.max_item_seq = lt.get_trans_seq;
        Ok(())
    }

    pub async fn commit(&mut self, lt: &LogTrees) -> Result<(), i32> {
        self.call(Cmd::CommitLogTrees, lt.as_bytes().to_vec())
            .await?;
        self.lt = None;
        Ok(())
    }

    /// GET_LOG_TREES (if none is open), build, commit.
    pub async fn cycle(&mut self, puts: usize, dels: usize) -> Result<(), i32> {
        if self.lt.is_none() {
            self.get_log_trees().await?;
        }
        let lt = self.build(puts, dels).await?;
        self.commit(&lt).await
    }

    pub async fn farewell(&mut self) -> Result<(), i32> {
        self.call(Cmd::Farewell, vec![]).await?;
        self.lt = None;
        Ok(())
    }
}

/// Every log_trees item of the server's stable super, read from the device.
pub async fn log_trees_of(server: &Server, meta: &FaultDevice, rt: &Runtime) -> Vec<LogTrees> {
    let r = rt.clone();
    let cache = Arc::new(BlockCache::new(
        Arc::new(meta.clone()),
        server.fsid(),
        256,
        Arc::new(move || r.random_u64()),
    ));
    let bt = Btree::new(cache);
    let sb = server.stable_super();
    let start = engine::format::items::log_trees_key(0, 0);
    let end = engine::format::items::log_trees_key(u64::MAX, u64::MAX);
    let batch = bt
        .range(&sb.logs_root, &start, &end, 100_000)
        .await
        .unwrap();
    batch
        .items
        .iter()
        .map(|it| LogTrees::read_from_bytes(&it.val).unwrap())
        .collect()
}
