//! Allocator pressure through the filesystem (issue 3, trap 28): a small
//! volume is filled through `engine::fs` on the real mount and the server
//! (merge worker, commit timer and background freeing all on, simulated
//! time) until writes fail with ENOSPC; everything made before stays
//! readable and `check` is clean; deleting makes space usable again without
//! anyone calling a merge by hand, and a second fill gets about as far as
//! the first (nothing leaked on the way).
//!
//! Metadata: a 256 MiB metadata device filled with files carrying 60 KiB
//! xattrs. Data: a 512 MiB data device filled with 1 MiB writes.

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use drivers::FaultDevice;
use engine::format::items::ROOT_INO;
use engine::fs::{Ctx, Fs};
use engine::runtime::{Runtime, Sim};
use engine::server::{InProcessLink, Server};
use engine::trans::{Mount, MountOptions};
use server_support::*;

const XATTR_BYTES: usize = 60 * 1024;
const CHUNK: usize = 1 << 20;
/// Metadata blocks a volume emptied again may still use beyond a fresh one
/// (the root directory's grown items, a log tree's blocks).
const FREE_SLACK_BLOCKS: u64 = 32;
/// Virtual time a freed volume may take to be usable again: a few merge
/// intervals and background rounds.
const RECOVER_LIMIT: Duration = Duration::from_secs(120);

fn ctx() -> Ctx {
    root_ctx()
}

struct Node {
    server: Arc<Server>,
    mount: Arc<Mount>,
    fs: Fs,
}

async fn bring_up(meta: &FaultDevice, data: &FaultDevice, rt: &Runtime) -> Node {
    let server = open(meta, data, rt).await;
    rt.spawn(server.clone().background_loop(Duration::from_secs(1)))
        .detach();
    Client::new(&server, meta, rt, 1)
        .greet()
        .await
        .expect("greeting");
    let link = Arc::new(InProcessLink::new(server.clone(), 1));
    let opts = MountOptions {
        commit_interval: Some(Duration::from_secs(2)),
        commit_retry: None,
        merge_interval: Some(Duration::from_secs(5)),
        ..MountOptions::default()
    };
    let (mount, fs) = mount_fs(link, meta, data, rt, 1, opts).await;
    Node { server, mount, fs }
}

async fn free_meta(n: &Node, meta: &FaultDevice, rt: &Runtime) -> u64 {
    let st = Client::new(&n.server, meta, rt, 1)
        .statfs()
        .await
        .expect("statfs");
    st.free_meta_blocks.get()
}

fn name(i: u64) -> Vec<u8> {
    format!("f{i:06}").into_bytes()
}

/// Creates `f<i>` with a big xattr until ENOSPC; returns how many were made.
async fn fill_meta(fs: &Fs, first: u64) -> u64 {
    let c = ctx();
    let mut i = first;
    loop {
        let f = match fs.create(&c, ROOT_INO, &name(i), 0o644).await {
            Ok(f) => f,
            Err(e) => {
                assert_eq!(e, libc::ENOSPC, "create {i}");
                return i - first;
            }
        };
        let val = vec![(i % 251) as u8; XATTR_BYTES];
        match fs.setxattr(&c, f.ino, b"user.fill", &val, 0).await {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e, libc::ENOSPC, "setxattr {i}");
                fs.unlink(ROOT_INO, &name(i))
                    .await
                    .expect("unlink a bare file while full");
                return i - first;
            }
        }
        if i.is_multiple_of(64) {
            fs.fsync().await.expect("fsync while filling");
        }
        i += 1;
    }
}

/// Retries `op` once a second of virtual time until it works.
async fn wait_until_usable<F, Fut>(rt: &Runtime, what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), i32>>,
{
    let start = rt.now();
    loop {
        match op().await {
            Ok(()) => return,
            Err(e) => assert_eq!(e, libc::ENOSPC, "{what}"),
        }
        assert!(
            rt.now() - start < RECOVER_LIMIT,
            "{what}: still ENOSPC {RECOVER_LIMIT:?} after freeing"
        );
        rt.sleep(Duration::from_secs(1)).await;
    }
}

