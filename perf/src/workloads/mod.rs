//! The workloads and what they share: running a phase on T threads with
//! one latency recorder each, and turning a phase into a result row with
//! the filesystem processes' CPU time and peak RSS.
//!
//! Guarantees: a phase stops early (with an error) once the run is being
//! torn down, so Ctrl-C never waits for a long phase. Uses [`crate::stats`],
//! [`crate::targets`], [`crate::cleanup`].

pub mod cluster;
pub mod crosscheck;
pub mod data;
pub mod driver;
pub mod index;
pub mod meta;

use std::time::Instant;

use crate::cleanup;
use crate::stats::{Rec, Row};
use crate::targets::Target;

/// Names of the workloads, in run order.
pub const ALL: &[&str] = &["meta", "data", "index", "cluster", "driver", "crosscheck"];

/// Runs `f(thread)` on `threads` threads together and merges their
/// recorders; the first error wins.
pub fn par<F>(threads: usize, f: F) -> Result<Rec, String>
where
    F: Fn(usize) -> Result<Rec, String> + Sync,
{
    let results: Vec<Result<Rec, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let mut all = Rec::new();
    for r in results {
        all.merge(&r?);
    }
    Ok(all)
}

/// Fails once the run is closing, so loops end quickly on Ctrl-C.
pub fn check_closing() -> Result<(), String> {
    if cleanup::closing() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// What a phase is, for its row.
pub struct Phase<'a> {
    pub workload: &'a str,
    pub test: String,
    pub params: String,
    /// Whether throughput in bytes means something here.
    pub bytes: bool,
}

/// Runs one phase on `target` and makes its row; an error becomes a row
/// skipped with the message.
pub fn measure(target: &Target, phase: Phase, f: impl FnOnce() -> Result<Rec, String>) -> Row {
    let cpu0 = target.cpu();
    target.reset_rss();
    let t = Instant::now();
    let res = f();
    let secs = t.elapsed().as_secs_f64();
    let mut row = match res {
        Ok(rec) => {
            let mut row = rec.row(secs, phase.bytes);
            row.fs_cpu_secs = match (cpu0, target.cpu()) {
                (Some(a), Some(b)) => Some((b - a).max(0.0)),
                _ => None,
            };
            row.fs_peak_rss_mib = target.peak_rss();
            row
        }
        Err(e) => Row {
            skipped: Some(e),
            ..Row::default()
        },
    };
    row.workload = phase.workload.into();
    row.test = phase.test;
    row.target = target.name().into();
    row.ours = target.ours();
    row.params = phase.params;
    row
}

/// `io::Error` to the harness's error strings, with what failed.
pub fn ioe<'a>(what: &str, p: &'a std::path::Path) -> impl Fn(std::io::Error) -> String + 'a {
    let what = what.to_string();
    move |e| format!("{what} {}: {e}", p.display())
}
