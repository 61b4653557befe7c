//! The quorum agent's thread: the sans-IO election of [`crate::quorum`]
//! over a UDP socket and the quorum blocks on the metadata device
//! (reference §6.2, ARCHITECTURE §2.4).
//!
//! The agent runs on a thread of its own so that heartbeats keep going
//! while the engine thread is busy: a starved heartbeat would make the
//! other members elect a new leader and fence a healthy node. Block I/O is
//! handed to the engine executor and waited for here (the device drivers
//! are polled by the engine thread).
//!
//! The thread waits on the socket with a timeout up to the agent's timer,
//! capped at [`REPORT_POLL`] so reports from the node (server up, fencing
//! done, server stopped, shutdown) are taken promptly.
//!
//! Touches `quorum` (the agent and block codec), `runtime` and `format`.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use drivers::{AlignedBuf, BlockDevice};

use crate::format::superblock::QuorumConfig;
use crate::format::{QUORUM_MAX_SLOTS, SM_BLOCK_SHIFT, SM_BLOCK_SIZE};
use crate::quorum::agent::QUORUM_MESSAGE_BYTES;
use crate::quorum::blocks::{quorum_blkno, slot_present};
use crate::quorum::{
    decode_quorum_block, empty_blocks, encode_quorum_block, Action, Agent, AgentConfig, AgentError,
    FenceRequest, Input, LogLevel, QuorumBlocks, Role,
};
use crate::runtime::Runtime;

/// Longest wait before reports from the node are looked at.
pub const REPORT_POLL: Duration = Duration::from_millis(20);

/// What the agent asks of the node it runs in. Called on the agent's
/// thread: implementations hand work to the engine and return at once.
pub trait QuorumHost: Send + Sync + 'static {
    /// Fence `fence` (earlier leaders), start the server of `term`, and
    /// report through [`QuorumDriver::report`]: `FencingDone`, then
    /// `ServerUp` (or `ServerStopped` if it could not start).
    fn start_server(&self, term: u64, fence: Vec<FenceRequest>);
    /// Stop the server of `term`; report `ServerStopped`.
    fn stop_server(&self, term: u64);
    /// The agent gave up (another mount uses our slot, quorum block I/O
    /// failed): the mount should go away.
    fn failed(&self, error: AgentError);
    fn log(&self, level: LogLevel, msg: &str);
}

/// A report from the node to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    FencingDone { term: u64, result: Result<(), i32> },
    ServerUp { term: u64 },
    ServerStopped { term: u64, err: Option<i32> },
    Shutdown,
}

/// Sends reports to the agent thread.
#[derive(Clone, Debug)]
pub struct ReportSender(Sender<Report>);

impl ReportSender {
    pub fn send(&self, r: Report) {
        // A gone agent thread has nothing left to hear.
        let _ = self.0.send(r);
    }
}

/// The agent thread's end of the report channel.
#[derive(Debug)]
pub struct ReportReceiver(Receiver<Report>);

/// A channel for the node's reports to the agent, made before the agent
/// starts so its host can hold the sender.
pub fn report_channel() -> (ReportSender, ReportReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (ReportSender(tx), ReportReceiver(rx))
}

/// What the agent thread shows the rest of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuorumStatus {
    pub term: u64,
    pub leader: bool,
    /// The agent exited after a shutdown (END written).
    pub exited: bool,
    pub failed: bool,
}

