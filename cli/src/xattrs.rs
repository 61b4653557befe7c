//! `scoutfs read-xattr-totals [-p PATH]`, `scoutfs read-xattr-index
//! [FIRST [LAST]] [-p PATH]`, `scoutfs list-hidden-xattrs FILE` and
//! `scoutfs search-xattrs NAME [-p PATH]`: what the `.totl.`, `.indx.`,
//! `.hide.` and `.srch.` tags record (reference §7.3, §8.3, §8.4, §10;
//! cli-contract.md).
//!
//! * read-xattr-totals: `%llu.%llu.%llu = %lld, %lld` (name, total, count)
//!   in name order, from committed state. Needs CAP_SYS_ADMIN.
//! * read-xattr-index: positions `major.minor.ino` (missing parts are 0 in
//!   FIRST and the largest value in LAST; `-1` is the largest value);
//!   prints `%u.%llu = %llu` (major.minor = ino). Needs CAP_SYS_ADMIN.
//! * list-hidden-xattrs: the names of FILE's `.hide.` xattrs, one a line.
//! * search-xattrs: inode numbers, one a line, in order, batch after batch
//!   until the search says it reached the end (`%llu`). Needs
//!   CAP_SYS_ADMIN; a name without `.srch.` is EINVAL.

use std::io::Write;
use std::os::fd::OwnedFd;

use crate::args;
use crate::mnt;

use crate::mnt::{path_opt, PATH_OPT as PATH};

fn ioctl_failed(cmd: &str, what: &str, e: i32) -> i32 {
    eprintln!("{what} ioctl failed: {} ({e})", crate::strerror(e));
    crate::failed(cmd, e)
}

