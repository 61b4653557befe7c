//! The harness's smoke test (CI): `scoutfs-perf --quick` runs every
//! workload on every filesystem and reports ratios, and neither a
//! finished nor an interrupted run (SIGINT midway) leaves mounts, loop
//! devices, daemons or its work directory behind. Nothing here asserts
//! anything about speed.
//!
//! Needs root and /dev/fuse (loop devices, mounts, FUSE); skipped with a
//! message otherwise.
// Polling real processes against a deadline needs the real clock (the
// clippy.toml bans protect the engine's deterministic replay).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_scoutfs-perf");

fn skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root: loop devices and mounts need CAP_SYS_ADMIN".to_string())
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .err()
            .map(|e| format!("cannot open /dev/fuse: {e}"))
    };
    match why {
        Some(w) => {
            eprintln!("SKIPPED {test}: {w}");
            true
        }
        None => false,
    }
}

/// What a run under `base` may have left: mounts, loop devices,
/// processes, and the run's work directory.
fn leftovers(base: &Path) -> Vec<String> {
    let tag = base.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    out.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&tag))
            .map(|l| format!("mount: {l}")),
    );
    let loops = Command::new("losetup").arg("-a").output().expect("losetup");
    out.extend(
        String::from_utf8_lossy(&loops.stdout)
            .lines()
            .filter(|l| l.contains(&tag))
            .map(|l| format!("loop: {l}")),
    );
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(&tag) {
                out.push(format!("process {}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    for e in std::fs::read_dir(base).expect("base").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("scoutfs-perf-") {
            out.push(format!("work directory: {name}"));
        }
    }
    out
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn quick_profile_reports_ratios_for_every_workload_and_cleans_up() {
    if skip("quick_profile_reports_ratios_for_every_workload_and_cleans_up") {
        return;
    }
    let base = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let out = base.path().join("r.json");
    let charts = base.path().join("charts");
    let st = Command::new(BIN)
        .args(["--quick", "--workdir"])
        .arg(base.path())
        .arg("--out")
        .arg(&out)
        .arg("--charts")
        .arg(&charts)
        .status()
        .expect("run scoutfs-perf");
    assert!(st.success(), "scoutfs-perf --quick failed: {st}");
    let left = leftovers(base.path());
    assert!(left.is_empty(), "left behind: {left:#?}");

    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    assert!(
        rep["machine"]["cores"].as_str().is_some(),
        "machine description missing"
    );
    let rows = rep["rows"].as_array().expect("rows");
    let ratios = rep["ratios"].as_array().expect("ratios");
    let baselines = ["ext4", "xfs", "tmpfs", "bindfs"];
    for w in ["meta", "data", "index", "cluster", "driver", "crosscheck"] {
        let of_w: Vec<&serde_json::Value> = rows.iter().filter(|r| r["workload"] == w).collect();
        assert!(!of_w.is_empty(), "no rows for workload {w}");
        for r in &of_w {
            let note = r["note"].as_str().unwrap_or("");
            assert!(!note.starts_with("WRONG"), "{w}: {r}");
            // Only scoutfs's cluster rows may be skipped (a build without
            // multi-mount support); everything else must have run.
            if !r["skipped"].is_null() {
                assert!(
                    w == "cluster" && r["target"] == "scoutfs",
                    "{w}/{} on {} skipped: {}",
                    r["test"],
                    r["target"],
                    r["skipped"]
                );
                continue;
            }
            assert!(r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
            if r["ours"] == true && (w == "meta" || w == "data" || w == "index") {
                for b in baselines {
                    assert!(
                        ratios.iter().any(|x| x["workload"] == w
                            && x["test"] == r["test"]
                            && x["baseline"] == b),
                        "{w}/{}: no ratio against {b}",
                        r["test"]
                    );
                }
                assert!(r["lat_us"]["p99"].as_f64().is_some(), "{r}");
                assert!(r["fs_cpu_secs"].as_f64().is_some(), "{r}");
            }
        }
    }
    for w in ["meta", "data", "index", "cluster", "driver"] {
        let svg = std::fs::read_to_string(charts.join(format!("{w}.svg"))).expect("chart");
        assert!(svg.starts_with("<svg") && svg.contains("scoutfs") || w == "driver");
    }
    let cmp = Command::new(BIN)
        .arg("compare")
        .arg(&out)
        .arg(&out)
        .output()
        .expect("compare");
    assert!(cmp.status.success());
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(
        text.contains("+0.0%"),
        "compare of a run with itself: {text}"
    );
}

#[test]
fn sigint_midway_leaves_no_mounts_loop_devices_or_daemons() {
    if skip("sigint_midway_leaves_no_mounts_loop_devices_or_daemons") {
        return;
    }
    let base = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let tag = base.path().to_string_lossy().into_owned();
    let mut child = Command::new(BIN)
        .args([
            "--quick",
            "--no-setup",
            "--workloads",
            "meta,data",
            "--workdir",
        ])
        .arg(base.path())
        .arg("--out")
        .arg(base.path().join("r.json"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    // Midway: every filesystem is up (scoutfs's daemon, two loop devices,
    // bindfs) and the workloads have started.
    let up = wait_for(Duration::from_secs(120), || {
        let m = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let ours: Vec<&str> = m.lines().filter(|l| l.contains(&tag)).collect();
        ours.len() >= 5
    });
    assert!(up, "the run never had its five mounts up");
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut status = None;
    assert!(
        wait_for(Duration::from_secs(120), || {
            status = child.try_wait().expect("wait");
            status.is_some()
        }),
        "scoutfs-perf did not exit after SIGINT"
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "exit status after SIGINT"
    );
    let left = leftovers(base.path());
    assert!(left.is_empty(), "left behind after SIGINT: {left:#?}");
}

#[test]
fn a_panic_after_setup_still_cleans_up() {
    if skip("a_panic_after_setup_still_cleans_up") {
        return;
    }
    let base = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let st = Command::new(BIN)
        .args(["--quick", "--no-setup", "--workloads", "meta", "--workdir"])
        .arg(base.path())
        .arg("--out")
        .arg(base.path().join("r.json"))
        .env("SCOUTFS_PERF_PANIC_AFTER_SETUP", "1")
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(101), "exit status after the panic");
    let left = leftovers(base.path());
    assert!(left.is_empty(), "left behind after a panic: {left:#?}");
}
