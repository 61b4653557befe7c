//! One node of a volume: the quorum agent (when it has a slot), the server
//! it starts when elected, and the network link its mount uses to reach
//! whichever node serves (reference §5.4 startup, §6; ARCHITECTURE §2.10).
//!
//! Startup of a server, as the agent asks for it: fence every earlier
//! leader (through [`Fencer`]: a fence agent or the local flock fence), open the server from the super, listen
//! on our slot's address, then report up. A node without a slot is a
//! client only. Clients find the server from the quorum blocks, asked
//! again before every connection attempt, so failover needs nothing more.
//!
//! Every fence (earlier leaders, mounts that did not recover or reconnect)
//! is a request of the node's [`Fencer`]; a fenced mount is reclaimed and
//! its request removed; a failed or unanswered request stops the server
//! (§6.4) so that a new leader retries.
//!
//! Touches `node::{quorum, client, serve, fence, fencer}`, `server`, `quorum`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use drivers::BlockDevice;

use super::client::{Locate, NetClient};
use super::fence::{is_dead_here, RidLock};
use super::fence_requests::Reason;
use super::fencer::{Fencer, FencerConfig};
use super::quorum::{read_quorum_blocks, QuorumDriver, QuorumHost, Report, ReportSender};
use super::serve::NetServer;
use super::transport::Transport;
use crate::format::net::{NetGreeting, GREETING_FLAG_QUORUM};
use crate::format::superblock::SuperBlock;
use crate::quorum::{find_server, AgentConfig, AgentError, FenceRequest, LogLevel};
use crate::runtime::Runtime;
use crate::server::{read_super, Server, ServerOptions};

/// How long mounts recorded in the super have to reconnect to a new
/// server before they are fenced.
pub const CLIENT_RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a node's server looks for merged log trees left to free.
pub const FREEING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a node's log lines go.
pub type NodeLog = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// How a node is set up.
pub struct NodeConfig {
    pub meta: Arc<dyn BlockDevice>,
    pub data: Arc<dyn BlockDevice>,
    pub rt: Runtime,
    pub transport: Arc<dyn Transport>,
    /// This mount's rid (random, never 0).
    pub rid: u64,
    /// `quorum_slot_nr`, or `None` for a client-only mount.
    pub slot: Option<u8>,
    /// Where rid locks are held and fenced (`/run/scoutfs/rid`).
    pub rid_lock_dir: PathBuf,
    /// Options of the server this node starts when elected (its term is
    /// set from the election).
    pub server: ServerOptions,
    /// Shortens the election's timeouts (tests); `None`: the reference's.
    pub heartbeat_timeout: Option<std::time::Duration>,
    /// Where the agent's log lines and failures go.
    pub log: NodeLog,
    /// Wall-clock time since the Unix epoch when `rt.now()` read zero:
    /// quorum block events are stamped `wall_base + now`, real time as in
    /// the original (the engine reads no real clock; the caller does).
    pub wall_base: std::time::Duration,
}

/// A node's status and its server's address, readable from any thread.
pub type StatusSource = Arc<dyn Fn() -> (NodeStatus, Option<SocketAddr>) + Send + Sync>;

/// What the node's server is doing, for the status tree and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub quorum_term: u64,
    pub leader: bool,
    /// The term of the server running in this node, if any.
    pub serving_term: Option<u64>,
    pub agent_failed: bool,
}

struct Running {
    term: u64,
    server: Arc<Server>,
    net: NetServer,
}

struct Host {
    me: std::sync::Weak<Host>,
    rt: Runtime,
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    transport: Arc<dyn Transport>,
    rid: u64,
    listen: SocketAddr,
    rid_lock_dir: PathBuf,
    server_opts: ServerOptions,
    reports: ReportSender,
    running: Mutex<Option<Running>>,
    fencer: Arc<Fencer>,
    log: NodeLog,
}

