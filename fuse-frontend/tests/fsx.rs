//! Data integrity through a real mount: fsx (the `fsx` crate, fsx-rs,
//! TESTING.md §2) on files of a fresh `scoutfsd` mount, three seeds, each
//! once with ordinary opens and once with O_DIRECT opens, and one seed
//! with mmap reads and writes among the operations, then `check` clean
//! after unmounting.
//!
//! fsx keeps a model of the file in memory and checks every read (and the
//! size after every operation) against it: any miscompare fails the run.
//! The operations are pread/pwrite, ftruncate, close/reopen, fsync,
//! fdatasync, posix_fallocate, sendfile, posix_fadvise and
//! copy_file_range; the mmap run adds mapread, mapwrite (MAP_SHARED, of
//! our FOPEN_DIRECT_IO files: FUSE_DIRECT_IO_ALLOW_MMAP, docs/fuse.md) and
//! invalidate (msync MS_INVALIDATE). Hole punching is off: the mount
//! answers EOPNOTSUPP for fallocate modes other than 0 and KEEP_SIZE.
//!
//! fsx-rs has no O_DIRECT option, so the direct runs put a small
//! LD_PRELOAD shim (built here with `cc`) in front of it that adds
//! O_DIRECT to the opens of the file under test, and records that it did.
//!
//! Operations per run: `SCOUTFS_FSX_OPS` (default 20,000; `scripts/test.sh
//! --long` runs 100,000). The binary is `$SCOUTFS_FSX`, `fsx` in PATH or
//! `$CARGO_HOME/bin/fsx`; without it, `cc`, root or /dev/fuse the test
//! prints why and passes.
// These tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{env_u64, fast_dir, find_tool, skip_without_fuse, Daemon, Volume};

/// Seeds of the runs (each run uses its own file).
const SEEDS: [u64; 3] = [1, 20250101, 4242424242];
/// Operations per run unless `SCOUTFS_FSX_OPS` says otherwise.
const OPS_DEFAULT: u64 = 20_000;
/// Device sizes: small, because the images live on tmpfs (in memory) and
/// end up using all of their size; the six files hold at most 12 MiB, so
/// the allocators must reuse what commits free.
const META_BYTES: u64 = 1 << 30;
const DATA_BYTES: u64 = 1 << 30;

/// The seed of the run with mmap operations.
const MMAP_SEED: u64 = 777;

/// fsx.toml of the six runs: everything the mount supports but mmap
/// (the seventh run's, [`mmap_config`]). The file grows to 2 MiB so that
/// writes and truncates cross the engine's 1 MiB per-hold write step.
const CONFIG: &str = r#"flen = 2097152
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 0
mapwrite = 0
invalidate = 0
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
"#;

/// [`CONFIG`] with mmap reads, mmap writes and msync(MS_INVALIDATE) on.
fn mmap_config() -> String {
    CONFIG
        .replace("mapread = 0", "mapread = 5")
        .replace("mapwrite = 0", "mapwrite = 5")
        .replace("invalidate = 0", "invalidate = 1")
}

