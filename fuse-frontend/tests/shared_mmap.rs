//! Shared writable mmap of our direct-I/O files (docs/fuse.md).
//!
//! One mount: stores into a MAP_SHARED mapping are what read(2) returns
//! right away (another descriptor, no msync), a pwrite shows in the
//! mapping, and after munmap and a remount the file holds the stores.
//!
//! Two mounts of one volume: a store on mount A followed by msync (or
//! fsync) is what mount B reads; B's pwrite shows up in A's live mapping,
//! polled with a deadline: A drops its pages after answering the lock
//! invalidation, so its first look may still see the old bytes. (A store
//! without msync/fsync reaches the daemon only with the kernel's
//! writeback: FUSE tells the daemon nothing at page_mkwrite.)
//!
//! Needs root and /dev/fuse; skipped otherwise.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{skip_without_fuse, two_mounts, Daemon, Volume};

const LEN: usize = 1 << 20;

/// A MAP_SHARED read-write mapping of the first [`LEN`] bytes of a file.
struct Map {
    ptr: *mut libc::c_void,
}

impl Map {
    fn new(f: &File) -> Map {
        let (rw, fd, null) = (
            libc::PROT_READ | libc::PROT_WRITE,
            f.as_raw_fd(),
            std::ptr::null_mut(),
        );
        // SAFETY: maps LEN bytes of an open file; unmapped on drop.
        let ptr = unsafe { libc::mmap(null, LEN, rw, libc::MAP_SHARED, fd, 0) };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Map { ptr }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is LEN bytes, readable, and lives as long
        // as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), LEN) }
    }

    /// Stores `data` at `off` through the mapping.
    fn store(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= LEN);
        // SAFETY: the range lies in the writable mapping, which no Rust
        // reference borrows during the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.cast::<u8>().add(off), data.len())
        };
    }

    fn msync(&self) {
        // SAFETY: syncs the whole live mapping.
        let r = unsafe { libc::msync(self.ptr, LEN, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, LEN) };
    }
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(p).unwrap().read_exact_at(&mut buf, off).unwrap();
    buf
}

fn poll(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not seen in 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn open_rw(p: &Path) -> File {
    File::options().read(true).write(true).open(p).unwrap()
}

#[test]
fn shared_mmap_stores_reach_read_and_disk() {
    if skip_without_fuse("shared_mmap_stores_reach_read_and_disk") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let p = v.mnt.join("f");
    let f = File::create_new(&p).unwrap();
    f.set_len(LEN as u64).unwrap();
    let map = Map::new(&f);
    // Every page, so writeback covers many WRITE requests.
    let want: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();
    map.store(0, &want);
    assert!(read_at(&p, 0, LEN) == want, "read(2) after stores");
    open_rw(&p).write_all_at(b"pwritten", 4095).unwrap();
    assert_eq!(&map.bytes()[4095..4103], b"pwritten");
    drop(map);
    drop(f);
    d.unmount();
    v.assert_clean("after shared mmap");
    let d = Daemon::start(&v);
    let mut want = want;
    want[4095..4103].copy_from_slice(b"pwritten");
    assert!(std::fs::read(&p).unwrap() == want, "after a remount");
    d.unmount();
}

#[test]
fn shared_mmap_across_two_mounts() {
    if skip_without_fuse("shared_mmap_across_two_mounts") {
        return;
    }
    let (v, a, b) = two_mounts();
    let (ma, mb) = (a.mnt.clone(), b.mnt.clone());
    let (pa, pb) = (ma.join("f"), mb.join("f"));
    let f = File::create_new(&pa).unwrap();
    f.write_all_at(&vec![b'.'; LEN], 0).unwrap();
    let map = Map::new(&f);

    // A stores and msyncs: B reads it.
    map.store(1000, b"from-a!");
    map.msync();
    assert_eq!(read_at(&pb, 1000, 7), b"from-a!");

    // B writes a page A has mapped in: A's mapping shows B's bytes.
    assert_eq!(&map.bytes()[300_000..300_007], b".......");
    open_rw(&pb).write_all_at(b"from-b!", 300_000).unwrap();
    poll("B's pwrite in A's mapping", || {
        &map.bytes()[300_000..300_007] == b"from-b!"
    });

    // A stores and fsyncs the file: B reads it.
    map.store(700_000, b"fsynced");
    f.sync_all().unwrap();
    assert_eq!(read_at(&pb, 700_000, 7), b"fsynced");
    assert_eq!(read_at(&pb, 1000, 7), b"from-a!");
    drop(map);
    drop(f);
    b.unmount();
    a.unmount();
    v.assert_clean("after two mounts");
}