/// `scoutfs read-xattr-totals`.
pub fn totals_main(argv: &[String]) -> i32 {
    const CMD: &str = "read-xattr-totals";
    let p = match args::parse(
        CMD,
        "",
        "Print totals of .totl. tagged xattrs",
        &[PATH],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if !p.operands.is_empty() {
        return args::usage_error(CMD, "too many arguments");
    }
    let client = match mnt::client_for(path_opt(&p).as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return ioctl_failed(CMD, "read_xattr_totals", e),
        Ok(Ok(c)) => c,
    };
    let mut out = std::io::stdout().lock();
    let mut from = [0u64; 3];
    loop {
        let batch = match client.read_xattr_totals(from) {
            Ok(b) => b,
            Err(e) => return ioctl_failed(CMD, "read_xattr_totals", mnt::errno(&e)),
        };
        let Some(last) = batch.last() else {
            break;
        };
        for t in &batch {
            let _ = writeln!(
                out,
                "{}.{}.{} = {}, {}",
                t.name[0], t.name[1], t.name[2], t.total as i64, t.count as i64
            );
        }
        // The name after the last one (c carries into b, then a).
        let mut n = last.name;
        n[2] = n[2].wrapping_add(1);
        if n[2] == 0 {
            n[1] = n[1].wrapping_add(1);
            if n[1] == 0 {
                n[0] = n[0].wrapping_add(1);
                if n[0] == 0 {
                    break;
                }
            }
        }
        from = n;
    }
    0
}

/// Parses `major[.minor[.ino]]` (`-1` = largest), missing parts `fill`.
fn index_pos(s: &str, fill: u64) -> Result<(u8, u64, u64), String> {
    let bad = || format!("invalid index position: '{s}'");
    let mut parts = [fill; 3];
    let fields: Vec<&str> = s.split('.').collect();
    if fields.len() > 3 {
        return Err(bad());
    }
    for (i, f) in fields.iter().enumerate() {
        parts[i] = if *f == "-1" {
            u64::MAX
        } else {
            args::parse_u64(f).map_err(|_| bad())?
        };
    }
    let major = if parts[0] == u64::MAX {
        u8::MAX
    } else {
        u8::try_from(parts[0]).map_err(|_| bad())?
    };
    Ok((major, parts[1], parts[2]))
}

/// `scoutfs read-xattr-index`.
pub fn index_main(argv: &[String]) -> i32 {
    const CMD: &str = "read-xattr-index";
    let p = match args::parse_opts(
        CMD,
        "FIRST-POS LAST-POS",
        "Print entries of .indx. tagged xattrs",
        &[PATH],
        argv,
        true,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if p.operands.len() > 2 {
        return args::usage_error(CMD, "too many arguments");
    }
    let first = match p.operands.first().map(|s| index_pos(s, 0)) {
        None => (0, 0, 0),
        Some(Ok(v)) => v,
        Some(Err(m)) => return args::usage_error(CMD, &m),
    };
    let last = match p.operands.get(1).map(|s| index_pos(s, u64::MAX)) {
        None => (u8::MAX, u64::MAX, u64::MAX),
        Some(Ok(v)) => v,
        Some(Err(m)) => return args::usage_error(CMD, &m),
    };
    let client = match mnt::client_for(path_opt(&p).as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return ioctl_failed(CMD, "read_xattr_index", e),
        Ok(Ok(c)) => c,
    };
    let mut out = std::io::stdout().lock();
    let mut from = first;
    loop {
        let batch = match client.read_xattr_index(from, last) {
            Ok(b) => b,
            Err(e) => return ioctl_failed(CMD, "read_xattr_index", mnt::errno(&e)),
        };
        for (major, minor, ino) in &batch {
            let _ = writeln!(out, "{major}.{minor} = {ino}");
        }
        if batch.len() < fuse_frontend::control::proto::INDEX_BATCH_MAX {
            break;
        }
        // Entries of one (major, minor, ino) may span batches only when
        // one inode holds that many: resume after the last inode.
        let &(ma, mi, ino) = batch.last().expect("non-empty");
        from = match ino.checked_add(1) {
            Some(i) => (ma, mi, i),
            None => match mi.checked_add(1) {
                Some(m) => (ma, m, 0),
                None => match ma.checked_add(1) {
                    Some(a) => (a, 0, 0),
                    None => break,
                },
            },
        };
        if from > last {
            break;
        }
    }
    0
}

/// `scoutfs list-hidden-xattrs`.
pub fn hidden_main(argv: &[String]) -> i32 {
    const CMD: &str = "list-hidden-xattrs";
    let p = match args::parse(CMD, "FILE", "Print names of hidden xattrs", &[], argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let path = match p.operands.as_slice() {
        [f] => f.clone(),
        [] => return args::usage_error(CMD, "must specify path"),
        _ => return args::usage_error(CMD, "too many arguments"),
    };
    let f = match mnt::open(&path) {
        Ok(f) => f,
        Err(e) => return crate::failed(CMD, e),
    };
    let client = match mnt::Client::for_file(&f) {
        Ok(c) => c,
        Err(e) => return ioctl_failed(CMD, "listxattr_hidden", mnt::errno(&e)),
    };
    let fd = OwnedFd::from(f);
    let mut out = std::io::stdout().lock();
    let mut skip = 0u32;
    loop {
        let (names, last) = match client.list_hidden_xattrs(&fd, skip) {
            Ok(r) => r,
            Err(e) => return ioctl_failed(CMD, "listxattr_hidden", mnt::errno(&e)),
        };
        for n in &names {
            let _ = out.write_all(n);
            let _ = out.write_all(b"\n");
        }
        if last || names.is_empty() {
            break;
        }
        skip += names.len() as u32;
    }
    0
}

/// `scoutfs search-xattrs NAME [-p PATH]`: the inodes that may carry the
/// `.srch.` xattr NAME, one number a line in order (hash collisions and
/// removals not yet committed included, as in the original).
pub fn search_main(argv: &[String]) -> i32 {
    const CMD: &str = "search-xattrs";
    let p = match args::parse(
        CMD,
        "XATTR-NAME",
        "Print inode numbers of inodes which may have given xattr",
        &[PATH],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let name = match p.operands.as_slice() {
        [n] => n.clone(),
        [] => return args::usage_error(CMD, "must provide xattr containing .srch. scoutfs tag"),
        _ => return args::usage_error(CMD, "more than one name argument given"),
    };
    let client = match mnt::client_for(path_opt(&p).as_deref()) {
        Err(e) => return crate::failed(CMD, e),
        Ok(Err(e)) => return ioctl_failed(CMD, "search_xattrs", e),
        Ok(Ok(c)) => c,
    };
    let mut out = std::io::stdout().lock();
    let mut next = 0u64;
    loop {
        let (inos, end) = match client.search_xattrs(name.as_bytes(), next, u64::MAX) {
            Ok(r) => r,
            Err(e) => return ioctl_failed(CMD, "search_xattrs", mnt::errno(&e)),
        };
        let Some(last) = inos.last() else {
            break;
        };
        for ino in &inos {
            let _ = writeln!(out, "{ino}");
        }
        if end || *last == u64::MAX {
            break;
        }
        next = last + 1;
    }
    0
}
