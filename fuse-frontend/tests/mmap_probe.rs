//! Pins the kernel behaviour shared mmap relies on (docs/fuse.md): with
//! FUSE_DIRECT_IO_ALLOW_MMAP negotiated, a file opened with
//! FOPEN_DIRECT_IO maps MAP_SHARED (ENODEV without it), takes stores, and
//! a read(2) of the range right after — no msync — sees them: the kernel
//! writes the dirty pages back before a direct read. Needs root.
#![allow(clippy::disallowed_methods)]

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use support::{skip_without_fuse, Daemon, Volume};

#[test]
fn direct_io_file_maps_shared_and_read_sees_stores() {
    if skip_without_fuse("direct_io_file_maps_shared_and_read_sees_stores") {
        return;
    }
    let v = Volume::new();
    let d = Daemon::start(&v);
    let p = v.mnt.join("mapped");
    let f = std::fs::File::create_new(&p).unwrap(); // read-write
    f.set_len(8192).unwrap();
    let (rw, fd, null) = (
        libc::PROT_READ | libc::PROT_WRITE,
        f.as_raw_fd(),
        std::ptr::null_mut(),
    );
    // SAFETY: a fresh mapping of 8 KiB of an open file; unmapped below.
    let m = unsafe { libc::mmap(null, 8192, rw, libc::MAP_SHARED, fd, 0) };
    assert_ne!(m, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    // SAFETY: the mapping is 8 KiB long and writable.
    let map = unsafe { std::slice::from_raw_parts_mut(m.cast::<u8>(), 8192) };
    map[4090..4100].copy_from_slice(b"0123456789");
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 4090).unwrap();
    assert_eq!(&buf, b"0123456789", "read(2) missed the mmap stores");
    // And a pwrite shows in the mapping (the kernel drops mapped pages).
    f.write_all_at(b"abc", 100).unwrap();
    assert_eq!(&map[100..103], b"abc");
    // SAFETY: unmapping what was mapped above.
    assert_eq!(unsafe { libc::munmap(m, 8192) }, 0);
    drop(f);
    d.unmount();
    v.assert_clean("after shared mmap");
}
