//! Every on-disk decoder survives hostile bytes: random blocks, truncated
//! blocks, and valid blocks with bytes flipped. The same entry points back
//! the cargo-fuzz targets in fuzz/; this runs them in CI on stable Rust.

use engine::format::btree_block::{encode_node, NodeItem};
use engine::format::fuzzing;
use engine::format::{Key, LG_BLOCK_SIZE};
use rand::{Rng, RngCore, SeedableRng};

fn rounds() -> u64 {
    std::env::var("SCOUTFS_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

fn valid_leaf(rng: &mut impl Rng) -> Vec<u8> {
    let n = rng.gen_range(0..200);
    let mut items: Vec<NodeItem> = (0..n)
        .map(|i| {
            let len = rng.gen_range(0..200);
            NodeItem::new(Key::new(16, i, 4, rng.gen(), 0, 0), vec![7; len])
        })
        .collect();
    items.sort_by_key(|i| i.key);
    let mut block = vec![0u8; LG_BLOCK_SIZE];
    encode_node(0, &items, &mut block).expect("fits");
    block
}

#[test]
fn random_and_mutated_blocks_never_panic() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5c0f);
    for _ in 0..rounds() {
        let mut noise = vec![0u8; rng.gen_range(0..LG_BLOCK_SIZE + 100)];
        rng.fill_bytes(&mut noise);
        fuzzing::btree_block(&noise);
        fuzzing::fixed_structs(&noise);
        fuzzing::list_bloom_srch_blocks(&noise);
        fuzzing::net_messages(&noise[..noise.len().min(32 + 1100)]);

        let mut leaf = valid_leaf(&mut rng);
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..leaf.len());
            leaf[at] ^= 1 << rng.gen_range(0..8);
        }
        fuzzing::btree_block(&leaf);
        let cut = rng.gen_range(0..leaf.len());
        fuzzing::fixed_structs(&leaf[..cut]);
        fuzzing::list_bloom_srch_blocks(&leaf[..cut]);
        fuzzing::net_messages(&leaf[..cut.min(32 + 1100)]);
    }
}

#[test]
fn mutated_net_frames_never_panic() {
    use engine::format::net::{encode_frame, NetHeader};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x4e7);
    for _ in 0..rounds() {
        let hdr = NetHeader {
            seq: rng.gen_range(0..3).into(),
            recv_seq: rng.gen::<u64>().into(),
            id: rng.gen_range(0..3).into(),
            data_len: 0.into(),
            cmd: rng.gen_range(0..22),
            flags: rng.gen_range(0..3),
            error: rng.gen_range(0..8),
            pad: [0; 3],
        };
        let mut data = vec![0u8; rng.gen_range(0..1100)];
        rng.fill_bytes(&mut data);
        let mut frame = encode_frame(&hdr, &data);
        if rng.gen_bool(0.5) {
            let at = rng.gen_range(0..frame.len());
            frame[at] ^= rng.gen::<u8>() | 1;
        }
        let cut = rng.gen_range(0..=frame.len());
        fuzzing::net_messages(&frame[..cut]);
        fuzzing::net_messages(&frame);
    }
}
