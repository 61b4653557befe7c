//! The server side of a volume: the handlers mounts call over a
//! [`ServerLink`](crate::link::ServerLink), and the commit path that makes
//! their effects durable (reference §3.2, §5.3, §5.4).
//!
//! Every handler runs under one async commit lock: it changes the in-memory
//! *dirty* super and the trees hanging off it (COWing blocks through the
//! server transaction's list allocator), then [`commit`](State) writes every
//! dirty block, flushes both devices, writes the super with `hdr.seq + 1` and
//! `super.seq` = the core seq, flushes again and publishes the result as the
//! *stable* super that `GET_ROOTS` returns. The super write is the single
//! commit point; a handler replies only after its commit.
//!
//! Guarantees:
//! * Crash consistency: the durable super only ever references blocks written
//!   and flushed before it. A handler that fails before its commit (ENOSPC,
//!   a bad request, a stale block) is rolled back: its dirty blocks are
//!   dropped and the dirty super reverts to the last committed one, so a
//!   failed request changes nothing. An I/O error while committing stops the
//!   server (every later call gets EIO): whether the super landed is unknown,
//!   and only a restart from the device can tell.
//! * Double-buffered server allocators (§1.7): commit N allocates from
//!   `server_meta_avail[c]` and frees into `server_meta_freed[c]`, while it
//!   refills `server_meta_avail[1-c]` from the extent trees and drains
//!   `server_meta_freed[1-c]` (freed in commit N−1, now durable) into them;
//!   the pairs swap after the super write. A block freed in commit N is never
//!   reused in commit N.
//! * Replay (§3.2, trap 20): every handler may see the same request again
//!   after a reconnect or a new server. GREETING accepts an existing
//!   mounted_client item, GET_LOG_TREES returns the rid's tree if it is still
//!   open, COMMIT_LOG_TREES acknowledges a transaction that is already
//!   committed (or older than the open one), FAREWELL finds nothing left to
//!   reclaim. ALLOC_INODES hands out a fresh range each time (a replayed
//!   request only wastes inode numbers). GET_LOG_MERGE hands a rid its
//!   outstanding request again instead of a second one; COMMIT_LOG_MERGE
//!   acknowledges a completion whose request is already gone.
//! * Log merge (§2.4, through [`crate::merge::server`]): GET_LOG_TREES
//!   finalizes the caller's tree when it qualifies or when a finalized tree
//!   waits for a merge (and opens the next tree at nr+1), then starts the
//!   merge once no active tree remains; GET_LOG_MERGE hands out work and
//!   splices; FAREWELL cancels the rid's requests. Every commit frees a
//!   bounded piece ([`merge::FREEING_BUDGET_BLOCKS`]) of the merged trees;
//!   [`Server::background`] drives that when mounts are idle. Blocks the
//!   merge gives back (request and completion lists, old `fs_root` blocks,
//!   freed input trees) go to this commit's freed list, so none is reused
//!   before the commit that stops referencing it is durable.
//! * Space (§1.7, trap 28): client fills stop at what the extent trees hold
//!   above the server's own keep-back, with the LOW flag set on the client's
//!   meta_avail when free metadata is at or under the reserve and on its
//!   data_avail when it holds under 1 GiB. Running out is an ENOSPC reply,
//!   never a panic or a wedged commit; freed blocks come back through the
//!   freed lists and trees.
//!
//! * Coordinated finalization (§2.3): while a finalized tree waits for a
//!   merge, committed trees of idle mounts are finalized by the server
//!   itself and mounts with an open transaction are asked to commit
//!   ([`Server::take_sync_requests`] → SYNC_LOG_TREES); their trees are
//!   finalized when that commit arrives.
//! * srch (§1.9, through [`crate::srch::server`]): COMMIT_LOG_TREES rotates
//!   a mount's srch log into srch_root once it has 16 blocks, finalization
//!   and FAREWELL always do, in the commit that stores the zeroed file
//!   (trap 22); SRCH_GET/COMMIT_COMPACT hand out compactions and swap
//!   their output in; FAREWELL puts the rid's compactions back to PENDING.
//!
//! Not yet here: the batching of several handlers into one commit (each
//! handler commits on its own).
//!
//! Touches `block` (its own cache over the meta device), `btree`, `alloc`,
//! `merge` (its server half), `format`, `runtime` (spawning handlers, seqs)
//! and `link`; the devices only
//! through `drivers::BlockDevice`.

