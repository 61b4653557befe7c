//! Known-answer tests for every hash and checksum of the format.
//!
//! The expected values come from scripts/hash_kat.py, an independent
//! implementation written from the format description: a bug shared by our
//! Rust code and its tests cannot hide here. Names cover 1–3, 4–7 and 8+
//! bytes because the dirent fingerprint changes behaviour at 4 and 8 bytes.

use engine::format::bloom::bloom_bits;
use engine::format::btree::leaf_hash_bucket;
use engine::format::hash::*;
use engine::format::srch::{decode_entry, encode_entry, SrchEntry};
use engine::format::Key;

mod table {
    #![allow(clippy::type_complexity)] // generated tables of plain tuples
    include!("data/hash_kat_table.rs");
}

#[test]
fn name_hashes_match_independent_implementation() {
    for &(name, crc, f32, f64, fp, dh) in table::NAMES {
        let shown = String::from_utf8_lossy(name);
        assert_eq!(crc_block(name), crc, "crc32c of {shown:?}");
        assert_eq!(
            xattr_name_hash(name),
            crc as u64,
            "xattr name hash of {shown:?}"
        );
        assert_eq!(fnv1a32(name), f32, "fnv1a32 of {shown:?}");
        assert_eq!(fnv1a64(name), f64, "fnv1a64 of {shown:?}");
        assert_eq!(dirent_fingerprint(name), fp, "fingerprint of {shown:?}");
        assert_eq!(dirent_name_hash(name), dh, "dirent hash of {shown:?}");
    }
}

#[test]
fn crc_is_the_complement_of_textbook_crc32c() {
    // The standard check value of CRC-32C over "123456789" is 0xe3069283.
    assert_eq!(crc_block(b"123456789"), !0xe306_9283);
    assert_eq!(crc_block(&[0u8; 65532]), table::CRC_EMPTY_LG_BLOCK_TAIL);
}

#[test]
fn leaf_buckets_and_bloom_bits_match() {
    for &((zone, first, ty, second, third, fourth), bucket, bits) in table::KEYS {
        let key = Key::new(zone, first, ty, second, third, fourth);
        assert_eq!(
            leaf_hash_bucket(&key.to_disk()) as u32,
            bucket,
            "bucket of {key}"
        );
        assert_eq!(bloom_bits(&key), bits, "bloom bits of {key}");
    }
}

#[test]
fn srch_entry_encoding_matches_and_decodes() {
    for &(prev, cur, enc) in table::SRCH {
        let prev = SrchEntry::new(prev[0], prev[1], prev[2]);
        let cur = SrchEntry::new(cur[0], cur[1], cur[2]);
        let mut out = Vec::new();
        encode_entry(&mut out, &prev, &cur);
        assert_eq!(out, enc, "encoding of {cur:?} after {prev:?}");
        let (back, used) = decode_entry(&out, &prev).unwrap();
        assert_eq!((back, used), (cur, out.len()));
    }
}

#[test]
fn truncated_srch_entries_are_errors() {
    let (prev, cur) = (
        SrchEntry::new(0, 0, 0),
        SrchEntry::new(u64::MAX, 77, 1 << 40),
    );
    let mut out = Vec::new();
    encode_entry(&mut out, &prev, &cur);
    for cut in 0..out.len() {
        assert!(decode_entry(&out[..cut], &prev).is_err(), "cut at {cut}");
    }
}
