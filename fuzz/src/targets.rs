//! One function per decoder of outside input, each taking the fuzzer's
//! bytes and discarding the decoder's result: an input may be refused,
//! never panic, abort, hang or allocate without bound. `cargo fuzz run
//! <name>` runs one under libFuzzer; the main workspace's
//! `tests/fuzz_corpora.rs` includes this file and replays every committed
//! corpus through [`TARGETS`] on the stable toolchain.
//!
//! Decoders that read files are given the bytes through a scratch file
//! (one per process and thread), as the commands give them a user's file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fuzz target: the fuzzer's bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/<name>.rs` and corpus
/// folder `corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("messages", messages),
    ("preamble", preamble),
    ("join_string", join_string),
    ("checkpoint_record", checkpoint_record),
    ("blob_file", blob_file),
    ("audio", audio),
    ("trans_txt", trans_txt),
    ("arpa", arpa),
    ("voc_xml", voc_xml),
    ("image", image),
    ("detections", detections),
    ("safetensors", safetensors),
    ("ds2_config", ds2_config),
    ("detection_config", detection_config),
    ("job_settings", job_settings),
];

/// A scratch file holding `data`, named `name` in a per-process,
/// per-thread directory.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let d = std::env::temp_dir().join(format!(
                "kiln-fuzz-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&d).expect("a scratch directory");
            d
        };
    }
    let path = DIR.with(|d| d.join(name));
    std::fs::write(&path, data).expect("a scratch file");
    path
}

/// Control-stream frames (length prefix and message body).
pub fn frames(data: &[u8]) {
    kiln_runtime::fuzzing::frames(data);
}

/// Message bodies of every kind a peer sends.
pub fn messages(data: &[u8]) {
    kiln_runtime::fuzzing::messages(data);
}

/// The handshake preamble.
pub fn preamble(data: &[u8]) {
    kiln_runtime::fuzzing::preamble(data);
}

/// `TOKEN@HOST:PORT` join strings.
pub fn join_string(data: &[u8]) {
    kiln_runtime::fuzzing::join_string(data);
}

/// Checkpoint commit records and store owner files.
pub fn checkpoint_record(data: &[u8]) {
    kiln_runtime::fuzzing::checkpoint_record(data);
}

/// A checkpoint blob file read against the length and checksum its own
/// header claims (and against a record that says otherwise).
pub fn blob_file(data: &[u8]) {
    use kiln_runtime::checkpoint::{read_blob, BlobRef};
    let store = scratch("store-marker", b"");
    let Some(dir) = store.parent() else {
        return;
    };
    let blob_dir = dir.join("blobs").join(format!("{:020}", 1));
    if std::fs::create_dir_all(&blob_dir).is_err() {
        return;
    }
    if std::fs::write(blob_dir.join("b"), data).is_err() {
        return;
    }
    let field = |at: usize, n: usize| data.get(at..at + n);
    let len = field(12, 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let crc32 = field(20, 4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
    for r in [
        BlobRef {
            name: "b".into(),
            len,
            crc32,
        },
        BlobRef {
            name: "b".into(),
            len: data.len() as u64,
            crc32: 0,
        },
    ] {
        let _ = read_blob(dir, 1, &r);
    }
}

/// WAV and FLAC files.
pub fn audio(data: &[u8]) {
    let path = scratch("audio", data);
    let _ = kiln_speech::audio::read_audio(&path);
    let _ = kiln_speech::audio::audio_length(&path);
}

/// LibriSpeech `*.trans.txt` transcripts.
pub fn trans_txt(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_speech::corpus::parse_transcript_text(Path::new("x.trans.txt"), text);
    }
}

/// ARPA language models.
pub fn arpa(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(lm) = kiln_speech::lm::NgramLm::parse_arpa(Path::new("lm.arpa"), text) {
            let _ = lm.sentence_log10("A B C");
        }
    }
}

/// VOC annotation XML.
pub fn voc_xml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let classes = ["circle".to_string(), "square".to_string()];
        let _ = kiln_detection::voc::parse_annotation_str(text, Path::new("a.xml"), &classes);
        let _ = kiln_detection::voc::parse_annotation_str(text, Path::new("a.xml"), &[]);
    }
}

/// Image files (JPEG, PNG) as training, evaluation and prediction decode
/// them.
pub fn image(data: &[u8]) {
    let _ = kiln_detection::image_file::decode_image(data);
}

/// Detection result files (`kiln detect score`).
pub fn detections(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_detection::eval::parse_detections(text, Path::new("dets.txt"));
    }
}

/// Model files: safetensors with the model's configuration in its
/// metadata, loaded as `kiln eval` and the apps load them.
pub fn safetensors(data: &[u8]) {
    let path = Path::new("model.safetensors");
    let _ = kiln_nn::serialize::metadata_of(data, path);
    let _ = kiln_nn::serialize::config_of(data, path);
    let file = scratch("model.safetensors", data);
    let _ = kiln_nn::serialize::load::<f32>(&file);
}

/// Deep Speech 2 model configurations (TOML).
pub fn ds2_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = kiln_speech::ds2::Ds2Config::from_toml_str(text) {
            let _ = config.validate();
        }
    }
}

/// SSD training configurations (JSON).
pub fn detection_config(data: &[u8]) {
    let file = scratch("detection.json", data);
    let _ = kiln_detection::train::TrainConfig::from_file(&file);
}

/// Job submissions: the first byte picks the kind, the rest are its
/// settings (JSON), checked as a driver checks them.
pub fn job_settings(data: &[u8]) {
    static KINDS: OnceLock<kiln::jobs::JobKinds> = OnceLock::new();
    let kinds = KINDS.get_or_init(kiln::jobs::JobKinds::builtin);
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(settings) = std::str::from_utf8(rest) else {
        return;
    };
    let mut names = kinds.names();
    names.push(kiln::training::RESUME_KIND.to_string());
    let kind = &names[usize::from(pick) % names.len()];
    let env = kiln::jobs::JobEnv {
        base: std::env::temp_dir().join("kiln-fuzz-jobs-base-that-does-not-exist"),
    };
    let _ = kinds.accept(kind, settings, &env);
}
