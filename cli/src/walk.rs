//! `scoutfs walk-inodes meta_seq|data_seq FIRST LAST [-p PATH]`: prints
//! the inodes of a seq index between two positions, as the original does:
//! rows `%-20llu %-20llu %-10u %-20llu` (running number, major, minor,
//! ino) with a header before rows 0, 25, 50, …, fetched in batches of 128
//! that resume after the last entry. Positions are `major[.minor[.ino]]`
//! parsed like `strtoull(…, 0)` (so `-1` is the largest value). The seed's
//! older form with the path as a fourth operand is accepted too.
//!
//! The daemon commits this mount's open transaction first and stops at
//! the last stable seq, so `touch f; sync; scoutfs walk-inodes meta_seq 0
//! -1 MNT` shows `f` at its new seq.

use std::io::Write;

use fuse_frontend::control::proto::{WalkPos, INDEX_DATA_SEQ, INDEX_META_SEQ};

use crate::args::{self, OptSpec};
use crate::mnt;

const CMD: &str = "walk-inodes";

const SPECS: &[OptSpec] = &[OptSpec {
    short: 'p',
    long: "path",
    takes_arg: true,
    help: "Path to ScoutFS filesystem",
}];

/// `strtoull(s, &end, 0)` over all of `s`, with its sign handling (a
/// leading `-` negates modulo 2^64) and an empty string reading as 0.
pub fn strtoull_all(s: &str) -> Option<u64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if s.is_empty() {
        return Some(0);
    }
    let v = crate::args::parse_u64(t).ok()?;
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Parses `major[.minor[.ino]]`; on failure prints the original's
/// messages for the `which` ("first"/"last") position.
fn parse_pos(s: &str, which: &str) -> Result<WalkPos, i32> {
    let mut vals = [0u64; 3];
    for (i, part) in s.splitn(3, '.').enumerate() {
        match strtoull_all(part) {
            Some(v) => vals[i] = v,
            None => {
                eprintln!("bad index pos at '{part}'");
                // The original cut the string at the first '.'.
                let shown = s.split('.').next().unwrap_or(s);
                eprintln!("invalid {which} position '{shown}', try '1.2.3' or '-1'");
                return Err(libc::EINVAL);
            }
        }
    }
    Ok(WalkPos {
        major: vals[0],
        minor: vals[1] as u32,
        ino: vals[2],
    })
}

fn run(index: &str, first: &str, last: &str, path: Option<&str>) -> Result<(), i32> {
    let index = if index.eq_ignore_ascii_case("meta_seq") {
        INDEX_META_SEQ
    } else if index.eq_ignore_ascii_case("data_seq") {
        INDEX_DATA_SEQ
    } else {
        eprintln!("unknown index '{index}', try 'meta_seq' or 'data_seq'");
        return Err(libc::EINVAL);
    };
    let mut first = parse_pos(first, "first")?;
    let last = parse_pos(last, "last")?;
    let client = mnt::client_for(path)?;
    let fail = |e: i32| {
        eprintln!("walk_inodes ioctl failed: {} ({e})", crate::strerror(e));
        e
    };
    let client = client.map_err(fail)?;
    let mut out = std::io::stdout().lock();
    let mut total: u64 = 0;
    loop {
        let ents = client
            .walk_inodes(index, first, last)
            .map_err(|e| fail(mnt::errno(&e)))?;
        let Some(&end) = ents.last() else {
            break;
        };
        for (i, e) in ents.iter().enumerate() {
            let nr = total + i as u64;
            if nr.is_multiple_of(25) {
                let _ = writeln!(
                    out,
                    "{:<20} {:<20} {:<10} {:<20}",
                    "#", "major", "minor", "ino"
                );
            }
            let _ = writeln!(
                out,
                "{nr:<20} {:<20} {:<10} {:<20}",
                e.major, e.minor, e.ino
            );
        }
        total += ents.len() as u64;
        first = end.next();
        if first == WalkPos::default() {
            break;
        }
    }
    Ok(())
}

/// Entry point: returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let p = match args::parse_opts(
        CMD,
        "<meta_seq|data_seq> FIRST-ENTRY LAST-ENTRY",
        "Print range of indexed inodes",
        SPECS,
        argv,
        true,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let mut path = p.opts.iter().rev().find_map(|(_, v)| v.clone());
    let ops = &p.operands;
    if ops.len() > 4 || (ops.len() == 4 && path.is_some()) {
        return args::usage_error(CMD, "more than three arguments given");
    }
    if ops.is_empty() {
        return args::usage_error(CMD, "no index given");
    }
    if ops.len() < 2 {
        return args::usage_error(CMD, "no first entry given");
    }
    if ops.len() < 3 {
        return args::usage_error(CMD, "no last entry given");
    }
    if ops.len() == 4 {
        path = Some(ops[3].clone());
    }
    match run(&ops[0], &ops[1], &ops[2], path.as_deref()) {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_like_strtoull() {
        assert_eq!(strtoull_all("-1"), Some(u64::MAX));
        assert_eq!(strtoull_all("0x10"), Some(16));
        assert_eq!(strtoull_all(""), Some(0));
        assert_eq!(strtoull_all("x"), None);
        let p = parse_pos("3.4.5", "first").unwrap();
        assert_eq!((p.major, p.minor, p.ino), (3, 4, 5));
        let p = parse_pos("-1", "last").unwrap();
        assert_eq!((p.major, p.minor, p.ino), (u64::MAX, 0, 0));
        assert!(parse_pos("1.x", "first").is_err());
    }
}
