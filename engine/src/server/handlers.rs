//! The request handlers of the server (reference §5.3), each run under the
//! commit lock by [`Server::handle`](super::Server::handle).
//!
//! A handler decodes its payload, changes the dirty super and its trees
//! through the server transaction's allocator, and returns the reply plus
//! whether a commit is needed before replying. It returns an errno on
//! failure, after which the caller rolls everything back; so a handler may
//! fail half way without leaving partial state behind. Each one is written
//! to be run again with the same request (§3.2, trap 20): see the module
//! comment of [`super`].
//!
//! Touches the dirty super and its trees (`btree`, `alloc`, `format`) only.

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::alloc::{
    drain_list, empty_extents, fill_list, meta_extent_total, move_extents, set_list_low, DataFill,
};
use super::{all_log_trees, decode_log_trees, Reply, Server, State};
use crate::alloc::set_low_flag;
use crate::block::Error;
use crate::format::items::{
    log_trees_key, mounted_client_key, MountedClient, MOUNTED_CLIENT_FLAG_QUORUM,
};
use crate::format::key::zone;
use crate::format::log_trees::{
    LogMergeComplete, LogMergeRequest, LogTrees, LOG_TREES_FLAG_FINALIZED,
};
use crate::format::net::{
    Cmd, NetGreeting, NetInodeAlloc, NetRoots, NetStatfs, GREETING_FLAG_QUORUM,
};
use crate::format::srch::SrchCompact;
use crate::format::superblock::{AllocListHead, AllocRoot, SuperBlock, ALLOC_FLAG_LOW};
use crate::merge;
use crate::merge::server::CommitOutcome;
use crate::srch;

type HResult = std::result::Result<Reply, i32>;

fn errno(e: Error) -> i32 {
    e.errno()
}

fn reply(payload: Vec<u8>, commit: bool) -> HResult {
    Ok(Reply {
        payload,
        commit,
        err: 0,
    })
}

/// Replies `err`, after committing first when `commit` is set.
fn reply_err(err: i32, commit: bool) -> HResult {
    Ok(Reply {
        payload: Vec::new(),
        commit,
        err,
    })
}

/// A log tree is open while its transaction hasn't committed.
fn is_open(lt: &LogTrees) -> bool {
    lt.get_trans_seq.get() > lt.commit_trans_seq.get()
}

fn is_finalized(lt: &LogTrees) -> bool {
    lt.flags.get() & LOG_TREES_FLAG_FINALIZED != 0
}

/// Whether a log tree holds anything a merge must read.
fn has_content(lt: &LogTrees) -> bool {
    !lt.item_root.is_empty() || !lt.bloom_ref.is_null() || !lt.srch_file.ref_.is_null()
}

fn new_log_trees(rid: u64, nr: u64) -> LogTrees {
    let mut lt = LogTrees::new_zeroed();
    lt.rid = rid.into();
    lt.nr = nr.into();
    lt
}

impl Server {
    pub(super) async fn dispatch(
        &self,
        st: &mut State,
        rid: u64,
        cmd: Cmd,
        payload: &[u8],
    ) -> HResult {
        match cmd {
            Cmd::Greeting => self.greeting(st, rid, payload).await,
            Cmd::AllocInodes => self.alloc_inodes(st, payload),
            Cmd::GetLogTrees => self.get_log_trees(st, rid).await,
            Cmd::CommitLogTrees => self.commit_log_trees(st, rid, payload).await,
            Cmd::GetRoots => self.get_roots(st),
            Cmd::GetLastSeq => self.get_last_seq(st).await,
            Cmd::Statfs => self.statfs(st).await,
            Cmd::Farewell => self.farewell(st, rid).await,
            Cmd::GetLogMerge => self.get_log_merge(st, rid).await,
            Cmd::CommitLogMerge => self.commit_log_merge(st, rid, payload).await,
            Cmd::SrchGetCompact => self.srch_get_compact(st, rid).await,
            Cmd::SrchCommitCompact => self.srch_commit_compact(st, rid, payload).await,
            _ => Err(libc::EINVAL),
        }
    }

