//! TimeSegmenter: cuts long utterances into segments of at most a given
//! duration (the last one shorter), as BigDL's DS2 does before inference.

use crate::audio::Audio;
use crate::error::{Error, Result};
use crate::features::Transformer;

/// Cuts audio into consecutive segments of at most `max_seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeSegmenter {
    /// Longest segment, in seconds.
    pub max_seconds: f64,
}

impl TimeSegmenter {
    /// A segmenter; `max_seconds` must be positive.
    pub fn new(max_seconds: f64) -> Result<Self> {
        if max_seconds.is_nan() || max_seconds <= 0.0 {
            return Err(Error::config(
                "TimeSegmenter",
                format!("max_seconds {max_seconds} must be positive"),
            ));
        }
        Ok(TimeSegmenter { max_seconds })
    }
}

impl Transformer for TimeSegmenter {
    type Input = Audio;
    type Output = Vec<Audio>;

    fn transform(&self, audio: Audio) -> Result<Vec<Audio>> {
        let n = ((self.max_seconds * audio.sample_rate as f64).floor() as usize).max(1);
        if audio.samples.len() <= n {
            return Ok(vec![audio]);
        }
        Ok(audio
            .samples
            .chunks(n)
            .map(|c| Audio {
                samples: c.to_vec(),
                sample_rate: audio.sample_rate,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_into_pieces() {
        let a = Audio {
            samples: vec![0.0; 16_000 * 5 + 10],
            sample_rate: 16_000,
        };
        let segs = TimeSegmenter::new(2.0).unwrap().transform(a).unwrap();
        let lens: Vec<usize> = segs.iter().map(|s| s.samples.len()).collect();
        assert_eq!(lens, vec![32_000, 32_000, 16_010]);
        assert!(TimeSegmenter::new(0.0).is_err());
    }
}
