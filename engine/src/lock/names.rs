//! Lock names: the key ranges cluster locks cover, and the order in which a
//! caller takes several of them (reference §4.2).
//!
//! A lock is named on the wire by its start key, and that start key is also
//! the bloom key writers set in their log tree, so every range here must be
//! exactly the reference's: two mounts that disagree on a start key would
//! lock different names for the same items. `forest::lock_range` maps any
//! item key to the same ranges; a test here holds the two together.
//!
//! Ranges never overlap, so two different names never protect one item.
//!
//! Deadlock freedom across the cluster rests on every caller taking locks
//! in one global order: inode groups in ascending inode number (at most
//! [`LOCK_MAX_INODES`], duplicates collapsed), then index locks sorted by
//! start key, then the transaction hold. [`lock_order`] produces that order.

use crate::format::key::{zone, Key, ORPHAN_TYPE};

/// Inodes that share one inode-group lock.
pub const LOCK_INODE_GROUP_NR: u64 = 1024;
/// Seqs that share one seq-index lock.
pub const LOCK_SEQ_GROUP_NR: u64 = 1024;
/// Most inode locks one operation takes (rename: two dirs, two inodes).
pub const LOCK_MAX_INODES: usize = 4;
/// The type of the global rename lock key in the LOCK zone.
pub const RENAME_LOCK_TYPE: u8 = 4;

/// The closed key range `[start, end]` a lock covers; `start` is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockRange {
    pub start: Key,
    pub end: Key,
}

impl LockRange {
    pub fn contains(&self, key: &Key) -> bool {
        self.start <= *key && *key <= self.end
    }