    /// The rid's log_trees item with the highest nr.
    async fn newest_log_trees(
        &self,
        sb: &SuperBlock,
        rid: u64,
    ) -> std::result::Result<Option<LogTrees>, i32> {
        let item = self
            .btree
            .prev(&sb.logs_root, &log_trees_key(rid, u64::MAX))
            .await
            .map_err(errno)?;
        match item {
            Some(it) if it.key.zone == zone::LOG_TREES && it.key.first == rid => {
                decode_log_trees(&it).map(Some).map_err(errno)
            }
            _ => Ok(None),
        }
    }

    async fn is_mounted(&self, sb: &SuperBlock, rid: u64) -> std::result::Result<bool, i32> {
        Ok(self
            .btree
            .lookup(&sb.mounted_clients, &mounted_client_key(rid))
            .await
            .map_err(errno)?
            .is_some())
    }

    /// GREETING: check the volume and version; on first contact (term 0)
    /// record the mount (an existing item is a replay, 7d67489b).
    async fn greeting(&self, st: &mut State, rid: u64, payload: &[u8]) -> HResult {
        let g = NetGreeting::read_from_bytes(payload).map_err(|_| libc::EINVAL)?;
        if g.fsid.get() != self.fsid || g.fmt_vers.get() != self.fmt_vers || g.rid.get() != rid {
            return Err(libc::EINVAL);
        }
        let mut commit = false;
        if g.server_term.get() == 0 {
            let mut mc = MountedClient::new_zeroed();
            if g.flags.get() & GREETING_FLAG_QUORUM != 0 {
                mc.flags = MOUNTED_CLIENT_FLAG_QUORUM;
            }
            if let Some(addr) = self.take_greeting_addr(rid) {
                mc.addr = addr;
            }
            let State { sb, alloc, .. } = st;
            match self
                .btree
                .insert(
                    &mut sb.mounted_clients,
                    alloc,
                    &mounted_client_key(rid),
                    mc.as_bytes(),
                )
                .await
            {
                Ok(()) => commit = true,
                Err(Error::Exists) => {}
                Err(e) => return Err(errno(e)),
            }
        } else if !self.is_mounted(&st.sb, rid).await? {
            // Reconnecting after being reclaimed: the mount is gone.
            return Err(libc::ENOLINK);
        }
        let out = NetGreeting {
            fsid: self.fsid.into(),
            fmt_vers: self.fmt_vers.into(),
            server_term: self.opts.term.into(),
            rid: rid.into(),
            flags: 0.into(),
        };
        reply(out.as_bytes().to_vec(), commit)
    }

    /// ALLOC_INODES: the next `count` inode numbers (fewer, down to 0, when
    /// the numbers run out).
    fn alloc_inodes(&self, st: &mut State, payload: &[u8]) -> HResult {
        let count = <[u8; 8]>::try_from(payload)
            .map(u64::from_le_bytes)
            .map_err(|_| libc::EINVAL)?;
        let ino = st.sb.next_ino.get();
        let nr = count.min(u64::MAX - ino);
        st.sb.next_ino = (ino + nr).into();
        let out = NetInodeAlloc {
            ino: ino.into(),
            nr: nr.into(),
        };
        reply(out.as_bytes().to_vec(), nr > 0)
    }

