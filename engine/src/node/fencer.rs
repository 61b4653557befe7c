//! The node's fence requests, driven (reference §6.4, ARCHITECTURE §2.10):
//! a [`FenceTable`] behind a lock, its requests handed to whoever answers
//! them, its outcomes delivered to the tasks that wait for them.
//!
//! Who answers (docs/decisions.md, "Fence agent and local fence"): when a
//! fence agent runs (`scoutfs fenced` holds the agent lock, see
//! [`agent_lock_path`]), only the agent does, through the status tree
//! (`fence/<rid>/fenced` or `error`, read by the daemon and passed to
//! [`Fencer::answer`]); otherwise the local flock fence of [`super::fence`]
//! answers. The choice is made per request, when it is made. Answers
//! written into the tree are accepted in both cases.
//!
//! Guarantees: every [`Fencer::fence`] call returns exactly once, with the
//! request's outcome (`Ok` also for a rid fenced before: trap 27), an
//! error answer (`EIO`), no answer within the timeout (`ETIMEDOUT`) or the
//! server stopping (`ECANCELED`). Nothing here blocks the engine thread:
//! the local fence runs on the blocking pool.
//!
//! Touches [`super::fence_requests`], [`super::fence`], `runtime`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::channel::oneshot;

use super::fence::{fence_local, flock_held_elsewhere};
use super::fence_requests::{Answer, Event, FenceTable, Reason, RequestView, FENCE_ANSWER_TIMEOUT};
use crate::runtime::Runtime;

/// The local fence action: fences a rid, or fails with an errno.
pub type LocalFence =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), i32>> + Send>> + Send + Sync>;

/// Whether a fence agent is running now.
pub type AgentPresent = Arc<dyn Fn() -> bool + Send + Sync>;

/// Where `scoutfs fenced` holds its lock, next to the rid locks: while
/// anyone holds it, fence requests wait for the agent.
pub fn agent_lock_path(rid_lock_dir: &Path) -> PathBuf {
    rid_lock_dir.join("fenced.lock")
}

/// How a node fences.
pub struct FencerConfig {
    pub timeout: Duration,
    pub agent_present: AgentPresent,
    pub local: LocalFence,
}

impl FencerConfig {
    /// Production: the agent lock and the flock fence under `rid_lock_dir`.
    pub fn local_host(rt: &Runtime, rid_lock_dir: &Path) -> FencerConfig {
        let agent = agent_lock_path(rid_lock_dir);
        let (rt, dir) = (rt.clone(), rid_lock_dir.to_path_buf());
        FencerConfig {
            timeout: FENCE_ANSWER_TIMEOUT,
            agent_present: Arc::new(move || flock_held_elsewhere(&agent)),
            local: Arc::new(move |rid| {
                let (rt, dir) = (rt.clone(), dir.clone());
                Box::pin(async move { fence_local(&rt, dir, rid).await })
            }),
        }
    }
}

struct Inner {
    table: FenceTable,
    waiters: BTreeMap<u64, Vec<oneshot::Sender<Result<(), i32>>>>,
}

/// A node's fence requests.
pub struct Fencer {
    me: Weak<Fencer>,
    rt: Runtime,
    cfg: FencerConfig,
    inner: Mutex<Inner>,
}

impl Fencer {
    pub fn new(rt: Runtime, cfg: FencerConfig) -> Arc<Fencer> {
        Arc::new_cyclic(|me| Fencer {
            me: me.clone(),
            rt,
            inner: Mutex::new(Inner {
                table: FenceTable::new(cfg.timeout),
                waiters: BTreeMap::new(),
            }),
            cfg,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `rid` to be fenced and waits for the outcome.
    pub async fn fence(&self, rid: u64, ipv4: Ipv4Addr, reason: Reason) -> Result<(), i32> {
        let (tx, rx) = oneshot::channel();
        let mut ev = Vec::new();
        {
            let mut g = self.lock();
            g.waiters.entry(rid).or_default().push(tx);
            g.table.request(self.rt.now(), rid, ipv4, reason, &mut ev);
        }
        self.handle(ev);
        rx.await.unwrap_or(Err(libc::ECANCELED))
    }

    /// The agent's answer for `rid` (from the status tree); `ENOENT` when
    /// no such request exists.
    pub fn answer(&self, rid: u64, answer: Answer) -> Result<(), i32> {
        let mut ev = Vec::new();
        self.lock().table.answer(rid, answer, &mut ev)?;
        self.handle(ev);
        Ok(())
    }

    /// `rid` was reclaimed: its request goes from the tree.
    pub fn remove(&self, rid: u64) {
        self.lock().table.remove(rid);
    }

    /// The server stopped: every request goes; waiters get `ECANCELED`.
    pub fn clear(&self) {
        let mut ev = Vec::new();
        self.lock().table.clear(&mut ev);
        self.handle(ev);
    }

    /// The requests, for the status tree.
    pub fn requests(&self) -> Vec<RequestView> {
        self.lock().table.views(self.rt.now())
    }

    fn handle(&self, events: Vec<Event>) {
        for ev in events {
            match ev {
                Event::Requested { rid } => self.started(rid),
                Event::Fenced { rid } => self.wake(rid, Ok(())),
                Event::Failed { rid, errno } => self.wake(rid, Err(errno)),
            }
        }
    }

    fn wake(&self, rid: u64, res: Result<(), i32>) {
        let waiters = self.lock().waiters.remove(&rid).unwrap_or_default();
        for w in waiters {
            let _ = w.send(res);
        }
    }

    /// A new request: arm its timeout, and fence locally unless an agent
    /// runs.
    fn started(&self, rid: u64) {
        let weak = self.me.clone();
        let rt = self.rt.clone();
        let timeout = self.cfg.timeout;
        self.rt
            .spawn(async move {
                rt.sleep(timeout).await;
                if let Some(f) = weak.upgrade() {
                    let mut ev = Vec::new();
                    f.lock().table.tick(rt.now(), &mut ev);
                    f.handle(ev);
                }
            })
            .detach();
        if (self.cfg.agent_present)() {
            return;
        }
        let weak = self.me.clone();
        let fence = (self.cfg.local)(rid);
        self.rt
            .spawn(async move {
                let res = fence.await;
                if let Some(f) = weak.upgrade() {
                    let answer = if res.is_ok() {
                        Answer::Fenced
                    } else {
                        Answer::Error
                    };
                    // ENOENT: the request went meanwhile (server stopped).
                    let _ = f.answer(rid, answer);
                }
            })
            .detach();
    }
}
