//! The `uring` driver: block devices reached through one io_uring instance per
//! executor thread.
//!
//! [`UringRing`] owns the ring, a table of in-flight operations and an eventfd.
//! It implements [`Park`]: an idle executor parks by submitting what is queued
//! and waiting in `io_uring_enter` for one completion or the timeout; another
//! thread unparks it by writing the eventfd, on which the ring always keeps a
//! read armed. [`UringDevice`] opens a file or block device (O_DIRECT by
//! default), registers its descriptor with the ring, and turns each request
//! into read/write/fsync/fallocate SQEs.
//!
//! Guarantees:
//! * Buffer ownership: an in-flight operation's [`AlignedBuf`] lives in the
//!   ring's table from submission to completion. Dropping the future early
//!   marks the entry abandoned and asks the kernel to cancel; the buffer is
//!   freed only when the CQE arrives, never while the kernel may still write
//!   to it. Dropping the ring waits for every outstanding completion.
//! * Full transfers: short reads/writes are resubmitted for the remainder;
//!   `EINTR`/`EAGAIN` are retried; a read that hits end of file is `EIO`.
//! * Registered buffers: [`UringRing::register_buffers`] creates a
//!   [`BufPool`] whose slots are used with `READ_FIXED`/`WRITE_FIXED`; any
//!   other buffer goes through plain `READ`/`WRITE`.
//! * Progress under any executor: every poll of a pending op submits and reaps
//!   without blocking. If no thread drives the ring (neither
//!   [`UringRing::block_on`] nor an executor that has called [`Park::park`]
//!   on it), a pending future wakes itself so that a foreign executor keeps
//!   polling it (busy polling; correct, but drive the ring to sleep instead).
//!
//! Blocking exceptions: discard on a block device is a synchronous
//! `BLKDISCARD` ioctl (io_uring has no portable discard op before 6.12), and
//! the zero-fill fallback of discard is synchronous too.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use crate::os::{self, OpenOptions, OpenedDevice};
use crate::{check_io, AlignedBuf, BlockDevice, BufPool, BufResult, IoFuture, Park};

/// Submission queue entries per ring (the completion queue is twice this).
pub const RING_ENTRIES: u32 = 256;
/// Registered file slots per ring: the number of devices open at once that
/// use a fixed file (more devices fall back to plain descriptors).
const REGISTERED_FILES_MAX: u32 = 64;
/// Largest transfer in one SQE; longer buffers go in several steps.
const SQE_BYTES_MAX: usize = 1 << 30;
/// `user_data` of the eventfd read the ring keeps armed.
const EVENTFD_TOKEN: u64 = u64::MAX;
/// `user_data` of operations whose completion nobody waits for (cancels).
const IGNORE_TOKEN: u64 = u64::MAX - 1;
/// Generations wrap below the tokens so a key never collides with them.
const GENERATION_MAX: u32 = 0xffff_0000;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A device descriptor known to a ring; the last in-flight op or device
/// handle to drop it unregisters its fixed-file slot.
#[derive(Debug)]
struct DeviceFile {
    dev: OpenedDevice,
    fixed: Option<u32>,
    ring: Weak<Shared>,
}

impl DeviceFile {
    fn raw_fd(&self) -> i32 {
        self.dev.file.as_raw_fd()
    }
}

impl Drop for DeviceFile {
    fn drop(&mut self) {
        if let (Some(slot), Some(shared)) = (self.fixed, self.ring.upgrade()) {
            // Best effort: a failure only leaves a stale registered file,
            // which the kernel drops with the ring.
            let _ = shared.ring.submitter().register_files_update(slot, &[-1]);
            // Its own lock: this drop may run while the state lock is held
            // (an abandoned op's slot freed during reaping).
            shared.free_files().push(slot);
        }
    }
}

