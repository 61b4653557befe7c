//! The mount's srch compaction worker (reference §8.3): every
//! [`MountOptions::srch_compact_interval`](super::MountOptions) it asks the
//! server for work with `SRCH_GET_COMPACT`, runs one step of it
//! ([`srch::compact::compact_step`]) over a block cache of its own, writes
//! and flushes the blocks the step dirtied and sends `SRCH_COMMIT_COMPACT`
//! with the result, until the server has no more work.
//!
//! Guarantees:
//! * Compaction blocks never mix with the open transaction's or the merge's
//!   dirty blocks: they live in [`SrchState`]'s own cache.
//! * A step that fails (or whose blocks can't be written) has its dirty
//!   blocks discarded and the work sent back with ERROR: the server keeps
//!   it as it was for a later try. After an error the pass stops until the
//!   next interval, so a failing compaction can't spin.
//! * One step at a time per mount (an async mutex); the worker holds only a
//!   `Weak` of the mount and is cancelled with it.
//!
//! Touches `block` (its own cache), `srch` (compaction, search), `format`
//! and the `link` (SRCH_GET/COMMIT_COMPACT).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use drivers::BlockDevice;
use zerocopy::{FromBytes, IntoBytes};

use super::{Inner, Mount};
use crate::block::BlockCache;
use crate::format::net::Cmd;
use crate::format::srch::SrchCompact;
use crate::link::ServerLink;
use crate::runtime::Runtime;
use crate::srch::compact::{compact_step, error_result, CompactLimits};

/// Default interval between `SRCH_GET_COMPACT`s (§8.3 compact_delay_ms).
pub const SRCH_COMPACT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// Clean blocks the compaction cache keeps.
const SRCH_CACHE_BLOCKS: usize = 256;

/// Counters of the compaction work this mount has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrchStats {
    /// Steps committed (progress, swaps and deletes).
    pub steps: u64,
    /// Steps sent back with ERROR.
    pub errors: u64,
    /// Entries written to outputs.
    pub written: u64,
    /// Entries dropped as create/delete pairs.
    pub dropped: u64,
    /// Input blocks freed.
    pub freed: u64,
}

pub(super) struct SrchState {
    cache: Arc<BlockCache>,
    serial: futures::lock::Mutex<()>,
    stats: Mutex<SrchStats>,
}

impl SrchState {
    pub(super) fn new(meta: &Arc<dyn BlockDevice>, fsid: u64, rt: &Runtime) -> SrchState {
        let r = rt.clone();
        SrchState {
            cache: Arc::new(BlockCache::new(
                meta.clone(),
                fsid,
                SRCH_CACHE_BLOCKS,
                Arc::new(move || r.random_u64()),
            )),
            serial: futures::lock::Mutex::new(()),
            stats: Mutex::new(SrchStats::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut SrchStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One GET and, when work came back, one step and its COMMIT. Returns
    /// whether work was handled. The caller holds `serial`.
    async fn pass(&self, link: &Arc<dyn ServerLink>, limits: &CompactLimits) -> Result<bool, i32> {
        let reply = link.call(Cmd::SrchGetCompact, Vec::new()).await?;
        let sc = SrchCompact::read_from_bytes(&reply).map_err(|_| libc::EIO)?;
        if sc.nr == 0 {
            return Ok(false);
        }
        let cache = &self.cache;
        cache.discard_dirty();
        let stepped = match compact_step(cache, &sc, limits).await {
            Ok((res, st)) => match cache.write_dirty_and_flush().await {
                Ok(_) => Some((res, st)),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some((res, st)) = stepped else {
            cache.discard_dirty();
            cache.drop_clean();
            link.call(
                Cmd::SrchCommitCompact,
                error_result(&sc).as_bytes().to_vec(),
            )
            .await?;
            self.count(|s| s.errors += 1);
            return Err(libc::EIO);
        };
        link.call(Cmd::SrchCommitCompact, res.as_bytes().to_vec())
            .await?;
        self.count(|s| {
            s.steps += 1;
            s.written += st.written;
            s.dropped += st.dropped;
            s.freed += st.freed;
        });
        Ok(true)
    }

    async fn drain(&self, link: &Arc<dyn ServerLink>, limits: &CompactLimits) -> Result<u64, i32> {
        let _serial = self.serial.lock().await;
        let mut n = 0;
        while self.pass(link, limits).await? {
            n += 1;
        }
        Ok(n)
    }
}

/// The worker task: compacts every `interval` until the mount is gone.
pub(super) async fn srch_worker(weak: Weak<Inner>, rt: Runtime, interval: Duration) {
    loop {
        rt.sleep(interval).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let limits = inner.opts.srch_limits;
        let _ = inner.srch.drain(&inner.link, &limits).await;
    }
}

impl Mount {
    /// Runs compaction steps until the server hands out no more work;
    /// returns how many steps were committed. What the worker does every
    /// interval, on demand (tests).
    pub async fn srch_compact_now(&self) -> Result<u64, i32> {
        let limits = self.inner.opts.srch_limits;
        self.inner.srch.drain(&self.inner.link, &limits).await
    }

    /// Counters of the compaction work done so far.
    pub fn srch_stats(&self) -> SrchStats {
        *self
            .inner
            .srch
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
