//! Audio readers: WAV (PCM 8/16/24/32-bit, IEEE float 32/64-bit) and FLAC,
//! mixed down to mono `f32` in [-1, 1], optionally resampled.
//!
//! Integer samples are scaled by `2^(bits-1)` (so 16-bit `-32768` maps to
//! `-1.0`); several channels are averaged.

use std::path::Path;

use crate::error::{Error, Result};
use crate::resample::resample;

/// Mono audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples in [-1, 1].
    pub samples: Vec<f32>,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / self.sample_rate as f64
    }

    /// This audio at `rate` Hz (a copy when it already is).
    pub fn resampled(&self, rate: u32) -> Result<Audio> {
        if rate == self.sample_rate {
            return Ok(self.clone());
        }
        Ok(Audio {
            samples: resample(&self.samples, self.sample_rate, rate)?,
            sample_rate: rate,
        })
    }
}

/// Reads a WAV or FLAC file (chosen by content: `RIFF` or `fLaC` magic).
pub fn read_audio(path: &Path) -> Result<Audio> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.read_exact(&mut magic)
            .map_err(|e| Error::audio(path, format!("too short to be audio: {e}")))?;
    }
    let audio = match &magic {
        b"RIFF" => read_wav(path),
        b"fLaC" => read_flac(path),
        _ => Err(Error::audio(
            path,
            format!("unsupported format (magic bytes {magic:?}; expected RIFF/WAVE or fLaC)"),
        )),
    }?;
    if audio.sample_rate == 0 {
        return Err(Error::audio(path, "sample rate 0"));
    }
    if audio.samples.is_empty() {
        return Err(Error::audio(path, "no samples"));
    }
    if let Some(i) = audio.samples.iter().position(|s| !s.is_finite()) {
        return Err(Error::audio(
            path,
            format!("sample {i} is {} (not a finite number)", audio.samples[i]),
        ));
    }
    Ok(audio)
}

/// Reads a file and resamples it to `rate` Hz when needed.
pub fn read_audio_at(path: &Path, rate: u32) -> Result<Audio> {
    read_audio(path)?.resampled(rate)
}

/// Averages interleaved channels into one.
fn mix(interleaved: Vec<f32>, channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved;
    }
    let inv = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() * inv)
        .collect()
}

/// Reads a WAV file: PCM 8 (unsigned), 16, 24 or 32-bit, or IEEE float 32
/// or 64-bit, any channel count.
pub fn read_wav(path: &Path) -> Result<Audio> {
    let reader = match hound::WavReader::open(path) {
        Ok(r) => r,
        Err(hound::Error::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::io(path, e))
        }
        // hound has no 64-bit float: decode that one ourselves.
        Err(e) => {
            return match read_wav_f64(path) {
                Ok(Some(audio)) => Ok(audio),
                Ok(None) => Err(Error::audio(path, format!("WAV: {e}"))),
                Err(own) => Err(own),
            }
        }
    };
    let spec = reader.spec();
    let channels = spec.channels as usize;
    if channels == 0 {
        return Err(Error::audio(path, "WAV: zero channels"));
    }
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::audio(path, format!("WAV (truncated or corrupt): {e}")))?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::audio(path, format!("WAV (truncated or corrupt): {e}")))?
        }
        (fmt, bits) => {
            return Err(Error::audio(
                path,
                format!("WAV: unsupported sample format {fmt:?} with {bits} bits"),
            ))
        }
    };
    if !samples.len().is_multiple_of(channels) {
        return Err(Error::audio(path, "WAV: truncated (partial frame)"));
    }
    Ok(Audio {
        samples: mix(samples, channels),
        sample_rate: spec.sample_rate,
    })
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// A minimal RIFF/WAVE decoder for 64-bit IEEE float data; `None` when the
/// file declares another format (hound's error then stands).
fn read_wav_f64(path: &Path) -> Result<Option<Audio>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Ok(None);
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(&bytes, pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if len < 16 || body + 16 > bytes.len() {
                return Err(Error::audio(path, "WAV: truncated fmt chunk"));
            }
            let mut tag = u16_at(&bytes, body);
            if tag == 0xFFFE && len >= 26 && body + 26 <= bytes.len() {
                tag = u16_at(&bytes, body + 24);
            }
            fmt = Some((
                tag,
                u16_at(&bytes, body + 2),
                u32_at(&bytes, body + 4),
                u16_at(&bytes, body + 14),
            ));
        } else if id == b"data" {
            let Some((tag, channels, rate, bits)) = fmt else {
                return Ok(None);
            };
            if tag != 3 || bits != 64 {
                return Ok(None);
            }
            if channels == 0 {
                return Err(Error::audio(path, "WAV: zero channels"));
            }
            let end = body + len;
            if end > bytes.len() || !len.is_multiple_of(8 * channels as usize) {
                return Err(Error::audio(path, "WAV: truncated data chunk"));
            }
            let samples = bytes[body..end]
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect();
            return Ok(Some(Audio {
                samples: mix(samples, channels as usize),
                sample_rate: rate,
            }));
        }
        pos = body + len + (len & 1);
    }
    match fmt {
        Some((3, _, _, 64)) => Err(Error::audio(path, "WAV: no data chunk (truncated?)")),
        _ => Ok(None),
    }
}

/// Longest audio Kiln reads, in seconds (four hours): a bound on what a
/// file's header or its compressed samples may make it allocate.
pub const MAX_AUDIO_SECONDS: u64 = 4 * 3600;

