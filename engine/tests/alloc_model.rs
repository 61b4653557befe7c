//! The allocators against a model: random alloc/free sequences over list
//! allocators and a free-extent tree, with commits, drains and refills in
//! between. After every transaction every block of the device is accounted
//! for exactly once (list entries, list blocks, extent tree blocks, free
//! extents, blocks the test holds): nothing is both free and referenced and
//! nothing leaks. Blocks freed in a transaction are never handed out again
//! before it commits.
//!
//! Each test runs on the production executor and then on the deterministic
//! simulation, where every device op stays pending a seeded-random number of
//! polls; COW seqs come from the runtime's randomness.
//!
//! `SCOUTFS_PROPTEST_OPS` scales the number of operations (default 100000
//! across the btree tests; this file runs a tenth of it, per runtime).
//! `SCOUTFS_PROPTEST_SEED` sets the base seed; a failure prints how to
//! replay it.

use std::collections::BTreeSet;
use std::sync::Arc;

use drivers::AlignedBuf;
use engine::alloc::{
    alloc_extent, check_extents, empty_list_into_extents, free_extent, list_blknos, move_to_list,
    set_low_flag, ListAlloc,
};
use engine::block::{BlockCache, Error};
use engine::btree::Btree;
use engine::format::alloc::AllocListBlock;
use engine::format::superblock::{AllocListHead, AllocRoot, ALLOC_FLAG_LOW};
use engine::format::{BlockRef, LG_BLOCK_SIZE, MAGIC_ALLOC_LIST};
use rand::Rng;
use zerocopy::FromBytes;

mod runtime_env;
use runtime_env::*;

const FSID: u64 = 0xa110c;

fn total_ops() -> u64 {
    env_u64("SCOUTFS_PROPTEST_OPS", 100_000) / 10
}

/// A one-block list at `blkno` holding `entries`, installed dirty.
fn make_list(cache: &BlockCache, blkno: u64, entries: std::ops::Range<u64>) -> AllocListHead {
    let mut buf = AlignedBuf::new(LG_BLOCK_SIZE);
    let n = (entries.end - entries.start) as u32;
    {
        let lb = AllocListBlock::mut_from_bytes(&mut buf[..]).unwrap();
        for (i, b) in entries.enumerate() {
            lb.blknos[i] = b.into();
        }
        lb.nr = n.into();
    }
    let seq = cache.new_seq();
    cache.put_dirty(blkno, seq, MAGIC_ALLOC_LIST, buf).unwrap();
    AllocListHead {
        ref_: BlockRef::new(blkno, seq),
        total_nr: (n as u64).into(),
        first_nr: n.into(),
        flags: 0.into(),
    }
}

struct World {
    cache: Arc<BlockCache>,
    btree: Btree,
    blocks: u64,
    client: ListAlloc,
    server: ListAlloc,
    root: AllocRoot,
    held: BTreeSet<u64>,
}

impl World {
    async fn new(env: &Env, blocks: u64) -> World {
        let dev = env.device(blocks * LG_BLOCK_SIZE as u64);
        let cache = Arc::new(BlockCache::new(Arc::new(dev), FSID, 256, env.seqs()));
        let btree = Btree::new(cache.clone());
        let c_avail = make_list(&cache, 2, 4..1004);
        let s_avail = make_list(&cache, 3, 1004..3004);
        let mut server = ListAlloc::new(cache.clone(), s_avail, AllocListHead::default());
        let mut root = AllocRoot::default();
        free_extent(&btree, &mut server, &mut root, 3004, blocks - 3004)
            .await
            .unwrap();
        let client = ListAlloc::new(cache.clone(), c_avail, AllocListHead::default());
        let mut w = World {
            cache,
            btree,
            blocks,
            client,
            server,
            root,
            held: BTreeSet::new(),
        };
        w.commit().await;
        w
    }

    async fn commit(&mut self) {
        self.cache.write_dirty_and_flush().await.unwrap();
    }

