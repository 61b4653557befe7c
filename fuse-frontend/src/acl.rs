//! POSIX ACLs on a FUSE mount with `FUSE_POSIX_ACL` (the `acl` mount
//! option, on by default). The kernel then checks permissions against
//! `system.posix_acl_access` itself (default_permissions) and caches the
//! ACLs, but leaves to the filesystem what a local filesystem's ACL code
//! does (fs/posix_acl.c):
//!
//! * setting `system.posix_acl_access` sets the mode from the ACL, and an
//!   ACL equivalent to a mode (three base entries) is stored as the mode
//!   only ([`set_access`]);
//! * chmod rewrites the ACL's owner, mask (or group) and other entries
//!   ([`chmod`]);
//! * a new inode in a directory with `system.posix_acl_default` gets the
//!   default ACL masked by the requested mode as its access ACL (and, for a
//!   directory, the default ACL too), and the umask is not applied; without
//!   a default ACL the umask is (the kernel sends it: `FUSE_DONT_MASK`)
//!   ([`create_mode`], [`inherit`]).
//!
//! The value format is the kernel's xattr form: `version u32 = 2`, then
//! entries `tag u16 | perm u16 | id u32`, little-endian. Values are checked
//! ([`Acl::parse`]: EINVAL), so a hostile value cannot reach the mode.
//! The inheritance writes are separate engine calls after the create: a
//! crash between them leaves the new inode with its (masked) mode only.
//!
//! Touches `engine::fs` (xattrs and setattr).

use std::future::Future;

