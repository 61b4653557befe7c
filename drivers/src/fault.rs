//! The `fault` driver: an in-memory device for crash tests and the
//! deterministic simulation.
//!
//! It keeps two images apart, like redb's crash-consistency backend: the
//! *written* image (what reads return) and the *durable* image (what the last
//! completed flush made durable), plus the unflushed writes and discards in the
//! order they completed. [`FaultDevice::crash`] builds the device a reboot would
//! see: the durable image plus a seeded-random subset of the unflushed writes,
//! some of them torn at 4 KiB sector granularity.
//!
//! Faults: `EIO` on the Nth op, on every op after N ("fail after N ops", as
//! redb's fuzzer does), or on reads/writes touching given byte ranges; bit
//! flips in the written image. A failed write or discard changes nothing.
//!
//! Optional completion delay: each op's future returns `Pending` (waking itself
//! at once) a seeded-random number of times before it takes effect, so a
//! single-threaded simulation executor interleaves I/O differently per seed.
//! An op takes effect (and reads see the image) at its final poll.
//!
//! Determinism: everything is a function of the seeds and the order of calls
//! and polls. No clocks, no thread-local randomness, no `HashMap` iteration.
//!
//! Memory: images are sparse maps of 4 KiB sectors; sectors never written (or
//! written with zeros, or discarded) cost nothing and read as zeros, so a
//! 64 GiB device with a few written blocks costs a few pages.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{check_io, AlignedBuf, BlockDevice, BufResult, IoFuture, IO_ALIGN_BYTES};

/// Sector size of the images: torn writes tear at this granularity.
pub const SECTOR_BYTES: u64 = IO_ALIGN_BYTES as u64;
const SECTOR: usize = IO_ALIGN_BYTES;

type Sector = Box<[u8; SECTOR]>;

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// A sparse image: absent sectors are zeros, and all-zero sectors are never
/// stored.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
struct Image {
    sectors: BTreeMap<u64, Sector>,
}

impl Image {
    fn read(&self, offset: u64, buf: &mut [u8]) {
        debug_assert!(offset.is_multiple_of(SECTOR_BYTES) && buf.len().is_multiple_of(SECTOR));
        let first = offset / SECTOR_BYTES;
        for (i, chunk) in buf.chunks_exact_mut(SECTOR).enumerate() {
            match self.sectors.get(&(first + i as u64)) {
                Some(sector) => chunk.copy_from_slice(&sector[..]),
                None => chunk.fill(0),
            }
        }
    }

    fn write_sector(&mut self, index: u64, data: &[u8]) {
        debug_assert_eq!(data.len(), SECTOR);
        if data.iter().all(|&b| b == 0) {
            self.sectors.remove(&index);
        } else {
            let mut sector: Sector = Box::new([0u8; SECTOR]);
            sector.copy_from_slice(data);
            self.sectors.insert(index, sector);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        debug_assert!(offset.is_multiple_of(SECTOR_BYTES) && data.len().is_multiple_of(SECTOR));
        let first = offset / SECTOR_BYTES;
        for (i, chunk) in data.chunks_exact(SECTOR).enumerate() {
            self.write_sector(first + i as u64, chunk);
        }
    }

    /// Zeroes `count` sectors from `first`; costs O(stored sectors in range).
    fn zero_sectors(&mut self, first: u64, count: u64) {
        let doomed: Vec<u64> = self
            .sectors
            .range(first..first.saturating_add(count))
            .map(|(&k, _)| k)
            .collect();
        for k in doomed {
            self.sectors.remove(&k);
        }
    }

    fn apply(&mut self, op: &PendingOp) {
        match &op.kind {
            PendingKind::Data(data) => self.write(op.offset, data),
            PendingKind::Zero { len } => {
                self.zero_sectors(op.offset / SECTOR_BYTES, len / SECTOR_BYTES)
            }
        }
    }

    /// FNV-1a over (index, bytes) of every stored sector, in order.
    fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (k, sector) in &self.sectors {
            eat(&k.to_le_bytes());
            eat(&sector[..]);
        }
        h
    }
}

/// A write or discard that completed but has not been made durable.
#[derive(Clone, Debug)]
struct PendingOp {
    offset: u64,
    kind: PendingKind,
}

#[derive(Clone, Debug)]
enum PendingKind {
    Data(Vec<u8>),
    Zero { len: u64 },
}

impl PendingOp {
    fn sector_count(&self) -> u64 {
        match &self.kind {
            PendingKind::Data(data) => data.len() as u64 / SECTOR_BYTES,
            PendingKind::Zero { len } => len / SECTOR_BYTES,
        }
    }
}

