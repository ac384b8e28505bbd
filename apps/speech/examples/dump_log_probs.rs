//! Writes the real-model fixture of `tests/decoder_fixture_tests.rs`: a
//! trained DS2's log-probabilities on `N` utterances spread over a split (every k-th)
//! (quantised), their references, and LM text from the split's other
//! transcripts plus every fixture reference word they lack.
//!
//! ```text
//! cargo run --release -p kiln-speech --example dump_log_probs -- \
//!     MODEL.safetensors SPLIT_DIR N apps/speech/tests/fixtures/ds2_unseen
//! ```
//!
//! Each log-probability `l` is stored as one byte `q = round(-10 l)`
//! clamped to 0..=255 (so `l = -q / 10`, down to -25.5): 29 bytes per
//! frame, frames of each utterance in order, utterances in
//! `utterances.json`'s order.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kiln_speech::corpus::list_utterances;
use kiln_speech::ds2::Ds2;
use kiln_speech::pipeline::{log_probs, Example};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, split, n, out] = args.as_slice() else {
        return Err("usage: dump_log_probs MODEL SPLIT_DIR N OUT_DIR".into());
    };
    let n: usize = n.parse()?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let mut model = Ds2::<f32>::load(model.as_ref())?;
    let (utts, _) = list_utterances(split.as_ref(), false)?;
    // Every k-th utterance, so that the fixture spans the split's voices.
    let stride = (utts.len() / n.max(1)).max(1);
    let (fixture, rest): (Vec<_>, Vec<_>) = utts
        .iter()
        .enumerate()
        .partition(|(i, _)| i % stride == 0 && i / stride < n);
    let fixture: Vec<_> = fixture.into_iter().map(|(_, u)| u).collect();
    let rest: Vec<_> = rest.into_iter().map(|(_, u)| u).collect();
    let examples = fixture
        .iter()
        .map(|u| Example::from_file(&u.id, &u.audio_path))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = log_probs(&mut model, &examples.iter().collect::<Vec<_>>())?;
    let mut bytes = Vec::new();
    let mut listed = Vec::new();
    for (u, lp) in fixture.iter().zip(&outputs) {
        bytes.extend(
            lp.iter()
                .map(|&l| (-10.0 * l).round().clamp(0.0, 255.0) as u8),
        );
        listed.push(serde_json::json!({
            "id": u.id,
            "reference": u.transcript,
            "frames": lp.nrows(),
        }));
    }
    std::fs::write(out.join("log_probs.bin"), &bytes)?;
    std::fs::write(
        out.join("utterances.json"),
        serde_json::to_string_pretty(&listed)? + "\n",
    )?;
    let mut lines: Vec<String> = rest.iter().map(|u| u.transcript.clone()).collect();
    let known: BTreeSet<&str> = rest
        .iter()
        .flat_map(|u| u.transcript.split_whitespace())
        .collect();
    let missing: BTreeSet<&str> = fixture
        .iter()
        .flat_map(|u| u.transcript.split_whitespace())
        .filter(|w| !known.contains(w))
        .collect();
    lines.extend(missing.iter().map(|w| w.to_string()));
    std::fs::write(out.join("lm_text.txt"), lines.join("\n") + "\n")?;
    println!(
        "wrote {} utterances ({} bytes of log-probabilities) and {} LM lines ({} words added) to {}",
        fixture.len(),
        bytes.len(),
        lines.len(),
        missing.len(),
        out.display()
    );
    Ok(())
}