    /// Every block from 2 up appears exactly once across all owners.
    async fn account(&self) {
        let mut seen = vec![0u8; self.blocks as usize];
        let mut mark = |b: u64, what: &str| {
            assert!(b >= 2 && b < self.blocks, "{what} names blkno {b}");
            seen[b as usize] += 1;
            assert_eq!(
                seen[b as usize], 1,
                "blkno {b} counted twice (last as {what})"
            );
        };
        for (name, head) in [
            ("client avail", &self.client.avail),
            ("client freed", &self.client.freed),
            ("server avail", &self.server.avail),
            ("server freed", &self.server.freed),
        ] {
            let (entries, blocks) = list_blknos(&self.cache, head).await.unwrap();
            entries.iter().for_each(|&b| mark(b, name));
            blocks.iter().for_each(|&b| mark(b, name));
        }
        let tree = self.btree.check(&self.root.root).await.unwrap();
        tree.blknos
            .iter()
            .for_each(|&b| mark(b, "extent tree block"));
        let ext = check_extents(&self.btree, &self.root).await.unwrap();
        for (s, l) in ext.extents {
            (s..s + l).for_each(|b| mark(b, "free extent"));
        }
        self.held.iter().for_each(|&b| mark(b, "held"));
        let missing: Vec<usize> = (2..self.blocks as usize)
            .filter(|&b| seen[b] == 0)
            .collect();
        assert!(
            missing.is_empty(),
            "leaked blocks {:?}",
            &missing[..missing.len().min(10)]
        );
    }
}

#[test]
fn alloc_random_sequences_account_for_every_block() {
    on_both_runtimes(
        "alloc_random_sequences_account_for_every_block",
        0xa11,
        random_sequences,
    );
}

