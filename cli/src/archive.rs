//! The archive commands (reference §9, §10; cli-contract.md):
//! `get-attr-x`, `set-attr-x`, `setattr`, `release`, `stage`,
//! `punch-offline`, `move-blocks`, `data-waiting`, `data-wait-err`.
//!
//! Each opens its file(s) as the original utility did (the access mode
//! matters: release, stage, punch-offline and move-blocks need files opened
//! for writing) and passes them to the mount's daemon over the control
//! socket (docs/control-socket.md, ops 11-18). Messages and exit codes
//! follow the original; required options missing are argp usage errors.
//! `stage` streams the archive (which may be a pipe) from its current
//! position in whole-block requests, the last one ending at the file's
//! size.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use fuse_frontend::control::proto::{
    AttrX, SetAttrXReq, IAX_CRTIME, IAX_CTIME, IAX_DATA_VERSION, IAX_F_RETENTION,
    IAX_F_SIZE_OFFLINE, IAX_PROJECT_ID, IAX_RETENTION, IAX_SIZE, STAGE_BYTES_MAX,
};

use crate::args::{self, OptSpec, Parsed};
use crate::mnt::{self, Client};

const BLOCK: u64 = 4096;
/// MOVE_BLOCKS' stage flag.
const MB_STAGE: u32 = 1;
/// DATA_WAIT op bits and their names, in output order.
const WAIT_OPS: [(u64, &str); 3] = [(1, "read"), (2, "write"), (4, "change_size")];

const fn opt(short: char, long: &'static str, takes_arg: bool, help: &'static str) -> OptSpec {
    OptSpec {
        short,
        long,
        takes_arg,
        help,
    }
}

fn opt_val(p: &Parsed, c: char) -> Option<&str> {
    p.opts
        .iter()
        .rev()
        .find(|(o, _)| *o == c)
        .and_then(|(_, v)| v.as_deref())
}

fn has(p: &Parsed, c: char) -> bool {
    p.opts.iter().any(|(o, _)| *o == c)
}

/// A numeric option: Ok(None) when absent, Err(exit code) when malformed.
fn num(cmd: &str, p: &Parsed, c: char, human: bool) -> Result<Option<u64>, i32> {
    match opt_val(p, c) {
        None => Ok(None),
        Some(v) => {
            let r = if human {
                args::parse_human(v)
            } else {
                args::parse_u64(v)
            };
            r.map(Some).map_err(|m| args::usage_error(cmd, &m))
        }
    }
}

/// `SECS[.NSECS]` (nsecs as written after the dot, up to 9 digits).
fn parse_time(s: &str) -> Result<(u64, u32), String> {
    let bad = || format!("invalid time value: '{s}'");
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec = args::parse_u64(sec).map_err(|_| bad())?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nsec = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse::<u32>().map_err(|_| bad())?
    };
    Ok((sec, nsec))
}

fn time_opt(cmd: &str, p: &Parsed, c: char) -> Result<Option<(u64, u32)>, i32> {
    match opt_val(p, c) {
        None => Ok(None),
        Some(v) => parse_time(v)
            .map(Some)
            .map_err(|m| args::usage_error(cmd, &m)),
    }
}

/// ctime (option `ctime_opt`) and crtime (`-r`) into a SET_ATTR_X request.
fn set_times(cmd: &str, p: &Parsed, req: &mut SetAttrXReq, ctime_opt: char) -> Result<(), i32> {
    if let Some((s, n)) = time_opt(cmd, p, ctime_opt)? {
        req.mask |= IAX_CTIME;
        (req.ctime_sec, req.ctime_nsec) = (s, n);
    }
    if let Some((s, n)) = time_opt(cmd, p, 'r')? {
        req.mask |= IAX_CRTIME;
        (req.crtime_sec, req.crtime_nsec) = (s, n);
    }
    Ok(())
}

fn parse(
    cmd: &str,
    operands: &str,
    doc: &str,
    specs: &[OptSpec],
    argv: &[String],
) -> Result<Parsed, i32> {
    args::parse(cmd, operands, doc, specs, argv).map_err(|s| args::stop_code(cmd, s))
}

/// Opens `path` for reading and/or writing, printing the original's
/// message on failure.
fn open_with(path: &str, write: bool, read: bool) -> Result<File, i32> {
    OpenOptions::new()
        .read(read)
        .write(write)
        .open(path)
        .map_err(|e| {
            let n = mnt::errno(&e);
            eprintln!("failed to open '{path}': {} ({n})", crate::strerror(n));
            n
        })
}

