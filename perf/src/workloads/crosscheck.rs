//! `crosscheck`: is the harness itself measuring right? On ext4 it runs
//! the same work three ways, `repeats` times: the harness's own loop,
//! fio, and a plain shell command. Sequential 1 MiB writes with a final
//! fsync (harness, fio `--rw=write --end_fsync=1`, `dd conv=fsync`),
//! random 4 KiB buffered reads after dropping the cache (harness, fio
//! `--rw=randread`), and file creates (harness, a bash loop of `: > f$i`).
//! Rows with target `harness` count as "ours", so every ratio says how
//! far the harness is from the outside tool in the same repeat.
//!
//! Guarantees: each repeat starts from an empty directory and a dropped
//! page cache. Uses [`super`], [`super::data`]'s pattern and fio parsing.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::check_closing;
use crate::stats::{Rec, Row};
use crate::sys;
use crate::targets::Target;
use crate::Ctx;

pub const NAME: &str = "crosscheck";
const BIG: usize = 1 << 20;

fn timed_cmd(cmd: &str, args: &[&str]) -> Result<f64, String> {
    let t = Instant::now();
    sys::run(cmd, args)?;
    Ok(t.elapsed().as_secs_f64())
}

fn whole(ops: u64, bytes: u64, secs: f64) -> Row {
    let secs = secs.max(1e-9);
    Row {
        ops,
        bytes,
        secs,
        ops_per_sec: ops as f64 / secs,
        mib_per_sec: (bytes > 0).then(|| bytes as f64 / secs / (1024.0 * 1024.0)),
        ..Row::default()
    }
}

fn harness_seq_write(path: &Path, bytes: u64) -> Result<Row, String> {
    let t = Instant::now();
    let f = fs::File::create(path).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; BIG];
    let mut rec = Rec::new();
    let mut off = 0;
    while off < bytes {
        check_closing()?;
        rec.time(BIG as u64, || f.write_all_at(&buf, off))
            .map_err(|e| e.to_string())?;
        off += BIG as u64;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(rec.row(t.elapsed().as_secs_f64(), true))
}

fn harness_rand_read(path: &Path, bytes: u64, ops: u64) -> Result<Row, String> {
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    sys::fadvise_random(&f);
    let blocks = bytes / 4096;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut buf = vec![0u8; 4096];
    let mut rec = Rec::new();
    let t = Instant::now();
    for i in 0..ops {
        if i.is_multiple_of(64) {
            check_closing()?;
        }
        let off = rng.gen_range(0..blocks) * 4096;
        rec.time(4096, || f.read_exact_at(&mut buf, off))
            .map_err(|e| e.to_string())?;
    }
    Ok(rec.row(t.elapsed().as_secs_f64(), true))
}

fn harness_creates(dir: &Path, n: u64) -> Result<Row, String> {
    let mut rec = Rec::new();
    let t = Instant::now();
    for i in 0..n {
        if i.is_multiple_of(256) {
            check_closing()?;
        }
        let p = dir.join(format!("f{i}"));
        rec.time(0, || fs::File::create(&p).map(drop))
            .map_err(|e| e.to_string())?;
    }
    Ok(rec.row(t.elapsed().as_secs_f64(), false))
}

