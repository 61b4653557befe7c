//! A mount's cluster locks over the network: the sans-IO [`LockClient`]
//! driven by LOCK / LOCK_RECOVER messages on the mount's [`NetClient`]
//! (reference §4.3–§4.6).
//!
//! * [`NetLocks::lock`] waits for a grant (or fails with EAGAIN when
//!   `nonblock` and it would have to wait); the returned [`LockGuard`]
//!   unlocks when dropped.
//! * Grants and the server's invalidation and recovery requests reach the
//!   state machine through one ordered channel, fed by the connection in
//!   the order the frames arrived, and consumed by one task: a grant is
//!   never processed after an invalidation that followed it (traps 4, 6).
//! * Before the client answers an invalidation, the owner's
//!   [`InvalidateHook`] runs for the range (commit dirty items, drop the
//!   cached ones): only then does the state machine hear `InvalidateDone`.
//!
//! One std mutex guards the state machine; it is never held across an
//! await nor while calling into the connection. Touches `lock`,
//! [`super::client`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use super::client::{LockInbound, NetClient};
use crate::format::net::Cmd;
use crate::lock::wire::{decode_lock, decode_recover_request, encode_lock, encode_recover_reply};
use crate::lock::{
    ClientAction, ClientEvent, LockClient, LockClientConfig, LockMode, LockRange, UserId,
};
use crate::net::ReqRef;
use crate::runtime::{JoinHandle, Runtime};

/// Runs before this mount gives up (or weakens) its lock on `range`: the
/// owner writes back what it changed under `old` and drops what `new` no
/// longer covers.
pub type InvalidateHook = Arc<
    dyn Fn(LockRange, LockMode, LockMode) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// What a grant tells its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub range: LockRange,
    pub mode: LockMode,
    /// Item seqs written under a write grant must be at least this.
    pub write_seq: u64,
    /// Changes when the cache under this lock had to be dropped.
    pub refresh_gen: u64,
}

struct State {
    client: LockClient<ReqRef>,
    next_user: u64,
    waiting: BTreeMap<UserId, oneshot::Sender<Result<Granted, i32>>>,
}

struct Shared {
    rt: Runtime,
    link: Arc<NetClient>,
    hook: InvalidateHook,
    st: Mutex<State>,
}

/// A mount's locks.
pub struct NetLocks {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Drop for NetLocks {
    fn drop(&mut self) {
        // The connection answers later lock requests itself; the task
        // lives on to answer the ones already queued (the server would
        // wait for them forever), then ends with the channel.
        self.shared.link.clear_lock_sink();
        if let Some(t) = self.task.take() {
            t.detach();
        }
    }
}

/// A held lock; unlocks when dropped.
pub struct LockGuard {
    shared: Weak<Shared>,
    user: UserId,
    pub granted: Granted,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(s) = self.shared.upgrade() {
            s.event(ClientEvent::Unlock { user: self.user });
        }
    }
}

impl NetLocks {
    /// Drives a lock client over `link` (which routes lock traffic here).
    pub fn new(
        rt: Runtime,
        link: Arc<NetClient>,
        cfg: LockClientConfig,
        hook: InvalidateHook,
    ) -> NetLocks {
        let shared = Arc::new(Shared {
            rt: rt.clone(),
            link: link.clone(),
            hook,
            st: Mutex::new(State {
                client: LockClient::new(cfg),
                next_user: 1,
                waiting: BTreeMap::new(),
            }),
        });
        let (tx, rx) = mpsc::unbounded();
        link.set_lock_sink(tx);
        let task = rt.spawn(inbound_loop(
            Arc::downgrade(&shared),
            Arc::downgrade(&link),
            rx,
        ));
        NetLocks {
            shared,
            task: Some(task),
        }
    }

    /// The mode of the cached lock covering `key` (NULL without one).
    pub fn mode_at(&self, key: &crate::format::Key) -> LockMode {
        self.shared.lock().client.mode_at(key)
    }

    /// [`NetLocks::mode_at`] for [`crate::trans::Mount::set_coverage`]: it
    /// answers NULL once these locks are gone.
    pub fn coverage(&self) -> crate::trans::Coverage {
        let weak = Arc::downgrade(&self.shared);
        Arc::new(move |key| {
            weak.upgrade()
                .map_or(LockMode::Null, |s| s.lock().client.mode_at(key))
        })
    }

