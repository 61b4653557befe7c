//! fuse-backend-rs's `FileSystem` over [`engine::fs::Fs`].
//!
//! Each method runs on a FUSE worker thread: it builds the engine call as
//! a future and hands it to the engine executor through the [`Bridge`],
//! then turns the result into the FUSE reply. The policy of ARCHITECTURE
//! §2.6 for one node:
//!
//! * Node ids and `st_ino` are scoutfs inode numbers (root = 1).
//! * No `WRITEBACK_CACHE`: the daemon owns sizes and times. Regular files
//!   open with `FOPEN_DIRECT_IO`, so every read and write reaches the
//!   engine; with `FUSE_DIRECT_IO_ALLOW_MMAP` they may still be mapped
//!   shared (the kernel writes mapped pages back through WRITE and
//!   flushes them before a direct read of the range). No KEEP_CACHE or
//!   CACHE_DIR.
//! * LOOKUP and GETATTR replies carry [`FuseOptions::attr_timeout`]
//!   (LOOKUP and READDIRPLUS attributes 0 for an inode the kernel has no
//!   lookup on yet, see `notify::entry_attr_timeout`; READDIRPLUS entries
//!   0, see `notify::readdirplus_entry_timeout`);
//!   CREATE, MKNOD, MKDIR, SYMLINK, LINK and SETATTR replies carry 0.
//! * A write on an O_APPEND file lands at the engine's end of file, not at
//!   the kernel's offset.
//! * Lookup counts: every entry reply adds one to the inode's count and the
//!   first one takes an [`Fs::grab`] reference, so an unlinked inode's items
//!   live until the kernel FORGETs it (and until its last open handle is
//!   released).
//! * Permissions: mounted with `default_permissions`, the kernel checks
//!   mode bits, sticky directories and the chown/chmod/utimes rules of
//!   `setattr_prepare` with the caller's credentials (supplementary groups
//!   included); new inodes are owned by the request's uid/gid, setgid
//!   directories pass on their group. With the `acl` option (default) the
//!   kernel also enforces POSIX ACLs and we apply the umask and keep mode
//!   and ACLs in step ([`crate::acl`]); with `noacl` the kernel applies
//!   the umask and the ACL xattrs are EOPNOTSUPP.
//!   `scoutfs.` xattr tags need uid 0 (standing in for CAP_SYS_ADMIN).
//!
//! Touches `engine::fs` (through the bridge) and the server link (STATFS).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::format::net::{Cmd, NetStatfs};
use engine::fs::{linux_dtype, Ctx, Fs, WriteFlags, BLOCK_BYTES};
use engine::link::ServerLink;

use crate::acl;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use zerocopy::FromBytes;

use crate::attr::{entry_of, setattr_of, stat_of};
use crate::bridge::{errno, Bridge};
use crate::notify::{entry_attr_timeout, readdirplus_entry_timeout, LookupTable};

/// FUSE write flag: the writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID).
const WRITE_KILL_SUIDGID: u32 = 4;
/// Entries fetched from the engine per readdir step.
const READDIR_BATCH_ENTRIES: usize = 128;
/// Longest name (Linux NAME_MAX; scoutfs names are at most 255 bytes).
const NAME_MAX_BYTES: u64 = 255;
/// The original's statfs assumes about 1 KiB of metadata per empty file.
const STATFS_BYTES_PER_INODE: u64 = 1024;
/// 64 KiB metadata blocks per 4 KiB statfs block.
const META_BLOCK_SM_SHIFT: u32 = 4;

/// Knobs of the frontend.
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// How long the kernel may keep LOOKUP/GETATTR answers.
    pub attr_timeout: Duration,
    /// POSIX ACLs (the `acl` mount option; see [`crate::acl`]).
    pub acl: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            attr_timeout: Duration::from_secs(1),
            acl: true,
        }
    }
}

/// The FUSE filesystem of one mount.
pub struct ScoutFuse {
    fs: Arc<Fs>,
    link: Arc<dyn ServerLink>,
    bridge: Bridge,
    opts: FuseOptions,
    /// Kernel lookup count per inode (shared with the notifier).
    lookups: LookupTable,
    next_handle: AtomicU64,
}

