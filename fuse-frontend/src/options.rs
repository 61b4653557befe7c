//! scoutfs mount options (reference §10, `scoutfs.5`): parsing and
//! validation for `mount -t scoutfs -o …`, and the values the status tree
//! shows under `mount_options/`.
//!
//! Ranges are the original's; a value out of range, an unknown option or
//! a missing `metadev_path` is an error naming the option. Options that
//! mount(8) passes for every filesystem (rw, relatime, nosuid, …) are
//! accepted and ignored here: FUSE mounts get their VFS flags from
//! [`crate::session`]. Only `metadev_path` (and `quorum_slot_nr`, checked
//! against the volume's quorum slots by the helper) change what a
//! single-node daemon does today; the rest are validated and recorded.

use std::path::PathBuf;

/// Validated options of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoutfsOptions {
    pub metadev_path: PathBuf,
    pub quorum_slot_nr: Option<u32>,
    pub acl: bool,
    pub data_prealloc_blocks: u64,
    pub data_prealloc_contig_only: bool,
    pub ino_alloc_per_lock: u64,
    pub lock_idle_count: u64,
    pub log_merge_wait_timeout_ms: u64,
    pub orphan_scan_delay_ms: u64,
    pub quorum_heartbeat_timeout_ms: u64,
    pub tcp_keepalive_timeout_ms: u64,
}

/// Quorum slots a volume has (0..14).
pub const QUORUM_SLOTS: u32 = 15;

impl ScoutfsOptions {
    /// The defaults, with `metadev_path` given.
    pub fn new(metadev_path: PathBuf) -> ScoutfsOptions {
        ScoutfsOptions {
            metadev_path,
            quorum_slot_nr: None,
            acl: true,
            data_prealloc_blocks: 2048,
            data_prealloc_contig_only: true,
            ino_alloc_per_lock: 1024,
            lock_idle_count: 10000,
            log_merge_wait_timeout_ms: 500,
            orphan_scan_delay_ms: 10000,
            quorum_heartbeat_timeout_ms: 10000,
            tcp_keepalive_timeout_ms: 24000,
        }
    }

    /// Parses a `-o` string.
    pub fn parse(opts: &str) -> Result<ScoutfsOptions, String> {
        let (o, given) = ScoutfsOptions::parse_over(ScoutfsOptions::new(PathBuf::new()), opts)?;
        if !given.contains(&"metadev_path") {
            return Err("the metadev_path=PATH mount option is required".into());
        }
        Ok(o)
    }

