//! Three mounts of one volume see one filesystem (issue 6 acceptance).
//!
//! One daemon holds quorum slot 0 and serves; two more mount the same
//! image files as clients. A seeded sequence of POSIX operations runs on
//! randomly chosen mounts; after every step each mount must show the same
//! tree: names, inode numbers, types, sizes, contents, link counts and
//! xattrs. A step's result is checked on the other mounts right after it
//! returned, so a read that starts after a write returned elsewhere must
//! see it. The kernel's caches stay on (1 s attribute and entry
//! timeouts): what keeps them honest is the lock invalidation revoking
//! them. Then RENAME_NOREPLACE races between two mounts: exactly one wins.
//!
//! `SCOUTFS_CLUSTER_STEPS` sets the number of steps (default 300) and
//! `SCOUTFS_CLUSTER_SEED` the first seed. Every step runs under the hang
//! watchdog (`support::watchdog`): a step stuck for a minute dumps the
//! stuck tasks and lock tables and aborts the three mounts.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::watchdog::Watchdog;
use support::*;

/// How long one step (an operation and three snapshots) may take.
const STEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn watchdog(name: &str, mnts: &[PathBuf], daemons: &[Daemon]) -> Watchdog {
    let wd = Watchdog::new(name);
    for (m, d) in mnts.iter().zip(daemons) {
        wd.watch(m, d.child.id());
    }
    wd
}

/// What one mount shows of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ino: u64,
    kind: &'static str,
    size: u64,
    nlink: u64,
    content: Option<Vec<u8>>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn list_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let name = String::from_utf8_lossy(name).into_owned();
        let v = get_xattr(p, &name).expect("getxattr");
        out.insert(name, v);
    }
    out
}

/// Every path under `root` with what it shows.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.expect("dirent").file_name())
            .collect();
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let p = root.join(&r);
            let md =
                fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            let (kind, content) = if md.is_dir() {
                todo.push(r.clone());
                ("dir", None)
            } else if md.file_type().is_symlink() {
                let t = fs::read_link(&p).expect("readlink");
                ("symlink", Some(t.as_os_str().as_bytes().to_vec()))
            } else {
                (
                    "file",
                    Some(fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))),
                )
            };
            let size = if md.is_dir() { md.size() } else { md.len() };
            out.insert(
                r,
                Seen {
                    ino: md.ino(),
                    kind,
                    size,
                    nlink: md.nlink(),
                    content,
                    xattrs: if kind == "symlink" {
                        BTreeMap::new()
                    } else {
                        list_xattrs(&p)
                    },
                },
            );
        }
    }
    out
}

/// The files and directories a step may pick from (as seen on `root`).
fn paths(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let snap = snapshot(root);
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    for (p, s) in snap {
        match s.kind {
            "dir" => dirs.push(p),
            "file" => files.push(p),
            _ => {}
        }
    }
    (files, dirs)
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes()).expect("path");
    let b = CString::new(to.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid NUL-terminated paths for the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One random operation on mount `m`; errors a racing tree may give
/// (ENOTEMPTY, EINVAL for a dir into itself) are part of the game, as
/// long as every mount then agrees.
fn step(rng: &mut SmallRng, root: &Path, n: usize) -> String {
    let (files, dirs) = paths(root);
    let dir = &dirs[rng.gen_range(0..dirs.len())];
    let name = format!("n{}", rng.gen_range(0..40));
    let pick_file = |rng: &mut SmallRng| files.get(rng.gen_range(0..files.len().max(1))).cloned();
    match rng.gen_range(0..11) {
        0 | 1 => {
            let p = root.join(dir).join(&name);
            let data: Vec<u8> = (0..rng.gen_range(0..9000)).map(|i| (i + n) as u8).collect();
            let r = fs::write(&p, &data);
            format!("write {} ({} bytes): {r:?}", p.display(), data.len())
        }
        2 => match pick_file(rng) {
            Some(f) => {
                let p = root.join(&f);
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .and_then(|mut h| h.write_all(format!("append {n}\n").as_bytes()));
                format!("append {}: {r:?}", p.display())
            }
            None => "no file".into(),
        },
        3 => match pick_file(rng) {
            Some(f) => {
                let p = root.join(&f);
                let len = rng.gen_range(0..5000);
                let r = fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|h| h.set_len(len));
                format!("truncate {} {len}: {r:?}", p.display())
            }
            None => "no file".into(),
        },
        4 => {
            let p = root.join(dir).join(format!("d{}", rng.gen_range(0..8)));
            format!("mkdir {}: {:?}", p.display(), fs::create_dir(&p))
        }
        5 => {
            let d = &dirs[rng.gen_range(0..dirs.len())];
            if d.as_os_str().is_empty() {
                return "rmdir root skipped".into();
            }
            let p = root.join(d);
            format!("rmdir {}: {:?}", p.display(), fs::remove_dir(&p))
        }
        6 => match pick_file(rng) {
            Some(f) => {
                let p = root.join(&f);
                format!("unlink {}: {:?}", p.display(), fs::remove_file(&p))
            }
            None => "no file".into(),
        },
        7 | 8 => {
            let from = if rng.gen_bool(0.5) {
                pick_file(rng)
            } else {
                dirs.get(rng.gen_range(1..dirs.len().max(2))).cloned()
            };
            match from {
                Some(f) if !f.as_os_str().is_empty() => {
                    let a = root.join(&f);
                    let b = root.join(dir).join(&name);
                    format!(
                        "rename {} {}: {:?}",
                        a.display(),
                        b.display(),
                        fs::rename(&a, &b)
                    )
                }
                _ => "nothing to rename".into(),
            }
        }
        9 => match pick_file(rng) {
            Some(f) => {
                let p = root.join(&f);
                let v = format!("v{n}");
                let r = set_xattr(&p, &format!("user.k{}", rng.gen_range(0..3)), v.as_bytes());
                format!("setxattr {}: {r:?}", p.display())
            }
            None => "no file".into(),
        },
        _ => match pick_file(rng) {
            Some(f) => {
                let a = root.join(&f);
                let b = root.join(dir).join(format!("l{}", rng.gen_range(0..10)));
                format!(
                    "link {} {}: {:?}",
                    a.display(),
                    b.display(),
                    fs::hard_link(&a, &b)
                )
            }
            None => "no file".into(),
        },
    }
}

