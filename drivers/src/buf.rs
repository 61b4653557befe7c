//! Page-aligned, owned I/O buffers, usable for O_DIRECT and io_uring.
//!
//! A buffer either owns its own heap allocation or is one slot of a
//! [`BufPool`]: a single long-lived allocation that the io_uring driver
//! registers with the kernel (fixed buffers). A pool slot goes back to its pool
//! when dropped, never to the allocator, so registered memory is never freed or
//! reused for anything else while a ring may still reference it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use crate::IO_ALIGN_BYTES;

/// A zero-initialised byte buffer aligned to [`IO_ALIGN_BYTES`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Set when this buffer is slot `.1` of a pool; dropping returns the slot.
    pool: Option<(Arc<BufPool>, usize)>,
}

// SAFETY: the buffer exclusively owns its allocation, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out shared slices.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes; `len` must be a non-zero multiple of
    /// [`IO_ALIGN_BYTES`].
    pub fn new(len: usize) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(IO_ALIGN_BYTES),
            "bad buffer length {len}"
        );
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self {
            ptr,
            len,
            pool: None,
        }
    }

    /// A buffer holding a copy of `bytes` (whose length must be aligned).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = Self::new(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, IO_ALIGN_BYTES).expect("aligned layout")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The pool and slot index this buffer belongs to, if it is a pool slot.
    pub(crate) fn pool_slot(&self) -> Option<(&Arc<BufPool>, usize)> {
        self.pool.as_ref().map(|(pool, index)| (pool, *index))
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match self.pool.take() {
            Some((pool, index)) => pool.put_back(index),
            // SAFETY: allocated in `new` with this exact layout.
            None => unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) },
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

/// A fixed set of equally sized, aligned buffers carved out of one allocation
/// that lives as long as the pool (and therefore as long as any slot handed
/// out). Used for io_uring registered buffers.
pub struct BufPool {
    base: NonNull<u8>,
    buf_len: usize,
    count: usize,
    /// Indexes of the slots not handed out, in LIFO order.
    free: Mutex<Vec<usize>>,
}

// SAFETY: the pool owns its allocation; slots are handed out exclusively (each
// index is in at most one `AlignedBuf` or in `free`), guarded by the mutex.
unsafe impl Send for BufPool {}
// SAFETY: as above; shared access only touches the mutex-guarded free list.
unsafe impl Sync for BufPool {}

impl BufPool {
    /// Allocates `count` zeroed buffers of `buf_len` bytes each (`buf_len` a
    /// non-zero multiple of [`IO_ALIGN_BYTES`], `count` > 0).
    pub fn new(count: usize, buf_len: usize) -> Arc<Self> {
        assert!(count > 0, "empty buffer pool");
        assert!(
            buf_len > 0 && buf_len.is_multiple_of(IO_ALIGN_BYTES),
            "bad pool buffer length {buf_len}"
        );
        let layout = Self::layout(count, buf_len);
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Arc::new(Self {
            base,
            buf_len,
            count,
            free: Mutex::new((0..count).rev().collect()),
        })
    }

    fn layout(count: usize, buf_len: usize) -> Layout {
        let total = count.checked_mul(buf_len).expect("pool size overflows");
        Layout::from_size_align(total, IO_ALIGN_BYTES).expect("aligned layout")
    }

    /// Takes a free slot, or `None` when every slot is out. The contents are
    /// whatever the previous user left there.
    pub fn take(self: &Arc<Self>) -> Option<AlignedBuf> {
        let index = self.free.lock().expect("pool lock").pop()?;
        assert!(index < self.count);
        // SAFETY: index < count, so the offset stays inside the allocation.
        let ptr = unsafe { self.base.add(index * self.buf_len) };
        Some(AlignedBuf {
            ptr,
            len: self.buf_len,
            pool: Some((Arc::clone(self), index)),
        })
    }

    fn put_back(&self, index: usize) {
        let mut free = self.free.lock().expect("pool lock");
        debug_assert!(!free.contains(&index), "pool slot {index} returned twice");
        free.push(index);
    }

    /// Length of each buffer in bytes.
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Number of buffers currently free.
    pub fn free_count(&self) -> usize {
        self.free.lock().expect("pool lock").len()
    }

    /// Start address of slot `index` (for registration with the kernel).
    pub(crate) fn slot_ptr(&self, index: usize) -> *mut u8 {
        assert!(index < self.count);
        // SAFETY: index < count keeps the offset inside the allocation.
        unsafe { self.base.as_ptr().add(index * self.buf_len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // Every slot holds an Arc to the pool, so none is out when we get here.
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.base.as_ptr(), Self::layout(self.count, self.buf_len)) }
    }
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("buf_len", &self.buf_len)
            .field("count", &self.count)
            .finish()
    }
}