    pub fn overlaps(&self, other: &LockRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

fn ones_in_zone(z: u8) -> Key {
    Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX)
}

/// The inode group of `ino`: every FS-zone item of 1024 consecutive inodes
/// (inode, xattrs, extents, symlink, a directory's entries; backrefs fall
/// under the target inode's group).
pub fn inode_lock(ino: u64) -> LockRange {
    let group = ino & !(LOCK_INODE_GROUP_NR - 1);
    LockRange {
        start: Key::new(zone::FS, group, 0, 0, 0, 0),
        end: Key::new(
            zone::FS,
            group | (LOCK_INODE_GROUP_NR - 1),
            u8::MAX,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        ),
    }
}

/// The seq-index group of `seq` for index type `ty` (META_SEQ or DATA_SEQ).
pub fn seq_index_lock(ty: u8, seq: u64) -> LockRange {
    let group = seq & !(LOCK_SEQ_GROUP_NR - 1);
    LockRange {
        start: Key::new(zone::INODE_INDEX, 0, ty, group, 0, 0),
        end: Key::new(
            zone::INODE_INDEX,
            0,
            ty,
            group | (LOCK_SEQ_GROUP_NR - 1),
            u64::MAX,
            u8::MAX,
        ),
    }
}

/// Every orphan item (not the whole ORPHAN zone).
pub fn orphan_lock() -> LockRange {
    LockRange {
        start: Key::new(zone::ORPHAN, 0, ORPHAN_TYPE, 0, 0, 0),
        end: Key::new(zone::ORPHAN, 0, ORPHAN_TYPE, u64::MAX, 0, 0),
    }
}

/// A whole zone: totl (12), indx (14) and quota (10) are locked this way.
pub fn zone_lock(z: u8) -> LockRange {
    LockRange {
        start: Key::new(z, 0, 0, 0, 0, 0),
        end: ones_in_zone(z),
    }
}

pub fn totl_lock() -> LockRange {
    zone_lock(zone::XATTR_TOTL)
}

pub fn indx_lock() -> LockRange {
    zone_lock(zone::XATTR_INDX)
}

pub fn quota_lock() -> LockRange {
    zone_lock(zone::QUOTA)
}

/// The one global key taken WRITE when renaming between directories.
pub fn rename_lock() -> LockRange {
    let k = Key::new(zone::LOCK, 0, RENAME_LOCK_TYPE, 0, 0, 0);
    LockRange { start: k, end: k }
}

/// Sorts the locks an operation needs into the global acquisition order and
/// collapses duplicates (inodes of one group share a lock). Inode groups
/// (FS zone) come first in inode order, then everything else by start key:
/// the reference takes inode locks before index locks even though the
/// index zones sort lower.
///
/// Panics if more than [`LOCK_MAX_INODES`] distinct inode groups are asked
/// for: no operation needs more, and callers must not build unbounded lock
/// sets.
pub fn lock_order(mut ranges: Vec<LockRange>) -> Vec<LockRange> {
    ranges.sort_by_key(|r| (r.start.zone != zone::FS, r.start));
    ranges.dedup_by_key(|r| r.start);
    let inodes = ranges.iter().filter(|r| r.start.zone == zone::FS).count();
    assert!(
        inodes <= LOCK_MAX_INODES,
        "{inodes} inode locks in one operation (max {LOCK_MAX_INODES})"
    );
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::lock_range;
    use crate::format::key::{fs_type, index_type};

    #[test]
    fn inode_groups_cover_1024_inodes_and_every_fs_type() {
        let r = inode_lock(5000);
        assert_eq!(r.start, Key::new(zone::FS, 4096, 0, 0, 0, 0));
        assert_eq!(r, inode_lock(4096));
        assert_eq!(r, inode_lock(5119));
        assert_ne!(r, inode_lock(5120));
        for ty in [
            fs_type::INODE,
            fs_type::XATTR,
            fs_type::DIRENT,
            fs_type::READDIR,
            fs_type::LINK_BACKREF,
            fs_type::SYMLINK,
            fs_type::DATA_EXTENT,
        ] {
            assert!(r.contains(&Key::new(zone::FS, 5000, ty, u64::MAX, u64::MAX, u8::MAX)));
        }
        assert!(!r.overlaps(&inode_lock(5120)));
        assert!(!r.overlaps(&inode_lock(4095)));
    }

    #[test]
    fn names_agree_with_the_forest_read_ranges() {
        // The forest tests bloom bits with lock_range(key).0 and writers set
        // them with our start keys: both must be the same key.
        let cases = [
            (
                Key::new(zone::FS, 7, fs_type::XATTR, 9, 9, 0),
                inode_lock(7),
            ),
            (
                Key::new(zone::INODE_INDEX, 0, index_type::META_SEQ, 3000, 42, 0),
                seq_index_lock(index_type::META_SEQ, 3000),
            ),
            (
                Key::new(zone::INODE_INDEX, 0, index_type::DATA_SEQ, 1, 1, 0),
                seq_index_lock(index_type::DATA_SEQ, 1),
            ),
            (
                Key::new(zone::ORPHAN, 0, ORPHAN_TYPE, 99, 0, 0),
                orphan_lock(),
            ),
            (Key::new(zone::XATTR_TOTL, 1, 0, 2, 3, 0), totl_lock()),
            (Key::new(zone::XATTR_INDX, 1 << 56, 0, 0, 0, 0), indx_lock()),
            (Key::new(zone::QUOTA, 0, 4, 77, 0, 0), quota_lock()),
        ];
        for (key, want) in cases {
            let (s, e) = lock_range(&key);
            assert_eq!(LockRange { start: s, end: e }, want, "key {key}");
            assert!(want.contains(&key));
        }
    }

    #[test]
    fn seq_groups_do_not_overlap() {
        let a = seq_index_lock(index_type::META_SEQ, 0);
        let b = seq_index_lock(index_type::META_SEQ, 1024);
        let c = seq_index_lock(index_type::DATA_SEQ, 0);
        assert!(!a.overlaps(&b) && !a.overlaps(&c) && !b.overlaps(&c));
        assert_eq!(a.end.second, 1023);
    }

    #[test]
    fn orphan_and_rename_ranges_are_exact() {
        let o = orphan_lock();
        assert_eq!(o.start, Key::new(8, 0, 4, 0, 0, 0));
        assert_eq!(o.end, Key::new(8, 0, 4, u64::MAX, 0, 0));
        let r = rename_lock();
        assert_eq!(r.start, Key::new(20, 0, 4, 0, 0, 0));
        assert_eq!(r.start, r.end);
    }

    #[test]
    fn order_puts_inodes_first_ascending_and_collapses_groups() {
        let got = lock_order(vec![
            totl_lock(),
            inode_lock(3000),
            seq_index_lock(index_type::META_SEQ, 5),
            inode_lock(10),
            inode_lock(20),
            orphan_lock(),
            inode_lock(3001),
        ]);
        assert_eq!(
            got,
            vec![
                inode_lock(0),
                inode_lock(2048),
                seq_index_lock(index_type::META_SEQ, 0),
                orphan_lock(),
                totl_lock(),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "inode locks in one operation")]
    fn order_refuses_more_than_four_inode_groups() {
        lock_order(
            (0..5)
                .map(|g| inode_lock(g * LOCK_INODE_GROUP_NR))
                .collect(),
        );
    }
}
