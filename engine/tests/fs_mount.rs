//! `engine::fs` end to end through the real mount (`trans::Mount`: item
//! cache, forest, transactions) and the server over an in-process link, on
//! `fault` devices: a small namespace with data, xattrs and symlinks is
//! built, synced, checked offline (`check` clean), and read back by a
//! second mount.

mod server_support;

use std::sync::Arc;

use engine::format::items::ROOT_INO;
use engine::fs::{Ctx, Fs};
use engine::runtime::Sim;
use engine::server::InProcessLink;
use engine::trans::{Mount, MountOptions};
use server_support::*;

fn ctx() -> Ctx {
    root_ctx()
}

async fn fs_on(
    server: &Arc<engine::server::Server>,
    meta: &drivers::FaultDevice,
    data: &drivers::FaultDevice,
    rt: &engine::runtime::Runtime,
    rid: u64,
) -> (Arc<Mount>, Fs) {
    Client::new(server, meta, rt, rid)
        .greet()
        .await
        .expect("greeting");
    let link = Arc::new(InProcessLink::new(server.clone(), rid));
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    mount_fs(link, meta, data, rt, rid, opts).await
}

#[test]
fn namespace_and_data_survive_sync_and_a_second_mount() {
    let sim = Sim::new(3);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 1);
        let server = open(&meta, &data, &rt).await;
        let (_m, fs) = fs_on(&server, &meta, &data, &rt, 1).await;
        let c = ctx();
        let d = fs.mkdir(&c, ROOT_INO, b"dir", 0o755).await.unwrap();
        let f = fs.create(&c, d.ino, b"file", 0o644).await.unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        fs.write(f.ino, 0, &body).await.unwrap();
        fs.setxattr(&c, f.ino, b"user.big", &vec![7u8; 5000], 0)
            .await
            .unwrap();
        fs.symlink(&c, d.ino, b"link", b"file").await.unwrap();
        let g = fs.create(&c, ROOT_INO, b"gone", 0o644).await.unwrap();
        fs.write(g.ino, 0, b"bye").await.unwrap();
        fs.rename(d.ino, b"file", ROOT_INO, b"moved", 0)
            .await
            .unwrap();
        fs.unlink(ROOT_INO, b"gone").await.unwrap();
        fs.fsync().await.unwrap();
        assert_clean(&meta, &data, "after fs workload");

        let (_m2, fs2) = fs_on(&server, &meta, &data, &rt, 2).await;
        let a = fs2.lookup(ROOT_INO, b"moved").await.unwrap();
        assert_eq!((a.ino, a.size), (f.ino, body.len() as u64));
        assert_eq!(fs2.read(a.ino, 0, 1 << 20).await.unwrap(), body);
        assert_eq!(
            fs2.getxattr(a.ino, b"user.big").await.unwrap(),
            vec![7u8; 5000]
        );
        let l = fs2.lookup(d.ino, b"link").await.unwrap();
        assert_eq!(fs2.readlink(l.ino).await.unwrap(), b"file");
        assert_eq!(fs2.lookup(ROOT_INO, b"gone").await, Err(libc::ENOENT));
        assert_eq!(fs2.getattr(g.ino).await, Err(libc::ENOENT));
        let names: Vec<_> = fs2
            .readdir(ROOT_INO, 2, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec![b"dir".to_vec(), b"moved".to_vec()]);
    });
}

/// An unlinked file that is still open keeps its inode under an orphan item
/// (`8/0/4/ino`: the inode number is the key's *second* field). The checker
/// once read it from the third field and called every such volume corrupt.
#[test]
fn open_unlinked_file_leaves_an_orphan_the_checker_accepts() {
    let sim = Sim::new(4);
    let rt = sim.runtime();
    sim.block_on(async move {
        let (meta, data) = mkfs(8 * GIB, 16 * GIB, 4);
        let server = open(&meta, &data, &rt).await;
        let (_m, fs) = fs_on(&server, &meta, &data, &rt, 1).await;
        let f = fs.create(&ctx(), ROOT_INO, b"tmp", 0o644).await.unwrap();
        fs.open(f.ino).await.unwrap();
        fs.unlink(ROOT_INO, b"tmp").await.unwrap();
        fs.fsync().await.unwrap();
        assert_clean(&meta, &data, "open unlinked file");
        assert_eq!(fs.getattr(f.ino).await.unwrap().nlink, 0);
        fs.release(f.ino).await.unwrap();
        fs.fsync().await.unwrap();
        assert_clean(&meta, &data, "after the last release");
        assert_eq!(fs.getattr(f.ino).await, Err(libc::ENOENT));
    });
}