#[derive(Debug)]
enum OpKind {
    Read { offset: u64 },
    Write { offset: u64 },
    Fsync,
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// One in-flight operation in the ring's table.
#[derive(Debug)]
struct Slot {
    generation: u32,
    kind: OpKind,
    file: Arc<DeviceFile>,
    /// Owned by the table while the kernel may touch it.
    buf: Option<AlignedBuf>,
    /// Bytes transferred so far (reads and writes).
    done: usize,
    /// Set once the operation is over.
    result: Option<io::Result<()>>,
    waker: Option<Waker>,
    /// The future was dropped: free the slot (and buffer) at completion.
    abandoned: bool,
}

#[derive(Debug)]
struct State {
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    generation: u32,
    /// Slots whose kernel operation has not completed yet.
    in_flight: usize,
    /// SQEs that did not fit in the submission queue yet.
    backlog: VecDeque<squeue::Entry>,
    eventfd_armed: bool,
    closing: bool,
    pool: Option<Arc<BufPool>>,
}

/// Fields drop in order: the ring (and with it the kernel's registrations)
/// goes before the pool and the eventfd buffer.
struct Shared {
    ring: IoUring,
    state: Mutex<State>,
    eventfd: OwnedFd,
    /// Unused fixed-file slots.
    free_files: Mutex<Vec<u32>>,
    /// Target of the armed eventfd read: a stable heap address.
    eventfd_buf: Box<std::cell::UnsafeCell<u64>>,
    /// Some executor has used this ring as its `Park`.
    park_seen: AtomicBool,
    /// Threads inside `block_on`.
    drivers: AtomicUsize,
}

// SAFETY: `eventfd_buf` is only written by the kernel and never read or
// written by us; every other field is Send + Sync on its own.
unsafe impl Sync for Shared {}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringShared")
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("eventfd", &self.eventfd)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every table mutation is completed before any call that may panic,
        // so a poisoned table is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn free_files(&self) -> MutexGuard<'_, Vec<u32>> {
        self.free_files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn driven(&self) -> bool {
        self.park_seen.load(Ordering::Acquire) || self.drivers.load(Ordering::Acquire) > 0
    }