fn client_of(f: &File) -> Result<Client, i32> {
    Client::for_file(f).map_err(|e| mnt::errno(&e))
}

fn io_err(e: std::io::Error) -> i32 {
    mnt::errno(&e)
}

const ATTR_FIELDS: [(char, &str); 10] = [
    ('m', "meta_seq"),
    ('d', "data_seq"),
    ('v', "data_version"),
    ('n', "online_blocks"),
    ('f', "offline_blocks"),
    ('c', "ctime"),
    ('r', "crtime"),
    ('s', "size"),
    ('t', "retention"),
    ('p', "project_id"),
];

fn attr_value(a: &AttrX, name: &str) -> String {
    match name {
        "meta_seq" => a.meta_seq.to_string(),
        "data_seq" => a.data_seq.to_string(),
        "data_version" => a.data_version.to_string(),
        "online_blocks" => a.online_blocks.to_string(),
        "offline_blocks" => a.offline_blocks.to_string(),
        "ctime" => format!("{}.{:09}", a.ctime_sec, a.ctime_nsec),
        "crtime" => format!("{}.{:09}", a.crtime_sec, a.crtime_nsec),
        "size" => a.size.to_string(),
        "retention" => u32::from(a.flags & IAX_F_RETENTION != 0).to_string(),
        _ => a.project_id.to_string(),
    }
}

fn attr_failed(path: &str, e: i32) -> i32 {
    eprintln!(
        "attr_x ioctl failed on '{path}': {} ({e})",
        crate::strerror(e)
    );
    e
}

const GET_SPECS: &[OptSpec] = &[
    opt('m', "meta_seq", false, "Print meta_seq"),
    opt('d', "data_seq", false, "Print data_seq"),
    opt('v', "data_version", false, "Print data_version"),
    opt('n', "online_blocks", false, "Print online_blocks"),
    opt('f', "offline_blocks", false, "Print offline_blocks"),
    opt('c', "ctime", false, "Print ctime"),
    opt('r', "crtime", false, "Print crtime"),
    opt('s', "size", false, "Print size"),
    opt('t', "retention", false, "Print retention (0 or 1)"),
    opt('p', "project_id", false, "Print project_id"),
];