    /// GET_LOG_TREES: open the rid's next transaction (see the module
    /// comment of [`super`]).
    async fn get_log_trees(&self, st: &mut State, rid: u64) -> HResult {
        if !self.is_mounted(&st.sb, rid).await? {
            return Err(libc::ENOLINK);
        }
        let newest = self.newest_log_trees(&st.sb, rid).await?;
        if let Some(lt) = newest.filter(is_open) {
            // Replay: the transaction this request opened is still open.
            return reply(lt.as_bytes().to_vec(), false);
        }
        let (mut lt, exists) = match newest {
            Some(mut lt) if !is_finalized(&lt) => {
                if self.should_finalize(&st.sb, &lt).await? {
                    self.finalize_tree(st, &mut lt).await?;
                    (new_log_trees(rid, lt.nr.get() + 1), false)
                } else {
                    (lt, true)
                }
            }
            Some(lt) => (new_log_trees(rid, lt.nr.get() + 1), false),
            None => (new_log_trees(rid, 1), false),
        };
        let nr_clients = self.nr_clients(&st.sb).await.map_err(errno)?;
        let budget = self.budget(&st.sb);
        let reserve = budget.reserve(nr_clients, self.opts.reserve_log_blocks);
        {
            let State { sb, alloc, .. } = &mut *st;
            let bt = &self.btree;
            // Take back what the last committed transaction freed.
            drain_list(bt, alloc, &mut sb.meta_alloc, &mut lt.meta_freed)
                .await
                .map_err(errno)?;
            empty_extents(bt, alloc, &mut lt.data_freed, &mut sb.data_alloc)
                .await
                .map_err(errno)?;

            let have = lt.meta_avail.total_nr.get();
            if have < budget.client_fill_lo {
                let spare = budget.client_spare(meta_extent_total(&sb.meta_alloc));
                let want = (budget.client_fill_target - have).min(spare);
                if want > 0 {
                    fill_list(bt, alloc, &mut sb.meta_alloc, &mut lt.meta_avail, want)
                        .await
                        .map_err(errno)?;
                }
            }
            set_list_low(
                &mut lt.meta_avail,
                meta_extent_total(&sb.meta_alloc) <= reserve,
            );

            let fill = DataFill::for_device(sb.total_data_blocks.get());
            let dhave = lt.data_avail.total_len.get();
            if dhave < fill.lo {
                move_extents(
                    bt,
                    alloc,
                    &mut sb.data_alloc,
                    &mut lt.data_avail,
                    fill.target - dhave,
                )
                .await
                .map_err(errno)?;
            }
            set_low_flag(&mut lt.data_avail, fill.lo);
        }
        lt.get_trans_seq = st.next_seq().into();
        let key = log_trees_key(rid, lt.nr.get());
        let State { sb, alloc, .. } = st;
        let res = if exists {
            self.btree
                .update(&mut sb.logs_root, alloc, &key, lt.as_bytes())
                .await
        } else {
            self.btree
                .insert(&mut sb.logs_root, alloc, &key, lt.as_bytes())
                .await
        };
        res.map_err(errno)?;
        // With this tree finalized the others must follow before a merge.
        self.finalize_waiting(st).await?;
        reply(lt.as_bytes().to_vec(), true)
    }

    /// Coordinated finalization (§2.3-§2.4): while a finalized tree waits
    /// for a merge and none runs, every other tree holding items must be
    /// finalized too, since a merge may not start while an active tree
    /// could hold older versions of its keys (trap 9). A committed tree
    /// whose mount has not opened its next transaction is finalized here at
    /// once: the mount owns nothing of it until its next GET_LOG_TREES,
    /// which then starts a fresh tree (mounts open transactions lazily, so
    /// an idle mount would otherwise hold merges back for as long as it
    /// stays idle). The mounts with an open transaction are asked to commit
    /// (SYNC_LOG_TREES, [`Server::take_sync_requests`]); their trees are
    /// finalized here when that commit arrives. Then the merge starts if
    /// nothing active remains.
    async fn finalize_waiting(&self, st: &mut State) -> std::result::Result<(), i32> {
        if !self.opts.finalize
            || merge::server::merge_status(&self.btree, &st.sb)
                .await
                .map_err(errno)?
                .is_some()
        {
            return Ok(());
        }
        let lts = all_log_trees(&self.btree, &st.sb).await.map_err(errno)?;
        if !lts.iter().any(is_finalized) {
            return Ok(());
        }
        let mut sync = Vec::new();
        for mut lt in lts {
            if is_finalized(&lt) || lt.item_root.is_empty() {
                continue;
            }
            if is_open(&lt) {
                sync.push(lt.rid.get());
            } else {
                self.finalize_tree(st, &mut lt).await?;
            }
        }
        self.want_sync(sync);
        self.maybe_start_merge(st).await
    }

