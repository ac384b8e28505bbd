//! The UCI optical-recognition handwritten digits (the 1,797-image test set
//! that scikit-learn ships): 8x8 images of pixel counts 0..=16, ten classes.
//! File format: gzip-compressed CSV, 64 pixel columns then the label.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::data::LabeledData;
use crate::error::{Error, Result};
use crate::tensor::from_vec;

/// Pixels per image side.
pub const SIDE: usize = 8;
/// Number of classes.
pub const CLASSES: usize = 10;

/// Loads `digits.csv.gz` (or an uncompressed `.csv`) as `[N, 1, 8, 8]`
/// images scaled to `[0, 1]`. A malformed line is an error naming the file
/// and line.
pub fn load(path: &Path) -> Result<LabeledData<f32>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    parse(BufReader::new(reader), path)
}

/// Parses digits CSV text (`path` is used in errors).
pub fn parse(reader: impl BufRead, path: &Path) -> Result<LabeledData<f32>> {
    let bad = |line: usize, reason: String| Error::Format {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != SIDE * SIDE + 1 {
            return Err(bad(
                i + 1,
                format!("{} fields, expected {}", fields.len(), SIDE * SIDE + 1),
            ));
        }
        for f in &fields[..SIDE * SIDE] {
            let v: f32 = f
                .parse()
                .map_err(|_| bad(i + 1, format!("pixel {f:?} is not a number")))?;
            if !(0.0..=16.0).contains(&v) {
                return Err(bad(i + 1, format!("pixel {v} outside 0..=16")));
            }
            pixels.push(v / 16.0);
        }
        let label: usize = fields[SIDE * SIDE].parse().map_err(|_| {
            bad(
                i + 1,
                format!("label {:?} is not an integer", fields[SIDE * SIDE]),
            )
        })?;
        if label >= CLASSES {
            return Err(bad(i + 1, format!("label {label} outside 0..{CLASSES}")));
        }
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: "no samples".into(),
        });
    }
    let features = from_vec(&[labels.len(), 1, SIDE, SIDE], pixels)?;
    LabeledData::new(features, labels, CLASSES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str) -> String {
        let mut v = vec!["3"; 64];
        v.push(label);
        v.join(",")
    }

    #[test]
    fn parses_and_scales() {
        let text = format!("{}\n{}\n", row("1"), row("9"));
        let d = parse(text.as_bytes(), Path::new("x.csv")).unwrap();
        assert_eq!(d.features.shape(), &[2, 1, 8, 8]);
        assert_eq!(d.labels, vec![1, 9]);
        assert!((d.features[[0, 0, 0, 0]] - 3.0 / 16.0).abs() < 1e-7);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let text = format!("{}\n1,2,3\n", row("1"));
        let err = parse(text.as_bytes(), Path::new("d.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.csv") && err.contains("line 2"), "{err}");
        let err = parse(row("12").as_bytes(), Path::new("d.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 12"), "{err}");
        let bad_pixel = row("1").replacen('3', "x", 1);
        assert!(parse(bad_pixel.as_bytes(), Path::new("d.csv")).is_err());
    }

    #[test]
    fn the_shipped_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits/digits.csv.gz");
        let d = load(&path).unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.num_classes, 10);
    }
}
