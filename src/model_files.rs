//! What a model file holds, read from its metadata before it is built, so
//! a command given another application's model says so ("a Deep Speech 2
//! model: `kiln speech eval` reads it") instead of naming a missing
//! tensor.

use std::fmt;
use std::path::{Path, PathBuf};

use kiln_detection::model::SSD_CONFIG_KEY;
use kiln_speech::ds2::DS2_CONFIG_KEY;

/// The applications whose models Kiln saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A digits classifier (`kiln train`, the `digits` job).
    Digits,
    /// Deep Speech 2 (`kiln speech train`).
    Ds2,
    /// SSD (`kiln detect train`).
    Ssd,
}

impl ModelKind {
    /// The kind recorded in `path`'s metadata; `None` when it is not a
    /// safetensors file or holds none of Kiln's model keys (the loader
    /// then says what is wrong).
    pub fn of_file(path: &Path) -> Option<ModelKind> {
        let bytes = std::fs::read(path).ok()?;
        let meta = kiln_nn::serialize::metadata_of(&bytes, path).ok()?;
        Self::of_metadata(&meta)
    }

    /// The kind a model file's metadata records, if any.
    pub fn of_metadata(meta: &std::collections::HashMap<String, String>) -> Option<ModelKind> {
        if meta.contains_key(DS2_CONFIG_KEY) {
            Some(ModelKind::Ds2)
        } else if meta.contains_key(SSD_CONFIG_KEY) {
            Some(ModelKind::Ssd)
        } else if meta.contains_key(kiln_nn::serialize::CONFIG_KEY) {
            Some(ModelKind::Digits)
        } else {
            None
        }
    }

    /// The commands that read models of this kind.
    fn readers(self) -> &'static str {
        match self {
            ModelKind::Digits => "`kiln eval`",
            ModelKind::Ds2 => "`kiln speech eval` and `kiln speech transcribe`",
            ModelKind::Ssd => "`kiln detect eval` and `kiln detect predict`",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Digits => "a digits classifier",
            ModelKind::Ds2 => "a Deep Speech 2 model",
            ModelKind::Ssd => "an SSD detection model",
        })
    }
}

/// A model file of another kind than the command reads.
#[derive(Debug, thiserror::Error)]
#[error("{}: this is {found}, which {} read; this command reads {wanted}", path.display(), found.readers())]
pub struct WrongModelKind {
    /// The file.
    pub path: PathBuf,
    /// What it holds.
    pub found: ModelKind,
    /// What the command reads.
    pub wanted: ModelKind,
}

/// Refuses `path` when its metadata says it is a model of another kind
/// than `wanted`; files of no known kind are left to the loader.
pub fn expect_kind(path: &Path, wanted: ModelKind) -> Result<(), WrongModelKind> {
    match ModelKind::of_file(path) {
        Some(found) if found != wanted => Err(WrongModelKind {
            path: path.to_path_buf(),
            found,
            wanted,
        }),
        _ => Ok(()),
    }
}
