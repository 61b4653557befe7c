#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::format::fuzzing::list_bloom_srch_blocks(data));
