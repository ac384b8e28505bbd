//! Output paths are checked before any work starts: a model file, a
//! checkpoint store or a predictions folder that cannot be written is an
//! error at once, not after a long run has finished.

use std::path::{Path, PathBuf};

/// An output path that cannot be written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {reason}", path.display())]
pub struct UnwritableOutput {
    /// The flag or setting naming it (e.g. `--out`).
    pub setting: String,
    /// The path.
    pub path: PathBuf,
    /// Why it cannot be written.
    pub reason: String,
}

fn unwritable(setting: &str, path: &Path, reason: impl Into<String>) -> UnwritableOutput {
    UnwritableOutput {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks that a file can be written at `path` (named by `setting`): not a
/// directory, in an existing directory where files can be created, and
/// writable if it exists. Leaves nothing behind.
pub fn check_output_file(setting: &str, path: &Path) -> Result<(), UnwritableOutput> {
    if path.as_os_str().is_empty() {
        return Err(unwritable(setting, path, "the path is empty"));
    }
    if path.is_dir() {
        return Err(unwritable(
            setting,
            path,
            "is a directory; name the file to write",
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(unwritable(
            setting,
            path,
            format!(
                "its directory {} does not exist (or is not a directory)",
                parent.display()
            ),
        ));
    }
    probe_dir(&parent).map_err(|reason| unwritable(setting, path, reason))?;
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| unwritable(setting, path, format!("exists and cannot be written: {e}")))?;
    }
    Ok(())
}

/// Checks that a directory can be written at `path` (named by
/// `setting`): an existing directory where files can be created, or a
/// missing one whose nearest existing ancestor is such a directory (it is
/// created later). Leaves nothing behind.
pub fn check_output_dir(setting: &str, path: &Path) -> Result<(), UnwritableOutput> {
    if path.as_os_str().is_empty() {
        return Err(unwritable(setting, path, "the path is empty"));
    }
    let mut existing = path.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p.to_path_buf(),
            _ => {
                existing = PathBuf::from(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(unwritable(
            setting,
            path,
            format!("{} is not a directory", existing.display()),
        ));
    }
    probe_dir(&existing).map_err(|reason| unwritable(setting, path, reason))
}

/// Creates and removes a temporary file in `dir`.
fn probe_dir(dir: &Path) -> Result<(), String> {
    tempfile::Builder::new()
        .prefix(".kiln-write-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| format!("cannot create files in {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_that_cannot_be_written_are_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        check_output_file("--out", &d.join("model.safetensors")).unwrap();
        check_output_dir("--checkpoint-dir", &d.join("a/b/c")).unwrap();
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "nothing left");
        let err = check_output_file("--out", &d.join("missing/model.safetensors")).unwrap_err();
        assert!(
            err.to_string().starts_with("--out ") && err.reason.contains("does not exist"),
            "{err}"
        );
        let err = check_output_file("--out", d).unwrap_err();
        assert!(err.reason.contains("is a directory"), "{err}");
        std::fs::write(d.join("file"), "x").unwrap();
        let err = check_output_dir("--dir", &d.join("file/sub")).unwrap_err();
        assert!(err.reason.contains("not a directory"), "{err}");
        assert!(check_output_file("--out", &d.join("file/model")).is_err());
        // A file system where nothing can be created (even by root).
        let err =
            check_output_file("--out", Path::new("/proc/kiln-model.safetensors")).unwrap_err();
        assert!(err.reason.contains("cannot create files in /proc"), "{err}");
        assert!(check_output_dir("--dir", Path::new("/proc/kiln-store")).is_err());
        assert!(check_output_file("--out", Path::new("")).is_err());
    }
}
