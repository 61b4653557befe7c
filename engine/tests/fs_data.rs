//! `engine::fs` file data over in-memory items and the `fault` device:
//! round trips across extent merges and allocation boundaries, sparse
//! reads, partial-block read-modify-write, truncate (TRUNCATE flag, freed
//! blocks, zeroed tails) and a random workload checked against a Vec model.

mod fs_support;

use std::sync::atomic::Ordering;

use engine::format::items::{data_extent_key, DataExtent, ROOT_INO};
use engine::fs::{Extent, SetAttr};
use fs_support::{run, user, Vol, FIRST_DATA_BLKNO};
use rand::{Rng, SeedableRng};
use zerocopy::FromBytes;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn truncate(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..Default::default()
    }
}

#[test]
fn contiguous_writes_merge_into_one_extent() {
    let v = Vol::new(2);
    let ino = run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        // Block by block, with partial blocks at both ends.
        let data = pattern(3, 5 * 4096 + 100);
        let mut at = 0;
        for chunk in data.chunks(3000) {
            v.fs.write(f.ino, at, chunk).await.unwrap();
            at += chunk.len() as u64;
        }
        assert_eq!(v.fs.read(f.ino, 0, 1 << 20).await.unwrap(), data);
        assert_eq!(
            v.fs.read(f.ino, 4000, 200).await.unwrap(),
            &data[4000..4200]
        );
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!(
            (a.size, a.online_blocks, a.blocks),
            (data.len() as u64, 6, 48)
        );
        f.ino
    });
    let ext: Vec<_> = run(v.fs.extents(ino)).unwrap();
    assert_eq!(
        ext,
        vec![Extent {
            start: 0,
            len: 6,
            blkno: FIRST_DATA_BLKNO,
            flags: 0
        }]
    );
    // The item: keyed by last block and length.
    let m = v.items.snapshot();
    let val = m.get(&data_extent_key(ino, 5, 6)).expect("extent item");
    let d = DataExtent::read_from_bytes(val).unwrap();
    assert_eq!(
        (d.blkno.get(), d.flags, d.pad),
        (FIRST_DATA_BLKNO, 0, [0; 7])
    );
    v.check();
}

#[test]
fn discontiguous_allocations_stay_separate_and_overwrite_in_place() {
    let v = Vol::new(2);
    v.trans.alloc_chunk.store(2, Ordering::SeqCst);
    v.trans.alloc_gap.store(1, Ordering::SeqCst);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        let data = pattern(9, 5 * 4096);
        v.fs.write(f.ino, 0, &data).await.unwrap();
        let ext = v.fs.extents(f.ino).await.unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    start: 0,
                    len: 2,
                    blkno: 64,
                    flags: 0
                },
                Extent {
                    start: 2,
                    len: 2,
                    blkno: 67,
                    flags: 0
                },
                Extent {
                    start: 4,
                    len: 1,
                    blkno: 70,
                    flags: 0
                },
            ]
        );
        // Overwrite across the boundaries: no new blocks.
        let next = v.trans.next_data.load(Ordering::SeqCst);
        let patch = pattern(200, 9000);
        v.fs.write(f.ino, 3000, &patch).await.unwrap();
        assert_eq!(v.trans.next_data.load(Ordering::SeqCst), next);
        let mut want = data.clone();
        want[3000..12000].copy_from_slice(&patch);
        assert_eq!(v.fs.read(f.ino, 0, 1 << 20).await.unwrap(), want);
        assert_eq!(v.fs.extents(f.ino).await.unwrap(), ext);
    });
    v.check();
}

#[test]
fn sparse_files_read_zeros_and_fill_holes_with_merges() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.write(f.ino, 10 * 4096 + 5, b"end").await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.size, a.online_blocks), (10 * 4096 + 8, 1));
        let all = v.fs.read(f.ino, 0, 1 << 20).await.unwrap();
        assert_eq!(all.len(), 10 * 4096 + 8);
        assert!(all[..10 * 4096 + 5].iter().all(|&b| b == 0));
        assert_eq!(&all[10 * 4096 + 5..], b"end");
        // Fill block 9 (allocated right after block 10's): physically
        // contiguous only the other way round, so no merge.
        v.fs.write(f.ino, 9 * 4096, &[1u8; 4096]).await.unwrap();
        assert_eq!(v.fs.extents(f.ino).await.unwrap().len(), 2);
        // Far past EOF: a huge sparse file.
        v.fs.write(f.ino, 1 << 40, b"far").await.unwrap();
        assert_eq!(v.fs.getattr(f.ino).await.unwrap().size, (1 << 40) + 3);
        assert_eq!(
            v.fs.read(f.ino, (1 << 40) - 2, 10).await.unwrap(),
            b"\0\0far"
        );
        assert_eq!(v.fs.read(f.ino, 1 << 41, 10).await.unwrap(), b"");
    });
    v.check();
}

