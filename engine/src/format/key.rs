//! Item keys.
//!
//! On disk a key is 32 bytes in *memory* order (first, second, third, fourth,
//! zone, type, pad) but compares in the order zone, first, type, second,
//! third, fourth. [`Key`] holds the fields natively with that comparison
//! order derived; [`DiskKey`] is the byte layout. Pad bytes must be zero
//! because keys are hashed as raw bytes.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{assert_layout, FormatError};

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct DiskKey {
    pub first: U64,
    pub second: U64,
    pub third: U64,
    pub fourth: u8,
    pub zone: u8,
    pub ty: u8,
    pub pad: [u8; 5],
}
assert_layout!(DiskKey, 32, first @ 0, second @ 8, third @ 16, fourth @ 24, zone @ 25, ty @ 26, pad @ 27);

/// A key in comparison order. Field order matters: `Ord` is derived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub zone: u8,
    pub first: u64,
    pub ty: u8,
    pub second: u64,
    pub third: u64,
    pub fourth: u8,
}

pub mod zone {
    pub const INODE_INDEX: u8 = 4;
    pub const ORPHAN: u8 = 8;
    pub const QUOTA: u8 = 10;
    pub const XATTR_TOTL: u8 = 12;
    pub const XATTR_INDX: u8 = 14;
    pub const FS: u8 = 16;
    pub const LOCK: u8 = 20;
    pub const LOG_TREES: u8 = 24;
    pub const MOUNTED_CLIENT: u8 = 28;
    pub const SRCH: u8 = 32;
    pub const FREE_EXTENT_BLKNO: u8 = 36;
    pub const FREE_EXTENT_ORDER: u8 = 40;
    pub const LOG_MERGE_STATUS: u8 = 44;
    pub const LOG_MERGE_RANGE: u8 = 48;
    pub const LOG_MERGE_REQUEST: u8 = 52;
    pub const LOG_MERGE_COMPLETE: u8 = 56;
    pub const LOG_MERGE_FREEING: u8 = 60;
}

/// Item types within the FS zone.
pub mod fs_type {
    pub const INODE: u8 = 4;
    pub const XATTR: u8 = 8;
    pub const DIRENT: u8 = 12;
    pub const READDIR: u8 = 16;
    pub const LINK_BACKREF: u8 = 20;
    pub const SYMLINK: u8 = 24;
    pub const DATA_EXTENT: u8 = 28;
}

/// Types within the INODE_INDEX zone.
pub mod index_type {
    pub const META_SEQ: u8 = 4;
    pub const DATA_SEQ: u8 = 8;
}

/// Types within the SRCH zone.
pub mod srch_type {
    pub const LOG: u8 = 4;
    pub const BLOCKS: u8 = 8;
    pub const PENDING: u8 = 12;
    pub const BUSY: u8 = 16;
}

pub const ORPHAN_TYPE: u8 = 4;
pub const QUOTA_RULE_TYPE: u8 = 4;

impl Key {
    pub const MIN: Key = Key {
        zone: 0,
        first: 0,
        ty: 0,
        second: 0,
        third: 0,
        fourth: 0,
    };
    pub const MAX: Key = Key {
        zone: u8::MAX,
        first: u64::MAX,
        ty: u8::MAX,
        second: u64::MAX,
        third: u64::MAX,
        fourth: u8::MAX,
    };

    pub const fn new(zone: u8, first: u64, ty: u8, second: u64, third: u64, fourth: u8) -> Self {
        Key {
            zone,
            first,
            ty,
            second,
            third,
            fourth,
        }
    }

    pub fn to_disk(&self) -> DiskKey {
        DiskKey {
            first: self.first.into(),
            second: self.second.into(),
            third: self.third.into(),
            fourth: self.fourth,
            zone: self.zone,
            ty: self.ty,
            pad: [0; 5],
        }
    }

    /// Decodes a stored key; non-zero pad bytes are corruption.
    pub fn from_disk(dk: &DiskKey) -> Result<Self, FormatError> {
        if dk.pad != [0; 5] {
            return Err(FormatError::Corrupt(format!(
                "key pad bytes {:02x?} not zero",
                dk.pad
            )));
        }
        Ok(Self::from_disk_unchecked(dk))
    }

