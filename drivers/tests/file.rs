//! The `file` driver on regular files and on a loop device.

mod common;

use common::{exercise, temp_image, LoopDev};
use drivers::{BlockDevice, FileDevice, OpenOptions};
use futures::executor::block_on;

const IMAGE_BYTES: u64 = 64 << 20;

#[test]
fn regular_file_buffered() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let dev = FileDevice::open(&path, &OpenOptions::new()).expect("open");
    assert!(!dev.is_block_device());
    assert_eq!(dev.size_bytes(), IMAGE_BYTES);
    block_on(exercise(&dev));
}

#[test]
fn regular_file_direct() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let dev = FileDevice::open(&path, &OpenOptions::new().direct(true)).expect("open O_DIRECT");
    block_on(exercise(&dev));
}

#[test]
fn data_survives_reopen() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let opts = OpenOptions::new().direct(true);
    {
        let dev = FileDevice::open(&path, &opts).unwrap();
        block_on(dev.write_at(4096, common::pattern(8192, 7)))
            .1
            .unwrap();
        block_on(dev.flush()).unwrap();
    }
    let dev = FileDevice::open(&path, &opts).unwrap();
    let (buf, res) = block_on(dev.read_at(4096, drivers::AlignedBuf::new(8192)));
    res.unwrap();
    assert!(buf[..] == common::pattern(8192, 7)[..]);
}

#[test]
fn exclusive_open_conflict_is_ebusy() {
    let (_dir, path) = temp_image(IMAGE_BYTES);
    let excl = OpenOptions::new().exclusive(true);
    let first = FileDevice::open(&path, &excl).expect("first exclusive open");
    let err = FileDevice::open(&path, &excl).expect_err("second exclusive open");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    // A shared open is not blocked by the lock; dropping the holder frees it.
    FileDevice::open(&path, &OpenOptions::new()).expect("shared open");
    drop(first);
    FileDevice::open(&path, &excl).expect("exclusive open after release");
}

#[test]
fn loop_device() {
    let Some(lo) = LoopDev::create(IMAGE_BYTES) else {
        return;
    };
    for direct in [false, true] {
        let opts = OpenOptions::new().direct(direct).exclusive(true);
        let dev = FileDevice::open(lo.path(), &opts).expect("open loop device");
        assert!(dev.is_block_device());
        assert_eq!(dev.size_bytes(), IMAGE_BYTES, "BLKGETSIZE64");
        let err = FileDevice::open(lo.path(), &opts).expect_err("second O_EXCL open");
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        block_on(exercise(&dev));
    }
}
