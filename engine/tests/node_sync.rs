//! Coordinated finalization and farewells over real TCP (reference §2.4,
//! §5.4): a log merge waits for every mount's tree, so the server finalizes
//! the committed trees of idle mounts itself and asks mounts with an open
//! transaction to commit (SYNC_LOG_TREES); an unmounting quorum member is
//! let go only while enough quorum members stay for everyone still mounted.

mod server_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drivers::FaultDevice;
use engine::block::BlockCache;
use engine::btree::Btree;
use engine::format::log_trees::LOG_TREES_FLAG_FINALIZED;
use engine::format::net::{Cmd, NetGreeting, GREETING_FLAG_QUORUM};
use engine::fs::{Fs, ROOT_INO};
use engine::link::ServerLink;
use engine::lock::LockClientConfig;
use engine::node::fs_locks::{ClusterFsLocks, KernelSlot};
use engine::node::{NetClient, NetServer, TcpTransport, Transport};
use engine::runtime::{Executor, Runtime, ThreadPark};
use engine::server::Server;
use engine::trans::{Mount, MountOptions};
use server_support::*;

struct Node {
    link: Arc<NetClient>,
    mount: Arc<Mount>,
    fs: Fs,
}

fn greeting(server: &Server, rid: u64, quorum: bool) -> NetGreeting {
    NetGreeting {
        fsid: server.fsid().into(),
        fmt_vers: server.fmt_vers().into(),
        server_term: 0.into(),
        rid: rid.into(),
        flags: if quorum { GREETING_FLAG_QUORUM } else { 0 }.into(),
    }
}

async fn node(
    rt: &Runtime,
    t: &Arc<dyn Transport>,
    server: &Server,
    devs: (&FaultDevice, &FaultDevice),
    addr: SocketAddr,
    rid: u64,
    quorum: bool,
) -> Node {
    let link = Arc::new(NetClient::start(
        rt.clone(),
        t.clone(),
        greeting(server, rid, quorum),
        Box::new(move || Box::pin(async move { Some(addr) })),
    ));
    let mount = Arc::new(
        Mount::open(
            Arc::new(devs.0.clone()),
            Arc::new(devs.1.clone()),
            link.clone(),
            rt.clone(),
            rid,
            MountOptions {
                commit_interval: None,
                merge_interval: None,
                ..MountOptions::default()
            },
        )
        .await
        .expect("mount opens"),
    );
    let locks = ClusterFsLocks::start(
        rt.clone(),
        link.clone(),
        &mount,
        LockClientConfig::default(),
        KernelSlot::default(),
    );
    let clock = std::sync::atomic::AtomicU64::new(100);
    let fs = Fs::with_locks(
        mount.clone(),
        mount.clone(),
        Arc::new(devs.1.clone()),
        mount.fmt_vers(),
        Box::new(move || engine::fs::Time {
            sec: clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            nsec: 0,
        }),
        Arc::new(locks),
    );
    Node { link, mount, fs }
}

async fn serve(rt: &Runtime, server: &Arc<Server>, t: &Arc<dyn Transport>) -> NetServer {
    NetServer::start(
        rt.clone(),
        server.clone(),
        t.clone(),
        "127.0.0.1:0".parse().unwrap(),
        1,
        Vec::new(),
        Box::new(|rid, why| panic!("rid {rid:#x} fenced: {why}")),
    )
    .await
    .expect("listen")
}

async fn merge_started(server: &Server, meta: &FaultDevice, rt: &Runtime) -> bool {
    let r = rt.clone();
    let cache = Arc::new(BlockCache::new(
        Arc::new(meta.clone()),
        server.fsid(),
        64,
        Arc::new(move || r.random_u64()),
    ));
    let sb = server.stable_super();
    engine::merge::server::merge_status(&Btree::new(cache), &sb)
        .await
        .expect("merge status")
        .is_some()
}

