//! The control socket's archive operations (reference §9): GET/SET_ATTR_X,
//! RELEASE, STAGE, PUNCH_OFFLINE, MOVE_BLOCKS, DATA_WAITING and
//! DATA_WAIT_ERR, the original's ioctls of the same names.
//!
//! What the original checked on the file description is checked here, on
//! the passed descriptors' open flags: release, stage, punch-offline and
//! move-blocks need a file opened for writing (EINVAL otherwise, EBADF for
//! move-blocks' source), stage refuses O_APPEND, O_DIRECT and O_DSYNC/O_SYNC
//! files (EINVAL). Everything else (alignment, data_version, retention)
//! is the engine's ([`engine::fs`]'s archive module).
//!
//! Touches only `engine::fs` through the bridge and [`super::proto`].

use engine::fs::{Attr, Ctx, SetAttrX, Time};

use super::proto::{
    AttrX, Dec, Enc, Op, SetAttrXReq, DATA_WAITING_BATCH_MAX, IAX_CRTIME, IAX_CTIME,
    IAX_DATA_VERSION, IAX_F_RETENTION, IAX_F_SIZE_OFFLINE, IAX_PROJECT_ID, IAX_RETENTION, IAX_SIZE,
    STAGE_BYTES_MAX,
};
use super::{decode_err, Engine};

/// A file the caller passed: its scoutfs inode and its open flags.
#[derive(Debug, Clone, Copy)]
pub(super) struct Passed {
    pub ino: u64,
    pub flags: i32,
}

impl Passed {
    fn writable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }
}

/// Whether `op` is served here.
pub(super) fn is_archive_op(op: Op) -> bool {
    matches!(
        op,
        Op::GetAttrX
            | Op::SetAttrX
            | Op::Release
            | Op::Stage
            | Op::PunchOffline
            | Op::MoveBlocks
            | Op::DataWaiting
            | Op::DataWaitErr
    )
}

fn attr_x(a: &Attr) -> AttrX {
    AttrX {
        meta_seq: a.meta_seq,
        data_seq: a.data_seq,
        data_version: a.data_version,
        online_blocks: a.online_blocks,
        offline_blocks: a.offline_blocks,
        ctime_sec: a.ctime.sec,
        ctime_nsec: a.ctime.nsec,
        crtime_sec: a.crtime.sec,
        crtime_nsec: a.crtime.nsec,
        size: a.size,
        flags: if a.flags & engine::format::items::INODE_FLAG_RETENTION != 0 {
            IAX_F_RETENTION
        } else {
            0
        },
        project_id: a.proj,
    }
}

fn set_attr_x(r: &SetAttrXReq) -> Result<SetAttrX, i32> {
    let known =
        IAX_DATA_VERSION | IAX_SIZE | IAX_CTIME | IAX_CRTIME | IAX_RETENTION | IAX_PROJECT_ID;
    if r.mask & !known != 0 || r.flags & !(IAX_F_SIZE_OFFLINE | IAX_F_RETENTION) != 0 {
        return Err(libc::EINVAL);
    }
    let has = |bit: u32| r.mask & bit != 0;
    let time = |sec: u64, nsec: u32| -> Result<Time, i32> {
        if nsec >= 1_000_000_000 {
            return Err(libc::EINVAL);
        }
        Ok(Time { sec, nsec })
    };
    Ok(SetAttrX {
        data_version: has(IAX_DATA_VERSION).then_some(r.data_version),
        size: has(IAX_SIZE).then_some(r.size),
        size_offline: r.flags & IAX_F_SIZE_OFFLINE != 0,
        ctime: if has(IAX_CTIME) {
            Some(time(r.ctime_sec, r.ctime_nsec)?)
        } else {
            None
        },
        crtime: if has(IAX_CRTIME) {
            Some(time(r.crtime_sec, r.crtime_nsec)?)
        } else {
            None
        },
        retention: has(IAX_RETENTION).then_some(r.flags & IAX_F_RETENTION != 0),
        project_id: has(IAX_PROJECT_ID).then_some(r.project_id),
    })
}

/// Runs one archive request and, when it may have changed inodes, tells
/// the kernel to forget their cached attributes (even on failure: a
/// partial stage or move changed some).
pub(super) fn run(op: Op, body: &[u8], files: &[Passed], ctx: Ctx, e: &Engine) -> Result<Enc, i32> {
    let r = run_op(op, body, files, ctx, e);
    let changes = !matches!(op, Op::GetAttrX | Op::DataWaiting | Op::DataWaitErr);
    if let (true, Some(n)) = (changes, e.notify.as_ref()) {
        for f in files {
            // Best effort: a stale attribute cache is not worth failing
            // the operation for.
            let _ = n.inval_inode(f.ino);
        }
    }
    r
}

