//! A dataset's unusable files, counted and named, and the share of them a
//! command accepts before it fails. Every reader of outside data (speech
//! corpora, VOC splits, image folders) fills one [`BadFiles`] before work
//! starts and holds it to the user's `max_bad_share` (0 by default: one
//! bad file fails the command).

use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::bounds::{check_number, OutOfRange};

/// Bad files named in full in a report or an error (the count is always
/// given).
pub const NAMED: usize = 20;

/// The files of a dataset that could not be used, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BadFiles {
    /// The dataset, as reports name it (e.g. `training split /data/train`).
    pub dataset: String,
    /// Entries the dataset lists, usable or not.
    pub total: usize,
    /// Each unusable file (or listing entry) and why.
    pub files: Vec<(PathBuf, String)>,
}

/// More of a dataset's files are unusable than the command accepts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{dataset}: {bad} of {total} files are unusable, more than {setting} = {max_share} allows \
     (at least {needed} would skip them): {named}"
)]
pub struct TooManyBadFiles {
    /// The dataset.
    pub dataset: String,
    /// How many files are unusable.
    pub bad: usize,
    /// How many it lists.
    pub total: usize,
    /// The setting that holds the share (`max_bad_share`, `--max-bad-share`).
    pub setting: String,
    /// Its value.
    pub max_share: f64,
    /// The smallest share that would accept these files.
    pub needed: f64,
    /// The first [`NAMED`] files with why, `; `-separated.
    pub named: String,
}

impl BadFiles {
    /// No bad file yet among `total` entries of `dataset`.
    pub fn new(dataset: impl Into<String>, total: usize) -> Self {
        BadFiles {
            dataset: dataset.into(),
            total,
            files: Vec::new(),
        }
    }

    /// Records `path` as unusable for `reason`.
    pub fn push(&mut self, path: &Path, reason: impl Display) {
        self.files.push((path.to_path_buf(), reason.to_string()));
    }

    /// Whether every file was usable.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The first [`NAMED`] bad files with why (the reason alone where it
    /// already names the file), `; `-separated, then `… and N more`.
    pub fn named(&self) -> String {
        let mut parts: Vec<String> = self
            .files
            .iter()
            .take(NAMED)
            .map(|(path, reason)| {
                let shown = path.display().to_string();
                if reason.contains(&shown) {
                    reason.clone()
                } else {
                    format!("{shown}: {reason}")
                }
            })
            .collect();
        if self.files.len() > NAMED {
            parts.push(format!("… and {} more", self.files.len() - NAMED));
        }
        parts.join("; ")
    }

    /// Holds the bad files to `max_share` of the total (`setting` names
    /// where the share was set): `None` when every file was usable, a
    /// `SKIPPING` line that counts and names them when they are within the
    /// share, an error that does the same when they are not.
    pub fn check(&self, max_share: f64, setting: &str) -> Result<Option<String>, TooManyBadFiles> {
        if self.files.is_empty() {
            return Ok(None);
        }
        let bad = self.files.len();
        let total = self.total.max(bad);
        if bad as f64 > max_share * total as f64 {
            // The smallest 4-decimal share that accepts `bad` of `total`.
            let needed = (bad as f64 / total as f64 * 1e4).ceil() / 1e4;
            return Err(TooManyBadFiles {
                dataset: self.dataset.clone(),
                bad,
                total,
                setting: setting.to_string(),
                max_share,
                needed,
                named: self.named(),
            });
        }
        Ok(Some(format!(
            "SKIPPING {bad} of {total} files of {} ({setting} = {max_share}): {}",
            self.dataset,
            self.named()
        )))
    }
}

/// Whether a dataset's entry id can name files inside its folders (ids
/// become `<id>.jpg`, `<id>.flac`): not empty, no path separator, not `.`
/// or `..`.
pub fn is_file_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\'])
}

/// Checks a `max_bad_share` setting: a finite share in `[0, 1]`.
pub fn check_share(setting: &str, value: f64) -> Result<f64, OutOfRange> {
    check_number(setting, value, 0.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bad(n: usize, total: usize) -> BadFiles {
        let mut b = BadFiles::new("split /d/train", total);
        for i in 0..n {
            b.push(Path::new(&format!("/d/{i}.flac")), "audio: truncated");
        }
        b
    }

    #[test]
    fn no_bad_file_says_nothing() {
        assert_eq!(with_bad(0, 10).check(0.0, "max_bad_share"), Ok(None));
    }

    #[test]
    fn a_share_of_zero_refuses_one_bad_file_and_names_it() {
        let e = with_bad(1, 300).check(0.0, "max_bad_share").unwrap_err();
        assert_eq!((e.bad, e.total), (1, 300));
        let text = e.to_string();
        assert!(
            text.contains("split /d/train: 1 of 300 files are unusable"),
            "{text}"
        );
        assert!(text.contains("max_bad_share = 0"), "{text}");
        assert!(text.contains("at least 0.0034"), "{text}");
        assert!(text.contains("/d/0.flac: audio: truncated"), "{text}");
    }

    #[test]
    fn within_the_share_the_files_are_counted_and_named() {
        let line = with_bad(3, 300)
            .check(0.01, "--max-bad-share")
            .unwrap()
            .unwrap();
        assert!(
            line.starts_with("SKIPPING 3 of 300 files of split /d/train"),
            "{line}"
        );
        assert!(line.contains("/d/2.flac"), "{line}");
        // The share is a bound: 3 of 300 is exactly 0.01.
        assert!(with_bad(4, 300).check(0.01, "s").is_err());
    }

    #[test]
    fn long_lists_are_cut_with_their_count() {
        let b = with_bad(25, 25);
        let named = b.named();
        assert!(named.ends_with("… and 5 more"), "{named}");
        assert!(named.contains("/d/19.flac") && !named.contains("/d/20.flac"));
        // A reason that names its file is not prefixed twice.
        let mut b = BadFiles::new("x", 1);
        b.push(Path::new("/a.jpg"), "/a.jpg: JPEG: truncated");
        assert_eq!(b.named(), "/a.jpg: JPEG: truncated");
    }

    #[test]
    fn ids_that_leave_their_folder_are_not_file_ids() {
        assert!(is_file_id("1272-128104-0000"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert!(!is_file_id(bad), "{bad}");
        }
    }

    #[test]
    fn shares_are_checked() {
        assert_eq!(check_share("s", 0.5), Ok(0.5));
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert!(check_share("s", bad).is_err());
        }
    }
}
