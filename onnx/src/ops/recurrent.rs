//! `GRU`, `LSTM` and `RNN` (forward or bidirectional) to Kiln's
//! `Recurrent` and `BiRecurrent` (PyTorch's gate order and names), with the
//! gates reordered from ONNX's.
//!
//! ONNX's output `Y` is `[T, directions, N, H]`; Kiln computes
//! `[T, N, directions*H]`. The import records that layout and accepts the
//! readers PyTorch's exporter puts after the layer: `Squeeze` of axis 1
//! (one direction) or `Transpose [0, 2, 1, 3]` then `Reshape [T, N, -1]`.

use kiln_nn::layers::{BiRecurrentConfig, CellKind, LayerConfig, MergeMode, RecurrentConfig};
use kiln_nn::Tensor;
use ndarray::IxDyn;

use crate::constant::Constant;
use crate::error::Result;
use crate::import::{Dynamic, Importer, Layout, NodeCtx, Value};

/// For each of Kiln's (PyTorch's) gates, the ONNX gate block it comes from.
pub(crate) fn gate_order(cell: CellKind) -> &'static [usize] {
    match cell {
        // ONNX z, r, h; PyTorch r, z, n.
        CellKind::Gru => &[1, 0, 2],
        // ONNX i, o, f, c; PyTorch i, f, g, o.
        CellKind::Lstm => &[0, 2, 3, 1],
        CellKind::RnnTanh | CellKind::RnnRelu => &[0],
    }
}

/// Rows `[gates * hidden, cols]` of direction `d` of `c`, gate blocks reordered.
fn reordered(c: &[f32], d: usize, cell: CellKind, hidden: usize, cols: usize) -> Vec<f32> {
    let gates = cell.gates();
    let block = hidden * cols;
    let base = d * gates * block;
    let mut out = Vec::with_capacity(gates * block);
    for &g in gate_order(cell) {
        out.extend_from_slice(&c[base + g * block..base + (g + 1) * block]);
    }
    out
}