fn run_op(op: Op, body: &[u8], files: &[Passed], ctx: Ctx, e: &Engine) -> Result<Enc, i32> {
    let mut d = Dec::new(body);
    let mut out = Enc::reply_ok();
    let run = |r: std::io::Result<Enc>| r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
    let file = files.first().copied();
    let fs = e.fs.clone();
    match op {
        Op::GetAttrX => {
            let f = file.ok_or(libc::EINVAL)?;
            let r = e.bridge.run(async move {
                // Seqs are of committed state, as STAT's.
                fs.fsync().await?;
                fs.getattr(f.ino).await
            });
            run(r.map(|a| {
                attr_x(&a).encode(&mut out);
                out
            }))
        }
        Op::SetAttrX => {
            let f = file.ok_or(libc::EINVAL)?;
            let set = set_attr_x(&SetAttrXReq::decode(&mut d).map_err(decode_err)?)?;
            let r = e
                .bridge
                .run(async move { fs.set_attr_x(&ctx, f.ino, &set).await });
            run(r.map(|a| {
                attr_x(&a).encode(&mut out);
                out
            }))
        }
        Op::Release => {
            let f = file.ok_or(libc::EINVAL)?;
            let (offset, len, dv) = (
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
            );
            if !f.writable() {
                return Err(libc::EINVAL);
            }
            let r = e
                .bridge
                .run(async move { fs.release_data(f.ino, offset, len, dv).await });
            run(r.map(|_| out))
        }
        Op::Stage => {
            let f = file.ok_or(libc::EINVAL)?;
            let dv = d.u64().map_err(decode_err)?;
            let offset = d.u64().map_err(decode_err)?;
            let data = d.bytes().map_err(decode_err)?.to_vec();
            if data.len() > STAGE_BYTES_MAX {
                return Err(libc::EINVAL);
            }
            let refused = libc::O_APPEND | libc::O_DIRECT | libc::O_DSYNC | libc::O_SYNC;
            if !f.writable() || f.flags & refused != 0 {
                return Err(libc::EINVAL);
            }
            let r = e
                .bridge
                .run(async move { fs.stage(f.ino, dv, offset, &data).await });
            run(r.map(|n| {
                out.u32(n as u32);
                out
            }))
        }
        Op::PunchOffline => {
            let f = file.ok_or(libc::EINVAL)?;
            let (offset, len, dv) = (
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
                d.u64().map_err(decode_err)?,
            );
            let flags = d.u32().map_err(decode_err)?;
            if flags != 0 || !f.writable() {
                return Err(libc::EINVAL);
            }
            let r = e
                .bridge
                .run(async move { fs.punch_offline(f.ino, offset, len, dv).await });
            run(r.map(|_| out))
        }
        Op::MoveBlocks => {
            let (to, from) = match files {
                [to, from] => (*to, *from),
                _ => return Err(libc::EINVAL),
            };
            let from_off = d.u64().map_err(decode_err)?;
            let len = d.u64().map_err(decode_err)?;
            let to_off = d.u64().map_err(decode_err)?;
            let dv = d.u64().map_err(decode_err)?;
            let flags = d.u32().map_err(decode_err)?;
            if !to.writable() {
                return Err(libc::EINVAL);
            }
            if !from.writable() {
                return Err(libc::EBADF);
            }
            let r = e.bridge.run(async move {
                fs.move_blocks(from.ino, from_off, len, to.ino, to_off, dv, flags)
                    .await
            });
            run(r.map(|_| out))
        }
        Op::DataWaiting => {
            let ino = d.u64().map_err(decode_err)?;
            let iblock = d.u64().map_err(decode_err)?;
            let max = d
                .u32()
                .map_err(decode_err)?
                .clamp(1, DATA_WAITING_BATCH_MAX) as usize;
            let rows = e.fs.data_waiting(ino, iblock, max);
            out.u32(rows.len() as u32);
            for w in rows {
                out.u64(w.ino).u64(w.iblock).u8(w.ops).u8(0).u16(0).u32(0);
            }
            Ok(out)
        }
        Op::DataWaitErr => {
            let ino = d.u64().map_err(decode_err)?;
            let dv = d.u64().map_err(decode_err)?;
            let offset = d.u64().map_err(decode_err)?;
            let count = d.u64().map_err(decode_err)?;
            let ops = d.u64().map_err(decode_err)?;
            let err = d.u64().map_err(decode_err)? as i64;
            let ops = u8::try_from(ops).map_err(|_| libc::EINVAL)?;
            // The original takes a negative errno; a positive one means
            // the same.
            let err =
                i32::try_from(err.checked_abs().ok_or(libc::EINVAL)?).map_err(|_| libc::EINVAL)?;
            let r = e
                .bridge
                .run(async move { fs.data_wait_err(ino, dv, offset, count, ops, err).await });
            run(r.map(|n| {
                out.u64(n);
                out
            }))
        }
        _ => Err(libc::EINVAL),
    }
}
