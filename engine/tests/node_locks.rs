//! Cluster locks over real TCP (`node::NetLocks` on `NetClient`, the lock
//! server inside `NetServer`): a conflicting request makes the holder run
//! its invalidation hook (write back, drop cache) before the other mount is
//! granted; non-blocking requests fail with EAGAIN instead of waiting;
//! compatible readers share; a farewell is answered through the lock
//! server; and after a server failover the new lock server recovers the
//! held modes from the mounts and still makes conflicting requests wait
//! for the holder's invalidation.

mod server_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use engine::format::net::{Cmd, NetGreeting};
use engine::link::ServerLink;
use engine::lock::{inode_lock, LockClientConfig, LockMode};
use engine::node::locks::{InvalidateHook, NetLocks};
use engine::node::{NetClient, NetServer, TcpTransport, Transport};
use engine::runtime::{Executor, Runtime, ThreadPark};
use engine::server::Server;
use server_support::*;

type Log = Arc<Mutex<Vec<String>>>;

fn hook(name: &'static str, log: &Log) -> InvalidateHook {
    let log = log.clone();
    Arc::new(move |range, old, new| {
        log.lock().unwrap().push(format!(
            "{name} invalidates {:?} {old:?}->{new:?}",
            range.start.first
        ));
        Box::pin(async {})
    })
}

struct Mount {
    link: Arc<NetClient>,
    locks: NetLocks,
}

fn mount(
    rt: &Runtime,
    t: &Arc<dyn Transport>,
    server: &Server,
    rid: u64,
    addr: &Arc<Mutex<SocketAddr>>,
    name: &'static str,
    log: &Log,
) -> Mount {
    let g = NetGreeting {
        fsid: server.fsid().into(),
        fmt_vers: server.fmt_vers().into(),
        server_term: 0.into(),
        rid: rid.into(),
        flags: 0.into(),
    };
    let addr = addr.clone();
    let link = Arc::new(NetClient::start(
        rt.clone(),
        t.clone(),
        g,
        Box::new(move || {
            let a = *addr.lock().unwrap();
            Box::pin(async move { Some(a) })
        }),
    ));
    let locks = NetLocks::new(
        rt.clone(),
        link.clone(),
        LockClientConfig::default(),
        hook(name, log),
    );
    Mount { link, locks }
}

async fn serve(
    rt: &Runtime,
    server: &Arc<Server>,
    t: &Arc<dyn Transport>,
    term: u64,
    recovering: Vec<u64>,
) -> NetServer {
    serve_fencing(rt, server, t, term, recovering, Arc::default()).await
}

/// A server that records the rids it fences instead of failing at once.
async fn serve_fencing(
    rt: &Runtime,
    server: &Arc<Server>,
    t: &Arc<dyn Transport>,
    term: u64,
    recovering: Vec<u64>,
    fenced: Arc<Mutex<Vec<u64>>>,
) -> NetServer {
    NetServer::start(
        rt.clone(),
        server.clone(),
        t.clone(),
        "127.0.0.1:0".parse().unwrap(),
        term,
        recovering,
        Box::new(move |rid, why| {
            eprintln!("rid {rid:#x} fenced: {why}");
            fenced.lock().unwrap().push(rid);
        }),
    )
    .await
    .expect("listen")
}