    fn unpark(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own eventfd.
        let _ = unsafe {
            libc::write(
                self.eventfd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Queues an SQE: into the submission queue if there is room, else into
    /// the backlog. Caller holds the state lock.
    fn push(&self, st: &mut State, entry: squeue::Entry) {
        if st.backlog.is_empty() {
            // SAFETY: we hold the state lock, the only place the submission
            // queue is accessed, so no other SubmissionQueue exists.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: every SQE we build points at memory owned by the table
            // (slot buffers, eventfd_buf) that outlives the operation.
            if unsafe { sq.push(&entry) }.is_ok() {
                return;
            }
        }
        st.backlog.push_back(entry);
    }

    fn drain_backlog(&self, st: &mut State) {
        // SAFETY: as in `push`, the state lock is held.
        let mut sq = unsafe { self.ring.submission_shared() };
        while let Some(entry) = st.backlog.front() {
            // SAFETY: as in `push`.
            if unsafe { sq.push(entry) }.is_err() {
                break;
            }
            st.backlog.pop_front();
        }
        sq.sync();
    }

    fn arm_eventfd(&self, st: &mut State) {
        if st.eventfd_armed || st.closing {
            return;
        }
        let entry = opcode::Read::new(
            types::Fd(self.eventfd.as_raw_fd()),
            self.eventfd_buf.get().cast::<u8>(),
            std::mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(EVENTFD_TOKEN);
        self.push(st, entry);
        st.eventfd_armed = true;
    }

    /// Submits everything queued, without waiting. Caller holds the lock.
    fn submit_now(&self, st: &mut State) {
        loop {
            self.drain_backlog(st);
            match self.ring.submitter().submit() {
                // EBUSY/EAGAIN: the completion queue is full; reaping frees it.
                Ok(_) | Err(_) => {}
            }
            if st.backlog.is_empty() {
                break;
            }
            // SAFETY: state lock held.
            let sq_full = unsafe { self.ring.submission_shared() }.is_full();
            if sq_full {
                // The kernel took nothing; leave the rest for the next round.
                break;
            }
        }
    }

    /// Builds the SQE that continues the op in slot `index`.
    fn sqe_for(&self, st: &mut State, index: u32) -> squeue::Entry {
        let pool = st.pool.clone();
        let slot = st.slots[index as usize].as_mut().expect("live slot");
        let key = (u64::from(slot.generation) << 32) | u64::from(index);
        let file = &slot.file;
        macro_rules! with_fd {
            ($build:expr) => {
                match file.fixed {
                    Some(i) => $build(types::Fixed(i)),
                    None => $build(types::Fd(file.raw_fd())),
                }
            };
        }
        let entry = match slot.kind {
            OpKind::Read { offset } | OpKind::Write { offset } => {
                let is_read = matches!(slot.kind, OpKind::Read { .. });
                let buf = slot.buf.as_mut().expect("op buffer");
                let fixed = match (buf.pool_slot(), &pool) {
                    (Some((p, i)), Some(ours)) if Arc::ptr_eq(p, ours) => Some(i as u16),
                    _ => None,
                };
                let n = (buf.len() - slot.done).min(SQE_BYTES_MAX) as u32;
                let at = offset + slot.done as u64;
                // SAFETY: done < len, so the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(slot.done) };
                match (is_read, fixed) {
                    (true, Some(bi)) => {
                        with_fd!(|fd| opcode::ReadFixed::new(fd, ptr, n, bi).offset(at).build())
                    }
                    (true, None) => with_fd!(|fd| opcode::Read::new(fd, ptr, n).offset(at).build()),
                    (false, Some(bi)) => {
                        with_fd!(|fd| opcode::WriteFixed::new(fd, ptr, n, bi).offset(at).build())
                    }
                    (false, None) => {
                        with_fd!(|fd| opcode::Write::new(fd, ptr, n).offset(at).build())
                    }
                }
            }
            OpKind::Fsync => with_fd!(|fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            OpKind::Fallocate { offset, len, mode } => {
                with_fd!(|fd| opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode)
                    .build())
            }
        };
        entry.user_data(key)
    }

    /// Starts an op: puts it in the table, queues its SQE, returns its key.
    fn start(&self, kind: OpKind, file: Arc<DeviceFile>, buf: Option<AlignedBuf>) -> u64 {
        let mut st = self.lock();
        st.generation = (st.generation + 1) % GENERATION_MAX;
        let generation = st.generation;
        let slot = Slot {
            generation,
            kind,
            file,
            buf,
            done: 0,
            result: None,
            waker: None,
            abandoned: false,
        };
        let index = match st.free_slots.pop() {
            Some(i) => {
                st.slots[i as usize] = Some(slot);
                i
            }
            None => {
                st.slots.push(Some(slot));
                (st.slots.len() - 1) as u32
            }
        };
        st.in_flight += 1;
        let entry = self.sqe_for(&mut st, index);
        self.push(&mut st, entry);
        (u64::from(generation) << 32) | u64::from(index)
    }

    fn free_slot(&self, st: &mut State, index: u32) -> Slot {
        let slot = st.slots[index as usize].take().expect("live slot");
        st.free_slots.push(index);
        slot
    }

    /// Reaps every available completion, resubmitting short transfers.
    /// Returns the wakers to wake once the lock is released.
    fn reap(&self, st: &mut State) -> Vec<Waker> {
        let mut wakers = Vec::new();
        loop {
            let mut batch: Vec<(u64, i32)> = Vec::new();
            {
                // SAFETY: the state lock is held, the only place the
                // completion queue is accessed.
                let cq = unsafe { self.ring.completion_shared() };
                for cqe in cq {
                    batch.push((cqe.user_data(), cqe.result()));
                }
            }
            if batch.is_empty() {
                break;
            }
            for (key, res) in batch {
                self.complete(st, key, res, &mut wakers);
            }
        }
        self.arm_eventfd(st);
        wakers
    }

    fn complete(&self, st: &mut State, key: u64, res: i32, wakers: &mut Vec<Waker>) {
        match key {
            EVENTFD_TOKEN => {
                st.eventfd_armed = false;
                return;
            }
            IGNORE_TOKEN => return,
            _ => {}
        }
        let index = (key & 0xffff_ffff) as u32;
        let generation = (key >> 32) as u32;
        let slot = match st.slots.get_mut(index as usize) {
            Some(Some(slot)) if slot.generation == generation && slot.result.is_none() => slot,
            _ => {
                debug_assert!(false, "completion for unknown op {key:#x}");
                return;
            }
        };
        let outcome: Option<io::Result<()>> = if res == -libc::EINTR || res == -libc::EAGAIN {
            None
        } else if res < 0 {
            Some(Err(errno(-res)))
        } else {
            match slot.kind {
                OpKind::Read { .. } | OpKind::Write { .. } => {
                    let len = slot.buf.as_ref().map_or(0, |b| b.len());
                    if res == 0 {
                        Some(Err(errno(libc::EIO)))
                    } else {
                        slot.done += res as usize;
                        assert!(slot.done <= len, "kernel transferred past the buffer");
                        (slot.done == len).then_some(Ok(()))
                    }
                }
                OpKind::Fsync | OpKind::Fallocate { .. } => Some(Ok(())),
            }
        };
        match outcome {
            None => {
                // Not finished: continue with what remains, same slot.
                if slot.abandoned {
                    st.in_flight -= 1;
                    self.free_slot(st, index);
                    return;
                }
                let entry = self.sqe_for(st, index);
                self.push(st, entry);
            }
            Some(result) => {
                st.in_flight -= 1;
                if slot.abandoned {
                    // Nobody waits: the kernel is done with the buffer, free it.
                    self.free_slot(st, index);
                } else {
                    slot.result = Some(result);
                    if let Some(w) = slot.waker.take() {
                        wakers.push(w);
                    }
                }
            }
        }
    }

    /// Submits, then blocks for one completion (or `timeout`), then reaps.
    fn wait(&self, timeout: Option<Duration>) -> io::Result<()> {
        let wakers = {
            let mut st = self.lock();
            self.arm_eventfd(&mut st);
            self.submit_now(&mut st);
            self.reap(&mut st)
        };
        if !wakers.is_empty() {
            wakers.into_iter().for_each(Waker::wake);
            return Ok(());
        }
        // Wait without the lock so other threads may submit meanwhile. Any
        // completion that lands from here on makes the wait return.
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        let wakers = {
            let mut st = self.lock();
            self.submit_now(&mut st);
            self.reap(&mut st)
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nobody holds a future any more, but abandoned ops may still be in
        // the kernel with buffers in the table: wait for all of them (and for
        // the armed eventfd read, whose buffer we own) before freeing.
        self.state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .closing = true;
        self.unpark();
        loop {
            let (in_flight, armed) = {
                let mut st = self.lock();
                self.submit_now(&mut st);
                let _ = self.reap(&mut st);
                (st.in_flight, st.eventfd_armed)
            };
            if in_flight == 0 && !armed {
                break;
            }
            if armed {
                self.unpark();
            }
            if let Err(e) = self.ring.submitter().submit_and_wait(1) {
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                    // The ring is unusable; leak the table rather than free
                    // memory the kernel may still write.
                    let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
                    std::mem::forget(std::mem::take(&mut st.slots));
                    break;
                }
            }
        }
    }
}

/// One io_uring instance, shared by the devices of one executor thread.
/// Cloning gives another handle to the same ring.
#[derive(Clone, Debug)]
pub struct UringRing {
    shared: Arc<Shared>,
}

impl UringRing {
    /// Creates a ring with [`RING_ENTRIES`] submission entries.
    pub fn new() -> io::Result<Self> {
        Self::with_entries(RING_ENTRIES)
    }

    /// Creates a ring with `entries` submission entries (a power of two).
    pub fn with_entries(entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        // Sparse fixed-file table; older kernels without it use plain fds.
        let have_files = ring
            .submitter()
            .register_files_sparse(REGISTERED_FILES_MAX)
            .is_ok();
        // SAFETY: plain syscall; returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        let free_files = if have_files {
            (0..REGISTERED_FILES_MAX).rev().collect()
        } else {
            Vec::new()
        };
        let shared = Arc::new(Shared {
            ring,
            state: Mutex::new(State {
                slots: Vec::new(),
                free_slots: Vec::new(),
                generation: 0,
                in_flight: 0,
                backlog: VecDeque::new(),
                eventfd_armed: false,
                closing: false,
                pool: None,
            }),
            eventfd,
            free_files: Mutex::new(free_files),
            eventfd_buf: Box::new(std::cell::UnsafeCell::new(0)),
            park_seen: AtomicBool::new(false),
            drivers: AtomicUsize::new(0),
        });
        {
            let mut st = shared.lock();
            shared.arm_eventfd(&mut st);
            shared.submit_now(&mut st);
        }
        Ok(Self { shared })
    }

    /// Registers `count` buffers of `buf_len` bytes with the kernel and
    /// returns their pool; buffers taken from it are transferred with
    /// `READ_FIXED`/`WRITE_FIXED`. One pool per ring (`EBUSY` after that).
    pub fn register_buffers(&self, count: usize, buf_len: usize) -> io::Result<Arc<BufPool>> {
        if count == 0 || count > usize::from(u16::MAX) {
            return Err(errno(libc::EINVAL));
        }
        let mut st = self.shared.lock();
        if st.pool.is_some() {
            return Err(errno(libc::EBUSY));
        }
        let pool = BufPool::new(count, buf_len);
        let iovecs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                iov_base: pool.slot_ptr(i).cast(),
                iov_len: buf_len,
            })
            .collect();
        // SAFETY: the iovecs describe the pool's allocation, which the ring
        // keeps alive (st.pool, and `Shared` drops the ring first) for as
        // long as the registration exists.
        unsafe { self.shared.ring.submitter().register_buffers(&iovecs)? };
        st.pool = Some(Arc::clone(&pool));
        Ok(pool)
    }

    /// The registered buffer pool, if any.
    pub fn buffer_pool(&self) -> Option<Arc<BufPool>> {
        self.shared.lock().pool.clone()
    }

    /// Number of operations the kernel has not completed yet (including ones
    /// whose futures were dropped).
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Submits queued operations and dispatches available completions,
    /// without blocking.
    pub fn poll_completions(&self) {
        let wakers = {
            let mut st = self.shared.lock();
            self.shared.submit_now(&mut st);
            self.shared.reap(&mut st)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Runs `f` to completion on this thread, parking on the ring while it is
    /// pending. For tests and tools.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        struct Driving<'a>(&'a Shared);
        impl Drop for Driving<'_> {
            fn drop(&mut self) {
                self.0.drivers.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.shared.drivers.fetch_add(1, Ordering::AcqRel);
        let _driving = Driving(&self.shared);

        let notify = Arc::new(BlockOnWaker {
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            ring: Arc::downgrade(&self.shared),
        });
        let waker = Waker::from(Arc::clone(&notify));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            notify.sleeping.store(true, Ordering::SeqCst);
            if !notify.woken.swap(false, Ordering::SeqCst) {
                // A wait error leaves nothing to do but poll again.
                let _ = self.shared.wait(None);
            }
            notify.sleeping.store(false, Ordering::SeqCst);
            notify.woken.store(false, Ordering::SeqCst);
        }
    }
}

struct BlockOnWaker {
    woken: AtomicBool,
    sleeping: AtomicBool,
    ring: Weak<Shared>,
}

impl Wake for BlockOnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(ring) = self.ring.upgrade() {
                ring.unpark();
            }
        }
    }
}

