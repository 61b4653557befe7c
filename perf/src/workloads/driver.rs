//! `driver`: the raw speed of each block driver next to fio, on one file
//! (filled with data first, on the work directory's disk, O_DIRECT
//! everywhere). Random 4 KiB reads for a fixed time and sequential 1 MiB
//! reads and writes: the `file` driver with T threads at queue depth 1
//! against fio's psync engine with T jobs, the `uring` driver at queue
//! depth 32 on one thread against fio's io_uring engine at iodepth 32.
//! Every "ours" row gets a ratio against both fio rows.
//!
//! Guarantees: the drivers run through their public `BlockDevice` API
//! exactly as the engine calls them. Uses [`super`], the drivers crate.

use std::path::Path;
use std::time::{Duration, Instant};

use drivers::{AlignedBuf, BlockDevice, FileDevice, OpenOptions, UringDevice, UringRing};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{check_closing, par};
use crate::stats::{Rec, Row};
use crate::sys;
use crate::Ctx;

pub const NAME: &str = "driver";
const QD: usize = 32;

#[derive(Clone, Copy)]
enum Pattern {
    RandRead4k,
    SeqRead1m,
    SeqWrite1m,
}

impl Pattern {
    fn test(self) -> &'static str {
        match self {
            Pattern::RandRead4k => "rand-read-4k",
            Pattern::SeqRead1m => "seq-read-1m",
            Pattern::SeqWrite1m => "seq-write-1m",
        }
    }
    fn bs(self) -> u64 {
        match self {
            Pattern::RandRead4k => 4096,
            _ => 1 << 20,
        }
    }
    fn fio_rw(self) -> &'static str {
        match self {
            Pattern::RandRead4k => "randread",
            Pattern::SeqRead1m => "read",
            Pattern::SeqWrite1m => "write",
        }
    }
}

/// Offsets of one worker: random blocks, or its own sequential stripe.
struct Offsets {
    pat: Pattern,
    rng: SmallRng,
    next: u64,
    start: u64,
    end: u64,
    total: u64,
}

impl Offsets {
    fn new(pat: Pattern, size: u64, worker: usize, workers: usize) -> Offsets {
        let stripe = (size / workers as u64) / pat.bs() * pat.bs();
        let start = stripe * worker as u64;
        Offsets {
            pat,
            rng: SmallRng::seed_from_u64(0xd1 + worker as u64),
            next: start,
            start,
            end: (start + stripe).max(start + pat.bs()).min(size),
            total: size,
        }
    }
    fn next(&mut self) -> u64 {
        let bs = self.pat.bs();
        match self.pat {
            Pattern::RandRead4k => self.rng.gen_range(0..(self.total / bs).max(1)) * bs,
            _ => {
                if self.next + bs > self.end {
                    self.next = self.start;
                }
                let o = self.next;
                self.next += bs;
                o
            }
        }
    }
}

fn file_driver(
    path: &Path,
    pat: Pattern,
    threads: usize,
    secs: f64,
    size: u64,
) -> Result<Rec, String> {
    par(threads, |w| {
        let dev = FileDevice::open(path, &OpenOptions::new().direct(true))
            .map_err(|e| format!("file driver: {e}"))?;
        let mut offs = Offsets::new(pat, size, w, threads);
        let mut buf = AlignedBuf::new(pat.bs() as usize);
        let mut rec = Rec::new();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            check_closing()?;
            let off = offs.next();
            let t = Instant::now();
            let fut = match pat {
                Pattern::SeqWrite1m => dev.write_at(off, buf),
                _ => dev.read_at(off, buf),
            };
            let (b, res) = futures::executor::block_on(fut);
            rec.add(t.elapsed(), pat.bs());
            res.map_err(|e| format!("file driver at {off}: {e}"))?;
            buf = b;
        }
        Ok(rec)
    })
}

fn uring_driver(path: &Path, pat: Pattern, secs: f64, size: u64) -> Result<Rec, String> {
    let ring = UringRing::new().map_err(|e| format!("io_uring: {e}"))?;
    let dev = UringDevice::open(&ring, path).map_err(|e| format!("uring driver: {e}"))?;
    let mut offs = Offsets::new(pat, size, 0, 1);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    ring.block_on(async {
        let mut rec = Rec::new();
        let mut inflight = FuturesUnordered::new();
        let submit = |offs: &mut Offsets, buf: AlignedBuf| {
            let off = offs.next();
            let t = Instant::now();
            let fut = match pat {
                Pattern::SeqWrite1m => dev.write_at(off, buf),
                _ => dev.read_at(off, buf),
            };
            async move {
                let (b, res) = fut.await;
                (t.elapsed(), off, b, res)
            }
        };
        for _ in 0..QD {
            inflight.push(submit(&mut offs, AlignedBuf::new(pat.bs() as usize)));
        }
        while let Some((d, off, buf, res)) = inflight.next().await {
            res.map_err(|e| format!("uring driver at {off}: {e}"))?;
            rec.add(d, pat.bs());
            if Instant::now() < end && !crate::cleanup::closing() {
                inflight.push(submit(&mut offs, buf));
            }
        }
        check_closing()?;
        Ok(rec)
    })
}

