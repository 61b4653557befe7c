//! The control-socket ops of the xattr tags and quotas
//! (docs/control-socket.md ops 21–27 and 31): READ_XATTR_TOTALS,
//! READ_XATTR_INDEX, LIST_HIDDEN_XATTRS, the QUOTA_* rule commands and
//! SEARCH_XATTRS.
//!
//! Reads of committed state (totals, index, rules) first commit this
//! mount's open transaction, as the walks do, so `setfattr …; scoutfs
//! read-xattr-totals` shows the change. Permissions are checked by the
//! caller (`handle`): CAP_SYS_ADMIN for everything but the rule list and
//! the hidden names of a file the caller opened.
//!
//! Touches `engine::fs` (tag reads, quota rules) through the bridge.

use std::io;

use engine::format::items::QuotaRule;
use zerocopy::{FromBytes, IntoBytes};

use super::proto::{
    Dec, Enc, Op, INDEX_BATCH_MAX, MSG_BYTES_MAX, QUOTA_BATCH_MAX, QUOTA_RULE_BYTES,
    SEARCH_BATCH_MAX, SEARCH_FLAG_END, TOTALS_BATCH_MAX,
};
use super::Engine;

fn run<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn dec(_: io::Error) -> i32 {
    libc::EINVAL
}

fn index_pos(d: &mut Dec<'_>) -> Result<(u8, u64, u64), i32> {
    let major = d.u8().map_err(dec)?;
    d.u8().map_err(dec)?;
    d.u16().map_err(dec)?;
    d.u32().map_err(dec)?;
    Ok((major, d.u64().map_err(dec)?, d.u64().map_err(dec)?))
}

fn rule_of(d: &mut Dec<'_>) -> Result<QuotaRule, i32> {
    let b = d.bytes().map_err(dec)?;
    if b.len() != QUOTA_RULE_BYTES {
        return Err(libc::EINVAL);
    }
    QuotaRule::read_from_bytes(b).map_err(|_| libc::EINVAL)
}

/// Runs one tag or quota op and encodes its reply into `out`.
pub(super) fn run_tag_op(
    op: Op,
    d: &mut Dec<'_>,
    ino: Option<u64>,
    e: &Engine,
    mut out: Enc,
) -> Result<Enc, i32> {
    let fs = e.fs.clone();
    match op {
        Op::ReadXattrTotals => {
            let from = [
                d.u64().map_err(dec)?,
                d.u64().map_err(dec)?,
                d.u64().map_err(dec)?,
            ];
            let totals = run(e.bridge.run(async move {
                fs.fsync().await?;
                fs.read_xattr_totals(from, TOTALS_BATCH_MAX).await
            }))?;
            out.u32(totals.len() as u32);
            for t in totals {
                out.u64(t.name[0])
                    .u64(t.name[1])
                    .u64(t.name[2])
                    .u64(t.total)
                    .u64(t.count);
            }
            Ok(out)
        }
        Op::ReadXattrIndex => {
            let first = index_pos(d)?;
            let last = index_pos(d)?;
            let ents = run(e.bridge.run(async move {
                fs.fsync().await?;
                fs.read_xattr_index(first, last, INDEX_BATCH_MAX).await
            }))?;
            out.u32(ents.len() as u32);
            for (major, minor, ino) in ents {
                out.u8(major).u8(0).u16(0).u32(0).u64(minor).u64(ino);
            }
            Ok(out)
        }
        Op::ListHiddenXattrs => {
            let ino = ino.ok_or(libc::EINVAL)?;
            let skip = d.u32().map_err(dec)? as usize;
            let names = run(e.bridge.run(async move { fs.listxattr(ino, true).await }))?;
            let rest = names.get(skip..).unwrap_or_default();
            let mut bytes = 64;
            let mut n = 0;
            for name in rest {
                bytes += 4 + name.len();
                if bytes > MSG_BYTES_MAX {
                    break;
                }
                n += 1;
            }
            out.u32(n as u32).u32(u32::from(n == rest.len()));
            for name in &rest[..n] {
                out.bytes(name);
            }
            Ok(out)
        }
        Op::QuotaList => {
            let skip = d.u32().map_err(dec)? as usize;
            let rules = run(e.bridge.run(async move {
                fs.fsync().await?;
                fs.quota_rules().await
            }))?;
            let rest = rules.get(skip..).unwrap_or_default();
            let n = rest.len().min(QUOTA_BATCH_MAX);
            out.u32(n as u32).u32(u32::from(n == rest.len()));
            for r in &rest[..n] {
                out.bytes(r.as_bytes());
            }
            Ok(out)
        }
        Op::QuotaAdd | Op::QuotaDel => {
            let rule = rule_of(d)?;
            let add = op == Op::QuotaAdd;
            run(e.bridge.run(async move {
                if add {
                    fs.quota_add(&rule).await
                } else {
                    fs.quota_del(&rule).await
                }
            }))?;
            Ok(out)
        }
        Op::QuotaWipe => {
            let n = run(e.bridge.run(async move { fs.quota_wipe().await }))?;
            out.u64(n as u64);
            Ok(out)
        }
        Op::SearchXattrs => {
            let next = d.u64().map_err(dec)?;
            let last = d.u64().map_err(dec)?;
            let name = d.bytes().map_err(dec)?.to_vec();
            let found = run(e.bridge.run(async move {
                fs.fsync().await?;
                fs.search_xattrs(&name, next, last, SEARCH_BATCH_MAX).await
            }))?;
            let flags = if found.done { SEARCH_FLAG_END } else { 0 };
            out.u32(flags).u32(found.inos.len() as u32);
            for ino in found.inos {
                out.u64(ino);
            }
            Ok(out)
        }
        _ => Err(libc::EINVAL),
    }
}
