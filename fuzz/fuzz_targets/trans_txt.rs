//! Fuzz target `trans_txt` (see src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::trans_txt(data));
