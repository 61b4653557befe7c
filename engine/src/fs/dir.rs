//! Names: lookup, creation, links, unlink, rmdir, rename, readdir, symlinks.
//!
//! Each link is three items with the same value (§1.5): DIRENT
//! `16/dir/12/name_hash/pos` (found by hash, then by comparing names), READDIR
//! `16/dir/16/pos` (iteration in creation order) and LINK_BACKREF
//! `16/target/20/dir/pos` (names of an inode, ".." of a directory, the
//! rename ancestry walk). Positions come from the parent's
//! `next_readdir_pos`, starting at 2; a directory's size is the total length
//! of its entries' names, so `size == 0` means empty. Directories count
//! their subdirectories in nlink (2 + subdirs), as Linux does.
//!
//! Guarantees: the three items of a link are created and deleted together
//! inside one hold, with the inode and parent changes they imply; a rename
//! is one hold. Touches items only through [`super::Fs`]'s handles.

use zerocopy::FromBytes;

use crate::lock::{rename_lock, LockMode};

use super::locking;
use super::{
    bytes_of, is_dir, is_lnk, Attr, Batch, Ctx, Fs, FsResult, Time, ROOT_INO, SYMLINK_MAX_BYTES,
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
};
use crate::format::hash::dirent_name_hash;
use crate::format::items::{
    decode_dirent, dirent_key, dt, link_backref_key, readdir_key, symlink_key, DirentHeader,
    NAME_MAX,
};
use crate::format::MAX_VAL_SIZE;

/// rename flags (Linux values). Only NOREPLACE is supported (§7.2).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

/// Deepest directory tree the rename ancestry walk follows before giving up
/// with ELOOP (a cycle would mean corruption).
const ANCESTRY_DEPTH_MAX: usize = 65536;

/// One readdir entry. `pos` is the entry's readdir position (the d_off the
/// contract promises); "." is position 0 and ".." position 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub pos: u64,
    pub ino: u64,
    /// scoutfs's entry type ([`dt`]); see [`linux_dtype`].
    pub ty: u8,
    pub name: Vec<u8>,
}

/// Linux `DT_*` for a scoutfs entry type.
pub fn linux_dtype(ty: u8) -> u8 {
    match ty {
        dt::FIFO => 1,
        dt::CHR => 2,
        dt::DIR => 4,
        dt::BLK => 6,
        dt::REG => 8,
        dt::LNK => 10,
        dt::SOCK => 12,
        dt::WHT => 14,
        _ => 0,
    }
}

/// scoutfs's entry type for a mode.
pub fn mode_dt(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFIFO => dt::FIFO,
        S_IFCHR => dt::CHR,
        S_IFDIR => dt::DIR,
        S_IFBLK => dt::BLK,
        S_IFLNK => dt::LNK,
        S_IFSOCK => dt::SOCK,
        _ => dt::REG,
    }
}

/// An entry found by name.
#[derive(Debug, Clone, Copy)]
struct Found {
    ino: u64,
    hash: u64,
    pos: u64,
    ty: u8,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(libc::ENOENT);
    }
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// A name that may be created or removed: not "." or "..".
fn check_new_name(name: &[u8]) -> FsResult<()> {
    check_name(name)?;
    if name == b"." || name == b".." {
        return Err(libc::EEXIST);
    }
    Ok(())
}

fn entry_val(ino: u64, hash: u64, pos: u64, ty: u8, name: &[u8]) -> Vec<u8> {
    let hdr = DirentHeader {
        ino: ino.into(),
        hash: hash.into(),
        pos: pos.into(),
        ty,
        pad: [0; 7],
    };
    let mut v = bytes_of(&hdr);
    v.extend_from_slice(name);
    v
}

fn name_len(name: &[u8]) -> u64 {
    name.len() as u64
}

