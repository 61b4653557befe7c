//! `mount -o remount,OPTIONS DIR` of a scoutfs mount (docs/fuse.md,
//! docs/decisions.md "Remount").
//!
//! mount(8) runs `mount.fuse.scoutfs SRC DIR -o OPTIONS` with the mount's
//! current VFS options, `remount`, FUSE's own (`user_id=`, `max_read=`,
//! …, `helper=`) and the new ones (`mount.scoutfs` when `-t scoutfs` is
//! given). What can change:
//! * the VFS flags (`ro`/`rw`, `nosuid`, `nodev`, `noexec`, the atime
//!   family, `sync`, `dirsync`, `lazytime`): applied with
//!   `mount(2, MS_REMOUNT)`; the kernel refuses `ro` while a file is open
//!   for writing (EBUSY);
//! * nothing of scoutfs's own options: the daemon hands them to the engine
//!   at start. A value equal to the mount's (fstab lines come back on a
//!   remount) is accepted, a different one is an error naming the option
//!   and the mounted value; values out of range or unknown options fail as
//!   at mount time. The mounted values come from the status tree
//!   (`mount_options/`), `acl` from the root's ACL xattr (EOPNOTSUPP under
//!   `noacl`); `tcp_keepalive_timeout_ms` has no record, so it is refused.
//!
//! Nothing changes unless every option is acceptable. Touches the status
//! tree (read), the kernel (mount(2), getxattr) and nothing of the daemon.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::control::sock;
use crate::options::ScoutfsOptions;

/// Options libmount passes that belong to the FUSE connection or to
/// mount(8) itself: not ours to check.
fn is_fuse_or_libmount(name: &str) -> bool {
    matches!(
        name,
        "remount"
            | "user_id"
            | "group_id"
            | "default_permissions"
            | "allow_other"
            | "max_read"
            | "blksize"
            | "fd"
            | "rootmode"
            | "helper"
            | "subtype"
            | "fsname"
    )
}

/// The MS_* flag of a VFS option, and whether the option sets it.
fn vfs_flag(name: &str) -> Option<(libc::c_ulong, bool)> {
    Some(match name {
        "ro" => (libc::MS_RDONLY, true),
        "rw" => (libc::MS_RDONLY, false),
        "nosuid" => (libc::MS_NOSUID, true),
        "suid" => (libc::MS_NOSUID, false),
        "nodev" => (libc::MS_NODEV, true),
        "dev" => (libc::MS_NODEV, false),
        "noexec" => (libc::MS_NOEXEC, true),
        "exec" => (libc::MS_NOEXEC, false),
        "noatime" => (libc::MS_NOATIME, true),
        "atime" => (libc::MS_NOATIME, false),
        "nodiratime" => (libc::MS_NODIRATIME, true),
        "diratime" => (libc::MS_NODIRATIME, false),
        "relatime" => (libc::MS_RELATIME, true),
        "norelatime" => (libc::MS_RELATIME, false),
        "strictatime" => (libc::MS_STRICTATIME, true),
        "nostrictatime" => (libc::MS_STRICTATIME, false),
        "sync" => (libc::MS_SYNCHRONOUS, true),
        "async" => (libc::MS_SYNCHRONOUS, false),
        "dirsync" => (libc::MS_DIRSYNC, true),
        "lazytime" => (libc::MS_LAZYTIME, true),
        "nolazytime" => (libc::MS_LAZYTIME, false),
        _ => return None,
    })
}

/// Splits a remount's options: the MS_* flags (later options win) and the
/// rest for the scoutfs parser.
pub fn split(opts: &str) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut rest = Vec::new();
    for opt in opts.split(',').filter(|s| !s.is_empty()) {
        let name = opt.split_once('=').map_or(opt, |(n, _)| n);
        if let Some((f, on)) = vfs_flag(opt) {
            if on {
                flags |= f;
            } else {
                flags &= !f;
            }
        } else if !is_fuse_or_libmount(name) {
            rest.push(opt);
        }
    }
    (flags, rest.join(","))
}

/// The mount's current scoutfs options: the status tree of the daemon
/// serving `dir`, `acl` from the root.
fn mounted_options(dir: &Path) -> Result<ScoutfsOptions, String> {
    let not_ours = || format!("'{}' is not a scoutfs mount", dir.display());
    let ident = sock::ident_of_path(dir)
        .map_err(|e| format!("'{}': {e}", dir.display()))?
        .ok_or_else(not_ours)?;
    let opts_dir = sock::run_dir().join(ident).join("mount_options");
    let mut text = Vec::new();
    let entries = ScoutfsOptions::new(Default::default()).status_entries();
    for (name, _) in entries {
        let v = std::fs::read_to_string(opts_dir.join(name))
            .map_err(|e| format!("reading the mount's {name}: {e}"))?;
        let v = v.trim_end_matches('\n');
        if name == "quorum_slot_nr" && v == "-1" {
            continue;
        }
        text.push(format!("{name}={v}"));
    }
    let (mut o, _) =
        ScoutfsOptions::parse_over(ScoutfsOptions::new(Default::default()), &text.join(","))
            .map_err(|e| format!("the mount's recorded options: {e}"))?;
    o.acl = acl_on(dir);
    Ok(o)
}

/// Whether the mount on `dir` serves POSIX ACLs (`noacl`: EOPNOTSUPP).
fn acl_on(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: a valid path and name; a NULL buffer of size 0 asks for the
    // value's size only.
    let r = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    !(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// How the option `name` of `o` reads, for messages.
fn shown(o: &ScoutfsOptions, name: &str) -> String {
    if name == "acl" {
        return if o.acl { "acl" } else { "noacl" }.into();
    }
    let v = o
        .status_entries()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or_default();
    format!("{name}={v}")
}

/// Remounts `dir` with `opts` (see the module comment).
pub fn remount(dir: &Path, opts: &str) -> Result<(), String> {
    let (flags, rest) = split(opts);
    let cur = mounted_options(dir)?;
    let (new, given) = ScoutfsOptions::parse_over(cur.clone(), &rest)?;
    for name in given {
        if name == "tcp_keepalive_timeout_ms" {
            return Err(
                "option 'tcp_keepalive_timeout_ms' cannot be changed by remount".to_string(),
            );
        }
        if shown(&new, name) != shown(&cur, name) {
            return Err(format!(
                "option '{}' cannot be changed by remount (mounted with {})",
                shown(&new, name),
                shown(&cur, name)
            ));
        }
    }
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("'{}': NUL in the path", dir.display()))?;
    // SAFETY: a valid NUL-terminated target; the kernel ignores source,
    // type and data on a remount of a FUSE mount.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("remounting '{}': {e}", dir.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_vfs_fuse_and_scoutfs_options() {
        let (f, rest) = split(
            "rw,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,\
             max_read=1052672,ro,nosuid,lock_idle_count=50,helper=fuse.scoutfs",
        );
        assert_eq!(f, libc::MS_RDONLY | libc::MS_RELATIME | libc::MS_NOSUID);
        assert_eq!(rest, "lock_idle_count=50");
        let (f, rest) = split("ro,rw,noacl");
        assert_eq!(f, 0);
        assert_eq!(rest, "noacl");
    }
}
