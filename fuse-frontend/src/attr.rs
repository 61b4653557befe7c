//! Conversions between the engine's attributes and the FUSE ABI's.
//!
//! `st_ino` is the scoutfs inode number (the FUSE node id too), blocks are
//! 512-byte units counting offline blocks (cli-contract), and the preferred
//! I/O size is the 4 KiB data block. Touches nothing but types.

use std::time::Duration;

use engine::fs::{Attr, SetAttr, SetTime, Time, BLOCK_BYTES};
use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{Entry, SetattrValid};

/// The kernel's `stat64` for an inode's attributes.
pub fn stat_of(a: &Attr) -> stat64 {
    // SAFETY: stat64 is a plain C struct of integers; all zeroes is a valid
    // value of every field.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = a.ino;
    st.st_mode = a.mode;
    st.st_nlink = a.nlink.into();
    st.st_uid = a.uid;
    st.st_gid = a.gid;
    st.st_rdev = a.rdev.into();
    st.st_size = a.size as i64;
    st.st_blocks = a.blocks as i64;
    st.st_blksize = BLOCK_BYTES as i64;
    st.st_atime = a.atime.sec as i64;
    st.st_atime_nsec = a.atime.nsec.into();
    st.st_mtime = a.mtime.sec as i64;
    st.st_mtime_nsec = a.mtime.nsec.into();
    st.st_ctime = a.ctime.sec as i64;
    st.st_ctime_nsec = a.ctime.nsec.into();
    st
}

/// An entry reply for `a` whose attributes and name the kernel may keep
/// for `timeout`.
pub fn entry_of(a: &Attr, timeout: Duration) -> Entry {
    Entry {
        inode: a.ino,
        // Inode numbers are never reused (§7.1): one generation suffices.
        generation: 0,
        attr: stat_of(a),
        attr_flags: 0,
        attr_timeout: timeout,
        entry_timeout: timeout,
    }
}

fn time_of(sec: i64, nsec: i64) -> Time {
    Time {
        // Times before 1970 are not representable on disk: clamp.
        sec: sec.max(0) as u64,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// The engine's setattr for a FUSE SETATTR (the kernel already applied
/// the permission rules of `setattr_prepare` under `default_permissions`).
pub fn setattr_of(st: &stat64, valid: SetattrValid) -> SetAttr {
    let mut set = SetAttr::default();
    if valid.contains(SetattrValid::MODE) {
        set.mode = Some(st.st_mode & 0o7777);
    }
    if valid.contains(SetattrValid::UID) {
        set.uid = Some(st.st_uid);
    }
    if valid.contains(SetattrValid::GID) {
        set.gid = Some(st.st_gid);
    }
    if valid.contains(SetattrValid::SIZE) {
        set.size = Some(st.st_size as u64);
    }
    if valid.contains(SetattrValid::ATIME_NOW) {
        set.atime = Some(SetTime::Now);
    } else if valid.contains(SetattrValid::ATIME) {
        set.atime = Some(SetTime::At(time_of(st.st_atime, st.st_atime_nsec)));
    }
    if valid.contains(SetattrValid::MTIME_NOW) {
        set.mtime = Some(SetTime::Now);
    } else if valid.contains(SetattrValid::MTIME) {
        set.mtime = Some(SetTime::At(time_of(st.st_mtime, st.st_mtime_nsec)));
    }
    if valid.contains(SetattrValid::CTIME) {
        set.ctime = Some(time_of(st.st_ctime, st.st_ctime_nsec));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_carries_scoutfs_numbers() {
        let a = Attr {
            ino: 1025,
            size: 5000,
            blocks: 16,
            mode: 0o100644,
            nlink: 1,
            uid: 7,
            gid: 8,
            mtime: Time { sec: 3, nsec: 4 },
            ..Attr::default()
        };
        let st = stat_of(&a);
        assert_eq!(
            (st.st_ino, st.st_size, st.st_blocks, st.st_blksize),
            (1025, 5000, 16, 4096)
        );
        assert_eq!((st.st_mtime, st.st_mtime_nsec), (3, 4));
        let e = entry_of(&a, Duration::ZERO);
        assert_eq!(
            (e.inode, e.attr_timeout, e.entry_timeout),
            (1025, Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn setattr_maps_only_valid_fields() {
        // SAFETY: all zeroes is a valid stat64.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = 0o104755;
        st.st_size = 9;
        st.st_atime = 5;
        let set = setattr_of(
            &st,
            SetattrValid::MODE | SetattrValid::ATIME | SetattrValid::MTIME_NOW,
        );
        assert_eq!(set.mode, Some(0o4755));
        assert_eq!(set.size, None);
        assert_eq!(set.atime, Some(SetTime::At(Time { sec: 5, nsec: 0 })));
        assert_eq!(set.mtime, Some(SetTime::Now));
    }
}