/// What happens to the unflushed writes when [`FaultDevice::crash`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unflushed write and discard is lost: only the durable image stays.
    LoseUnflushed,
    /// Every unflushed write and discard lands whole.
    KeepUnflushed,
    /// Each unflushed write or discard, in completion order, is independently
    /// lost, kept whole, torn to a prefix of its sectors, or torn to a random
    /// subset of its sectors (each with probability 1/4, from the seed).
    Random,
}

/// Faults to inject; ops are counted from 0 in the order they are issued
/// (every `read_at`, `write_at`, `flush` and `discard` call is one op).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// The op with this index fails with `EIO`.
    pub fail_op_index: Option<u64>,
    /// Ops with an index ≥ this fail with `EIO` (the first N ops succeed).
    pub fail_after_ops: Option<u64>,
    /// Reads touching any of these byte ranges fail with `EIO`.
    pub read_error_ranges: Vec<Range<u64>>,
    /// Writes and discards touching any of these byte ranges fail with `EIO`.
    pub write_error_ranges: Vec<Range<u64>>,
}

impl FaultConfig {
    fn fails_op(&self, index: u64) -> bool {
        self.fail_op_index == Some(index) || self.fail_after_ops.is_some_and(|n| index >= n)
    }
}

fn overlaps(ranges: &[Range<u64>], offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len);
    ranges.iter().any(|r| r.start < end && offset < r.end)
}

#[derive(Debug)]
struct State {
    written: Image,
    durable: Image,
    /// Completed writes/discards not yet covered by a flush, in completion order.
    unflushed: Vec<PendingOp>,
    faults: FaultConfig,
    ops_issued: u64,
    /// Seeded source of per-op delays; `None` means every op completes at its
    /// first poll.
    delay: Option<(SmallRng, u32)>,
}

impl State {
    /// Registers one issued op; returns (fails?, polls to stay pending).
    fn issue(&mut self, extra_failure: bool) -> (bool, u32) {
        let index = self.ops_issued;
        self.ops_issued += 1;
        let fail = extra_failure || self.faults.fails_op(index);
        let delay = match &mut self.delay {
            Some((rng, max)) if *max > 0 => rng.gen_range(0..=*max),
            _ => 0,
        };
        (fail, delay)
    }
}

/// An in-memory device with separate written and durable images; see the
/// module comment. Clones share the same device.
#[derive(Clone, Debug)]
pub struct FaultDevice {
    state: Arc<Mutex<State>>,
    size_bytes: u64,
}

impl FaultDevice {
    /// A zero-filled device of `size_bytes` (a multiple of 4 KiB).
    pub fn new(size_bytes: u64) -> Self {
        Self::from_image(size_bytes, Image::default())
    }