    /// Whether GET_LOG_TREES finalizes the rid's committed tree `lt` (§2.4):
    /// it holds items and either qualifies (taller than
    /// `finalize_height`, or its meta_avail is LOW), or some tree is
    /// finalized and no merge runs yet — a merge waits for every active
    /// tree (trap 9); [`Server::finalize_waiting`] then deals with the
    /// other mounts' trees.
    async fn should_finalize(
        &self,
        sb: &SuperBlock,
        lt: &LogTrees,
    ) -> std::result::Result<bool, i32> {
        if !self.opts.finalize || is_finalized(lt) || lt.item_root.is_empty() {
            return Ok(false);
        }
        if lt.item_root.height > self.opts.finalize_height
            || lt.meta_avail.flags.get() & ALLOC_FLAG_LOW != 0
        {
            return Ok(true);
        }
        if merge::server::merge_status(&self.btree, sb)
            .await
            .map_err(errno)?
            .is_some()
        {
            return Ok(false);
        }
        Ok(all_log_trees(&self.btree, sb)
            .await
            .map_err(errno)?
            .iter()
            .any(is_finalized))
    }

    /// Returns a tree's allocators to the server's: its meta lists to the
    /// extent trees (their blocks were freed or left unused by committed
    /// transactions, so they are durable-free), its data trees to the data
    /// allocator.
    async fn return_allocators(
        &self,
        st: &mut State,
        lt: &mut LogTrees,
    ) -> std::result::Result<(), i32> {
        let State { sb, alloc, .. } = st;
        let bt = &self.btree;
        drain_list(bt, alloc, &mut sb.meta_alloc, &mut lt.meta_avail)
            .await
            .map_err(errno)?;
        drain_list(bt, alloc, &mut sb.meta_alloc, &mut lt.meta_freed)
            .await
            .map_err(errno)?;
        empty_extents(bt, alloc, &mut lt.data_avail, &mut sb.data_alloc)
            .await
            .map_err(errno)?;
        empty_extents(bt, alloc, &mut lt.data_freed, &mut sb.data_alloc)
            .await
            .map_err(errno)?;
        Ok(())
    }

    /// Finalizes the rid's committed tree `lt` in place and in logs_root:
    /// srch log rotated into srch_root, allocators returned, FINALIZED with
    /// `finalize_seq = next_seq`. The zeroed srch file is written back in
    /// the same commit as its srch_root item (trap 22, 35bcad91): a merge
    /// deletes finalized trees, and would take an unrotated log with them.
    async fn finalize_tree(
        &self,
        st: &mut State,
        lt: &mut LogTrees,
    ) -> std::result::Result<(), i32> {
        debug_assert!(!is_open(lt) && !is_finalized(lt));
        self.rotate_srch_log(st, lt, true).await?;
        self.return_allocators(st, lt).await?;
        merge::server::finalize(lt, st.next_seq());
        let key = log_trees_key(lt.rid.get(), lt.nr.get());
        let State { sb, alloc, .. } = st;
        self.btree
            .update(&mut sb.logs_root, alloc, &key, lt.as_bytes())
            .await
            .map_err(errno)
    }

    /// Starts a log merge if none runs, some tree is finalized and no
    /// tree is active ([`merge::server::start_merge`] checks all three).
    async fn maybe_start_merge(&self, st: &mut State) -> std::result::Result<(), i32> {
        let State {
            sb,
            alloc,
            core_seq,
            ..
        } = st;
        let mut allocs = self.merge_allocs(alloc, sb);
        let mut next_seq = || {
            *core_seq += 1;
            *core_seq
        };
        let res = merge::server::start_merge(&self.btree, &mut allocs, sb, &mut next_seq).await;
        sb.meta_alloc = allocs.meta_alloc;
        res.map(|_| ()).map_err(errno)
    }

