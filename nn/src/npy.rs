//! NumPy `.npy` files in and out (format versions 1-3): little- or
//! big-endian `float32` and `float64` arrays of any rank, C or Fortran
//! order, read as f32 tensors; written as little-endian `float32` in C
//! order, which `numpy.load` reads.

use std::path::Path;

use ndarray::IxDyn;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads an `.npy` file as an f32 tensor.
pub fn read(path: &Path) -> Result<Tensor<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// Writes `t` to `path` as a little-endian float32 `.npy` file.
pub fn write(path: &Path, t: &Tensor<f32>) -> Result<()> {
    std::fs::write(path, to_bytes(t)).map_err(|e| Error::io(path, e))
}

/// The `.npy` bytes of `t` (format 1.0, `<f4`, C order).
pub fn to_bytes(t: &Tensor<f32>) -> Vec<u8> {
    let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic, version, length and header are padded to a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 4 * t.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in t.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Parses `.npy` bytes (`path` names them in errors).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Tensor<f32>> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a NumPy .npy file (bad magic)"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(path, format!("unsupported .npy format version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            bad(
                path,
                format!("header of {header_len} bytes runs past the end of the file"),
            )
        })?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| bad(path, "header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad(path, "header has no 'fortran_order'"))?;
    let shape_text =
        dict_value(header, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (width, little) = match descr {
        "<f4" | "=f4" => (4, true),
        ">f4" => (4, false),
        "<f8" | "=f8" => (8, true),
        ">f8" => (8, false),
        other => {
            return Err(bad(
                path,
                format!("element type {other:?} is not supported; save float32 or float64 arrays"),
            ))
        }
    };
    let fortran = match fortran {
        "False" => false,
        "True" => true,
        other => {
            return Err(bad(
                path,
                format!("fortran_order {other:?} is not True or False"),
            ))
        }
    };
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(path, format!("shape {shape_text:?} is not a tuple")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("shape entry {s:?} is not a size")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {shape:?} is too large")))?;
    let data = &bytes[end..];
    if Some(data.len()) != count.checked_mul(width) {
        return Err(bad(
            path,
            format!("shape {shape:?} needs {count} values of {width} bytes, the file holds {} bytes of data", data.len()),
        ));
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if little {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                }
            })
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                (if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }) as f32
            })
            .collect()
    };
    if fortran {
        // Column-major: the reversed shape in row-major order, transposed.
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let t = Tensor::from_shape_vec(IxDyn(&reversed), values)
            .map_err(|e| bad(path, e.to_string()))?;
        Ok(t.reversed_axes().as_standard_layout().into_owned())
    } else {
        Tensor::from_shape_vec(IxDyn(&shape), values).map_err(|e| bad(path, e.to_string()))
    }
}

/// The text of `key`'s value in a NumPy header dictionary.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_every_rank() {
        for shape in [vec![], vec![3], vec![2, 3], vec![2, 1, 3, 2]] {
            let n: usize = shape.iter().product();
            let t = Tensor::from_shape_vec(
                IxDyn(&shape),
                (0..n).map(|i| i as f32 * 0.5 - 1.0).collect(),
            )
            .unwrap();
            let bytes = to_bytes(&t);
            assert_eq!((bytes.len() - 4 * n) % 64, 0);
            assert_eq!(from_bytes(&bytes, Path::new("t.npy")).unwrap(), t);
        }
    }

    #[test]
    fn fortran_order_and_big_endian_float64_are_read() {
        // numpy.asfortranarray([[1, 2, 3], [4, 5, 6]], dtype='>f8')
        let header = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let t = from_bytes(&bytes, Path::new("f.npy")).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(
            t.iter().copied().collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    /// `bytes` with the first `from` replaced by `to` (same length).
    fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let p = Path::new("x.npy");
        let good = to_bytes(&Tensor::zeros(IxDyn(&[2, 2])));
        for (bytes, want) in [
            (b"hello world".to_vec(), "bad magic"),
            (good[..good.len() - 3].to_vec(), "holds 13 bytes"),
            (good[..20].to_vec(), "runs past the end"),
            (replaced(&good, b"<f4", b"<i8"), "\"<i8\""),
        ] {
            let e = from_bytes(&bytes, p).unwrap_err().to_string();
            assert!(e.starts_with("x.npy") && e.contains(want), "{want}: {e}");
        }
    }
}