impl Fs {
    async fn find_entry(&self, dir: u64, name: &[u8]) -> FsResult<Option<Found>> {
        let hash = dirent_name_hash(name);
        let last = dirent_key(dir, hash, u64::MAX);
        let mut first = dirent_key(dir, hash, 0);
        while let Some((k, v)) = self.items.next(first, last).await? {
            let (h, n) = decode_dirent(&v).map_err(|_| libc::EIO)?;
            if n == name {
                return Ok(Some(Found {
                    ino: h.ino.get(),
                    hash,
                    pos: k.third,
                    ty: h.ty,
                }));
            }
            if k.third == u64::MAX {
                break;
            }
            first = dirent_key(dir, hash, k.third + 1);
        }
        Ok(None)
    }

    async fn add_entry(&self, dir: u64, name: &[u8], ino: u64, ty: u8, pos: u64) -> FsResult<()> {
        let hash = dirent_name_hash(name);
        let val = entry_val(ino, hash, pos, ty, name);
        self.items
            .create(dirent_key(dir, hash, pos), val.clone())
            .await?;
        self.items
            .create(readdir_key(dir, pos), val.clone())
            .await?;
        self.items
            .create(link_backref_key(ino, dir, pos), val)
            .await
    }

    async fn del_entry(&self, dir: u64, f: &Found) -> FsResult<()> {
        self.items.delete(dirent_key(dir, f.hash, f.pos)).await?;
        self.items.delete(readdir_key(dir, f.pos)).await?;
        self.items.delete(link_backref_key(f.ino, dir, f.pos)).await
    }

    /// The directory holding `ino` (its first backref); root's is root.
    async fn parent_of(&self, ino: u64) -> FsResult<u64> {
        if ino == ROOT_INO {
            return Ok(ROOT_INO);
        }
        let first = link_backref_key(ino, 0, 0);
        let last = link_backref_key(ino, u64::MAX, u64::MAX);
        match self.items.next(first, last).await? {
            Some((k, _)) => Ok(k.second),
            None => Err(libc::ENOENT),
        }
    }

    /// Loads a directory into the batch: ENOTDIR if it is not one, ENOENT
    /// if it was removed.
    async fn load_dir(&self, b: &mut Batch<'_>, dir: u64) -> FsResult<()> {
        b.load(dir).await?;
        let d = b.inode(dir);
        if !is_dir(d.mode.get()) {
            return Err(libc::ENOTDIR);
        }
        if d.nlink.get() == 0 {
            return Err(libc::ENOENT);
        }
        Ok(())
    }

    /// Takes the next readdir position of a loaded directory.
    fn take_pos(b: &mut Batch<'_>, dir: u64) -> FsResult<u64> {
        let d = b.inode(dir);
        let pos = d.next_readdir_pos.get().max(2);
        if pos == u64::MAX {
            return Err(libc::ENOSPC);
        }
        d.next_readdir_pos = (pos + 1).into();
        Ok(pos)
    }

    fn touch_dir(b: &mut Batch<'_>, dir: u64, now: Time, size_delta: i64, nlink_delta: i32) {
        let d = b.inode(dir);
        d.size = d.size.get().wrapping_add_signed(size_delta).into();
        d.nlink = d.nlink.get().wrapping_add_signed(nlink_delta).into();
        d.mtime = now.to_disk();
        d.ctime = now.to_disk();
        b.dirty(dir);
    }

    /// The inode `name` names in `dir` right now ("." and ".." included),
    /// for [`Fs::lock_named`]; None when there is none.
    pub(crate) async fn resolve_name(&self, dir: u64, name: &[u8]) -> FsResult<Option<u64>> {
        match name {
            b"." => Ok(Some(dir)),
            b".." => match self.parent_of(dir).await {
                Ok(p) => Ok(Some(p)),
                Err(libc::ENOENT) => Ok(None),
                Err(e) => Err(e),
            },
            _ if check_name(name).is_err() => Ok(None),
            _ => Ok(self.find_entry(dir, name).await?.map(|f| f.ino)),
        }
    }

