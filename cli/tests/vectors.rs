//! The mkfs vectors written by the original tools, decoded by ours.
//!
//! Pins down: `print` reproduces the original's text byte for byte; `check`
//! finds the vectors clean; flipping any byte of any block the vectors
//! reference yields a check fault naming that block, and neither print nor
//! check panics on the damaged image.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drivers::{AlignedBuf, BlockDevice, BufResult, IoFuture};
use engine::check::check_volume;
use scoutfs_cli::dev::{self, open_read_only};
use scoutfs_cli::print::print_to_string;

const VECTORS: [&str; 3] = ["single", "three", "v1"];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vectors")
}

/// Decompresses a zstd image sparsely: only non-zero 64 KiB chunks are written.
fn unpack(src: &Path, dst: &Path) {
    let f = std::fs::File::open(src).unwrap();
    let mut dec = zstd::stream::read::Decoder::new(f).unwrap();
    let out = std::fs::File::create(dst).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut off = 0u64;
    loop {
        let mut got = 0;
        while got < buf.len() {
            let n = dec.read(&mut buf[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        if buf[..got].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..got], off).unwrap();
        }
        off += got as u64;
    }
    out.set_len(off).unwrap();
}

fn unpacked(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let meta = dir.join(format!("{name}.meta"));
    let data = dir.join(format!("{name}.data"));
    unpack(&vectors_dir().join(format!("{name}.meta.zst")), &meta);
    unpack(&vectors_dir().join(format!("{name}.data.zst")), &data);
    (meta, data)
}

/// Every fault of a check that must run, as the CLI prints them.
fn faults(meta: &dyn BlockDevice, data: Option<&dyn BlockDevice>) -> Vec<String> {
    check_volume(meta, data, &mut |_| {})
        .unwrap_or_else(|e| panic!("check could not run: {e}"))
        .messages()
}

/// A read-only device whose reads see `patches` (offset, bytes) over a base
/// device: corrupts an image without copying it.
struct Overlay {
    base: Arc<dyn BlockDevice>,
    patches: Vec<(u64, Vec<u8>)>,
}

impl BlockDevice for Overlay {
    fn read_at(&self, off: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        let read = self.base.read_at(off, buf);
        let patches = self.patches.clone();
        Box::pin(async move {
            let (mut buf, res) = read.await;
            if res.is_ok() {
                let end = off + buf.len() as u64;
                for (poff, bytes) in &patches {
                    let pend = poff + bytes.len() as u64;
                    let (lo, hi) = (off.max(*poff), end.min(pend));
                    if lo < hi {
                        buf[(lo - off) as usize..(hi - off) as usize]
                            .copy_from_slice(&bytes[(lo - poff) as usize..(hi - poff) as usize]);
                    }
                }
            }
            (buf, res)
        })
    }

    fn write_at(&self, _off: u64, buf: AlignedBuf) -> IoFuture<BufResult> {
        Box::pin(async move { (buf, Err(std::io::Error::from_raw_os_error(libc::EROFS))) })
    }

    fn flush(&self) -> IoFuture<std::io::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn discard(&self, _off: u64, _len: u64) -> IoFuture<std::io::Result<()>> {
        Box::pin(async { Err(std::io::Error::from_raw_os_error(libc::EROFS)) })
    }

    fn size_bytes(&self) -> u64 {
        self.base.size_bytes()
    }
}

#[test]
fn print_matches_the_original_and_check_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    for name in VECTORS {
        let (meta, data) = unpacked(dir.path(), name);
        let m = open_read_only(&meta).unwrap();
        let d = open_read_only(&data).unwrap();
        let (out, r) = print_to_string(&m, false);
        let want =
            std::fs::read_to_string(vectors_dir().join(format!("{name}.print.txt"))).unwrap();
        assert_eq!(r, Ok(()), "{name}");
        assert!(out == want, "{name}: print differs from the original");
        let found = faults(&m, Some(&d));
        assert!(found.is_empty(), "{name}: {found:#?}");
        assert!(faults(&m, None).is_empty());
    }
}

/// Every block a fresh vector references: (device is meta, byte offset,
/// size, the name a fault must contain).
fn referenced_blocks() -> Vec<(bool, u64, usize, String)> {
    let mut v = vec![(true, 16 * 4096, 4096, "meta super (blkno 16)".to_string())];
    v.push((false, 16 * 4096, 4096, "data super (blkno 16)".to_string()));
    for b in 17..32u64 {
        v.push((true, b * 4096, 4096, format!("quorum blkno {b} ")));
    }
    for b in [2u64, 3, 1028, 1029, 1030] {
        v.push((true, b * 65536, 65536, format!("blkno {b}")));
    }
    v
}

#[test]
fn any_flipped_byte_is_a_fault_naming_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for name in VECTORS {
        let (meta, data) = unpacked(dir.path(), name);
        let m: Arc<dyn BlockDevice> = Arc::new(open_read_only(&meta).unwrap());
        let d: Arc<dyn BlockDevice> = Arc::new(open_read_only(&data).unwrap());
        for (is_meta, off, size, label) in referenced_blocks() {
            let mut positions = vec![0usize, 1, 3, 4, 8, 16, 24, 31, 32, 40, size - 1];
            for _ in 0..6 {
                positions.push((rand() % size as u64) as usize);
            }
            for pos in positions {
                let base = if is_meta { &m } else { &d };
                let at = off + pos as u64;
                let sector = at - at % 4096;
                let byte = dev::read_bytes(&**base, sector, 4096).unwrap()[(at - sector) as usize];
                let flip = (rand() % 255 + 1) as u8;
                let patched = Overlay {
                    base: base.clone(),
                    patches: vec![(at, vec![byte ^ flip])],
                };
                let (pm, pd): (&dyn BlockDevice, &dyn BlockDevice) = if is_meta {
                    (&patched, &*d)
                } else {
                    (&*m, &patched)
                };
                let found = check_volume(pm, Some(pd), &mut |_| {})
                    .unwrap_or_else(|e| {
                        panic!("{name} {label} byte {pos}: check could not run: {e}")
                    })
                    .messages();
                assert!(
                    found.iter().any(|f| f.contains(&label)),
                    "{name} {label} byte {pos}: no fault names the block: {found:#?}"
                );
                let _ = print_to_string(pm, false);
            }
        }
    }
}
