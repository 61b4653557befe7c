//! A single scoutfs node as a process, without a frontend, for the kill -9
//! test (`engine/tests/node_kill.rs`): quorum slot 0, the server it elects
//! itself to run, and a mount over TCP, on image files. Not installed for
//! users: `scoutfsd` is the daemon people run.
//!
//! `scoutfs_node META DATA RIDLOCKDIR GEN [VERIFY_LIST]`: first checks that
//! every file named in VERIFY_LIST (one name per line) exists with its
//! expected content (printing `verified N` or exiting 3), then creates
//! files `g<GEN>_<i>` for i = 0, 1, … and prints `synced <name>` after each
//! one's fsync returned, until it is killed.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drivers::{BlockDevice, FileDevice, OpenOptions};
use engine::format::items::ROOT_INO;
use engine::fs::{Ctx, Fs, Time};
use engine::node::{Node, NodeConfig, TcpTransport};
use engine::quorum::LogLevel;
use engine::runtime::{Executor, ThreadPark};
use engine::server::ServerOptions;
use engine::trans::{Mount, MountOptions};

/// The content a file named `name` must hold.
fn body(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let len = 1000 + (seed % 20_000) as usize;
    (0..len)
        .map(|i| (seed >> (i % 56)) as u8 ^ i as u8)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: scoutfs_node META DATA RIDLOCKDIR GEN [VERIFY_LIST]");
        std::process::exit(64);
    }
    let open = |p: &str| -> Arc<dyn BlockDevice> {
        Arc::new(
            FileDevice::open(p, &OpenOptions::new().exclusive(true)).unwrap_or_else(|e| {
                eprintln!("open {p}: {e}");
                std::process::exit(1)
            }),
        )
    };
    let (meta, data) = (open(&args[1]), open(&args[2]));
    let gen: u64 = args[4].parse().expect("GEN");
    let verify: Vec<String> = args
        .get(5)
        .map(|p| {
            std::fs::read_to_string(p)
                .expect("verify list")
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();

    let verbose = std::env::var_os("SCOUTFS_NODE_VERBOSE").is_some();
    let ex = Executor::new(Arc::new(ThreadPark::new()));
    let rt = ex.runtime();
    let lock_dir = args[3].clone().into();
    // A process of its own: quorum events carry real time.
    #[allow(clippy::disallowed_methods)]
    let wall_base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(rt.now());
    ex.block_on(async move {
        let rid = rt.random_u64() | 1;
        let node = Node::start(NodeConfig {
            meta: meta.clone(),
            data: data.clone(),
            rt: rt.clone(),
            transport: Arc::new(TcpTransport::new(rt.clone())),
            rid,
            slot: Some(0),
            rid_lock_dir: lock_dir,
            server: ServerOptions::default(),
            heartbeat_timeout: Some(Duration::from_secs(2)),
            log: Arc::new(move |lvl, msg| {
                if verbose || lvl != LogLevel::Info {
                    eprintln!("quorum {lvl:?}: {msg}")
                }
            }),
            wall_base,
        })
        .await
        .unwrap_or_else(|e| {
            eprintln!("node: {e}");
            std::process::exit(1)
        });
        let mount = Mount::open(
            meta,
            data.clone(),
            node.link(),
            rt.clone(),
            rid,
            MountOptions::default(),
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("mount: errno {e}");
            std::process::exit(1)
        });
        let mount = Arc::new(mount);
        let clock = AtomicU64::new(1);
        let fs = Fs::new(
            mount.clone(),
            mount.clone(),
            data,
            mount.fmt_vers(),
            Box::new(move || Time {
                sec: clock.fetch_add(1, Ordering::Relaxed),
                nsec: 0,
            }),
        );
        let c = Ctx {
            uid: 0,
            gid: 0,
            umask: 0o022,
            cap_sys_admin: true,
        };
        let mut out = std::io::stdout();
        for name in &verify {
            let ok = match fs.lookup(ROOT_INO, name.as_bytes()).await {
                Ok(a) => fs.read(a.ino, 0, 1 << 20).await.ok() == Some(body(name)),
                Err(_) => false,
            };
            if !ok {
                eprintln!("lost or wrong after restart: {name}");
                std::process::exit(3);
            }
        }
        let _ = writeln!(out, "verified {}", verify.len());
        for i in 0u64.. {
            let name = format!("g{gen}_{i}");
            let f = fs
                .create(&c, ROOT_INO, name.as_bytes(), 0o644)
                .await
                .expect("create");
            fs.write(f.ino, 0, &body(&name)).await.expect("write");
            fs.fsync().await.expect("fsync");
            let _ = writeln!(out, "synced {name}");
            let _ = out.flush();
        }
    });
}
