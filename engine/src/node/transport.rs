//! Byte streams between nodes: the seam between the sans-IO messaging of
//! [`crate::net`] and real sockets.
//!
//! A [`Transport`] connects and listens; a [`Stream`] is split into a
//! reader, polled by one task, and a writer, fed by one task, so that frames
//! leave in the order the state machines produced them.
//!
//! [`TcpTransport`] is the production transport: blocking `std::net`
//! sockets driven from the runtime's blocking pool (one pool thread per
//! socket read in flight), never from the engine thread. Its buffers are
//! owned and moved to the pool thread and back, so a caller that stops
//! waiting leaves nothing borrowed behind.
//!
//! With a keepalive timeout (the `tcp_keepalive_timeout_ms` mount option,
//! reference §10) every socket, connected or accepted, probes an idle peer
//! every second and gives up on it after the timeout, also when sent data
//! stays unacknowledged that long (`TCP_USER_TIMEOUT`): a peer cut off by
//! a partition or powered off ends the connection, so a mount goes to
//! look for the new server instead of waiting on a dead socket forever.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Runtime;

/// A transport call's future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Bytes read at most per read call.
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes connections and listening sockets.
pub trait Transport: Send + Sync + 'static {
    fn connect(&self, addr: SocketAddr) -> IoFuture<'_, Stream>;
    fn listen(&self, addr: SocketAddr) -> IoFuture<'_, Box<dyn Listener>>;
}

/// A listening socket.
pub trait Listener: Send + Sync {
    fn local_addr(&self) -> SocketAddr;
    fn accept(&self) -> IoFuture<'_, Stream>;
}

/// The reading half of a connection.
pub trait StreamReader: Send {
    /// The next bytes received; empty at end of stream.
    fn read(&mut self) -> IoFuture<'_, Vec<u8>>;
}

/// The writing half of a connection.
pub trait StreamWriter: Send + Sync {
    /// Writes all of `bytes`.
    fn write(&mut self, bytes: Vec<u8>) -> IoFuture<'_, ()>;
    /// Ends the connection both ways; a read in flight returns end of
    /// stream.
    fn shutdown(&self);
}

/// Both halves of one connection.
pub struct Stream {
    pub reader: Box<dyn StreamReader>,
    pub writer: Box<dyn StreamWriter>,
    pub peer: SocketAddr,
}

/// The default of `tcp_keepalive_timeout_ms`.
pub const KEEPALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(24_000);
/// Idle time before the first probe, and time between probes.
const KEEPALIVE_PROBE: Duration = Duration::from_secs(1);

/// TCP over `std::net`, driven from the blocking pool.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    rt: Runtime,
    keepalive: Option<Duration>,
}

impl TcpTransport {
    /// Sockets without keepalive (a dead peer is noticed only when the
    /// kernel gives up retransmitting).
    pub fn new(rt: Runtime) -> TcpTransport {
        TcpTransport {
            rt,
            keepalive: None,
        }
    }

    /// Sockets that give up on a silent peer after `timeout`.
    pub fn with_keepalive(rt: Runtime, timeout: Duration) -> TcpTransport {
        TcpTransport {
            rt,
            keepalive: Some(timeout),
        }
    }
}

fn setsockopt(s: &TcpStream, level: libc::c_int, name: libc::c_int, val: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = val as libc::c_int;
    // SAFETY: a socket this stream owns, and an int option of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_keepalive(s: &TcpStream, timeout: Duration) -> io::Result<()> {
    let probe = KEEPALIVE_PROBE.as_secs() as u32;
    let count = (timeout.as_millis() / KEEPALIVE_PROBE.as_millis()).max(1) as u32;
    setsockopt(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, probe)?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, probe)?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
    let ms = timeout.as_millis().min(u32::MAX as u128) as u32;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)
}

fn tcp_stream(rt: &Runtime, s: TcpStream, keepalive: Option<Duration>) -> io::Result<Stream> {
    // Small request frames must not wait for Nagle's timer.
    s.set_nodelay(true)?;
    if let Some(t) = keepalive {
        set_keepalive(&s, t)?;
    }
    let peer = s.peer_addr()?;
    let w = s.try_clone()?;
    Ok(Stream {
        reader: Box::new(TcpReader {
            rt: rt.clone(),
            sock: Some(s),
        }),
        writer: Box::new(TcpWriter {
            rt: rt.clone(),
            sock: Arc::new(w),
        }),
        peer,
    })
}

impl Transport for TcpTransport {
    fn connect(&self, addr: SocketAddr) -> IoFuture<'_, Stream> {
        Box::pin(async move {
            let s = self
                .rt
                .spawn_blocking(move || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
                .await?;
            tcp_stream(&self.rt, s, self.keepalive)
        })
    }

    fn listen(&self, addr: SocketAddr) -> IoFuture<'_, Box<dyn Listener>> {
        Box::pin(async move {
            let l = self
                .rt
                .spawn_blocking(move || TcpListener::bind(addr))
                .await?;
            let local = l.local_addr()?;
            Ok(Box::new(TcpListen {
                rt: self.rt.clone(),
                sock: Arc::new(l),
                local,
                keepalive: self.keepalive,
            }) as Box<dyn Listener>)
        })
    }
}

struct TcpListen {
    rt: Runtime,
    sock: Arc<TcpListener>,
    local: SocketAddr,
    keepalive: Option<Duration>,
}

impl Listener for TcpListen {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn accept(&self) -> IoFuture<'_, Stream> {
        let l = self.sock.clone();
        Box::pin(async move {
            let (s, _) = self.rt.spawn_blocking(move || l.accept()).await?;
            tcp_stream(&self.rt, s, self.keepalive)
        })
    }
}

struct TcpReader {
    rt: Runtime,
    /// Away on a pool thread while a read is in flight.
    sock: Option<TcpStream>,
}

impl StreamReader for TcpReader {
    fn read(&mut self) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let mut s = self
                .sock
                .take()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "reader lost"))?;
            let (s, res) = self
                .rt
                .spawn_blocking(move || {
                    let mut buf = vec![0u8; READ_CHUNK_BYTES];
                    let res = s.read(&mut buf).map(|n| {
                        buf.truncate(n);
                        buf
                    });
                    (s, res)
                })
                .await;
            self.sock = Some(s);
            res
        })
    }
}

struct TcpWriter {
    rt: Runtime,
    sock: Arc<TcpStream>,
}

impl StreamWriter for TcpWriter {
    fn write(&mut self, bytes: Vec<u8>) -> IoFuture<'_, ()> {
        let sock = self.sock.clone();
        Box::pin(async move {
            self.rt
                .spawn_blocking(move || (&*sock).write_all(&bytes))
                .await
        })
    }

    fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
