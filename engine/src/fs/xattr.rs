//! Extended attributes and the `scoutfs.` tags (§1.5, §7.3, §12).
//!
//! An xattr is stored as parts `16/ino/8/name_hash/id/part`: part 0 holds an
//! 8-byte header `{val_len, name_len, pad}`, the name and the start of the
//! value, later parts the rest, each ≤ 896 bytes. `name_hash` is the raw
//! CRC-32C of the name; `id` comes from the inode's `next_xattr_id` and
//! separates hash collisions (a replaced value keeps its id).
//!
//! Names: 1..=255 bytes in a namespace the original serves (`user.`,
//! `trusted.`, `security.`, `system.posix_acl_access|default`, `scoutfs.`);
//! empty or other names are EOPNOTSUPP, longer ones ERANGE. Values ≤ 65535
//! bytes (E2BIG beyond).
//!
//! Tags: a `scoutfs.` name of at least 14 bytes carries one or more tags
//! `hide.` `srch.` `totl.` `indx.` (each at most once; `totl.`+`indx.` is
//! EINVAL; none at all is EINVAL; shorter names are ordinary). Tags need
//! CAP_SYS_ADMIN (EPERM). `.hide.` names are left out of [`Fs::listxattr`].
//! `.totl.` names end in `.A.B.C` with a u64 text value and add a
//! `(value delta, count delta)` at `12/A/0/B/C`; `.indx.` names end in
//! `.MAJOR.MINOR` (v2 only) with an empty value and force-write
//! `14/<major,minor,ino,xid>`. Syntax errors are EINVAL.
//!
//! Reads of what the tags record (totals, index entries) are in
//! [`super::quota`], through the stable-root reader. `.srch.` names log
//! `(fnv1a64(name), ino, id)` with [`Transactions::srch_add`] when they are
//! created or deleted (also when their inode is deleted); a value change
//! logs nothing (§7.3). Searches are in [`super::query`].
//!
//! [`Transactions::srch_add`]: crate::item::api::Transactions::srch_add
//! The totl delta is written with `Items::create_force` on the totl key;
//! the item layer must treat zone 12 values as deltas (§2.5) — the item API
//! has no separate delta call.
//!
//! Guarantees: an xattr's parts, its tag side effects and the inode's ctime
//! and meta_seq change in one hold.

use zerocopy::FromBytes;

use super::{bytes_of, Batch, Ctx, Fs, FsResult};
use crate::format::hash::{fnv1a64, xattr_name_hash};
use crate::format::items::{
    indx_key, totl_key, xattr_key, xattr_nr_parts, TotlValue, XattrHeader, XATTR_NAME_MAX,
    XATTR_VALUE_MAX,
};
use crate::format::key::Key;
use crate::format::srch::SrchEntry;
use crate::format::{FORMAT_VERSION_V2, MAX_VAL_SIZE};
use crate::lock::LockMode;

/// Retention (§7.3, §9) guards only the xattrs of this namespace.
const RETAINED_PREFIX: &[u8] = b"user.";

/// setxattr flags (Linux values).
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

const XATTR_HEADER_BYTES: usize = 8;
const SCOUTFS_PREFIX: &[u8] = b"scoutfs.";
const TAG_BYTES: usize = 5;
/// "scoutfs." + one tag + one byte: shorter `scoutfs.` names are ordinary.
const TAGGED_NAME_MIN_BYTES: usize = SCOUTFS_PREFIX.len() + TAG_BYTES + 1;
/// Longest `.totl.` value text.
const TOTL_VALUE_MAX_BYTES: usize = 23;

const NAMESPACES: [&[u8]; 6] = [
    b"user.",
    b"trusted.",
    b"security.",
    b"scoutfs.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];

/// The tags of a `scoutfs.` name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tags {
    pub hide: bool,
    pub srch: bool,
    pub totl: bool,
    pub indx: bool,
}

impl Tags {
    fn any(&self) -> bool {
        self.hide || self.srch || self.totl || self.indx
    }
}

