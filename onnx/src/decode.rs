//! Reading an `.onnx` file into the schema's `ModelProto`, with the byte
//! offset where a truncated or corrupt file stops decoding.

use std::path::Path;

use onnx_protobuf::{Message, ModelProto};
use protobuf::CodedInputStream;

use crate::error::{Error, Result};

/// Nesting depth allowed for messages (graphs inside attributes inside
/// nodes...): deep enough for any real model, shallow enough that a
/// crafted file cannot exhaust the stack.
const RECURSION_LIMIT: u32 = 64;

/// Reads and decodes `path`.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_model(&bytes, path)
}

/// Decodes `bytes` (`path` names them in errors).
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let mut model = ModelProto::new();
    let mut input = CodedInputStream::from_bytes(bytes);
    input.set_recursion_limit(RECURSION_LIMIT);
    let decoded = model
        .merge_from(&mut input)
        .and_then(|()| input.check_eof());
    match decoded {
        Ok(()) => Ok(model),
        Err(e) => Err(Error::Decode {
            path: path.to_path_buf(),
            offset: input.pos(),
            len: bytes.len(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_with_an_offset_not_a_panic() {
        // Field 7 (graph), length-delimited, claiming 100 bytes with 2 present.
        let e = decode_model(&[0x3a, 100, 1, 2], Path::new("m.onnx")).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("m.onnx: not a valid ONNX model"), "{text}");
        assert!(text.contains("of 4"), "{text}");
        // An end-group tag, an invalid wire type.
        assert!(decode_model(&[0x0f], Path::new("x")).is_err());
        assert!(decode_model(&[0xff, 0xff, 0xff], Path::new("x")).is_err());
    }
}
