//! Decoder speed (issue 25's target: beam 64 with the LM at least 20x real
//! time on one core): a trained model's log-probabilities for a split,
//! computed once, decoded greedily and by prefix beam search with the LM
//! (beam 64), each timed on one thread; real time is the audio's length
//! (10 ms per feature frame). Also prints both decodes' WER.
//!
//! ```text
//! cargo bench --bench speech -- --threads 1 --only decode \
//!     --model ds2.safetensors --data SPLIT_DIR --lm lm.arpa [--beam 64]
//! ```
//! Without `--model`, `--data` and `--lm` it says so and measures nothing.

use std::path::PathBuf;
use std::time::Instant;

use kiln::jobs::speech::read_split;
use kiln::speech::decoder::{best_path, BeamSearchDecoder, LmWeights};
use kiln::speech::ds2::Ds2;
use kiln::speech::lm::NgramLm;
use kiln::speech::metrics::wer;
use kiln::speech::pipeline::{self, Example};

/// Seconds of audio per feature frame (the front end's 160-sample hop at
/// 16 kHz).
const FRAME_SECONDS: f64 = 0.01;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Decoder speed on the split `--data` with `--model` and `--lm`.
pub(crate) fn run(threads: usize) {
    let (Some(model), Some(data), Some(lm)) = (arg("--model"), arg("--data"), arg("--lm")) else {
        eprintln!("decode: needs --model M --data SPLIT --lm LM; skipped");
        return;
    };
    let beam: usize = arg("--beam").and_then(|b| b.parse().ok()).unwrap_or(64);
    if let Err(e) = measure(
        threads,
        PathBuf::from(model),
        PathBuf::from(data),
        PathBuf::from(lm),
        beam,
    ) {
        eprintln!("decode: {e:#}");
    }
}

fn measure(
    threads: usize,
    model: PathBuf,
    data: PathBuf,
    lm: PathBuf,
    beam: usize,
) -> anyhow::Result<()> {
    let model_path = model;
    let mut model = Ds2::<f32>::load(&model_path)?;
    let lm = NgramLm::read_arpa(&lm)?;
    let (examples, _) = read_split(&data, 0.0, "--data")?;
    let refs: Vec<&Example> = examples.iter().collect();
    let log_probs = pipeline::log_probs(&mut model, &refs)?;
    let audio_s: f64 = examples
        .iter()
        .map(|e| e.frames as f64 * FRAME_SECONDS)
        .sum();
    let references: Vec<&str> = examples.iter().map(|e| e.transcript.as_str()).collect();
    let timed = |decode: &dyn Fn(&ndarray::Array2<f32>) -> anyhow::Result<String>| {
        let t = Instant::now();
        let hyps = log_probs
            .iter()
            .map(decode)
            .collect::<anyhow::Result<Vec<String>>>();
        (t.elapsed().as_secs_f64(), hyps)
    };
    let (greedy_s, greedy) = timed(&|lp| Ok(best_path(lp.view())?));
    let tuned = kiln::speech::tune::TunedDecoder::path_for(&model_path);
    let weights = kiln::speech::tune::TunedDecoder::read(&tuned)
        .map(|t| t.weights)
        .unwrap_or_default();
    let decoder = BeamSearchDecoder {
        beam_width: beam,
        alpha: weights.alpha,
        beta: weights.beta,
        unk_offset: weights.unk_offset,
        unk_letter_score: weights.unk_letter_score,
        lm: Some(&lm),
        ..BeamSearchDecoder::default()
    };
    let (beam_s, with_lm) = timed(&|lp| Ok(decoder.decode(lp.view())?));
    let rate = |hyps: &[String]| {
        wer(references
            .iter()
            .copied()
            .zip(hyps.iter().map(String::as_str)))
        .rate()
    };
    let (greedy, with_lm) = (greedy?, with_lm?);
    let LmWeights {
        alpha,
        beta,
        unk_offset,
        unk_letter_score,
    } = weights;
    println!(
        "{{\"bench\":\"decode\",\"threads\":{threads},\"utterances\":{},\"audio_s\":{audio_s:.1},\"greedy_x_realtime\":{:.0},\"beam\":{beam},\"beam_lm_s\":{beam_s:.3},\"beam_lm_x_realtime\":{:.1},\"greedy_wer\":{:.4},\"beam_lm_wer\":{:.4},\"alpha\":{alpha},\"beta\":{beta},\"unk_offset\":{unk_offset},\"unk_letter_score\":{unk_letter_score}}}",
        examples.len(),
        audio_s / greedy_s.max(1e-9),
        audio_s / beam_s.max(1e-9),
        rate(&greedy),
        rate(&with_lm),
    );
    Ok(())
}