pub mod alloc;
mod handlers;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drivers::{AlignedBuf, BlockDevice};
use zerocopy::{FromBytes, IntoBytes};

use crate::alloc::ListAlloc;
use crate::block::{BlockCache, Error, Result};
use crate::btree::Btree;
use crate::format::block::{check_fixed_block, seal_block};
use crate::format::key::zone;
use crate::format::log_trees::LogTrees;
use crate::format::net::Cmd;
use crate::format::superblock::{SuperBlock, SUPER_FLAG_META_BDEV};
use crate::format::{
    Key, FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, LG_BLOCK_SHIFT, MAGIC_SUPER, SM_BLOCK_SHIFT,
    SM_BLOCK_SIZE, SUPER_BLKNO,
};
use crate::link::{CallFuture, CallResult, ServerLink};
use crate::merge;
use crate::runtime::Runtime;

/// Items read per btree range call when the server walks a tree.
const WALK_BATCH_ITEMS: usize = 256;

/// How a server is run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Clean metadata blocks the server's cache keeps.
    pub cache_blocks: usize,
    /// The quorum term this server was elected in (sent in greetings).
    pub term: u64,
    /// The `log_blocks` term of the reserve formula (§1.7).
    pub reserve_log_blocks: u64,
    /// A mount's log tree is finalized at its next GET_LOG_TREES once its
    /// item root is taller than this: 2 in the original (§2.4); tests lower
    /// it to make merges frequent.
    pub finalize_height: u8,
    /// Whether GET_LOG_TREES finalizes trees at all. Only tests that look
    /// at allocator pressure alone turn it off: such a volume never merges.
    pub finalize: bool,
    /// A mount's srch log file moves into srch_root at a commit once it
    /// has this many blocks (16 in the original, §1.9); tests lower it.
    pub srch_log_rotate_blocks: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            cache_blocks: 4096,
            term: 1,
            reserve_log_blocks: 0,
            finalize_height: 2,
            finalize: true,
            srch_log_rotate_blocks: crate::srch::LOG_ROTATE_BLOCKS,
        }
    }
}

/// Everything the commit lock guards.
struct State {
    /// The super being changed by the current handler.
    sb: SuperBlock,
    /// The last super written (what a rollback returns to).
    committed: SuperBlock,
    /// The next core seq is `core_seq + 1` (handed out by `next_seq`).
    core_seq: u64,
    committed_core_seq: u64,
    /// Which (avail, freed) pair of server lists this commit uses.
    cur: usize,
    /// The server transaction's allocator over `sb.server_meta_*[cur]`.
    alloc: ListAlloc,
    /// A handler started changing state and has neither committed nor
    /// rolled back (it was cancelled): roll back before anything else.
    dirty: bool,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.core_seq += 1;
        self.core_seq
    }
}

/// The server of one volume.
pub struct Server {
    rt: Runtime,
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    cache: Arc<BlockCache>,
    btree: Btree,
    opts: ServerOptions,
    fsid: u64,
    fmt_vers: u64,
    state: futures::lock::Mutex<State>,
    /// The last super written; never held across an `.await`.
    stable: Mutex<SuperBlock>,
    /// Nonzero once a commit failed part way: every call then fails with it.
    stopped: AtomicI32,
    /// Where each greeting came from (the network layer notes it just
    /// before the GREETING call): a first contact records it in the
    /// mounted_client item, for the fence requests of a later server.
    greeting_addrs: Mutex<std::collections::BTreeMap<u64, crate::format::superblock::InetAddr>>,
    /// Mounts to send SYNC_LOG_TREES (see [`Server::take_sync_requests`]).
    sync_wanted: Mutex<std::collections::BTreeSet<u64>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("fsid", &format_args!("{:016x}", self.fsid))
            .field("fmt_vers", &self.fmt_vers)
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish()
    }
}

