//! Every fuzz target (fuzz/src/targets.rs) replayed on its committed
//! corpus (fuzz/corpus/<target>/) on the stable toolchain: an input that
//! once crashed a decoder, or reached new code, keeps being checked in CI
//! without libFuzzer. `cargo fuzz run <target>` (nightly, cargo-fuzz) runs
//! the fuzzer itself; see docs/fuzzing.md.

#[allow(dead_code, unreachable_pub)]
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;

#[test]
fn every_target_replays_its_corpus_without_a_crash() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => panic!("the corpus of fuzz target {name} ({}): {e}", dir.display()),
        };
        inputs.sort();
        assert!(!inputs.is_empty(), "fuzz target {name} has an empty corpus");
        for input in inputs {
            let data = std::fs::read(&input).expect("a corpus file");
            target(&data);
            replayed += 1;
        }
    }
    eprintln!(
        "{replayed} corpus inputs replayed over {} targets",
        targets::TARGETS.len()
    );
}