/// Parses the tags of an xattr name: (tags, offset of the name after the
/// last tag). Names outside `scoutfs.` or shorter than 14 bytes have none.
pub fn parse_tags(name: &[u8]) -> FsResult<(Tags, usize)> {
    let mut tags = Tags::default();
    if !name.starts_with(SCOUTFS_PREFIX) || name.len() < TAGGED_NAME_MIN_BYTES {
        return Ok((tags, 0));
    }
    let mut at = SCOUTFS_PREFIX.len();
    while name.len() >= at + TAG_BYTES {
        let flag = match &name[at..at + TAG_BYTES] {
            b"hide." => &mut tags.hide,
            b"srch." => &mut tags.srch,
            b"totl." => &mut tags.totl,
            b"indx." => &mut tags.indx,
            _ => break,
        };
        if *flag {
            return Err(libc::EINVAL);
        }
        *flag = true;
        at += TAG_BYTES;
    }
    if !tags.any() || (tags.totl && tags.indx) {
        return Err(libc::EINVAL);
    }
    Ok((tags, at))
}

/// kstrtoull with base 0: decimal, `0x` hex or leading-0 octal; no sign,
/// no spaces.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = if s.len() > 2 && (s.starts_with(b"0x") || s.starts_with(b"0X")) {
        (&s[2..], 16)
    } else if s.len() > 1 && s[0] == b'0' {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

/// The last `n` dot-separated numbers of a tagged name's suffix.
fn trailing_numbers(suffix: &[u8], n: usize) -> FsResult<Vec<u64>> {
    let parts: Vec<&[u8]> = suffix.split(|&c| c == b'.').collect();
    if parts.len() < n {
        return Err(libc::EINVAL);
    }
    parts[parts.len() - n..]
        .iter()
        .map(|p| parse_u64(p).ok_or(libc::EINVAL))
        .collect()
}

/// What a tagged name indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    None,
    Totl(u64, u64, u64),
    Indx(u8, u64),
}

fn side_of(tags: &Tags, suffix: &[u8], fmt_vers: u64) -> FsResult<Side> {
    if tags.totl {
        let n = trailing_numbers(suffix, 3)?;
        return Ok(Side::Totl(n[0], n[1], n[2]));
    }
    if tags.indx {
        if fmt_vers < FORMAT_VERSION_V2 {
            return Err(libc::EINVAL);
        }
        let n = trailing_numbers(suffix, 2)?;
        let major = u8::try_from(n[0]).map_err(|_| libc::EINVAL)?;
        return Ok(Side::Indx(major, n[1]));
    }
    Ok(Side::None)
}

fn totl_value(val: &[u8]) -> FsResult<u64> {
    if val.len() > TOTL_VALUE_MAX_BYTES {
        return Err(libc::EINVAL);
    }
    parse_u64(val).ok_or(libc::EINVAL)
}

fn check_xattr_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(libc::EOPNOTSUPP);
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(libc::ERANGE);
    }
    let known = NAMESPACES.iter().any(|ns| {
        if ns.ends_with(b".") {
            name.starts_with(ns) && name.len() > ns.len()
        } else {
            name == *ns
        }
    });
    if !known {
        return Err(libc::EOPNOTSUPP);
    }
    Ok(())
}

/// A stored xattr found by name.
struct Stored {
    hash: u64,
    id: u64,
    nparts: usize,
    value: Vec<u8>,
}

/// Splits name and value into part values.
fn encode_parts(name: &[u8], value: &[u8]) -> Vec<Vec<u8>> {
    let hdr = XattrHeader {
        val_len: (value.len() as u16).into(),
        name_len: name.len() as u8,
        pad: [0; 5],
    };
    let mut all = bytes_of(&hdr);
    debug_assert_eq!(all.len(), XATTR_HEADER_BYTES);
    all.extend_from_slice(name);
    all.extend_from_slice(value);
    let parts: Vec<Vec<u8>> = all.chunks(MAX_VAL_SIZE).map(|c| c.to_vec()).collect();
    debug_assert_eq!(parts.len(), xattr_nr_parts(name.len(), value.len()));
    parts
}

/// Decodes part 0: (header, name, value bytes it holds).
fn decode_part0(v: &[u8]) -> FsResult<(XattrHeader, &[u8], &[u8])> {
    let (hdr, rest) = XattrHeader::read_from_prefix(v).map_err(|_| libc::EIO)?;
    let nl = hdr.name_len as usize;
    if nl == 0 || rest.len() < nl {
        return Err(libc::EIO);
    }
    Ok((hdr, &rest[..nl], &rest[nl..]))
}

