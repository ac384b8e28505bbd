//! `Add`, `Sub`, `Mul` and `Div`: folded when both operands are constants,
//! Kiln's `CAdd`/`CMul` when one is (its value becomes the layer's
//! parameter), a graph `add` node for the sum of two computed tensors.

use kiln_nn::layers::{GraphNode, LayerConfig};
use kiln_nn::Tensor;
use ndarray::IxDyn;

use crate::constant::{broadcast, broadcast_source, ConstData, Constant};
use crate::error::Result;
use crate::import::{Dynamic, Importer, NodeCtx, Value};

pub(super) fn binary(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let op = n.proto.op_type.clone();
    let a = imp
        .input(n, 0)?
        .ok_or_else(|| n.invalid("input A is missing"))?;
    let b = imp
        .input(n, 1)?
        .ok_or_else(|| n.invalid("input B is missing"))?;
    match (a, b) {
        (Value::Const(a), Value::Const(b)) => {
            let folded = fold(n, &op, &a, &b)?;
            imp.set_output(n, 0, Value::Const(folded));
            Ok(())
        }
        (Value::Tensor(_), Value::Const(c)) => {
            let x = imp.dynamic(n, 0)?;
            with_constant(imp, n, &op, x, c, false)
        }
        (Value::Const(c), Value::Tensor(_)) => {
            let x = imp.dynamic(n, 1)?;
            with_constant(imp, n, &op, x, c, true)
        }
        (Value::Tensor(_), Value::Tensor(_)) => {
            let (x, y) = (imp.dynamic(n, 0)?, imp.dynamic(n, 1)?);
            if op != "Add" {
                return Err(n.unsupported(
                    "two computed operands",
                    format!("Kiln imports {op} with one constant operand; only Add takes two computed tensors"),
                ));
            }
            let same = x.rank() == y.rank()
                && x.shape
                    .iter()
                    .zip(&y.shape)
                    .all(|(p, q)| p.is_none() || q.is_none() || p == q);
            if !same {
                return Err(n.unsupported(
                    format!("operands of shapes {:?} and {:?}", x.shape, y.shape),
                    "Kiln adds computed tensors of the same shape (no broadcasting)",
                ));
            }
            let name = imp.node_name(n, None);
            let shape = x
                .shape
                .iter()
                .zip(&y.shape)
                .map(|(p, q)| p.or(*q))
                .collect();
            imp.push_node(n, GraphNode::add(&name, &[&x.name, &y.name]), shape);
            Ok(())
        }
    }
}

/// `x op c` (or `c op x` when `constant_first`) as a layer.
fn with_constant(
    imp: &mut Importer,
    n: &NodeCtx,
    op: &str,
    x: Dynamic,
    c: Constant,
    constant_first: bool,
) -> Result<()> {
    // The constant's shape without leading ones, aligned with x's trailing
    // dimensions; it must not vary along x's first (batch) dimension.
    let mut shape: Vec<usize> = c.shape.iter().copied().skip_while(|&d| d == 1).collect();
    if shape.len() >= x.rank() {
        return Err(n.unsupported(
            format!(
                "constant of shape {:?} for an input of shape {:?}",
                c.shape, x.shape
            ),
            "the constant must broadcast over the first (batch) dimension",
        ));
    }
    let offset = x.rank() - shape.len();
    for (k, &d) in shape.iter().enumerate() {
        if let Some(xd) = x.shape[offset + k] {
            if d != 1 && d != xd {
                return Err(n.invalid(format!(
                    "constant of shape {:?} does not broadcast to {:?}",
                    c.shape, x.shape
                )));
            }
        }
    }
    if shape.is_empty() {
        shape.push(1);
    }
    let values = c.as_floats();
    let tensor = |v: Vec<f32>| {
        Tensor::from_shape_vec(IxDyn(&shape), v).map_err(|e| n.invalid(e.to_string()))
    };
    let negated = || values.iter().map(|v| -v).collect::<Vec<f32>>();
    let (layer, local, param) = match (op, constant_first) {
        ("Add", _) => (
            LayerConfig::CAdd {
                shape: shape.clone(),
            },
            "bias",
            tensor(values.clone())?,
        ),
        ("Sub", false) => (
            LayerConfig::CAdd {
                shape: shape.clone(),
            },
            "bias",
            tensor(negated())?,
        ),
        ("Mul", _) => (
            LayerConfig::CMul {
                shape: shape.clone(),
            },
            "weight",
            tensor(values.clone())?,
        ),
        ("Div", false) => {
            if values.contains(&0.0) {
                return Err(n.invalid("division by a constant that holds zeros"));
            }
            let inv = values.iter().map(|v| 1.0 / v).collect();
            (
                LayerConfig::CMul {
                    shape: shape.clone(),
                },
                "weight",
                tensor(inv)?,
            )
        }
        ("Sub", true) => {
            // c - x = (-1 * x) + c
            let layer = LayerConfig::Scale {
                shape: shape.clone(),
            };
            let name = imp.node_name(n, None);
            let weight = tensor(vec![-1.0; values.len().max(1)])?;
            let bias = tensor(values.clone())?;
            imp.emit(
                n,
                name,
                layer,
                &x,
                vec![("weight", weight), ("bias", bias)],
                x.shape.clone(),
            );
            return Ok(());
        }
        _ => {
            return Err(n.unsupported(
                "a constant numerator",
                "Kiln imports division by a constant, not of one",
            ))
        }
    };
    let name = imp.node_name(n, None);
    imp.emit(n, name, layer, &x, vec![(local, param)], x.shape.clone());
    Ok(())
}

/// Both operands constant: computed now, with NumPy broadcasting.
fn fold(n: &NodeCtx, op: &str, a: &Constant, b: &Constant) -> Result<Constant> {
    let shape = broadcast(&a.shape, &b.shape).ok_or_else(|| {
        n.invalid(format!(
            "shapes {:?} and {:?} do not broadcast",
            a.shape, b.shape
        ))
    })?;
    let (sa, sb) = (&a.shape, &b.shape);
    let index = |k: usize, from: &[usize]| broadcast_source(k, &shape, from);
    let count: usize = shape.iter().product();
    let data = match (&a.data, &b.data) {
        (ConstData::Int(x), ConstData::Int(y)) => {
            let mut out = Vec::with_capacity(count);
            for k in 0..count {
                let (p, q) = (x[index(k, sa)], y[index(k, sb)]);
                out.push(match op {
                    "Add" => p.wrapping_add(q),
                    "Sub" => p.wrapping_sub(q),
                    "Mul" => p.wrapping_mul(q),
                    _ => p
                        .checked_div(q)
                        .ok_or_else(|| n.invalid("integer division by zero"))?,
                });
            }
            ConstData::Int(out)
        }
        _ => {
            let (x, y) = (a.as_floats(), b.as_floats());
            let out = (0..count)
                .map(|k| {
                    let (p, q) = (x[index(k, sa)], y[index(k, sb)]);
                    match op {
                        "Add" => p + q,
                        "Sub" => p - q,
                        "Mul" => p * q,
                        _ => p / q,
                    }
                })
                .collect();
            ConstData::Float(out)
        }
    };
    Ok(Constant { shape, data })
}
