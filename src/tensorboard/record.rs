//! TFRecord framing, written by hand as no maintained crate offers it
//! alone (`tfrecord` pulls in TensorFlow's whole schema): each record is
//! its length (u64, little-endian), the masked CRC-32C of those 8 bytes,
//! the data, and the masked CRC-32C of the data (u32s, little-endian).

use std::path::Path;

use super::TensorBoardError;

/// TFRecord's CRC mask: a rotation and an offset, so that a CRC of data
/// holding CRCs stays well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of `bytes` (read from `path`, named in errors), each with
/// the offset where it starts; any broken frame is an error naming it.
pub fn records<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, TensorBoardError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let broken = |offset: usize, reason: String| TensorBoardError::Record {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or_else(|| {
            broken(
                at,
                format!("{} bytes left, a header needs 12", bytes.len() - at),
            )
        })?;
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc(len_bytes).to_le_bytes() != len_crc {
            return Err(broken(at, "the length's checksum does not match".into()));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(len_bytes);
        let len = u64::from_le_bytes(len8);
        let start = at + 12;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e + 4 <= bytes.len())
            .ok_or_else(|| {
                broken(
                    at,
                    format!("{len} bytes of data announced, the file ends first"),
                )
            })?;
        let data = &bytes[start..end];
        if masked_crc(data).to_le_bytes() != bytes[end..end + 4] {
            return Err(broken(at, "the data's checksum does not match".into()));
        }
        out.push((at as u64, data));
        at = end + 4;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_reference_values() {
        // CRC-32C check value (RFC 3720) and TensorFlow's masking of it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn frames_read_back_and_damage_is_named() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"third record"));
        let path = Path::new("events");
        let got: Vec<&[u8]> = records(path, &bytes)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got, [&b"first"[..], b"", b"third record"]);
        let mut flipped = bytes.clone();
        flipped[14] ^= 1;
        let e = records(path, &flipped).unwrap_err().to_string();
        assert!(e.contains("byte 0") && e.contains("data's checksum"), "{e}");
        let e = records(path, &bytes[..bytes.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the file ends first"), "{e}");
        let mut long = frame(b"x");
        long[0] = 0xff;
        let e = records(path, &long).unwrap_err().to_string();
        assert!(e.contains("length's checksum"), "{e}");
    }
}