/// Polls `cond` on the runtime's clock until it holds or 20 s pass.
async fn eventually<F, Fut>(rt: &Runtime, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2000 {
        if cond().await {
            return;
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 20 s");
}

async fn touch(n: &Node, name: &str) {
    n.fs.create(&root_ctx(), ROOT_INO, name.as_bytes(), 0o644)
        .await
        .expect("create");
}

#[test]
fn idle_and_open_mounts_do_not_hold_a_merge_back() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 61);
        let server = open(&meta, &data, &rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = serve(&rt, &server, &t).await;
        let addr = ns.local_addr();
        let a = node(&rt, &t, &server, (&meta, &data), addr, 0xa, false).await;
        let b = node(&rt, &t, &server, (&meta, &data), addr, 0xb, false).await;
        let c = node(&rt, &t, &server, (&meta, &data), addr, 0xc, false).await;

        // A commits and goes idle (its transaction closed); B commits and
        // opens its next transaction in the same tree at once (a sync
        // reopens).
        touch(&a, "a").await;
        a.mount.commit().await.expect("a commits");
        touch(&b, "b").await;
        b.fs.fsync().await.expect("b syncs");

        // C leaves, which finalizes its tree: A's is then finalized by the
        // server, B is asked to commit and is finalized when it does.
        touch(&c, "c").await;
        c.fs.fsync().await.expect("c syncs");
        assert!(!merge_started(&server, &meta, &rt).await);
        c.link
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("farewell");
        drop(c);
        eventually(&rt, "the merge starts", || {
            merge_started(&server, &meta, &rt)
        })
        .await;
        let trees = log_trees_of(&server, &meta, &rt).await;
        for lt in trees.iter().filter(|lt| !lt.item_root.is_empty()) {
            assert_ne!(
                lt.flags.get() & LOG_TREES_FLAG_FINALIZED,
                0,
                "rid {:#x} nr {} still active",
                lt.rid.get(),
                lt.nr.get()
            );
        }

        // Each mount carries on in a fresh tree, and sees all three files.
        touch(&a, "a2").await;
        b.fs.fsync().await.expect("b syncs again");
        for n in [&a, &b] {
            for name in ["a", "b", "c", "a2"] {
                n.fs.lookup(ROOT_INO, name.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        for n in [&a, &b] {
            n.link
                .call(Cmd::Farewell, Vec::new())
                .await
                .expect("farewell");
        }
        drop(ns);
    });
}

#[test]
fn the_last_quorum_member_waits_for_the_clients_to_leave() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        // Two slots: one vote elects, so one member may leave while the
        // other stays for the client.
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 62);
        let server = open(&meta, &data, &rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = serve(&rt, &server, &t).await;
        let addr = ns.local_addr();
        let q1 = node(&rt, &t, &server, (&meta, &data), addr, 0x1, true).await;
        let q2 = node(&rt, &t, &server, (&meta, &data), addr, 0x2, true).await;
        let cl = node(&rt, &t, &server, (&meta, &data), addr, 0x3, false).await;

        let (tx1, mut rx1) = futures::channel::oneshot::channel();
        let (tx2, mut rx2) = futures::channel::oneshot::channel();
        let l1 = q1.link.clone();
        let l2 = q2.link.clone();
        rt.spawn(async move {
            let _ = tx1.send(l1.call(Cmd::Farewell, Vec::new()).await);
        })
        .detach();
        rt.spawn(async move {
            let _ = tx2.send(l2.call(Cmd::Farewell, Vec::new()).await);
        })
        .detach();

        // Exactly one of the two members is let go; the client keeps
        // working with the other as its quorum.
        let mut first = None;
        eventually(&rt, "one member leaves", || {
            if let Some(r) = rx1.try_recv().expect("q1 sender") {
                first = Some((1, r));
            } else if let Some(r) = rx2.try_recv().expect("q2 sender") {
                first = Some((2, r));
            }
            std::future::ready(first.is_some())
        })
        .await;
        let (who, res) = first.unwrap();
        res.expect("the first member's farewell succeeds");
        // Several round trips after the first answer: a rule letting both
        // go would have answered the second right after the first.
        touch(&cl, "still-served").await;
        cl.fs.fsync().await.expect("client syncs");
        let waiting = if who == 1 { &mut rx2 } else { &mut rx1 };
        assert_eq!(
            waiting.try_recv().expect("sender"),
            None,
            "the last member left before the client"
        );

        // The client leaves; now the last member goes too.
        cl.link
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("client farewell");
        let mut done = None;
        eventually(&rt, "the last member leaves", || {
            done = waiting.try_recv().expect("sender");
            std::future::ready(done.is_some())
        })
        .await;
        done.unwrap().expect("the last member's farewell succeeds");
        drop((q1, q2));
        drop(ns);
        assert_clean(&meta, &data, "after every farewell");
    });
}

/// What a merge started by coordinated finalization spliced stays readable
/// by a mount that never cached it: a live mount's tree finalized by the
/// server right after its commit (its first, like a mount that just came
/// up after a failover), merged while that mount writes on in its next
/// tree, and read afterwards by a new mount from fs_root and the log
/// trees alone.
#[test]
fn a_merged_tree_of_a_live_mount_reads_back_on_a_new_mount() {
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    ex.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 63);
        let server = open(&meta, &data, &rt).await;
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(rt.clone()));
        let ns = serve(&rt, &server, &t).await;
        let addr = ns.local_addr();
        let a = node(&rt, &t, &server, (&meta, &data), addr, 0xa, false).await;
        let c = node(&rt, &t, &server, (&meta, &data), addr, 0xc, false).await;
        touch(&c, "c0").await;
        c.fs.fsync().await.expect("c syncs");
        c.link
            .call(Cmd::Farewell, Vec::new())
            .await
            .expect("farewell");
        drop(c);

        // A's first commit: a directory and a file in it. The server
        // finalizes that tree at once (a finalized tree waits), and the
        // merge starts.
        let dir =
            a.fs.mkdir(&root_ctx(), ROOT_INO, b"w2-8", 0o755)
                .await
                .expect("mkdir")
                .ino;
        a.fs.create(&root_ctx(), dir, b"f0", 0o644)
            .await
            .expect("create f0");
        a.fs.fsync().await.expect("a syncs");
        eventually(&rt, "the merge starts", || {
            merge_started(&server, &meta, &rt)
        })
        .await;
        // A writes on in its next tree while the merge runs.
        for name in [b"log".as_slice(), b"f1", b"f2"] {
            a.fs.create(&root_ctx(), dir, name, 0o644)
                .await
                .expect("create");
            a.fs.fsync().await.expect("a syncs");
        }
        for _ in 0..100 {
            a.mount.merge_now().await.expect("merge work");
            if !merge_started(&server, &meta, &rt).await {
                break;
            }
        }
        assert!(
            !merge_started(&server, &meta, &rt).await,
            "the merge did not finish"
        );

        let d = node(&rt, &t, &server, (&meta, &data), addr, 0xd, false).await;
        let got =
            d.fs.lookup(ROOT_INO, b"w2-8")
                .await
                .unwrap_or_else(|e| panic!("w2-8 on a new mount: {e}"));
        assert_eq!(got.ino, dir);
        for name in ["f0", "log", "f1", "f2"] {
            d.fs.lookup(dir, name.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("w2-8/{name} on a new mount: {e}"));
        }
        d.fs.lookup(ROOT_INO, b"c0").await.expect("c0");
        for n in [&a, &d] {
            n.link
                .call(Cmd::Farewell, Vec::new())
                .await
                .expect("farewell");
        }
        drop(ns);
    });
}