    /// GET_LOG_MERGE: the next piece of merge work for `rid`, or ENOENT.
    /// Splicing happens here when due (and is committed even when the
    /// reply is ENOENT). Replay: a rid that still has a request
    /// outstanding gets that request again rather than a second one, which
    /// would hold the merge open forever.
    async fn get_log_merge(&self, st: &mut State, rid: u64) -> HResult {
        if !self.is_mounted(&st.sb, rid).await? {
            return Err(libc::ENOLINK);
        }
        let first = merge::request_key(rid, 0);
        if let Some(it) = self
            .btree
            .next(&st.sb.log_merge, &first)
            .await
            .map_err(errno)?
            .filter(|it| it.key.zone == first.zone && it.key.first == rid)
        {
            LogMergeRequest::read_from_bytes(&it.val).map_err(|_| libc::EIO)?;
            return reply(it.val, false);
        }
        let before = st.sb;
        let State {
            sb,
            alloc,
            core_seq,
            ..
        } = st;
        let mut allocs = self.merge_allocs(alloc, sb);
        let mut next_seq = || {
            *core_seq += 1;
            *core_seq
        };
        let res =
            merge::server::get_request(&self.btree, &mut allocs, sb, rid, &mut next_seq).await;
        sb.meta_alloc = allocs.meta_alloc;
        match res.map_err(errno)? {
            Some(req) => reply(req.as_bytes().to_vec(), true),
            None => reply_err(libc::ENOENT, sb.as_bytes() != before.as_bytes()),
        }
    }

    /// COMMIT_LOG_MERGE: record a completion (or put an errored request's
    /// range back). Replay: a completion whose request is gone was already
    /// recorded, and is acknowledged without a change.
    async fn commit_log_merge(&self, st: &mut State, rid: u64, payload: &[u8]) -> HResult {
        let comp = LogMergeComplete::read_from_bytes(payload).map_err(|_| libc::EINVAL)?;
        if comp.rid.get() != rid {
            return Err(libc::EINVAL);
        }
        let State { sb, alloc, .. } = st;
        let mut allocs = self.merge_allocs(alloc, sb);
        let res = merge::server::commit_completion(&self.btree, &mut allocs, sb, rid, &comp).await;
        sb.meta_alloc = allocs.meta_alloc;
        match res.map_err(errno)? {
            CommitOutcome::Unknown => reply(Vec::new(), false),
            CommitOutcome::Stored | CommitOutcome::Failed => reply(Vec::new(), true),
        }
    }

    /// Cancels the rid's outstanding merge requests (a mount that is gone).
    async fn cancel_merge_requests(
        &self,
        st: &mut State,
        rid: u64,
    ) -> std::result::Result<usize, i32> {
        let State { sb, alloc, .. } = st;
        let mut allocs = self.merge_allocs(alloc, sb);
        let res = merge::server::cancel_requests(&self.btree, &mut allocs, sb, rid).await;
        sb.meta_alloc = allocs.meta_alloc;
        res.map_err(errno)
    }

    /// COMMIT_LOG_TREES: record the mount's committed transaction.
    async fn commit_log_trees(&self, st: &mut State, rid: u64, payload: &[u8]) -> HResult {
        let lin = LogTrees::read_from_bytes(payload).map_err(|_| libc::EINVAL)?;
        if lin.rid.get() != rid {
            return Err(libc::EINVAL);
        }
        let key = log_trees_key(rid, lin.nr.get());
        let item = self
            .btree
            .lookup(&st.sb.logs_root, &key)
            .await
            .map_err(errno)?
            .ok_or(libc::EINVAL)?;
        let mut lt = decode_log_trees(&item).map_err(errno)?;
        let gts = lt.get_trans_seq.get();
        let sent = lin.get_trans_seq.get();
        if sent < gts || (sent == gts && !is_open(&lt)) {
            // Replay of a commit already recorded.
            return reply(Vec::new(), false);
        }
        if sent > gts || is_finalized(&lt) {
            return Err(libc::EINVAL);
        }
        lt.meta_avail = lin.meta_avail;
        lt.meta_freed = lin.meta_freed;
        lt.item_root = lin.item_root;
        lt.bloom_ref = lin.bloom_ref;
        lt.data_avail = lin.data_avail;
        lt.data_freed = lin.data_freed;
        lt.srch_file = lin.srch_file;
        lt.max_item_seq = lin.max_item_seq;
        lt.inode_count_delta = lin.inode_count_delta;
        lt.commit_trans_seq = gts.into();
        st.core_seq = st.core_seq.max(lt.max_item_seq.get());
        self.rotate_srch_log(st, &mut lt, false).await?;
        let State { sb, alloc, .. } = st;
        self.btree
            .update(&mut sb.logs_root, alloc, &key, lt.as_bytes())
            .await
            .map_err(errno)?;
        // The answer to a SYNC_LOG_TREES, or a tree that holds a merge
        // back for as long as its mount stays idle.
        self.finalize_waiting(st).await?;
        reply(Vec::new(), true)
    }

