//! FUSE_INTERRUPT of a request waiting for a cluster lock (docs/fuse.md).
//!
//! A process blocked in a FUSE request cannot die, not even of SIGKILL,
//! until the daemon answers. Mount B creates a directory and keeps its
//! locks; B's daemon is then stopped (SIGSTOP), so a lookup of that
//! directory on mount A waits for a lock B never gives up. `stat` of it on
//! A blocks in the kernel; killed with SIGKILL it must exit at once: the
//! kernel sends FUSE_INTERRUPT with the request's unique id and A answers
//! EINTR (a lookup changes nothing, so its engine task may finish later).
//! B continues, and everything works and checks clean afterwards.
//!
//! Needs root and /dev/fuse; skipped otherwise.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{skip_without_fuse, two_mounts};

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process we started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Whether `pid` sleeps in a FUSE request (its kernel stack says so).
fn in_fuse_request(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stack"))
        .is_ok_and(|s| s.contains("request_wait_answer") || s.contains("fuse_simple_request"))
}

#[test]
fn sigkill_ends_a_lookup_waiting_for_a_lock() {
    if skip_without_fuse("sigkill_ends_a_lookup_waiting_for_a_lock") {
        return;
    }
    let (v, a, b) = two_mounts();
    let (ma, mb) = (a.mnt.clone(), b.mnt.clone());
    std::fs::create_dir(mb.join("d")).unwrap();
    std::fs::write(mb.join("d/f"), b"held by b").unwrap();

    signal(b.child.id(), libc::SIGSTOP);
    let mut stat = Command::new("stat")
        .arg(ma.join("d/f"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !in_fuse_request(stat.id()) {
        assert!(
            stat.try_wait().unwrap().is_none(),
            "stat returned while B held the lock"
        );
        assert!(Instant::now() < deadline, "stat never blocked in FUSE");
        std::thread::sleep(Duration::from_millis(10));
    }
    stat.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            signal(b.child.id(), libc::SIGCONT);
            panic!("a killed stat stayed in its FUSE request");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    signal(b.child.id(), libc::SIGCONT);
    assert_eq!(std::fs::read(ma.join("d/f")).unwrap(), b"held by b");
    std::fs::write(ma.join("d/g"), b"after").unwrap();
    assert_eq!(std::fs::read(mb.join("d/g")).unwrap(), b"after");
    b.unmount();
    a.unmount();
    v.assert_clean("after the interrupted lookup");
}
