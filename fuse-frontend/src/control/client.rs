//! The client side of the control protocol: one call per connection.
//! [`Client::for_path`] finds a path's mount (st_dev → by-dev → ident);
//! each method sends one request and decodes its reply. Errors are
//! `io::Error`s carrying the errno the daemon answered (or the socket
//! call's own).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::proto::{
    AttrX, Dec, Enc, FiemapExtent, Op, RefEntry, SetAttrXReq, StatReply, StatfsReply, WaitingRow,
    WalkPos, XattrTotal, DATA_WAITING_BATCH_MAX, FIEMAP_BATCH_MAX, QUOTA_RULE_BYTES,
    STAGE_BYTES_MAX, WALK_BATCH_MAX,
};
use super::sock;

/// A mount's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    pub ident: String,
}

/// What Hello answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub fsid: u64,
    pub rid: u64,
    pub pid: u32,
    pub mountpoint: std::path::PathBuf,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Client {
    pub fn new(ident: impl Into<String>) -> Client {
        Client {
            ident: ident.into(),
        }
    }

    /// The client of the scoutfs mount holding `path`: ENOTTY when no
    /// scoutfs daemon serves it (what the original's ioctl answers on
    /// another filesystem). Errors of stat(2) are returned as they are.
    pub fn for_path(path: &Path) -> io::Result<Client> {
        match sock::ident_of_path(path)? {
            Some(id) => Ok(Client::new(id)),
            None => Err(errno(libc::ENOTTY)),
        }
    }

    /// The client of the mount of an open file.
    pub fn for_file(f: &std::fs::File) -> io::Result<Client> {
        use std::os::unix::fs::MetadataExt;
        let dev = f.metadata()?.dev();
        sock::ident_of_dev(dev)
            .map(Client::new)
            .ok_or_else(|| errno(libc::ENOTTY))
    }

    /// Sends `req` (with `fd`) and returns the reply body of a success.
    pub fn call(&self, req: &Enc, fd: Option<&OwnedFd>) -> io::Result<Vec<u8>> {
        match fd {
            Some(f) => self.call_fds(req, &[f]),
            None => self.call_fds(req, &[]),
        }
    }

    /// [`Client::call`] passing several descriptors, in order.
    pub fn call_fds(&self, req: &Enc, fds: &[&OwnedFd]) -> io::Result<Vec<u8>> {
        let conn = sock::connect(&self.ident).map_err(|e| {
            // A by-dev file left by a daemon that died: no such mount.
            match e.raw_os_error() {
                Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => errno(libc::ENOTCONN),
                _ => e,
            }
        })?;
        let pass: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        sock::send_fds(&conn, &req.0, &pass)?;
        let (reply, _) = sock::recv(&conn)?;
        let mut d = Dec::new(&reply);
        let status = d.i32()?;
        if status != 0 {
            return Err(errno(status));
        }
        Ok(reply[4..].to_vec())
    }

    pub fn hello(&self) -> io::Result<Hello> {
        let body = self.call(&Enc::request(Op::Hello), None)?;
        let mut d = Dec::new(&body);
        Ok(Hello {
            fsid: d.u64()?,
            rid: d.u64()?,
            pid: d.u32()?,
            mountpoint: sock::bytes_path(d.bytes()?),
        })
    }

    pub fn statfs(&self) -> io::Result<StatfsReply> {
        let body = self.call(&Enc::request(Op::Statfs), None)?;
        StatfsReply::decode(&mut Dec::new(&body))
    }

    /// STAT_MORE of the open file `f`.
    pub fn stat(&self, f: &OwnedFd) -> io::Result<StatReply> {
        let body = self.call(&Enc::request(Op::Stat), Some(f))?;
        StatReply::decode(&mut Dec::new(&body))
    }

    pub fn sync(&self) -> io::Result<()> {
        self.call(&Enc::request(Op::Sync), None).map(|_| ())
    }

    /// One batch of an index walk (at most [`WALK_BATCH_MAX`] entries).
    pub fn walk_inodes(
        &self,
        index: u8,
        first: WalkPos,
        last: WalkPos,
    ) -> io::Result<Vec<WalkPos>> {
        let mut req = Enc::request(Op::WalkInodes);
        req.u8(index).u8(0).u16(0).u32(WALK_BATCH_MAX);
        req.pos(first).pos(last);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        (0..n).map(|_| d.pos()).collect()
    }

    /// The next path to `ino` after the cursor: (dir, pos, path) or None.
    pub fn ino_path(
        &self,
        ino: u64,
        cursor: (u64, u64),
    ) -> io::Result<Option<(u64, u64, Vec<u8>)>> {
        let mut req = Enc::request(Op::InoPath);
        req.u64(ino).u64(cursor.0).u64(cursor.1);
        match self.call(&req, None) {
            Ok(body) => {
                let mut d = Dec::new(&body);
                let (dir, pos) = (d.u64()?, d.u64()?);
                Ok(Some((dir, pos, d.bytes()?.to_vec())))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Entries referring to `ino` at or after the cursor; the flag says
    /// whether they were the last ones.
    pub fn referring_entries(
        &self,
        ino: u64,
        cursor: (u64, u64),
    ) -> io::Result<(Vec<RefEntry>, bool)> {
        let mut req = Enc::request(Op::ReferringEntries);
        req.u64(ino).u64(cursor.0).u64(cursor.1);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let last = d.u32()? != 0;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let dir = d.u64()?;
            let pos = d.u64()?;
            let dtype = d.u8()?;
            let name = d.bytes()?.to_vec();
            out.push(RefEntry {
                dir,
                pos,
                dtype,
                name,
            });
        }
        Ok((out, last))
    }

    pub fn allocated_inos(&self, start: u64, max: u32) -> io::Result<Vec<u64>> {
        let mut req = Enc::request(Op::AllocatedInos);
        req.u64(start).u32(max).u32(0);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        (0..n).map(|_| d.u64()).collect()
    }

    /// Extents of the open file `f` from logical block `start`: a batch
    /// and whether it ends with the last extent.
    pub fn fiemap(&self, f: &OwnedFd, start: u64) -> io::Result<(Vec<FiemapExtent>, bool)> {
        let mut req = Enc::request(Op::Fiemap);
        req.u64(start).u32(FIEMAP_BATCH_MAX).u32(0);
        let body = self.call(&req, Some(f))?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let last = d.u32()? != 0;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let logical = d.u64()?;
            let physical = d.u64()?;
            let length = d.u64()?;
            let flags = d.u32()?;
            d.u32()?;
            out.push(FiemapExtent {
                logical,
                physical,
                length,
                flags,
            });
        }
        Ok((out, last))
    }

    /// Asks the daemon to unmount, commit, say farewell and exit; returns
    /// once it has done all but exiting.
    /// GET_ATTR_X of the open file `f`.
    pub fn get_attr_x(&self, f: &OwnedFd) -> io::Result<AttrX> {
        let body = self.call(&Enc::request(Op::GetAttrX), Some(f))?;
        AttrX::decode(&mut Dec::new(&body))
    }

    /// SET_ATTR_X on the open file `f`; returns the attributes after.
    pub fn set_attr_x(&self, f: &OwnedFd, req: &SetAttrXReq) -> io::Result<AttrX> {
        let mut e = Enc::request(Op::SetAttrX);
        req.encode(&mut e);
        let body = self.call(&e, Some(f))?;
        AttrX::decode(&mut Dec::new(&body))
    }

    /// RELEASE of `offset..offset+len` of `f` (opened for write).
    pub fn release(&self, f: &OwnedFd, offset: u64, len: u64, data_version: u64) -> io::Result<()> {
        let mut e = Enc::request(Op::Release);
        e.u64(offset).u64(len).u64(data_version);
        self.call(&e, Some(f)).map(|_| ())
    }

    /// STAGE of `data` (at most [`STAGE_BYTES_MAX`]) at `offset`.
    pub fn stage(
        &self,
        f: &OwnedFd,
        data_version: u64,
        offset: u64,
        data: &[u8],
    ) -> io::Result<usize> {
        if data.len() > STAGE_BYTES_MAX {
            return Err(errno(libc::EINVAL));
        }
        let mut e = Enc::request(Op::Stage);
        e.u64(data_version).u64(offset).bytes(data);
        let body = self.call(&e, Some(f))?;
        Ok(Dec::new(&body).u32()? as usize)
    }

    /// PUNCH_OFFLINE of `offset..offset+len` of `f`.
    pub fn punch_offline(
        &self,
        f: &OwnedFd,
        offset: u64,
        len: u64,
        data_version: u64,
    ) -> io::Result<()> {
        let mut e = Enc::request(Op::PunchOffline);
        e.u64(offset).u64(len).u64(data_version).u32(0);
        self.call(&e, Some(f)).map(|_| ())
    }

    /// MOVE_BLOCKS from `from` to `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn move_blocks(
        &self,
        to: &OwnedFd,
        from: &OwnedFd,
        from_off: u64,
        len: u64,
        to_off: u64,
        data_version: u64,
        flags: u32,
    ) -> io::Result<()> {
        let mut e = Enc::request(Op::MoveBlocks);
        e.u64(from_off)
            .u64(len)
            .u64(to_off)
            .u64(data_version)
            .u32(flags);
        self.call_fds(&e, &[to, from]).map(|_| ())
    }

    /// One batch of DATA_WAITING from `(ino, iblock)` on.
    pub fn data_waiting(&self, ino: u64, iblock: u64) -> io::Result<Vec<WaitingRow>> {
        let mut e = Enc::request(Op::DataWaiting);
        e.u64(ino).u64(iblock).u32(DATA_WAITING_BATCH_MAX);
        let body = self.call(&e, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let mut out = Vec::with_capacity(n.min(DATA_WAITING_BATCH_MAX) as usize);
        for _ in 0..n {
            let ino = d.u64()?;
            let iblock = d.u64()?;
            let ops = d.u8()?;
            d.u8()?;
            d.u16()?;
            d.u32()?;
            out.push(WaitingRow { ino, iblock, ops });
        }
        Ok(out)
    }

    /// DATA_WAIT_ERR: the number of waiters failed.
    pub fn data_wait_err(
        &self,
        ino: u64,
        data_version: u64,
        offset: u64,
        count: u64,
        ops: u64,
        err: i64,
    ) -> io::Result<u64> {
        let mut e = Enc::request(Op::DataWaitErr);
        e.u64(ino)
            .u64(data_version)
            .u64(offset)
            .u64(count)
            .u64(ops)
            .u64(err as u64);
        let body = self.call(&e, None)?;
        Dec::new(&body).u64()
    }

    pub fn unmount(&self) -> io::Result<()> {
        self.call(&Enc::request(Op::Unmount), None).map(|_| ())
    }

    /// One batch of `.totl.` totals from `from` (name order).
    pub fn read_xattr_totals(&self, from: [u64; 3]) -> io::Result<Vec<XattrTotal>> {
        let mut req = Enc::request(Op::ReadXattrTotals);
        req.u64(from[0]).u64(from[1]).u64(from[2]);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        (0..n)
            .map(|_| {
                Ok(XattrTotal {
                    name: [d.u64()?, d.u64()?, d.u64()?],
                    total: d.u64()?,
                    count: d.u64()?,
                })
            })
            .collect()
    }

    /// One SEARCH_XATTRS batch: (inodes that may carry `name` from
    /// `next..=last`, whether the search covered everything to `last`).
    pub fn search_xattrs(&self, name: &[u8], next: u64, last: u64) -> io::Result<(Vec<u64>, bool)> {
        let mut req = Enc::request(Op::SearchXattrs);
        req.u64(next).u64(last).bytes(name);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let flags = d.u32()?;
        let n = d.u32()?;
        let inos = (0..n).map(|_| d.u64()).collect::<io::Result<Vec<u64>>>()?;
        Ok((inos, flags & super::proto::SEARCH_FLAG_END != 0))
    }

    /// One batch of `.indx.` entries (major, minor, ino) in `first..=last`.
    pub fn read_xattr_index(
        &self,
        first: (u8, u64, u64),
        last: (u8, u64, u64),
    ) -> io::Result<Vec<(u8, u64, u64)>> {
        let mut req = Enc::request(Op::ReadXattrIndex);
        for p in [first, last] {
            req.u8(p.0).u8(0).u16(0).u32(0).u64(p.1).u64(p.2);
        }
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        (0..n)
            .map(|_| {
                let major = d.u8()?;
                d.u8()?;
                d.u16()?;
                d.u32()?;
                Ok((major, d.u64()?, d.u64()?))
            })
            .collect()
    }

    /// The `.hide.` xattr names of the open file `f` from index `skip`:
    /// a batch and whether it is the last.
    pub fn list_hidden_xattrs(&self, f: &OwnedFd, skip: u32) -> io::Result<(Vec<Vec<u8>>, bool)> {
        let mut req = Enc::request(Op::ListHiddenXattrs);
        req.u32(skip);
        let body = self.call(&req, Some(f))?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let last = d.u32()? != 0;
        let names = (0..n)
            .map(|_| d.bytes().map(|b| b.to_vec()))
            .collect::<io::Result<_>>()?;
        Ok((names, last))
    }

    /// One batch of quota rule values from index `skip` (key order) and
    /// whether it is the last.
    pub fn quota_list(&self, skip: u32) -> io::Result<(Vec<[u8; QUOTA_RULE_BYTES]>, bool)> {
        let mut req = Enc::request(Op::QuotaList);
        req.u32(skip);
        let body = self.call(&req, None)?;
        let mut d = Dec::new(&body);
        let n = d.u32()?;
        let last = d.u32()? != 0;
        let rules = (0..n)
            .map(|_| {
                let b = d.bytes()?;
                b.try_into()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
            })
            .collect::<io::Result<_>>()?;
        Ok((rules, last))
    }

    /// Adds (`add`) or deletes a quota rule value.
    pub fn quota_change(&self, rule: &[u8; QUOTA_RULE_BYTES], add: bool) -> io::Result<()> {
        let mut req = Enc::request(if add { Op::QuotaAdd } else { Op::QuotaDel });
        req.bytes(rule);
        self.call(&req, None).map(|_| ())
    }

    /// Deletes every quota rule; returns how many.
    pub fn quota_wipe(&self) -> io::Result<u64> {
        let body = self.call(&Enc::request(Op::QuotaWipe), None)?;
        Dec::new(&body).u64()
    }
}
