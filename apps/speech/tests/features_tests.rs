//! Feature parity with numpy (fixtures/features.json, made by
//! fixtures/gen_feature_fixtures.py from fixtures/tone.wav), and the
//! TranscriptVectorizer / TimeSegmenter in a chain.

use std::path::Path;

use kiln_speech::audio::read_audio;
use kiln_speech::features::{
    LogCompress, Normalize, Spectrogram, SpectrumKind, Transformer, Windower,
};
use kiln_speech::mel::MelFilterBank;
use kiln_speech::segment::TimeSegmenter;
use kiln_speech::text::{labels_to_text, TranscriptVectorizer};
use ndarray::Array2;

fn fixture() -> (Vec<f32>, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let audio = read_audio(&dir.join("tone.wav")).unwrap();
    assert_eq!(audio.sample_rate, 16_000);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("features.json")).unwrap()).unwrap();
    (audio.samples, doc)
}

fn matrix(v: &serde_json::Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j])
}

/// max |a - b| / (1 + |b|)
fn rel_err(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn spectrogram_matches_numpy() {
    let (x, doc) = fixture();
    let want = matrix(&doc["spectrogram_magnitude"]);
    let mag = Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Magnitude).unwrap())
        .transform(x.clone())
        .unwrap();
    assert_eq!(mag.dim(), (9, 161));
    let e = rel_err(&mag, &want);
    println!("spectrogram magnitude max rel err {e:e}");
    assert!(e < 1e-4);
    let pow = Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Power).unwrap())
        .transform(x)
        .unwrap();
    let e = rel_err(&pow, &want.mapv(|v| v * v));
    assert!(e < 1e-3, "power {e}");
}

#[test]
fn mel_matches_numpy_torchaudio_formula() {
    let (x, doc) = fixture();
    let want = matrix(&doc["mel40_power"]);
    let mel = Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Power).unwrap())
        .then(MelFilterBank::for_fft(320, 40, 16_000).unwrap())
        .transform(x)
        .unwrap();
    let e = rel_err(&mel, &want);
    println!("mel40 max rel err {e:e}");
    assert!(e < 1e-3);
}

#[test]
fn log_normalized_matches_numpy() {
    let (x, doc) = fixture();
    let want = matrix(&doc["log1p_normalized"]);
    let got = Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Magnitude).unwrap())
        .then(LogCompress::Log1p)
        .then(Normalize::default())
        .transform(x)
        .unwrap();
    let e = rel_err(&got, &want);
    println!("log1p+normalize max rel err {e:e}");
    assert!(e < 1e-3);
}

#[test]
fn segmenter_then_features() {
    let (x, _) = fixture();
    let audio = kiln_speech::audio::Audio {
        samples: x,
        sample_rate: 16_000,
    };
    let segs = TimeSegmenter::new(0.04).unwrap().transform(audio).unwrap();
    assert_eq!(segs.len(), 3);
    let feats = Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Magnitude).unwrap())
        .transform(segs[0].samples.clone())
        .unwrap();
    assert_eq!(feats.dim(), (3, 161));
}

#[test]
fn transcript_vectorizer_round_trip() {
    let labels = TranscriptVectorizer
        .transform("PETER COULD LISTEN".to_string())
        .unwrap();
    assert_eq!(labels.len(), 18);
    assert_eq!(labels_to_text(&labels).unwrap(), "PETER COULD LISTEN");
    assert!(TranscriptVectorizer.encode("NAÏVE").is_err());
}
