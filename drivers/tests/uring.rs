//! The `uring` driver on regular files and on a loop device, under its own
//! `block_on`, under a foreign executor, and with early-dropped futures.

// These tests drive a real kernel ring: real clocks and a second thread (to
// unpark) are the point, and nothing here is replayed by the simulation.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::{exercise, pattern, temp_image, LoopDev};
use drivers::{AlignedBuf, BlockDevice, OpenOptions, Park, UringDevice, UringRing};

const IMAGE_BYTES: u64 = 64 << 20;

#[test]
fn regular_file_direct_block_on() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().expect("ring");
    let dev = UringDevice::open(&ring, &path).expect("open");
    assert!(dev.is_registered());
    assert_eq!(dev.size_bytes(), IMAGE_BYTES);
    ring.block_on(exercise(&dev));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn regular_file_buffered_foreign_executor() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().expect("ring");
    let dev = UringDevice::open_with(&ring, &path, &OpenOptions::new()).expect("open");
    // Nobody drives the ring: the futures must make progress on their own.
    futures::executor::block_on(exercise(&dev));
}

#[test]
fn exclusive_open_conflict_is_ebusy() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let excl = OpenOptions::new().direct(true).exclusive(true);
    let _first = UringDevice::open_with(&ring, &path, &excl).unwrap();
    let err = UringDevice::open_with(&ring, &path, &excl).expect_err("second open");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
}

#[test]
fn registered_buffers() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let pool = ring.register_buffers(4, 16384).expect("register");
    assert_eq!(
        ring.register_buffers(1, 4096).unwrap_err().raw_os_error(),
        Some(libc::EBUSY)
    );
    let dev = UringDevice::open(&ring, &path).unwrap();
    let mut w = pool.take().unwrap();
    w.copy_from_slice(&pattern(16384, 5));
    let (w, res) = ring.block_on(dev.write_at(8192, w));
    res.unwrap();
    drop(w);
    assert_eq!(pool.free_count(), 4);
    let r = pool.take().unwrap();
    let (r, res) = ring.block_on(dev.read_at(8192, r));
    res.unwrap();
    assert!(r[..] == pattern(16384, 5)[..]);
    // A plain buffer on the same ring reads the same bytes.
    let (p, res) = ring.block_on(dev.read_at(8192, AlignedBuf::new(16384)));
    res.unwrap();
    assert!(p[..] == r[..]);
}

#[test]
fn loop_device() {
    let Some(lo) = LoopDev::create(IMAGE_BYTES) else {
        return;
    };
    let ring = UringRing::new().unwrap();
    for direct in [true, false] {
        let opts = OpenOptions::new().direct(direct).exclusive(true);
        let dev = UringDevice::open_with(&ring, lo.path(), &opts).expect("open loop");
        assert!(dev.is_block_device());
        assert_eq!(dev.size_bytes(), IMAGE_BYTES, "BLKGETSIZE64");
        let err = UringDevice::open_with(&ring, lo.path(), &opts).expect_err("O_EXCL twice");
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        ring.block_on(exercise(&dev));
    }
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Futures dropped while the kernel still owns their buffers: the buffers
/// stay parked in the ring until completion, and later ops work.
#[test]
fn dropped_futures_keep_buffers_until_completion() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let dev = UringDevice::open(&ring, &path).unwrap();
    ring.block_on(dev.write_at(0, pattern(1 << 20, 3)))
        .1
        .unwrap();

    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    for round in 0..20u64 {
        for i in 0..64u64 {
            let offset = ((round * 64 + i) * 65536) % (IMAGE_BYTES - 65536);
            let mut fut = if i % 2 == 0 {
                dev.read_at(offset, AlignedBuf::new(65536))
            } else {
                dev.write_at(offset + (1 << 20), pattern(65536, i as u8))
            };
            // One poll submits; then drop mid-flight (or already done).
            let _ = fut.as_mut().poll(&mut cx);
            drop(fut);
        }
    }
    // Later ops on the same ring still work and see consistent data.
    let (buf, res) = ring.block_on(dev.read_at(0, AlignedBuf::new(1 << 20)));
    res.unwrap();
    assert!(buf[..] == pattern(1 << 20, 3)[..]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ring.in_flight() > 0 {
        assert!(Instant::now() < deadline, "abandoned ops never completed");
        ring.park(Some(Duration::from_millis(10))).unwrap();
    }
    // Dropping the ring with nothing in flight is immediate.
    drop(dev);
    drop(ring);
}

/// Dropping the last handles while abandoned ops are in flight waits for them.
#[test]
fn ring_drop_waits_for_abandoned_ops() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let dev = UringDevice::open(&ring, &path).unwrap();
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    for i in 0..128u64 {
        let mut fut = dev.read_at(i * 131072, AlignedBuf::new(131072));
        let _ = fut.as_mut().poll(&mut cx);
    }
    drop(dev);
    drop(ring);
}

#[test]
fn park_times_out_and_unparks() {
    let ring = UringRing::new().unwrap();
    let start = Instant::now();
    ring.park(Some(Duration::from_millis(30))).unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(20),
        "woke too early: {waited:?}"
    );

    let other = ring.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        other.unpark();
    });
    let start = Instant::now();
    // Park may return early for the leftover eventfd completion; loop until
    // the unpark has been seen, bounded by far less than the timeout.
    ring.park(Some(Duration::from_secs(20))).unwrap();
    if start.elapsed() < Duration::from_millis(40) {
        ring.park(Some(Duration::from_secs(20))).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(10), "unpark not seen");
    t.join().unwrap();
}

/// A tiny executor that uses the ring as its `Park`, as the engine's will.
#[test]
fn park_driven_executor() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let dev = UringDevice::open(&ring, &path).unwrap();
    ring.park(Some(Duration::ZERO)).unwrap();

    struct Flag(std::sync::atomic::AtomicBool, UringRing);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            self.1.unpark();
        }
    }
    let flag = Arc::new(Flag(Default::default(), ring.clone()));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(async {
        let mut n = 0;
        for i in 0..32u64 {
            let (_, r) = dev.write_at(i * 8192, pattern(8192, i as u8)).await;
            r.unwrap();
            n += 1;
        }
        dev.flush().await.unwrap();
        n
    });
    let mut parks = 0;
    let out = loop {
        if let Poll::Ready(n) = fut.as_mut().poll(&mut cx) {
            break n;
        }
        if !flag.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            ring.park(Some(Duration::from_secs(5))).unwrap();
            parks += 1;
        }
    };
    assert_eq!(out, 32);
    assert!(parks > 0);
}

/// The device handle goes away while its abandoned ops are in flight and the
/// ring lives on: completions free the ops (and the registered file) cleanly.
#[test]
fn device_dropped_with_ops_in_flight() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let ring = UringRing::new().unwrap();
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    for _ in 0..4 {
        let dev = UringDevice::open(&ring, &path).unwrap();
        for i in 0..64u64 {
            let mut fut = dev.read_at(i * 131072, AlignedBuf::new(131072));
            let _ = fut.as_mut().poll(&mut cx);
        }
        drop(dev);
        while ring.in_flight() > 0 {
            ring.park(Some(Duration::from_millis(10))).unwrap();
        }
    }
    // Fixed-file slots came back: a fresh device is registered again.
    let dev = UringDevice::open(&ring, &path).unwrap();
    assert!(dev.is_registered());
    ring.block_on(exercise(&dev));
}
