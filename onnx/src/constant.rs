//! Values known at import time: initializers, `Constant` nodes and what
//! Kiln folds from them (shapes, axes, weights), read from `TensorProto`s.

use kiln_nn::Tensor;
use onnx_protobuf::TensorProto;

use crate::error::{Error, Result};

/// ONNX `TensorProto.DataType` codes Kiln reads.
mod dtype {
    pub(super) const FLOAT: i32 = 1;
    pub(super) const UINT8: i32 = 2;
    pub(super) const INT8: i32 = 3;
    pub(super) const INT32: i32 = 6;
    pub(super) const INT64: i32 = 7;
    pub(super) const BOOL: i32 = 9;
    pub(super) const DOUBLE: i32 = 11;
}

/// The elements of a constant: floating point (weights) or integer
/// (shapes, axes, flags).
#[derive(Debug, Clone, PartialEq)]
pub enum ConstData {
    /// `float` and `double` tensors, as f32.
    Float(Vec<f32>),
    /// Integer and boolean tensors, as i64.
    Int(Vec<i64>),
}

/// A tensor whose value is known at import time.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// Its shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Its elements in row-major order.
    pub data: ConstData,
}

impl Constant {
    /// A 1-D integer constant.
    pub fn ints(values: Vec<i64>) -> Self {
        Constant {
            shape: vec![values.len()],
            data: ConstData::Int(values),
        }
    }

    /// A float constant of `shape`.
    pub fn floats(shape: Vec<usize>, values: Vec<f32>) -> Self {
        Constant {
            shape,
            data: ConstData::Float(values),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::Float(v) => v.len(),
            ConstData::Int(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as integers (floats must be whole numbers).
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            ConstData::Int(v) => Some(v.clone()),
            ConstData::Float(v) => v
                .iter()
                .map(|&x| (x.fract() == 0.0 && x.is_finite()).then_some(x as i64))
                .collect(),
        }
    }

    /// The elements as f32.
    pub fn as_floats(&self) -> Vec<f32> {
        match &self.data {
            ConstData::Float(v) => v.clone(),
            ConstData::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The value as a Kiln tensor of its own shape.
    pub fn to_tensor(&self, name: &str) -> Result<Tensor<f32>> {
        kiln_nn::tensor::from_vec(&self.shape, self.as_floats()).map_err(|e| Error::Tensor {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads an initializer or a `Constant` node's tensor.
    pub fn from_proto(t: &TensorProto) -> Result<Self> {
        let err = |reason: String| Error::Tensor {
            name: t.name.clone(),
            reason,
        };
        if !t.external_data.is_empty() || t.data_location.value() != 0 {
            return Err(err(
                "its data is stored outside the .onnx file (external data), which Kiln does not read; \
                 save the model with onnx.save(model, path, save_as_external_data=False)"
                    .into(),
            ));
        }
        if t.segment.is_some() {
            return Err(err("segmented tensors are not supported".into()));
        }
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dimension {d}"))))
            .collect::<Result<Vec<usize>>>()?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| err(format!("shape {shape:?} has too many elements")))?;
        let raw = &t.raw_data;
        let check = |n: usize| -> Result<()> {
            if n == count {
                Ok(())
            } else {
                Err(err(format!(
                    "shape {shape:?} needs {count} elements but the tensor holds {n}"
                )))
            }
        };
        let data = match t.data_type {
            dtype::FLOAT => {
                let v: Vec<f32> = if raw.is_empty() {
                    t.float_data.clone()
                } else {
                    if !raw.len().is_multiple_of(4) {
                        return Err(err(format!("raw_data of {} bytes is not whole f32s", raw.len())));
                    }
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                };
                check(v.len())?;
                ConstData::Float(v)
            }
            dtype::DOUBLE => {
                let v: Vec<f32> = if raw.is_empty() {
                    t.double_data.iter().map(|&x| x as f32).collect()
                } else {
                    if !raw.len().is_multiple_of(8) {
                        return Err(err(format!("raw_data of {} bytes is not whole f64s", raw.len())));
                    }
                    raw.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect()
                };
                check(v.len())?;
                ConstData::Float(v)
            }
            dtype::INT64 => {
                let v: Vec<i64> = if raw.is_empty() {
                    t.int64_data.clone()
                } else {
                    if !raw.len().is_multiple_of(8) {
                        return Err(err(format!("raw_data of {} bytes is not whole i64s", raw.len())));
                    }
                    raw.chunks_exact(8)
                        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                        .collect()
                };
                check(v.len())?;
                ConstData::Int(v)
            }
            dtype::INT32 | dtype::INT8 | dtype::UINT8 | dtype::BOOL => {
                let v: Vec<i64> = if raw.is_empty() {
                    t.int32_data.iter().map(|&x| x as i64).collect()
                } else if t.data_type == dtype::INT32 {
                    if !raw.len().is_multiple_of(4) {
                        return Err(err(format!("raw_data of {} bytes is not whole i32s", raw.len())));
                    }
                    raw.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                } else if t.data_type == dtype::INT8 {
                    raw.iter().map(|&b| b as i8 as i64).collect()
                } else {
                    raw.iter().map(|&b| b as i64).collect()
                };
                check(v.len())?;
                ConstData::Int(v)
            }
            other => {
                return Err(err(format!(
                    "data type {other} ({}) is not supported; Kiln reads float, double and integer tensors",
                    dtype_name(other)
                )))
            }
        };
        Ok(Constant { shape, data })
    }
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
pub(crate) fn transpose2(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// NumPy broadcasting of two shapes; `None` when they do not broadcast.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], k: usize| (k + s.len()).checked_sub(rank).map_or(1, |i| s[i]);
    (0..rank)
        .map(|k| {
            let (p, q) = (at(a, k), at(b, k));
            (p == q || p == 1 || q == 1).then_some(p.max(q))
        })
        .collect()
}

/// The element of a tensor of shape `from` (broadcast, right-aligned) that
/// element `flat` of a tensor of shape `to` reads.
pub(crate) fn broadcast_source(flat: usize, to: &[usize], from: &[usize]) -> usize {
    let (mut rem, mut idx, mut stride) = (flat, 0, 1);
    for k in (0..to.len()).rev() {
        let coord = rem % to[k];
        rem /= to[k];
        let Some(j) = (k + from.len()).checked_sub(to.len()) else {
            continue;
        };
        if from[j] != 1 {
            idx += coord * stride;
        }
        stride *= from[j];
    }
    idx
}

/// ONNX's name for a data type code.
pub fn dtype_name(code: i32) -> &'static str {
    match code {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = "w".into();
        t.dims = dims.to_vec();
        t.data_type = data_type;
        t.raw_data = raw;
        t
    }

    #[test]
    fn raw_float_and_int_tensors_are_read() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let c = Constant::from_proto(&proto(&[2], dtype::FLOAT, raw)).unwrap();
        assert_eq!(c.as_floats(), [1.5, -2.0]);
        let raw: Vec<u8> = [3i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = Constant::from_proto(&proto(&[1, 2], dtype::INT64, raw)).unwrap();
        assert_eq!(c.as_ints().unwrap(), [3, -1]);
        assert_eq!(c.shape, [1, 2]);
    }

    #[test]
    fn a_wrong_element_count_or_type_names_the_tensor() {
        let e = Constant::from_proto(&proto(&[3], dtype::FLOAT, vec![0; 8]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"w\"") && e.contains("needs 3 elements"), "{e}");
        let e = Constant::from_proto(&proto(&[1], 10, vec![0; 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("float16"), "{e}");
        let e = Constant::from_proto(&proto(&[-1], dtype::FLOAT, vec![]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
    }
}
