//! `Gemm` and `MatMul` by a constant (with the bias `Add` PyTorch puts
//! after a 3-D `nn.Linear`) to Kiln's `Linear`, wrapped in
//! `TimeDistributed` for `(T, N, F)` inputs.

use kiln_nn::layers::{LayerConfig, LinearConfig};
use kiln_nn::Tensor;

use crate::constant::Constant;
use crate::error::Result;
use crate::import::{Dynamic, Importer, NodeCtx, Value};

/// Emits a linear layer with `weight` `[out, in]` and an optional bias.
fn emit_linear(
    imp: &mut Importer,
    n: &NodeCtx,
    x: &Dynamic,
    weight: Vec<f32>,
    out_features: usize,
    in_features: usize,
    bias: Option<Vec<f32>>,
) -> Result<()> {
    if x.shape
        .last()
        .copied()
        .flatten()
        .is_some_and(|f| f != in_features)
    {
        return Err(n.invalid(format!(
            "input of shape {:?} has not the {in_features} features the weight takes",
            x.shape
        )));
    }
    let linear = LayerConfig::Linear(LinearConfig {
        in_features,
        out_features,
        bias: bias.is_some(),
    });
    let layer = match x.rank() {
        2 => linear,
        3 => LayerConfig::TimeDistributed {
            inner: Box::new(linear),
        },
        r => {
            return Err(n.unsupported(
                format!("input of rank {r}"),
                "Kiln's linear layers take [N, F] or [T, N, F] inputs",
            ))
        }
    };
    let to_tensor = |shape: &[usize], v: Vec<f32>| {
        Tensor::from_shape_vec(ndarray::IxDyn(shape), v).map_err(|e| n.invalid(e.to_string()))
    };
    let mut tensors = vec![("weight", to_tensor(&[out_features, in_features], weight)?)];
    if let Some(b) = bias {
        tensors.push(("bias", to_tensor(&[out_features], b)?));
    }
    let name = imp.node_name(n, Some(1));
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = Some(out_features);
    }
    imp.emit(n, name, layer, x, tensors, shape);
    Ok(())
}

/// A bias for `out` features from a constant of shape `[out]` or `[1, out]`.
fn bias_of(c: &Constant, out: usize) -> Option<Vec<f32>> {
    let v = c.as_floats();
    let fits = v.len() == out && c.shape.iter().rev().skip(1).all(|&d| d == 1);
    fits.then_some(v)
}

pub(super) fn gemm(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let b = imp.required_constant(n, 1)?;
    let c = imp.constant(n, 2)?;
    let alpha = n.attrs.float_or("alpha", 1.0)?;
    let beta = n.attrs.float_or("beta", 1.0)?;
    n.attrs
        .expect_int("transA", 0, "the input must not be transposed")?;
    let trans_b = n.attrs.int_or("transB", 0)? != 0;
    if x.rank() != 2 || b.shape.len() != 2 {
        return Err(n.invalid(format!(
            "Gemm takes 2-D operands, got input rank {} and B of shape {:?}",
            x.rank(),
            b.shape
        )));
    }
    let (rows, cols) = (b.shape[0], b.shape[1]);
    let data = b.as_floats();
    // Kiln's weight is [out, in]: B itself when transB, else B transposed.
    let (mut weight, out, inp) = if trans_b {
        (data, rows, cols)
    } else {
        (crate::constant::transpose2(&data, rows, cols), cols, rows)
    };
    if alpha != 1.0 {
        weight.iter_mut().for_each(|w| *w *= alpha);
    }
    let bias = match c {
        None => None,
        Some(c) => {
            let mut v = bias_of(&c, out).ok_or_else(|| {
                n.unsupported(
                    format!("C of shape {:?}", c.shape),
                    format!(
                        "Kiln's bias is one value per output ({out}), broadcast over the batch"
                    ),
                )
            })?;
            v.iter_mut().for_each(|x| *x *= beta);
            Some(v)
        }
    };
    emit_linear(imp, n, &x, weight, out, inp, bias)
}

pub(super) fn matmul(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let b = imp
        .constant(n, 1)?
        .ok_or_else(|| n.unsupported("input B", "Kiln imports MatMul by a constant weight only"))?;
    if b.shape.len() != 2 {
        return Err(n.unsupported(
            format!("B of shape {:?}", b.shape),
            "the weight must be 2-D",
        ));
    }
    let (inp, out) = (b.shape[0], b.shape[1]);
    let weight = crate::constant::transpose2(&b.as_floats(), inp, out);
    // PyTorch exports a Linear on 3-D input as MatMul then Add(bias): fuse
    // them when the product has no other reader.
    match fused_bias(imp, n, out) {
        Some((index, bias, add_output)) => {
            imp.absorbed.insert(index);
            emit_linear(imp, n, &x, weight, out, inp, Some(bias))?;
            // The Add's output is this layer's output.
            if let Some(v) = n.output_name(0).and_then(|o| imp.values.get(o).cloned()) {
                imp.values.insert(add_output, v);
            }
            Ok(())
        }
        None => emit_linear(imp, n, &x, weight, out, inp, None),
    }
}

/// The following `Add` of a constant `[out]` bias, if it is the product's
/// only reader: its index, the bias and the Add's output name.
fn fused_bias(imp: &Importer, n: &NodeCtx, out: usize) -> Option<(usize, Vec<f32>, String)> {
    let product = n.output_name(0)?;
    if imp.uses.get(product).copied() != Some(1) {
        return None;
    }
    let (index, add) = imp
        .all_nodes
        .iter()
        .enumerate()
        .skip(n.index + 1)
        .find(|(_, m)| m.input.iter().any(|i| i == product))?;
    if add.op_type != "Add"
        || add.input.len() != 2
        || add.output.len() != 1
        || !add.attribute.is_empty()
    {
        return None;
    }
    let other = if add.input[0] == product {
        &add.input[1]
    } else {
        &add.input[0]
    };
    let Some(Value::Const(c)) = imp.values.get(other) else {
        return None;
    };
    let bias = (c.shape.len() == 1).then(|| bias_of(c, out)).flatten()?;
    Some((index, bias, add.output[0].clone()))
}
