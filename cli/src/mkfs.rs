//! `scoutfs mkfs`: writes a new filesystem on a metadata and a data device.
//!
//! Guarantees: every check (arguments, device sizes, existing filesystems)
//! runs before the first write, so a refused mkfs writes nothing. The
//! blocks and their order are [`engine::mkfs::format_volume`]'s (the
//! original mkfs's layout); this command owns the policy and every message.

use std::net::Ipv4Addr;
use std::path::Path;

use engine::format::superblock::uuid_string;
use engine::format::*;
use engine::mkfs::{format_volume, MkfsError, MkfsOptions};

use crate::args::{self, OptSpec};
use crate::dev::{self, BlockDevice, FileDevice};

const CMD: &str = "mkfs";

const SPECS: &[OptSpec] = &[
    OptSpec {
        short: 'Q',
        long: "quorum-slot",
        takes_arg: true,
        help: "Specify quorum slot addresses [Required]",
    },
    OptSpec {
        short: 'f',
        long: "force",
        takes_arg: false,
        help: "Overwrite existing data on block devices",
    },
    OptSpec {
        short: 'A',
        long: "allow-small-size",
        takes_arg: false,
        help: "Allow specified meta/data devices less than minimum, still warns",
    },
    OptSpec {
        short: 'm',
        long: "max-meta-size",
        takes_arg: true,
        help: "Use a size less than the base metadata device size (bytes or KMGTP units)",
    },
    OptSpec {
        short: 'd',
        long: "max-data-size",
        takes_arg: true,
        help: "Use a size less than the base data device size (bytes or KMGTP units)",
    },
    OptSpec {
        short: 'z',
        long: "data-alloc-zone-blocks",
        takes_arg: true,
        help: "Divide data device into block zones so each mounts writes to a zone (4KB blocks)",
    },
    OptSpec {
        short: 'V',
        long: "format-version",
        takes_arg: true,
        help: "Specify a format version within supported range, (1-2, default 2)",
    },
];

/// Smallest zone: one mount's data fill target (4 GiB of 4 KiB blocks).
const DATA_FILL_TARGET_BLOCKS: u64 = (4u64 << 30) >> SM_BLOCK_SHIFT;

/// Parsed mkfs arguments.
#[derive(Debug, Clone)]
pub struct MkfsArgs {
    pub meta: String,
    pub data: String,
    pub slots: [Option<(Ipv4Addr, u16)>; QUORUM_MAX_SLOTS],
    pub max_meta_size: u64,
    pub max_data_size: u64,
    pub zone_blocks: u64,
    pub fmt_vers: u64,
    pub force: bool,
    pub allow_small: bool,
}

/// Parses "NR,ADDR,PORT" the way the original does (messages on stdout).
fn parse_slot(arg: &str) -> Result<(usize, Ipv4Addr, u16), String> {
    let parts: Vec<&str> = arg.splitn(3, ',').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "failed to parse all three NR,ADDR,PORT tokens in quorum slot '{arg}'"
        ));
    }
    let nr: i64 = parts[0].parse().map_err(|_| {
        format!("failed to parse all three NR,ADDR,PORT tokens in quorum slot '{arg}'")
    })?;
    let port: i64 = parts[2]
        .parse()
        .map_err(|_| format!("extra unparsed trailing characters in quorum slot '{arg}'"))?;
    if !(0..QUORUM_MAX_SLOTS as i64).contains(&nr) {
        return Err(format!(
            "invalid nr '{nr}' in quorum slot '{arg}', must be between 0 and {}",
            QUORUM_MAX_SLOTS - 1
        ));
    }
    if port <= 0 || port > u16::MAX as i64 {
        return Err(format!(
            "invalid ipv4 port '{port}' in quorum slot '{arg}', must be between 1 and {}",
            u16::MAX
        ));
    }
    let addr: Ipv4Addr = parts[1]
        .parse()
        .map_err(|_| format!("invalid ipv4 address '{}' in quorum slot '{arg}'", parts[1]))?;
    if u32::from(addr) == 0 || u32::from(addr) == u32::MAX {
        return Err(format!(
            "invalid ipv4 address '{}' in quorum slot '{arg}'",
            parts[1]
        ));
    }
    Ok((nr as usize, addr, port as u16))
}

