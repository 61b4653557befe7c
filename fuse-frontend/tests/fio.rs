//! Data integrity through a real mount: fio (Debian `fio`, TESTING.md §2)
//! writes files of a fresh `scoutfsd` mount at random offsets with mixed
//! block sizes, then reads everything back and checks each block's crc32c
//! (`--verify=crc32c --do_verify=1`, fatal on the first bad block); then
//! `check` clean after unmounting.
//!
//! Two jobs run side by side on their own files, half the size each: psync
//! (buffered opens) and io_uring with O_DIRECT and 8 requests in flight,
//! both with block sizes from 1.5 KiB to 1 MiB at offsets that are
//! multiples of 1.5 KiB, so many writes cover 4 KiB blocks only in part. Total size: `SCOUTFS_FIO_SIZE` in MiB (default 256;
//! `scripts/test.sh --long` writes 1024). The binary is `$SCOUTFS_FIO` or
//! `fio` in PATH (`scripts/setup.sh` installs it); without it, root or
//! /dev/fuse the test prints why and passes.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;

use support::{env_u64, find_tool, skip_without_fuse, Daemon, Volume};

/// MiB written (and verified) unless `SCOUTFS_FIO_SIZE` says otherwise.
const SIZE_MIB_DEFAULT: u64 = 256;

#[test]
fn fio_mixed_random_writes_verify_crc32c() {
    if skip_without_fuse("fio_mixed_random_writes_verify_crc32c") {
        return;
    }
    let Some(fio) = find_tool("fio", "SCOUTFS_FIO") else {
        eprintln!(
            "SKIPPED fio_mixed_random_writes_verify_crc32c: no fio binary \
             (apt-get install fio, or set SCOUTFS_FIO)"
        );
        return;
    };
    let size_mib = env_u64("SCOUTFS_FIO_SIZE", SIZE_MIB_DEFAULT);
    assert!(size_mib >= 2, "SCOUTFS_FIO_SIZE must be at least 2 (MiB)");
    let half = size_mib / 2;

    let v = Volume::new();
    let d = Daemon::start(&v);
    let start = std::time::Instant::now();
    let out = Command::new(&fio)
        .arg(format!("--directory={}", v.mnt.display()))
        .args([
            "--rw=randwrite",
            "--bssplit=1536/10:4k/25:8k/10:12k/10:64k/15:100k/10:1m/20",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--end_fsync=1",
            "--group_reporting",
        ])
        .arg(format!("--size={half}m"))
        .args(["--name=psync", "--ioengine=psync", "--filename=fio.psync"])
        .args([
            "--name=uring_direct",
            "--ioengine=io_uring",
            "--direct=1",
            "--iodepth=8",
            "--filename=fio.uring",
        ])
        .output()
        .expect("run fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fio failed with {}:\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains("verify:") && !stderr.contains("verify:"),
        "fio reported verify errors:\n{stdout}\n{stderr}"
    );
    // Every block written was read back for the verify: the issued reads
    // equal the issued writes ("issued rwts: total=READS,WRITES,...").
    let issued = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("issued rwts: total="))
        .unwrap_or_else(|| panic!("no issued counts in fio's output:\n{stdout}"));
    let counts: Vec<u64> = issued
        .split(|c: char| c == ',' || c.is_whitespace())
        .take(2)
        .map(|n| n.parse().expect("issued count"))
        .collect();
    assert!(
        counts[1] > 0 && counts[0] == counts[1],
        "fio verified {} of {} writes:\n{stdout}",
        counts[0],
        counts[1]
    );
    for line in stdout
        .lines()
        .filter(|l| l.contains("READ:") || l.contains("WRITE:"))
    {
        eprintln!("{}", line.trim());
    }
    eprintln!(
        "fio: {} MiB written and verified in {:.1} s",
        2 * half,
        start.elapsed().as_secs_f64()
    );
    for f in ["fio.psync", "fio.uring"] {
        let len = std::fs::metadata(v.mnt.join(f)).expect("fio file").len();
        assert_eq!(len, half << 20, "{f} size");
    }
    d.unmount();
    v.assert_clean("after fio");
}