/// `scoutfs get-attr-x [-m -d -v -n -f -c -r -s -t -p] FILE`.
pub fn get_attr_x_main(argv: &[String]) -> i32 {
    const CMD: &str = "get-attr-x";
    let p = match parse(CMD, "FILE", "Print inode attributes", GET_SPECS, argv) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify exactly one file");
    };
    let wanted: Vec<&str> = ATTR_FIELDS
        .iter()
        .filter(|(c, _)| has(&p, *c))
        .map(|(_, n)| *n)
        .collect();
    let run = || -> Result<(), i32> {
        let f = mnt::open(file)?;
        let client = client_of(&f).map_err(|e| attr_failed(file, e))?;
        let a = client
            .get_attr_x(&OwnedFd::from(f))
            .map_err(|e| attr_failed(file, io_err(e)))?;
        let mut out = std::io::stdout().lock();
        if wanted.len() == 1 {
            let _ = writeln!(out, "{}", attr_value(&a, wanted[0]));
        } else {
            let all: Vec<&str> = ATTR_FIELDS.iter().map(|(_, n)| *n).collect();
            let list = if wanted.is_empty() { &all } else { &wanted };
            for n in list {
                let _ = writeln!(out, "{n:<17} {}", attr_value(&a, n));
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

const SET_SPECS: &[OptSpec] = &[
    opt('m', "meta_seq", true, "(cannot be set)"),
    opt('d', "data_seq", true, "(cannot be set)"),
    opt(
        'v',
        "data_version",
        true,
        "Set data_version (new empty files)",
    ),
    opt('n', "online_blocks", true, "(cannot be set)"),
    opt(
        'f',
        "offline",
        false,
        "Make the whole size offline (with -s)",
    ),
    opt('c', "ctime", true, "Set ctime SECS.NSECS"),
    opt('r', "crtime", true, "Set crtime SECS.NSECS"),
    opt('s', "size", true, "Set size (with -v)"),
    opt('t', "retention", true, "Set (1) or clear (0) retention"),
    opt('p', "project_id", true, "Set the project id"),
];

/// `scoutfs set-attr-x [-v VERS [-s SIZE [-f]]] [-c T] [-r T] [-t 0|1]
/// [-p PROJ] FILE`.
pub fn set_attr_x_main(argv: &[String]) -> i32 {
    const CMD: &str = "set-attr-x";
    let p = match parse(CMD, "FILE", "Set inode attributes", SET_SPECS, argv) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify exactly one file");
    };
    for (c, n) in [('m', "meta_seq"), ('d', "data_seq"), ('n', "online_blocks")] {
        if has(&p, c) {
            return args::usage_error(CMD, &format!("{n} cannot be set"));
        }
    }
    let mut req = SetAttrXReq::default();
    let fields = (|| -> Result<(), i32> {
        if let Some(v) = num(CMD, &p, 'v', false)? {
            req.mask |= IAX_DATA_VERSION;
            req.data_version = v;
        }
        if let Some(v) = num(CMD, &p, 's', true)? {
            req.mask |= IAX_SIZE;
            req.size = v;
        }
        if has(&p, 'f') {
            req.flags |= IAX_F_SIZE_OFFLINE;
        }
        set_times(CMD, &p, &mut req, 'c')?;
        if let Some(v) = num(CMD, &p, 't', false)? {
            if v > 1 {
                return Err(args::usage_error(CMD, "retention must be 0 or 1"));
            }
            req.mask |= IAX_RETENTION;
            if v == 1 {
                req.flags |= IAX_F_RETENTION;
            }
        }
        if let Some(v) = num(CMD, &p, 'p', false)? {
            req.mask |= IAX_PROJECT_ID;
            req.project_id = v;
        }
        Ok(())
    })();
    if let Err(code) = fields {
        return code;
    }
    let run = || -> Result<(), i32> {
        let f = mnt::open(file)?;
        let client = client_of(&f).map_err(|e| attr_failed(file, e))?;
        client
            .set_attr_x(&OwnedFd::from(f), &req)
            .map_err(|e| attr_failed(file, io_err(e)))?;
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

const SETATTR_SPECS: &[OptSpec] = &[
    opt('V', "data-version", true, "Data version to restore"),
    opt('s', "size", true, "Size to restore (needs -V)"),
    opt('o', "offline", false, "Make the size offline (needs -s)"),
    opt('t', "ctime", true, "ctime SECS.NSECS"),
    opt('r', "crtime", true, "crtime SECS.NSECS"),
];

/// `scoutfs setattr -V VERS -s SIZE [-o] [-t T] [-r T] FILE`: restore a
/// stub (the original's SETATTR_MORE).
pub fn setattr_main(argv: &[String]) -> i32 {
    const CMD: &str = "setattr";
    let p = match parse(
        CMD,
        "FILE",
        "Restore a file's attributes",
        SETATTR_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify exactly one file");
    };
    let mut req = SetAttrXReq::default();
    let fields = (|| -> Result<(), i32> {
        let dv = num(CMD, &p, 'V', false)?.unwrap_or(0);
        if dv == 0 {
            return Err(args::usage_error(CMD, "data version must not be 0"));
        }
        req.mask |= IAX_DATA_VERSION;
        req.data_version = dv;
        let size = num(CMD, &p, 's', true)?;
        if has(&p, 'o') && size.is_none() {
            return Err(args::usage_error(
                CMD,
                "must provide size if using --offline option",
            ));
        }
        if let Some(s) = size {
            req.mask |= IAX_SIZE;
            req.size = s;
        }
        if has(&p, 'o') {
            req.flags |= IAX_F_SIZE_OFFLINE;
        }
        set_times(CMD, &p, &mut req, 't')?;
        Ok(())
    })();
    if let Err(code) = fields {
        return code;
    }
    let run = || -> Result<(), i32> {
        let f = open_with(file, true, false)?;
        let fail = |e: i32| {
            eprintln!(
                "setattr_more ioctl failed on '{file}': {} ({e})",
                crate::strerror(e)
            );
            e
        };
        let client = client_of(&f).map_err(fail)?;
        client
            .set_attr_x(&OwnedFd::from(f), &req)
            .map_err(|e| fail(io_err(e)))?;
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

const RANGE_SPECS: &[OptSpec] = &[
    opt('V', "data-version", true, "The file's data version"),
    opt('o', "offset", true, "Offset in bytes (default 0)"),
    opt('l', "length", true, "Length in bytes (default to the end)"),
];

/// The range of a release/stage: `-o` (default 0) and `-l` (default the
/// rest of the file, rounded up to a block for release).
fn range(cmd: &str, p: &Parsed, size: u64, round: bool) -> Result<(u64, u64), i32> {
    let off = num(cmd, p, 'o', true)?.unwrap_or(0);
    let len = match num(cmd, p, 'l', true)? {
        Some(l) => l,
        None => {
            let end = if round {
                size.div_ceil(BLOCK) * BLOCK
            } else {
                size
            };
            end.saturating_sub(off)
        }
    };
    Ok((off, len))
}

/// `scoutfs release FILE -V VERS [-o OFF] [-l LEN]`.
pub fn release_main(argv: &[String]) -> i32 {
    const CMD: &str = "release";
    let p = match parse(
        CMD,
        "FILE",
        "Remove the file's data blocks, leaving them offline",
        RANGE_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify exactly one file");
    };
    let dv = match num(CMD, &p, 'V', false) {
        Ok(Some(v)) => v,
        Ok(None) => return args::usage_error(CMD, "must provide file version --data-version"),
        Err(c) => return c,
    };
    let f = match open_with(file, true, false) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let size = f.metadata().map(|m| m.size()).unwrap_or(0);
    let (off, len) = match range(CMD, &p, size, true) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let fail = |e: i32| {
        eprintln!("release ioctl failed: {} ({e})", crate::strerror(e));
        crate::failed(CMD, e)
    };
    let client = match client_of(&f) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match client.release(&OwnedFd::from(f), off, len, dv) {
        Ok(()) => 0,
        Err(e) => fail(io_err(e)),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `scoutfs stage ARCHIVE FILE -V VERS [-o OFF] [-l LEN]`.
pub fn stage_main(argv: &[String]) -> i32 {
    const CMD: &str = "stage";
    let p = match parse(
        CMD,
        "ARCHIVE FILE",
        "Write archived contents into offline regions of a file",
        RANGE_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [archive, file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify an archive and a file");
    };
    let dv = match num(CMD, &p, 'V', false) {
        Ok(Some(v)) => v,
        Ok(None) => return args::usage_error(CMD, "must provide file version with --data-version"),
        Err(c) => return c,
    };
    let mut src = match open_with(archive, false, true) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let f = match open_with(file, true, false) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let size = f.metadata().map(|m| m.size()).unwrap_or(0);
    let (mut off, mut left) = match range(CMD, &p, size, false) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let client = match client_of(&f) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "stage returned -1, not {left}: error {} ({e})",
                crate::strerror(e)
            );
            return crate::failed(CMD, e);
        }
    };
    let fd = OwnedFd::from(f);
    let mut buf = vec![0u8; STAGE_BYTES_MAX];
    while left > 0 {
        let want = (left as usize).min(STAGE_BYTES_MAX);
        let got = match read_full(&mut src, &mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let n = io_err(e);
                eprintln!("read from archive failed: {} ({n})", crate::strerror(n));
                return crate::failed(CMD, n);
            }
        };
        match client.stage(&fd, dv, off, &buf[..got]) {
            Ok(n) if n == got => {}
            Ok(n) => {
                eprintln!("stage returned {n}, not {got}: error Success (0)");
                return crate::failed(CMD, libc::EIO);
            }
            Err(e) => {
                let e = io_err(e);
                eprintln!(
                    "stage returned -1, not {got}: error {} ({e})",
                    crate::strerror(e)
                );
                return crate::failed(CMD, e);
            }
        }
        off += got as u64;
        left -= got as u64;
    }
    0
}

/// `scoutfs punch-offline FILE -V VERS -o OFF -l LEN`.
pub fn punch_offline_main(argv: &[String]) -> i32 {
    const CMD: &str = "punch-offline";
    let p = match parse(
        CMD,
        "FILE",
        "Make offline regions of a file sparse",
        RANGE_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [file] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify exactly one file");
    };
    let vals = (|| -> Result<(u64, u64, u64), i32> {
        let need = |c: char, what: &str| -> Result<u64, i32> {
            num(CMD, &p, c, c != 'V')?
                .ok_or_else(|| args::usage_error(CMD, &format!("must provide {what}")))
        };
        Ok((
            need('V', "file version with --data-version")?,
            need('o', "offset with --offset")?,
            need('l', "length with --length")?,
        ))
    })();
    let (dv, off, len) = match vals {
        Ok(v) => v,
        Err(c) => return c,
    };
    let f = match open_with(file, true, false) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let fail = |e: i32| {
        eprintln!("punch_offline ioctl failed: {} ({e})", crate::strerror(e));
        crate::failed(CMD, e)
    };
    let client = match client_of(&f) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match client.punch_offline(&OwnedFd::from(f), off, len, dv) {
        Ok(()) => 0,
        Err(e) => fail(io_err(e)),
    }
}

const MOVE_SPECS: &[OptSpec] = &[
    opt('f', "from-offset", true, "Offset in the source file"),
    opt('l', "length", true, "Bytes to move"),
    opt('t', "to-offset", true, "Offset in the destination file"),
    opt('s', "stage", false, "Stage offline destination blocks"),
    opt(
        'V',
        "data-version",
        true,
        "Destination data version (with -s)",
    ),
];

/// `scoutfs move-blocks FROM -f OFF -l LEN TO -t OFF [-s -V VERS]`.
pub fn move_blocks_main(argv: &[String]) -> i32 {
    const CMD: &str = "move-blocks";
    let p = match parse(
        CMD,
        "FROM TO",
        "Move extents from one file into another",
        MOVE_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let [from, to] = p.operands.as_slice() else {
        return args::usage_error(CMD, "must specify source and destination files");
    };
    let vals = (|| -> Result<(u64, u64, u64, u64), i32> {
        let need = |c: char, what: &str| -> Result<u64, i32> {
            num(CMD, &p, c, true)?
                .ok_or_else(|| args::usage_error(CMD, &format!("must provide {what}")))
        };
        let dv = num(CMD, &p, 'V', false)?;
        if has(&p, 's') && dv.is_none() {
            return Err(args::usage_error(
                CMD,
                "must provide file version with --data-version when staging",
            ));
        }
        Ok((
            need('f', "--from-offset")?,
            need('l', "--length")?,
            need('t', "--to-offset")?,
            dv.unwrap_or(0),
        ))
    })();
    let (from_off, len, to_off, dv) = match vals {
        Ok(v) => v,
        Err(c) => return c,
    };
    let flags = if has(&p, 's') { MB_STAGE } else { 0 };
    let src = match open_with(from, true, true) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let dst = match open_with(to, true, true) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let fail = |e: i32| {
        eprintln!("ioctl failed on '{to}': {} ({e})", crate::strerror(e));
        crate::failed(CMD, e)
    };
    let client = match client_of(&dst) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // The daemon tells a source of another mount (EXDEV) by its st_dev.
    let (src, dst) = (OwnedFd::from(src), OwnedFd::from(dst));
    match client.move_blocks(&dst, &src, from_off, len, to_off, dv, flags) {
        Ok(()) => 0,
        Err(e) => fail(io_err(e)),
    }
}

const WAITING_SPECS: &[OptSpec] = &[
    opt('I', "inode", true, "Start listing at this inode"),
    opt(
        'B',
        "block",
        true,
        "Start listing at this block of the inode",
    ),
    opt('p', "path", true, "Path to ScoutFS filesystem"),
];

fn ops_text(ops: u64) -> String {
    let names: Vec<&str> = WAIT_OPS
        .iter()
        .filter(|(b, _)| ops & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(",")
}

/// `scoutfs data-waiting [-I INO] [-B IBLOCK] [-p PATH]`.
pub fn data_waiting_main(argv: &[String]) -> i32 {
    const CMD: &str = "data-waiting";
    let p = match parse(
        CMD,
        "",
        "List tasks waiting for offline data",
        WAITING_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let start = (|| -> Result<(u64, u64), i32> {
        Ok((
            num(CMD, &p, 'I', false)?.unwrap_or(0),
            num(CMD, &p, 'B', false)?.unwrap_or(0),
        ))
    })();
    let (mut ino, mut iblock) = match start {
        Ok(v) => v,
        Err(c) => return c,
    };
    let path = opt_val(&p, 'p')
        .map(str::to_string)
        .or_else(|| p.operands.first().cloned());
    let client = match mnt::client_for(path.as_deref()) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) | Err(e) => return crate::failed(CMD, e),
    };
    let mut out = std::io::stdout().lock();
    loop {
        let rows = match client.data_waiting(ino, iblock) {
            Ok(r) => r,
            Err(e) => {
                let e = io_err(e);
                eprintln!("data_waiting ioctl failed: {} ({e})", crate::strerror(e));
                return crate::failed(CMD, e);
            }
        };
        let Some(last) = rows.last().copied() else {
            return 0;
        };
        for r in &rows {
            let _ = writeln!(
                out,
                "ino {} iblock {} ops {}",
                r.ino,
                r.iblock,
                ops_text(r.ops as u64)
            );
        }
        (ino, iblock) = match last.iblock.checked_add(1) {
            Some(b) => (last.ino, b),
            None => match last.ino.checked_add(1) {
                Some(i) => (i, 0),
                None => return 0,
            },
        };
    }
}

const WAIT_ERR_SPECS: &[OptSpec] = &[
    opt('I', "inode", true, "Inode number"),
    opt('V', "version", true, "The inode's data version"),
    opt('F', "offset", true, "Offset of the range in bytes"),
    opt('C', "count", true, "Length of the range in bytes"),
    opt(
        'O',
        "op",
        true,
        "Ops: read,write,change_size (names or bits)",
    ),
    opt(
        'E',
        "err",
        true,
        "errno to return (negative, as the original)",
    ),
    opt('p', "path", true, "Path to ScoutFS filesystem"),
];

fn parse_ops(s: &str) -> Result<u64, String> {
    if let Ok(v) = args::parse_u64(s) {
        return Ok(v);
    }
    let mut ops = 0;
    for w in s.split(',') {
        match WAIT_OPS.iter().find(|(_, n)| *n == w) {
            Some((b, _)) => ops |= b,
            None => return Err(format!("invalid op: '{w}'")),
        }
    }
    Ok(ops)
}

/// `scoutfs data-wait-err -I INO -V VERS -F OFF -C COUNT -O OP -E ERR [-p]`.
pub fn data_wait_err_main(argv: &[String]) -> i32 {
    const CMD: &str = "data-wait-err";
    let p = match parse(
        CMD,
        "",
        "Fail tasks waiting for offline data with an error",
        WAIT_ERR_SPECS,
        argv,
    ) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let vals = (|| -> Result<(u64, u64, u64, u64, u64, i64), i32> {
        let need = |c: char, what: &str| -> Result<u64, i32> {
            num(CMD, &p, c, matches!(c, 'F' | 'C'))?
                .ok_or_else(|| args::usage_error(CMD, &format!("must provide {what}")))
        };
        let op = match opt_val(&p, 'O') {
            None => return Err(args::usage_error(CMD, "must provide --op")),
            Some(s) => parse_ops(s).map_err(|m| args::usage_error(CMD, &m))?,
        };
        let err = match opt_val(&p, 'E') {
            None => return Err(args::usage_error(CMD, "must provide --err")),
            Some(s) => {
                let (neg, digits) = match s.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, s),
                };
                let v = args::parse_u64(digits).map_err(|m| args::usage_error(CMD, &m))?;
                let v = i64::try_from(v).map_err(|_| args::usage_error(CMD, "invalid err"))?;
                if neg {
                    -v
                } else {
                    v
                }
            }
        };
        Ok((
            need('I', "--inode")?,
            need('V', "--version")?,
            need('F', "--offset")?,
            need('C', "--count")?,
            op,
            err,
        ))
    })();
    let (ino, dv, off, count, op, err) = match vals {
        Ok(v) => v,
        Err(c) => return c,
    };
    let path = opt_val(&p, 'p')
        .map(str::to_string)
        .or_else(|| p.operands.first().cloned());
    let client = match mnt::client_for(path.as_deref()) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) | Err(e) => return crate::failed(CMD, e),
    };
    match client.data_wait_err(ino, dv, off, count, op, err) {
        Ok(n) => {
            println!("data_wait_err found {n} waiters.");
            0
        }
        Err(e) => {
            let e = io_err(e);
            eprintln!("data_wait_err ioctl failed: {} ({e})", crate::strerror(e));
            crate::failed(CMD, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ops() {
        assert_eq!(parse_time("12.5"), Ok((12, 500_000_000)));
        assert_eq!(parse_time("12.000000001"), Ok((12, 1)));
        assert_eq!(parse_time("7"), Ok((7, 0)));
        assert!(parse_time("1.1234567890").is_err());
        assert!(parse_time("x").is_err());
        assert_eq!(parse_ops("read,change_size"), Ok(5));
        assert_eq!(parse_ops("2"), Ok(2));
        assert!(parse_ops("reed").is_err());
        assert_eq!(ops_text(7), "read,write,change_size");
        assert_eq!(ops_text(2), "write");
    }
}
