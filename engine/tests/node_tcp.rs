//! Mounts and the server over real TCP on loopback (the production
//! executor and `node::TcpTransport`): filesystem operations through the
//! network link, sockets dropped on either side in the middle of a
//! workload (requests and unacknowledged responses are resent, nothing is
//! done twice or lost), a second mount reading everything back, a refused
//! greeting, and hostile bytes that only cost the sender its connection.

mod server_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use drivers::FaultDevice;
use engine::format::items::ROOT_INO;
use engine::format::net::{Cmd, NetGreeting};
use engine::fs::{Ctx, Fs};
use engine::link::ServerLink;
use engine::node::{NetClient, NetServer, TcpTransport, Transport};
use engine::runtime::{Executor, Runtime, ThreadPark};
use engine::server::Server;
use engine::trans::{Mount, MountOptions};
use server_support::*;

fn ctx() -> Ctx {
    root_ctx()
}

fn greeting(server: &Server, rid: u64) -> NetGreeting {
    NetGreeting {
        fsid: server.fsid().into(),
        fmt_vers: server.fmt_vers().into(),
        server_term: 0.into(),
        rid: rid.into(),
        flags: 0.into(),
    }
}

fn client(
    rt: &Runtime,
    t: &Arc<dyn Transport>,
    g: NetGreeting,
    addr: SocketAddr,
) -> Arc<NetClient> {
    Arc::new(NetClient::start(
        rt.clone(),
        t.clone(),
        g,
        Box::new(move || Box::pin(async move { Some(addr) })),
    ))
}

async fn fs_over(
    link: Arc<NetClient>,
    meta: &FaultDevice,
    data: &FaultDevice,
    rt: &Runtime,
    rid: u64,
) -> (Arc<Mount>, Fs) {
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    mount_fs(link, meta, data, rt, rid, opts).await
}

/// A fresh volume's server listening on a loopback port. A client whose
/// state expires is fenced: no test here lets that happen.
struct Loopback {
    meta: FaultDevice,
    data: FaultDevice,
    server: Arc<Server>,
    t: Arc<dyn Transport>,
    ns: NetServer,
    addr: SocketAddr,
}

impl Loopback {
    async fn start(rt: &Runtime, seed: u64) -> Loopback {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, seed);
        let server = open(&meta, &data, rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = NetServer::start(
            rt.clone(),
            server.clone(),
            t.clone(),
            "127.0.0.1:0".parse().unwrap(),
            1,
            Vec::new(),
            Box::new(|rid, why| panic!("rid {rid:#x} fenced: {why}")),
        )
        .await
        .expect("listen");
        let addr = ns.local_addr();
        Loopback {
            meta,
            data,
            server,
            t,
            ns,
            addr,
        }
    }
}

fn body(i: u64) -> Vec<u8> {
    (0..5000 + i * 37).map(|b| (b * 7 + i) as u8).collect()
}

#[test]
fn mounts_work_over_tcp_through_dropped_sockets() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let lb = Loopback::start(&rt, 41).await;
        let (meta, data, server, t, ns, addr) = (lb.meta, lb.data, lb.server, lb.t, lb.ns, lb.addr);

        let link = client(&rt, &t, greeting(&server, 11), addr);
        let (m, fs) = fs_over(link.clone(), &meta, &data, &rt, 11).await;
        let c = ctx();
        let dir = fs.mkdir(&c, ROOT_INO, b"d", 0o755).await.unwrap();
        for i in 0..120u64 {
            let f = fs
                .create(&c, dir.ino, format!("f{i}").as_bytes(), 0o644)
                .await
                .unwrap();
            fs.write(f.ino, 0, &body(i)).await.unwrap();
            match i % 40 {
                10 => link.drop_socket(),
                25 => ns.drop_sockets(),
                _ => {}
            }
            if i % 8 == 0 {
                fs.fsync().await.unwrap();
            }
        }
        fs.fsync().await.unwrap();
        let st = link.stats();
        assert!(st.connects >= 7, "reconnects: {st:?}");
        assert_eq!(ns.rids(), vec![11]);
        assert_clean(&meta, &data, "after the tcp workload");

        // A second mount sees it all.
        let link2 = client(&rt, &t, greeting(&server, 12), addr);
        let (_m2, fs2) = fs_over(link2.clone(), &meta, &data, &rt, 12).await;
        let d = fs2.lookup(ROOT_INO, b"d").await.unwrap();
        for i in 0..120u64 {
            let a = fs2.lookup(d.ino, format!("f{i}").as_bytes()).await.unwrap();
            assert_eq!(fs2.read(a.ino, 0, 1 << 20).await.unwrap(), body(i), "f{i}");
        }

        // Farewell over the network: the server forgets the mount.
        drop(fs);
        drop(m);
        link.set_farewell(true);
        link.call(Cmd::Farewell, Vec::new())
            .await
            .expect("farewell");
        link.stop();
        link2.set_farewell(true);
        link2
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("farewell");
        assert_clean(&meta, &data, "after farewells");
    });
}

#[test]
fn bad_greetings_and_hostile_bytes_only_cost_the_sender_its_socket() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let lb = Loopback::start(&rt, 42).await;
        let (meta, data, server, t, ns, addr) = (lb.meta, lb.data, lb.server, lb.t, lb.ns, lb.addr);

        // Another volume's fsid: every call fails with the server's errno.
        let mut g = greeting(&server, 21);
        g.fsid = (server.fsid() ^ 1).into();
        let wrong = client(&rt, &t, g, addr);
        let e = wrong.call(Cmd::GetLastSeq, Vec::new()).await;
        assert!(matches!(e, Err(x) if x != 0), "wrong fsid got {e:?}");

        // Garbage, an oversized length, a request before any greeting, and
        // a truncated frame at end of stream: each connection is dropped by
        // the server, which keeps serving.
        let oversized = {
            let mut v = vec![0u8; 32];
            v[24..26].copy_from_slice(&u16::MAX.to_le_bytes());
            v
        };
        let no_greeting = {
            let mut v = vec![0u8; 32];
            v[16] = 1; // id
            v[26] = Cmd::GetLastSeq as u8;
            v
        };
        let hostile: Vec<(Vec<u8>, bool)> = vec![
            (vec![0xffu8; 4096], false),
            (oversized, false),
            (no_greeting, false),
            (vec![0u8; 7], true),
        ];
        for (bytes, then_eof) in hostile {
            let got = rt
                .spawn_blocking(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let _ = s.write_all(&bytes);
                    if then_eof {
                        s.shutdown(std::net::Shutdown::Write).unwrap();
                    }
                    let mut buf = [0u8; 64];
                    s.read(&mut buf)
                })
                .await;
            // The server closes: end of stream or a reset, never an answer
            // and never a hang (a timeout is an error of another kind).
            let closed = match &got {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            };
            assert!(closed, "server answered hostile bytes: {got:?}");
        }
        // Still serving.
        let good = client(&rt, &t, greeting(&server, 23), addr);
        good.call(Cmd::GetLastSeq, Vec::new())
            .await
            .expect("a good mount is served");
        assert!(ns.stats().accepted >= 5);
        drop(meta);
        drop(data);
    });
}