/// The running agent thread.
pub struct QuorumDriver {
    reports: ReportSender,
    status: Arc<Mutex<QuorumStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Reads every slot's quorum block (decode failures of configured slots
/// are EIO; unconfigured slots read as empty).
pub async fn read_quorum_blocks(
    meta: &Arc<dyn BlockDevice>,
    fsid: u64,
    qconf: &QuorumConfig,
) -> Result<QuorumBlocks, i32> {
    let mut blocks = empty_blocks();
    for (slot, blk) in blocks.iter_mut().enumerate().take(QUORUM_MAX_SLOTS) {
        if !slot_present(qconf, slot) {
            continue;
        }
        let buf = AlignedBuf::new(SM_BLOCK_SIZE);
        let (buf, res) = meta
            .read_at(quorum_blkno(slot) << SM_BLOCK_SHIFT, buf)
            .await;
        res.map_err(|_| libc::EIO)?;
        *blk = decode_quorum_block(&buf, fsid, slot).map_err(|_| libc::EIO)?;
    }
    Ok(blocks)
}

fn slot_addr(qconf: &QuorumConfig, slot: u8) -> Option<SocketAddr> {
    let a = &qconf.slots.get(slot as usize)?.addr;
    a.is_v4()
        .then(|| SocketAddr::V4(SocketAddrV4::new(a.ipv4(), a.port.get())))
}

impl QuorumDriver {
    /// Binds our slot's UDP address and starts the agent thread.
    pub fn start(
        rt: Runtime,
        meta: Arc<dyn BlockDevice>,
        cfg: AgentConfig,
        host: Arc<dyn QuorumHost>,
        channel: (ReportSender, ReportReceiver),
    ) -> std::io::Result<QuorumDriver> {
        let (sender, reports) = channel;
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let qconf = cfg.qconf;
        let fsid = cfg.fsid;
        let addr = slot_addr(&qconf, cfg.slot)
            .ok_or_else(|| invalid(format!("quorum slot {} is not configured", cfg.slot)))?;
        let sock = UdpSocket::bind(addr)?;
        let agent = Agent::new(cfg).map_err(|e| invalid(e.to_string()))?;
        let status = Arc::new(Mutex::new(QuorumStatus::default()));
        let st2 = status.clone();
        // The agent's own thread (ARCHITECTURE §2.4): heartbeats must not
        // wait behind engine work.
        #[allow(clippy::disallowed_methods)]
        let thread = std::thread::Builder::new()
            .name("scoutfs-quorum".into())
            .spawn(move || {
                AgentThread {
                    rt,
                    meta,
                    qconf,
                    sock,
                    agent,
                    host,
                    reports: reports.0,
                    status: st2,
                    deadline: None,
                    fsid,
                }
                .run()
            })?;
        Ok(QuorumDriver {
            reports: sender,
            status,
            thread: Some(thread),
        })
    }

    /// Passes a report from the node to the agent.
    pub fn report(&self, r: Report) {
        self.reports.send(r);
    }

    pub fn status(&self) -> QuorumStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status as it changes, for readers on other threads.
    pub fn status_handle(&self) -> Arc<Mutex<QuorumStatus>> {
        self.status.clone()
    }

    /// Asks the agent to resign and write END, and waits for its thread
    /// (which first waits for any server it runs to be stopped).
    pub fn shutdown(mut self) {
        self.report(Report::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QuorumDriver {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.report(Report::Shutdown);
            let _ = t.join();
        }
    }
}

struct AgentThread {
    rt: Runtime,
    meta: Arc<dyn BlockDevice>,
    qconf: QuorumConfig,
    sock: UdpSocket,
    agent: Agent,
    host: Arc<dyn QuorumHost>,
    reports: Receiver<Report>,
    status: Arc<Mutex<QuorumStatus>>,
    deadline: Option<Duration>,
    fsid: u64,
}

impl AgentThread {
    fn run(mut self) {
        let blocks = match self.block_on_read() {
            Ok(b) => b,
            Err(e) => {
                self.host.failed(AgentError::Io(e));
                self.set_status(|s| s.failed = true);
                return;
            }
        };
        let actions = self
            .agent
            .handle(self.rt.now(), Input::Start { blocks: &blocks });
        if self.execute(actions) {
            return;
        }
        let mut buf = [0u8; 64];
        loop {
            while let Ok(r) = self.reports.try_recv() {
                let input = match r {
                    Report::FencingDone { term, result } => Input::FencingDone { term, result },
                    Report::ServerUp { term } => Input::ServerUp { term },
                    Report::ServerStopped { term, err } => Input::ServerStopped { term, err },
                    Report::Shutdown => Input::Shutdown,
                };
                let a = self.agent.handle(self.rt.now(), input);
                if self.execute(a) {
                    return;
                }
            }
            let now = self.rt.now();
            if self.deadline.is_some_and(|d| d <= now) {
                self.deadline = None;
                let a = self.agent.handle(now, Input::Tick);
                if self.execute(a) {
                    return;
                }
                continue;
            }
            let wait = self
                .deadline
                .map_or(REPORT_POLL, |d| d.saturating_sub(now).min(REPORT_POLL))
                .max(Duration::from_millis(1));
            let _ = self.sock.set_read_timeout(Some(wait));
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let a = self.agent.handle(
                    self.rt.now(),
                    Input::Recv {
                        bytes: &buf[..n],
                        from_addr: Some(from),
                    },
                );
                if self.execute(a) {
                    return;
                }
            }
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut QuorumStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs `fut` on the engine executor and waits for it here; `None`
    /// when the executor is gone.
    fn on_engine<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.rt
            .spawn(async move {
                let _ = tx.send(fut.await);
            })
            .detach();
        rx.recv().ok()
    }

