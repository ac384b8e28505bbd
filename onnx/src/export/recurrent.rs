//! `Recurrent` and `BiRecurrent` to ONNX `RNN`/`GRU`/`LSTM` (gates
//! reordered from PyTorch's to ONNX's), with the `Squeeze` or
//! `Transpose`+`Reshape` that turn ONNX's `[T, D, N, H]` into Kiln's
//! `[T, N, D*H]`.

use kiln_nn::layers::{CellKind, LayerConfig, MergeMode, RecurrentConfig};
use kiln_nn::module::qualified;

use super::{attr_int, attr_ints, attr_string, attr_strings, Exporter, Out};
use crate::error::{Error, Result};
use crate::ops::recurrent::gate_order;

/// `rows` of gate blocks (each `hidden * cols`) in ONNX's gate order.
fn onnx_order(kiln: &[f32], cell: CellKind, hidden: usize, cols: usize) -> Vec<f32> {
    let order = gate_order(cell);
    let block = hidden * cols;
    let mut out = vec![0.0; kiln.len()];
    // Kiln's gate k is ONNX's gate order[k].
    for (k, &g) in order.iter().enumerate() {
        out[g * block..(g + 1) * block].copy_from_slice(&kiln[k * block..(k + 1) * block]);
    }
    out
}

pub(super) fn recurrent(
    ex: &mut Exporter,
    config: &LayerConfig,
    prefix: &str,
    x: Out,
) -> Result<Out> {
    let (c, directions, merge): (&RecurrentConfig, usize, MergeMode) = match config {
        LayerConfig::Recurrent(c) => (c, 1, MergeMode::Concat),
        LayerConfig::BiRecurrent(b) => (&b.layer, 2, b.merge),
        _ => {
            return Err(Error::Export {
                layer: prefix.into(),
                reason: "not a recurrent layer".into(),
            })
        }
    };
    if x.rank != 3 {
        return Err(Error::Export {
            layer: prefix.into(),
            reason: format!("recurrent input of rank {}, not [T, N, F]", x.rank),
        });
    }
    let (h, i, g) = (c.hidden_size, c.input_size, c.cell.gates());
    let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for d in 0..directions {
        let suffix = if d == 0 { "" } else { "_reverse" };
        let get = |ex: &Exporter, name: &str| -> Result<Vec<f32>> {
            Ok(ex
                .tensor(prefix, &format!("{name}{suffix}"))?
                .iter()
                .copied()
                .collect())
        };
        w.extend(onnx_order(&get(ex, "weight_ih_l0")?, c.cell, h, i));
        r.extend(onnx_order(&get(ex, "weight_hh_l0")?, c.cell, h, h));
        if c.bias {
            b.extend(onnx_order(&get(ex, "bias_ih_l0")?, c.cell, h, 1));
            b.extend(onnx_order(&get(ex, "bias_hh_l0")?, c.cell, h, 1));
        }
    }
    let mut inputs = vec![
        x.name.clone(),
        ex.init(&qualified(prefix, "W"), &[directions, g * h, i], w),
        ex.init(&qualified(prefix, "R"), &[directions, g * h, h], r),
    ];
    if c.bias {
        inputs.push(ex.init(&qualified(prefix, "B"), &[directions, 2 * g * h], b));
    }
    let mut attrs = vec![
        attr_int("hidden_size", h as i64),
        attr_string(
            "direction",
            if directions == 2 {
                "bidirectional"
            } else {
                "forward"
            },
        ),
    ];
    let (op, outputs) = match c.cell {
        CellKind::Gru => {
            attrs.push(attr_int("linear_before_reset", 1));
            ("GRU", 2)
        }
        CellKind::Lstm => ("LSTM", 3),
        CellKind::RnnTanh => ("RNN", 2),
        CellKind::RnnRelu => {
            attrs.push(attr_strings("activations", &vec!["Relu"; directions]));
            ("RNN", 2)
        }
    };
    let y = ex.op_outputs(op, &inputs, outputs, attrs, prefix, 4);
    if directions == 1 {
        let axes = ex.init_ints("axes", &[1]);
        return Ok(ex.op("Squeeze", &[y.name, axes], Vec::new(), prefix, 3));
    }
    match merge {
        MergeMode::Concat => {
            let t = ex.op(
                "Transpose",
                &[y.name],
                vec![attr_ints("perm", &[0, 2, 1, 3])],
                prefix,
                4,
            );
            let shape = ex.init_ints("shape", &[0, 0, -1]);
            Ok(ex.op("Reshape", &[t.name, shape], Vec::new(), prefix, 3))
        }
        MergeMode::Sum => {
            let axes = ex.init_ints("axes", &[1]);
            Ok(ex.op(
                "ReduceSum",
                &[y.name, axes],
                vec![attr_int("keepdims", 0)],
                prefix,
                3,
            ))
        }
    }
}
