//! Audio readers and the LibriSpeech corpus reader, on generated WAVs, the
//! committed FLAC fixtures and (when present) ../shared/data/speech-mini.

use std::path::{Path, PathBuf};

use kiln_speech::audio::{read_audio, read_audio_at};
use kiln_speech::corpus::{list_utterances, read_corpus, CorpusOptions};
use kiln_speech::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ramp(n: usize) -> Vec<f64> {
    (0..n).map(|i| ((i as f64) * 0.05).sin() * 0.8).collect()
}

fn write_wav(path: &Path, bits: u16, float: bool, channels: u16, rate: u32, x: &[f64]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &v in x {
        for ch in 0..channels {
            // second channel is the negated first plus 0.1: mix = 0.05
            let s = if ch == 0 { v } else { 0.1 - v };
            let s = if channels == 1 { v } else { s };
            if float {
                w.write_sample(s as f32).unwrap();
            } else {
                let q = (s * (1i64 << (bits - 1)) as f64).round() as i32;
                match bits {
                    8 => w.write_sample(q as i8).unwrap(),
                    16 => w.write_sample(q as i16).unwrap(),
                    _ => w.write_sample(q).unwrap(),
                }
            }
        }
    }
    w.finalize().unwrap();
}

fn write_wav_f64(path: &Path, channels: u16, rate: u32, x: &[f64]) {
    let data: Vec<u8> = x
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, channels as usize))
        .flat_map(f64::to_le_bytes)
        .collect();
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 8 * channels as u32).to_le_bytes());
    b.extend_from_slice(&(8 * channels).to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn wav_every_sample_format() {
    let dir = tempfile::tempdir().unwrap();
    let x = ramp(1000);
    for (bits, float, tol) in [
        (8, false, 1.0 / 100.0),
        (16, false, 1e-4),
        (24, false, 1e-6),
        (32, false, 1e-6),
        (32, true, 1e-7),
    ] {
        let p = dir.path().join(format!("a{bits}{float}.wav"));
        write_wav(&p, bits, float, 1, 16_000, &x);
        let a = read_audio(&p).unwrap();
        assert_eq!((a.sample_rate, a.samples.len()), (16_000, 1000));
        let err = a
            .samples
            .iter()
            .zip(&x)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err < tol, "{bits}-bit float={float}: {err}");
    }
    let p = dir.path().join("f64.wav");
    write_wav_f64(&p, 2, 22_050, &x);
    let a = read_audio(&p).unwrap();
    assert_eq!(a.sample_rate, 22_050);
    assert!((a.samples[7] as f64 - x[7]).abs() < 1e-7);
}

#[test]
fn wav_stereo_is_mixed_to_mono() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stereo.wav");
    write_wav(&p, 16, false, 2, 16_000, &ramp(500));
    let a = read_audio(&p).unwrap();
    assert_eq!(a.samples.len(), 500);
    assert!(a.samples.iter().all(|v| (v - 0.05).abs() < 1e-4));
}

#[test]
fn wav_resampled_to_16k() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("8k.wav");
    write_wav(&p, 16, false, 1, 8_000, &ramp(8_000));
    let a = read_audio_at(&p, 16_000).unwrap();
    assert_eq!((a.sample_rate, a.samples.len()), (16_000, 16_000));
    assert!((a.duration_s() - 1.0).abs() < 1e-9);
}

fn assert_names_file(e: &Error, path: &Path) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn bad_files_give_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    // truncated WAV
    let p = dir.path().join("trunc.wav");
    write_wav(&p, 16, false, 1, 16_000, &ramp(1000));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_names_file(&read_audio(&p).unwrap_err(), &p);
    // not audio
    let q = dir.path().join("junk.wav");
    std::fs::write(&q, b"hello, this is not audio").unwrap();
    assert_names_file(&read_audio(&q).unwrap_err(), &q);
    // empty
    let e = dir.path().join("empty.flac");
    std::fs::write(&e, b"").unwrap();
    assert_names_file(&read_audio(&e).unwrap_err(), &e);
    // truncated FLAC
    let src = fixtures().join("librispeech/mini/3505/259831/3505-259831-0002.flac");
    let f = dir.path().join("trunc.flac");
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_names_file(&read_audio(&f).unwrap_err(), &f);
    // missing
    let m = dir.path().join("missing.wav");
    assert!(matches!(read_audio(&m).unwrap_err(), Error::Io { .. }));
}

#[test]
fn flac_fixture_reads() {
    let p = fixtures().join("librispeech/mini/4490/90921/4490-90921-0010.flac");
    let a = read_audio(&p).unwrap();
    assert_eq!(a.sample_rate, 16_000);
    assert!(a.duration_s() > 0.5 && a.duration_s() < 10.0);
    let peak = a.samples.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(peak > 0.05 && peak <= 1.0, "peak {peak}");
}

#[test]
fn corpus_fixture_lists_and_loads() {
    let split = fixtures().join("librispeech/mini");
    let report = read_corpus(&split, CorpusOptions::default()).unwrap();
    let ids: Vec<&str> = report
        .utterances
        .iter()
        .map(|u| u.utterance.id.as_str())
        .collect();
    assert_eq!(ids, ["3505-259831-0002", "4490-90921-0010"]);
    assert_eq!(
        report.utterances[1].utterance.transcript,
        "PETER COULD LISTEN"
    );
    assert!(report.skipped.is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn corpus_skips_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("mini");
    copy_dir(&fixtures().join("librispeech/mini"), &split);
    let chapter = split.join("3505/259831");
    // corrupt one file, list one utterance whose audio is missing
    let bad = chapter.join("3505-259831-0002.flac");
    std::fs::write(&bad, b"fLaC garbage").unwrap();
    let trans = chapter.join("3505-259831.trans.txt");
    let mut t = std::fs::read_to_string(&trans).unwrap();
    t.push_str("3505-259831-0003 NOT THERE\n");
    std::fs::write(&trans, t).unwrap();

    let strict = read_corpus(&split, CorpusOptions::default()).unwrap_err();
    assert!(
        strict.to_string().contains("3505-259831-0003.flac"),
        "{strict}"
    );
    let (listed, missing) = list_utterances(&split, true).unwrap();
    assert_eq!((listed.len(), missing.len()), (2, 1));

    let report = read_corpus(
        &split,
        CorpusOptions {
            skip_bad: true,
            ..CorpusOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.utterances.len(), 1);
    let skipped: Vec<&PathBuf> = report.skipped.iter().map(|(p, _)| p).collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.contains(&&bad));
    for (p, e) in &report.skipped {
        assert_names_file(e, p);
    }
}

#[test]
fn shared_speech_mini_if_present() {
    let dev =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/speech-mini/dev-clean");
    if !dev.is_dir() {
        println!("note: {} not found; skipping", dev.display());
        return;
    }
    let (utts, bad) = list_utterances(&dev, false).unwrap();
    assert_eq!(utts.len(), 50);
    assert!(bad.is_empty());
    for u in utts.iter().take(3) {
        let a = read_audio_at(&u.audio_path, 16_000).unwrap();
        assert!(a.duration_s() > 0.3, "{}", u.id);
    }
}