#[test]
fn locks_over_tcp_invalidate_share_and_recover_after_failover() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 51);
        let server = open(&meta, &data, &rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = serve(&rt, &server, &t, 1, Vec::new()).await;
        let addr = Arc::new(Mutex::new(ns.local_addr()));
        let log: Log = Arc::default();
        let a = mount(&rt, &t, &server, 0xa, &addr, "a", &log);
        let b = mount(&rt, &t, &server, 0xb, &addr, "b", &log);
        let x = inode_lock(100);

        // A writes; B can't get in without waiting.
        let ga = a
            .locks
            .lock(x, LockMode::Write, false)
            .await
            .expect("a write");
        assert!(ga.granted.write_seq > 0, "write grants carry a write_seq");
        assert_eq!(
            b.locks.lock(x, LockMode::Write, true).await.err(),
            Some(libc::EAGAIN)
        );

        // B waits for a read; A lets go; A's hook runs before B's grant.
        let b_read = {
            let locks = &b.locks;
            let log = log.clone();
            async move {
                let g = locks.lock(x, LockMode::Read, false).await.expect("b read");
                log.lock().unwrap().push("b granted read".into());
                g
            }
        };
        let log2 = log.clone();
        let a_release = async move {
            log2.lock().unwrap().push("a unlocks".into());
            drop(ga);
        };
        let (gb, ()) = futures::join!(b_read, a_release);
        {
            let l = log.lock().unwrap();
            let inv = l
                .iter()
                .position(|e| e.starts_with("a invalidates") && e.ends_with("Write->Read"));
            let granted = l.iter().position(|e| e == "b granted read");
            assert!(
                matches!((inv, granted), (Some(i), Some(g)) if i < g),
                "holder must write back before the grant: {l:?}"
            );
        }

        // Readers share without invalidating each other.
        let before = log.lock().unwrap().len();
        let ga = a
            .locks
            .lock(x, LockMode::Read, false)
            .await
            .expect("a read");
        assert_eq!(
            log.lock().unwrap().len(),
            before,
            "{:?}",
            log.lock().unwrap()
        );
        drop(ga);

        // Failover: a new lock server (term 2) elsewhere recovers B's read
        // lock from B; A's write must then wait for B's invalidation.
        drop(ns);
        let ns2 = serve(&rt, &server, &t, 2, vec![0xa, 0xb]).await;
        *addr.lock().unwrap() = ns2.local_addr();
        a.link.drop_socket();
        b.link.drop_socket();
        let log3 = log.clone();
        let a_write = async {
            let g = a
                .locks
                .lock(x, LockMode::Write, false)
                .await
                .expect("a write after failover");
            log3.lock().unwrap().push("a granted write".into());
            g
        };
        let log4 = log.clone();
        let b_release = async move {
            log4.lock().unwrap().push("b unlocks".into());
            drop(gb);
        };
        let (ga, ()) = futures::join!(a_write, b_release);
        {
            let l = log.lock().unwrap();
            let inv = l
                .iter()
                .rposition(|e| e.starts_with("b invalidates") && e.contains("Read->"));
            let granted = l.iter().position(|e| e == "a granted write");
            assert!(
                matches!((inv, granted), (Some(i), Some(g)) if i < g),
                "recovered reader must be invalidated first: {l:?}"
            );
        }
        drop(ga);

        // Farewells go through the lock server and are answered.
        for m in [&a, &b] {
            m.link.set_farewell(true);
            m.link
                .call(Cmd::Farewell, Vec::new())
                .await
                .expect("farewell");
        }
        assert_clean(&meta, &data, "after lock traffic and farewells");
    });
}

/// A mount whose lock client is already gone (an unmount that dropped its
/// filesystem and waits for the farewell answer) still answers the
/// recovery of a new server: it holds nothing. Left silent, the new
/// server would fence it once the recovery timeout passed, and every
/// other mount's locks would wait that long (seen when quorum members
/// unmounted together and the leader left first).
#[test]
fn a_mount_without_locks_answers_recovery_and_is_not_fenced() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 52);
        let server = open(&meta, &data, &rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = serve(&rt, &server, &t, 1, Vec::new()).await;
        let addr = Arc::new(Mutex::new(ns.local_addr()));
        let log: Log = Arc::default();
        let a = mount(&rt, &t, &server, 0xa, &addr, "a", &log);
        let Mount {
            link: c_link,
            locks: c_locks,
        } = mount(&rt, &t, &server, 0xc, &addr, "c", &log);
        let x = inode_lock(200);
        drop(
            c_locks
                .lock(x, LockMode::Write, false)
                .await
                .expect("c write"),
        );
        // C unmounts: its locks go, its farewell is not yet sent.
        drop(c_locks);
        c_link.set_farewell(true);

        drop(ns);
        let fenced: Arc<Mutex<Vec<u64>>> = Arc::default();
        let ns2 = serve_fencing(&rt, &server, &t, 2, vec![0xa, 0xc], fenced.clone()).await;
        *addr.lock().unwrap() = ns2.local_addr();
        a.link.drop_socket();
        c_link.drop_socket();
        // Well inside the recovery timeout, after which C would be fenced.
        let patience = engine::lock::server::LOCK_RECOVERY_TIMEOUT / 2;
        let g = match futures::future::select(
            Box::pin(a.locks.lock(x, LockMode::Write, false)),
            Box::pin(rt.sleep(patience)),
        )
        .await
        {
            futures::future::Either::Left((g, _)) => g.expect("a write after failover"),
            futures::future::Either::Right(_) => {
                panic!("recovery still waits for the unmounting mount after {patience:?}")
            }
        };
        assert!(
            fenced.lock().unwrap().is_empty(),
            "fenced {:x?}",
            fenced.lock().unwrap()
        );
        drop(g);
        c_link
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("c's farewell");
        a.link.set_farewell(true);
        a.link
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("a's farewell");
        assert!(fenced.lock().unwrap().is_empty());
        assert_clean(&meta, &data, "after the farewells");
    });
}