impl Fs {
    async fn find_xattr(&self, ino: u64, name: &[u8]) -> FsResult<Option<Stored>> {
        let hash = xattr_name_hash(name);
        let last = xattr_key(ino, hash, u64::MAX, u8::MAX);
        let mut first = xattr_key(ino, hash, 0, 0);
        while let Some((k, v)) = self.items.next(first, last).await? {
            if k.fourth == 0 {
                let (hdr, n, head) = decode_part0(&v)?;
                if n == name {
                    let val_len = hdr.val_len.get() as usize;
                    let nparts = xattr_nr_parts(name.len(), val_len);
                    let mut value = head.to_vec();
                    for part in 1..nparts {
                        let p = self
                            .items
                            .lookup(xattr_key(ino, hash, k.third, part as u8))
                            .await?
                            .ok_or(libc::EIO)?;
                        value.extend_from_slice(&p);
                    }
                    if value.len() != val_len {
                        return Err(libc::EIO);
                    }
                    return Ok(Some(Stored {
                        hash,
                        id: k.third,
                        nparts,
                        value,
                    }));
                }
            }
            // On to the next id.
            let next = xattr_key(ino, hash, k.third, u8::MAX).inc();
            if next > last || k.third == u64::MAX {
                break;
            }
            first = next;
        }
        Ok(None)
    }

