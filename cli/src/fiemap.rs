//! `scoutfs get-fiemap [-L|-P] [-b] FILE`: the file's extents, one line
//! each, `N: offset: <logical> <physical> length: <len> flags: OUL` (only
//! the logical offset with `-L`, only the physical with `-P`), then
//! `extents: N`. Units are the file's st_blksize unless `-b` (bytes); O is
//! offline (FIEMAP_EXTENT_UNKNOWN), U unwritten, L the last extent. FUSE
//! has no FIEMAP, so the file goes to the daemon over the control socket.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use fuse_frontend::control::proto::{
    FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_UNKNOWN, FIEMAP_EXTENT_UNWRITTEN,
};

use crate::args::{self, OptSpec};
use crate::mnt::{self, Client};

const CMD: &str = "get-fiemap";

const SPECS: &[OptSpec] = &[
    OptSpec {
        short: 'P',
        long: "physical",
        takes_arg: false,
        help: "Output physical offsets only",
    },
    OptSpec {
        short: 'L',
        long: "logical",
        takes_arg: false,
        help: "Output logical offsets only",
    },
    OptSpec {
        short: 'b',
        long: "byte",
        takes_arg: false,
        help: "Output byte values instead of blocks",
    },
];

fn run(file: &str, logical: bool, physical: bool, bytes: bool) -> Result<(), i32> {
    let f = mnt::open(file)?;
    let blksize = f.metadata().map(|m| m.blksize()).map_err(|e| {
        let n = mnt::errno(&e);
        eprintln!("stat failed on '{file}': {} ({n})", crate::strerror(n));
        n
    })?;
    let fail = |e: i32| {
        eprintln!("get_fiemap ioctl failed: {} ({e})", crate::strerror(e));
        e
    };
    let client = Client::for_file(&f).map_err(|e| fail(mnt::errno(&e)))?;
    let fd = OwnedFd::from(f);
    let unit = if bytes { 1 } else { blksize.max(1) };
    let mut out = std::io::stdout().lock();
    let mut nr: u64 = 0;
    let mut start = 0u64;
    loop {
        let (exts, last) = client
            .fiemap(&fd, start)
            .map_err(|e| fail(mnt::errno(&e)))?;
        for e in &exts {
            let (l, p, len) = (e.logical / unit, e.physical / unit, e.length / unit);
            let _ = write!(out, "{nr}: offset: ");
            nr += 1;
            if !physical {
                let _ = write!(out, "{l} ");
            } else if !logical {
                let _ = write!(out, "{p} ");
            } else {
                let _ = write!(out, "{l} {p} ");
            }
            let flag = |bit: u32, c: char| if e.flags & bit != 0 { c } else { '.' };
            let _ = writeln!(
                out,
                "length: {len} flags: {}{}{}",
                flag(FIEMAP_EXTENT_UNKNOWN, 'O'),
                flag(FIEMAP_EXTENT_UNWRITTEN, 'U'),
                flag(FIEMAP_EXTENT_LAST, 'L')
            );
        }
        match exts.last() {
            Some(e) if !last => start = (e.logical + e.length) / 4096,
            _ => break,
        }
    }
    let _ = writeln!(out, "extents: {nr}");
    Ok(())
}

/// Entry point: returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse(CMD, "FILE", "Print fiemap extent mapping", SPECS, argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    // The original's flags: -P clears "logical", -L clears "physical".
    let logical = !p.opts.iter().any(|(c, _)| *c == 'P');
    let physical = !p.opts.iter().any(|(c, _)| *c == 'L');
    if p.operands.len() > 1 {
        return args::usage_error(CMD, "more than one argument given");
    }
    if !logical && !physical {
        return args::usage_error(CMD, "can't pass both -P and -L options");
    }
    let Some(file) = p.operands.first() else {
        return args::usage_error(CMD, "no filename given");
    };
    let bytes = p.opts.iter().any(|(c, _)| *c == 'b');
    match run(file, logical, physical, bytes) {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}