    /// The inode `name` names in `parent` ("." and ".." included).
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let _op = self.op_lock.lock().await;
        check_name(name)?;
        let _locks = self
            .lock_named(&[parent], &[(parent, name)], LockMode::Read)
            .await?;
        let p = self.read_inode(parent).await?;
        if !is_dir(p.mode.get()) {
            return Err(libc::ENOTDIR);
        }
        let ino = match name {
            b"." => parent,
            b".." => self.parent_of(parent).await?,
            _ => match self.find_entry(parent, name).await? {
                Some(f) => f.ino,
                None => return Err(libc::ENOENT),
            },
        };
        let i = self.read_inode(ino).await?;
        Ok(Attr::from_inode(ino, &i))
    }

    /// Creates an inode of any type (`mode` carries the type; none means a
    /// regular file) named `name` in `parent`.
    pub async fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        let mut mode = mode;
        if mode & S_IFMT == 0 {
            mode |= S_IFREG;
        }
        if is_lnk(mode) {
            return Err(libc::EINVAL);
        }
        let mode = (mode & S_IFMT) | (mode & !S_IFMT & 0o7777 & !ctx.umask);
        let _op = self.op_lock.lock().await;
        self.create_locked(ctx, parent, name, mode, rdev, None)
            .await
    }

    /// Creates a regular file (the frontend opens it with [`Fs::open`]).
    pub async fn create(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.mknod(ctx, parent, name, S_IFREG | (mode & !S_IFMT), 0)
            .await
    }

    pub async fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Attr> {
        self.mknod(ctx, parent, name, S_IFDIR | (mode & !S_IFMT), 0)
            .await
    }

    /// Creates a symlink: the target plus a NUL in ≤ 896 B chunks, size =
    /// target length + 1 (at most 4096).
    pub async fn symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return Err(libc::ENOENT);
        }
        if target.len() > SYMLINK_MAX_BYTES {
            return Err(libc::ENAMETOOLONG);
        }
        if target.contains(&0) {
            return Err(libc::EINVAL);
        }
        let _op = self.op_lock.lock().await;
        self.create_locked(ctx, parent, name, S_IFLNK | 0o777, 0, Some(target))
            .await
    }

    /// O_TMPFILE: a regular file with no name (nlink 0, orphan item at once),
    /// returned open; [`Fs::link`] may name it later.
    pub async fn tmpfile(&self, ctx: &Ctx, parent: u64, mode: u32) -> FsResult<Attr> {
        let mode = S_IFREG | (mode & 0o7777 & !ctx.umask);
        let _op = self.op_lock.lock().await;
        let ino = self.alloc_ino().await?;
        let _locks = self.lock(&[parent, ino], LockMode::Write).await?;
        let now = self.now();
        let hold = self.hold(true).await?;
        let mut b = Batch::new(self);
        self.load_dir(&mut b, parent).await?;
        // An unnamed inode counts against the INODE quota rules like a
        // named one (the original checks in its create hold).
        let parent_inode = *b.inode(parent);
        self.quota_check_create(ctx, &parent_inode).await?;
        self.new_inode(&mut b, ctx, ino, parent, (mode, 0), now)?;
        b.inode(ino).nlink = 0.into();
        b.store_all().await?;
        drop(hold);
        *self.state().opens.entry(ino).or_insert(0) += 1;
        let i = self.read_inode(ino).await?;
        Ok(Attr::from_inode(ino, &i))
    }

    async fn create_locked(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<Attr> {
        check_new_name(name)?;
        let ino = self.alloc_ino().await?;
        let _locks = self.lock(&[parent, ino], LockMode::Write).await?;
        self.quota_rules_locked().await?;
        let now = self.now();
        let hold = self.hold(true).await?;
        let mut b = Batch::new(self);
        self.load_dir(&mut b, parent).await?;
        if self.find_entry(parent, name).await?.is_some() {
            return Err(libc::EEXIST);
        }
        if is_dir(mode) && b.inode(parent).nlink.get() == u32::MAX {
            return Err(libc::EMLINK);
        }
        let parent_inode = *b.inode(parent);
        self.quota_check_create(ctx, &parent_inode).await?;
        let pos = Self::take_pos(&mut b, parent)?;
        self.new_inode(&mut b, ctx, ino, parent, (mode, rdev), now)?;
        if let Some(t) = target {
            let mut stored = t.to_vec();
            stored.push(0);
            for (nr, chunk) in stored.chunks(MAX_VAL_SIZE).enumerate() {
                self.items
                    .create(symlink_key(ino, nr as u8), chunk.to_vec())
                    .await?;
            }
            b.inode(ino).size = (stored.len() as u64).into();
        }
        self.add_entry(parent, name, ino, mode_dt(mode), pos)
            .await?;
        Self::touch_dir(
            &mut b,
            parent,
            now,
            name_len(name) as i64,
            if is_dir(mode) { 1 } else { 0 },
        );
        b.store_all().await?;
        drop(hold);
        let i = *b.inode(ino);
        Ok(Attr::from_inode(ino, &i))
    }

    /// A symlink's target (without the stored NUL).
    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let i = self.read_inode(ino).await?;
        if !is_lnk(i.mode.get()) {
            return Err(libc::EINVAL);
        }
        let size = i.size.get() as usize;
        if size == 0 || size > SYMLINK_MAX_BYTES + 1 {
            return Err(libc::EIO);
        }
        let mut out = Vec::with_capacity(size);
        for nr in 0..size.div_ceil(MAX_VAL_SIZE) {
            let chunk = self
                .items
                .lookup(symlink_key(ino, nr as u8))
                .await?
                .ok_or(libc::EIO)?;
            out.extend_from_slice(&chunk);
        }
        if out.len() != size || out.last() != Some(&0) {
            return Err(libc::EIO);
        }
        out.pop();
        Ok(out)
    }

    pub(crate) async fn delete_symlink_items(&self, ino: u64, size: u64) -> FsResult<()> {
        let chunks = (size as usize).div_ceil(MAX_VAL_SIZE).max(1);
        for nr in 0..chunks {
            self.items.delete_force(symlink_key(ino, nr as u8)).await?;
        }
        Ok(())
    }

    /// A new name for an existing inode (not a directory: EPERM).
    pub async fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let _op = self.op_lock.lock().await;
        check_new_name(name)?;
        let _locks = self.lock(&[ino, parent], LockMode::Write).await?;
        let now = self.now();
        let hold = self.hold(true).await?;
        let mut b = Batch::new(self);
        b.load(ino).await?;
        self.check_retention(b.inode(ino))?;
        let (mode, nlink) = {
            let i = b.inode(ino);
            (i.mode.get(), i.nlink.get())
        };
        if is_dir(mode) {
            return Err(libc::EPERM);
        }
        if nlink == 0 && self.open_count(ino) == 0 {
            return Err(libc::ENOENT);
        }
        if nlink == u32::MAX {
            return Err(libc::EMLINK);
        }
        self.load_dir(&mut b, parent).await?;
        if self.find_entry(parent, name).await?.is_some() {
            return Err(libc::EEXIST);
        }
        let pos = Self::take_pos(&mut b, parent)?;
        self.add_entry(parent, name, ino, mode_dt(mode), pos)
            .await?;
        Self::touch_dir(&mut b, parent, now, name_len(name) as i64, 0);
        let i = b.inode(ino);
        i.nlink = (nlink + 1).into();
        i.ctime = now.to_disk();
        b.dirty(ino);
        b.store_all().await?;
        drop(hold);
        let i = *b.inode(ino);
        Ok(Attr::from_inode(ino, &i))
    }

    /// Removes a non-directory name; the inode's items go when its last
    /// link and last open reference are gone.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false).await
    }

    /// Removes an empty directory (size 0).
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(libc::EINVAL);
        }
        if name == b".." {
            return Err(libc::ENOTEMPTY);
        }
        self.remove(parent, name, true).await
    }

    async fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> FsResult<()> {
        let _op = self.op_lock.lock().await;
        check_name(name)?;
        let _locks = self
            .lock_named(&[parent], &[(parent, name)], LockMode::Write)
            .await?;
        let now = self.now();
        let hold = self.hold(false).await?;
        let mut b = Batch::new(self);
        self.load_dir(&mut b, parent).await?;
        let f = self.find_entry(parent, name).await?.ok_or(libc::ENOENT)?;
        b.load(f.ino).await?;
        self.check_retention(b.inode(f.ino))?;
        let tmode = b.inode(f.ino).mode.get();
        match (want_dir, is_dir(tmode)) {
            (false, true) => return Err(libc::EISDIR),
            (true, false) => return Err(libc::ENOTDIR),
            (true, true) if b.inode(f.ino).size.get() != 0 => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.del_entry(parent, &f).await?;
        Self::touch_dir(
            &mut b,
            parent,
            now,
            -(name_len(name) as i64),
            if want_dir { -1 } else { 0 },
        );
        let t = b.inode(f.ino);
        let nlink = if want_dir {
            0
        } else {
            t.nlink.get().saturating_sub(1)
        };
        t.nlink = nlink.into();
        t.ctime = now.to_disk();
        b.dirty(f.ino);
        b.store_all().await?;
        drop(hold);
        if nlink == 0 && self.unused(f.ino).await? {
            self.delete_inode(f.ino).await?;
        }
        Ok(())
    }

    /// Renames `old_name` in `old_parent` to `new_name` in `new_parent`,
    /// replacing a compatible target unless `flags` has RENAME_NOREPLACE
    /// (the only flag: others are EINVAL). The moved entry gets a new
    /// position in the target directory.
    pub async fn rename(
        &self,
        old_parent: u64,
        old_name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let _op = self.op_lock.lock().await;
        check_name(old_name)?;
        check_name(new_name)?;
        if old_name == b"." || old_name == b".." || new_name == b"." || new_name == b".." {
            return Err(libc::EINVAL);
        }
        // Between directories: the global rename lock first (nobody holds
        // an inode lock while waiting for it), then the ancestry is made
        // current group by group before the inode locks are taken.
        let _rename = if old_parent != new_parent {
            let held = locking::lock_range(&self.locks, rename_lock(), LockMode::Write).await?;
            self.refresh_ancestry(new_parent).await?;
            Some(held)
        } else {
            None
        };
        let _locks = self
            .lock_named(
                &[old_parent, new_parent],
                &[(old_parent, old_name), (new_parent, new_name)],
                LockMode::Write,
            )
            .await?;
        let now = self.now();
        let hold = self.hold(true).await?;
        let mut b = Batch::new(self);
        self.load_dir(&mut b, old_parent).await?;
        self.load_dir(&mut b, new_parent).await?;
        let src = self
            .find_entry(old_parent, old_name)
            .await?
            .ok_or(libc::ENOENT)?;
        b.load(src.ino).await?;
        self.check_retention(b.inode(src.ino))?;
        let src_dir = is_dir(b.inode(src.ino).mode.get());
        let dst = self.find_entry(new_parent, new_name).await?;
        if let Some(d) = dst {
            if d.ino == src.ino {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            if flags & RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            b.load(d.ino).await?;
            self.check_retention(b.inode(d.ino))?;
            let dst_dir = is_dir(b.inode(d.ino).mode.get());
            match (src_dir, dst_dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if b.inode(d.ino).size.get() != 0 => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src_dir && old_parent != new_parent {
            // No moving a directory beneath itself: walk up from the target.
            let mut p = new_parent;
            let mut depth = 0;
            loop {
                if p == src.ino {
                    return Err(libc::EINVAL);
                }
                if p == ROOT_INO {
                    break;
                }
                depth += 1;
                if depth > ANCESTRY_DEPTH_MAX {
                    return Err(libc::ELOOP);
                }
                p = self.parent_of(p).await?;
            }
            if b.inode(new_parent).nlink.get() == u32::MAX && dst.is_none() {
                return Err(libc::EMLINK);
            }
        }

        let mut orphaned = None;
        if let Some(d) = dst {
            self.del_entry(new_parent, &d).await?;
            let dst_dir = is_dir(b.inode(d.ino).mode.get());
            Self::touch_dir(
                &mut b,
                new_parent,
                now,
                -(name_len(new_name) as i64),
                if dst_dir { -1 } else { 0 },
            );
            let t = b.inode(d.ino);
            let nlink = if dst_dir {
                0
            } else {
                t.nlink.get().saturating_sub(1)
            };
            t.nlink = nlink.into();
            t.ctime = now.to_disk();
            b.dirty(d.ino);
            if nlink == 0 {
                orphaned = Some(d.ino);
            }
        }
        let pos = Self::take_pos(&mut b, new_parent)?;
        self.add_entry(new_parent, new_name, src.ino, src.ty, pos)
            .await?;
        Self::touch_dir(&mut b, new_parent, now, name_len(new_name) as i64, 0);
        self.del_entry(old_parent, &src).await?;
        Self::touch_dir(&mut b, old_parent, now, -(name_len(old_name) as i64), 0);
        if src_dir && old_parent != new_parent {
            Self::touch_dir(&mut b, old_parent, now, 0, -1);
            Self::touch_dir(&mut b, new_parent, now, 0, 1);
        }
        let s = b.inode(src.ino);
        s.ctime = now.to_disk();
        b.dirty(src.ino);
        b.store_all().await?;
        drop(hold);
        if let Some(ino) = orphaned {
            if self.unused(ino).await? {
                self.delete_inode(ino).await?;
            }
        }
        Ok(())
    }

    /// Up to `max` entries of directory `ino` with position ≥ `start`, in
    /// position order: "." (0) and ".." (1) first, then the stored entries
    /// in creation order (positions from 2). Resume with the last returned
    /// position + 1.
    pub async fn readdir(&self, ino: u64, start: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let d = self.read_inode(ino).await?;
        if !is_dir(d.mode.get()) {
            return Err(libc::ENOTDIR);
        }
        let mut out = Vec::new();
        if start == 0 && out.len() < max {
            out.push(DirEntry {
                pos: 0,
                ino,
                ty: dt::DIR,
                name: b".".to_vec(),
            });
        }
        if start <= 1 && out.len() < max {
            let parent = self.parent_of(ino).await.unwrap_or(ino);
            out.push(DirEntry {
                pos: 1,
                ino: parent,
                ty: dt::DIR,
                name: b"..".to_vec(),
            });
        }
        let last = readdir_key(ino, u64::MAX);
        let mut first = readdir_key(ino, start.max(2));
        while out.len() < max {
            let Some((k, v)) = self.items.next(first, last).await? else {
                break;
            };
            let (h, name) = decode_dirent(&v).map_err(|_| libc::EIO)?;
            let pos = k.second;
            if h.pos.get() != pos {
                return Err(libc::EIO);
            }
            out.push(DirEntry {
                pos,
                ino: h.ino.get(),
                ty: h.ty,
                name: name.to_vec(),
            });
            if pos == u64::MAX {
                break;
            }
            first = readdir_key(ino, pos + 1);
        }
        Ok(out)
    }

    /// Reads the chain of parents from `dir` up to the root, each under a
    /// READ lock of its group taken and released in turn, so a directory
    /// moved by another mount is seen where it is now (that mount commits
    /// the move before we may read it). The caller holds the rename lock,
    /// which keeps the chain from changing afterwards.
    async fn refresh_ancestry(&self, dir: u64) -> FsResult<()> {
        let mut p = dir;
        for _ in 0..ANCESTRY_DEPTH_MAX {
            if p == ROOT_INO {
                return Ok(());
            }
            let _locks = self.lock(&[p], LockMode::Read).await?;
            p = match self.parent_of(p).await {
                Ok(next) => next,
                // Removed meanwhile: the rename finds out under its locks.
                Err(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
        }
        Ok(())
    }

    /// Every (directory, position, name) that links to `ino`, from its
    /// backrefs (for `ino-path` and `get-referring-entries`).
    pub async fn referring_entries(&self, ino: u64) -> FsResult<Vec<(u64, u64, Vec<u8>)>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        let mut out = Vec::new();
        let last = link_backref_key(ino, u64::MAX, u64::MAX);
        let mut first = link_backref_key(ino, 0, 0);
        while let Some((k, v)) = self.items.next(first, last).await? {
            let (h, name) = decode_dirent(&v).map_err(|_| libc::EIO)?;
            debug_assert_eq!(h.ino.get(), ino);
            out.push((k.second, k.third, name.to_vec()));
            first = k.inc();
        }
        Ok(out)
    }
}

/// Decodes the header of an entry value (for tests and tools).
pub fn entry_header(val: &[u8]) -> Option<DirentHeader> {
    DirentHeader::read_from_prefix(val).ok().map(|(h, _)| h)
}