/// A started node.
pub struct Node {
    sb: SuperBlock,
    rid: u64,
    client: Arc<NetClient>,
    host: Option<Arc<Host>>,
    driver: Option<QuorumDriver>,
    _rid_lock: RidLock,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn start(self: Arc<Self>, term: u64, fence: Vec<FenceRequest>) {
        // All at once: the agent sees every request in one pass.
        let fences = fence.iter().map(|req| {
            (self.log)(
                LogLevel::Info,
                &format!(
                    "fencing rid {:016x} (leader of term {} in slot {})",
                    req.rid, req.term, req.slot
                ),
            );
            let ip = if req.addr.is_v4() {
                req.addr.ipv4()
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            self.fencer.fence(req.rid, ip, Reason::QuorumBlockLeader)
        });
        let results = futures::future::join_all(fences).await;
        for (req, res) in fence.iter().zip(results) {
            if let Err(e) = res {
                (self.log)(
                    LogLevel::Error,
                    &format!("fencing rid {:016x} failed: errno {e}", req.rid),
                );
                self.reports.send(Report::FencingDone {
                    term,
                    result: Err(e),
                });
                return;
            }
        }
        self.reports.send(Report::FencingDone {
            term,
            result: Ok(()),
        });
        let opts = ServerOptions {
            term,
            ..self.server_opts.clone()
        };
        let started = async {
            let server =
                Server::open(self.meta.clone(), self.data.clone(), self.rt.clone(), opts).await?;
            let weak = self.me.clone();
            let mut recovering = server.mounted_rids().await?;
            recovering.retain(|&r| r != self.rid);
            let net = NetServer::start(
                self.rt.clone(),
                server.clone(),
                self.transport.clone(),
                self.listen,
                term,
                recovering,
                Box::new(move |rid, why| {
                    if let Some(host) = weak.upgrade() {
                        host.fence_hook(term, rid, why);
                    }
                }),
            )
            .await
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EADDRINUSE))?;
            Ok::<_, i32>((server, net))
        };
        match started.await {
            Ok((server, net)) => {
                let recovering = server.clone();
                *self.lock() = Some(Running { term, server, net });
                (self.log)(
                    LogLevel::Info,
                    &format!("server of term {term} listening on {}", self.listen),
                );
                self.reports.send(Report::ServerUp { term });
                let gone: Vec<u64> = fence.iter().map(|r| r.rid).collect();
                self.rt
                    .spawn(self.clone().recover(term, recovering, gone))
                    .detach();
                self.rt
                    .spawn(free_merged(self.me.clone(), term, self.rt.clone()))
                    .detach();
            }
            Err(e) => {
                (self.log)(
                    LogLevel::Error,
                    &format!("server of term {term} failed to start: errno {e}"),
                );
                self.reports
                    .send(Report::ServerStopped { term, err: Some(e) });
            }
        }
    }
}

/// Frees merged log trees while this node serves `term` (§2.4, the
/// original's log merge free work): each commit frees a bounded piece, and
/// without this only commits that mounts cause would, so a merge finished
/// while the mounts are idle or leaving would keep its input trees' blocks.
async fn free_merged(host: std::sync::Weak<Host>, term: u64, rt: Runtime) {
    loop {
        rt.sleep(FREEING_INTERVAL).await;
        loop {
            // Looked up each time: a stopped server must not commit again.
            let Some(server) = host.upgrade().and_then(|h| h.serving(term)) else {
                return;
            };
            match server.background().await {
                Ok(true) => {}
                Ok(false) => break,
                // The server stopped: its commits failed.
                Err(_) => return,
            }
        }
    }
}

impl Host {
    /// The server of `term` while it runs here.
    fn serving(&self, term: u64) -> Option<Arc<Server>> {
        self.lock()
            .as_ref()
            .filter(|r| r.term == term)
            .map(|r| r.server.clone())
    }

