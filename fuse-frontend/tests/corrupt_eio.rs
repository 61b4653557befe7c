//! A corrupt metadata block met by a mounted `scoutfsd` fails the
//! operation that reads it with EIO, and nothing else: other files keep
//! working (read, write, create, rename), the daemon does not crash and
//! unmounts on request.
//!
//! The volume gets a directory of ordinary files (low inode numbers) and
//! then a "victim" directory with enough entries to span many 64 KiB btree
//! leaves. Between mounts (so no cache holds the block) every metadata
//! block that holds one victim name has bytes of that name flipped, which
//! breaks the block's crc. Mounted again, a lookup of that name gets EIO
//! (again on retry: the error is not cached as a negative entry), while
//! the other directory, the root and new files are untouched. The offline
//! check afterwards names the damaged block.
//!
//! Needs root and /dev/fuse; without them the test prints why and passes.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use support::{skip_without_fuse, Daemon, Volume};

/// Metadata block size (64 KiB, reference §1.2).
const META_BLOCK_BYTES: u64 = 64 << 10;
/// Entries of the victim directory: dirent, readdir and backref items of
/// this many names fill dozens of leaves.
const VICTIM_FILES: usize = 2000;
/// The name whose leaf gets corrupted (in the middle of the directory).
const VICTIM_INDEX: usize = 777;
/// Files of the untouched directory.
const OTHER_FILES: usize = 20;

fn victim_name(i: usize) -> String {
    format!("victim-{i:04}-{}", "n".repeat(40))
}

fn other_content(i: usize) -> Vec<u8> {
    format!("other file {i}\n").repeat(100 + i).into_bytes()
}

/// Byte offsets in `image` of every 64 KiB block that contains `needle`,
/// with the needle's offset in the block. Only the data regions of the
/// sparse image are read.
fn blocks_containing(image: &Path, needle: &[u8]) -> Vec<(u64, usize)> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(image).expect("open image");
    let len = f.metadata().expect("stat image").len();
    let mut found = Vec::new();
    let mut buf = vec![0u8; META_BLOCK_BYTES as usize];
    let mut off: u64 = 0;
    while off < len {
        // SAFETY: lseek on an open descriptor touches no memory.
        let data = unsafe { libc::lseek(f.as_raw_fd(), off as i64, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let (start, end) = (data as u64 / META_BLOCK_BYTES, (hole as u64).min(len));
        let mut blk = start * META_BLOCK_BYTES;
        while blk < end {
            f.read_exact_at(&mut buf, blk).expect("read block");
            if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
                found.push((blk, at));
            }
            blk += META_BLOCK_BYTES;
        }
        off = end.max(blk);
    }
    found
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn corrupt_leaf_fails_its_operation_with_eio_and_the_mount_stays_usable() {
    if skip_without_fuse("corrupt_leaf_fails_its_operation_with_eio_and_the_mount_stays_usable") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let other = v.mnt.join("other");
    fs::create_dir(&other).expect("mkdir other");
    for i in 0..OTHER_FILES {
        fs::write(other.join(format!("file-{i}")), other_content(i)).expect("write other");
    }
    let victim = v.mnt.join("victim");
    fs::create_dir(&victim).expect("mkdir victim");
    for i in 0..VICTIM_FILES {
        fs::write(victim.join(victim_name(i)), b"v").expect("create victim file");
    }
    d.unmount();
    v.assert_clean("before the corruption");

    let needle = victim_name(VICTIM_INDEX).into_bytes();
    let hits = blocks_containing(&v.meta, &needle);
    assert!(!hits.is_empty(), "no metadata block holds {needle:?}");
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&v.meta)
            .expect("open meta for writing");
        for &(blk, at) in &hits {
            // Flip the name's digits: the crc no longer matches.
            let pos = blk + at as u64 + 7;
            let mut b = [0u8; 4];
            f.read_exact_at(&mut b, pos).expect("read name bytes");
            for x in &mut b {
                *x ^= 0xff;
            }
            f.write_all_at(&b, pos).expect("corrupt");
        }
        f.sync_all().expect("sync meta");
    }
    eprintln!("corrupted {} blocks: {hits:?}", hits.len());
    let faults = v.check();
    assert!(
        faults.iter().any(|m| hits
            .iter()
            .any(|(blk, _)| m.contains(&format!("blkno {}", blk / META_BLOCK_BYTES)))),
        "the check does not name a corrupted block {hits:?}: {faults:#?}"
    );

    let mut d = Daemon::start(&v);
    let bad = victim.join(victim_name(VICTIM_INDEX));
    assert_eq!(errno_of(fs::metadata(&bad)), Some(libc::EIO), "lookup");
    assert_eq!(errno_of(fs::read(&bad)), Some(libc::EIO), "open again");
    // Listing the directory passes the damaged readdir items: EIO there.
    let listed: Vec<std::io::Result<fs::DirEntry>> =
        fs::read_dir(&victim).expect("opendir victim").collect();
    assert!(
        listed
            .iter()
            .any(|e| e.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EIO)),
        "readdir of the damaged directory did not fail with EIO ({} entries)",
        listed.len()
    );
    // Entries keep the directory open, which would make the mount busy.
    drop(listed);

    // Everything outside the damaged leaf still works.
    for i in 0..OTHER_FILES {
        let got = fs::read(other.join(format!("file-{i}"))).expect("read other");
        assert!(got == other_content(i), "other/file-{i} differs");
    }
    let mut names: Vec<String> = fs::read_dir(&v.mnt)
        .expect("readdir root")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["other", "victim"]);
    fs::write(other.join("new"), b"written after the damage").expect("create new");
    fs::rename(other.join("new"), v.mnt.join("moved")).expect("rename");
    fs::create_dir(v.mnt.join("newdir")).expect("mkdir");
    fs::write(v.mnt.join("newdir/f"), vec![5u8; 1 << 20]).expect("write 1 MiB");
    assert_eq!(
        fs::read(v.mnt.join("moved")).unwrap(),
        b"written after the damage"
    );
    assert_eq!(
        fs::read(v.mnt.join("newdir/f")).unwrap(),
        vec![5u8; 1 << 20]
    );
    // Fsync commits the transaction.
    fs::File::open(v.mnt.join("moved"))
        .and_then(|f| f.sync_all())
        .expect("fsync after the damage");
    // The bad lookup fails the same way again and the daemon lives.
    assert_eq!(
        errno_of(fs::metadata(&bad)),
        Some(libc::EIO),
        "lookup again"
    );
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "scoutfsd exited"
    );
    assert!(v.mounted());
    d.unmount();
}