impl Park for UringRing {
    fn park(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.shared.park_seen.store(true, Ordering::Release);
        self.shared.wait(timeout)
    }

    fn unpark(&self) {
        self.shared.unpark();
    }
}

/// The future of one ring operation; yields the op's buffer and result.
struct OpFuture {
    shared: Arc<Shared>,
    key: u64,
    finished: bool,
}

impl OpFuture {
    fn index(&self) -> u32 {
        (self.key & 0xffff_ffff) as u32
    }

    /// Takes the result out of the table if the op is over.
    fn try_take(&self, st: &mut State) -> Option<(Option<AlignedBuf>, io::Result<()>)> {
        let slot = st.slots[self.index() as usize].as_ref().expect("live slot");
        debug_assert_eq!(u64::from(slot.generation), self.key >> 32);
        slot.result.as_ref()?;
        let mut slot = self.shared.free_slot(st, self.index());
        let result = slot.result.take().expect("result");
        Some((slot.buf.take(), result))
    }
}

impl Future for OpFuture {
    type Output = (Option<AlignedBuf>, io::Result<()>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.finished, "OpFuture polled after completion");
        let shared = Arc::clone(&self.shared);
        let (done, wakers) = {
            let mut st = shared.lock();
            match self.try_take(&mut st) {
                Some(out) => (Some(out), Vec::new()),
                None => {
                    // Make progress without blocking, then look again.
                    shared.submit_now(&mut st);
                    let wakers = shared.reap(&mut st);
                    match self.try_take(&mut st) {
                        Some(out) => (Some(out), wakers),
                        None => {
                            let slot = st.slots[self.index() as usize].as_mut().expect("live slot");
                            slot.waker = Some(cx.waker().clone());
                            (None, wakers)
                        }
                    }
                }
            }
        };
        wakers.into_iter().for_each(Waker::wake);
        match done {
            Some(out) => {
                self.finished = true;
                Poll::Ready(out)
            }
            None => {
                if !shared.driven() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = self.shared.lock();
        let index = self.index();
        let slot = st.slots[index as usize].as_mut().expect("live slot");
        if slot.result.is_some() {
            // Completed but never collected: the kernel is done, free it.
            self.shared.free_slot(&mut st, index);
            return;
        }
        // Park the buffer in the table until the CQE arrives.
        slot.abandoned = true;
        slot.waker = None;
        let cancel = opcode::AsyncCancel::new(self.key)
            .build()
            .user_data(IGNORE_TOKEN);
        self.shared.push(&mut st, cancel);
        self.shared.submit_now(&mut st);
    }
}

/// A file or block device whose I/O goes through a [`UringRing`].
#[derive(Clone, Debug)]
pub struct UringDevice {
    shared: Arc<Shared>,
    file: Arc<DeviceFile>,
}

impl UringDevice {
    /// Opens `path` with `O_DIRECT`, not exclusive.
    pub fn open(ring: &UringRing, path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with(ring, path, &OpenOptions::new().direct(true))
    }