    /// Server startup's client recovery (§5.4): every mount recorded in the
    /// super must reconnect within [`CLIENT_RECOVERY_TIMEOUT`]; mounts
    /// known to be gone (earlier leaders just fenced, rids that died on
    /// this host) are reclaimed at once, the others that stay away are
    /// fenced and then reclaimed.
    async fn recover(self: Arc<Self>, term: u64, server: Arc<Server>, gone: Vec<u64>) {
        let rids = match server.mounted_rids().await {
            Ok(r) => r,
            Err(e) => {
                (self.log)(
                    LogLevel::Error,
                    &format!("reading mounted clients: errno {e}"),
                );
                return;
            }
        };
        let mut waiting = Vec::new();
        for rid in rids.into_iter().filter(|&r| r != self.rid) {
            if gone.contains(&rid) || is_dead_here(&self.rid_lock_dir, rid) {
                self.reclaim(&server, rid).await;
            } else {
                waiting.push(rid);
            }
        }
        if waiting.is_empty() {
            return;
        }
        self.rt.sleep(CLIENT_RECOVERY_TIMEOUT).await;
        for rid in waiting {
            let back = match self.lock().as_ref() {
                Some(r) if r.term == term => r.net.rids().contains(&rid),
                // This server is gone: its successor recovers.
                _ => return,
            };
            if back {
                continue;
            }
            (self.log)(
                LogLevel::Warn,
                &format!("rid {rid:016x} did not reconnect: fencing"),
            );
            self.rt
                .spawn(self.clone().fence_and_reclaim(
                    term,
                    server.clone(),
                    rid,
                    Reason::ClientRecovery,
                ))
                .detach();
        }
    }

    /// The network server's verdict that `rid` must be fenced.
    fn fence_hook(self: Arc<Self>, term: u64, rid: u64, why: &str) {
        let server = match self.lock().as_ref() {
            Some(r) if r.term == term => r.server.clone(),
            _ => return,
        };
        let reason = Reason::parse(why).unwrap_or(Reason::ClientReconnect);
        (self.log)(
            LogLevel::Warn,
            &format!("client rid {rid:016x} must be fenced: {why}"),
        );
        self.rt
            .spawn(self.clone().fence_and_reclaim(term, server, rid, reason))
            .detach();
    }

    /// Fences `rid` and reclaims it; a fence that fails stops the server
    /// of `term` (§6.4: a new leader retries).
    async fn fence_and_reclaim(
        self: Arc<Self>,
        term: u64,
        server: Arc<Server>,
        rid: u64,
        reason: Reason,
    ) {
        let seen = self.lock().as_ref().and_then(|r| r.net.peer_addr(rid));
        let ip = match seen {
            Some(SocketAddr::V4(a)) => *a.ip(),
            // Never reached this server: what its first greeting recorded.
            _ => server
                .mounted_client_addr(rid)
                .await
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        match self.fencer.fence(rid, ip, reason).await {
            Ok(()) => self.reclaim(&server, rid).await,
            Err(e) => {
                (self.log)(
                    LogLevel::Error,
                    &format!(
                        "fencing rid {rid:016x} ({}) failed: errno {e}, stopping the server",
                        reason.as_str()
                    ),
                );
                let stopped = self.lock().take_if(|r| r.term == term);
                if stopped.is_some() {
                    drop(stopped);
                    self.fencer.clear();
                    self.reports
                        .send(Report::ServerStopped { term, err: Some(e) });
                }
            }
        }
    }

    async fn reclaim(&self, server: &Server, rid: u64) {
        match server.reclaim_rid(rid).await {
            Ok(()) => {
                if let Some(r) = self.lock().as_ref() {
                    r.net.client_gone(rid);
                }
                self.fencer.remove(rid);
                (self.log)(LogLevel::Info, &format!("reclaimed rid {rid:016x}"))
            }
            Err(e) => (self.log)(
                LogLevel::Error,
                &format!("reclaiming rid {rid:016x} failed: errno {e}"),
            ),
        }
    }
}

impl QuorumHost for Host {
    fn start_server(&self, term: u64, fence: Vec<FenceRequest>) {
        if let Some(me) = self.me.upgrade() {
            self.rt.spawn(me.start(term, fence)).detach();
        }
    }