    /// Moves `lt`'s srch log into srch_root when it is big enough (or at
    /// all, when `force`); the caller stores `lt` in this commit.
    async fn rotate_srch_log(
        &self,
        st: &mut State,
        lt: &mut LogTrees,
        force: bool,
    ) -> std::result::Result<bool, i32> {
        let State { sb, alloc, .. } = st;
        srch::server::rotate_log(
            &self.btree,
            alloc,
            sb,
            &mut lt.srch_file,
            force,
            self.opts.srch_log_rotate_blocks,
        )
        .await
        .map_err(errno)
    }

    /// SRCH_GET_COMPACT: compaction work for `rid` (nr 0: none).
    async fn srch_get_compact(&self, st: &mut State, rid: u64) -> HResult {
        if !self.is_mounted(&st.sb, rid).await? {
            return Err(libc::ENOLINK);
        }
        let budget = self.budget(&st.sb);
        let keep = budget.server_keep + budget.merge_blocks;
        let before = st.sb;
        let State { sb, alloc, .. } = st;
        let sc = srch::server::get_compact(&self.btree, alloc, sb, rid, keep)
            .await
            .map_err(errno)?;
        let changed = sb.as_bytes() != before.as_bytes();
        match sc {
            Some(sc) => reply(sc.as_bytes().to_vec(), changed),
            None => reply(SrchCompact::new_zeroed().as_bytes().to_vec(), false),
        }
    }

    /// SRCH_COMMIT_COMPACT: a compaction step's result from `rid`.
    async fn srch_commit_compact(&self, st: &mut State, rid: u64, payload: &[u8]) -> HResult {
        let res = SrchCompact::read_from_bytes(payload).map_err(|_| libc::EINVAL)?;
        let State { sb, alloc, .. } = st;
        let done = srch::server::commit_compact(&self.btree, alloc, sb, rid, &res)
            .await
            .map_err(errno)?;
        reply(Vec::new(), done != srch::server::Committed::Unknown)
    }

    /// GET_ROOTS: the roots of the last super written.
    fn get_roots(&self, st: &mut State) -> HResult {
        let sb = &st.committed;
        let out = NetRoots {
            fs_root: sb.fs_root,
            logs_root: sb.logs_root,
            srch_root: sb.srch_root,
        };
        reply(out.as_bytes().to_vec(), false)
    }

    /// GET_LAST_SEQ (§8.1): `min(core_seq − 1, get_trans_seq − 1)` over
    /// every rid whose newest log tree is open.
    async fn get_last_seq(&self, st: &mut State) -> HResult {
        // `core_seq` is the last seq handed out (`next_seq` increments
        // first): the reference's "core_seq - 1" with its counter pointing
        // at the next one. Mounts open transactions lazily, so after a
        // commit no newer seq may have been handed out at all.
        let mut last = st.core_seq;
        let lts = all_log_trees(&self.btree, &st.sb).await.map_err(errno)?;
        // Items are in (rid, nr) order: a rid's newest is its last.
        for (i, lt) in lts.iter().enumerate() {
            let newest = lts.get(i + 1).is_none_or(|n| n.rid != lt.rid);
            if newest && is_open(lt) {
                last = last.min(lt.get_trans_seq.get().saturating_sub(1));
            }
        }
        reply(last.to_le_bytes().to_vec(), false)
    }