/// Reads and checks one device's super (magic, crc, blkno, version, size).
pub async fn read_super(
    dev: &Arc<dyn BlockDevice>,
    is_meta: bool,
) -> std::result::Result<SuperBlock, i32> {
    let (buf, res) = dev
        .read_at(
            SUPER_BLKNO << SM_BLOCK_SHIFT,
            AlignedBuf::new(SM_BLOCK_SIZE),
        )
        .await;
    res.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    check_fixed_block(&buf, MAGIC_SUPER, SUPER_BLKNO).map_err(|_| libc::EINVAL)?;
    let (sb, _) = SuperBlock::read_from_prefix(&buf).map_err(|_| libc::EINVAL)?;
    let vers = sb.fmt_vers.get();
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&vers) {
        return Err(libc::EINVAL);
    }
    let (total, shift) = if is_meta {
        (sb.total_meta_blocks.get(), LG_BLOCK_SHIFT)
    } else {
        (sb.total_data_blocks.get(), SM_BLOCK_SHIFT)
    };
    if total > dev.size_bytes() >> shift {
        return Err(libc::EINVAL);
    }
    Ok(sb)
}

/// Every item of `root` in zone `z`, in key order.
async fn zone_items(
    btree: &Btree,
    root: &crate::format::superblock::BtreeRoot,
    z: u8,
) -> Result<Vec<crate::format::btree_block::NodeItem>> {
    let mut out = Vec::new();
    let mut key = Key::new(z, 0, 0, 0, 0, 0);
    let end = Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    loop {
        let batch = btree.range(root, &key, &end, WALK_BATCH_ITEMS).await?;
        out.extend(batch.items);
        match batch.next {
            Some(k) => key = k,
            None => return Ok(out),
        }
    }
}

fn decode_log_trees(item: &crate::format::btree_block::NodeItem) -> Result<LogTrees> {
    LogTrees::read_from_bytes(&item.val).map_err(|_| {
        Error::corrupt(format!(
            "log_trees item {} with a {} byte value",
            item.key,
            item.val.len()
        ))
    })
}

/// Every log_trees item of `sb`, in (rid, nr) order.
async fn all_log_trees(btree: &Btree, sb: &SuperBlock) -> Result<Vec<LogTrees>> {
    zone_items(btree, &sb.logs_root, zone::LOG_TREES)
        .await?
        .iter()
        .map(decode_log_trees)
        .collect()
}

