//! `scoutfs stat [-s FIELD] FILE`, `scoutfs statfs [-s FIELD] [-p PATH]`,
//! `scoutfs df [-h] [-p PATH]` and `scoutfs sync [-p PATH]`.
//!
//! stat/statfs print `%-17s value` lines (or the bare value of one
//! field); a failed request prints `ioctl failed: <strerror> (<e>)` and
//! still exits 0, as the original does (a file outside scoutfs, or a
//! device node, gives ENOTTY). df prints the original's table: right-
//! aligned columns, each followed by two spaces; metadata free excludes
//! the reserve. sync commits the mount's transaction and waits until it
//! is durable and in the indexes (FUSE never forwards sync(2)).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;

use fuse_frontend::control::proto::{StatReply, StatfsReply};

use crate::args::{self, OptSpec};
use crate::mnt::{self, Client};

const FIELD: OptSpec = OptSpec {
    short: 's',
    long: "single-field",
    takes_arg: true,
    help: "Specify single field to print",
};
const PATH: OptSpec = OptSpec {
    short: 'p',
    long: "path",
    takes_arg: true,
    help: "Path to ScoutFS filesystem",
};
const HUMAN: OptSpec = OptSpec {
    short: 'h',
    long: "human-readable",
    takes_arg: false,
    help: "Print sizes in human readable format (e.g., 1KB 234MB 2GB)",
};

const INODE_FIELDS: [&str; 6] = [
    "meta_seq",
    "data_seq",
    "data_version",
    "online_blocks",
    "offline_blocks",
    "crtime",
];
const FS_FIELDS: [&str; 5] = [
    "fsid",
    "rid",
    "committed_seq",
    "total_meta_blocks",
    "total_data_blocks",
];

fn inode_field(s: &StatReply, name: &str) -> String {
    match name {
        "meta_seq" => s.meta_seq.to_string(),
        "data_seq" => s.data_seq.to_string(),
        "data_version" => s.data_version.to_string(),
        "online_blocks" => s.online_blocks.to_string(),
        "offline_blocks" => s.offline_blocks.to_string(),
        _ => format!("{}.{:09}", s.crtime_sec, s.crtime_nsec),
    }
}

fn fs_field(s: &StatfsReply, name: &str) -> String {
    match name {
        "fsid" => format!("{:016x}", s.fsid),
        "rid" => format!("{:016x}", s.rid),
        "committed_seq" => s.committed_seq.to_string(),
        "total_meta_blocks" => s.total_meta_blocks.to_string(),
        _ => s.total_data_blocks.to_string(),
    }
}

fn print_fields(fields: &[&str], single: Option<&str>, value: impl Fn(&str) -> String) {
    let mut out = std::io::stdout().lock();
    match single {
        Some(f) => {
            let _ = writeln!(out, "{}", value(f));
        }
        None => {
            for f in fields {
                let _ = writeln!(out, "{f:<17} {}", value(f));
            }
        }
    }
}

fn check_field(fields: &[&str], single: Option<&str>) -> Result<(), i32> {
    match single {
        Some(f) if !fields.contains(&f) => {
            eprintln!("unknown field: '{f}'");
            Err(libc::EINVAL)
        }
        _ => Ok(()),
    }
}

fn ioctl_failed(e: i32) {
    eprintln!("ioctl failed: {} ({e})", crate::strerror(e));
}

fn stat_file(path: &str, single: Option<&str>) -> Result<(), i32> {
    check_field(&INODE_FIELDS, single)?;
    let f = mnt::open(path)?;
    // A device node's ioctl goes to its driver: never ours.
    let special = f.metadata().map(|m| {
        let t = m.file_type();
        t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()
    });
    if special.unwrap_or(false) {
        ioctl_failed(libc::ENOTTY);
        return Ok(());
    }
    let client = match Client::for_file(&f) {
        Ok(c) => c,
        Err(e) => {
            ioctl_failed(mnt::errno(&e));
            return Ok(());
        }
    };
    let fd = OwnedFd::from(f);
    match client.stat(&fd) {
        Ok(s) => print_fields(&INODE_FIELDS, single, |n| inode_field(&s, n)),
        Err(e) => ioctl_failed(mnt::errno(&e)),
    }
    Ok(())
}

fn statfs(path: Option<&str>, single: Option<&str>) -> Result<(), i32> {
    check_field(&FS_FIELDS, single)?;
    let client = mnt::client_for(path)?;
    match client.and_then(|c| c.statfs().map_err(|e| mnt::errno(&e))) {
        Ok(s) => print_fields(&FS_FIELDS, single, |n| fs_field(&s, n)),
        Err(e) => ioctl_failed(e),
    }
    Ok(())
}

fn single_and_path(p: &args::Parsed) -> (Option<String>, Option<String>) {
    let mut single = None;
    let mut path = None;
    for (c, v) in &p.opts {
        match c {
            's' => single = v.clone(),
            'p' => path = v.clone(),
            _ => {}
        }
    }
    (single, path)
}