/// A one-slot volume mounted three times: slot 0 serves, two clients.
fn three_mounts() -> (Volume, Vec<PathBuf>, Vec<Daemon>) {
    let v = Volume::new_with_slots(&fast_dir(), 2 << 30, 16 << 30, 1);
    let mnts: Vec<PathBuf> = (0..3)
        .map(|i| {
            let m = v.dir.path().join(format!("m{i}"));
            fs::create_dir(&m).expect("mount point");
            m
        })
        .collect();
    let mut daemons = vec![Daemon::start_on(&v, &mnts[0], Some("quorum_slot_nr=0"))];
    for m in &mnts[1..] {
        daemons.push(Daemon::start_on(&v, m, Some("lock_idle_count=32")));
    }
    (v, mnts, daemons)
}

/// Makes the kernel FORGET every inode it can (unused dentries and
/// inodes of every filesystem).
fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches");
}

#[test]
fn unlinked_file_open_on_another_mount_keeps_its_data() {
    if skip_without_fuse("unlinked_file_open_on_another_mount_keeps_its_data") {
        return;
    }
    let (v, mnts, daemons) = three_mounts();
    let wd = watchdog(
        "unlinked_file_open_on_another_mount_keeps_its_data",
        &mnts,
        &daemons,
    );
    let step = wd.step("the whole test", STEP_LIMIT * 2);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mnts[0].join("f"), &data).expect("write");
    let mut held = fs::File::open(mnts[1].join("f")).expect("open on mount 1");
    fs::remove_file(mnts[2].join("f")).expect("unlink on mount 2");
    // Mounts 0 and 2 let go of the inode; its items must stay for the
    // file mount 1 still has open (the open-inode map).
    drop_kernel_caches();
    for m in [&mnts[0], &mnts[2]] {
        assert!(fs::read_dir(m).expect("readdir").next().is_none());
    }
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut held, &mut got).expect("read the open file");
    assert!(got == data, "the open unlinked file lost its data");
    drop(held);
    drop_kernel_caches();
    for d in daemons.into_iter().rev() {
        d.unmount();
    }
    drop(step);
    wd.assert_quiet();
    v.assert_clean("after the unlinked file was released");
}

#[test]
fn three_mounts_show_one_filesystem() {
    if skip_without_fuse("three_mounts_show_one_filesystem") {
        return;
    }
    let (v, mnts, daemons) = three_mounts();
    let wd = watchdog("three_mounts_show_one_filesystem", &mnts, &daemons);

    let steps = env_u64("SCOUTFS_CLUSTER_STEPS", 300);
    let seed = env_u64("SCOUTFS_CLUSTER_SEED", 7);
    let mut rng = SmallRng::seed_from_u64(seed);
    for n in 0..steps as usize {
        let m = rng.gen_range(0..mnts.len());
        let _s = wd.step(format!("seed {seed} step {n} on mount {m}"), STEP_LIMIT);
        let what = step(&mut rng, &mnts[m], n);
        let want = snapshot(&mnts[m]);
        for (o, other) in mnts.iter().enumerate() {
            let got = snapshot(other);
            if got != want {
                let diff: Vec<_> = want
                    .iter()
                    .filter(|(p, s)| got.get(*p) != Some(*s))
                    .map(|(p, s)| {
                        format!(
                            "{}: mount {m} {s:?} / mount {o} {:?}",
                            p.display(),
                            got.get(p)
                        )
                    })
                    .chain(
                        got.keys()
                            .filter(|p| !want.contains_key(*p))
                            .map(|p| format!("{} only on mount {o}", p.display())),
                    )
                    .collect();
                wd.assert_quiet();
                panic!(
                    "seed {seed} step {n} on mount {m} ({what}): mount {o} differs:\n{}",
                    diff.join("\n")
                );
            }
        }
    }

    // RENAME_NOREPLACE from two mounts onto one name: one wins.
    for round in 0..20 {
        let _s = wd.step(format!("RENAME_NOREPLACE race {round}"), STEP_LIMIT);
        let a = mnts[0].join(format!("race-a{round}"));
        let b = mnts[1].join(format!("race-b{round}"));
        fs::write(&a, b"a").expect("a");
        fs::write(&b, b"b").expect("b");
        let ta = mnts[0].join(format!("race{round}"));
        let tb = mnts[1].join(format!("race{round}"));
        let h = std::thread::spawn(move || renameat2(&a, &ta, libc::RENAME_NOREPLACE).is_ok());
        let won_b = renameat2(&b, &tb, libc::RENAME_NOREPLACE).is_ok();
        let won_a = h.join().expect("thread");
        assert!(won_a ^ won_b, "round {round}: a won {won_a}, b won {won_b}");
        let content = fs::read(mnts[2].join(format!("race{round}"))).expect("winner");
        assert_eq!(content, if won_a { b"a" } else { b"b" }, "round {round}");
    }

    {
        let _s = wd.step("unmount", STEP_LIMIT);
        for d in daemons.into_iter().rev() {
            d.unmount();
        }
    }
    wd.assert_quiet();
    v.assert_clean("after three mounts");
}