impl Server {
    /// Opens the server of the volume on `meta` and `data`: reads and checks
    /// both supers (§1.3) and raises the core seq to the largest
    /// `max_item_seq` of any log tree. Errors are errnos (EINVAL for a super
    /// that doesn't belong, EIO for unreadable devices).
    pub async fn open(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        rt: Runtime,
        opts: ServerOptions,
    ) -> std::result::Result<Arc<Server>, i32> {
        let sb = read_super(&meta, true).await?;
        let dsb = read_super(&data, false).await?;
        if sb.flags.get() & SUPER_FLAG_META_BDEV == 0
            || dsb.flags.get() & SUPER_FLAG_META_BDEV != 0
            || sb.uuid != dsb.uuid
            || sb.fmt_vers != dsb.fmt_vers
            || sb.hdr.fsid != dsb.hdr.fsid
        {
            return Err(libc::EINVAL);
        }
        let fsid = sb.hdr.fsid.get();
        let seq_rt = rt.clone();
        let cache = Arc::new(BlockCache::new(
            meta.clone(),
            fsid,
            opts.cache_blocks,
            Arc::new(move || seq_rt.random_u64()),
        ));
        let btree = Btree::new(cache.clone());
        let mut core_seq = sb.seq.get();
        for lt in all_log_trees(&btree, &sb).await.map_err(|e| e.errno())? {
            core_seq = core_seq.max(lt.max_item_seq.get());
        }
        // Start with the pair holding more avail blocks (mkfs fills [0]);
        // either is safe, since everything in both freed lists is durable.
        let cur = usize::from(
            sb.server_meta_avail[1].total_nr.get() > sb.server_meta_avail[0].total_nr.get(),
        );
        let alloc = ListAlloc::new(
            cache.clone(),
            sb.server_meta_avail[cur],
            sb.server_meta_freed[cur],
        );
        let state = State {
            sb,
            committed: sb,
            core_seq,
            committed_core_seq: core_seq,
            cur,
            alloc,
            dirty: false,
        };
        Ok(Arc::new(Server {
            rt,
            meta,
            data,
            cache,
            btree,
            opts,
            fsid,
            fmt_vers: sb.fmt_vers.get(),
            state: futures::lock::Mutex::new(state),
            stable: Mutex::new(sb),
            stopped: AtomicI32::new(0),
            greeting_addrs: Mutex::new(std::collections::BTreeMap::new()),
            sync_wanted: Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    pub fn fmt_vers(&self) -> u64 {
        self.fmt_vers
    }

    /// The last super written (what GET_ROOTS and STATFS describe).
    pub fn stable_super(&self) -> SuperBlock {
        *self.stable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The core seq: the last seq handed out.
    pub async fn core_seq(&self) -> u64 {
        self.state.lock().await.core_seq
    }

    /// Runs `f` on the core seq, under the commit lock: the lock server
    /// raises it for write grants so that lock write_seqs and item seqs
    /// come from one counter (§2.1, §4.3). It never goes backwards.
    pub async fn with_core_seq<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        let mut st = self.state.lock().await;
        f(&mut st.core_seq)
    }

    /// Nonzero (an errno) once the server stopped after a failed commit.
    pub fn stopped(&self) -> i32 {
        self.stopped.load(Ordering::Acquire)
    }

    /// Stops this server for good: once this returns no request is
    /// handled and nothing is written to the metadata device again (a
    /// commit under way finishes first). Only then may the node report the
    /// server stopped: a newer leader reads the super when it starts, and
    /// a late super or block write from this one would undo commits that
    /// leader acknowledged, or overwrite blocks it allocated.
    pub async fn shut_down(&self) {
        let _ =
            self.stopped
                .compare_exchange(0, libc::ESHUTDOWN, Ordering::AcqRel, Ordering::Acquire);
        // Every commit runs under the state lock: once we hold it, none is
        // under way, and each later one sees `stopped` before it writes.
        drop(self.state.lock().await);
    }

    /// Runs one request from mount `rid` to completion. The reply is the
    /// payload of the link table in [`crate::link`], or an errno.
    pub async fn handle(&self, rid: u64, cmd: Cmd, payload: &[u8]) -> CallResult {
        let stopped = self.stopped();
        if stopped != 0 {
            return Err(stopped);
        }
        let mut st = self.state.lock().await;
        if st.dirty {
            self.rollback(&mut st);
        }
        st.dirty = true;
        let res = self.dispatch(&mut st, rid, cmd, payload).await;
        match res {
            Ok(Reply {
                payload,
                commit,
                err,
            }) => {
                if commit {
                    self.commit_or_stop(&mut st).await?;
                } else {
                    // Nothing to keep, but a lookup that failed with EEXIST
                    // or ENOENT may have COWed its path: drop that.
                    self.rollback(&mut st);
                }
                if err != 0 {
                    return Err(err);
                }
                Ok(payload)
            }
            Err(errno) => {
                self.rollback(&mut st);
                Err(errno)
            }
        }
    }

    /// Runs one commit if merged log trees are still being freed (the
    /// background freeing of §2.4 otherwise advances only with commits
    /// that mounts cause). Returns whether freeing work remains.
    pub async fn background(&self) -> std::result::Result<bool, i32> {
        let stopped = self.stopped();
        if stopped != 0 {
            return Err(stopped);
        }
        let mut st = self.state.lock().await;
        if st.dirty {
            self.rollback(&mut st);
        }
        let pending = |sb: &SuperBlock| {
            let (s, e) = (merge::freeing_key(0), merge::freeing_key(u64::MAX));
            let root = sb.log_merge;
            async move { self.btree.range(&root, &s, &e, 1).await }
        };
        let batch = pending(&st.sb).await.map_err(|e| e.errno())?;
        if batch.items.is_empty() {
            return Ok(false);
        }
        st.dirty = true;
        self.commit_or_stop(&mut st).await?;
        let batch = pending(&st.sb).await.map_err(|e| e.errno())?;
        Ok(!batch.items.is_empty())
    }

    /// Calls [`Server::background`] every `interval` until the server
    /// stops: merged trees keep being freed while every mount is idle (a
    /// full volume gets its space back without anyone writing).
    pub async fn background_loop(self: Arc<Self>, interval: Duration) {
        loop {
            self.rt.sleep(interval).await;
            while let Ok(true) = self.background().await {}
            if self.stopped() != 0 {
                return;
            }
        }
    }

    /// Commits; a failure stops the server, since whether the super landed
    /// is unknown.
    async fn commit_or_stop(&self, st: &mut State) -> std::result::Result<(), i32> {
        if let Err(e) = self.commit(st).await {
            let errno = match e.errno() {
                0 => libc::EIO,
                n => n,
            };
            self.stopped.store(errno, Ordering::Release);
            self.cache.discard_dirty();
            return Err(errno);
        }
        Ok(())
    }

    /// Throws away everything since the last commit.
    fn rollback(&self, st: &mut State) {
        self.cache.discard_dirty();
        st.sb = st.committed;
        st.core_seq = st.committed_core_seq.max(st.core_seq);
        st.alloc = ListAlloc::new(
            self.cache.clone(),
            st.sb.server_meta_avail[st.cur],
            st.sb.server_meta_freed[st.cur],
        );
        st.dirty = false;
    }

    /// The metadata figures of this volume (they follow its device size).
    fn budget(&self, sb: &SuperBlock) -> alloc::MetaBudget {
        alloc::MetaBudget::for_device(sb.total_meta_blocks.get())
    }

    /// The server's allocators as a log-merge step uses them; the caller
    /// writes `meta_alloc` back into the super afterwards.
    fn merge_allocs<'a>(&'a self, a: &'a mut ListAlloc, sb: &SuperBlock) -> alloc::MergeAllocs<'a> {
        alloc::MergeAllocs {
            btree: &self.btree,
            alloc: a,
            meta_alloc: sb.meta_alloc,
            budget: self.budget(sb),
        }
    }

    /// The rids of the mounts recorded in the last super written: after a
    /// start, the mounts that must reconnect or be fenced and reclaimed.
    pub async fn mounted_rids(&self) -> std::result::Result<Vec<u64>, i32> {
        let sb = self.stable_super();
        let items = zone_items(&self.btree, &sb.mounted_clients, zone::MOUNTED_CLIENT)
            .await
            .map_err(|e| e.errno())?;
        Ok(items.iter().map(|it| it.key.first).collect())
    }

    /// The mounts recorded in the last super written, each with whether
    /// it is a quorum member, and the votes an election needs (for the
    /// farewell rule of §5.4).
    pub async fn mounted_clients(
        &self,
    ) -> std::result::Result<(Vec<crate::node::farewell::Mounted>, usize), i32> {
        let sb = self.stable_super();
        let items = zone_items(&self.btree, &sb.mounted_clients, zone::MOUNTED_CLIENT)
            .await
            .map_err(|e| e.errno())?;
        let mut out = Vec::with_capacity(items.len());
        for it in &items {
            let mc = crate::format::items::MountedClient::read_from_bytes(&it.val)
                .map_err(|_| libc::EIO)?;
            out.push(crate::node::farewell::Mounted {
                rid: it.key.first,
                quorum: mc.flags & crate::format::items::MOUNTED_CLIENT_FLAG_QUORUM != 0,
            });
        }
        Ok((out, crate::quorum::votes_needed(&sb.qconf)))
    }

    /// Notes the address `rid`'s next GREETING comes from.
    pub fn note_greeting_addr(&self, rid: u64, addr: std::net::SocketAddrV4) {
        let a = crate::format::superblock::InetAddr::v4(*addr.ip(), addr.port());
        self.greeting_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rid, a);
    }

    /// Mounts whose open transaction holds a log merge back: the network
    /// side sends each a SYNC_LOG_TREES ("commit soon", §2.4). Asking
    /// twice is harmless: a commit of nothing changed sends nothing.
    pub fn take_sync_requests(&self) -> Vec<u64> {
        std::mem::take(&mut *self.sync_wanted.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    fn want_sync(&self, rids: Vec<u64>) {
        if !rids.is_empty() {
            self.sync_wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(rids);
        }
    }

    pub(crate) fn take_greeting_addr(
        &self,
        rid: u64,
    ) -> Option<crate::format::superblock::InetAddr> {
        self.greeting_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rid)
    }

    /// The IPv4 address recorded for mounted `rid` at its first greeting,
    /// if any (mounts of older servers and in-process links have none).
    pub async fn mounted_client_addr(&self, rid: u64) -> Option<std::net::Ipv4Addr> {
        let sb = self.stable_super();
        let item = self
            .btree
            .lookup(
                &sb.mounted_clients,
                &crate::format::items::mounted_client_key(rid),
            )
            .await
            .ok()??;
        let mc = crate::format::items::MountedClient::read_from_bytes(&item.val).ok()?;
        (mc.addr.is_v4() && mc.addr.addr.get() != 0).then(|| mc.addr.ipv4())
    }

    /// Reclaims a mount that is gone (fenced, or known dead): its open log
    /// tree is closed and finalized, its allocators returned, its merge
    /// requests cancelled and its mounted_client item deleted last
    /// (`reclaim_rid`, §5.4; the farewell handler does the same work).
    /// Idempotent.
    pub async fn reclaim_rid(&self, rid: u64) -> std::result::Result<(), i32> {
        self.handle(rid, Cmd::Farewell, &[]).await.map(|_| ())
    }

    /// Number of mounted clients in the dirty super.
    async fn nr_clients(&self, sb: &SuperBlock) -> Result<u64> {
        Ok(
            zone_items(&self.btree, &sb.mounted_clients, zone::MOUNTED_CLIENT)
                .await?
                .len() as u64,
        )
    }

    /// The commit sequence of §5.4: maintain the idle server lists, write
    /// every dirty block, flush, write the super, flush, publish, swap.
    async fn commit(&self, st: &mut State) -> Result<()> {
        if self.stopped() != 0 {
            // Shut down (a newer leader may own the device now) or failed:
            // not a block more.
            return Err(Error::Io("the server has stopped".into()));
        }
        let cur = st.cur;
        let other = 1 - cur;
        let nr_clients = self.nr_clients(&st.sb).await?;
        let budget = self.budget(&st.sb);
        let reserve = budget.reserve(nr_clients, self.opts.reserve_log_blocks);
        {
            let State { sb, alloc: a, .. } = &mut *st;
            // Background freeing of merged trees (§2.4, §5.4): a bounded
            // piece per commit, into this commit's freed list.
            let mut allocs = self.merge_allocs(a, sb);
            merge::server::free_merged_trees(
                &self.btree,
                &mut allocs,
                sb,
                merge::FREEING_BUDGET_BLOCKS,
            )
            .await?;
            sb.meta_alloc = allocs.meta_alloc;
            // Blocks freed in the previous commit are durable-free now.
            alloc::drain_list(
                &self.btree,
                a,
                &mut sb.meta_alloc,
                &mut sb.server_meta_freed[other],
            )
            .await?;
            alloc::maybe_swap_meta_alloc(&mut sb.meta_alloc, reserve);
            let have = sb.server_meta_avail[other].total_nr.get();
            if have < budget.server_fill_target {
                alloc::fill_list(
                    &self.btree,
                    a,
                    &mut sb.meta_alloc,
                    &mut sb.server_meta_avail[other],
                    budget.server_fill_target - have,
                )
                .await?;
            }
            sb.server_meta_avail[cur] = a.avail;
            sb.server_meta_freed[cur] = a.freed;
        }
        st.sb.seq = st.core_seq.into();
        let next_hdr_seq = st.sb.hdr.seq.get() + 1;
        st.sb.hdr.seq = next_hdr_seq.into();
        st.sb.hdr.magic = MAGIC_SUPER.into();
        st.sb.hdr.fsid = self.fsid.into();
        st.sb.hdr.blkno = SUPER_BLKNO.into();

        self.cache.write_dirty_and_flush().await?;
        self.data
            .flush()
            .await
            .map_err(|e| Error::Io(format!("data flush: {e}")))?;
        let mut buf = AlignedBuf::new(SM_BLOCK_SIZE);
        buf[..std::mem::size_of::<SuperBlock>()].copy_from_slice(st.sb.as_bytes());
        seal_block(&mut buf, MAGIC_SUPER, self.fsid, SUPER_BLKNO, next_hdr_seq);
        st.sb.hdr.crc = SuperBlock::read_from_prefix(&buf)
            .map(|(s, _)| s.hdr.crc)
            .unwrap_or_default();
        let (_, res) = self.meta.write_at(SUPER_BLKNO << SM_BLOCK_SHIFT, buf).await;
        res.map_err(|e| Error::Io(format!("writing the super: {e}")))?;
        self.meta
            .flush()
            .await
            .map_err(|e| Error::Io(format!("meta flush: {e}")))?;

        st.committed = st.sb;
        st.committed_core_seq = st.core_seq;
        *self.stable.lock().unwrap_or_else(|p| p.into_inner()) = st.sb;
        st.cur = other;
        st.alloc = ListAlloc::new(
            self.cache.clone(),
            st.sb.server_meta_avail[st.cur],
            st.sb.server_meta_freed[st.cur],
        );
        st.dirty = false;
        Ok(())
    }
}

/// What a handler returns: the reply payload and whether it changed state
/// that must be committed before replying. A nonzero `err` is the errno to
/// reply with once that commit is done (GET_LOG_MERGE may splice and end a
/// merge, which must be kept, and then have no work: ENOENT).
struct Reply {
    payload: Vec<u8>,
    commit: bool,
    err: i32,
}

/// A mount's in-process connection to a [`Server`]. Each call runs its
/// handler as a detached task, so a caller that gives up on a reply never
/// cancels a handler half way through its commit.
#[derive(Debug, Clone)]
pub struct InProcessLink {
    pub server: Arc<Server>,
    pub rid: u64,
}

impl InProcessLink {
    pub fn new(server: Arc<Server>, rid: u64) -> Self {
        InProcessLink { server, rid }
    }
}

impl ServerLink for InProcessLink {
    fn call(&self, cmd: Cmd, payload: Vec<u8>) -> CallFuture {
        let server = self.server.clone();
        let rid = self.rid;
        let (tx, rx) = futures::channel::oneshot::channel();
        self.server
            .rt
            .spawn(async move {
                let res = server.handle(rid, cmd, &payload).await;
                let _ = tx.send(res);
            })
            .detach();
        Box::pin(async move { rx.await.unwrap_or(Err(libc::ENOLINK)) })
    }
}
