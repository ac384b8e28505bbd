//! Fuzz target `image` (see src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::image(data));