    /// STATFS: free and total blocks and the inode count of the last super
    /// written. Free metadata is both extent trees, the server's four lists
    /// and every log tree's avail and freed lists (no reserve subtracted);
    /// free data is the data allocator plus every log tree's data avail and
    /// freed trees.
    async fn statfs(&self, st: &mut State) -> HResult {
        let sb = st.committed;
        let lts = all_log_trees(&self.btree, &sb).await.map_err(errno)?;
        let list = |h: &AllocListHead| h.total_nr.get();
        let ext = |r: &AllocRoot| r.total_len.get();
        let mut free_meta = meta_extent_total(&sb.meta_alloc)
            + sb.server_meta_avail.iter().map(list).sum::<u64>()
            + sb.server_meta_freed.iter().map(list).sum::<u64>();
        let mut free_data = ext(&sb.data_alloc);
        let mut inodes = sb.inode_count.get();
        for lt in &lts {
            free_meta += list(&lt.meta_avail) + list(&lt.meta_freed);
            free_data += ext(&lt.data_avail) + ext(&lt.data_freed);
            // The delta is signed, stored as two's complement.
            inodes = inodes.wrapping_add(lt.inode_count_delta.get());
        }
        let out = NetStatfs {
            uuid: sb.uuid,
            free_meta_blocks: free_meta.into(),
            total_meta_blocks: sb.total_meta_blocks,
            free_data_blocks: free_data.into(),
            total_data_blocks: sb.total_data_blocks,
            inode_count: inodes.into(),
        };
        reply(out.as_bytes().to_vec(), false)
    }

    /// FAREWELL: reclaim the rid (§5.4 `reclaim_rid`): cancel its merge
    /// requests (ranges back, lists reclaimed), return its allocators,
    /// close and finalize its last log tree so its committed items stay
    /// for merge (an empty tree is deleted, its inode count delta folded
    /// into the super), start a merge if that was the last active tree,
    /// then delete its mounted_client item.
    async fn farewell(&self, st: &mut State, rid: u64) -> HResult {
        let mut commit = self.cancel_merge_requests(st, rid).await? > 0;
        {
            let State { sb, alloc, .. } = &mut *st;
            let n = srch::server::cancel_compacts(&self.btree, alloc, sb, rid)
                .await
                .map_err(errno)?;
            commit |= n > 0;
        }
        if let Some(mut lt) = self
            .newest_log_trees(&st.sb, rid)
            .await?
            .filter(|lt| !is_finalized(lt))
        {
            let key = log_trees_key(rid, lt.nr.get());
            self.rotate_srch_log(st, &mut lt, true).await?;
            self.return_allocators(st, &mut lt).await?;
            // An open transaction is lost with the mount: close it.
            lt.commit_trans_seq = lt.get_trans_seq;
            if has_content(&lt) {
                lt.flags = (lt.flags.get() | LOG_TREES_FLAG_FINALIZED).into();
                lt.finalize_seq = st.next_seq().into();
                let State { sb, alloc, .. } = st;
                self.btree
                    .update(&mut sb.logs_root, alloc, &key, lt.as_bytes())
                    .await
                    .map_err(errno)?;
            } else {
                let State { sb, alloc, .. } = st;
                sb.inode_count = sb
                    .inode_count
                    .get()
                    .wrapping_add(lt.inode_count_delta.get())
                    .into();
                self.btree
                    .delete(&mut sb.logs_root, alloc, &key)
                    .await
                    .map_err(errno)?;
            }
            self.finalize_waiting(st).await?;
            commit = true;
        }
        let State { sb, alloc, .. } = st;
        match self
            .btree
            .delete(&mut sb.mounted_clients, alloc, &mounted_client_key(rid))
            .await
        {
            Ok(_) => commit = true,
            Err(Error::NotFound) => {}
            Err(e) => return Err(errno(e)),
        }
        reply(Vec::new(), commit)
    }
}
