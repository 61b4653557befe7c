//! The mount's merge worker: the client half of log merge (reference §2.4).
//!
//! Every [`MountOptions::merge_interval`](super::MountOptions) the worker
//! sends `GET_LOG_MERGE`; for each request the server hands out it runs
//! [`merge::client::merge_request_with`] over a block cache of its own on the
//! metadata device, writes and flushes the blocks the merge dirtied and sends
//! `COMMIT_LOG_MERGE` with the completion. A merge that fails (or whose
//! blocks can't be written) has its dirty blocks discarded and is answered
//! with [`error_completion`], so the server reclaims the request's
//! allocators and puts the range back. While requests keep coming the worker
//! loops without sleeping; on ENOENT it sleeps until the next interval.
//!
//! Guarantees:
//! * Merge blocks never mix with the open transaction's dirty blocks: they
//!   live in [`MergeState`]'s own [`BlockCache`], written only by the merge.
//!   (Stale clean copies in either cache are caught by the block seq check
//!   and reread.)
//! * One merge at a time per mount: the worker and [`Mount::merge_now`]
//!   serialize on an async mutex, so one merge's dirty blocks are never
//!   written or discarded by another.
//! * The worker holds only a `Weak` of the mount between passes and its task
//!   handle is owned by the [`Mount`]: dropping the mount cancels it.
//!
//! Touches `block` (its own cache), `btree`, `merge::client`, `format`
//! (request/completion payloads) and the `link` (GET/COMMIT_LOG_MERGE).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use drivers::BlockDevice;
use zerocopy::{FromBytes, IntoBytes};

use super::{Inner, Mount};
use crate::block::BlockCache;
use crate::btree::Btree;
use crate::format::log_trees::{LogMergeRequest, LOG_MERGE_COMP_FLAG_REMAIN};
use crate::format::net::Cmd;
use crate::link::ServerLink;
use crate::merge::client::{error_completion, merge_request_with, MergeLimits};
use crate::runtime::Runtime;

/// Default interval between `GET_LOG_MERGE`s of an idle mount (§2.4).
pub const MERGE_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Clean blocks the merge cache keeps (dirty ones are bounded by the merge
/// limits, 1024 blocks).
const MERGE_CACHE_BLOCKS: usize = 512;

/// Counters of the merge work this mount has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Requests merged and committed (including REMAIN completions).
    pub requests: u64,
    /// Completions sent with REMAIN (the merge stopped early).
    pub remains: u64,
    /// Requests answered with an error completion.
    pub errors: u64,
}

/// What the mount keeps for merging: a cache and btree of its own.
pub(super) struct MergeState {
    btree: Btree,
    limits: MergeLimits,
    serial: futures::lock::Mutex<()>,
    stats: Mutex<MergeStats>,
}

impl MergeState {
    pub(super) fn new(meta: &Arc<dyn BlockDevice>, fsid: u64, rt: &Runtime) -> MergeState {
        let r = rt.clone();
        let cache = Arc::new(BlockCache::new(
            meta.clone(),
            fsid,
            MERGE_CACHE_BLOCKS,
            Arc::new(move || r.random_u64()),
        ));
        MergeState {
            btree: Btree::new(cache),
            limits: MergeLimits::default(),
            serial: futures::lock::Mutex::new(()),
            stats: Mutex::new(MergeStats::default()),
        }
    }

    fn stats(&self) -> MergeStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut MergeStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One GET_LOG_MERGE and, if a request came back, its merge and
    /// COMMIT_LOG_MERGE. Returns whether a request was handled. The caller
    /// holds `serial`.
    async fn pass(&self, link: &Arc<dyn ServerLink>) -> Result<bool, i32> {
        let reply = match link.call(Cmd::GetLogMerge, Vec::new()).await {
            Ok(r) => r,
            Err(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(e),
        };
        let req = LogMergeRequest::read_from_bytes(&reply).map_err(|_| libc::EIO)?;
        let cache = self.btree.cache();
        // Nothing of an earlier, abandoned attempt may be written with this one.
        cache.discard_dirty();
        let merged = match merge_request_with(&self.btree, &req, &self.limits).await {
            Ok(comp) => match cache.write_dirty_and_flush().await {
                Ok(_) => Some(comp),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let comp = match merged {
            Some(comp) => comp,
            None => {
                cache.discard_dirty();
                cache.drop_clean();
                self.count(|s| s.errors += 1);
                error_completion(&req)
            }
        };
        link.call(Cmd::CommitLogMerge, comp.as_bytes().to_vec())
            .await?;
        if merged.is_some() {
            self.count(|s| {
                s.requests += 1;
                if comp.flags.get() & LOG_MERGE_COMP_FLAG_REMAIN != 0 {
                    s.remains += 1;
                }
            });
        }
        Ok(true)
    }

    /// Handles requests until the server has none for this mount; returns
    /// how many were handled.
    async fn drain(&self, link: &Arc<dyn ServerLink>) -> Result<u64, i32> {
        let _serial = self.serial.lock().await;
        let mut n = 0;
        while self.pass(link).await? {
            n += 1;
        }
        Ok(n)
    }
}

/// The worker task: drains merge requests every `interval` until the mount
/// is gone. Errors (a server away, a failed call) wait for the next tick.
pub(super) async fn merge_worker(weak: Weak<Inner>, rt: Runtime, interval: Duration) {
    loop {
        rt.sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let _ = inner.merge.drain(&inner.link).await;
    }
}

impl Mount {
    /// Asks for merge work and merges until the server hands out no more
    /// (GET_LOG_MERGE answers ENOENT); returns how many requests were
    /// merged. What the worker does every interval, on demand (tests).
    pub async fn merge_now(&self) -> Result<u64, i32> {
        self.inner.merge.drain(&self.inner.link).await
    }

    /// Counters of the merge work done so far.
    pub fn merge_stats(&self) -> MergeStats {
        self.inner.merge.stats()
    }
}
