//! `scoutfsd`: serves one scoutfs volume as a FUSE mount.
//!
//! ```text
//! scoutfsd --metadev PATH --datadev PATH --mountpoint DIR [-o OPTS] [-f]
//! ```
//!
//! Called as `mount.scoutfs`, `mount.fuse.scoutfs` (what mount(8) runs
//! for a remount) or `umount.fuse.scoutfs` (symlinks to this binary) it is
//! the mount helper of [`fuse_frontend::helpers`].
//!
//! Without `-f` the daemon forks: the parent returns once the filesystem
//! is mounted (exit 0) or the child failed (its message on stderr, its
//! exit status); the child serves in its own session with its standard
//! streams on /dev/null. With `-f` it serves in the foreground. Either way
//! it stops when the mount is unmounted or on SIGTERM/SIGINT/SIGHUP, after
//! a final commit and the farewell. Usage errors exit with 64, failures
//! with 1.

use std::path::PathBuf;
use std::process::ExitCode;

use fuse_frontend::launch::{spawn_daemon, Launched};
use fuse_frontend::{serve, Config};

const EX_USAGE: u8 = 64;
const PROG: &str = "scoutfsd";

const HELP: &str = "Usage: scoutfsd --metadev PATH --datadev PATH --mountpoint DIR [-o OPTS] [-f]
Serve a scoutfs volume as a FUSE mount: with quorum_slot_nr (or when the
volume's quorum blocks name a running server) as a node of its cluster,
else alone with the server in-process.

  -m, --metadev PATH     metadata device or image file
  -d, --datadev PATH     data device or image file
  -p, --mountpoint DIR   directory to mount on
  -o, --options OPTS     scoutfs mount options (quorum_slot_nr=N,...)
  -f, --foreground       stay in the foreground
  -h, --help             give this help list
";

struct Args {
    metadev: PathBuf,
    datadev: PathBuf,
    mountpoint: PathBuf,
    foreground: bool,
    options: Option<String>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("{PROG}: {msg}");
    eprintln!("Try `{PROG} --help' for more information.");
    ExitCode::from(EX_USAGE)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut meta, mut data, mut dir, mut fg) = (None, None, None, false);
    let mut options = None;
    while let Some(a) = argv.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("option '{name}' requires an argument"))
        };
        match flag.as_str() {
            "-m" | "--metadev" => meta = Some(PathBuf::from(value(&flag)?)),
            "-d" | "--datadev" => data = Some(PathBuf::from(value(&flag)?)),
            "-p" | "--mountpoint" => dir = Some(PathBuf::from(value(&flag)?)),
            "-o" | "--options" => options = Some(value(&flag)?),
            "-f" | "--foreground" => fg = true,
            "-h" | "--help" => return Ok(None),
            _ => return Err(format!("unrecognized argument '{a}'")),
        }
    }
    Ok(Some(Args {
        metadev: meta.ok_or("must provide --metadev")?,
        datadev: data.ok_or("must provide --datadev")?,
        mountpoint: dir.ok_or("must provide --mountpoint")?,
        foreground: fg,
        options,
    }))
}

fn run(config: Config) -> ExitCode {
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

/// Forks; the parent returns once the child has mounted.
fn background(config: Config) -> ExitCode {
    match spawn_daemon(config, PROG, || {}) {
        Launched::Mounted(_) => ExitCode::SUCCESS,
        Launched::Failed(code) => ExitCode::from(code.clamp(1, 255) as u8),
    }
}

fn main() -> ExitCode {
    // Installed as /sbin/mount.scoutfs and /sbin/umount.fuse.scoutfs
    // (symlinks to this binary), it is mount(8)'s and umount(8)'s helper.
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(1).collect();
    if name == "mount.scoutfs" {
        return code(fuse_frontend::helpers::mount_main(&rest));
    }
    if name == "mount.fuse.scoutfs" {
        return code(fuse_frontend::helpers::mount_fuse_main(&rest));
    }
    if name.starts_with("umount.") {
        return code(fuse_frontend::helpers::umount_main(&rest));
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => return usage(&msg),
    };
    let mut config = Config::new(args.metadev.clone(), args.datadev, args.mountpoint);
    if let Some(o) = &args.options {
        let all = format!("metadev_path={},{o}", args.metadev.display());
        match fuse_frontend::options::ScoutfsOptions::parse(&all) {
            Ok(opts) => config.options = opts,
            Err(msg) => return usage(&msg),
        }
    }
    if args.foreground {
        let dir = config.mountpoint.clone();
        let data = config.datadev.clone();
        config.on_ready = Some(Box::new(move || {
            eprintln!("{PROG}: {} mounted on {}", data.display(), dir.display());
            true
        }));
        run(config)
    } else {
        background(config)
    }
}
