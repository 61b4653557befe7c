//! `scoutfs-perf`: measures scoutfs against ext4, xfs, tmpfs and a FUSE
//! passthrough (bindfs) in one run, prepared and torn down by the harness
//! on one disk, and reports ratios, latency percentiles, CPU and RSS as a
//! table, a JSON file and SVG charts (docs/performance.md).
//!
//! ```text
//! scoutfs-perf [--quick] [--out FILE] [--workloads LIST] [--targets LIST] ...
//! scoutfs-perf compare A.json B.json
//! scoutfs-perf setup | cleanup
//! ```
//!
//! The binary carries scoutfs itself: called as `mount.scoutfs` it is the
//! mount helper (daemon included), as `scoutfs` the utility, so one file
//! is all a user copies to another machine. `--scoutfs-bin DIR` measures
//! installed `scoutfsd`/`scoutfs` binaries instead.
// A harness measures wall time and runs worker threads: the engine's
// bans on real clocks, sleeping and unscheduled threads (clippy.toml,
// deterministic replay) are about engine code and do not apply here.
#![allow(clippy::disallowed_methods)]

mod cleanup;
mod machine;
mod profile;
mod report;
mod stats;
mod sys;
mod targets;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use cleanup::Res;
use profile::Profile;
use stats::Row;
use targets::{Kind, Target};

/// What every workload needs from the run.
pub struct Ctx {
    pub workdir: PathBuf,
    /// The `scoutfs` utility (mkfs, sync, walk-inodes).
    pub scoutfs: PathBuf,
    /// A file named `mount.scoutfs` that mounts a volume.
    pub mount_helper: PathBuf,
    pub profile: Profile,
    bar: ProgressBar,
}

impl Ctx {
    /// Shows what runs now under the progress bar.
    /// Without a terminal (CI logs) each step is a line instead.
    pub fn status(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("[{:>4} s] {msg}", self.bar.elapsed().as_secs());
        }
        self.bar.set_message(msg.to_string());
    }
}

#[derive(Parser)]
#[command(
    name = "scoutfs-perf",
    version,
    about = "Measure scoutfs against ext4, xfs, tmpfs and a FUSE passthrough in one run",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the workloads (the default).
    Run(RunArgs),
    /// Show the change between two runs' JSON reports.
    Compare { a: PathBuf, b: PathBuf },
    /// Print a JSON report again: as the terminal table, or as Markdown.
    Show {
        report: PathBuf,
        #[arg(long)]
        markdown: bool,
        /// Also (re)write the SVG charts into this directory.
        #[arg(long)]
        charts: Option<PathBuf>,
    },
    /// Install the Debian packages the baselines need.
    Setup,
    /// Remove what a killed run (SIGKILL) left behind: mounts, loop devices.
    Cleanup {
        /// Where the runs' work directories are.
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The quick profile: small sizes, under 3 minutes (CI smoke test).
    #[arg(long)]
    quick: bool,
    /// JSON report path [default: scoutfs-perf-PROFILE.json].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory for the SVG charts [default: the report's name without .json, plus -charts].
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Where images, loop files and mount points go (a directory on the
    /// disk to measure) [default: the temp dir].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Workloads to run, comma separated: meta,data,index,cluster,driver,crosscheck.
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Filesystems, comma separated: scoutfs,ext4,xfs,tmpfs,bindfs.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Worker threads of meta, data, index.
    #[arg(long)]
    threads: Option<usize>,
    /// Mounts of the cluster workload.
    #[arg(long)]
    mounts: Option<usize>,
    /// Files of meta and index.
    #[arg(long)]
    files: Option<u64>,
    /// Files index changes.
    #[arg(long)]
    changed: Option<u64>,
    /// MiB of each data file.
    #[arg(long)]
    size_mib: Option<u64>,
    /// Repeats of the crosscheck workload.
    #[arg(long)]
    repeats: Option<usize>,
    /// Use DIR/scoutfsd and DIR/scoutfs instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    scoutfs_bin: Option<PathBuf>,
    /// Do not install missing packages.
    #[arg(long)]
    no_setup: bool,
}

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let code = |c: i32| ExitCode::from(c.clamp(0, 255) as u8);
    if name == "mount.scoutfs" {
        return code(fuse_frontend::helpers::mount_main(&rest));
    }
    if name.starts_with("umount.") {
        return code(fuse_frontend::helpers::umount_main(&rest));
    }
    if name == "scoutfs" {
        return code(scoutfs_cli::run(&rest));
    }
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Compare { a, b }) => compare(&a, &b),
        Some(Cmd::Show {
            report,
            markdown,
            charts,
        }) => match load(&report) {
            Ok(r) if charts.is_some() => {
                let dir = charts.unwrap_or_default();
                match report::write_svgs(&dir, &r.rows) {
                    Ok(files) => {
                        if markdown {
                            print!("{}", report::markdown(&r));
                        }
                        eprintln!("charts: {} ({} files)", dir.display(), files.len());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&format!("{}: {e}", dir.display())),
                }
            }
            Ok(r) if markdown => {
                print!("{}", report::markdown(&r));
                ExitCode::SUCCESS
            }
            Ok(r) => {
                println!("{}", report::table(&r.rows, &r.ratios));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Some(Cmd::Setup) => match setup(true) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Some(Cmd::Cleanup { workdir }) => {
            leftovers(&workdir.unwrap_or_else(std::env::temp_dir));
            ExitCode::SUCCESS
        }
        Some(Cmd::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("scoutfs-perf: {msg}");
    ExitCode::FAILURE
}

fn load(p: &Path) -> Result<report::Report, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a scoutfs-perf report: {e}", p.display()))
}

fn compare(a: &Path, b: &Path) -> ExitCode {
    match (load(a), load(b)) {
        (Ok(ra), Ok(rb)) => {
            print!("{}", report::compare(&ra, &rb));
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => fail(&e),
    }
}

/// Tools the baselines need, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("fio", "fio"),
    ("bindfs", "bindfs"),
    ("losetup", "util-linux"),
    ("fusermount3", "fuse3"),
];

/// Installs missing packages with apt-get (when `install`), then says
/// which tools are still missing.
fn setup(install: bool) -> Result<(), String> {
    let missing = || -> Vec<(&str, &str)> {
        TOOLS
            .iter()
            .copied()
            .filter(|(t, _)| !sys::have(t))
            .collect()
    };
    let need = missing();
    if need.is_empty() {
        return Ok(());
    }
    if install && sys::have("apt-get") {
        let pkgs: Vec<&str> = need.iter().map(|(_, p)| *p).collect();
        eprintln!("scoutfs-perf: installing {}", pkgs.join(" "));
        let lock = ["-o", "DPkg::Lock::Timeout=600"];
        let _ = sys::run("apt-get", &[&lock[..], &["update", "-q"]].concat());
        sys::run(
            "apt-get",
            &[&lock[..], &["install", "-y", "-q"], &pkgs[..]].concat(),
        )?;
    }
    let still = missing();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing tools: {} (Debian packages: {})",
            still.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", "),
            still.iter().map(|(_, p)| *p).collect::<Vec<_>>().join(" ")
        ))
    }
}