pub(super) fn recurrent(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let w = imp.required_constant(n, 1)?;
    let r = imp.required_constant(n, 2)?;
    let b = imp.constant(n, 3)?;
    let op = n.proto.op_type.clone();
    let hidden = n
        .attrs
        .int("hidden_size")?
        .ok_or_else(|| n.invalid("attribute hidden_size is missing"))?;
    let hidden = super::sizes(n, "hidden_size", &[hidden])?[0];
    let direction = n
        .attrs
        .string("direction")?
        .unwrap_or_else(|| "forward".into());
    let directions = match direction.as_str() {
        "forward" => 1,
        "bidirectional" => 2,
        other => {
            return Err(n.unsupported(
                format!("attribute direction = {other}"),
                "Kiln imports forward and bidirectional layers",
            ))
        }
    };
    n.attrs
        .expect_int("layout", 0, "Kiln imports time-major [T, N, F] layers")?;
    if n.attrs.float("clip")?.is_some() {
        return Err(n.unsupported("attribute clip", "Kiln's cells do not clip"));
    }
    if n.attrs.floats("activation_alpha")?.is_some() || n.attrs.floats("activation_beta")?.is_some()
    {
        return Err(n.unsupported(
            "activation_alpha/beta",
            "Kiln's cells use the default activations",
        ));
    }
    let activations = n.attrs.strings("activations")?;
    let cell = match op.as_str() {
        "GRU" => {
            let lbr = n.attrs.int_or("linear_before_reset", 0)?;
            if lbr != 1 {
                return Err(n.unsupported(
                    format!("attribute linear_before_reset = {lbr}"),
                    "Kiln's GRU (PyTorch's) applies the reset gate after the recurrent product \
                     (linear_before_reset = 1, what PyTorch exports)",
                ));
            }
            check_activations(n, activations.as_deref(), &["sigmoid", "tanh"], directions)?;
            CellKind::Gru
        }
        "LSTM" => {
            n.attrs.expect_int(
                "input_forget",
                0,
                "Kiln's LSTM has no coupled input-forget gate",
            )?;
            check_activations(
                n,
                activations.as_deref(),
                &["sigmoid", "tanh", "tanh"],
                directions,
            )?;
            CellKind::Lstm
        }
        _ => match activations.as_deref() {
            Some(a)
                if a.iter().all(|s| s.eq_ignore_ascii_case("relu")) && a.len() == directions =>
            {
                CellKind::RnnRelu
            }
            _ => {
                check_activations(n, activations.as_deref(), &["tanh"], directions)?;
                CellKind::RnnTanh
            }
        },
    };
    let gates = cell.gates();
    if x.rank() != 3 {
        return Err(n.invalid(format!("input of rank {}, not [T, N, F]", x.rank())));
    }
    let input_size = w.shape.get(2).copied().unwrap_or(0);
    if w.shape != [directions, gates * hidden, input_size]
        || r.shape != [directions, gates * hidden, hidden]
        || x.shape[2].is_some_and(|f| f != input_size)
    {
        return Err(n.invalid(format!(
            "W {:?} and R {:?} do not fit {directions} direction(s) of {gates} gates of {hidden} for input {:?}",
            w.shape, r.shape, x.shape
        )));
    }
    if let Some(b) = &b {
        if b.shape != [directions, 2 * gates * hidden] {
            return Err(n.invalid(format!("B of shape {:?}", b.shape)));
        }
    }
    check_sequence_lens(imp, n, &x)?;
    for (i, what) in [(5, "initial_h"), (6, "initial_c")] {
        if let Some(init) = imp.constant(n, i)? {
            if init.as_floats().iter().any(|&v| v != 0.0) {
                return Err(n.unsupported(what, "Kiln's layers start from a zero state"));
            }
        }
    }
    if n.input_name(7).is_some() {
        return Err(n.unsupported("input P (peepholes)", "Kiln's LSTM has no peepholes"));
    }
    for (i, what) in [(1, "Y_h"), (2, "Y_c")] {
        if imp.output_used(n, i) {
            return Err(n.unsupported(
                format!("output {what}"),
                "Kiln's recurrent layers return the sequence Y only",
            ));
        }
    }
    let (wd, rd) = (w.as_floats(), r.as_floats());
    let bd = b.as_ref().map(Constant::as_floats);
    let mut tensors: Vec<(String, Tensor<f32>)> = Vec::new();
    let tensor = |shape: &[usize], v: Vec<f32>| {
        Tensor::from_shape_vec(IxDyn(shape), v).map_err(|e| n.invalid(e.to_string()))
    };
    for d in 0..directions {
        let suffix = if d == 0 { "" } else { "_reverse" };
        tensors.push((
            format!("weight_ih_l0{suffix}"),
            tensor(
                &[gates * hidden, input_size],
                reordered(&wd, d, cell, hidden, input_size),
            )?,
        ));
        tensors.push((
            format!("weight_hh_l0{suffix}"),
            tensor(
                &[gates * hidden, hidden],
                reordered(&rd, d, cell, hidden, hidden),
            )?,
        ));
        if let Some(bd) = &bd {
            // B is [Wb, Rb] per direction, each gates*hidden long.
            let base = d * 2 * gates * hidden;
            let wb = &bd[base..base + gates * hidden];
            let rb = &bd[base + gates * hidden..base + 2 * gates * hidden];
            tensors.push((
                format!("bias_ih_l0{suffix}"),
                tensor(&[gates * hidden], reordered(wb, 0, cell, hidden, 1))?,
            ));
            tensors.push((
                format!("bias_hh_l0{suffix}"),
                tensor(&[gates * hidden], reordered(rb, 0, cell, hidden, 1))?,
            ));
        }
    }
    let config = RecurrentConfig::new(cell, input_size, hidden).with_bias(b.is_some());
    let layer = if directions == 1 {
        LayerConfig::Recurrent(config)
    } else {
        LayerConfig::BiRecurrent(BiRecurrentConfig::new(config, MergeMode::Concat))
    };
    let name = imp.node_name(n, None);
    let refs: Vec<(&str, Tensor<f32>)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.clone()))
        .collect();
    let name = imp.push_layer(name, layer, &x, refs);
    imp.set_output(
        n,
        0,
        Value::Tensor(Dynamic {
            name,
            shape: vec![x.shape[0], Some(directions), x.shape[1], Some(hidden)],
            layout: Layout::RecurrentY { directions, hidden },
        }),
    );
    Ok(())
}

