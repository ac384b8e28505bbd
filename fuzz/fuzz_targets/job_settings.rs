//! Fuzz target `job_settings` (see src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::targets::job_settings(data));
