//! POSIX conformance of a real mount: pjdfstest (the Rust rewrite, `cargo
//! install pjdfstest`, see TESTING.md §1) against a directory of a fresh
//! `scoutfsd` mount, then `check` clean after unmounting.
//!
//! The whole suite takes a few seconds, so it always runs in full (398
//! cases): one run with `allow_remount = false`, where the 13 EROFS cases
//! skip, then the EROFS cases on their own with remounts allowed. Those
//! remount with `mount -o remount,ro`, which mount(8) hands to our
//! `/sbin/mount.fuse.scoutfs` helper, installed as a symlink to this
//! build's `scoutfsd` for that run (if another file holds the name, a
//! `mount` shim earlier in PATH adds `-i` instead: no helper, the kernel
//! remounts FUSE read-only by itself). They run on their own
//! because pjdfstest leaves a file open for writing in an earlier open()
//! case, which makes a read-only remount EBUSY on any filesystem (tmpfs
//! too). `link::link_count_max` skips: FUSE reports no LINK_MAX.
//!
//! The binary is `$SCOUTFS_PJDFSTEST`, else `pjdfstest` in PATH, else
//! `$CARGO_HOME/bin/pjdfstest`; without it (or without root and
//! /dev/fuse) the test prints why and passes. `SCOUTFS_PJDFSTEST_FILTER`
//! narrows the main run to matching case names.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{skip_without_fuse, Daemon, Volume, SCOUTFSD};

/// What mount(8) runs for `mount -o remount` of a `fuse.scoutfs` mount.
const REMOUNT_HELPER: &str = "/sbin/mount.fuse.scoutfs";

/// The remount helper, installed for as long as this lives (None when
/// the name is taken by something else).
struct Helper;

impl Helper {
    fn install() -> Option<Helper> {
        match std::fs::read_link(REMOUNT_HELPER) {
            Ok(t) if t == Path::new(SCOUTFSD) => Some(Helper),
            Err(_) if std::fs::symlink_metadata(REMOUNT_HELPER).is_err() => {
                std::os::unix::fs::symlink(SCOUTFSD, REMOUNT_HELPER).ok()?;
                Some(Helper)
            }
            _ => None,
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(REMOUNT_HELPER);
    }
}

/// The least the main run must pass (398 cases, 14 of them skipped here).
const PASSED_MIN: u64 = 384;
/// The EROFS cases.
const EROFS_CASES: u64 = 13;

const CONFIG: &str = r#"[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 0.02
allow_remount = REMOUNT
expected_failures = []
[dummy_auth]
entries = [ ["nobody", "nogroup"], ["daemon", "daemon"] ]
"#;

fn find_pjdfstest() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCOUTFS_PJDFSTEST") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    dirs.extend(cargo_home.map(|h| h.join("bin")));
    dirs.into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
}

/// (failed, skipped, passed) from pjdfstest's last line.
fn summary(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("no pjdfstest summary in:\n{out}"));
    let num = |word: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("no '{word}' count in {line}"))
    };
    (num("failed"), num("skipped"), num("passed"))
}

struct Run {
    failed: u64,
    skipped: u64,
    passed: u64,
    output: String,
}

fn run(bin: &Path, work: &Path, dir: &Path, remount: bool, filter: &[String]) -> Run {
    let conf = work.join(format!("pjdfstest-{remount}.toml"));
    std::fs::write(&conf, CONFIG.replace("REMOUNT", &remount.to_string())).unwrap();
    let secondary = work.join("secondary");
    std::fs::create_dir_all(&secondary).unwrap();
    let helper = if remount { Helper::install() } else { None };
    let shim = work.join(if helper.is_some() { "no-shim" } else { "shim" });
    std::fs::create_dir_all(&shim).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let real_mount = std::env::split_paths(&path)
        .map(|d| d.join("mount"))
        .find(|p| p.is_file() && !p.starts_with(&shim))
        .unwrap_or_else(|| PathBuf::from("/bin/mount"));
    let mount = shim.join("mount");
    std::fs::write(
        &mount,
        format!("#!/bin/sh\nexec {} -i \"$@\"\n", real_mount.display()),
    )
    .unwrap();
    std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o755)).unwrap();
    if helper.is_some() {
        // mount(8) itself, and through it our helper.
        std::fs::remove_file(&mount).unwrap();
    }
    let mut paths = vec![shim.clone()];
    paths.extend(std::env::split_paths(&path).filter(|p| p != &shim));
    let out = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(&secondary)
        .args(filter)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(&paths).unwrap())
        .output()
        .expect("run pjdfstest");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (failed, skipped, passed) = summary(&output);
    Run {
        failed,
        skipped,
        passed,
        output,
    }
}

fn failures(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    let mut s = String::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("FAILED") {
            s.push_str(l);
            s.push('\n');
            if let Some(next) = lines.get(i + 1) {
                s.push_str(next);
                s.push('\n');
            }
        }
    }
    s
}

#[test]
fn pjdfstest_passes_on_a_real_mount() {
    if skip_without_fuse("pjdfstest_passes_on_a_real_mount") {
        return;
    }
    let Some(bin) = find_pjdfstest() else {
        eprintln!(
            "SKIPPED pjdfstest_passes_on_a_real_mount: no pjdfstest binary \
             (cargo install pjdfstest, or set SCOUTFS_PJDFSTEST)"
        );
        return;
    };
    let v = Volume::new();
    let d = Daemon::start(&v);
    let dir = v.mnt.join("pjdfstest");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = v.dir.path().to_path_buf();

    let filter: Vec<String> = std::env::var("SCOUTFS_PJDFSTEST_FILTER")
        .map(|f| vec![f])
        .unwrap_or_default();
    let main = run(&bin, &work, &dir, false, &filter);
    eprintln!(
        "pjdfstest: {} failed, {} skipped, {} passed",
        main.failed, main.skipped, main.passed
    );
    assert_eq!(
        main.failed,
        0,
        "pjdfstest failures:\n{}",
        failures(&main.output)
    );
    if filter.is_empty() {
        assert!(
            main.passed >= PASSED_MIN,
            "only {} passed:\n{}",
            main.passed,
            main.output
        );
    }

    let erofs = run(&bin, &work, &dir, true, &["erofs".to_string()]);
    eprintln!(
        "pjdfstest erofs: {} failed, {} skipped, {} passed",
        erofs.failed, erofs.skipped, erofs.passed
    );
    assert_eq!(
        (erofs.failed, erofs.passed),
        (0, EROFS_CASES),
        "EROFS cases:\n{}",
        failures(&erofs.output)
    );

    d.unmount();
    v.assert_clean("after pjdfstest");
}