/// Accepts the default activations (per direction), refuses others.
fn check_activations(
    n: &NodeCtx,
    given: Option<&[String]>,
    default: &[&str],
    directions: usize,
) -> Result<()> {
    let Some(given) = given else {
        return Ok(());
    };
    let ok = given.len() == default.len() * directions
        && given
            .iter()
            .zip(default.iter().cycle())
            .all(|(g, d)| g.eq_ignore_ascii_case(d));
    if ok {
        Ok(())
    } else {
        Err(n.unsupported(
            format!("attribute activations = {given:?}"),
            format!("Kiln's cells use {default:?}"),
        ))
    }
}

/// Accepts `sequence_lens` only when every sequence is the full length.
fn check_sequence_lens(imp: &Importer, n: &NodeCtx, x: &Dynamic) -> Result<()> {
    match imp.input(n, 4)? {
        None => Ok(()),
        Some(Value::Const(c)) => {
            let full = x.shape[0].map(|t| t as i64);
            let lens = c.as_ints().unwrap_or_default();
            if full.is_some() && lens.iter().all(|&l| Some(l) == full) {
                Ok(())
            } else {
                Err(n.unsupported(
                    format!("sequence_lens {lens:?}"),
                    "per-sequence lengths are not imported yet: Kiln models take one input tensor",
                ))
            }
        }
        Some(Value::Tensor(_)) => Err(n.unsupported(
            "a computed sequence_lens",
            "per-sequence lengths are not imported yet: Kiln models take one input tensor",
        )),
    }
}

/// `ReduceSum` over the directions of a bidirectional layer's `Y` (axis 1,
/// without keeping it): the layer's sum merge.
pub(super) fn reduce_sum(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let keep = n.attrs.int_or("keepdims", 1)?;
    n.attrs
        .expect_int("noop_with_empty_axes", 0, "an empty axes list must reduce")?;
    let axes = match imp.constant(n, 1)? {
        Some(c) => c.as_ints().unwrap_or_default(),
        None => Vec::new(),
    };
    let x = match imp.input(n, 0)? {
        Some(Value::Tensor(d)) => d,
        _ => return Err(n.invalid("input 0 is missing or constant")),
    };
    let Layout::RecurrentY {
        directions: 2,
        hidden,
    } = x.layout
    else {
        return Err(n.unsupported(
            "a computed input",
            "Kiln imports ReduceSum only as the sum of a bidirectional recurrent layer's directions",
        ));
    };
    let single_reader = n
        .input_name(0)
        .is_some_and(|i| imp.uses.get(i).copied() == Some(1));
    if axes != [1] || keep != 0 || !single_reader {
        return Err(n.unsupported(
            format!("ReduceSum over axes {axes:?} (keepdims {keep}) of a recurrent output"),
            "Kiln imports the sum over axis 1 without keepdims, read by nothing else",
        ));
    }
    let node = imp.nodes.iter_mut().find(|g| g.name == x.name);
    let Some(kiln_nn::layers::NodeOp::Layer { layer }) = node.map(|g| &mut g.op) else {
        return Err(n.invalid("the recurrent layer's node is missing"));
    };
    let LayerConfig::BiRecurrent(c) = layer.as_mut() else {
        return Err(n.invalid("the recurrent layer is not bidirectional"));
    };
    c.merge = MergeMode::Sum;
    imp.set_output(
        n,
        0,
        Value::Tensor(Dynamic {
            name: x.name.clone(),
            shape: vec![x.shape[0], x.shape[2], Some(hidden)],
            layout: Layout::Plain,
        }),
    );
    Ok(())
}