/// Runs fio and reads back IOPS, bandwidth and completion latencies.
fn fio(
    path: &Path,
    pat: Pattern,
    engine: &str,
    jobs: usize,
    depth: usize,
    secs: f64,
    size: u64,
) -> Result<Row, String> {
    let rand = matches!(pat, Pattern::RandRead4k);
    let stripe = (size / jobs as u64) / pat.bs() * pat.bs();
    let out = sys::run(
        "fio",
        &[
            "--name=perf",
            &format!("--filename={}", path.display()),
            &format!("--rw={}", pat.fio_rw()),
            &format!("--bs={}", pat.bs()),
            // Sequential jobs each take their own stripe, as the file
            // driver's threads do; random jobs cover the whole file.
            &format!("--size={}", if rand { size } else { stripe }),
            &format!("--offset_increment={}", if rand { 0 } else { stripe }),
            "--direct=1",
            &format!("--ioengine={engine}"),
            &format!("--iodepth={depth}"),
            &format!("--numjobs={jobs}"),
            "--group_reporting",
            "--time_based",
            &format!("--runtime={}", secs.ceil() as u64),
            "--output-format=json",
        ],
    )?;
    fio_row(&out, pat)
}

/// The numbers of a fio JSON report (group_reporting: one job).
fn fio_row(json: &str, pat: Pattern) -> Result<Row, String> {
    // fio prints notes before the JSON on some versions.
    let start = json.find('{').ok_or("fio printed no JSON")?;
    let v: serde_json::Value =
        serde_json::from_str(&json[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    let side = match pat {
        Pattern::SeqWrite1m => &job["write"],
        _ => &job["read"],
    };
    let iops = side["iops"].as_f64().ok_or("fio JSON: no iops")?;
    let bytes = side["io_bytes"].as_u64().unwrap_or(0);
    let runtime_ms = side["runtime"].as_f64().unwrap_or(0.0);
    let clat = &side["clat_ns"]["percentile"];
    let pct = |k: &str| clat[k].as_f64().map(|ns| ns / 1000.0);
    let lat = match (
        pct("50.000000"),
        pct("90.000000"),
        pct("99.000000"),
        pct("99.900000"),
    ) {
        (Some(p50), Some(p90), Some(p99), Some(p999)) => Some(crate::stats::Lat {
            p50,
            p90,
            p99,
            p999,
            max: side["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1000.0,
            mean: side["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        }),
        _ => None,
    };
    let secs = runtime_ms / 1000.0;
    Ok(Row {
        ops: side["total_ios"].as_u64().unwrap_or(0),
        bytes,
        secs,
        ops_per_sec: iops,
        mib_per_sec: Some(side["bw_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)),
        lat_us: lat,
        ..Row::default()
    })
}

/// Fills `path` with `size` bytes of data (holes would read as zeros
/// without touching the disk).
pub fn prepare_file(path: &Path, size: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let buf = vec![0xa5u8; 1 << 20];
    let mut off = 0;
    while off < size {
        check_closing()?;
        f.write_all_at(&buf, off)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        off += buf.len() as u64;
    }
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(ctx: &Ctx) -> Vec<Row> {
    let p = &ctx.profile;
    let size = p.driver_file_bytes.div_ceil(1 << 20) * (1 << 20);
    let path = ctx.workdir.join("driver.img");
    let mut rows = Vec::new();
    ctx.status(&format!("{NAME}: writing a {} MiB file", size >> 20));
    if let Err(e) = prepare_file(&path, size) {
        return vec![Row::skipped(NAME, "all", "file-driver", true, &e)];
    }
    let t = p.threads;
    let secs = p.driver_secs;
    for pat in [Pattern::RandRead4k, Pattern::SeqRead1m, Pattern::SeqWrite1m] {
        let params = format!("file={}MiB secs={secs}", size >> 20);
        let mut push = |target: &str, ours: bool, note: String, res: Result<Row, String>| {
            let mut row = res.unwrap_or_else(|e| Row {
                skipped: Some(e),
                ..Row::default()
            });
            row.workload = NAME.into();
            row.test = pat.test().into();
            row.target = target.into();
            row.ours = ours;
            row.params = params.clone();
            row.note = Some(note);
            rows.push(row);
        };
        let timed = |f: &dyn Fn() -> Result<Rec, String>| -> Result<Row, String> {
            let t0 = Instant::now();
            let rec = f()?;
            Ok(rec.row(t0.elapsed().as_secs_f64(), true))
        };
        ctx.status(&format!("{NAME} {} file driver", pat.test()));
        push(
            "file-driver",
            true,
            format!("{t} threads, QD1 each"),
            timed(&|| file_driver(&path, pat, t, secs, size)),
        );
        ctx.status(&format!("{NAME} {} uring driver", pat.test()));
        push(
            "uring-driver",
            true,
            format!("1 thread, QD{QD}"),
            timed(&|| uring_driver(&path, pat, secs, size)),
        );
        ctx.status(&format!("{NAME} {} fio psync", pat.test()));
        push(
            "fio-psync",
            false,
            format!("{t} jobs, QD1 each"),
            fio(&path, pat, "psync", t, 1, secs, size),
        );
        ctx.status(&format!("{NAME} {} fio io_uring", pat.test()));
        push(
            "fio-io_uring",
            false,
            format!("1 job, QD{QD}"),
            fio(&path, pat, "io_uring", 1, QD, secs, size),
        );
    }
    let _ = std::fs::remove_file(&path);
    rows
}
