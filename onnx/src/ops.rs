//! The operator converters, one family per file, and the table that
//! dispatches a node to its converter.

mod activation;
mod arith;
mod conv;
mod linear;
mod norm;
mod pool;
pub(crate) mod recurrent;
mod shape;

use crate::error::{Error, Result};
use crate::import::{Importer, NodeCtx};

/// The ONNX operators Kiln imports.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Expand",
    "Flatten",
    "GRU",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LSTM",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "RNN",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Converts one node, adding to the importer's graph and values.
pub(crate) fn convert(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    match n.proto.op_type.as_str() {
        "Conv" => conv::conv(imp, n),
        "Gemm" => linear::gemm(imp, n),
        "MatMul" => linear::matmul(imp, n),
        "Add" | "Sub" | "Mul" | "Div" => arith::binary(imp, n),
        "Relu" | "Tanh" | "Sigmoid" | "LeakyRelu" | "Softmax" | "LogSoftmax" | "Clip" => {
            activation::activation(imp, n)
        }
        "MaxPool" | "AveragePool" => pool::pool(imp, n),
        "GlobalAveragePool" | "GlobalMaxPool" => pool::global_pool(imp, n),
        "BatchNormalization" => norm::batch_norm(imp, n),
        "Dropout" => norm::dropout(imp, n),
        "Flatten" => shape::flatten(imp, n),
        "Reshape" => shape::reshape(imp, n),
        "Transpose" => shape::transpose(imp, n),
        "Squeeze" | "Unsqueeze" => shape::squeeze(imp, n),
        "Concat" => shape::concat(imp, n),
        "Identity" => shape::identity(imp, n),
        "Constant" => shape::constant(imp, n),
        "Shape" => shape::shape_of(imp, n),
        "Gather" => shape::gather(imp, n),
        "Cast" => shape::cast(imp, n),
        "Expand" => shape::expand(imp, n),
        "GRU" | "LSTM" | "RNN" => recurrent::recurrent(imp, n),
        "ReduceSum" => recurrent::reduce_sum(imp, n),
        other => Err(Error::UnsupportedOp {
            node: n.label.clone(),
            op: other.to_string(),
            domain: n.proto.domain.clone(),
            supported: SUPPORTED.join(", "),
        }),
    }
}

/// `axis` (negative counts from the end) as an index into `rank` dimensions.
pub(crate) fn resolve_axis(n: &NodeCtx, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(n.invalid(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

/// Converts ONNX integer attribute values to sizes, refusing negatives.
pub(crate) fn sizes(n: &NodeCtx, what: &str, v: &[i64]) -> Result<Vec<usize>> {
    v.iter()
        .map(|&x| {
            usize::try_from(x).map_err(|_| n.invalid(format!("{what} has a negative entry {x}")))
        })
        .collect()
}

/// Symmetric padding from ONNX `pads` (`[begin..., end...]`), or an error
/// naming the asymmetric pair.
pub(crate) fn symmetric_pads(n: &NodeCtx, pads: &[usize], spatial: usize) -> Result<Vec<usize>> {
    if pads.len() != 2 * spatial {
        return Err(n.invalid(format!(
            "pads has {} entries for {spatial} spatial dimensions",
            pads.len()
        )));
    }
    let (begin, end) = pads.split_at(spatial);
    if begin != end {
        return Err(n.unsupported(
            format!("attribute pads = {pads:?}"),
            "Kiln pads both sides of a dimension equally (begin and end must match)",
        ));
    }
    Ok(begin.to_vec())
}

/// Reads `auto_pad`, accepting the values that need no run-time padding.
pub(crate) fn check_auto_pad(n: &mut NodeCtx) -> Result<()> {
    match n.attrs.string("auto_pad")?.as_deref() {
        None | Some("NOTSET") | Some("VALID") => Ok(()),
        Some(other) => Err(n.unsupported(
            format!("attribute auto_pad = {other}"),
            "only NOTSET (explicit pads) and VALID are supported; export with explicit padding",
        )),
    }
}