    /// Sets an xattr (XATTR_CREATE: EEXIST if present; XATTR_REPLACE:
    /// ENODATA if absent).
    pub async fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(libc::E2BIG);
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(libc::EINVAL);
        }
        let (tags, at) = parse_tags(name)?;
        if tags.any() && !ctx.cap_sys_admin {
            return Err(libc::EPERM);
        }
        let side = side_of(&tags, &name[at..], self.fmt_vers)?;
        let new_total = match side {
            Side::Totl(..) => Some(totl_value(value)?),
            Side::Indx(..) if !value.is_empty() => return Err(libc::EINVAL),
            _ => None,
        };
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let now = self.now();
        let hold = self.hold(true).await?;
        let mut b = Batch::new(self);
        b.load(ino).await?;
        if name.starts_with(RETAINED_PREFIX) {
            self.check_retention(b.inode(ino))?;
        }
        let old = self.find_xattr(ino, name).await?;
        match (&old, flags) {
            (Some(_), f) if f & XATTR_CREATE != 0 => return Err(libc::EEXIST),
            (None, f) if f & XATTR_REPLACE != 0 => return Err(libc::ENODATA),
            _ => {}
        }
        let old_total = match (&old, side) {
            // An existing value that does not parse counts as 0.
            (Some(o), Side::Totl(..)) => Some(totl_value(&o.value).unwrap_or(0)),
            _ => None,
        };
        let hash = xattr_name_hash(name);
        let id = match &old {
            Some(o) => o.id,
            None => {
                let i = b.inode(ino);
                let id = i.next_xattr_id.get();
                i.next_xattr_id = (id + 1).into();
                id
            }
        };
        let parts = encode_parts(name, value);
        let old_nparts = old.as_ref().map_or(0, |o| o.nparts);
        for (nr, p) in parts.iter().enumerate() {
            let key = xattr_key(ino, hash, id, nr as u8);
            if nr < old_nparts {
                self.items.update(key, p.clone()).await?;
            } else {
                self.items.create(key, p.clone()).await?;
            }
        }
        for nr in parts.len()..old_nparts {
            self.items
                .delete(xattr_key(ino, hash, id, nr as u8))
                .await?;
        }
        match side {
            Side::Totl(a, bb, c) => {
                let new = new_total.unwrap_or(0);
                let (dv, dc) = match old_total {
                    Some(o) => (new.wrapping_sub(o), 0u64),
                    None => (new, 1u64),
                };
                self.totl_delta(a, bb, c, dv, dc).await?;
            }
            Side::Indx(major, minor) if old.is_none() => {
                self.items
                    .create_force(indx_key(major, minor, ino, id), Vec::new())
                    .await?;
            }
            _ => {}
        }
        if tags.srch && old.is_none() {
            self.trans.srch_add(SrchEntry::new(fnv1a64(name), ino, id));
        }
        b.inode(ino).ctime = now.to_disk();
        b.dirty(ino);
        b.store_all().await?;
        drop(hold);
        Ok(())
    }

    async fn totl_delta(&self, a: u64, b: u64, c: u64, total: u64, count: u64) -> FsResult<()> {
        let v = TotlValue {
            total: total.into(),
            count: count.into(),
        };
        self.items
            .create_force(totl_key(a, b, c), bytes_of(&v))
            .await
    }

    /// An xattr's value: ENODATA if absent.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        check_xattr_name(name)?;
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        self.read_inode(ino).await?;
        match self.find_xattr(ino, name).await? {
            Some(s) => Ok(s.value),
            None => Err(libc::ENODATA),
        }
    }

    /// The names of an inode's xattrs in key (hash) order, `.hide.` ones
    /// left out unless `hidden` (the LISTXATTR_HIDDEN ioctl).
    pub async fn listxattr(&self, ino: u64, hidden: bool) -> FsResult<Vec<Vec<u8>>> {
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Read).await?;
        self.read_inode(ino).await?;
        let mut out = Vec::new();
        for (_, name) in self.xattr_names(ino).await? {
            let hide = matches!(parse_tags(&name), Ok((t, _)) if t.hide);
            if hide == hidden {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// (part-0 key, name) of every xattr of `ino`.
    async fn xattr_names(&self, ino: u64) -> FsResult<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        let last = xattr_key(ino, u64::MAX, u64::MAX, u8::MAX);
        let mut first = xattr_key(ino, 0, 0, 0);
        while let Some((k, v)) = self.items.next(first, last).await? {
            if k.fourth == 0 {
                let (_, n, _) = decode_part0(&v)?;
                out.push((k, n.to_vec()));
            }
            let next = Key {
                fourth: u8::MAX,
                ..k
            }
            .inc();
            if next > last {
                break;
            }
            first = next;
        }
        Ok(out)
    }

    /// Removes an xattr: ENODATA if absent.
    pub async fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> FsResult<()> {
        check_xattr_name(name)?;
        let (tags, _) = parse_tags(name)?;
        if tags.any() && !ctx.cap_sys_admin {
            return Err(libc::EPERM);
        }
        let _op = self.op_lock.lock().await;
        let _locks = self.lock(&[ino], LockMode::Write).await?;
        let now = self.now();
        let hold = self.hold(false).await?;
        let mut b = Batch::new(self);
        b.load(ino).await?;
        if name.starts_with(RETAINED_PREFIX) {
            self.check_retention(b.inode(ino))?;
        }
        let old = self.find_xattr(ino, name).await?.ok_or(libc::ENODATA)?;
        self.delete_xattr_items(ino, name, &old).await?;
        b.inode(ino).ctime = now.to_disk();
        b.dirty(ino);
        b.store_all().await?;
        drop(hold);
        Ok(())
    }

    /// Deletes a found xattr's parts and undoes its tag side effects.
    async fn delete_xattr_items(&self, ino: u64, name: &[u8], old: &Stored) -> FsResult<()> {
        for nr in 0..old.nparts {
            self.items
                .delete(xattr_key(ino, old.hash, old.id, nr as u8))
                .await?;
        }
        let (side, srch) = match parse_tags(name) {
            Ok((tags, at)) => (
                side_of(&tags, &name[at..], self.fmt_vers).unwrap_or(Side::None),
                tags.srch,
            ),
            Err(_) => (Side::None, false),
        };
        if srch {
            // The second identical entry cancels the first (§1.9).
            self.trans
                .srch_add(SrchEntry::new(fnv1a64(name), ino, old.id));
        }
        match side {
            Side::Totl(a, b, c) => {
                let o = totl_value(&old.value).unwrap_or(0);
                self.totl_delta(a, b, c, o.wrapping_neg(), u64::MAX).await?;
            }
            Side::Indx(major, minor) => {
                self.items
                    .delete_force(indx_key(major, minor, ino, old.id))
                    .await?;
            }
            Side::None => {}
        }
        Ok(())
    }

    /// Deletes every xattr of an inode being deleted (inside the caller's
    /// hold), with side effects.
    pub(crate) async fn drop_all_xattrs(&self, ino: u64) -> FsResult<()> {
        for (_, name) in self.xattr_names(ino).await? {
            if let Some(old) = self.find_xattr(ino, &name).await? {
                self.delete_xattr_items(ino, &name, &old).await?;
            }
        }
        Ok(())
    }
}