    /// Decodes without looking at the pad (for diagnostics of bad keys).
    pub fn from_disk_unchecked(dk: &DiskKey) -> Self {
        Key {
            zone: dk.zone,
            first: dk.first.get(),
            ty: dk.ty,
            second: dk.second.get(),
            third: dk.third.get(),
            fourth: dk.fourth,
        }
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.to_disk().as_bytes());
        out
    }

    /// The next key in comparison order, saturating at [`Key::MAX`]: the key
    /// is one 216-bit number (zone 8 | first 64 | type 8 | second 64 |
    /// third 64 | fourth 8).
    pub fn inc(&self) -> Key {
        let mut k = *self;
        let (f, c) = k.fourth.overflowing_add(1);
        k.fourth = f;
        if !c {
            return k;
        }
        let (t, c) = k.third.overflowing_add(1);
        k.third = t;
        if !c {
            return k;
        }
        let (s, c) = k.second.overflowing_add(1);
        k.second = s;
        if !c {
            return k;
        }
        let (ty, c) = k.ty.overflowing_add(1);
        k.ty = ty;
        if !c {
            return k;
        }
        let (fi, c) = k.first.overflowing_add(1);
        k.first = fi;
        if !c {
            return k;
        }
        let (z, c) = k.zone.overflowing_add(1);
        k.zone = z;
        if c {
            return Key::MAX;
        }
        k
    }

    /// The previous key in comparison order, saturating at [`Key::MIN`].
    pub fn dec(&self) -> Key {
        let mut k = *self;
        let (f, b) = k.fourth.overflowing_sub(1);
        k.fourth = f;
        if !b {
            return k;
        }
        let (t, b) = k.third.overflowing_sub(1);
        k.third = t;
        if !b {
            return k;
        }
        let (s, b) = k.second.overflowing_sub(1);
        k.second = s;
        if !b {
            return k;
        }
        let (ty, b) = k.ty.overflowing_sub(1);
        k.ty = ty;
        if !b {
            return k;
        }
        let (fi, b) = k.first.overflowing_sub(1);
        k.first = fi;
        if !b {
            return k;
        }
        let (z, b) = k.zone.overflowing_sub(1);
        k.zone = z;
        if b {
            return Key::MIN;
        }
        k
    }
}

impl std::fmt::Display for Key {
    /// The print tool's form: `zone.first.type.second.third.fourth`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}.{}.{}",
            self.zone, self.first, self.ty, self.second, self.third, self.fourth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_order_is_not_memory_order() {
        // first is at byte 0 but zone dominates the comparison.
        let a = Key::new(4, u64::MAX, 0, 0, 0, 0);
        let b = Key::new(16, 0, 0, 0, 0, 0);
        assert!(a < b);
        assert!(a.to_bytes() > b.to_bytes() || a.to_bytes()[0] == 0xff);
        // type sorts before second.
        assert!(Key::new(16, 1, 4, 9, 0, 0) < Key::new(16, 1, 8, 0, 0, 0));
    }

    #[test]
    fn inc_and_dec_carry_across_fields() {
        let k = Key::new(16, 1, 4, u64::MAX, u64::MAX, 0xff);
        assert_eq!(k.inc(), Key::new(16, 1, 5, 0, 0, 0));
        assert_eq!(k.inc().dec(), k);
        assert_eq!(Key::MAX.inc(), Key::MAX);
        assert_eq!(Key::MIN.dec(), Key::MIN);
        assert_eq!(
            Key::new(1, 0, 0, 0, 0, 0).dec(),
            Key::new(0, u64::MAX, 0xff, u64::MAX, u64::MAX, 0xff)
        );
    }

    #[test]
    fn disk_round_trip_and_pad_check() {
        let k = Key::new(36, 4611, 0, 3581, 7, 9);
        let dk = k.to_disk();
        assert_eq!(Key::from_disk(&dk).unwrap(), k);
        let mut bad = dk;
        bad.pad[2] = 1;
        assert!(Key::from_disk(&bad).is_err());
    }
}
