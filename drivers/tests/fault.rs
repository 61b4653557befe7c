//! The `fault` driver: durable vs written images, crashes, torn writes,
//! injected faults, determinism and sparseness.

mod common;

use common::{exercise, pattern};
use drivers::{AlignedBuf, BlockDevice, CrashMode, FaultDevice, FileDevice, OpenOptions};
use futures::executor::block_on;

const SECTOR: usize = 4096;
const BIG_BYTES: u64 = 64 << 30;

fn write(dev: &FaultDevice, offset: u64, buf: AlignedBuf) {
    block_on(dev.write_at(offset, buf)).1.expect("write");
}

fn read(dev: &FaultDevice, offset: u64, len: usize) -> AlignedBuf {
    let (buf, res) = block_on(dev.read_at(offset, AlignedBuf::new(len)));
    res.expect("read");
    buf
}

#[test]
fn behaves_like_a_device() {
    let dev = FaultDevice::new(64 << 20);
    block_on(exercise(&dev));
}

#[test]
fn unflushed_writes_lost_flushed_kept() {
    let dev = FaultDevice::new(1 << 20);
    write(&dev, 0, pattern(SECTOR, 1));
    block_on(dev.flush()).unwrap();
    write(&dev, 0, pattern(SECTOR, 2));
    write(&dev, 8192, pattern(SECTOR, 3));
    assert_eq!(dev.unflushed_count(), 2);
    // Reads see the written image.
    assert!(read(&dev, 0, SECTOR)[..] == pattern(SECTOR, 2)[..]);

    let after = dev.crash(7, CrashMode::LoseUnflushed);
    assert!(read(&after, 0, SECTOR)[..] == pattern(SECTOR, 1)[..]);
    assert!(read(&after, 8192, SECTOR).iter().all(|&b| b == 0));

    let kept = dev.crash(7, CrashMode::KeepUnflushed);
    assert!(read(&kept, 0, SECTOR)[..] == pattern(SECTOR, 2)[..]);
    assert!(read(&kept, 8192, SECTOR)[..] == pattern(SECTOR, 3)[..]);
}

#[test]
fn torn_writes_mix_old_and_new_sectors() {
    const SECTORS: usize = 64;
    let old = pattern(SECTORS * SECTOR, 1);
    let new = pattern(SECTORS * SECTOR, 2);
    let mut saw_torn = false;
    for seed in 0..64 {
        let dev = FaultDevice::new(1 << 20);
        write(&dev, 0, old.clone());
        block_on(dev.flush()).unwrap();
        write(&dev, 0, new.clone());
        let after = dev.crash(seed, CrashMode::Random);
        let got = read(&after, 0, SECTORS * SECTOR);
        let mut n_old = 0;
        let mut n_new = 0;
        for (i, s) in got.chunks(SECTOR).enumerate() {
            let range = i * SECTOR..(i + 1) * SECTOR;
            if s == &old[range.clone()] {
                n_old += 1;
            } else if s == &new[range] {
                n_new += 1;
            } else {
                panic!("sector {i} is neither old nor new (seed {seed})");
            }
        }
        saw_torn |= n_old > 0 && n_new > 0;
    }
    assert!(saw_torn, "no seed produced a torn write");
}

#[test]
fn crash_is_deterministic() {
    let build = || {
        let dev = FaultDevice::new(BIG_BYTES);
        for i in 0..50u64 {
            write(&dev, i * 3 * 65536, pattern(8 * SECTOR, i as u8));
            if i % 7 == 0 {
                block_on(dev.flush()).unwrap();
            }
            if i % 11 == 0 {
                block_on(dev.discard(i * 65536, 65536)).unwrap();
            }
        }
        // A tail of unflushed writes for the crash to choose from.
        for i in 0..20u64 {
            write(
                &dev,
                i * 3 * 65536 + 4096,
                pattern(4 * SECTOR, 100 + i as u8),
            );
        }
        assert_eq!(dev.unflushed_count(), 20);
        dev
    };
    let (a, b) = (build(), build());
    for seed in [1u64, 2, 99] {
        let (ca, cb) = (
            a.crash(seed, CrashMode::Random),
            b.crash(seed, CrashMode::Random),
        );
        assert_eq!(ca.written_digest(), cb.written_digest(), "seed {seed}");
    }
    assert_ne!(
        a.crash(1, CrashMode::Random).written_digest(),
        a.crash(2, CrashMode::Random).written_digest()
    );
}