    /// Opens `path` with the given options and registers its descriptor.
    pub fn open_with(
        ring: &UringRing,
        path: impl AsRef<Path>,
        opts: &OpenOptions,
    ) -> io::Result<Self> {
        let dev = os::open_device(path.as_ref(), opts)?;
        let shared = Arc::clone(&ring.shared);
        let fixed = {
            let mut free = shared.free_files();
            match free.pop() {
                Some(slot) => {
                    match shared
                        .ring
                        .submitter()
                        .register_files_update(slot, &[dev.file.as_raw_fd()])
                    {
                        Ok(_) => Some(slot),
                        Err(_) => {
                            free.push(slot);
                            None
                        }
                    }
                }
                None => None,
            }
        };
        let file = Arc::new(DeviceFile {
            dev,
            fixed,
            ring: Arc::downgrade(&shared),
        });
        Ok(Self { shared, file })
    }

    /// Whether the path opened was a block device.
    pub fn is_block_device(&self) -> bool {
        self.file.dev.is_block
    }

    /// Whether the descriptor is registered with the ring (fixed file).
    pub fn is_registered(&self) -> bool {
        self.file.fixed.is_some()
    }

    /// The ring this device submits to.
    pub fn ring(&self) -> UringRing {
        UringRing {
            shared: Arc::clone(&self.shared),
        }
    }