/// What a worker calls with the unique id of an interrupted request.
pub type OnInterrupt = Arc<dyn Fn(u64) + Send + Sync>;

thread_local! {
    /// The unique id of the request this worker thread is handling (0:
    /// none): the tag of any data wait it starts.
    static CURRENT_REQUEST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The thread that made that request (0: unknown).
    static CURRENT_PID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Set by the worker around each request (session.rs).
pub fn set_current_request(unique: u64, pid: u32) {
    CURRENT_REQUEST.with(|c| c.set(unique));
    CURRENT_PID.with(|c| c.set(pid));
}

/// The thread whose request this worker is handling (0: unknown).
pub fn current_pid() -> u32 {
    CURRENT_PID.with(|c| c.get())
}

fn current_request() -> u64 {
    CURRENT_REQUEST.with(|c| c.get())
}

fn ctx_of(c: &Context) -> Ctx {
    Ctx {
        uid: c.uid,
        gid: c.gid,
        // Without ACLs the kernel applies the umask; with them (and
        // FUSE_DONT_MASK) acl::create_with sets it per request.
        umask: 0,
        cap_sys_admin: c.uid == 0,
    }
}

fn name_of(name: &CStr) -> Vec<u8> {
    name.to_bytes().to_vec()
}

/// Replies with a value or its size, as getxattr/listxattr do.
fn sized(value: Vec<u8>, size: u32) -> io::Result<Result<Vec<u8>, u32>> {
    if size == 0 {
        let n = u32::try_from(value.len()).map_err(|_| errno(libc::E2BIG))?;
        return Ok(Err(n));
    }
    if value.len() > size as usize {
        return Err(errno(libc::ERANGE));
    }
    Ok(Ok(value))
}

impl ScoutFuse {
    pub fn new(fs: Arc<Fs>, link: Arc<dyn ServerLink>, bridge: Bridge, opts: FuseOptions) -> Self {
        ScoutFuse {
            fs,
            link,
            bridge,
            opts,
            lookups: Arc::new(Mutex::new(BTreeMap::new())),
            next_handle: AtomicU64::new(1),
        }
    }

    /// The kernel lookup counts, for the notifier of lock invalidations.
    pub fn lookup_table(&self) -> LookupTable {
        self.lookups.clone()
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.lookups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one kernel lookup of `ino` (every entry reply is one);
    /// returns the count before.
    fn count_lookup(&self, ino: u64) -> u64 {
        let mut l = self.lookups();
        let n = l.entry(ino).or_insert(0);
        if *n == 0 {
            self.fs.grab(ino);
        }
        *n += 1;
        *n - 1
    }

    /// An entry reply, counted as a lookup. Attributes of an inode the
    /// kernel may not hold yet are not cached ([`entry_attr_timeout`]).
    fn entry(&self, a: engine::fs::Attr, timeout: Duration) -> Entry {
        let before = self.count_lookup(a.ino);
        Entry {
            attr_timeout: entry_attr_timeout(before, timeout),
            ..entry_of(&a, timeout)
        }
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// What FUSE_INTERRUPT calls: fails a data wait of that request with
    /// EINTR (engine waiters.rs), and ends the worker's wait if the
    /// request changes nothing ([`Bridge::run_interruptible`]: e.g. a
    /// lookup waiting for a cluster lock), so a killed caller is let go.
    pub fn on_interrupt(&self) -> OnInterrupt {
        let fs = self.fs.clone();
        let waits = self.bridge.interrupts().clone();
        Arc::new(move |unique| {
            fs.interrupt_data_waiter(unique);
            waits.interrupt(unique);
        })
    }

    /// The FUSE_INIT flags this filesystem wants (the kernel's `capable`
    /// is masked with them by crate::dispatch).
    pub fn init_flags(&self) -> u64 {
        // Never WRITEBACK_CACHE (§2.6). READDIRPLUS_AUTO: the kernel asks
        // for attributes only while a listing is followed by lookups.
        // DIRECT_IO_ALLOW_MMAP: our direct-I/O files may be mapped shared;
        // the kernel flushes and drops mapped pages around each direct
        // read and write of the range, so read(2) sees mmap stores.
        let want = FsOptions::ASYNC_READ
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::EXPORT_SUPPORT
            | FsOptions::PARALLEL_DIROPS;
        let mut want = want.bits() | crate::dispatch::FLAG_DIRECT_IO_ALLOW_MMAP;
        // ACLs: the kernel enforces them, we keep mode and ACL in step
        // and apply the umask ourselves (no umask under a default ACL);
        // SETXATTR_EXT tells us when setting an access ACL clears S_ISGID.
        if self.opts.acl {
            want |= (FsOptions::POSIX_ACL | FsOptions::DONT_MASK).bits()
                | crate::dispatch::FLAG_SETXATTR_EXT;
        }
        want
    }

    /// FUSE_TMPFILE (crate::dispatch): an unnamed regular file in
    /// `parent`, open, counted as a lookup: `(entry, handle, open flags)`.
    pub fn tmpfile(
        &self,
        ctx: &Context,
        parent: u64,
        args: CreateIn,
    ) -> io::Result<(Entry, u64, u32)> {
        let (fs, c, on) = (self.fs.clone(), ctx_of(ctx), self.opts.acl);
        let (mode, umask) = (args.mode, args.umask);
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        let a = self.bridge.run(async move {
            let f = fs.clone();
            acl::create_with(
                &fs,
                c,
                on,
                parent,
                mode,
                umask,
                false,
                |c, mode| async move { f.tmpfile(&c, parent, mode).await },
            )
            .await
        })?;
        let e = self.entry(a, Duration::ZERO);
        Ok((e, self.handle(), OpenOptions::DIRECT_IO.bits()))
    }

    /// setxattr with SETXATTR_EXT's flags: `kill_sgid` (set by the kernel
    /// for an access ACL set by a caller outside the owning group without
    /// CAP_FSETID) clears S_ISGID as a local filesystem does.
    pub fn setxattr_with(
        &self,
        ctx: &Context,
        ino: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
        kill_sgid: bool,
    ) -> io::Result<()> {
        let (fs, c, name) = (self.fs.clone(), ctx_of(ctx), name_of(name));
        let value = value.to_vec();
        if acl::is_acl_name(&name) && !self.opts.acl {
            return Err(errno(libc::EOPNOTSUPP));
        }
        self.bridge.run(async move {
            match name.as_slice() {
                acl::ACCESS => acl::set_access(&fs, &c, ino, &value, flags, kill_sgid).await,
                acl::DEFAULT => acl::set_default(&fs, &c, ino, &value, flags).await,
                _ => fs.setxattr(&c, ino, &name, &value, flags).await,
            }
        })
    }

    /// Lookup count of `ino` (for tests and the status tree).
    pub fn lookup_count(&self, ino: u64) -> u64 {
        self.lookups().get(&ino).copied().unwrap_or(0)
    }
}

impl FileSystem for ScoutFuse {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Not reached: crate::dispatch answers INIT (flags this type
        // cannot hold); kept consistent for a Server used on its own.
        Ok(capable & FsOptions::from_bits_truncate(self.init_flags()))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let fs = self.fs.clone();
        let name = name_of(name);
        let a = self
            .bridge
            .run_interruptible(
                current_request(),
                async move { fs.lookup(parent, &name).await },
            )?;
        Ok(self.entry(a, self.opts.attr_timeout))
    }

    fn forget(&self, _ctx: &Context, ino: u64, count: u64) {
        let last = {
            let mut l = self.lookups();
            match l.get_mut(&ino) {
                Some(n) if *n > count => {
                    *n -= count;
                    false
                }
                Some(_) => {
                    l.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if last {
            let fs = self.fs.clone();
            self.bridge.start(async move {
                // Nothing to tell anyone if it fails: the orphan item stays
                // and the orphan scan (or the next mount) deletes it.
                let _ = fs.release(ino).await;
            });
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let fs = self.fs.clone();
        let a = self
            .bridge
            .run_interruptible(current_request(), async move { fs.getattr(ino).await })?;
        Ok((stat_of(&a), self.opts.attr_timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        ino: u64,
        attr: stat64,
        _handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let (fs, c, acl_on) = (self.fs.clone(), ctx_of(ctx), self.opts.acl);
        let tag = current_request();
        let set = setattr_of(&attr, valid);
        let a = self.bridge.run(async move {
            let a = fs.setattr_as(ino, &set, tag).await?;
            if let (true, Some(mode)) = (acl_on, set.mode) {
                acl::chmod(&fs, &c, ino, mode).await?;
            }
            Ok(a)
        })?;
        Ok((stat_of(&a), Duration::ZERO))
    }

    fn readlink(&self, _ctx: &Context, ino: u64) -> io::Result<Vec<u8>> {
        let fs = self.fs.clone();
        self.bridge
            .run_interruptible(current_request(), async move { fs.readlink(ino).await })
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (fs, c) = (self.fs.clone(), ctx_of(ctx));
        let (name, target) = (name_of(name), name_of(linkname));
        let a = self
            .bridge
            .run(async move { fs.symlink(&c, parent, &name, &target).await })?;
        Ok(self.entry(a, Duration::ZERO))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (fs, c, name, on) = (self.fs.clone(), ctx_of(ctx), name_of(name), self.opts.acl);
        let a = self.bridge.run(async move {
            let f = fs.clone();
            acl::create_with(
                &fs,
                c,
                on,
                parent,
                mode,
                umask,
                false,
                |c, mode| async move { f.mknod(&c, parent, &name, mode, rdev).await },
            )
            .await
        })?;
        Ok(self.entry(a, Duration::ZERO))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (fs, c, name, on) = (self.fs.clone(), ctx_of(ctx), name_of(name), self.opts.acl);
        let a = self.bridge.run(async move {
            let f = fs.clone();
            acl::create_with(
                &fs,
                c,
                on,
                parent,
                mode,
                umask,
                true,
                |c, mode| async move { f.mkdir(&c, parent, &name, mode).await },
            )
            .await
        })?;
        Ok(self.entry(a, Duration::ZERO))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let (fs, name) = (self.fs.clone(), name_of(name));
        self.bridge
            .run(async move { fs.unlink(parent, &name).await })
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let (fs, name) = (self.fs.clone(), name_of(name));
        self.bridge
            .run(async move { fs.rmdir(parent, &name).await })
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let fs = self.fs.clone();
        let (old, new) = (name_of(oldname), name_of(newname));
        self.bridge
            .run(async move { fs.rename(olddir, &old, newdir, &new, flags).await })
    }

    fn link(&self, _ctx: &Context, ino: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let (fs, name) = (self.fs.clone(), name_of(newname));
        let a = self
            .bridge
            .run(async move { fs.link(ino, newparent, &name).await })?;
        Ok(self.entry(a, Duration::ZERO))
    }

    fn open(
        &self,
        _ctx: &Context,
        ino: u64,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let fs = self.fs.clone();
        let a = self.bridge.run(async move { fs.open(ino).await })?;
        let opts = if a.mode & libc::S_IFMT == libc::S_IFREG {
            OpenOptions::DIRECT_IO
        } else {
            OpenOptions::empty()
        };
        Ok((Some(self.handle()), opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (fs, c, name, on) = (self.fs.clone(), ctx_of(ctx), name_of(name), self.opts.acl);
        let (mode, umask) = (args.mode, args.umask);
        let a = self.bridge.run(async move {
            let f = fs.clone();
            let a = acl::create_with(
                &fs,
                c,
                on,
                parent,
                mode,
                umask,
                false,
                |c, mode| async move { f.create(&c, parent, &name, mode).await },
            )
            .await?;
            fs.open(a.ino).await
        })?;
        let e = self.entry(a, Duration::ZERO);
        Ok((e, Some(self.handle()), OpenOptions::DIRECT_IO, None))
    }

    fn read(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let fs = self.fs.clone();
        let tag = current_request();
        let data = self
            .bridge
            .run_interruptible(tag, async move { fs.read_as(ino, offset, size, tag).await })?;
        w.write_all(&data)?;
        Ok(data.len())
    }

    fn write(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)?;
        let wf = WriteFlags {
            append: flags & libc::O_APPEND as u32 != 0,
            kill_suidgid: fuse_flags & WRITE_KILL_SUIDGID != 0,
        };
        let fs = self.fs.clone();
        let tag = current_request();
        let (_, n) = self
            .bridge
            .run(async move { fs.write_as(ino, offset, &data, wf, tag).await })?;
        Ok(n)
    }

    fn flush(&self, _ctx: &Context, _ino: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _ino: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        let fs = self.fs.clone();
        self.bridge.run(async move { fs.fsync().await })
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let fs = self.fs.clone();
        self.bridge
            .run(async move { fs.fallocate(ino, mode, offset, length).await })
    }

    fn release(
        &self,
        _ctx: &Context,
        ino: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let fs = self.fs.clone();
        self.bridge.run(async move { fs.release(ino).await })
    }

    fn statfs(&self, _ctx: &Context, _ino: u64) -> io::Result<statvfs64> {
        let link = self.link.clone();
        let reply = self
            .bridge
            .run(async move { link.call(Cmd::Statfs, Vec::new()).await })?;
        let s = NetStatfs::read_from_bytes(&reply).map_err(|_| errno(libc::EIO))?;
        let sm = |meta: u64| meta << META_BLOCK_SM_SHIFT;
        let bfree = sm(s.free_meta_blocks.get()) + s.free_data_blocks.get();
        let blocks = sm(s.total_meta_blocks.get()) + s.total_data_blocks.get();
        let ffree = bfree.saturating_mul(BLOCK_BYTES / STATFS_BYTES_PER_INODE);
        // SAFETY: statvfs64 is a plain C struct of integers; all zeroes is
        // a valid value of every field.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = BLOCK_BYTES;
        st.f_frsize = BLOCK_BYTES;
        st.f_blocks = blocks;
        st.f_bfree = bfree;
        st.f_bavail = bfree;
        st.f_files = ffree.saturating_add(s.inode_count.get());
        st.f_ffree = ffree;
        st.f_favail = ffree;
        st.f_namemax = NAME_MAX_BYTES;
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        ino: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        // Without SETXATTR_EXT (noacl, or an old kernel): no SGID news.
        self.setxattr_with(ctx, ino, name, value, flags, false)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        ino: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let (fs, name) = (self.fs.clone(), name_of(name));
        if acl::is_acl_name(&name) && !self.opts.acl {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let v = self
            .bridge
            .run_interruptible(
                current_request(),
                async move { fs.getxattr(ino, &name).await },
            )?;
        Ok(match sized(v, size)? {
            Ok(v) => GetxattrReply::Value(v),
            Err(n) => GetxattrReply::Count(n),
        })
    }

    fn listxattr(&self, _ctx: &Context, ino: u64, size: u32) -> io::Result<ListxattrReply> {
        let fs = self.fs.clone();
        let names = self
            .bridge
            .run_interruptible(
                current_request(),
                async move { fs.listxattr(ino, false).await },
            )?;
        let mut all = Vec::new();
        for n in names {
            all.extend_from_slice(&n);
            all.push(0);
        }
        Ok(match sized(all, size)? {
            Ok(v) => ListxattrReply::Names(v),
            Err(n) => ListxattrReply::Count(n),
        })
    }

    fn removexattr(&self, ctx: &Context, ino: u64, name: &CStr) -> io::Result<()> {
        let (fs, c, name) = (self.fs.clone(), ctx_of(ctx), name_of(name));
        self.bridge
            .run(async move { fs.removexattr(&c, ino, &name).await })
    }

    fn opendir(
        &self,
        _ctx: &Context,
        ino: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let fs = self.fs.clone();
        let a = self.bridge.run(async move { fs.getattr(ino).await })?;
        if a.mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        Ok((Some(self.handle()), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // The kernel resumes at an entry's `offset`: its position + 1, so
        // "." (0), ".." (1) and entries at positions ≥ 2 keep their order.
        let mut start = offset;
        loop {
            let fs = self.fs.clone();
            // Interruptible: nothing is counted for plain entries.
            let batch = self
                .bridge
                .run_interruptible(current_request(), async move {
                    fs.readdir(ino, start, READDIR_BATCH_ENTRIES).await
                })?;
            if batch.is_empty() {
                return Ok(());
            }
            for e in &batch {
                let used = add_entry(DirEntry {
                    ino: e.ino,
                    offset: e.pos + 1,
                    type_: linux_dtype(e.ty).into(),
                    name: &e.name,
                })?;
                if used == 0 {
                    return Ok(());
                }
                start = e.pos + 1;
            }
            if batch.len() < READDIR_BATCH_ENTRIES {
                return Ok(());
            }
        }
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        ino: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut start = offset;
        loop {
            let fs = self.fs.clone();
            let batch = self
                .bridge
                .run(async move { readdir_attrs(&fs, ino, start).await })?;
            let full = batch.len() == READDIR_BATCH_ENTRIES;
            for (e, attr) in &batch {
                // Node id 0: no attributes for this entry ("." and "..",
                // or an entry removed since); the kernel counts no lookup.
                let entry = match attr {
                    Some(a) => Entry {
                        attr_timeout: entry_attr_timeout(
                            self.lookup_count(a.ino),
                            self.opts.attr_timeout,
                        ),
                        entry_timeout: readdirplus_entry_timeout(self.opts.attr_timeout),
                        ..entry_of(a, self.opts.attr_timeout)
                    },
                    None => Entry {
                        inode: 0,
                        ..entry_of(&engine::fs::Attr::default(), Duration::ZERO)
                    },
                };
                let used = add_entry(
                    DirEntry {
                        ino: e.ino,
                        offset: e.pos + 1,
                        type_: linux_dtype(e.ty).into(),
                        name: &e.name,
                    },
                    entry,
                )?;
                if used == 0 {
                    return Ok(());
                }
                // Only an entry the reply carries is a lookup.
                if let Some(a) = attr {
                    self.count_lookup(a.ino);
                }
                start = e.pos + 1;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn fsyncdir(&self, ctx: &Context, ino: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, ino, datasync, handle)
    }

    fn releasedir(&self, _ctx: &Context, _ino: u64, _flags: u32, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, ctx: &Context, ino: u64, mask: u32) -> io::Result<()> {
        // Only called without default_permissions: the same mode-bit check.
        let fs = self.fs.clone();
        let a = self.bridge.run(async move { fs.getattr(ino).await })?;
        let mask = mask & 0o7;
        if ctx.uid == 0 {
            let exec_ok = a.mode & 0o111 != 0 || a.mode & libc::S_IFMT == libc::S_IFDIR;
            return if mask & 1 == 0 || exec_ok {
                Ok(())
            } else {
                Err(errno(libc::EACCES))
            };
        }
        let bits = if ctx.uid == a.uid {
            (a.mode >> 6) & 0o7
        } else if ctx.gid == a.gid {
            (a.mode >> 3) & 0o7
        } else {
            a.mode & 0o7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }
}

/// One batch of `ino`'s entries from `start`, each with its attributes
/// (none for "." and "..", or for an entry whose inode went meanwhile).
async fn readdir_attrs(
    fs: &Fs,
    ino: u64,
    start: u64,
) -> engine::fs::FsResult<Vec<(engine::fs::DirEntry, Option<engine::fs::Attr>)>> {
    let ents = fs.readdir(ino, start, READDIR_BATCH_ENTRIES).await?;
    let mut out = Vec::with_capacity(ents.len());
    for e in ents {
        let attr = if e.name == b"." || e.name == b".." {
            None
        } else {
            match fs.getattr(e.ino).await {
                Ok(a) => Some(a),
                Err(libc::ENOENT) | Err(libc::ESTALE) => None,
                Err(err) => return Err(err),
            }
        };
        out.push((e, attr));
    }
    Ok(out)
}
