//! Read-only queries the `scoutfs` utilities make of a mount (what the
//! original serves through its ioctls): index walks, the names that refer
//! to an inode, paths from the root, the allocated inodes of a group.
//!
//! Every query reads through the mount's [`Items`](crate::item::api::Items)
//! under the `Fs` operation lock, so it never sees an operation's item group
//! half-done. What a caller sees of *committed* state is the caller's
//! business: the index walks return what the item cache holds between the
//! given bounds, and a control-socket server that wants committed state
//! only commits first and clamps `last` to the server's last stable seq
//! (reference §8.1).
//!
//! Every result is bounded by the caller's `max`; each query returns enough
//! to resume after its last entry.
//!
//! Touches only [`crate::item::api`] and [`crate::format`] encodings.

use super::dir::linux_dtype;
use super::{Fs, FsResult, ROOT_INO};
use crate::format::items::{
    data_seq_key, decode_dirent, inode_key, link_backref_key, meta_seq_key,
};
use crate::format::key::fs_type;
use crate::format::Key;
use crate::lock::LockMode;

/// Inode numbers per lock group (`SCOUTFS_LOCK_INODE_GROUP_NR`): what
/// `GET_ALLOCATED_INOS` looks through.
pub const INODE_GROUP_NR: u64 = 1024;
/// Directory levels [`Fs::ino_path`] climbs before it gives up (a loop in
/// the backrefs would be corruption).
pub const PATH_DEPTH_MAX: usize = 4096;
/// Longest path [`Fs::ino_path`] builds (Linux `PATH_MAX` with its NUL).
pub const PATH_BYTES_MAX: usize = 4095;

/// Which inode index a walk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    MetaSeq,
    DataSeq,
}

impl IndexKind {
    fn key(self, seq: u64, ino: u64) -> Key {
        match self {
            IndexKind::MetaSeq => meta_seq_key(seq, ino),
            IndexKind::DataSeq => data_seq_key(seq, ino),
        }
    }
}

/// An entry that links to an inode: its directory, readdir position,
/// Linux `DT_*` type and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    pub dir: u64,
    pub pos: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// One path of [`Fs::ino_path`]: the final component's directory and
/// position (the cursor to resume after) and the path from the root,
/// components joined by `/`, without a leading `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InoPath {
    pub dir: u64,
    pub pos: u64,
    pub path: Vec<u8>,
}

impl Fs {
    /// Up to `max` `(seq, ino)` entries of an inode index with
    /// `first <= (seq, ino) <= last`, in key order.
    pub async fn walk_index(
        &self,
        kind: IndexKind,
        first: (u64, u64),
        last: (u64, u64),
        max: usize,
    ) -> FsResult<Vec<(u64, u64)>> {
        let _op = self.op_lock.lock().await;
        let mut out = Vec::new();
        if first > last {
            return Ok(out);
        }
        let end = kind.key(last.0, last.1);
        let mut from = kind.key(first.0, first.1);
        // Index items are written blind by every mount and read here
        // without a lock: what this mount cached of them may be older
        // than other mounts' commits.
        self.items.forget(from, end);
        while out.len() < max {
            let Some((k, _)) = self.items.next(from, end).await? else {
                break;
            };
            debug_assert!(k <= end);
            out.push((k.second, k.third));
            if k == end {
                break;
            }
            from = k.inc();
        }
        Ok(out)
    }

    /// Up to `max` entries linking to `ino` whose (dir, pos) is at or after
    /// `from`, in (dir, pos) order, from the inode's backrefs.
    pub async fn referring_dirents(
        &self,
        ino: u64,
        from: (u64, u64),
        max: usize,
    ) -> FsResult<Vec<RefEntry>> {
        let _op = self.op_lock.lock().await;
        self.locked_backrefs(ino, from, max).await
    }

    /// [`Fs::backrefs`] under a READ lock of `ino`'s group.
    async fn locked_backrefs(
        &self,
        ino: u64,
        from: (u64, u64),
        max: usize,
    ) -> FsResult<Vec<RefEntry>> {
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        self.backrefs(ino, from, max).await
    }

    async fn backrefs(&self, ino: u64, from: (u64, u64), max: usize) -> FsResult<Vec<RefEntry>> {
        let mut out = Vec::new();
        let last = link_backref_key(ino, u64::MAX, u64::MAX);
        let mut first = link_backref_key(ino, from.0, from.1);
        while out.len() < max {
            let Some((k, v)) = self.items.next(first, last).await? else {
                break;
            };
            let (h, name) = decode_dirent(&v).map_err(|_| libc::EIO)?;
            if h.ino.get() != ino {
                return Err(libc::EIO);
            }
            out.push(RefEntry {
                dir: k.second,
                pos: k.third,
                dtype: linux_dtype(h.ty),
                name: name.to_vec(),
            });
            if k == last {
                break;
            }
            first = k.inc();
        }
        Ok(out)
    }

    /// The path to `ino` through its first link at or after `from` (a
    /// `(dir, pos)` cursor), built by climbing each directory's first
    /// backref to the root; `None` when no link is left. The root itself
    /// has the empty path. ENAMETOOLONG past [`PATH_BYTES_MAX`].
    pub async fn ino_path(&self, ino: u64, from: (u64, u64)) -> FsResult<Option<InoPath>> {
        let _op = self.op_lock.lock().await;
        if ino == ROOT_INO {
            return Ok((from == (0, 0)).then(|| InoPath {
                dir: ROOT_INO,
                pos: 0,
                path: Vec::new(),
            }));
        }
        let Some(last) = self.locked_backrefs(ino, from, 1).await?.pop() else {
            return Ok(None);
        };
        let mut parts = vec![last.name.clone()];
        let mut dir = last.dir;
        let mut depth = 0;
        while dir != ROOT_INO {
            depth += 1;
            if depth > PATH_DEPTH_MAX {
                return Err(libc::ELOOP);
            }
            let Some(up) = self.locked_backrefs(dir, (0, 0), 1).await?.pop() else {
                // The directory lost its last name while we climbed.
                return Err(libc::ENOENT);
            };
            parts.push(up.name);
            dir = up.dir;
        }
        parts.reverse();
        let path = parts.join(&b'/');
        if path.len() > PATH_BYTES_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        Ok(Some(InoPath {
            dir: last.dir,
            pos: last.pos,
            path,
        }))
    }

    /// Up to `max` inode numbers that have an inode item, from `start` to
    /// the end of its lock group of [`INODE_GROUP_NR`] inodes.
    pub async fn allocated_inos(&self, start: u64, max: usize) -> FsResult<Vec<u64>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[start], LockMode::Read).await?;
        let group_last = start | (INODE_GROUP_NR - 1);
        let end = inode_key(group_last);
        let mut out = Vec::new();
        let mut from = inode_key(start);
        while out.len() < max {
            let Some((k, _)) = self.items.next(from, end).await? else {
                break;
            };
            // Keys of an inode's other items sort after its inode item:
            // skip to the next inode number.
            if k.ty == fs_type::INODE {
                out.push(k.first);
            }
            if k.first >= group_last {
                break;
            }
            from = inode_key(k.first + 1);
        }
        Ok(out)
    }
}
