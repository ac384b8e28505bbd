//! Whether CTC can align an utterance at all: its transcript needs one
//! output frame per label plus one blank between each pair of equal
//! neighbours, and the model's output for its audio may be shorter. Such
//! an utterance has an infinite loss (zeroed in training: it teaches
//! nothing), so a run reports how many there are before it starts.

use crate::audio::AudioLength;
use crate::ds2::Ds2Config;
use crate::features::Windower;
use crate::pipeline::SAMPLE_RATE;

/// Output frames CTC needs for `labels`: one per label and one blank
/// between each pair of equal neighbours.
pub fn ctc_min_frames<L: PartialEq>(labels: &[L]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

/// Output frames the model `config` gives for audio of `length` (through
/// the DS2 front end's windows and the model's convolutions).
pub fn output_frames(config: &Ds2Config, length: &AudioLength) -> usize {
    let samples = usize::try_from(length.samples_at(SAMPLE_RATE)).unwrap_or(usize::MAX);
    config.output_length(Windower::ds2().frames(samples))
}

/// An utterance CTC cannot align.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unalignable {
    /// Its id.
    pub id: String,
    /// Output frames the model gives for it.
    pub output_frames: usize,
    /// Output frames its transcript needs.
    pub needed: usize,
}

/// `Some` when an utterance of `labels` and audio `length` cannot be
/// aligned by the model `config`.
pub fn unalignable<L: PartialEq>(
    config: &Ds2Config,
    id: &str,
    labels: &[L],
    length: &AudioLength,
) -> Option<Unalignable> {
    let output_frames = output_frames(config, length);
    let needed = ctc_min_frames(labels);
    (output_frames < needed).then(|| Unalignable {
        id: id.to_string(),
        output_frames,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::front_end;

    #[test]
    fn repeats_need_a_blank_between_them() {
        assert_eq!(ctc_min_frames::<u8>(&[]), 0);
        assert_eq!(ctc_min_frames(&[1, 2, 3]), 3);
        assert_eq!(ctc_min_frames(&[1, 1, 2, 2, 2]), 8);
    }

    #[test]
    fn output_frames_match_the_front_end_and_the_model() {
        let config = Ds2Config::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/ds2_tiny.toml"),
        )
        .unwrap();
        for (samples, rate) in [
            (16_000u64, 16_000u32),
            (12_345, 16_000),
            (8_000, 8_000),
            (44_100, 44_100),
            (100, 16_000),
        ] {
            let audio = crate::audio::Audio {
                samples: vec![0.1; samples as usize],
                sample_rate: rate,
            };
            let frames = front_end(&audio).unwrap().dim().0;
            let length = AudioLength {
                samples,
                sample_rate: rate,
            };
            assert_eq!(
                output_frames(&config, &length),
                config.output_length(frames),
                "{samples} at {rate} Hz"
            );
        }
        let short = AudioLength {
            samples: 1_600,
            sample_rate: 16_000,
        };
        let long_text: Vec<usize> = (0..200).map(|i| i % 20).collect();
        let u = unalignable(&config, "u1", &long_text, &short).expect("too short");
        assert_eq!(u.needed, 200);
        assert!(u.output_frames < 200);
        assert!(unalignable(&config, "u2", &long_text[..2], &short).is_none());
    }
}
