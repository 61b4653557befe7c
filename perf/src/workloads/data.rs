//! `data`: file data rates. Each of T threads works on its own file of
//! `data_file_bytes`: sequential 1 MiB writes (without and with a final
//! fsync inside the timed phase), sequential 1 MiB reads, random 4 KiB
//! reads, random 4 KiB writes, and random 4 KiB writes each followed by
//! fdatasync. The page cache is dropped before each read phase, so reads
//! come from the device on every filesystem (tmpfs aside).
//!
//! Guarantees: sequential reads check the pattern written, so a
//! filesystem returning wrong data fails the row. Uses [`super`].

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{check_closing, ioe, measure, par, Phase};
use crate::stats::{Rec, Row};
use crate::sys;
use crate::targets::Target;
use crate::Ctx;

pub const NAME: &str = "data";
const BIG: usize = 1 << 20;
const SMALL: usize = 4096;

/// The byte pattern of offset `off` in thread `t`'s file.
fn fill(buf: &mut [u8], t: usize, off: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = (off + (i * 8) as u64) ^ ((t as u64) << 56);
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
}

fn seq_write(path: &Path, t: usize, bytes: u64, fsync: bool) -> Result<Rec, String> {
    let f = File::create(path).map_err(ioe("create", path))?;
    let mut buf = vec![0u8; BIG];
    let mut rec = Rec::new();
    let mut off = 0;
    while off < bytes {
        check_closing()?;
        fill(&mut buf, t, off);
        rec.time(BIG as u64, || f.write_all_at(&buf, off))
            .map_err(ioe("write", path))?;
        off += BIG as u64;
    }
    if fsync {
        f.sync_all().map_err(ioe("fsync", path))?;
    }
    Ok(rec)
}

fn seq_read(path: &Path, t: usize, bytes: u64) -> Result<Rec, String> {
    let f = File::open(path).map_err(ioe("open", path))?;
    let mut buf = vec![0u8; BIG];
    let mut want = vec![0u8; BIG];
    let mut rec = Rec::new();
    let mut off = 0;
    while off < bytes {
        check_closing()?;
        rec.time(BIG as u64, || f.read_exact_at(&mut buf, off))
            .map_err(ioe("read", path))?;
        fill(&mut want, t, off);
        if buf != want {
            return Err(format!("{}: wrong data at offset {off}", path.display()));
        }
        off += BIG as u64;
    }
    Ok(rec)
}

fn rand_io(
    path: &Path,
    t: usize,
    bytes: u64,
    ops: u64,
    write: bool,
    sync: bool,
) -> Result<Rec, String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(ioe("open", path))?;
    sys::fadvise_random(&f);
    let blocks = (bytes / SMALL as u64).max(1);
    let mut rng = SmallRng::seed_from_u64(0x005c_0f75 + t as u64);
    let mut buf = vec![0u8; SMALL];
    let mut rec = Rec::new();
    for i in 0..ops {
        if i.is_multiple_of(64) {
            check_closing()?;
        }
        let off = rng.gen_range(0..blocks) * SMALL as u64;
        if write {
            fill(&mut buf, t, off);
            rec.time(SMALL as u64, || {
                f.write_all_at(&buf, off)?;
                if sync {
                    f.sync_data()?;
                }
                Ok::<(), std::io::Error>(())
            })
            .map_err(ioe("write", path))?;
        } else {
            rec.time(SMALL as u64, || f.read_exact_at(&mut buf, off))
                .map_err(ioe("read", path))?;
        }
    }
    Ok(rec)
}

pub fn run(ctx: &Ctx, target: &Target) -> Vec<Row> {
    let p = &ctx.profile;
    let threads = p.threads;
    let bytes = p.data_file_bytes.div_ceil(BIG as u64) * BIG as u64;
    let base = target.root.join("data");
    if let Err(e) = fs::create_dir_all(&base) {
        return vec![Row::skipped(
            NAME,
            "all",
            target.name(),
            target.ours(),
            &e.to_string(),
        )];
    }
    let path = |t: usize, name: &str| -> PathBuf { base.join(format!("{name}{t}")) };
    let params = format!("file={}MiB threads={threads}", bytes >> 20);
    let ph = |test: &str, by: bool| Phase {
        workload: NAME,
        test: test.to_string(),
        params: params.clone(),
        bytes: by,
    };
    let mut rows = Vec::new();
    let mut step = |test: &str, f: &(dyn Fn(usize) -> Result<Rec, String> + Sync)| {
        ctx.status(&format!("{NAME} {test} on {}", target.name()));
        let row = measure(target, ph(test, true), || par(threads, f));
        rows.push(row);
    };
    step("seq-write-1m", &|t| {
        seq_write(&path(t, "a"), t, bytes, false)
    });
    for t in 0..threads {
        let _ = fs::remove_file(path(t, "a"));
    }
    target.sync(ctx);
    step("seq-write-1m-fsync", &|t| {
        seq_write(&path(t, "b"), t, bytes, true)
    });
    target.sync(ctx);
    sys::drop_caches();
    step("seq-read-1m", &|t| seq_read(&path(t, "b"), t, bytes));
    sys::drop_caches();
    step("rand-read-4k", &|t| {
        rand_io(&path(t, "b"), t, bytes, p.rand_ops, false, false)
    });
    step("rand-write-4k", &|t| {
        rand_io(&path(t, "b"), t, bytes, p.rand_ops, true, false)
    });
    step("rand-write-4k-fdatasync", &|t| {
        rand_io(&path(t, "b"), t, bytes, p.fsync_ops, true, true)
    });
    let _ = fs::remove_dir_all(&base);
    target.sync(ctx);
    rows
}