#[test]
fn eio_injection() {
    let dev = FaultDevice::new(1 << 20);
    let n = dev.ops_issued();
    dev.fail_op(n + 1);
    write(&dev, 0, pattern(SECTOR, 1)); // op n
    let (_, res) = block_on(dev.write_at(0, pattern(SECTOR, 2))); // op n+1
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EIO));
    // The failed write changed nothing.
    assert!(read(&dev, 0, SECTOR)[..] == pattern(SECTOR, 1)[..]);

    dev.clear_faults();
    dev.fail_reads_in(8192..8193);
    let (_, res) = block_on(dev.read_at(4096, AlignedBuf::new(2 * SECTOR)));
    assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EIO));
    read(&dev, 0, SECTOR);
    dev.fail_writes_in(0..4096);
    assert!(block_on(dev.discard(0, 4096)).is_err());

    dev.clear_faults();
    dev.fail_after(2);
    read(&dev, 0, SECTOR);
    block_on(dev.flush()).unwrap();
    assert!(block_on(dev.flush()).is_err());
    assert!(block_on(dev.read_at(0, AlignedBuf::new(SECTOR))).1.is_err());
}

#[test]
fn bit_flip_visible_on_read() {
    let dev = FaultDevice::new(1 << 20);
    write(&dev, 4096, pattern(SECTOR, 4));
    block_on(dev.flush()).unwrap();
    dev.flip_bit(4096 + 100, 3);
    let got = read(&dev, 4096, SECTOR);
    let want = pattern(SECTOR, 4);
    assert_eq!(got[100], want[100] ^ 8);
    assert!(got[..100] == want[..100] && got[101..] == want[101..]);
    // Flips in never-written space too.
    dev.flip_bit(0, 0);
    assert_eq!(read(&dev, 0, SECTOR)[0], 1);
}

#[test]
fn sparse_64gib_device_costs_little() {
    let dev = FaultDevice::new(BIG_BYTES);
    assert_eq!(dev.size_bytes(), BIG_BYTES);
    for i in 0..16u64 {
        write(&dev, i * (BIG_BYTES / 16), pattern(SECTOR, i as u8));
    }
    write(&dev, BIG_BYTES - 4096, pattern(SECTOR, 77));
    block_on(dev.flush()).unwrap();
    assert!(dev.resident_sectors() <= 2 * 17);
    // A discard of nearly the whole device is cheap too.
    block_on(dev.discard(0, BIG_BYTES - 4096)).unwrap();
    assert!(read(&dev, BIG_BYTES - 4096, SECTOR)[..] == pattern(SECTOR, 77)[..]);
    let crashed = dev.crash(3, CrashMode::Random);
    assert!(crashed.resident_sectors() <= 2 * 17);
}

#[test]
fn completion_delay_is_seeded() {
    // Count polls per op under a seed; equal seeds give equal counts.
    fn polls(seed: u64) -> Vec<u32> {
        use std::task::{Context, Waker};
        let dev = FaultDevice::new(1 << 20);
        dev.set_completion_delay(seed, 8);
        let mut cx = Context::from_waker(Waker::noop());
        (0..32u64)
            .map(|i| {
                let mut f = dev.write_at(i * 4096, pattern(SECTOR, 1));
                let mut n = 0;
                while f.as_mut().poll(&mut cx).is_pending() {
                    n += 1;
                }
                n
            })
            .collect()
    }
    assert_eq!(polls(5), polls(5));
    assert_ne!(polls(5), polls(6));
    assert!(polls(5).iter().any(|&n| n > 0));
}

#[test]
fn image_round_trips_through_file_driver() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.img");
    let dev = FaultDevice::new(BIG_BYTES);
    write(&dev, 1 << 30, pattern(2 * SECTOR, 9));
    block_on(dev.flush()).unwrap();
    write(&dev, 0, pattern(SECTOR, 10)); // unflushed: not in the image
    dev.write_image_to(&path).unwrap();

    let file = FileDevice::open(&path, &OpenOptions::new()).unwrap();
    assert_eq!(file.size_bytes(), BIG_BYTES);
    let (buf, res) = block_on(file.read_at(1 << 30, AlignedBuf::new(2 * SECTOR)));
    res.unwrap();
    assert!(buf[..] == pattern(2 * SECTOR, 9)[..]);

    let back = FaultDevice::from_file(&path).unwrap();
    assert_eq!(back.size_bytes(), BIG_BYTES);
    assert_eq!(back.written_digest(), dev.durable_digest());
    assert!(read(&back, 0, SECTOR).iter().all(|&b| b == 0));
}
