//! Checks shared by the driver tests: one scenario every `BlockDevice` must
//! pass, and a loop-device guard that detaches even when a test fails.

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use drivers::{AlignedBuf, BlockDevice, IO_ALIGN_BYTES};

const BLOCK: usize = IO_ALIGN_BYTES;

pub fn pattern(len: usize, seed: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
    }
    buf
}

fn assert_einval<T: std::fmt::Debug>(res: io::Result<T>, what: &str) {
    let err = res.expect_err(what);
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{what}: {err}");
}

/// Read-back, alignment and range errors, flush, discard-reads-zeros.
pub async fn exercise<D: BlockDevice>(dev: &D) {
    let size = dev.size_bytes();
    assert!(size >= 1 << 20, "device too small: {size}");

    // Read-back at the start, the middle and the very end.
    for (offset, len, seed) in [
        (0u64, 2 * BLOCK, 1u8),
        (size / 2, 16 * BLOCK, 2),
        (size - BLOCK as u64, BLOCK, 3),
    ] {
        let data = pattern(len, seed);
        let (_, res) = dev.write_at(offset, data.clone()).await;
        res.unwrap_or_else(|e| panic!("write at {offset}: {e}"));
        let (back, res) = dev.read_at(offset, AlignedBuf::new(len)).await;
        res.unwrap_or_else(|e| panic!("read at {offset}: {e}"));
        assert!(back[..] == data[..], "read-back mismatch at {offset}");
    }

    // Misaligned offsets and out-of-range requests are EINVAL, and the
    // buffer comes back.
    let (buf, res) = dev.read_at(512, AlignedBuf::new(BLOCK)).await;
    assert_eq!(buf.len(), BLOCK);
    assert_einval(res, "misaligned read");
    assert_einval(
        dev.write_at(100, pattern(BLOCK, 9)).await.1,
        "misaligned write",
    );
    assert_einval(
        dev.read_at(size, AlignedBuf::new(BLOCK)).await.1,
        "read at end",
    );
    assert_einval(
        dev.write_at(size - BLOCK as u64, pattern(2 * BLOCK, 9))
            .await
            .1,
        "write across end",
    );
    assert_einval(dev.discard(1, BLOCK as u64).await, "misaligned discard");
    assert_einval(
        dev.discard(0, size + BLOCK as u64).await,
        "discard past end",
    );

    dev.flush().await.expect("flush");

    // Discard the first block of the middle write: zeros there, the rest kept.
    let mid = size / 2;
    dev.discard(mid, BLOCK as u64).await.expect("discard");
    let (back, res) = dev.read_at(mid, AlignedBuf::new(2 * BLOCK)).await;
    res.expect("read after discard");
    assert!(
        back[..BLOCK].iter().all(|&b| b == 0),
        "discarded block not zero"
    );
    assert!(
        back[BLOCK..] == pattern(16 * BLOCK, 2)[BLOCK..2 * BLOCK],
        "neighbour changed"
    );
    dev.flush().await.expect("flush after discard");
}

/// A 64 MiB file attached to a loop device; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    /// `None` (after printing why) when loop devices are unavailable.
    pub fn create(size_bytes: u64) -> Option<LoopDev> {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("loop.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size_bytes))
            .expect("backing file");
        let out = match Command::new("losetup")
            .arg("--find")
            .arg("--show")
            .arg(&backing)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("SKIP loop-device test: cannot run losetup: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "SKIP loop-device test: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(LoopDev { dev, _dir: dir })
    }

    pub fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.dev).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not detach {}: {status:?}",
                self.dev.display()
            );
        }
    }
}

/// A sized regular file in a fresh temp dir.
pub fn temp_image(size_bytes: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dev.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size_bytes))
        .expect("image file");
    (dir, path)
}