/// Samples read into memory before the decoder has produced them.
const PREALLOCATE_SAMPLES: u64 = 1 << 22;

/// Interleaved samples of [`MAX_AUDIO_SECONDS`] at `rate` Hz.
fn sample_limit(path: &Path, rate: u32, channels: usize) -> Result<u64> {
    if rate == 0 {
        return Err(Error::audio(path, "sample rate 0"));
    }
    if channels == 0 {
        return Err(Error::audio(path, "zero channels"));
    }
    Ok(MAX_AUDIO_SECONDS * u64::from(rate) * channels as u64)
}

fn too_long(path: &Path, samples: u64, rate: u32) -> Error {
    Error::audio(
        path,
        format!(
            "{samples} samples at {rate} Hz: longer than the {} s Kiln reads",
            MAX_AUDIO_SECONDS
        ),
    )
}

/// Reads a FLAC file (any bit depth, any channel count).
pub fn read_flac(path: &Path) -> Result<Audio> {
    let mut reader = claxon::FlacReader::open(path).map_err(|e| match e {
        claxon::Error::IoError(io) => Error::io(path, io),
        other => Error::audio(path, format!("FLAC: {other}")),
    })?;
    let info = reader.streaminfo();
    let channels = info.channels as usize;
    let scale = 1.0 / (1u64 << (info.bits_per_sample - 1)) as f64;
    // A header may claim any length, and a few bytes of FLAC can decode to
    // hours of silence: the samples are bounded by a duration.
    let limit = sample_limit(path, info.sample_rate, channels)?;
    if let Some(total) = info.samples {
        if total.saturating_mul(channels as u64) > limit {
            return Err(too_long(path, total, info.sample_rate));
        }
    }
    let declared = info.samples.unwrap_or(0).saturating_mul(channels as u64);
    let mut samples = Vec::with_capacity(declared.min(PREALLOCATE_SAMPLES) as usize);
    for s in reader.samples() {
        let v = s.map_err(|e| Error::audio(path, format!("FLAC (truncated or corrupt): {e}")))?;
        if samples.len() as u64 >= limit {
            return Err(too_long(
                path,
                samples.len() as u64 / channels.max(1) as u64,
                info.sample_rate,
            ));
        }
        samples.push((v as f64 * scale) as f32);
    }
    if let Some(total) = info.samples {
        if (samples.len() as u64) < total * channels as u64 {
            return Err(Error::audio(
                path,
                format!(
                    "FLAC: truncated ({} of {} samples)",
                    samples.len() / channels.max(1),
                    total
                ),
            ));
        }
    }
    Ok(Audio {
        samples: mix(samples, channels),
        sample_rate: info.sample_rate,
    })
}

/// How long an audio file is, read from its header where it says
/// (WAV's data chunk, FLAC's STREAMINFO), else by decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLength {
    /// Samples per channel.
    pub samples: u64,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

impl AudioLength {
    /// Samples per channel once resampled to `rate` Hz (as the resampler
    /// makes them).
    pub fn samples_at(&self, rate: u32) -> u64 {
        if rate == self.sample_rate || self.sample_rate == 0 {
            self.samples
        } else {
            (u128::from(self.samples) * u128::from(rate)).div_ceil(u128::from(self.sample_rate))
                as u64
        }
    }

    /// Duration in seconds.
    pub fn seconds(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.samples as f64 / f64::from(self.sample_rate)
        }
    }
}

/// The length of a WAV or FLAC file without decoding its samples where the
/// header holds it.
pub fn audio_length(path: &Path) -> Result<AudioLength> {
    if let Ok(r) = hound::WavReader::open(path) {
        return Ok(AudioLength {
            samples: u64::from(r.duration()),
            sample_rate: r.spec().sample_rate,
        });
    }
    if let Ok(r) = claxon::FlacReader::open(path) {
        let info = r.streaminfo();
        if let Some(samples) = info.samples {
            return Ok(AudioLength {
                samples,
                sample_rate: info.sample_rate,
            });
        }
    }
    let audio = read_audio(path)?;
    Ok(AudioLength {
        samples: audio.samples.len() as u64,
        sample_rate: audio.sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_channels() {
        assert_eq!(mix(vec![1.0, 0.0, 0.5, 0.5], 2), vec![0.5, 0.5]);
    }

    fn wav_f32(path: &Path, samples: &[f32]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for &s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn audio_with_no_samples_or_non_finite_samples_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        wav_f32(&p, &[]);
        assert!(read_audio(&p)
            .unwrap_err()
            .to_string()
            .contains("no samples"));
        wav_f32(&p, &[0.1, f32::NAN, 0.2]);
        let err = read_audio(&p).unwrap_err().to_string();
        assert!(
            err.contains("sample 1 is NaN") && err.contains("a.wav"),
            "{err}"
        );
        wav_f32(&p, &[0.1, 0.2]);
        assert_eq!(read_audio(&p).unwrap().samples, vec![0.1, 0.2]);
    }

    #[test]
    fn a_flac_header_claiming_more_than_the_longest_audio_is_refused_before_allocating() {
        // Found by the `audio` fuzz target: a STREAMINFO claiming ~4e9
        // samples made the reader reserve 16 GB.
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fuzz/corpus/audio/regression-flac-claims-16g-samples"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.flac");
        std::fs::write(&p, bytes).unwrap();
        assert!(read_audio(&p).is_err());
    }
}
