//! `cluster`: work spread over mounts. On scoutfs a volume with M quorum
//! slots is mounted M times (one daemon each); on a baseline, which
//! cannot be mounted twice, the M "mounts" are M workers on its one
//! mount. Tests: creates in separate directories from 1..=M mounts at
//! once (aggregate rate, and the mean rate of one mount), and a lock
//! ping-pong where two mounts take turns appending to one file, so every
//! append moves the file's lock (on scoutfs) from one mount to the other.
//!
//! Guarantees: when the volume's mounts do not all come up (a build
//! without multi-mount support), scoutfs's rows say "skipped: <reason>"
//! and the baselines still run. The ping-pong checks the file ends with
//! every append in turn order, seen from the first mount. Uses [`super`].

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::{check_closing, ioe, measure, par, Phase};
use crate::stats::{Rec, Row};
use crate::targets::{self, Kind, Target};
use crate::Ctx;

pub const NAME: &str = "cluster";
const APPEND: usize = 64;

/// Runs the workload on the roots of `mounts` (one per mount) and
/// measures against `measured` (whose processes' CPU and RSS count).
fn work(ctx: &Ctx, measured: &Target, roots: &[PathBuf]) -> Vec<Row> {
    let p = &ctx.profile;
    let m_max = roots.len();
    let mut rows = Vec::new();
    for m in 1..=m_max {
        ctx.status(&format!(
            "{NAME} creates from {m} mounts on {}",
            measured.name()
        ));
        let per = p.cluster_files;
        let params = format!("mounts={m} files/mount={per}");
        let rates = Mutex::new(Vec::new());
        for (w, root) in roots.iter().enumerate().take(m) {
            let dir = root.join(format!("cluster-{m}-{w}"));
            if let Err(e) = fs::create_dir_all(&dir) {
                rows.push(Row::skipped(
                    NAME,
                    &format!("create-{m}-mounts"),
                    measured.name(),
                    measured.ours(),
                    &e.to_string(),
                ));
                return rows;
            }
        }
        measured.sync(ctx);
        let agg = measure(
            measured,
            Phase {
                workload: NAME,
                test: format!("create-{m}-mounts"),
                params: params.clone(),
                bytes: false,
            },
            || {
                par(m, |w| {
                    let dir = roots[w].join(format!("cluster-{m}-{w}"));
                    let mut rec = Rec::new();
                    let t = Instant::now();
                    for i in 0..per {
                        if i.is_multiple_of(256) {
                            check_closing()?;
                        }
                        let f = dir.join(format!("f{i}"));
                        rec.time(0, || fs::File::create(&f).map(drop))
                            .map_err(ioe("create", &f))?;
                    }
                    let rate = per as f64 / t.elapsed().as_secs_f64().max(1e-9);
                    rates.lock().unwrap_or_else(|e| e.into_inner()).push(rate);
                    Ok(rec)
                })
            },
        );
        let rates = rates.into_inner().unwrap_or_else(|e| e.into_inner());
        if agg.skipped.is_none() && !rates.is_empty() {
            let mut one = agg.clone();
            one.test = format!("create-{m}-mounts-per-mount");
            one.ops_per_sec = rates.iter().sum::<f64>() / rates.len() as f64;
            one.ops /= m as u64;
            one.note = Some("mean rate of one mount".into());
            rows.push(agg);
            rows.push(one);
        } else {
            rows.push(agg);
        }
    }
    if m_max >= 2 {
        ctx.status(&format!("{NAME} lock ping-pong on {}", measured.name()));
        let rounds = p.pingpong_rounds;
        let name = "pingpong";
        let files: Vec<PathBuf> = roots[..2].iter().map(|r| r.join(name)).collect();
        let turn = (Mutex::new(0u64), Condvar::new());
        if let Err(e) = fs::File::create(&files[0]) {
            let why = format!("create {}: {e}", files[0].display());
            rows.push(Row::skipped(
                NAME,
                "lock-pingpong-append",
                measured.name(),
                measured.ours(),
                &why,
            ));
            return rows;
        }
        measured.sync(ctx);
        let mut row = measure(
            measured,
            Phase {
                workload: NAME,
                test: "lock-pingpong-append".into(),
                params: format!("mounts=2 appends={}", rounds * 2),
                bytes: false,
            },
            || {
                par(2, |w| {
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(&files[w])
                        .map_err(ioe("open", &files[w]))?;
                    let mut rec = Rec::new();
                    let rec_byte = [b'a' + w as u8; APPEND];
                    for r in 0..rounds {
                        let mine = r * 2 + w as u64;
                        {
                            let (lock, cv) = &turn;
                            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                            while *g != mine {
                                check_closing()?;
                                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                            }
                        }
                        rec.time(APPEND as u64, || f.write_all(&rec_byte))
                            .map_err(ioe("append", &files[w]))?;
                        let (lock, cv) = &turn;
                        *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        cv.notify_all();
                    }
                    Ok(rec)
                })
            },
        );
        if row.skipped.is_none() {
            row.note = Some(match fs::read(&files[0]) {
                Ok(data) => {
                    let ok = data.len() as u64 == rounds * 2 * APPEND as u64
                        && data
                            .chunks(APPEND)
                            .enumerate()
                            .all(|(i, c)| c.iter().all(|&b| b == b'a' + (i % 2) as u8));
                    if ok {
                        "file holds every append in turn order".into()
                    } else {
                        format!(
                            "WRONG: file has {} bytes, not all in turn order",
                            data.len()
                        )
                    }
                }
                Err(e) => format!("WRONG: cannot read the file back: {e}"),
            });
        }
        rows.push(row);
    }
    rows
}

/// The tests [`work`] reports for `mounts` mounts.
fn test_names(mounts: usize) -> Vec<String> {
    let mut v = Vec::new();
    for m in 1..=mounts {
        v.push(format!("create-{m}-mounts"));
        v.push(format!("create-{m}-mounts-per-mount"));
    }
    if mounts >= 2 {
        v.push("lock-pingpong-append".into());
    }
    v
}

pub fn run(ctx: &Ctx, target: &Target) -> Vec<Row> {
    let mounts = ctx.profile.mounts.max(1);
    if target.kind != Kind::Scoutfs {
        let roots = vec![target.root.join("cluster"); mounts];
        if let Err(e) = fs::create_dir_all(&roots[0]) {
            return vec![Row::skipped(
                NAME,
                "all",
                target.name(),
                false,
                &e.to_string(),
            )];
        }
        let rows = work(ctx, target, &roots);
        let _ = fs::remove_dir_all(&roots[0]);
        return rows;
    }
    ctx.status(&format!(
        "{NAME}: mounting a {mounts}-slot volume {mounts} times"
    ));
    match targets::scoutfs_volume(ctx, "cluster", mounts) {
        Err(why) => test_names(mounts)
            .iter()
            .map(|t| Row::skipped(NAME, t, "scoutfs", true, &why))
            .collect(),
        Ok(vol) => {
            // One target standing for all mounts: their daemons' CPU and
            // RSS add up.
            let all = Target::group(&vol);
            let roots: Vec<PathBuf> = vol.iter().map(|t| t.root.clone()).collect();
            let rows = work(ctx, &all, &roots);
            // All at once: a quorum member's unmount waits while leaving
            // would leave fewer members than an election needs for the
            // mounts still there (reference §5.4), so one by one the
            // second to last would wait for the last forever.
            std::thread::scope(|s| {
                for t in vol {
                    s.spawn(move || t.teardown());
                }
            });
            rows
        }
    }
}