/// Adds O_DIRECT to every open of `$FSX_DIRECT_PATH` and appends a line to
/// `$FSX_DIRECT_MARK` each time, so the test can tell it took effect.
const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static int direct(const char *path, int flags) {
    const char *want = getenv("FSX_DIRECT_PATH");
    if (!want || !path || strcmp(path, want) != 0)
        return flags;
    const char *mark = getenv("FSX_DIRECT_MARK");
    if (mark) {
        open_fn real = (open_fn)dlsym(RTLD_NEXT, "open64");
        int fd = real(mark, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            (void)!write(fd, "O_DIRECT\n", 9);
            close(fd);
        }
    }
    return flags | O_DIRECT;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN(name)                                                   \
    int name(const char *path, int flags, ...) {                     \
        va_list ap;                                                  \
        va_start(ap, flags);                                         \
        mode_t mode = mode_arg(flags, ap);                           \
        va_end(ap);                                                  \
        open_fn real = (open_fn)dlsym(RTLD_NEXT, #name);             \
        return real(path, direct(path, flags), mode);                \
    }
#define OPENAT(name)                                                 \
    int name(int dirfd, const char *path, int flags, ...) {          \
        va_list ap;                                                  \
        va_start(ap, flags);                                         \
        mode_t mode = mode_arg(flags, ap);                           \
        va_end(ap);                                                  \
        openat_fn real = (openat_fn)dlsym(RTLD_NEXT, #name);         \
        return real(dirfd, path, direct(path, flags), mode);         \
    }
OPEN(open)
OPEN(open64)
OPENAT(openat)
OPENAT(openat64)
"#;

/// Builds the O_DIRECT shim in `dir`, or says why it cannot.
fn build_shim(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("odirect.c");
    let lib = dir.join("odirect.so");
    std::fs::write(&src, SHIM_C).map_err(|e| format!("writing the shim: {e}"))?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(lib)
}

/// One fsx run; panics with fsx's output on any failure.
fn run_fsx(
    fsx: &Path,
    conf: &Path,
    artifacts: &Path,
    file: &Path,
    seed: u64,
    ops: u64,
    shim: Option<(&Path, &Path)>,
) {
    let mut cmd = Command::new(fsx);
    cmd.arg("-f")
        .arg(conf)
        .arg("-N")
        .arg(ops.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-P")
        .arg(artifacts)
        .arg(file);
    if let Some((lib, mark)) = shim {
        cmd.env("LD_PRELOAD", lib)
            .env("FSX_DIRECT_PATH", file)
            .env("FSX_DIRECT_MARK", mark);
    }
    let start = std::time::Instant::now();
    let out = cmd.output().expect("run fsx");
    let mode = if shim.is_some() {
        "O_DIRECT"
    } else if file.extension().is_some_and(|e| e == "mmap") {
        "with mmap"
    } else {
        "buffered"
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fsx seed {seed} ({mode}, {ops} ops) failed with {}:\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "fsx seed {seed} ({mode}): {ops} ops passed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if let Some((_, mark)) = shim {
        let marks = std::fs::read_to_string(mark).unwrap_or_default();
        assert!(
            marks.lines().count() >= 1,
            "the O_DIRECT shim never saw fsx open {}",
            file.display()
        );
    }
}

#[test]
fn fsx_seeds_buffered_direct_and_mmap() {
    if skip_without_fuse("fsx_seeds_buffered_direct_and_mmap") {
        return;
    }
    let Some(fsx) = find_tool("fsx", "SCOUTFS_FSX") else {
        eprintln!(
            "SKIPPED fsx_seeds_buffered_direct_and_mmap: no fsx binary \
             (cargo install fsx, or set SCOUTFS_FSX)"
        );
        return;
    };
    let ops = env_u64("SCOUTFS_FSX_OPS", OPS_DEFAULT);
    let work = tempfile::tempdir().expect("tempdir");
    let shim = match build_shim(work.path()) {
        Ok(lib) => lib,
        Err(why) => {
            eprintln!("SKIPPED fsx_seeds_buffered_direct_and_mmap: {why}");
            return;
        }
    };
    let conf = work.path().join("fsx.toml");
    std::fs::write(&conf, CONFIG).expect("fsx.toml");
    let mmap_conf = work.path().join("fsx-mmap.toml");
    std::fs::write(&mmap_conf, mmap_config()).expect("fsx-mmap.toml");

    let v = Volume::new_sized(&fast_dir(), META_BYTES, DATA_BYTES);
    let d = Daemon::start(&v);
    // The seven runs go side by side (each on its own file): the mount
    // serves concurrent requests, and CI has two cores to fill.
    std::thread::scope(|s| {
        let mut runs = Vec::new();
        let (fsx_bin, mmap_conf) = (&fsx, &mmap_conf);
        let artifacts = work.path().join("mmap");
        std::fs::create_dir(&artifacts).expect("artifacts dir");
        let file = v.mnt.join(format!("fsx.{MMAP_SEED}.mmap"));
        runs.push(s.spawn(move || {
            run_fsx(fsx_bin, mmap_conf, &artifacts, &file, MMAP_SEED, ops, None);
        }));
        for seed in SEEDS {
            for direct in [false, true] {
                let tag = if direct { "direct" } else { "buffered" };
                let file = v.mnt.join(format!("fsx.{seed}.{tag}"));
                let artifacts = work.path().join(format!("{seed}.{tag}"));
                std::fs::create_dir(&artifacts).expect("artifacts dir");
                let mark = work.path().join(format!("{seed}.{tag}.mark"));
                let (fsx, conf, shim) = (&fsx, &conf, &shim);
                runs.push(s.spawn(move || {
                    let shim = direct.then_some((shim.as_path(), mark.as_path()));
                    run_fsx(fsx, conf, &artifacts, &file, seed, ops, shim);
                }));
            }
        }
        let failed: Vec<String> = runs
            .into_iter()
            .filter_map(|r| r.join().err())
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "fsx run panicked".into())
            })
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    });
    d.unmount();
    v.assert_clean("after fsx");
}