fn fio_json(path: &Path, rw: &str, bs: &str, bytes: u64, extra: &[&str]) -> Result<Row, String> {
    let mut args = vec![
        "--name=xc".to_string(),
        format!("--filename={}", path.display()),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--size={bytes}"),
        "--ioengine=psync".into(),
        "--output-format=json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = sys::run("fio", &argv)?;
    let secs = t.elapsed().as_secs_f64();
    let start = out.find('{').ok_or("fio printed no JSON")?;
    let v: serde_json::Value =
        serde_json::from_str(&out[start..]).map_err(|e| format!("fio JSON: {e}"))?;
    let side = if rw.contains("write") {
        &v["jobs"][0]["write"]
    } else {
        &v["jobs"][0]["read"]
    };
    let ops = side["total_ios"].as_u64().unwrap_or(0);
    let io_bytes = side["io_bytes"].as_u64().unwrap_or(0);
    let mut row = whole(
        ops,
        io_bytes,
        side["runtime"].as_f64().unwrap_or(0.0) / 1000.0,
    );
    row.note = Some(format!("fio's own runtime; whole command {secs:.2} s"));
    Ok(row)
}

pub fn run(ctx: &Ctx, target: &Target) -> Vec<Row> {
    let p = &ctx.profile;
    let bytes = p.crosscheck_bytes.div_ceil(BIG as u64) * BIG as u64;
    let base = target.root.join("crosscheck");
    let mut rows = Vec::new();
    let mut push = |test: &str, who: &str, run: usize, res: Result<Row, String>| {
        let mut row = res.unwrap_or_else(|e| Row {
            skipped: Some(e),
            ..Row::default()
        });
        row.workload = NAME.into();
        row.test = test.into();
        row.target = who.into();
        row.ours = who == "harness";
        row.params = format!("{} run {run}", target.name());
        rows.push(row);
    };
    for run in 1..=p.repeats {
        let _ = fs::remove_dir_all(&base);
        if let Err(e) = fs::create_dir_all(&base) {
            push("all", "harness", run, Err(e.to_string()));
            break;
        }
        let f = base.join("seq");
        let fs_ = f.to_string_lossy().into_owned();
        // Each repeat starts with a different tool, so whichever runs
        // first on a freshly emptied filesystem is not always the same.
        ctx.status(&format!("{NAME} run {run}: sequential writes"));
        for k in 0..3 {
            let _ = fs::remove_file(&f);
            target.sync(ctx);
            sys::drop_caches();
            match (k + run) % 3 {
                0 => push(
                    "seq-write-1m-fsync",
                    "harness",
                    run,
                    harness_seq_write(&f, bytes),
                ),
                1 => push(
                    "seq-write-1m-fsync",
                    "fio",
                    run,
                    fio_json(&f, "write", "1M", bytes, &["--end_fsync=1"]),
                ),
                _ => {
                    let count = format!("count={}", bytes / BIG as u64);
                    let dd = timed_cmd(
                        "dd",
                        &[
                            "if=/dev/zero",
                            &format!("of={fs_}"),
                            "bs=1M",
                            &count,
                            "conv=fsync",
                            "status=none",
                        ],
                    )
                    .map(|s| whole(bytes / BIG as u64, bytes, s));
                    push("seq-write-1m-fsync", "dd", run, dd);
                }
            }
        }

        ctx.status(&format!("{NAME} run {run}: random reads"));
        target.sync(ctx);
        let n = format!("--number_ios={}", p.rand_ops);
        for k in 0..2 {
            sys::drop_caches();
            if (k + run) % 2 == 0 {
                push(
                    "rand-read-4k",
                    "harness",
                    run,
                    harness_rand_read(&f, bytes, p.rand_ops),
                );
            } else {
                push(
                    "rand-read-4k",
                    "fio",
                    run,
                    fio_json(&f, "randread", "4k", bytes, &[&n, "--randrepeat=0"]),
                );
            }
        }
        let _ = fs::remove_file(&f);

        ctx.status(&format!("{NAME} run {run}: creates"));
        let n = p.crosscheck_files;
        let d1 = base.join("c1");
        let d2 = base.join("c2");
        let _ = fs::create_dir_all(&d1);
        let _ = fs::create_dir_all(&d2);
        target.sync(ctx);
        let harness = || harness_creates(&d1, n);
        let shell = || {
            let script = format!(
                "cd '{}' && for ((i = 0; i < {n}; i++)); do : > f$i; done",
                d2.display()
            );
            let sh = timed_cmd("bash", &["-c", &script]);
            // The same loop redirecting to /dev/null: what bash itself
            // costs per iteration, taken off to compare the filesystem's part.
            let null = format!("for ((i = 0; i < {n}; i++)); do : > /dev/null; done");
            let net = sh
                .clone()
                .and_then(|s| Ok((s, timed_cmd("bash", &["-c", &null])?)))
                .and_then(|(s, o)| {
                    if s > o {
                        let mut r = whole(n, 0, s - o);
                        r.note = Some(format!(
                            "bash loop {s:.3} s minus the same loop on /dev/null {o:.3} s"
                        ));
                        Ok(r)
                    } else {
                        Err("the /dev/null loop took longer than the creates".to_string())
                    }
                });
            (sh.map(|s| whole(n, 0, s)), net)
        };
        let (h, (sh, net)) = if run % 2 == 1 {
            let h = harness();
            target.sync(ctx);
            (h, shell())
        } else {
            let s = shell();
            target.sync(ctx);
            (harness(), s)
        };
        push("create", "harness", run, h);
        push("create", "bash-loop", run, sh);
        push("create", "bash-loop-net", run, net);
        let _ = fs::remove_dir_all(&base);
        target.sync(ctx);
    }
    rows
}
