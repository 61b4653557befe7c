//! A quota rule changed on one mount is enforced on every other mount at
//! once (reference §9: changing a rule takes the quota lock WRITE, so
//! every mount's cached ruleset goes with its READ), not after a validity
//! period: three mounts, each having just checked the empty ruleset.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use engine::format::items::{QuotaRule, QUOTA_OP_DATA, QUOTA_SOURCE_LITERAL, QUOTA_SOURCE_UID};
use fuse_frontend::control::client::Client;
use support::*;
use zerocopy::{FromZeros, IntoBytes};

/// `20 7,L,- 0,U,- 0,L,- D 100 -`: data allocation by a uid stops while
/// the total `usage.7.<uid>.0` is at 100 or more.
fn data_rule() -> [u8; 48] {
    let mut r = QuotaRule::new_zeroed();
    r.name_val = [7.into(), 0.into(), 0.into()];
    r.name_source = [QUOTA_SOURCE_LITERAL, QUOTA_SOURCE_UID, QUOTA_SOURCE_LITERAL];
    r.limit = 100.into();
    r.prio = 20;
    r.op = QUOTA_OP_DATA;
    r.as_bytes().try_into().expect("48 bytes")
}

/// Writes a fresh 4 KiB block to `path` (a data allocation).
fn write_block(path: &Path) -> std::io::Result<()> {
    fs::write(path, [1u8; 4096])
}

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_rule_changed_on_one_mount_holds_on_every_mount_at_once() {
    if skip_without_fuse("a_rule_changed_on_one_mount_holds_on_every_mount_at_once") {
        return;
    }
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
        daemons.push(Daemon::start_on(&v, m, None));
    }

    // uid 0's usage total at the limit, committed.
    let usage = mnts[0].join("usage");
    fs::write(&usage, b"").expect("usage file");
    set_xattr(&usage, "scoutfs.totl.usage.7.0.0", b"100").expect("totl xattr");
    Client::for_path(&mnts[0])
        .expect("client")
        .sync()
        .expect("sync");

    // Every mount checks (and caches) the empty ruleset just before the
    // rule arrives.
    for (i, m) in mnts.iter().enumerate() {
        write_block(&m.join(format!("before{i}"))).expect("no rule yet");
    }
    Client::for_path(&mnts[1])
        .expect("client")
        .quota_change(&data_rule(), true)
        .expect("quota-add");
    for (i, m) in mnts.iter().enumerate() {
        assert_eq!(
            errno(write_block(&m.join(format!("after{i}")))),
            Some(libc::EDQUOT),
            "mount {i} allocated past the rule added on mount 1"
        );
    }

    // The rule goes on mount 2: every mount writes again at once.
    Client::for_path(&mnts[2])
        .expect("client")
        .quota_change(&data_rule(), false)
        .expect("quota-del");
    for (i, m) in mnts.iter().enumerate() {
        write_block(&m.join(format!("again{i}")))
            .unwrap_or_else(|e| panic!("mount {i} still refuses after quota-del: {e}"));
    }

    for d in daemons.into_iter().rev() {
        d.unmount();
    }
    let faults = v.check();
    assert!(faults.is_empty(), "check: {faults:?}");
}