use engine::fs::{Attr, Ctx, Fs, FsResult, SetAttr};

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// Whether `name` is one of the two ACL xattrs.
pub fn is_acl_name(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A checked ACL, entries in the kernel's order (tag, then id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Decodes and checks an xattr value (posix_acl_valid's rules).
    pub fn parse(v: &[u8]) -> FsResult<Acl> {
        if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) {
            return Err(libc::EINVAL);
        }
        if u32::from_le_bytes([v[0], v[1], v[2], v[3]]) != VERSION {
            return Err(libc::EOPNOTSUPP);
        }
        let mut entries = Vec::new();
        for e in v[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            if perm & !7 != 0 {
                return Err(libc::EINVAL);
            }
            let id = match tag {
                USER_OBJ | GROUP_OBJ | MASK | OTHER => UNDEFINED_ID,
                USER | GROUP => id,
                _ => return Err(libc::EINVAL),
            };
            entries.push(Entry { tag, perm, id });
        }
        let count = |t| entries.iter().filter(|e| e.tag == t).count();
        let named = count(USER) + count(GROUP);
        if count(USER_OBJ) != 1
            || count(GROUP_OBJ) != 1
            || count(OTHER) != 1
            || count(MASK) > 1
            || (named > 0 && count(MASK) == 0)
        {
            return Err(libc::EINVAL);
        }
        // Sorted by (tag, id) with no duplicate: what the kernel sends.
        if entries
            .windows(2)
            .any(|w| (w[0].tag, w[0].id) >= (w[1].tag, w[1].id))
        {
            return Err(libc::EINVAL);
        }
        Ok(Acl { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    fn perm(&self, tag: u16) -> Option<u32> {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| e.perm as u32)
    }

    fn set_perm(&mut self, tag: u16, perm: u32) {
        for e in self.entries.iter_mut().filter(|e| e.tag == tag) {
            e.perm = (perm & 7) as u16;
        }
    }

    /// The permission bits the ACL implies: owner, mask (or group), other.
    pub fn mode_bits(&self) -> u32 {
        let group = self.perm(MASK).or(self.perm(GROUP_OBJ)).unwrap_or(0);
        (self.perm(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | self.perm(OTHER).unwrap_or(0)
    }

    /// Whether the mode alone says it all (no mask, no named entries).
    pub fn is_equivalent_to_mode(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The ACL after chmod to `mode` (__posix_acl_chmod).
    pub fn chmod(&mut self, mode: u32) {
        self.set_perm(USER_OBJ, mode >> 6);
        if self.perm(MASK).is_some() {
            self.set_perm(MASK, mode >> 3);
        } else {
            self.set_perm(GROUP_OBJ, mode >> 3);
        }
        self.set_perm(OTHER, mode);
    }

    /// A new inode's access ACL from its directory's default ACL and the
    /// mode asked for (posix_acl_create_masq): both are narrowed to what
    /// the other allows. Returns the new mode (type and special bits of
    /// `mode` kept) and the ACL.
    pub fn create_masq(&self, mode: u32) -> (u32, Acl) {
        let mut acl = self.clone();
        let mut m = mode & 0o777;
        for e in acl.entries.iter_mut() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= (e.perm as u32) | !0o007;
                }
                _ => {}
            }
        }
        let group_tag = if acl.perm(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        for e in acl.entries.iter_mut().filter(|e| e.tag == group_tag) {
            e.perm &= ((m >> 3) & 7) as u16;
            m &= ((e.perm as u32) << 3) | !0o070;
        }
        ((mode & !0o777) | (m & 0o777), acl)
    }
}

async fn get_acl(fs: &Fs, ino: u64, name: &[u8]) -> FsResult<Option<Acl>> {
    match fs.getxattr(ino, name).await {
        Ok(v) => Acl::parse(&v).map(Some).map_err(|_| libc::EIO),
        Err(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The default ACL of directory `dir`, if it has one.
pub async fn default_of(fs: &Fs, dir: u64) -> FsResult<Option<Acl>> {
    get_acl(fs, dir, DEFAULT).await
}

/// The mode a new inode gets and the umask the engine must apply: with a
/// default ACL in the directory, the ACL narrows the mode and the umask is
/// ignored; without, the umask applies.
pub fn create_mode(default: Option<&Acl>, mode: u32, umask: u32) -> (u32, u32) {
    match default {
        Some(d) => (d.create_masq(mode).0, 0),
        None => (mode, umask),
    }
}

/// After creating `ino` with `mode` (already narrowed by [`create_mode`])
/// in a directory whose default ACL is `default`: its access ACL (unless
/// the mode says it all) and, for a directory, the default ACL.
pub async fn inherit(
    fs: &Fs,
    ctx: &Ctx,
    ino: u64,
    is_dir: bool,
    default: &Acl,
    mode: u32,
) -> FsResult<()> {
    let (_, access) = default.create_masq(mode);
    if !access.is_equivalent_to_mode() {
        fs.setxattr(ctx, ino, ACCESS, &access.encode(), 0).await?;
    }
    if is_dir {
        fs.setxattr(ctx, ino, DEFAULT, &default.encode(), 0).await?;
    }
    Ok(())
}

/// Creates an inode through `make(ctx, mode)` with ACL semantics when
/// `on`: the directory's default ACL narrows the mode and replaces the
/// umask, and is inherited afterwards; otherwise `umask` is applied.
// The create calls' own arguments, passed through: a struct would only
// rename them.
#[allow(clippy::too_many_arguments)]
pub async fn create_with<F, Fut>(
    fs: &Fs,
    mut ctx: Ctx,
    on: bool,
    parent: u64,
    mode: u32,
    umask: u32,
    is_dir: bool,
    make: F,
) -> FsResult<Attr>
where
    F: FnOnce(Ctx, u32) -> Fut,
    Fut: Future<Output = FsResult<Attr>>,
{
    let default = if on {
        default_of(fs, parent).await?
    } else {
        None
    };
    let (mode, umask) = create_mode(default.as_ref(), mode, umask);
    ctx.umask = umask;
    let attr = make(ctx, mode).await?;
    if let Some(d) = &default {
        inherit(fs, &ctx, attr.ino, is_dir, d, attr.mode).await?;
    }
    Ok(attr)
}

/// setxattr of `system.posix_acl_access`: the mode follows the ACL; an ACL
/// the mode expresses is not stored.
pub async fn set_access(
    fs: &Fs,
    ctx: &Ctx,
    ino: u64,
    value: &[u8],
    flags: u32,
    kill_sgid: bool,
) -> FsResult<()> {
    let acl = Acl::parse(value)?;
    let attr = fs.getattr(ino).await?;
    if acl.is_equivalent_to_mode() {
        match fs.removexattr(ctx, ino, ACCESS).await {
            Ok(()) | Err(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    } else {
        fs.setxattr(ctx, ino, ACCESS, &acl.encode(), flags).await?;
    }
    let special = if kill_sgid {
        attr.mode & 0o7000 & !libc::S_ISGID
    } else {
        attr.mode & 0o7000
    };
    let mode = special | acl.mode_bits();
    if mode != attr.mode & 0o7777 {
        let set = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        fs.setattr(ino, &set).await?;
    }
    Ok(())
}

/// setxattr of `system.posix_acl_default`: checked, then stored; an empty
/// value removes it.
pub async fn set_default(fs: &Fs, ctx: &Ctx, ino: u64, value: &[u8], flags: u32) -> FsResult<()> {
    let acl = Acl::parse(value)?;
    fs.setxattr(ctx, ino, DEFAULT, &acl.encode(), flags).await
}

/// After chmod of `ino` to `mode`: its access ACL follows.
pub async fn chmod(fs: &Fs, ctx: &Ctx, ino: u64, mode: u32) -> FsResult<()> {
    let Some(mut acl) = get_acl(fs, ino, ACCESS).await? else {
        return Ok(());
    };
    acl.chmod(mode);
    fs.setxattr(ctx, ino, ACCESS, &acl.encode(), 0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for &(t, p, id) in entries {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const U: u32 = UNDEFINED_ID;

    #[test]
    fn parse_checks_the_rules() {
        let base = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]);
        let a = Acl::parse(&base).unwrap();
        assert!(a.is_equivalent_to_mode());
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(a.encode(), base);
        // Named entry without a mask, bad perm, missing other, unsorted,
        // truncated, wrong version.
        for bad in [
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 4, 7),
                (GROUP_OBJ, 4, U),
                (OTHER, 0, U),
            ]),
            acl(&[(USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]),
            acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U)]),
            acl(&[(GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 0, U)]),
            acl(&[
                (USER_OBJ, 6, U),
                (USER, 4, 7),
                (USER, 4, 7),
                (GROUP_OBJ, 4, U),
                (MASK, 7, U),
                (OTHER, 0, U),
            ]),
            base[..7].to_vec(),
        ] {
            assert!(Acl::parse(&bad).is_err(), "{bad:?}");
        }
        let mut v1 = base.clone();
        v1[0] = 1;
        assert_eq!(Acl::parse(&v1), Err(libc::EOPNOTSUPP));
    }

    #[test]
    fn mask_gives_the_group_bits_and_follows_chmod() {
        let v = acl(&[
            (USER_OBJ, 7, U),
            (USER, 6, 1000),
            (GROUP_OBJ, 5, U),
            (MASK, 6, U),
            (OTHER, 1, U),
        ]);
        let mut a = Acl::parse(&v).unwrap();
        assert!(!a.is_equivalent_to_mode());
        assert_eq!(a.mode_bits(), 0o761);
        a.chmod(0o504);
        assert_eq!(a.mode_bits(), 0o504);
        // The group entry keeps its own bits; the named user too.
        assert_eq!(a.perm(GROUP_OBJ), Some(5));
        assert_eq!(a.perm(USER), Some(6));
    }

    #[test]
    fn create_masks_default_and_mode() {
        let d = Acl::parse(&acl(&[
            (USER_OBJ, 7, U),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, U),
            (MASK, 7, U),
            (OTHER, 5, U),
        ]))
        .unwrap();
        // open(O_CREAT, 0666) under this default: no umask.
        let (mode, a) = d.create_masq(libc::S_IFREG | 0o666);
        assert_eq!(mode, libc::S_IFREG | 0o664);
        assert_eq!(a.mode_bits(), 0o664);
        assert_eq!(
            a.perm(USER),
            Some(7),
            "named entries stay; the mask limits them"
        );
        assert_eq!(a.perm(MASK), Some(6));
        assert_eq!(create_mode(Some(&d), 0o666, 0o077), (0o664, 0));
        assert_eq!(create_mode(None, 0o666, 0o022), (0o666, 0o022));
        // A mode-only default gives an ACL the mode expresses.
        let plain =
            Acl::parse(&acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)])).unwrap();
        let (mode, a) = plain.create_masq(libc::S_IFDIR | 0o2775);
        assert_eq!(mode, libc::S_IFDIR | 0o2700);
        assert!(a.is_equivalent_to_mode());
    }
}
