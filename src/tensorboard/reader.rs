//! Reads the scalars of an event file back, checking every record's
//! framing: what the tests compare against TensorBoard's own reader.

use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{Event, Value, What};
use super::record::records;
use super::TensorBoardError;

/// One scalar of an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// Its series.
    pub tag: String,
    /// Its global step.
    pub step: i64,
    /// When it was written (seconds since the Unix epoch).
    pub wall_time: f64,
    /// The value.
    pub value: f32,
}

/// The file version and every scalar of the event file at `path`, in
/// file order.
pub fn read_scalars(path: &Path) -> Result<(Option<String>, Vec<Scalar>), TensorBoardError> {
    let bytes = std::fs::read(path).map_err(|source| TensorBoardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut version = None;
    let mut out = Vec::new();
    for (offset, data) in records(path, &bytes)? {
        let event = Event::decode(data).map_err(|source| TensorBoardError::Event {
            path: PathBuf::from(path),
            offset,
            source,
        })?;
        match event.what {
            Some(What::FileVersion(v)) => version = Some(v),
            Some(What::Summary(s)) => {
                for v in s.value {
                    if let Some(Value::SimpleValue(value)) = v.value {
                        out.push(Scalar {
                            tag: v.tag,
                            step: event.step,
                            wall_time: event.wall_time,
                            value,
                        });
                    }
                }
            }
            None => {}
        }
    }
    Ok((version, out))
}