    fn stop_server(&self, term: u64) {
        let stopped = self.lock().take_if(|r| r.term == term);
        // Requests die with the server (a new leader asks again); a start
        // still waiting on its fences gets ECANCELED.
        self.fencer.clear();
        let reports = self.reports.clone();
        self.rt
            .spawn(async move {
                // STOP goes into our quorum block once this is reported:
                // by then the server must be unable to write, or a newer
                // leader that trusted the STOP could lose commits to a
                // late super write of ours.
                if let Some(r) = stopped {
                    r.server.shut_down().await;
                    drop(r);
                }
                reports.send(Report::ServerStopped { term, err: None });
            })
            .detach();
    }

    fn failed(&self, error: AgentError) {
        (self.log)(LogLevel::Error, &format!("quorum agent failed: {error}"));
    }

    fn log(&self, level: LogLevel, msg: &str) {
        (self.log)(level, msg);
    }
}

fn slot_socket(sb: &SuperBlock, slot: usize) -> Option<SocketAddr> {
    let a = &sb.qconf.slots.get(slot)?.addr;
    a.is_v4()
        .then(|| SocketAddr::V4(SocketAddrV4::new(a.ipv4(), a.port.get())))
}

impl Node {
    /// Reads the super, takes this rid's lock, starts the quorum agent
    /// (with a slot) and the link to the server. The mount opened over
    /// [`Node::link`] waits until some node serves.
    pub async fn start(cfg: NodeConfig) -> Result<Node, String> {
        let sb = read_super(&cfg.meta, true)
            .await
            .map_err(|e| format!("reading the metadata super: errno {e}"))?;
        let fsid = sb.hdr.fsid.get();
        let rid_lock = RidLock::take(&cfg.rid_lock_dir, cfg.rid)
            .map_err(|e| format!("rid lock in {}: {e}", cfg.rid_lock_dir.display()))?;

        let (host, driver) = match cfg.slot {
            None => (None, None),
            Some(slot) => {
                let listen = slot_socket(&sb, slot as usize)
                    .ok_or_else(|| format!("quorum slot {slot} is not configured"))?;
                let (reports, rx) = super::quorum::report_channel();
                let host = Arc::new_cyclic(|me| Host {
                    me: me.clone(),
                    rt: cfg.rt.clone(),
                    meta: cfg.meta.clone(),
                    data: cfg.data.clone(),
                    transport: cfg.transport.clone(),
                    rid: cfg.rid,
                    listen,
                    rid_lock_dir: cfg.rid_lock_dir.clone(),
                    server_opts: cfg.server.clone(),
                    reports,
                    running: Mutex::new(None),
                    fencer: Fencer::new(
                        cfg.rt.clone(),
                        FencerConfig::local_host(&cfg.rt, &cfg.rid_lock_dir),
                    ),
                    log: cfg.log.clone(),
                });
                let mut acfg = AgentConfig::new(fsid, cfg.rid, slot, sb.qconf, cfg.rt.random_u64());
                if let Some(hb) = cfg.heartbeat_timeout {
                    acfg.heartbeat_timeout = hb;
                }
                acfg.wall_base = cfg.wall_base;
                let driver = QuorumDriver::start(
                    cfg.rt.clone(),
                    cfg.meta.clone(),
                    acfg,
                    host.clone(),
                    (host.reports.clone(), rx),
                )
                .map_err(|e| format!("quorum slot {slot}: {e}"))?;
                (Some(host), Some(driver))
            }
        };

        let greeting = NetGreeting {
            fsid: fsid.into(),
            fmt_vers: sb.fmt_vers,
            server_term: 0.into(),
            rid: cfg.rid.into(),
            flags: if cfg.slot.is_some() {
                GREETING_FLAG_QUORUM
            } else {
                0
            }
            .into(),
        };
        let (meta, qconf) = (cfg.meta.clone(), sb.qconf);
        let locate: Locate = Box::new(move || {
            let meta = meta.clone();
            Box::pin(async move {
                let blocks = read_quorum_blocks(&meta, fsid, &qconf).await.ok()?;
                let at = find_server(&blocks, &qconf)?;
                Some(SocketAddr::V4(SocketAddrV4::new(
                    at.addr.ipv4(),
                    at.addr.port.get(),
                )))
            })
        });
        let client = Arc::new(NetClient::start(
            cfg.rt.clone(),
            cfg.transport.clone(),
            greeting,
            locate,
        ));
        Ok(Node {
            sb,
            rid: cfg.rid,
            client,
            host,
            driver,
            _rid_lock: rid_lock,
        })
    }