async fn random_sequences(env: Env) {
    let mut rng = env.rng();
    let mut w = World::new(&env, 8192).await;
    w.account().await;
    let ops = total_ops();
    let txn_ops = 500;
    let mut done = 0;
    while done < ops {
        let mut freed_now = BTreeSet::new();
        for _ in 0..txn_ops {
            match rng.gen_range(0..100) {
                0..=39 => match w.client.alloc().await {
                    Ok(b) => {
                        assert!(
                            !freed_now.contains(&b),
                            "blkno {b} reused in the transaction that freed it"
                        );
                        assert!(w.held.insert(b));
                    }
                    Err(Error::NoSpace(_)) => {}
                    Err(e) => panic!("{e}"),
                },
                40..=69 => {
                    if let Some(&b) = w.held.iter().nth(
                        rng.gen_range(0..w.held.len().max(1))
                            .min(w.held.len().saturating_sub(1)),
                    ) {
                        w.held.remove(&b);
                        w.client.free(b).await.unwrap();
                        freed_now.insert(b);
                    }
                }
                70..=84 => {
                    let max = rng.gen_range(1..64);
                    match alloc_extent(&w.btree, &mut w.server, &mut w.root, max).await {
                        Ok((s, l)) => {
                            assert!(l >= 1 && l <= max);
                            for b in s..s + l {
                                assert!(w.held.insert(b), "extent block {b} already held");
                            }
                        }
                        Err(Error::NoSpace(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                _ => {
                    // Return a run of held blocks straight to the extents.
                    if let Some(&b) = w.held.iter().nth(
                        rng.gen_range(0..w.held.len().max(1))
                            .min(w.held.len().saturating_sub(1)),
                    ) {
                        let mut e = b + 1;
                        while e < b + 16 && w.held.contains(&e) {
                            e += 1;
                        }
                        for x in b..e {
                            w.held.remove(&x);
                        }
                        free_extent(&w.btree, &mut w.server, &mut w.root, b, e - b)
                            .await
                            .unwrap();
                    }
                }
            }
        }
        done += txn_ops;
        w.commit().await;
        w.account().await;
        // The server folds the committed freed list back and refills avail.
        let mut freed = std::mem::take(&mut w.client.freed);
        empty_list_into_extents(&w.btree, &mut w.server, &mut freed, &mut w.root)
            .await
            .unwrap();
        assert_eq!(freed.total_nr.get(), 0);
        if w.client.avail.total_nr.get() < 300 {
            let mut avail = w.client.avail;
            let got = move_to_list(&w.btree, &mut w.server, &mut avail, &mut w.root, 700)
                .await
                .unwrap();
            assert!(got > 0);
            w.client.avail = avail;
        }
        w.commit().await;
        w.account().await;
    }
}

#[test]
fn alloc_extents_merge_neighbours_and_carve_from_the_largest() {
    on_both_runtimes(
        "alloc_extents_merge_neighbours_and_carve_from_the_largest",
        2,
        merge_and_carve,
    );
}

async fn free(w: &mut World, s: u64, l: u64) {
    free_extent(&w.btree, &mut w.server, &mut w.root, s, l)
        .await
        .unwrap()
}

async fn merge_and_carve(env: Env) {
    let mut w = World::new(&env, 8192).await;
    // Take everything out of the extent tree, then free pieces back.
    let mut got = Vec::new();
    while let Ok((s, l)) = alloc_extent(&w.btree, &mut w.server, &mut w.root, 1 << 20).await {
        got.push((s, l));
    }
    assert_eq!(w.root.total_len.get(), 0);
    assert_eq!(got, vec![(3004, 8192 - 3004)], "one extent, carved whole");
    free(&mut w, 4000, 10).await;
    free(&mut w, 4020, 10).await;
    free(&mut w, 5000, 100).await;
    assert_eq!(
        check_extents(&w.btree, &w.root).await.unwrap().extents,
        vec![(4000, 10), (4020, 10), (5000, 100)]
    );
    // Filling the gap merges left and right.
    free(&mut w, 4010, 10).await;
    assert_eq!(
        check_extents(&w.btree, &w.root).await.unwrap().extents,
        vec![(4000, 30), (5000, 100)]
    );
    // Overlapping frees are refused.
    let e = free_extent(&w.btree, &mut w.server, &mut w.root, 4025, 10)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let e = free_extent(&w.btree, &mut w.server, &mut w.root, 3990, 11)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // Allocation carves from the front of the largest extent.
    assert_eq!(
        alloc_extent(&w.btree, &mut w.server, &mut w.root, 7)
            .await
            .unwrap(),
        (5000, 7)
    );
    assert_eq!(
        alloc_extent(&w.btree, &mut w.server, &mut w.root, 1000)
            .await
            .unwrap(),
        (5007, 93)
    );
    assert_eq!(
        alloc_extent(&w.btree, &mut w.server, &mut w.root, 1000)
            .await
            .unwrap(),
        (4000, 30)
    );
    assert!(matches!(
        alloc_extent(&w.btree, &mut w.server, &mut w.root, 1).await,
        Err(Error::NoSpace(_))
    ));
    // The LOW flag follows total_len.
    free(&mut w, 6000, 50).await;
    assert!(set_low_flag(&mut w.root, 100));
    assert_eq!(w.root.flags.get() & ALLOC_FLAG_LOW, ALLOC_FLAG_LOW);
    assert!(!set_low_flag(&mut w.root, 50));
    assert_eq!(w.root.flags.get() & ALLOC_FLAG_LOW, 0);
}

#[test]
fn alloc_random_extents_keep_both_indexes_consistent() {
    on_both_runtimes(
        "alloc_random_extents_keep_both_indexes_consistent",
        0xe77,
        random_extents,
    );
}

async fn random_extents(env: Env) {
    let mut rng = env.rng();
    let mut w = World::new(&env, 8192).await;
    let mut model: BTreeSet<u64> = (3004..8192).collect();
    let mut held: Vec<(u64, u64)> = Vec::new();
    for i in 0..total_ops() / 2 {
        if rng.gen_bool(0.55) || held.is_empty() {
            let max = rng.gen_range(1..200);
            if let Ok((s, l)) = alloc_extent(&w.btree, &mut w.server, &mut w.root, max).await {
                for b in s..s + l {
                    assert!(model.remove(&b), "allocated non-free blkno {b}");
                }
                held.push((s, l));
            }
        } else {
            let (s, l) = held.swap_remove(rng.gen_range(0..held.len()));
            free_extent(&w.btree, &mut w.server, &mut w.root, s, l)
                .await
                .unwrap();
            model.extend(s..s + l);
        }
        if i % 200 == 0 {
            let ext = check_extents(&w.btree, &w.root).await.unwrap();
            let free: BTreeSet<u64> = ext.extents.iter().flat_map(|&(s, l)| s..s + l).collect();
            assert_eq!(free, model);
            w.commit().await;
        }
    }
}
