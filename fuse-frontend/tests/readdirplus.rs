//! READDIRPLUS through a real mount: a listing with attributes (`ls -l`
//! of more entries than one engine batch) shows every entry with the
//! right type and size, and its lookup counts stay exact: once the files
//! are removed the kernel forgets them and the engine deletes their
//! items (`get-allocated-inos` no longer lists them), which an entry
//! counted but never handed to the kernel (or "." and "..") would prevent.
//!
//! Needs root and /dev/fuse; skipped otherwise.

// A test drives real processes and mounts with real time and threads.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use fuse_frontend::control::client::Client;
use support::{skip_without_fuse, Daemon, Volume};

const FILES: usize = 300;

#[test]
fn listing_with_attributes_keeps_lookup_counts() {
    if skip_without_fuse("listing_with_attributes_keeps_lookup_counts") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let dir = v.mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    let client = Client::for_path(&v.mnt).unwrap();
    let mut inos = Vec::new();
    for i in 0..FILES {
        let p = dir.join(format!("f{i:03}"));
        std::fs::write(&p, vec![b'x'; i]).unwrap();
        inos.push(std::fs::metadata(&p).unwrap().ino());
    }
    let mut groups: Vec<u64> = inos.iter().map(|i| i & !1023).collect();
    groups.dedup();
    let held = || -> usize {
        client.sync().unwrap();
        let mut n = 0;
        for &g in &groups {
            let found = client.allocated_inos(g, 1024).unwrap();
            n += found.iter().filter(|i| inos.contains(i)).count();
        }
        n
    };
    assert_eq!(held(), FILES);
    // Drop the dentries the creates left, so the listing brings them in.
    std::fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
    for _ in 0..2 {
        let out = Command::new("ls").arg("-ln").arg(&dir).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let files: Vec<&str> = text.lines().filter(|l| l.starts_with('-')).collect();
        assert_eq!(files.len(), FILES, "{text}");
        // Sizes as written: the attributes came with the entries.
        assert!(files
            .iter()
            .any(|l| l.contains(" 299 ") && l.ends_with("f299")));
    }
    for i in 0..FILES {
        std::fs::remove_file(dir.join(format!("f{i:03}"))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = held();
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} inodes still held after removal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.unmount();
    v.assert_clean("after the listing");
}
