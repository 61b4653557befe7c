//! `meta`: mdtest-style metadata rates. N files (split over T threads)
//! are created, stat'ed, listed and unlinked, once all in one shared
//! directory and once in one directory per thread. Each operation is one
//! timed system call (create = open(O_CREAT|O_EXCL) + close).
//!
//! Guarantees: every phase checks its own results (each stat finds its
//! file, each listing returns every name), so a filesystem that loses
//! files fails the row instead of looking fast. Uses [`super`].

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{check_closing, ioe, measure, par, Phase};
use crate::stats::{Rec, Row};
use crate::targets::Target;
use crate::Ctx;

pub const NAME: &str = "meta";

fn file(base: &Path, per_thread_dir: bool, t: usize, i: u64) -> PathBuf {
    if per_thread_dir {
        base.join(format!("t{t}")).join(format!("f{i}"))
    } else {
        base.join(format!("f{t}.{i}"))
    }
}

pub fn run(ctx: &Ctx, target: &Target) -> Vec<Row> {
    let threads = ctx.profile.threads;
    let per = (ctx.profile.meta_files / threads as u64).max(1);
    let mut rows = Vec::new();
    for (variant, per_dir) in [("shared-dir", false), ("dir-per-thread", true)] {
        let base = target.root.join(format!("meta-{variant}"));
        let params = format!("files={} threads={threads}", per * threads as u64);
        let prep = || -> Result<(), String> {
            fs::create_dir_all(&base).map_err(ioe("mkdir", &base))?;
            if per_dir {
                for t in 0..threads {
                    let d = base.join(format!("t{t}"));
                    fs::create_dir_all(&d).map_err(ioe("mkdir", &d))?;
                }
            }
            Ok(())
        };
        if let Err(e) = prep() {
            rows.push(Row::skipped(
                NAME,
                variant,
                target.name(),
                target.ours(),
                &e,
            ));
            continue;
        }
        let phase = |op: &str| Phase {
            workload: NAME,
            test: format!("{op}/{variant}"),
            params: params.clone(),
            bytes: false,
        };
        ctx.status(&format!("{NAME} {variant} create on {}", target.name()));
        let each = |what: &'static str, op: &(dyn Fn(&Path) -> std::io::Result<()> + Sync)| {
            measure(target, phase(what), || {
                par(threads, |t| {
                    let mut rec = Rec::new();
                    for i in 0..per {
                        if i.is_multiple_of(256) {
                            check_closing()?;
                        }
                        let p = file(&base, per_dir, t, i);
                        rec.time(0, || op(&p)).map_err(ioe(what, &p))?;
                    }
                    Ok(rec)
                })
            })
        };
        rows.push(each("create", &|p| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p)
                .map(drop)
        }));
        ctx.status(&format!("{NAME} {variant} stat on {}", target.name()));
        rows.push(each("stat", &|p| fs::metadata(p).map(drop)));
        ctx.status(&format!("{NAME} {variant} readdir on {}", target.name()));
        rows.push(measure(target, phase("readdir"), || {
            par(threads, |t| {
                let dir = if per_dir {
                    base.join(format!("t{t}"))
                } else {
                    base.clone()
                };
                let want = if per_dir { per } else { per * threads as u64 };
                let mut rec = Rec::new();
                let mut it = rec
                    .time(0, || fs::read_dir(&dir))
                    .map_err(ioe("opendir", &dir))?;
                let mut n = 0u64;
                loop {
                    match rec.time(0, || it.next()) {
                        Some(Ok(_)) => n += 1,
                        Some(Err(e)) => return Err(ioe("readdir", &dir)(e)),
                        None => break,
                    }
                }
                if n != want {
                    return Err(format!(
                        "readdir {} returned {n} of {want} names",
                        dir.display()
                    ));
                }
                Ok(rec)
            })
        }));
        ctx.status(&format!("{NAME} {variant} unlink on {}", target.name()));
        rows.push(each("unlink", &|p| fs::remove_file(p)));
        let _ = fs::remove_dir_all(&base);
        target.sync(ctx);
    }
    rows
}