    fn block_on_read(&self) -> Result<QuorumBlocks, i32> {
        let (meta, fsid, qconf) = (self.meta.clone(), self.fsid, self.qconf);
        self.on_engine(async move { read_quorum_blocks(&meta, fsid, &qconf).await })
            .unwrap_or(Err(libc::EIO))
    }

    fn write_block(&self, bytes: Vec<u8>, slot: usize) -> Result<(), i32> {
        let meta = self.meta.clone();
        self.on_engine(async move {
            let buf = AlignedBuf::from_slice(&bytes);
            let (_, res) = meta
                .write_at(quorum_blkno(slot) << SM_BLOCK_SHIFT, buf)
                .await;
            res.map_err(|_| libc::EIO)?;
            meta.flush().await.map_err(|_| libc::EIO)
        })
        .unwrap_or(Err(libc::EIO))
    }

    fn send(&self, slot: u8, msg: &[u8; QUORUM_MESSAGE_BYTES]) {
        if let Some(addr) = slot_addr(&self.qconf, slot) {
            // Lost datagrams are the election's business: it retries.
            let _ = self.sock.send_to(msg, addr);
        }
    }

    /// Carries out actions (and the inputs they answer at once); true when
    /// the agent has exited.
    fn execute(&mut self, actions: Vec<Action>) -> bool {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let more = match a {
                Action::Send { to_slot, msg } => {
                    self.send(to_slot, &msg);
                    Vec::new()
                }
                Action::Broadcast { msg } => {
                    let ours = self.agent.slot();
                    let slots: Vec<u8> = self
                        .qconf
                        .active_slots()
                        .map(|(s, _)| s as u8)
                        .filter(|&s| s != ours)
                        .collect();
                    for s in slots {
                        self.send(s, &msg);
                    }
                    Vec::new()
                }
                Action::ReadBlocks => {
                    let res = self.block_on_read();
                    let now = self.rt.now();
                    match &res {
                        Ok(b) => self.agent.handle(now, Input::BlocksRead { result: Ok(b) }),
                        Err(e) => self
                            .agent
                            .handle(now, Input::BlocksRead { result: Err(*e) }),
                    }
                }
                Action::WriteBlock { slot, block } => {
                    let bytes = encode_quorum_block(&block, self.fsid, slot as usize);
                    let result = self.write_block(bytes, slot as usize);
                    self.agent
                        .handle(self.rt.now(), Input::BlockWritten { result })
                }
                Action::SetTimer { deadline } => {
                    self.deadline = Some(deadline);
                    Vec::new()
                }
                Action::StartServer {
                    term,
                    fence_requests,
                } => {
                    self.host.start_server(term, fence_requests);
                    Vec::new()
                }
                Action::StopServer { term } => {
                    self.host.stop_server(term);
                    Vec::new()
                }
                Action::Log { level, msg } => {
                    self.host.log(level, &msg);
                    Vec::new()
                }
                Action::Failed { error } => {
                    self.set_status(|s| s.failed = true);
                    self.host.failed(error);
                    Vec::new()
                }
                Action::Exited => {
                    self.set_status(|s| s.exited = true);
                    return true;
                }
            };
            queue.extend(more);
        }
        let (term, leader) = (self.agent.term(), self.agent.role() == Role::Leader);
        self.set_status(|s| {
            s.term = term;
            s.leader = leader;
        });
        false
    }
}