#[test]
fn full_metadata_gives_enospc_and_freeing_makes_it_usable_again() {
    let sim = Sim::new(0x5eed_0028);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (meta, data) = mkfs(256 * MIB, 4 * GIB, 28);
        let n = bring_up(&meta, &data, &rt).await;
        let c = ctx();

        let free_at_start = free_meta(&n, &meta, &rt).await;
        let made = fill_meta(&n.fs, 0).await;
        assert!(made > 100, "ENOSPC after only {made} files");
        // Full, yet deleting works and nothing made is lost.
        n.fs.fsync().await.expect("fsync at ENOSPC");
        for i in (0..made).step_by(97) {
            let a = n.fs.lookup(ROOT_INO, &name(i)).await.expect("lookup");
            let v = n.fs.getxattr(a.ino, b"user.fill").await.expect("getxattr");
            assert_eq!(v, vec![(i % 251) as u8; XATTR_BYTES], "file {i}");
        }
        assert_clean(&meta, &data, "at ENOSPC");

        for i in 0..made {
            n.fs.unlink(ROOT_INO, &name(i))
                .await
                .expect("unlink while full");
        }
        n.fs.fsync().await.expect("fsync after deleting");

        // Merges and freeing run on their own; allocation comes back.
        let fs = &n.fs;
        wait_until_usable(&rt, "create after freeing", || async {
            let f = fs.create(&c, ROOT_INO, b"again", 0o644).await?;
            fs.setxattr(&c, f.ino, b"user.fill", &[1u8; XATTR_BYTES], 0)
                .await
        })
        .await;

        // Every deleted file's blocks come back: the merged fs_root holds
        // no emptied leaves, the merged log trees are freed.
        let start = rt.now();
        while free_meta(&n, &meta, &rt).await + FREE_SLACK_BLOCKS < free_at_start {
            assert!(
                rt.now() - start < RECOVER_LIMIT,
                "{} of {free_at_start} metadata blocks free {RECOVER_LIMIT:?} after deleting",
                free_meta(&n, &meta, &rt).await
            );
            rt.sleep(Duration::from_secs(1)).await;
        }
        assert_clean(&meta, &data, "after freeing");
        let again = fill_meta(&n.fs, made).await;
        assert!(
            again * 100 >= made * 95,
            "second fill made {again} files, the first {made}: space leaked"
        );
        n.fs.fsync().await.expect("fsync");
        assert_clean(&meta, &data, "after the second fill");
        assert!(n.mount.stats().low_rechecks > 0);
        drop(n.server);
    });
}

/// Writes 1 MiB chunks to new files until ENOSPC; returns the bytes written.
async fn fill_data(fs: &Fs, tag: &str) -> u64 {
    let c = ctx();
    let mut written = 0u64;
    for i in 0u64.. {
        let f = fs
            .create(&c, ROOT_INO, format!("{tag}{i}").as_bytes(), 0o644)
            .await
            .expect("create (metadata is not full)");
        let body = vec![(i % 253) as u8; CHUNK];
        match fs.write(f.ino, 0, &body).await {
            Ok(n) => {
                assert_eq!(n, CHUNK);
                written += n as u64;
            }
            Err(e) => {
                assert_eq!(e, libc::ENOSPC, "write {i}");
                return written;
            }
        }
    }
    unreachable!()
}

#[test]
fn full_data_gives_enospc_and_freeing_makes_it_usable_again() {
    let sim = Sim::new(0x5eed_da7a);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (meta, data) = mkfs(2 * GIB, 512 * MIB, 29);
        let n = bring_up(&meta, &data, &rt).await;
        let c = ctx();

        let first = fill_data(&n.fs, "a").await;
        assert!(first >= 400 * MIB, "ENOSPC after {first} bytes of 512 MiB");
        n.fs.fsync().await.expect("fsync at ENOSPC");
        let a0 = n.fs.lookup(ROOT_INO, b"a0").await.unwrap();
        assert_eq!(n.fs.read(a0.ino, 0, 4096).await.unwrap(), vec![0u8; 4096]);
        assert_clean(&meta, &data, "data full");

        let files = first / CHUNK as u64;
        for i in 0..=files {
            n.fs.unlink(ROOT_INO, format!("a{i}").as_bytes())
                .await
                .expect("unlink while data is full");
        }
        n.fs.fsync().await.expect("fsync after deleting");
        let again = n.fs.create(&c, ROOT_INO, b"again", 0o644).await.unwrap();
        let fs = &n.fs;
        wait_until_usable(&rt, "write after freeing", || async {
            fs.write(again.ino, 0, &vec![9u8; CHUNK]).await.map(|_| ())
        })
        .await;
        let second = fill_data(&n.fs, "b").await;
        assert!(
            second + CHUNK as u64 * 2 >= first,
            "second fill wrote {second} bytes, the first {first}: space leaked"
        );
        n.fs.fsync().await.expect("fsync");
        assert_clean(&meta, &data, "after the second data fill");
    });
}
