//! How the commands that talk to a mount find it: the path (`-p`, a
//! positional operand, `$SCOUTFS_MOUNT_PATH`, then the current directory,
//! in the intended order of reference §10) is opened read-only like the
//! original's `get_path`, and its st_dev names the mount's control socket
//! through `/run/scoutfs/by-dev/<maj>:<min>` (docs/control-socket.md).
//!
//! A path outside any scoutfs mount gets ENOTTY, what the original's
//! ioctl answers there.

use std::fs::File;
use std::io;

pub use fuse_frontend::control::client::Client;

/// Where `$SCOUTFS_MOUNT_PATH` names the mount.
pub const ENV_PATH: &str = "SCOUTFS_MOUNT_PATH";

/// The errno of an io::Error.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens `path` read-only; prints the original's message when it fails.
pub fn open(path: &str) -> Result<File, i32> {
    File::open(path).map_err(|e| {
        let n = errno(&e);
        eprintln!("failed to open '{path}': {} ({n})", crate::strerror(n));
        n
    })
}

/// The path a command works on: the given one, `$SCOUTFS_MOUNT_PATH`,
/// else the current directory.
pub fn choose_path(given: Option<&str>) -> Result<String, i32> {
    if let Some(p) = given {
        return Ok(p.to_string());
    }
    if let Some(p) = std::env::var_os(ENV_PATH).filter(|p| !p.is_empty()) {
        return Ok(p.to_string_lossy().into_owned());
    }
    std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| errno(&e))
}

/// Opens the chosen path and finds its mount: Err(errno) after the open
/// message; Ok(Err(errno)) when the file is not on a scoutfs mount.
pub fn client_for(given: Option<&str>) -> Result<Result<Client, i32>, i32> {
    let path = choose_path(given)?;
    let f = open(&path)?;
    Ok(Client::for_file(&f).map_err(|e| errno(&e)))
}

/// The `-p/--path` option of the commands that talk to a mount.
pub const PATH_OPT: crate::args::OptSpec = crate::args::OptSpec {
    short: 'p',
    long: "path",
    takes_arg: true,
    help: "Path to ScoutFS filesystem",
};

/// The last `-p` given.
pub fn path_opt(p: &crate::args::Parsed) -> Option<String> {
    p.opts
        .iter()
        .rev()
        .find(|(c, _)| *c == 'p')
        .and_then(|(_, v)| v.clone())
}