    fn start(&self, kind: OpKind, buf: Option<AlignedBuf>) -> OpFuture {
        let key = self.shared.start(kind, Arc::clone(&self.file), buf);
        OpFuture {
            shared: Arc::clone(&self.shared),
            key,
            finished: false,
        }
    }

    fn rw(&self, offset: u64, buf: AlignedBuf, write: bool) -> IoFuture<BufResult> {
        if let Err(e) = check_io(offset, buf.len() as u64, self.size_bytes()) {
            return Box::pin(std::future::ready((buf, Err(e))));
        }
        let kind = if write {
            OpKind::Write { offset }
        } else {
            OpKind::Read { offset }
        };
        let op = self.start(kind, Some(buf));
        Box::pin(async move {
            let (buf, res) = op.await;
            (buf.expect("read/write keeps its buffer"), res)
        })
    }
}

impl BlockDevice for UringDevice {
    fn read_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        self.rw(offset, buf, false)
    }

    fn write_at(&self, offset: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        self.rw(offset, buf, true)
    }

    fn flush(&self) -> IoFuture<io::Result<()>> {
        let op = self.start(OpKind::Fsync, None);
        Box::pin(async move { op.await.1 })
    }

    fn discard(&self, offset: u64, len: u64) -> IoFuture<io::Result<()>> {
        if let Err(e) = check_io(offset, len, self.size_bytes()) {
            return Box::pin(std::future::ready(Err(e)));
        }
        if len == 0 {
            return Box::pin(std::future::ready(Ok(())));
        }
        let file = Arc::clone(&self.file);
        if file.dev.is_block {
            // Synchronous ioctl, see the module comment.
            return Box::pin(std::future::ready(os::discard(&file.dev, offset, len)));
        }
        let op = self.start(
            OpKind::Fallocate {
                offset,
                len,
                mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            },
            None,
        );
        Box::pin(async move {
            match op.await.1 {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    os::discard(&file.dev, offset, len)
                }
                other => other,
            }
        })
    }

    fn size_bytes(&self) -> u64 {
        self.file.dev.size_bytes
    }
}
