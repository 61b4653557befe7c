//! `index`: "which inodes changed since S". A tree of N files (1,000 a
//! directory) is created and made durable, then K files spread evenly
//! over it get one byte appended. The question is then answered on
//! scoutfs with its meta_seq index (`scoutfs walk-inodes meta_seq S+1 -1
//! MNT`, S the highest seq before the changes) and on every baseline with
//! `find TREE -newer MARKER` (MARKER touched before the changes): each
//! tool as a user runs it, process start included. Rows: the tree's
//! creation, the K changes, and the query warm and with cold caches.
//!
//! Guarantees: every query's answer is checked to hold at least the K
//! changed files; an answer that misses some fails the row. Uses
//! [`super`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{check_closing, ioe, measure, par, Phase};
use crate::stats::{Rec, Row};
use crate::sys;
use crate::targets::Target;
use crate::Ctx;

pub const NAME: &str = "index";
const PER_DIR: u64 = 1000;
/// Timed queries per variant.
const QUERIES: usize = 5;

fn file(base: &Path, i: u64) -> PathBuf {
    base.join(format!("d{}", i / PER_DIR)).join(format!("f{i}"))
}

/// Rows of `walk-inodes` output (headers start with `#`): (count, last major).
fn walk(ctx: &Ctx, mnt: &Path, first: u64) -> Result<(u64, u64), String> {
    let out = sys::run(
        &ctx.scoutfs.to_string_lossy(),
        &[
            "walk-inodes",
            "meta_seq",
            &first.to_string(),
            "-1",
            &mnt.to_string_lossy(),
        ],
    )?;
    let mut n = 0;
    let mut last = 0;
    for l in out.lines().filter(|l| !l.starts_with('#')) {
        let mut f = l.split_whitespace();
        if let (Some(_), Some(major)) = (f.next(), f.next()) {
            n += 1;
            last = last.max(major.parse().unwrap_or(0));
        }
    }
    Ok((n, last))
}

fn find_newer(tree: &Path, marker: &Path) -> Result<u64, String> {
    let out = Command::new("find")
        .arg(tree)
        .arg("-newer")
        .arg(marker)
        .output()
        .map_err(|e| format!("find: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "find failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout.iter().filter(|&&b| b == b'\n').count() as u64)
}

pub fn run(ctx: &Ctx, target: &Target) -> Vec<Row> {
    let p = &ctx.profile;
    let threads = p.threads;
    let n = p.index_files;
    let k = p.index_changed.min(n).max(1);
    let base = target.root.join("index");
    let params = format!("files={n} changed={k}");
    let ph = |test: &str| Phase {
        workload: NAME,
        test: test.to_string(),
        params: params.clone(),
        bytes: false,
    };
    let mut rows = Vec::new();
    let dirs = n.div_ceil(PER_DIR);
    for d in 0..dirs {
        let dir = base.join(format!("d{d}"));
        if let Err(e) = fs::create_dir_all(&dir) {
            return vec![Row::skipped(
                NAME,
                "all",
                target.name(),
                target.ours(),
                &e.to_string(),
            )];
        }
    }
    ctx.status(&format!("{NAME} tree of {n} files on {}", target.name()));
    let create = measure(target, ph("tree-create"), || {
        par(threads, |t| {
            let mut rec = Rec::new();
            let mut i = t as u64;
            while i < n {
                if i.is_multiple_of(256) {
                    check_closing()?;
                }
                let f = file(&base, i);
                rec.time(0, || fs::File::create(&f).map(drop))
                    .map_err(ioe("create", &f))?;
                i += threads as u64;
            }
            Ok(rec)
        })
    });
    let failed = create.skipped.is_some();
    rows.push(create);
    if failed {
        return rows;
    }
    target.sync(ctx);

    // Where "since" starts: the highest seq now (ours) or a marker's mtime.
    let marker = target.root.join("index-marker");
    let since = if target.ours() {
        match walk(ctx, &target.root, 0) {
            Ok((_, last)) => last + 1,
            Err(e) => {
                rows.push(Row::skipped(NAME, "changed-since", target.name(), true, &e));
                return rows;
            }
        }
    } else {
        if let Err(e) = fs::File::create(&marker) {
            rows.push(Row::skipped(
                NAME,
                "changed-since",
                target.name(),
                false,
                &e.to_string(),
            ));
            return rows;
        }
        // Timestamps come from the coarse clock (one tick): changes must
        // land on a later tick than the marker's.
        std::thread::sleep(Duration::from_millis(50));
        0
    };

    ctx.status(&format!("{NAME} change {k} files on {}", target.name()));
    let stride = n / k;
    rows.push(measure(target, ph("change"), || {
        let mut rec = Rec::new();
        for j in 0..k {
            check_closing()?;
            let f = file(&base, j * stride);
            rec.time(1, || {
                fs::OpenOptions::new()
                    .append(true)
                    .open(&f)
                    .and_then(|mut h| h.write_all(b"x"))
            })
            .map_err(ioe("append", &f))?;
        }
        Ok(rec)
    }));
    target.sync(ctx);

    for (test, cold) in [("changed-since", false), ("changed-since-cold", true)] {
        ctx.status(&format!("{NAME} {test} on {}", target.name()));
        let mut found = 0;
        let mut row = measure(target, ph(test), || {
            let mut rec = Rec::new();
            for _ in 0..QUERIES {
                check_closing()?;
                if cold {
                    sys::drop_caches_all();
                }
                let t = Instant::now();
                found = if target.ours() {
                    walk(ctx, &target.root, since)?.0
                } else {
                    find_newer(&base, &marker)?
                };
                rec.add(t.elapsed(), 0);
                if found < k {
                    return Err(format!("the query found {found} of the {k} changed files"));
                }
            }
            Ok(rec)
        });
        row.note = Some(format!(
            "{} answered {found} entries",
            if target.ours() {
                "walk-inodes"
            } else {
                "find -newer"
            }
        ));
        rows.push(row);
    }
    let _ = fs::remove_dir_all(&base);
    let _ = fs::remove_file(&marker);
    target.sync(ctx);
    rows
}