/// Parses the command line; Err is the exit code to return.
pub fn parse_args(argv: &[String]) -> Result<MkfsArgs, i32> {
    let p = args::parse(
        CMD,
        "META-DEVICE DATA-DEVICE",
        "Initialize a new ScoutFS filesystem",
        SPECS,
        argv,
    )
    .map_err(|s| args::stop_code(CMD, s))?;
    let mut a = MkfsArgs {
        meta: String::new(),
        data: String::new(),
        slots: [None; QUORUM_MAX_SLOTS],
        max_meta_size: 0,
        max_data_size: 0,
        zone_blocks: 0,
        fmt_vers: FORMAT_VERSION_MAX,
        force: false,
        allow_small: false,
    };
    let mut nr_slots = 0;
    for (c, v) in &p.opts {
        let v = v.clone().unwrap_or_default();
        match c {
            'Q' => {
                let (nr, addr, port) = parse_slot(&v).map_err(|m| {
                    println!("{m}");
                    crate::failed(CMD, libc::EINVAL)
                })?;
                if a.slots[nr].is_some() {
                    return Err(args::usage_error(
                        CMD,
                        &format!("Quorum slot {nr} already specified before slot '{v}'\n"),
                    ));
                }
                a.slots[nr] = Some((addr, port));
                nr_slots += 1;
            }
            'f' => a.force = true,
            'A' => a.allow_small = true,
            'm' | 'd' => {
                let n = args::parse_human(&v).map_err(|m| {
                    eprintln!("{m}");
                    crate::failed(CMD, libc::EINVAL)
                })?;
                let (unit, what) = if *c == 'm' {
                    (LG_BLOCK_SIZE as u64, "Meta")
                } else {
                    (SM_BLOCK_SIZE as u64, "Data")
                };
                let r = n / unit * unit;
                if r != n {
                    eprintln!("{what} dev size {n} rounded down to {r} bytes");
                }
                if *c == 'm' {
                    a.max_meta_size = r;
                } else {
                    a.max_data_size = r;
                }
            }
            'z' => {
                a.zone_blocks = args::parse_u64(&v).map_err(|m| {
                    eprintln!("{m}");
                    crate::failed(CMD, libc::EINVAL)
                })?;
                if a.zone_blocks == 0 {
                    return Err(args::usage_error(
                        CMD,
                        "must provide non-zero data-alloc-zone-blocks",
                    ));
                }
            }
            'V' => {
                a.fmt_vers = args::parse_u64(&v).map_err(|m| {
                    eprintln!("{m}");
                    crate::failed(CMD, libc::EINVAL)
                })?;
                if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&a.fmt_vers) {
                    return Err(args::usage_error(
                        CMD,
                        &format!(
                            "format-version {} is outside supported range of {FORMAT_VERSION_MIN}-{FORMAT_VERSION_MAX}",
                            a.fmt_vers
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    if p.operands.len() > 2 {
        return Err(args::usage_error(CMD, "more than two arguments given"));
    }
    if nr_slots == 0 {
        return Err(args::usage_error(
            CMD,
            "must specify at least one quorum slot with --quorum-slot|-Q",
        ));
    }
    let mut ops = p.operands.into_iter();
    a.meta = ops
        .next()
        .ok_or_else(|| args::usage_error(CMD, "no metadata device argument given"))?;
    a.data = ops
        .next()
        .ok_or_else(|| args::usage_error(CMD, "no data device argument given"))?;
    Ok(a)
}

/// "%.2f%s" of the original's float arithmetic.
pub(crate) fn size_parts(nr: u64, unit: u64) -> (String, &'static str) {
    const SUFFIXES: [&str; 9] = ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut x = nr as f32 * unit as f32;
    let mut i = 0;
    while x >= 1024.0 && i < SUFFIXES.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    (format!("{:.2}", x as f64), SUFFIXES[i])
}

fn base_size(bytes: u64) -> String {
    let (n, s) = size_parts(bytes, 1);
    format!("{n}{s}")
}

fn size_fmt(nr: u64, unit: u64) -> String {
    let (n, s) = size_parts(nr, unit);
    format!("{nr} ({n} {s})")
}

/// Applies the max size and minimum size rules; Err is an errno.
fn limit_size(dev: &dyn BlockDevice, max: u64, allow_small: bool, what: &str) -> Result<u64, i32> {
    let mut size = dev.size_bytes();
    if max != 0 {
        if size > max {
            println!(
                "Limiting use of {} {what} device to {}",
                base_size(size),
                base_size(max)
            );
            size = max;
        } else if size < max {
            println!(
                "Device size limit of {} for {what} device is greater than {} available, ignored.",
                base_size(max),
                base_size(size)
            );
        }
    }
    if size < MKFS_MIN_DEVICE_BYTES {
        eprintln!(
            "{} too small for min {} {what} device{}",
            base_size(size),
            base_size(MKFS_MIN_DEVICE_BYTES),
            if allow_small {
                ", allowing with -A"
            } else {
                ""
            }
        );
        if !allow_small {
            return Err(libc::EINVAL);
        }
    }
    Ok(size)
}

/// True if the device holds a super block with a valid magic and crc.
pub fn has_scoutfs_super(dev: &dyn BlockDevice) -> bool {
    match dev::read_sm(dev, SUPER_BLKNO) {
        Ok(b) => block::check_fixed_block(&b, MAGIC_SUPER, SUPER_BLKNO).is_ok(),
        Err(_) => false,
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens a device exclusively for the whole run; a path that is neither a
/// regular file nor a block device gets the original's message.
fn open_dev(path: &str) -> Result<FileDevice, i32> {
    dev::open_exclusive(Path::new(path)).map_err(|e| {
        let errno = io_errno(&e);
        if errno == libc::ENODEV {
            eprintln!("path isn't regular or device file '{path}'");
            return libc::EINVAL;
        }
        eprintln!(
            "failed to open '{path}': {} ({errno})",
            crate::strerror(errno)
        );
        errno
    })
}

/// Runs mkfs with parsed arguments; Err is an errno.
pub fn do_mkfs(a: &MkfsArgs) -> Result<(), i32> {
    let meta = open_dev(&a.meta)?;
    if !a.force && has_scoutfs_super(&meta) {
        eprintln!(
            "meta device '{}' already contains a scoutfs filesystem, use -f to overwrite",
            a.meta
        );
        return Err(libc::EEXIST);
    }
    let data = open_dev(&a.data)?;
    if !a.force && has_scoutfs_super(&data) {
        eprintln!(
            "data device '{}' already contains a scoutfs filesystem, use -f to overwrite",
            a.data
        );
        return Err(libc::EEXIST);
    }
    let meta_size = limit_size(&meta, a.max_meta_size, a.allow_small, "meta")?;
    let data_size = limit_size(&data, a.max_data_size, a.allow_small, "data")?;
    let total_data = data_size >> SM_BLOCK_SHIFT;
    if a.zone_blocks != 0 {
        let max_zones = log_trees::DATA_ALLOC_MAX_ZONES as u64;
        let msg = if a.zone_blocks < DATA_FILL_TARGET_BLOCKS {
            Some(format!(
                "must be at least {DATA_FILL_TARGET_BLOCKS} mount data allocation target blocks"
            ))
        } else if a.zone_blocks < total_data / max_zones {
            Some(format!(
                "must be greater than {} blocks which results in max {max_zones} zones",
                total_data / max_zones
            ))
        } else if a.zone_blocks > total_data {
            Some(format!(
                "must be at most {total_data} total data device blocks"
            ))
        } else {
            None
        };
        if let Some(m) = msg {
            eprintln!(
                "setting data_alloc_zone_blocks to '{}' failed, {m}",
                a.zone_blocks
            );
            return Err(libc::EINVAL);
        }
    }
    let opts = MkfsOptions {
        quorum_slots: a.slots,
        fmt_vers: a.fmt_vers,
        data_alloc_zone_blocks: a.zone_blocks,
        meta_size_bytes: meta_size,
        data_size_bytes: data_size,
        ..MkfsOptions::default()
    };
    let summary = format_volume(&meta, &data, &opts).map_err(|e| match e {
        MkfsError::Invalid(m) => {
            eprintln!("{m}");
            libc::EINVAL
        }
        MkfsError::Io(e) => {
            let errno = io_errno(&e);
            eprintln!("write failed: {} ({errno})", crate::strerror(errno));
            errno
        }
    })?;
    let fsid = summary.fsid;

    let sb = &summary.sb;
    println!("Created scoutfs filesystem:");
    println!("  meta device path:       {}", a.meta);
    println!("  data device path:       {}", a.data);
    println!("  fsid:                   {fsid:x}");
    println!("  uuid:                   {}", uuid_string(&sb.uuid));
    println!("  format version:         {}", a.fmt_vers);
    println!(
        "  64KB metadata blocks:   {}",
        size_fmt(sb.total_meta_blocks.get(), LG_BLOCK_SIZE as u64)
    );
    println!(
        "  4KB data blocks:        {}",
        size_fmt(sb.total_data_blocks.get(), SM_BLOCK_SIZE as u64)
    );
    println!("  quorum config version:  {}", sb.qconf.version.get());
    let mut first = true;
    for (i, addr) in sb.qconf.active_slots() {
        let lead = if first {
            "  quorum slots:           "
        } else {
            "                          "
        };
        println!("{lead}{i}: {addr}");
        first = false;
    }
    Ok(())
}

/// Entry point: `scoutfs mkfs …`.
pub fn main(argv: &[String]) -> i32 {
    let a = match parse_args(argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match do_mkfs(&a) {
        Ok(()) => 0,
        Err(errno) => crate::failed(CMD, errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_the_original() {
        assert_eq!(base_size(512 << 20), "512.00MB");
        assert_eq!(base_size(64 << 30), "64.00GB");
        assert_eq!(size_fmt(8192, 65536), "8192 (512.00 MB)");
        assert_eq!(size_fmt(262144, 4096), "262144 (1.00 GB)");
    }

    #[test]
    fn slots_parse() {
        assert_eq!(
            parse_slot("0,127.0.0.1,19700"),
            Ok((0, Ipv4Addr::new(127, 0, 0, 1), 19700))
        );
        assert!(parse_slot("15,127.0.0.1,1").is_err());
        assert!(parse_slot("0,::1,1").is_err());
        assert!(parse_slot("0,1.2.3.4,0").is_err());
        assert!(parse_slot("0,1.2.3.4").is_err());
    }
}