    /// Every cached lock as the state machine sees it (the status tree's
    /// `client_locks`, what a hang report needs).
    pub fn views(&self) -> Vec<crate::lock::client::LockView> {
        self.shared.lock().client.views().collect()
    }

    /// Takes `mode` on `range`: waits for the grant, or EAGAIN at once
    /// with `nonblock` when it would have to wait.
    pub async fn lock(
        &self,
        range: LockRange,
        mode: LockMode,
        nonblock: bool,
    ) -> Result<LockGuard, i32> {
        let (tx, rx) = oneshot::channel();
        let user = {
            let mut st = self.shared.lock();
            let u = UserId(st.next_user);
            st.next_user += 1;
            st.waiting.insert(u, tx);
            u
        };
        self.shared.event(ClientEvent::Lock {
            user,
            range,
            mode,
            nonblock,
        });
        let granted = match rx.await {
            Ok(r) => r?,
            Err(_) => return Err(libc::ENOTCONN),
        };
        Ok(LockGuard {
            shared: Arc::downgrade(&self.shared),
            user,
            granted,
        })
    }
}

async fn inbound_loop(
    weak: Weak<Shared>,
    link: Weak<NetClient>,
    mut rx: mpsc::UnboundedReceiver<LockInbound>,
) {
    while let Some(msg) = rx.next().await {
        let Some(s) = weak.upgrade() else {
            // Weak: the connection's own lifetime must not hang on this
            // task, which ends with the channel the connection holds.
            if let (LockInbound::Request { req, cmd, data }, Some(link)) = (msg, link.upgrade()) {
                link.answer_holding_nothing(req, cmd, &data);
            }
            continue;
        };
        match msg {
            LockInbound::Grant { errno: 0, data } => match decode_lock(&data) {
                Ok(nl) => s.event(ClientEvent::Grant { nl }),
                Err(_) => s.link.drop_socket(),
            },
            // A refused request: the connection is being torn down.
            LockInbound::Grant { .. } => {}
            LockInbound::Request { req, cmd, data } => {
                let ev = match cmd {
                    Cmd::Lock => decode_lock(&data)
                        .ok()
                        .map(|nl| ClientEvent::InvalidateRequest { token: req, nl }),
                    Cmd::LockRecover => decode_recover_request(&data)
                        .ok()
                        .map(|key| ClientEvent::RecoverRequest { token: req, key }),
                    _ => None,
                };
                match ev {
                    Some(ev) => s.event(ev),
                    None => s.link.respond(req, libc::EINVAL, Vec::new()),
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one event and carries out what the state machine says.
    fn event(self: &Arc<Self>, ev: ClientEvent<ReqRef>) {
        let actions = self.lock().client.handle(ev);
        for a in actions {
            self.act(a);
        }
    }

    fn act(self: &Arc<Self>, a: ClientAction<ReqRef>) {
        match a {
            ClientAction::Request { nl } => {
                // Resent across reconnects by the connection; refused only
                // when the mount is being torn down.
                let _ = self.link.send_lock_request(encode_lock(&nl));
            }
            ClientAction::InvalidateReply { token, nl } => {
                self.link.respond(token, 0, encode_lock(&nl));
            }
            ClientAction::RecoverReply { token, locks } => {
                self.link.respond(token, 0, encode_recover_reply(&locks));
            }
            ClientAction::Granted {
                user,
                range,
                mode,
                write_seq,
                refresh_gen,
            } => {
                let tx = self.lock().waiting.remove(&user);
                let g = Granted {
                    range,
                    mode,
                    write_seq,
                    refresh_gen,
                };
                if let Some(Err(_)) = tx.map(|tx| tx.send(Ok(g))) {
                    // The waiter gave up: give the lock back.
                    self.event(ClientEvent::Unlock { user });
                }
            }
            ClientAction::WouldBlock { user } => {
                if let Some(tx) = self.lock().waiting.remove(&user) {
                    let _ = tx.send(Err(libc::EAGAIN));
                }
            }
            ClientAction::Invalidate { range, old, new } => {
                let me = self.clone();
                let hook = self.hook.clone();
                self.rt
                    .spawn(async move {
                        hook(range, old, new).await;
                        me.event(ClientEvent::InvalidateDone { start: range.start });
                    })
                    .detach();
            }
            ClientAction::BadMessage { .. } => {
                // Something the state machine refuses: drop the socket;
                // the connection resends and the server recovers.
                self.link.drop_socket();
            }
        }
    }
}