/// `scoutfs stat`.
pub fn stat_main(argv: &[String]) -> i32 {
    const CMD: &str = "stat";
    let p = match args::parse(
        CMD,
        "FILE",
        "Show ScoutFS extra inode information",
        &[FIELD],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if p.operands.len() > 1 {
        return args::usage_error(CMD, "more than one argument");
    }
    let Some(file) = p.operands.first() else {
        return args::usage_error(CMD, "missing operand");
    };
    let (single, _) = single_and_path(&p);
    match stat_file(file, single.as_deref()) {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

/// `scoutfs statfs`.
pub fn statfs_main(argv: &[String]) -> i32 {
    const CMD: &str = "statfs";
    let p = match args::parse(
        CMD,
        "",
        "Show ScoutFS file system information",
        &[PATH, FIELD],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let (single, path) = single_and_path(&p);
    let path = path.or_else(|| p.operands.first().cloned());
    match statfs(path.as_deref(), single.as_deref()) {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

/// "%.2f %s" of a byte count (the original's BASE_SIZE_FMT).
fn human(bytes: u64) -> String {
    let (n, s) = crate::mkfs::size_parts(bytes, 1);
    format!("{n} {s}")
}

/// The df table of a statfs reply.
pub fn df_table(s: &StatfsReply, human_readable: bool) -> String {
    let meta_free = s.free_meta_blocks.saturating_sub(s.reserved_meta_blocks);
    let data_free = s.free_data_blocks;
    let row = |name: &str, size: &str, total: u64, free: u64, unit: u64| {
        let used = total.saturating_sub(free);
        let pct = (used * 100).checked_div(total).unwrap_or(0);
        let (t, u, f) = if human_readable {
            (human(total * unit), human(used * unit), human(free * unit))
        } else {
            (total.to_string(), used.to_string(), free.to_string())
        };
        [name.to_string(), size.to_string(), t, u, f, pct.to_string()]
    };
    let cells = [
        ["Type", "Size", "Total", "Used", "Free", "Use%"].map(String::from),
        row("MetaData", "64KB", s.total_meta_blocks, meta_free, 65536),
        row("Data", "4KB", s.total_data_blocks, data_free, 4096),
    ];
    let mut wid = [0usize; 6];
    for r in &cells {
        for (c, cell) in r.iter().enumerate() {
            wid[c] = wid[c].max(cell.len());
        }
    }
    let mut out = String::new();
    for r in &cells {
        for (c, cell) in r.iter().enumerate() {
            out.push_str(&format!("{cell:>w$}  ", w = wid[c]));
        }
        out.push('\n');
    }
    out
}

/// `scoutfs df`.
pub fn df_main(argv: &[String]) -> i32 {
    const CMD: &str = "df";
    let p = match args::parse(
        CMD,
        "",
        "Show metadata and data block usage",
        &[PATH, HUMAN],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let (_, path) = single_and_path(&p);
    let path = path.or_else(|| p.operands.first().cloned());
    let human_readable = p.opts.iter().any(|(c, _)| *c == 'h');
    let r = mnt::client_for(path.as_deref()).and_then(|c| {
        match c.and_then(|c| c.statfs().map_err(|e| mnt::errno(&e))) {
            Ok(s) => Ok(s),
            Err(e) => {
                eprintln!(
                    "statfs_more returned -1: error {} ({e})",
                    crate::strerror(e)
                );
                Err(libc::EIO)
            }
        }
    });
    match r {
        Ok(s) => {
            print!("{}", df_table(&s, human_readable));
            0
        }
        Err(e) => crate::failed(CMD, e),
    }
}

/// `scoutfs sync`.
pub fn sync_main(argv: &[String]) -> i32 {
    const CMD: &str = "sync";
    let p = match args::parse(
        CMD,
        "",
        "Commit the mount's transaction and wait until it is durable",
        &[PATH],
        argv,
    ) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    let (_, path) = single_and_path(&p);
    let path = path.or_else(|| p.operands.first().cloned());
    let r = mnt::client_for(path.as_deref()).and_then(|c| {
        c.and_then(|c| c.sync().map_err(|e| mnt::errno(&e)))
            .inspect_err(|&e| eprintln!("sync ioctl failed: {} ({e})", crate::strerror(e)))
    });
    match r {
        Ok(()) => 0,
        Err(e) => crate::failed(CMD, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_matches_the_original_layout() {
        let s = StatfsReply {
            total_meta_blocks: 262144,
            free_meta_blocks: 262000,
            reserved_meta_blocks: 1000,
            total_data_blocks: 4194304,
            free_data_blocks: 4194300,
            ..Default::default()
        };
        let t = df_table(&s, false);
        assert_eq!(
            t,
            "    Type  Size    Total  Used     Free  Use%  \n\
             MetaData  64KB   262144  1144   261000     0  \n    \
                 Data   4KB  4194304     4  4194300     0  \n"
        );
    }
}
