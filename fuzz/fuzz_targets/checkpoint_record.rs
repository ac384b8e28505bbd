//! Fuzz target `checkpoint_record` (see src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::checkpoint_record(data));