#[test]
fn truncate_frees_blocks_zeroes_tails_and_clears_the_flag() {
    let v = Vol::new(2);
    v.trans.alloc_chunk.store(1, Ordering::SeqCst);
    v.trans.alloc_gap.store(1, Ordering::SeqCst);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        // 200 single-block extents: truncation needs several holds.
        let data = pattern(1, 200 * 4096);
        v.fs.write(f.ino, 0, &data).await.unwrap();
        assert_eq!(v.fs.extents(f.ino).await.unwrap().len(), 200);
        let dv = v.fs.getattr(f.ino).await.unwrap().data_version;
        let holds = v.trans.holds.load(Ordering::SeqCst);
        let a = v.fs.setattr(f.ino, &truncate(5000)).await.unwrap();
        assert!(v.trans.holds.load(Ordering::SeqCst) - holds >= 4);
        assert_eq!((a.size, a.online_blocks, a.flags), (5000, 2, 0));
        assert_eq!(a.data_version, dv + 1);
        assert_eq!(v.trans.freed_blocks(), 198);
        // Extending shows zeros past the old size, in the kept block too.
        v.fs.setattr(f.ino, &truncate(3 * 4096)).await.unwrap();
        let r = v.fs.read(f.ino, 0, 1 << 20).await.unwrap();
        assert_eq!(&r[..5000], &data[..5000]);
        assert!(r[5000..].iter().all(|&b| b == 0));
        v.fs.write(f.ino, 3 * 4096, b"x").await.unwrap();
        let r = v.fs.read(f.ino, 0, 1 << 20).await.unwrap();
        assert!(r[5000..3 * 4096].iter().all(|&b| b == 0));
        v.fs.setattr(f.ino, &truncate(0)).await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.size, a.online_blocks, a.blocks), (0, 0, 0));
        assert!(v.fs.extents(f.ino).await.unwrap().is_empty());
    });
    v.check();
}

#[test]
fn an_interrupted_truncate_is_finished_by_the_next_write() {
    let v = Vol::new(2);
    run(async {
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        v.fs.write(f.ino, 0, &pattern(5, 4 * 4096)).await.unwrap();
        // What a crash after the size change but before the frees leaves.
        let mut i = v.inode(f.ino).unwrap();
        i.size = 4096.into();
        i.flags = 1.into();
        v.items.map.lock().unwrap().insert(
            engine::format::items::inode_key(f.ino),
            i.encode(2).to_vec(),
        );
        v.fs.write(f.ino, 0, b"y").await.unwrap();
        let a = v.fs.getattr(f.ino).await.unwrap();
        assert_eq!((a.flags, a.online_blocks, a.size), (0, 1, 4096));
    });
    v.check();
}

#[test]
fn random_writes_and_truncates_match_a_model() {
    for seed in 0..8u64 {
        let v = Vol::new(2);
        v.trans.alloc_chunk.store(1 + seed % 5, Ordering::SeqCst);
        v.trans.alloc_gap.store(seed % 2, Ordering::SeqCst);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        run(async {
            let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
            let mut model: Vec<u8> = Vec::new();
            for op in 0..300 {
                let max = 300_000usize;
                match rng.gen_range(0..10) {
                    0..=6 => {
                        let off = rng.gen_range(0..max);
                        let len = rng.gen_range(1..20_000);
                        let d = pattern(op as u8, len);
                        v.fs.write(f.ino, off as u64, &d).await.unwrap();
                        if model.len() < off + len {
                            model.resize(off + len, 0);
                        }
                        model[off..off + len].copy_from_slice(&d);
                    }
                    7 | 8 => {
                        let size = rng.gen_range(0..max);
                        v.fs.setattr(f.ino, &truncate(size as u64)).await.unwrap();
                        model.resize(size, 0);
                    }
                    _ => {
                        let off = rng.gen_range(0..max);
                        let len = rng.gen_range(0..50_000);
                        let got = v.fs.read(f.ino, off as u64, len).await.unwrap();
                        let end = model.len().min(off + len as usize);
                        let want = if off < end { &model[off..end] } else { &[][..] };
                        assert_eq!(got, want, "seed {seed} op {op}");
                    }
                }
            }
            let got = v.fs.read(f.ino, 0, 1 << 30).await.unwrap();
            assert_eq!(got, model, "seed {seed}");
            assert_eq!(v.fs.getattr(f.ino).await.unwrap().size, model.len() as u64);
        });
        v.check();
        let online = v.inode(1024).unwrap().online_blocks.get();
        let freed_before = v.trans.freed_blocks();
        // Deleting the file frees every block.
        run(v.fs.unlink(ROOT_INO, b"f")).unwrap();
        assert!(v.items_of(1024).is_empty());
        assert_eq!(v.trans.freed_blocks() - freed_before, online);
        v.check();
    }
}

#[test]
fn writes_to_non_files_fail() {
    let v = Vol::new(2);
    run(async {
        let d = v.fs.mkdir(&user(), ROOT_INO, b"d", 0o755).await.unwrap();
        assert_eq!(v.fs.write(d.ino, 0, b"x").await, Err(libc::EISDIR));
        assert_eq!(v.fs.read(d.ino, 0, 1).await, Err(libc::EISDIR));
        let f = v.fs.create(&user(), ROOT_INO, b"f", 0o644).await.unwrap();
        assert_eq!(
            v.fs.write(f.ino, u64::MAX - 1, b"xx").await,
            Err(libc::EFBIG)
        );
        assert_eq!(v.fs.write(f.ino, 0, b"").await, Ok(0));
    });
    v.check();
}