    /// Applies the scoutfs options of `opts` to `base`, checked as at
    /// mount time (a remount's new values): the result and the names of
    /// the scoutfs options given (`acl` for acl/noacl).
    pub fn parse_over(
        base: ScoutfsOptions,
        opts: &str,
    ) -> Result<(ScoutfsOptions, Vec<&'static str>), String> {
        let mut o = base;
        let mut given = Vec::new();
        for opt in opts.split(',').filter(|s| !s.is_empty()) {
            let (name, val) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (opt, None),
            };
            let num = |lo: u64, hi: u64| -> Result<u64, String> {
                let v = val.ok_or_else(|| format!("option '{name}' needs a value"))?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid value '{v}' for option '{name}'"))?;
                if n < lo || n > hi {
                    return Err(format!("{name} value {n} is out of range ({lo}..={hi})"));
                }
                Ok(n)
            };
            let known = match name {
                "metadev_path" => {
                    let v = val
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| "option 'metadev_path' needs a device path".to_string())?;
                    o.metadev_path = PathBuf::from(v);
                    "metadev_path"
                }
                "quorum_slot_nr" => {
                    o.quorum_slot_nr = Some(num(0, QUORUM_SLOTS as u64 - 1)? as u32);
                    "quorum_slot_nr"
                }
                "acl" if val.is_none() => {
                    o.acl = true;
                    "acl"
                }
                "noacl" if val.is_none() => {
                    o.acl = false;
                    "acl"
                }
                "data_prealloc_blocks" => {
                    o.data_prealloc_blocks = num(0, u64::MAX)?;
                    "data_prealloc_blocks"
                }
                "data_prealloc_contig_only" => {
                    o.data_prealloc_contig_only = num(0, 1)? == 1;
                    "data_prealloc_contig_only"
                }
                "ino_alloc_per_lock" => {
                    o.ino_alloc_per_lock = num(1, 1024)?;
                    "ino_alloc_per_lock"
                }
                "lock_idle_count" => {
                    o.lock_idle_count = num(32, 100_000)?;
                    "lock_idle_count"
                }
                "log_merge_wait_timeout_ms" => {
                    o.log_merge_wait_timeout_ms = num(100, 60_000)?;
                    "log_merge_wait_timeout_ms"
                }
                "orphan_scan_delay_ms" => {
                    o.orphan_scan_delay_ms = num(100, 60_000)?;
                    "orphan_scan_delay_ms"
                }
                "quorum_heartbeat_timeout_ms" => {
                    o.quorum_heartbeat_timeout_ms = num(2000, 60_000)?;
                    "quorum_heartbeat_timeout_ms"
                }
                "tcp_keepalive_timeout_ms" => {
                    o.tcp_keepalive_timeout_ms = num(3001, u64::MAX)?;
                    "tcp_keepalive_timeout_ms"
                }
                _ if val.is_none() && is_vfs_option(name) => continue,
                _ if name.starts_with("x-") => continue,
                _ => return Err(format!("unknown mount option '{opt}'")),
            };
            if !given.contains(&known) {
                given.push(known);
            }
        }
        Ok((o, given))
    }

    /// `(file name, value)` for the status tree's `mount_options/`, as the
    /// original's sysfs shows them (no files for acl and
    /// tcp_keepalive_timeout_ms; quorum_slot_nr -1 when unset).
    pub fn status_entries(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "data_prealloc_blocks",
                self.data_prealloc_blocks.to_string(),
            ),
            (
                "data_prealloc_contig_only",
                u8::from(self.data_prealloc_contig_only).to_string(),
            ),
            ("ino_alloc_per_lock", self.ino_alloc_per_lock.to_string()),
            ("lock_idle_count", self.lock_idle_count.to_string()),
            (
                "log_merge_wait_timeout_ms",
                self.log_merge_wait_timeout_ms.to_string(),
            ),
            (
                "metadev_path",
                self.metadev_path.to_string_lossy().into_owned(),
            ),
            (
                "orphan_scan_delay_ms",
                self.orphan_scan_delay_ms.to_string(),
            ),
            (
                "quorum_heartbeat_timeout_ms",
                self.quorum_heartbeat_timeout_ms.to_string(),
            ),
            (
                "quorum_slot_nr",
                self.quorum_slot_nr
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-1".into()),
            ),
        ]
    }
}

/// Options mount(8) may pass that are not scoutfs's own.
fn is_vfs_option(name: &str) -> bool {
    matches!(
        name,
        "rw" | "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "atime"
            | "noatime"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "nostrictatime"
            | "lazytime"
            | "nolazytime"
            | "diratime"
            | "nodiratime"
            | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "async"
            | "sync"
            | "dirsync"
            | "loud"
            | "silent"
            | "iversion"
            | "noiversion"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let o = ScoutfsOptions::parse("rw,metadev_path=/dev/m,quorum_slot_nr=0,noacl").unwrap();
        assert_eq!(o.metadev_path, PathBuf::from("/dev/m"));
        assert_eq!(o.quorum_slot_nr, Some(0));
        assert!(!o.acl);
        assert!(ScoutfsOptions::parse("quorum_slot_nr=0")
            .unwrap_err()
            .contains("metadev_path"));
        assert!(ScoutfsOptions::parse("metadev_path=/m,quorum_slot_nr=15")
            .unwrap_err()
            .contains("out of range"));
        assert!(ScoutfsOptions::parse("metadev_path=/m,bogus=1")
            .unwrap_err()
            .contains("unknown mount option 'bogus=1'"));
        assert!(ScoutfsOptions::parse("metadev_path=/m,lock_idle_count=x").is_err());
        assert!(ScoutfsOptions::parse("metadev_path=/m,tcp_keepalive_timeout_ms=3000").is_err());
        assert!(ScoutfsOptions::parse("metadev_path=").is_err());
        let e = ScoutfsOptions::new("/m".into()).status_entries();
        assert!(e.contains(&("quorum_slot_nr", "-1".to_string())));
    }
}
