//! `scoutfs ino-path INO [PATH] [-p PATH]`, `scoutfs get-referring-entries
//! INO [-p PATH]` and `scoutfs get-allocated-inos -i INO [-s] [-p PATH]`:
//! what an inode's backrefs say, one answer a line.
//!
//! * ino-path: every path from the filesystem root to the inode
//!   (components joined by `/`, no leading `/`, as the original's
//!   INO_PATH returns them), one request per path. Needs
//!   CAP_DAC_READ_SEARCH.
//! * get-referring-entries: `dir %llu pos %llu type %u name %s`, type a
//!   `DT_*` value. Needs CAP_DAC_READ_SEARCH.
//! * get-allocated-inos: the inode numbers with an inode item from INO to
//!   the end of its 1024-inode group (`-s`: only INO itself). Needs
//!   CAP_SYS_ADMIN.

use std::io::Write;

use crate::args::{self, OptSpec};
use crate::mnt;

const PATH: OptSpec = OptSpec {
    short: 'p',
    long: "path",
    takes_arg: true,
    help: "Path to ScoutFS filesystem",
};

fn path_opt(p: &args::Parsed) -> Option<String> {
    p.opts
        .iter()
        .rev()
        .find(|(c, _)| *c == 'p')
        .and_then(|(_, v)| v.clone())
}

/// `scoutfs ino-path`.
pub fn ino_path_main(argv: &[String]) -> i32 {
    const CMD: &str = "ino-path";
    let p = match args::parse(
        CMD,
        "INODE-NUM [PATH]",
        "Print paths that refer to inode number",
        &[PATH],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let mut path = path_opt(&p);
    let ops = &p.operands;
    if ops.is_empty() {
        return args::usage_error(CMD, "must provide inode number");
    }
    if ops.len() > 2 || (ops.len() == 2 && path.is_some()) {
        return args::usage_error(CMD, "more than one argument given");
    }
    if ops.len() == 2 {
        path = Some(ops[1].clone());
    }
    let Ok(ino) = args::parse_u64(&ops[0]) else {
        eprintln!("error parsing inode number '{}'", ops[0]);
        return crate::failed(CMD, libc::EINVAL);
    };
    let fail = |e: i32| {
        eprintln!("inodes_since ioctl failed: {} ({e})", crate::strerror(e));
        crate::failed(CMD, e)
    };
    let client = match mnt::client_for(path.as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return fail(e),
        Ok(Ok(c)) => c,
    };
    let mut out = std::io::stdout().lock();
    let mut cursor = (0, 0);
    loop {
        match client.ino_path(ino, cursor) {
            Ok(Some((dir, pos, path))) => {
                let _ = out.write_all(&path);
                let _ = out.write_all(b"\n");
                cursor = match pos.checked_add(1) {
                    Some(p) => (dir, p),
                    None => match dir.checked_add(1) {
                        Some(d) => (d, 0),
                        None => break,
                    },
                };
            }
            Ok(None) => break,
            Err(e) => return fail(mnt::errno(&e)),
        }
    }
    0
}

/// `scoutfs get-referring-entries`.
pub fn referring_main(argv: &[String]) -> i32 {
    const CMD: &str = "get-referring-entries";
    let p = match args::parse(
        CMD,
        "INODE-NUM",
        "Print directory entries that refer to inode number",
        &[PATH],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let path = path_opt(&p);
    if p.operands.len() > 1 {
        return args::usage_error(CMD, "more than one argument given");
    }
    let ino = match p.operands.first().map(|s| args::parse_u64(s)) {
        None | Some(Ok(0)) => return args::usage_error(CMD, "must provide inode number"),
        Some(Err(_)) => return args::usage_error(CMD, "inode parse error"),
        Some(Ok(i)) => i,
    };
    let fail = |e: i32| {
        eprintln!("ioctl failed: {} ({e})", crate::strerror(e));
        crate::failed(CMD, e)
    };
    let client = match mnt::client_for(path.as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return fail(e),
        Ok(Ok(c)) => c,
    };
    let mut out = std::io::stdout().lock();
    let mut cursor = (0u64, 0u64);
    loop {
        let (ents, last) = match client.referring_entries(ino, cursor) {
            Ok(r) => r,
            Err(e) => return fail(mnt::errno(&e)),
        };
        for e in &ents {
            let _ = write!(out, "dir {} pos {} type {} name ", e.dir, e.pos, e.dtype);
            let _ = out.write_all(&e.name);
            let _ = out.write_all(b"\n");
        }
        let Some(end) = ents.last() else {
            break;
        };
        if last {
            break;
        }
        cursor = match end.pos.checked_add(1) {
            Some(p) => (end.dir, p),
            None => match end.dir.checked_add(1) {
                Some(d) => (d, 0),
                None => break,
            },
        };
    }
    0
}

/// `scoutfs get-allocated-inos`.
pub fn allocated_main(argv: &[String]) -> i32 {
    const CMD: &str = "get-allocated-inos";
    let specs = [
        OptSpec {
            short: 'i',
            long: "ino",
            takes_arg: true,
            help: "Start from 64bit inode number (required)",
        },
        PATH,
        OptSpec {
            short: 's',
            long: "single",
            takes_arg: false,
            help: "Only print single specific inode number argument",
        },
    ];
    let p = match args::parse(
        CMD,
        "",
        "Print allocated inode numbers from starting inode number",
        &specs,
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let mut ino = None;
    for (c, v) in &p.opts {
        if *c == 'i' {
            match args::parse_u64(v.as_deref().unwrap_or_default()) {
                Ok(i) => ino = Some(i),
                Err(msg) => return args::usage_error(CMD, &msg),
            }
        }
    }
    let Some(ino) = ino else {
        return args::usage_error(CMD, "must provide --ino starting inode number option");
    };
    let single = p.opts.iter().any(|(c, _)| *c == 's');
    let path = path_opt(&p);
    let fail = |e: i32| {
        eprintln!(
            "get_allocated_inos ioctl failed: {} ({e})",
            crate::strerror(e)
        );
        crate::failed(CMD, e)
    };
    let client = match mnt::client_for(path.as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return fail(e),
        Ok(Ok(c)) => c,
    };
    let max = if single { 1 } else { 1024 };
    match client.allocated_inos(ino, max) {
        Ok(mut inos) => {
            if single && inos.first() != Some(&ino) {
                inos.clear();
            }
            let mut out = std::io::stdout().lock();
            for i in inos {
                let _ = writeln!(out, "{i}");
            }
            0
        }
        Err(e) => fail(mnt::errno(&e)),
    }
}