    fn from_image(size_bytes: u64, image: Image) -> Self {
        assert!(
            size_bytes.is_multiple_of(SECTOR_BYTES),
            "device size {size_bytes} is not a multiple of {SECTOR_BYTES}"
        );
        Self {
            state: Arc::new(Mutex::new(State {
                written: image.clone(),
                durable: image,
                unflushed: Vec::new(),
                faults: FaultConfig::default(),
                ops_issued: 0,
                delay: None,
            })),
            size_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the images consistent (every
        // mutation is a single insert/remove), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes each op stay `Pending` (waking itself) a seeded-random number of
    /// polls in `0..=max_pending_polls` before it takes effect.
    pub fn set_completion_delay(&self, seed: u64, max_pending_polls: u32) {
        self.lock().delay = Some((SmallRng::seed_from_u64(seed), max_pending_polls));
    }

    /// Replaces the fault configuration.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    /// The current fault configuration.
    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults = FaultConfig::default();
    }

    /// Makes op number `index` (0-based, counting all ops issued so far) fail with `EIO`.
    pub fn fail_op(&self, index: u64) {
        self.lock().faults.fail_op_index = Some(index);
    }

    /// Lets `ops` more ops succeed, then fails every later op with `EIO`.
    pub fn fail_after(&self, ops: u64) {
        let mut st = self.lock();
        st.faults.fail_after_ops = Some(st.ops_issued + ops);
    }

    /// Fails reads touching `range` (bytes) with `EIO`.
    pub fn fail_reads_in(&self, range: Range<u64>) {
        self.lock().faults.read_error_ranges.push(range);
    }

    /// Fails writes and discards touching `range` (bytes) with `EIO`.
    pub fn fail_writes_in(&self, range: Range<u64>) {
        self.lock().faults.write_error_ranges.push(range);
    }

    /// Flips bit `bit` (0..8) of byte `byte_offset` in the written image:
    /// later reads see it; the durable image (and so a crash) does not.
    pub fn flip_bit(&self, byte_offset: u64, bit: u8) {
        assert!(byte_offset < self.size_bytes && bit < 8);
        let mut st = self.lock();
        let index = byte_offset / SECTOR_BYTES;
        let mut data = [0u8; SECTOR];
        st.written.read(index * SECTOR_BYTES, &mut data);
        data[(byte_offset % SECTOR_BYTES) as usize] ^= 1 << bit;
        st.written.write_sector(index, &data);
    }

    /// Number of ops issued so far.
    pub fn ops_issued(&self) -> u64 {
        self.lock().ops_issued
    }

    /// Number of completed writes/discards not yet made durable by a flush.
    pub fn unflushed_count(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// Sectors stored for the written and durable images together: the
    /// memory cost of the device is about this times 4 KiB.
    pub fn resident_sectors(&self) -> usize {
        let st = self.lock();
        st.written.sectors.len() + st.durable.sectors.len()
    }

    /// A digest of the written image (equal images have equal digests).
    pub fn written_digest(&self) -> u64 {
        self.lock().written.digest()
    }

    /// A digest of the durable image.
    pub fn durable_digest(&self) -> u64 {
        self.lock().durable.digest()
    }

    /// Reads from the written image synchronously, bypassing faults and delays
    /// (for checkers). Same alignment rules as [`BlockDevice::read_at`].
    pub fn peek(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_io(offset, buf.len() as u64, self.size_bytes)?;
        self.lock().written.read(offset, buf);
        Ok(())
    }

    /// Reads from the durable image synchronously (for checkers).
    pub fn peek_durable(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_io(offset, buf.len() as u64, self.size_bytes)?;
        self.lock().durable.read(offset, buf);
        Ok(())
    }

    /// The device a power loss now would leave behind: the durable image plus
    /// the unflushed writes chosen by `mode` (seeded by `seed`). The new device
    /// has no faults and no delay, and its written and durable images are
    /// equal. `self` is left untouched.
    pub fn crash(&self, seed: u64, mode: CrashMode) -> FaultDevice {
        let st = self.lock();
        let mut image = st.durable.clone();
        let mut rng = SmallRng::seed_from_u64(seed);
        for op in &st.unflushed {
            match mode {
                CrashMode::LoseUnflushed => {}
                CrashMode::KeepUnflushed => image.apply(op),
                CrashMode::Random => match rng.gen_range(0..4u32) {
                    0 => {}
                    1 => image.apply(op),
                    2 => {
                        let keep = rng.gen_range(0..=op.sector_count());
                        apply_torn(&mut image, op, Tear::Prefix(keep), &mut rng);
                    }
                    _ => apply_torn(&mut image, op, Tear::Subset, &mut rng),
                },
            }
        }
        drop(st);
        FaultDevice::from_image(self.size_bytes, image)
    }

    /// Writes the durable image to a (sparse) regular file of the device's
    /// size, for reopening with the `file` driver.
    pub fn write_image_to(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let image = self.lock().durable.clone();
        let file = File::create(path)?;
        file.set_len(self.size_bytes)?;
        for (index, sector) in &image.sectors {
            file.write_all_at(&sector[..], index * SECTOR_BYTES)?;
        }
        file.sync_all()
    }

    /// Loads a device from an image file (size a multiple of 4 KiB); holes are
    /// skipped with `SEEK_DATA`/`SEEK_HOLE`, so sparse files load fast.
    pub fn from_file(path: impl AsRef<Path>) -> io::Result<FaultDevice> {
        let file = File::open(path)?;
        let size_bytes = file.metadata()?.len();
        if size_bytes % SECTOR_BYTES != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut image = Image::default();
        let mut chunk = vec![0u8; 256 * SECTOR];
        let mut pos: u64 = 0;
        while pos < size_bytes {
            let Some((start, end)) = next_data_extent(&file, pos, size_bytes)? else {
                break;
            };
            // Extents from the filesystem are block-aligned; widen to sectors.
            let mut at = start - start % SECTOR_BYTES;
            let end = end.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
            let end = end.min(size_bytes);
            while at < end {
                let n = ((end - at) as usize).min(chunk.len());
                file.read_exact_at(&mut chunk[..n], at)?;
                image.write(at, &chunk[..n]);
                at += n as u64;
            }
            pos = end;
        }
        Ok(FaultDevice::from_image(size_bytes, image))
    }
}

/// How a torn write or discard lands.
#[derive(Clone, Copy)]
enum Tear {
    /// Only the first N sectors land.
    Prefix(u64),
    /// Each sector lands on a seeded coin flip.
    Subset,
}

/// Applies part of `op` to `image`: the torn-write model.
fn apply_torn(image: &mut Image, op: &PendingOp, tear: Tear, rng: &mut SmallRng) {
    let first = op.offset / SECTOR_BYTES;
    match (&op.kind, tear) {
        (PendingKind::Data(data), Tear::Prefix(keep)) => {
            let keep = keep as usize * SECTOR;
            image.write(op.offset, &data[..keep]);
        }
        (PendingKind::Data(data), Tear::Subset) => {
            for (i, chunk) in data.chunks_exact(SECTOR).enumerate() {
                if rng.gen_bool(0.5) {
                    image.write_sector(first + i as u64, chunk);
                }
            }
        }
        (PendingKind::Zero { .. }, Tear::Prefix(keep)) => image.zero_sectors(first, keep),
        (PendingKind::Zero { len }, Tear::Subset) => {
            // Only stored sectors can change, so flip coins for those alone
            // (a discard may span most of a 64 GiB device).
            let stored: Vec<u64> = image
                .sectors
                .range(first..first + len / SECTOR_BYTES)
                .map(|(&k, _)| k)
                .collect();
            for k in stored {
                if rng.gen_bool(0.5) {
                    image.sectors.remove(&k);
                }
            }
        }
    }
}

/// The next data extent at or after `pos`, clipped to `size`, or `None`.
fn next_data_extent(file: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // No SEEK_DATA support: treat the rest as data.
            Some(libc::EINVAL) => Ok(Some((pos, size))),
            _ => Err(err),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some((start as u64, (end as u64).min(size))))
}

/// Returns `Pending` `polls` times, waking itself each time, then `Ready`.
struct Delay {
    polls: u32,
}

impl Future for Delay {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.polls == 0 {
            return Poll::Ready(());
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl BlockDevice for FaultDevice {
    fn read_at(&self, offset: u64, mut buf: AlignedBuf) -> IoFuture<BufResult> {
        let len = buf.len() as u64;
        let (fail, polls) = {
            let mut st = self.lock();
            let range_fault = overlaps(&st.faults.read_error_ranges, offset, len);
            st.issue(range_fault)
        };
        let this = self.clone();
        Box::pin(async move {
            Delay { polls }.await;
            if let Err(e) = check_io(offset, len, this.size_bytes) {
                return (buf, Err(e));
            }
            if fail {
                return (buf, Err(eio()));
            }
            this.lock().written.read(offset, &mut buf);
            (buf, Ok(()))
        })
    }

    fn write_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        let len = buf.len() as u64;
        let (fail, polls) = {
            let mut st = self.lock();
            let range_fault = overlaps(&st.faults.write_error_ranges, offset, len);
            st.issue(range_fault)
        };
        let this = self.clone();
        Box::pin(async move {
            Delay { polls }.await;
            if let Err(e) = check_io(offset, len, this.size_bytes) {
                return (buf, Err(e));
            }
            if fail {
                return (buf, Err(eio()));
            }
            let mut st = this.lock();
            st.written.write(offset, &buf);
            st.unflushed.push(PendingOp {
                offset,
                kind: PendingKind::Data(buf.to_vec()),
            });
            drop(st);
            (buf, Ok(()))
        })
    }

    fn flush(&self) -> IoFuture<io::Result<()>> {
        let (fail, polls) = self.lock().issue(false);
        let this = self.clone();
        Box::pin(async move {
            Delay { polls }.await;
            if fail {
                return Err(eio());
            }
            // Every write that completed before now becomes durable, in order.
            let mut st = this.lock();
            let pending = std::mem::take(&mut st.unflushed);
            for op in &pending {
                st.durable.apply(op);
            }
            Ok(())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> IoFuture<io::Result<()>> {
        let (fail, polls) = {
            let mut st = self.lock();
            let range_fault = overlaps(&st.faults.write_error_ranges, offset, len);
            st.issue(range_fault)
        };
        let this = self.clone();
        Box::pin(async move {
            Delay { polls }.await;
            check_io(offset, len, this.size_bytes)?;
            if fail {
                return Err(eio());
            }
            let op = PendingOp {
                offset,
                kind: PendingKind::Zero { len },
            };
            let mut st = this.lock();
            st.written.apply(&op);
            st.unflushed.push(op);
            Ok(())
        })
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}
