//! Writes one event file: the version event, then scalar summaries,
//! buffered and flushed on [`EventWriter::flush`] (a training job flushes
//! at every epoch's end, so TensorBoard sees each epoch as it ends).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::proto::{Event, Summary, SummaryValue, Value, What, FILE_VERSION};
use super::record::frame;
use super::TensorBoardError;

/// An open event file.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    clock: fn() -> f64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `run_dir` (and its parents) and a new event file in it,
    /// named as TensorBoard's writers name theirs
    /// (`events.out.tfevents.<seconds>.<host>.<pid>`).
    pub fn create(run_dir: &Path) -> Result<Self, TensorBoardError> {
        Self::create_with_clock(run_dir, now)
    }

    /// [`EventWriter::create`] with the wall time taken from `clock`
    /// (fixed in fixtures).
    pub fn create_with_clock(run_dir: &Path, clock: fn() -> f64) -> Result<Self, TensorBoardError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TensorBoardError::Io { path, source }
        };
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let path = run_dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            clock() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(io(&path))?;
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
            clock,
        };
        writer.write(Event {
            wall_time: clock(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        writer.flush()?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds scalars `(tag, value)` at global step `step`, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TensorBoardError> {
        if values.is_empty() {
            return Ok(());
        }
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: (*tag).to_string(),
                value: Some(Value::SimpleValue(*v as f32)),
            })
            .collect();
        self.write(Event {
            wall_time: (self.clock)(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        let path = self.path.clone();
        self.out
            .flush()
            .map_err(|source| TensorBoardError::Io { path, source })
    }

    fn write(&mut self, event: Event) -> Result<(), TensorBoardError> {
        let bytes = frame(&event.encode_to_vec());
        let path = self.path.clone();
        self.out
            .write_all(&bytes)
            .map_err(|source| TensorBoardError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_scalars;
    use super::*;

    #[test]
    fn scalars_read_back_with_their_steps_and_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create_with_clock(dir.path(), || 1_700_000_000.5).unwrap();
        w.scalars(1, &[("train/loss", 2.5), ("train/learning_rate", 0.01)])
            .unwrap();
        w.scalars(2, &[("train/loss", 1.25)]).unwrap();
        w.scalars(3, &[]).unwrap();
        w.flush().unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("events.out.tfevents.1700000000."),
            "{name}"
        );
        let (version, scalars) = read_scalars(w.path()).unwrap();
        assert_eq!(version.as_deref(), Some(FILE_VERSION));
        let got: Vec<(&str, i64, f32)> = scalars
            .iter()
            .map(|s| (s.tag.as_str(), s.step, s.value))
            .collect();
        assert_eq!(
            got,
            [
                ("train/loss", 1, 2.5),
                ("train/learning_rate", 1, 0.01),
                ("train/loss", 2, 1.25)
            ]
        );
        assert!(scalars.iter().all(|s| s.wall_time == 1_700_000_000.5));
    }
}
