//! Fuzz target `join_string` (see src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::join_string(data));