    /// The mount's link to the server.
    pub fn link(&self) -> Arc<NetClient> {
        self.client.clone()
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// The metadata super as read at start.
    pub fn super_block(&self) -> &SuperBlock {
        &self.sb
    }

    pub fn status(&self) -> NodeStatus {
        self.status_source()().0
    }

    /// [`Node::status`] and the address of the server running here, as a
    /// function other threads may keep (the status tree's `quorum/`).
    pub fn status_source(&self) -> StatusSource {
        let q = self.driver.as_ref().map(|d| d.status_handle());
        let host = self.host.clone();
        Arc::new(move || {
            let q = q
                .as_ref()
                .map(|q| *q.lock().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or_default();
            let serving = host
                .as_ref()
                .and_then(|h| h.lock().as_ref().map(|r| (r.term, r.net.local_addr())));
            let st = NodeStatus {
                quorum_term: q.term,
                leader: q.leader,
                serving_term: serving.map(|s| s.0),
                agent_failed: q.failed,
            };
            (st, serving.map(|s| s.1))
        })
    }

    /// This node's fence requests (a quorum member's; `None` for a client
    /// only mount): the status tree publishes them and passes answers in.
    pub fn fencer(&self) -> Option<Arc<Fencer>> {
        self.host.as_ref().map(|h| h.fencer.clone())
    }

    /// The server running here, if any (tests and the status tree).
    pub fn serving(&self) -> Option<(u64, SocketAddr)> {
        let h = self.host.as_ref()?;
        let r = h.lock();
        r.as_ref().map(|r| (r.term, r.net.local_addr()))
    }

    /// Leaves cleanly: the caller has committed and said farewell through
    /// [`Node::link`]. Stops the link, then the agent (which stops our
    /// server and writes STOP and END). Blocking: waits for the agent
    /// thread, so call it off the engine thread or after the engine's
    /// work is done.
    pub fn shutdown(mut self) {
        self.client.stop();
        if let Some(d) = self.driver.take() {
            d.shutdown();
        }
    }
}

/// Whether the quorum blocks record a server that has not stopped: a
/// mount without a quorum slot then joins as a client of it.
pub async fn server_recorded(meta: &Arc<dyn BlockDevice>) -> Result<bool, i32> {
    let sb = read_super(meta, true).await?;
    let blocks = read_quorum_blocks(meta, sb.hdr.fsid.get(), &sb.qconf).await?;
    Ok(find_server(&blocks, &sb.qconf).is_some())
}

/// Whether the last super written still records `rid` as mounted. A mount
/// whose farewell answer was lost (the server it went to ended with it)
/// finishes unmounting once its item is gone (reference §5.4). Errors
/// (a block rewritten under the read) mean "don't know": ask again later.
pub async fn still_mounted(
    meta: &Arc<dyn BlockDevice>,
    rid: u64,
    rt: &Runtime,
) -> Result<bool, i32> {
    let sb = read_super(meta, true).await?;
    let r = rt.clone();
    let cache = Arc::new(crate::block::BlockCache::new(
        meta.clone(),
        sb.hdr.fsid.get(),
        16,
        Arc::new(move || r.random_u64()),
    ));
    let item = crate::btree::Btree::new(cache)
        .lookup(
            &sb.mounted_clients,
            &crate::format::items::mounted_client_key(rid),
        )
        .await
        .map_err(|e| e.errno())?;
    Ok(item.is_some())
}
