//! Item invariants: value sizes per item type, and the cross-item rules of
//! the merged fs view (fs_root plus every log tree's items, the highest seq
//! of a key wins, deletion items hide the key).
//!
//! Cross-item rules: inode ⇔ meta_seq (and data_seq for regular files) index
//! items; orphan item ⇔ nlink == 0; dirent ⇔ readdir ⇔ link backref with
//! equal values and a consistent hash/pos; a dirent's target inode exists;
//! mapped file extents are claimed as data blocks for coverage.

use zerocopy::FromBytes;

use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::hash::dirent_name_hash;
use crate::format::items::{self, DataExtent, DirentHeader, Inode};
use crate::format::key::{fs_type, index_type, zone, Key};
use crate::format::superblock::BtreeRoot;
use crate::format::MAX_VAL_SIZE;

use super::{exact, Checker, FaultKind, Space};

/// Size of a dirent value's header; the name follows it.
const DIRENT_HEADER_BYTES: usize = 32;
/// Longest name a dirent holds.
const NAME_MAX_BYTES: usize = 255;

impl Checker<'_> {
    /// Walks an fs item tree, checking values and merging the items into
    /// the fs view.
    pub(super) fn fs_tree(&mut self, path: &str, root: &BtreeRoot) {
        self.btree(path, root, &mut |c, ip, k, seq, flags, v| {
            if flags & ITEM_FLAG_DELETION == 0 {
                c.fs_value(ip, k, v);
            }
            let replace = c.fs_items.get(k).is_none_or(|e| seq >= e.0);
            if replace {
                c.fs_items
                    .insert(*k, (seq, flags, v.to_vec(), ip.to_string()));
            }
        });
    }

    /// Per-item value checks.
    fn fs_value(&mut self, ip: &str, k: &Key, v: &[u8]) {
        let ok = match (k.zone, k.ty) {
            (zone::INODE_INDEX, index_type::META_SEQ | index_type::DATA_SEQ) => v.is_empty(),
            (zone::ORPHAN, _) => v.is_empty(),
            (zone::QUOTA, _) => v.len() == 48,
            (zone::XATTR_TOTL, _) => v.len() == 16,
            (zone::XATTR_INDX, _) => v.is_empty(),
            (zone::FS, fs_type::INODE) => Inode::decode(v, self.fmt_vers).is_ok(),
            (zone::FS, fs_type::XATTR) => !v.is_empty() && v.len() <= MAX_VAL_SIZE,
            (zone::FS, fs_type::DIRENT | fs_type::READDIR | fs_type::LINK_BACKREF) => {
                (DIRENT_HEADER_BYTES + 1..=DIRENT_HEADER_BYTES + NAME_MAX_BYTES).contains(&v.len())
            }
            (zone::FS, fs_type::SYMLINK) => !v.is_empty() && v.len() <= MAX_VAL_SIZE,
            (zone::FS, fs_type::DATA_EXTENT) => v.len() == 16,
            _ => {
                self.fault(FaultKind::Item, ip, format!("unknown item {k}"));
                return;
            }
        };
        if !ok {
            let msg = format!("bad item {k} with a {} byte value", v.len());
            self.fault(FaultKind::Item, ip, msg);
        }
    }

    /// Cross-item invariants over the merged fs items.
    pub(super) fn fs_cross(&mut self) {
        self.tick("fs items");
        let items = std::mem::take(&mut self.fs_items);
        let live = |k: &Key| items.get(k).filter(|e| e.1 & ITEM_FLAG_DELETION == 0);
        let inode = |ino: u64| {
            live(&items::inode_key(ino)).and_then(|e| Inode::decode(&e.2, self.fmt_vers).ok())
        };
        let mut faults: Vec<(&str, String)> = Vec::new();
        let mut extents = Vec::new();
        for (k, (_, flags, v, ip)) in &items {
            if flags & ITEM_FLAG_DELETION != 0 {
                continue;
            }
            let ip = ip.as_str();
            match (k.zone, k.ty) {
                (zone::FS, fs_type::INODE) => {
                    let Ok(ino) = Inode::decode(v, self.fmt_vers) else {
                        continue;
                    };
                    let n = k.first;
                    if live(&items::meta_seq_key(ino.meta_seq.get(), n)).is_none() {
                        faults.push((ip, format!("inode {n} has no meta_seq index item")));
                    }
                    let is_reg = ino.mode.get() & 0o170000 == 0o100000;
                    if is_reg && live(&items::data_seq_key(ino.data_seq.get(), n)).is_none() {
                        faults.push((ip, format!("inode {n} has no data_seq index item")));
                    }
                    let orphan = live(&items::orphan_key(n)).is_some();
                    if (ino.nlink.get() == 0) != orphan {
                        let msg = format!(
                            "inode {n} nlink {} but orphan item {}",
                            ino.nlink.get(),
                            if orphan { "present" } else { "missing" }
                        );
                        faults.push((ip, msg));
                    }
                }
                (zone::INODE_INDEX, t) => {
                    let ok = inode(k.third).is_some_and(|i| {
                        if t == index_type::META_SEQ {
                            i.meta_seq.get() == k.second
                        } else {
                            i.data_seq.get() == k.second
                        }
                    });
                    if !ok {
                        faults.push((ip, format!("index item {k} matches no inode")));
                    }
                }
                (zone::ORPHAN, _) => {
                    let unlinked = inode(k.second).is_some_and(|i| i.nlink.get() == 0);
                    if !unlinked {
                        faults.push((ip, format!("orphan item {k} without an unlinked inode")));
                    }
                }
                (zone::FS, fs_type::DIRENT) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    let name = &v[DIRENT_HEADER_BYTES..];
                    let (dir, pos) = (k.first, k.third);
                    if d.hash.get() != k.second
                        || d.pos.get() != pos
                        || dirent_name_hash(name) != k.second
                    {
                        faults.push((ip, format!("dirent {k} hash/pos disagree with its value")));
                    }
                    if live(&items::readdir_key(dir, pos)).is_none_or(|e| e.2 != *v) {
                        faults.push((ip, format!("dirent {k} has no matching readdir item")));
                    }
                    if live(&items::link_backref_key(d.ino.get(), dir, pos))
                        .is_none_or(|e| e.2 != *v)
                    {
                        faults.push((ip, format!("dirent {k} has no matching link backref")));
                    }
                    if live(&items::inode_key(d.ino.get())).is_none() {
                        let msg = format!("dirent {k} names missing inode {}", d.ino.get());
                        faults.push((ip, msg));
                    }
                }
                (zone::FS, fs_type::READDIR) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    if live(&items::dirent_key(k.first, d.hash.get(), k.second)).is_none() {
                        faults.push((ip, format!("readdir {k} has no dirent")));
                    }
                }
                (zone::FS, fs_type::LINK_BACKREF) => {
                    let Ok((d, _)) = DirentHeader::read_from_prefix(v) else {
                        continue;
                    };
                    if live(&items::dirent_key(k.second, d.hash.get(), k.third)).is_none() {
                        faults.push((ip, format!("link backref {k} has no dirent")));
                    }
                }
                (zone::FS, fs_type::DATA_EXTENT) => {
                    let Some(d) = exact::<DataExtent>(v) else {
                        continue;
                    };
                    let (len, blkno) = (k.third, d.blkno.get());
                    if len == 0 || len - 1 > k.second {
                        faults.push((ip, format!("extent {k} has a bad length")));
                    } else if blkno != 0 {
                        extents.push((blkno, len));
                    }
                }
                _ => {}
            }
        }
        let faults: Vec<(String, String)> = faults
            .into_iter()
            .map(|(ip, msg)| (ip.to_string(), msg))
            .collect();
        for (ip, msg) in faults {
            self.fault(FaultKind::Item, ip, msg);
        }
        let who = self.name("file extents");
        for (b, l) in extents {
            self.claim(Space::Data, b, l, who);
        }
    }
}