/// Unmounts and detaches what runs killed with SIGKILL left under `base`.
fn leftovers(base: &Path) {
    let tag = base.join("scoutfs-perf-");
    let tag = tag.to_string_lossy();
    let mut mounts: Vec<PathBuf> = sys::mount_points()
        .into_iter()
        .filter(|m| m.to_string_lossy().starts_with(&*tag))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        println!("unmounting {}", m.display());
        sys::unmount(&m);
    }
    for dev in sys::loops_with(&tag) {
        println!("detaching {dev}");
        sys::loop_detach(&dev);
    }
}

fn links(workdir: &Path, bin: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    let dir = workdir.join("bin");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (daemon, util) = match bin {
        Some(b) => (b.join("scoutfsd"), b.join("scoutfs")),
        None => {
            let me = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
            (me.clone(), me)
        }
    };
    for p in [&daemon, &util] {
        if !p.is_file() {
            return Err(format!("{} not found", p.display()));
        }
    }
    let helper = dir.join("mount.scoutfs");
    let scoutfs = dir.join("scoutfs");
    std::os::unix::fs::symlink(&daemon, &helper).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&util, &scoutfs).map_err(|e| e.to_string())?;
    Ok((scoutfs, helper))
}

fn run(args: RunArgs) -> ExitCode {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return fail("needs root: loop devices, mounts and FUSE need CAP_SYS_ADMIN");
    }
    let mut profile = if args.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    if let Some(t) = args.threads {
        profile.threads = t.max(1);
    }
    if let Some(m) = args.mounts {
        profile.mounts = m.clamp(1, 15);
    }
    if let Some(f) = args.files {
        profile.meta_files = f.max(1);
        profile.index_files = f.max(1);
    }
    if let Some(k) = args.changed {
        profile.index_changed = k.max(1);
    }
    if let Some(s) = args.size_mib {
        profile.data_file_bytes = s.max(1) << 20;
    }
    if let Some(r) = args.repeats {
        profile.repeats = r.max(1);
    }
    let workloads: Vec<String> = match &args.workloads {
        Some(w) => w.clone(),
        None => workloads::ALL.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = workloads
        .iter()
        .find(|w| !workloads::ALL.contains(&w.as_str()))
    {
        return fail(&format!(
            "unknown workload '{bad}' (known: {})",
            workloads::ALL.join(",")
        ));
    }
    let kinds: Vec<Kind> = match &args.targets {
        Some(t) => {
            let mut v = Vec::new();
            for name in t {
                match Kind::parse(name) {
                    Some(k) => v.push(k),
                    None => {
                        return fail(&format!(
                            "unknown target '{name}' (known: scoutfs,ext4,xfs,tmpfs,bindfs)"
                        ))
                    }
                }
            }
            v
        }
        None => Kind::all(),
    };
    if !args.no_setup {
        if let Err(e) = setup(true) {
            eprintln!("scoutfs-perf: {e}: targets needing them are skipped");
        }
    }

    cleanup::install();
    let base = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let workdir = base.join(format!("scoutfs-perf-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        return fail(&format!("{}: {e}", workdir.display()));
    }
    let workdir = workdir.canonicalize().unwrap_or(workdir);
    cleanup::set_tag(&workdir);
    cleanup::push(Res::Dir(workdir.clone()));
    let (scoutfs, mount_helper) = match links(&workdir, args.scoutfs_bin.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            cleanup::undo_all();
            return fail(&e);
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("scoutfs-perf-{}.json", profile.name)));
    let charts = args.charts.clone().unwrap_or_else(|| {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.with_file_name(format!("{stem}-charts"))
    });

    let per_target = ["meta", "data", "index", "cluster"];
    let steps = workloads
        .iter()
        .map(|w| match w.as_str() {
            w if per_target.contains(&w) => kinds.len() as u64,
            _ => 1,
        })
        .sum::<u64>()
        + kinds.len() as u64;
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let ctx = Ctx {
        workdir: workdir.clone(),
        scoutfs,
        mount_helper,
        profile,
        bar,
    };
    let machine = machine::describe(&workdir);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t0 = Instant::now();

    // Targets, in an order where bindfs finds ext4 to pass through to.
    let mut ready: Vec<Target> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut order = kinds.clone();
    order.sort_by_key(|k| *k == Kind::Bindfs);
    for k in order {
        ctx.status(&format!("setting up {}", k.name()));
        let lower = ready
            .iter()
            .find(|t| t.kind == Kind::Ext4)
            .map(|t| t.root.clone());
        match targets::setup(&ctx, k, lower.as_deref()) {
            Ok(t) => ready.push(t),
            Err(e) => {
                ctx.bar
                    .suspend(|| eprintln!("scoutfs-perf: {}: {e}", k.name()));
                for w in &workloads {
                    rows.push(Row::skipped(
                        w,
                        "all",
                        k.name(),
                        k == Kind::Scoutfs,
                        &format!("setup failed: {e}"),
                    ));
                }
            }
        }
        ctx.bar.inc(1);
    }
    // The cleanup test's hook: a panic with every filesystem up.
    if std::env::var_os("SCOUTFS_PERF_PANIC_AFTER_SETUP").is_some() {
        panic!("SCOUTFS_PERF_PANIC_AFTER_SETUP is set");
    }
    // Run order follows --targets (scoutfs first by default).
    ready.sort_by_key(|t| kinds.iter().position(|k| *k == t.kind));

    for w in &workloads {
        match w.as_str() {
            "driver" => {
                rows.extend(workloads::driver::run(&ctx));
                ctx.bar.inc(1);
            }
            "crosscheck" => {
                if let Some(t) = ready.iter().find(|t| t.kind == Kind::Ext4) {
                    rows.extend(workloads::crosscheck::run(&ctx, t));
                } else {
                    rows.push(Row::skipped(
                        w,
                        "all",
                        "ext4",
                        false,
                        "needs the ext4 target",
                    ));
                }
                ctx.bar.inc(1);
            }
            _ => {
                for t in &ready {
                    let r = match w.as_str() {
                        "meta" => workloads::meta::run(&ctx, t),
                        "data" => workloads::data::run(&ctx, t),
                        "index" => workloads::index::run(&ctx, t),
                        _ => workloads::cluster::run(&ctx, t),
                    };
                    rows.extend(r);
                    ctx.bar.inc(1);
                }
            }
        }
        if cleanup::closing() {
            break;
        }
    }
    if cleanup::closing() {
        // Interrupted: the signal thread tears down and exits; a report of
        // aborted phases is worth nothing.
        cleanup::main_idle();
    }
    ctx.status("tearing down");
    while let Some(t) = ready.pop() {
        t.teardown();
    }
    ctx.bar.finish_and_clear();

    let ratios = report::ratios(&rows);
    let rep = report::Report {
        harness_version: env!("CARGO_PKG_VERSION").into(),
        profile: ctx.profile.name.clone(),
        profile_settings: serde_json::to_value(&ctx.profile).unwrap_or_default(),
        machine,
        started_unix: started,
        wall_secs: t0.elapsed().as_secs_f64(),
        rows,
        ratios,
    };
    println!("{}", report::table(&rep.rows, &rep.ratios));
    let mut ok = true;
    match serde_json::to_string_pretty(&rep) {
        Ok(json) => match std::fs::write(&out, json) {
            Ok(()) => println!("report: {}", out.display()),
            Err(e) => {
                eprintln!("scoutfs-perf: {}: {e}", out.display());
                ok = false;
            }
        },
        Err(e) => {
            eprintln!("scoutfs-perf: JSON: {e}");
            ok = false;
        }
    }
    match report::write_svgs(&charts, &rep.rows) {
        Ok(files) => println!("charts: {} ({} files)", charts.display(), files.len()),
        Err(e) => {
            eprintln!("scoutfs-perf: {}: {e}", charts.display());
            ok = false;
        }
    }
    println!("wall time: {:.0} s", rep.wall_secs);
    cleanup::undo_all();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
