//! Measurements: a latency recorder per thread (hdrhistogram, nanoseconds,
//! 3 significant digits), merged into one result row per test and target,
//! and the row format every output (table, JSON, SVG, compare) reads.
//!
//! Guarantees: a row's throughput is ops / wall seconds of the whole
//! phase (all threads), latencies are per operation; a row marked
//! `skipped` carries the reason and no numbers. Touches nothing else.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lat {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One result: one test on one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    pub workload: String,
    pub test: String,
    pub target: String,
    /// A scoutfs target (or one of its drivers); the rest are baselines.
    pub ours: bool,
    /// Size, threads, mounts as run.
    pub params: String,
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
    pub ops_per_sec: f64,
    pub mib_per_sec: Option<f64>,
    pub lat_us: Option<Lat>,
    /// CPU seconds of the filesystem's own processes (FUSE daemons) in
    /// this test.
    pub fs_cpu_secs: Option<f64>,
    /// Peak RSS of those processes during the test.
    pub fs_peak_rss_mib: Option<f64>,
    pub note: Option<String>,
    pub skipped: Option<String>,
}

impl Row {
    pub fn skipped(workload: &str, test: &str, target: &str, ours: bool, why: &str) -> Row {
        Row {
            workload: workload.into(),
            test: test.into(),
            target: target.into(),
            ours,
            skipped: Some(why.into()),
            ..Row::default()
        }
    }

    /// The number the ratios compare: operations per second.
    pub fn rate(&self) -> Option<f64> {
        (self.skipped.is_none() && self.ops_per_sec > 0.0).then_some(self.ops_per_sec)
    }
}

/// Per-thread latency recorder.
pub struct Rec {
    hist: Histogram<u64>,
    pub ops: u64,
    pub bytes: u64,
}

impl Default for Rec {
    fn default() -> Self {
        Rec::new()
    }
}

impl Rec {
    pub fn new() -> Rec {
        Rec {
            hist: Histogram::new(3).expect("3 significant digits is valid"),
            ops: 0,
            bytes: 0,
        }
    }

    /// Records one operation that took `d` and moved `bytes`.
    pub fn add(&mut self, d: Duration, bytes: u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        // Auto-resizing histograms only fail on values beyond u64 range.
        let _ = self.hist.record(ns);
        self.ops += 1;
        self.bytes += bytes;
    }

    /// Times `f` as one operation of `bytes`.
    pub fn time<T>(&mut self, bytes: u64, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(t.elapsed(), bytes);
        out
    }

    pub fn merge(&mut self, other: &Rec) {
        let _ = self.hist.add(&other.hist);
        self.ops += other.ops;
        self.bytes += other.bytes;
    }

    pub fn lat(&self) -> Option<Lat> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |v: u64| v as f64 / 1000.0;
        Some(Lat {
            p50: us(self.hist.value_at_quantile(0.50)),
            p90: us(self.hist.value_at_quantile(0.90)),
            p99: us(self.hist.value_at_quantile(0.99)),
            p999: us(self.hist.value_at_quantile(0.999)),
            max: us(self.hist.max()),
            mean: self.hist.mean() / 1000.0,
        })
    }

    /// The row of a phase that took `secs` of wall time.
    pub fn row(&self, secs: f64, with_bytes: bool) -> Row {
        let secs = secs.max(1e-9);
        Row {
            ops: self.ops,
            bytes: self.bytes,
            secs,
            ops_per_sec: self.ops as f64 / secs,
            mib_per_sec: with_bytes.then(|| self.bytes as f64 / secs / (1024.0 * 1024.0)),
            lat_us: self.lat(),
            ..Row::default()
        }
    }
}
