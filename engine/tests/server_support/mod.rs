//! Shared helpers of the server tests: mkfs onto `FaultDevice`s (through
//! [`engine::mkfs`], the code behind `scoutfs mkfs`), a simulated mount
//! that opens, fills and commits transactions over an [`InProcessLink`],
//! and the offline check.
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
use engine::format::items::{xattr_key, ROOT_INO};
use engine::format::key::zone;
use engine::format::log_trees::LogTrees;
use engine::format::net::{Cmd, NetGreeting, NetInodeAlloc, NetStatfs};
use engine::link::ServerLink;
use engine::mkfs::{format_volume, MkfsOptions};
use engine::runtime::Runtime;
use engine::server::{InProcessLink, Server, ServerOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, IntoBytes};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Formats a new volume with [`engine::mkfs`] (what `scoutfs mkfs -A`
/// writes), durably; fsid, uuid and root inode time come from `seed`.
pub fn mkfs(meta_bytes: u64, data_bytes: u64, seed: u64) -> (FaultDevice, FaultDevice) {
    let meta = FaultDevice::new(meta_bytes);
    let data = FaultDevice::new(data_bytes);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut opts = MkfsOptions {
        fsid: Some(rng.gen::<u64>() | 1),
        uuid: Some(rng.gen()),
        now: Some((0, 0)),
        ..MkfsOptions::default()
    };
    opts.quorum_slots[0] = Some((std::net::Ipv4Addr::new(127, 0, 0, 1), 12345));
    format_volume(&meta, &data, &opts).expect("mkfs");
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

/// A caller with every privilege.
pub fn root_ctx() -> engine::fs::Ctx {
    engine::fs::Ctx {
        uid: 0,
        gid: 0,
        umask: 0o022,
        cap_sys_admin: true,
    }
}

/// Opens a mount of the devices over `link` (already greeted, or greeting
/// by itself) and the filesystem on it, with a clock that counts seconds.
pub async fn mount_fs(
    link: Arc<dyn ServerLink>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
    opts: engine::trans::MountOptions,
) -> (Arc<engine::trans::Mount>, engine::fs::Fs) {
    let mount = engine::trans::Mount::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        link,
        rt.clone(),
        rid,
        opts,
    )
    .await
    .expect("mount opens");
    let mount = Arc::new(mount);
    let clock = std::sync::atomic::AtomicU64::new(100);
    let fs = engine::fs::Fs::new(
        mount.clone(),
        mount.clone(),
        Arc::new(data.clone()),
        mount.fmt_vers(),
        Box::new(move || engine::fs::Time {
            sec: clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            nsec: 0,
        }),
    );
    (mount, fs)
}

/// Greets `server` as `rid` and opens a mount over an in-process link with
/// no commit timer and no retries (tests sync and merge by hand); the
/// merge worker runs every `merge_interval` if given.
pub async fn mount_in_process(
    server: &Arc<Server>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
    merge_interval: Option<std::time::Duration>,
) -> engine::trans::Mount {
    Client::new(server, meta, rt, rid)
        .greet()
        .await
        .expect("greeting");
    engine::trans::Mount::open(
        Arc::new(meta.clone()),
        Arc::new(data.clone()),
        Arc::new(InProcessLink::new(server.clone(), rid)),
        rt.clone(),
        rid,
        engine::trans::MountOptions {
            commit_interval: None,
            commit_retry: None,
            merge_interval,
            ..engine::trans::MountOptions::default()
        },
    )
    .await
    .expect("mount opens")
}
