//! Shape operators (`Flatten`, `Reshape`, `Transpose`, `Squeeze`,
//! `Unsqueeze`, `Concat`) on computed tensors, the layouts PyTorch puts
//! after a recurrent layer, and constant folding of the shape arithmetic
//! exporters emit (`Shape`, `Gather`, `Cast`, `Constant`, `Identity`).

use kiln_nn::layers::{GraphNode, LayerConfig};

use super::resolve_axis;
use crate::constant::{broadcast, broadcast_source, ConstData, Constant};
use crate::error::Result;
use crate::import::{Dim, Dynamic, Importer, Layout, NodeCtx, Value};

/// Emits `layer` on `x` as the node's output, of ONNX shape `shape`.
pub(super) fn emit(
    imp: &mut Importer,
    n: &NodeCtx,
    layer: LayerConfig,
    x: &Dynamic,
    shape: Vec<Dim>,
) {
    let name = imp.node_name(n, None);
    imp.emit(n, name, layer, x, Vec::new(), shape);
}

/// The same Kiln value under a new ONNX shape and layout (no layer).
fn alias(imp: &mut Importer, n: &NodeCtx, x: &Dynamic, shape: Vec<Dim>, layout: Layout) {
    imp.set_output(
        n,
        0,
        Value::Tensor(Dynamic {
            name: x.name.clone(),
            shape,
            layout,
        }),
    );
}

/// Input 0 in whatever layout it has (recurrent outputs included).
fn any_layout(imp: &Importer, n: &NodeCtx) -> Result<Value> {
    imp.input(n, 0)?
        .ok_or_else(|| n.invalid("input 0 is missing"))
}

fn product(dims: &[Dim]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, d| d.map(|d| acc * d))
}

pub(super) fn identity(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let v = any_layout(imp, n)?;
    imp.set_output(n, 0, v);
    Ok(())
}

pub(super) fn constant(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let value = if let Some(t) = n.attrs.tensor("value")? {
        t
    } else if let Some(f) = n.attrs.float("value_float")? {
        Constant::floats(Vec::new(), vec![f])
    } else if let Some(v) = n.attrs.floats("value_floats")? {
        Constant::floats(vec![v.len()], v)
    } else if let Some(i) = n.attrs.int("value_int")? {
        Constant {
            shape: Vec::new(),
            data: ConstData::Int(vec![i]),
        }
    } else if let Some(v) = n.attrs.ints("value_ints")? {
        Constant::ints(v)
    } else {
        return Err(n.unsupported(
            "its value",
            "Kiln reads value, value_float(s) and value_int(s) constants",
        ));
    };
    imp.set_output(n, 0, Value::Const(value));
    Ok(())
}

pub(super) fn cast(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let to = n
        .attrs
        .int("to")?
        .ok_or_else(|| n.invalid("attribute to is missing"))?;
    n.attrs.int("saturate")?;
    let value = any_layout(imp, n)?;
    let out = match (value, to) {
        (Value::Const(c), 1 | 11) => Value::Const(Constant::floats(c.shape.clone(), c.as_floats())),
        (Value::Const(c), 6 | 7) => Value::Const(Constant {
            shape: c.shape.clone(),
            data: ConstData::Int(c.as_floats().iter().map(|&x| x.trunc() as i64).collect()),
        }),
        (Value::Tensor(d), 1) => Value::Tensor(d),
        (_, other) => {
            return Err(n.unsupported(
                format!(
                    "attribute to = {other} ({})",
                    crate::constant::dtype_name(other as i32)
                ),
                "Kiln casts constants to float or integer types and computed tensors only to float",
            ))
        }
    };
    imp.set_output(n, 0, out);
    Ok(())
}

pub(super) fn shape_of(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let start = n.attrs.int_or("start", 0)?;
    let end = n.attrs.int("end")?;
    let shape: Vec<Dim> = match any_layout(imp, n)? {
        Value::Const(c) => c.shape.iter().map(|&d| Some(d)).collect(),
        Value::Tensor(d) => d.shape,
    };
    let rank = shape.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(rank)));
    let dims = shape.get(s..e.max(s)).unwrap_or(&[]);
    let known: Option<Vec<i64>> = dims.iter().map(|d| d.map(|d| d as i64)).collect();
    match known {
        Some(v) => {
            imp.set_output(n, 0, Value::Const(Constant::ints(v)));
            Ok(())
        }
        None => Err(n.unsupported(
            format!("a shape with run-time dimensions {dims:?}"),
            "Kiln folds Shape only when the dimensions are known at import time; \
             export with static input shapes (no dynamic_axes)",
        )),
    }
}

pub(super) fn gather(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let axis = n.attrs.int_or("axis", 0)?;
    let data = imp
        .constant(n, 0)?
        .ok_or_else(|| n.invalid("data is missing"))?;
    let indices = imp.required_constant(n, 1)?;
    if data.shape.len() != 1 {
        return Err(n.unsupported(
            format!("data of shape {:?}", data.shape),
            "Kiln folds Gather on 1-D constants (shape arithmetic) only",
        ));
    }
    resolve_axis(n, axis, 1)?;
    let len = data.shape[0] as i64;
    let idx = indices
        .as_ints()
        .ok_or_else(|| n.invalid("indices are not integers"))?;
    let mut picked = Vec::with_capacity(idx.len());
    for &i in &idx {
        let j = if i < 0 { i + len } else { i };
        if j < 0 || j >= len {
            return Err(n.invalid(format!("index {i} is out of range for {len} elements")));
        }
        picked.push(j as usize);
    }
    let out = match &data.data {
        ConstData::Int(v) => ConstData::Int(picked.iter().map(|&j| v[j]).collect()),
        ConstData::Float(v) => ConstData::Float(picked.iter().map(|&j| v[j]).collect()),
    };
    imp.set_output(
        n,
        0,
        Value::Const(Constant {
            shape: indices.shape.clone(),
            data: out,
        }),
    );
    Ok(())
}

pub(super) fn flatten(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let axis = n.attrs.int_or("axis", 1)?;
    let axis = if axis == x.rank() as i64 {
        axis
    } else {
        resolve_axis(n, axis, x.rank())? as i64
    };
    if axis != 1 {
        return Err(n.unsupported(
            format!("attribute axis = {axis}"),
            "Kiln flattens everything after the first dimension (axis 1)",
        ));
    }
    let shape = vec![x.shape[0], product(&x.shape[1..])];
    emit(imp, n, LayerConfig::Flatten { start_dim: 1 }, &x, shape);
    Ok(())
}

pub(super) fn reshape(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let allow_zero = n.attrs.int_or("allowzero", 0)? != 0;
    let target = imp
        .required_constant(n, 1)?
        .as_ints()
        .ok_or_else(|| n.invalid("shape is not integers"))?;
    if allow_zero && target.contains(&0) {
        return Err(n.unsupported(
            "allowzero with a 0 in the shape",
            "Kiln has no empty dimensions",
        ));
    }
    let x = match any_layout(imp, n)? {
        Value::Const(c) => {
            // Reshaping a constant: same elements, new shape.
            let shape = resolve_constant_shape(n, &target, &c.shape)?;
            imp.set_output(
                n,
                0,
                Value::Const(Constant {
                    shape,
                    data: c.data,
                }),
            );
            return Ok(());
        }
        Value::Tensor(d) => d,
    };
    if let Layout::RecurrentYBatchMajor { directions, hidden } = x.layout {
        // [T, N, D, H] to [T, N, D*H]: how PyTorch joins the directions.
        let ok = target.len() == 3
            && (0..2).all(|k| {
                target[k] == 0
                    || target[k] == -1
                    || x.shape[k].is_some_and(|d| d as i64 == target[k])
            })
            && (target[2] == -1 || target[2] == (directions * hidden) as i64)
            && target.iter().filter(|&&v| v == -1).count() <= 1;
        if !ok {
            return Err(n.unsupported(
                format!("shape {target:?} on a recurrent output"),
                "Kiln imports the [T, N, directions*hidden] reshape PyTorch exports",
            ));
        }
        let shape = vec![x.shape[0], x.shape[1], Some(directions * hidden)];
        alias(imp, n, &x, shape, Layout::Plain);
        return Ok(());
    }
    let x = imp.dynamic(n, 0)?;
    if target.is_empty() {
        return Err(n.unsupported("an empty target shape", "Kiln keeps the first dimension"));
    }
    // Resolve 0 (copy) entries.
    let mut dims: Vec<Option<i64>> = Vec::with_capacity(target.len());
    for (k, &t) in target.iter().enumerate() {
        dims.push(match t {
            0 => x.shape.get(k).copied().flatten().map(|d| d as i64),
            -1 => Some(-1),
            t if t > 0 => Some(t),
            t => return Err(n.invalid(format!("shape entry {t} is negative"))),
        });
    }
    // Kiln's Reshape keeps the first dimension.
    let keeps_first = match (target[0], x.shape[0]) {
        (0, _) => true,
        (t, Some(d)) if t == d as i64 => true,
        (-1, _) => {
            let rest: Option<i64> = dims[1..]
                .iter()
                .try_fold(1i64, |a, d| d.filter(|&v| v > 0).map(|v| a * v));
            rest.is_some() && rest.map(|r| r as usize) == product(&x.shape[1..])
        }
        _ => false,
    };
    if !keeps_first {
        return Err(n.unsupported(
            format!("shape {target:?} for an input of shape {:?}", x.shape),
            "Kiln reshapes within each item of the first dimension (the batch), which must stay as it is",
        ));
    }
    let rest = &dims[1..];
    let unknown = rest
        .iter()
        .filter(|d| d.is_none() || **d == Some(-1))
        .count();
    if unknown > 1 {
        return Err(n.unsupported(
            format!("shape {target:?} for an input of shape {:?}", x.shape),
            "more than one dimension is unknown at import time",
        ));
    }
    let spec: Vec<isize> = rest.iter().map(|d| d.map_or(-1, |v| v as isize)).collect();
    let per_sample = product(&x.shape[1..]);
    let known: usize = spec
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    let mut shape = vec![x.shape[0]];
    for &d in &spec {
        shape.push(if d > 0 {
            Some(d as usize)
        } else {
            per_sample.filter(|_| known > 0).map(|p| p / known)
        });
    }
    if let (Some(p), true) = (per_sample, unknown == 0) {
        if p != known {
            return Err(n.invalid(format!(
                "shape {target:?} does not hold the {p} elements per item of {:?}",
                x.shape
            )));
        }
    }
    emit(imp, n, LayerConfig::Reshape { shape: spec }, &x, shape);
    Ok(())
}

/// A constant's new shape from an ONNX target (0 copies, -1 infers).
fn resolve_constant_shape(n: &NodeCtx, target: &[i64], from: &[usize]) -> Result<Vec<usize>> {
    let total: usize = from.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (k, &t) in target.iter().enumerate() {
        match t {
            0 => out.push(
                *from
                    .get(k)
                    .ok_or_else(|| n.invalid("0 copies a dimension the input lacks"))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(k);
                out.push(1);
            }
            t if t > 0 => out.push(t as usize),
            _ => return Err(n.invalid(format!("bad shape {target:?}"))),
        }
    }
    let known: usize = out.iter().product();
    if let Some(k) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(n.invalid(format!("shape {target:?} does not fit {from:?}")));
        }
        out[k] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(n.invalid(format!("shape {target:?} does not fit {from:?}")));
    }
    Ok(out)
}

pub(super) fn transpose(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let value = any_layout(imp, n)?;
    let rank = match &value {
        Value::Const(c) => c.shape.len(),
        Value::Tensor(d) => d.rank(),
    };
    let perm = match n.attrs.ints("perm")? {
        Some(p) => p,
        None => (0..rank as i64).rev().collect(),
    };
    let mut seen = vec![false; rank];
    let perm: Vec<usize> = perm
        .iter()
        .map(|&p| resolve_axis(n, p, rank))
        .collect::<Result<_>>()?;
    for &p in &perm {
        if std::mem::replace(&mut seen[p], true) {
            return Err(n.invalid(format!("perm {perm:?} is not a permutation")));
        }
    }
    if perm.len() != rank {
        return Err(n.invalid(format!("perm {perm:?} for rank {rank}")));
    }
    let x = match value {
        Value::Const(_) => {
            return Err(n.unsupported(
                "a constant input",
                "Kiln does not fold Transpose of constants",
            ))
        }
        Value::Tensor(d) => d,
    };
    if let Layout::RecurrentY { directions, hidden } = x.layout {
        if perm != [0, 2, 1, 3] {
            return Err(n.unsupported(
                format!("perm {perm:?} on a recurrent output"),
                "Kiln imports the [0, 2, 1, 3] transpose PyTorch exports",
            ));
        }
        let shape = vec![x.shape[0], x.shape[2], x.shape[1], x.shape[3]];
        alias(
            imp,
            n,
            &x,
            shape,
            Layout::RecurrentYBatchMajor { directions, hidden },
        );
        return Ok(());
    }
    let x = imp.dynamic(n, 0)?;
    let shape: Vec<Dim> = perm.iter().map(|&p| x.shape[p]).collect();
    // Decompose the permutation into swaps of two dimensions.
    let mut current: Vec<usize> = (0..rank).collect();
    let mut swaps = Vec::new();
    for (i, &want) in perm.iter().enumerate() {
        let j = current.iter().position(|&c| c == want).unwrap_or(i);
        if j != i {
            current.swap(i, j);
            swaps.push(LayerConfig::Transpose { dim0: i, dim1: j });
        }
    }
    match swaps.len() {
        0 => alias(imp, n, &x, shape, Layout::Plain),
        1 => emit(imp, n, swaps.remove(0), &x, shape),
        _ => emit(imp, n, LayerConfig::Sequential { layers: swaps }, &x, shape),
    }
    Ok(())
}

pub(super) fn squeeze(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let unsqueeze = n.proto.op_type == "Unsqueeze";
    let axes = imp
        .constant(n, 1)?
        .map(|c| {
            c.as_ints()
                .ok_or_else(|| n.invalid("axes are not integers"))
        })
        .transpose()?;
    let value = any_layout(imp, n)?;
    let in_shape: Vec<Dim> = match &value {
        Value::Const(c) => c.shape.iter().map(|&d| Some(d)).collect(),
        Value::Tensor(d) => d.shape.clone(),
    };
    let touches_first;
    let out_shape: Vec<Dim> = if unsqueeze {
        let axes = axes.ok_or_else(|| n.invalid("Unsqueeze needs axes"))?;
        let rank = in_shape.len() + axes.len();
        let axes: Vec<usize> = axes
            .iter()
            .map(|&a| resolve_axis(n, a, rank))
            .collect::<Result<_>>()?;
        touches_first = axes.contains(&0);
        let mut src = in_shape.iter();
        (0..rank)
            .map(|k| {
                if axes.contains(&k) {
                    Some(Some(1))
                } else {
                    src.next().copied()
                }
            })
            .collect::<Option<Vec<Dim>>>()
            .ok_or_else(|| n.invalid("repeated axes"))?
    } else {
        let rank = in_shape.len();
        let axes: Vec<usize> = match axes {
            Some(a) => a
                .iter()
                .map(|&x| resolve_axis(n, x, rank))
                .collect::<Result<_>>()?,
            None => (0..rank).filter(|&k| in_shape[k] == Some(1)).collect(),
        };
        touches_first = axes.contains(&0);
        for &a in &axes {
            if in_shape[a].is_some_and(|d| d != 1) {
                return Err(n.invalid(format!("cannot squeeze axis {a} of size {:?}", in_shape[a])));
            }
        }
        in_shape
            .iter()
            .enumerate()
            .filter(|(k, _)| !axes.contains(k))
            .map(|(_, d)| *d)
            .collect()
    };
    let x = match value {
        Value::Const(c) => {
            let shape: Vec<usize> = out_shape.iter().map(|d| d.unwrap_or(1)).collect();
            imp.set_output(
                n,
                0,
                Value::Const(Constant {
                    shape,
                    data: c.data,
                }),
            );
            return Ok(());
        }
        Value::Tensor(d) => d,
    };
    if let Layout::RecurrentY { directions: 1, .. } = x.layout {
        // [T, 1, N, H] to [T, N, H]: PyTorch's unidirectional output.
        if !unsqueeze && x.rank() == 4 && out_shape.len() == 3 && in_shape[1] == Some(1) {
            let shape = vec![x.shape[0], x.shape[2], x.shape[3]];
            alias(imp, n, &x, shape, Layout::Plain);
            return Ok(());
        }
    }
    let x = imp.dynamic(n, 0)?;
    if touches_first {
        return Err(n.unsupported(
            "axis 0",
            "Kiln keeps the first (batch) dimension; squeezing or inserting it is not supported",
        ));
    }
    let rest = &out_shape[1..];
    if rest.iter().filter(|d| d.is_none()).count() > 1 {
        return Err(n.unsupported(
            format!("output shape {out_shape:?}"),
            "more than one dimension after the first is unknown at import time",
        ));
    }
    let spec: Vec<isize> = rest.iter().map(|d| d.map_or(-1, |v| v as isize)).collect();
    emit(imp, n, LayerConfig::Reshape { shape: spec }, &x, out_shape);
    Ok(())
}

pub(super) fn concat(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let axis = n
        .attrs
        .int("axis")?
        .ok_or_else(|| n.invalid("attribute axis is missing"))?;
    let values: Vec<Value> = (0..n.proto.input.len())
        .map(|i| {
            imp.input(n, i)?
                .ok_or_else(|| n.invalid(format!("input {i} is missing")))
        })
        .collect::<Result<_>>()?;
    if values.iter().all(|v| matches!(v, Value::Const(_))) {
        // Shape arithmetic: 1-D integer constants joined end to end.
        let mut ints = Vec::new();
        let mut floats = Vec::new();
        for v in &values {
            if let Value::Const(c) = v {
                if c.shape.len() != 1 {
                    return Err(n.unsupported(
                        "constants of rank other than 1",
                        "Kiln folds 1-D Concat only",
                    ));
                }
                match &c.data {
                    ConstData::Int(x) => ints.extend_from_slice(x),
                    ConstData::Float(x) => floats.extend_from_slice(x),
                }
            }
        }
        let out = if floats.is_empty() {
            Constant::ints(ints)
        } else if ints.is_empty() {
            Constant::floats(vec![floats.len()], floats)
        } else {
            return Err(n.invalid("mixed integer and float constants"));
        };
        imp.set_output(n, 0, Value::Const(out));
        return Ok(());
    }
    let inputs: Vec<Dynamic> = (0..values.len())
        .map(|i| imp.dynamic(n, i))
        .collect::<Result<_>>()?;
    let rank = inputs[0].rank();
    let dim = resolve_axis(n, axis, rank)?;
    if dim == 0 {
        return Err(n.unsupported("axis 0", "Kiln concatenates within the batch, not along it"));
    }
    let mut shape = inputs[0].shape.clone();
    let mut total = Some(0usize);
    for x in &inputs {
        if x.rank() != rank {
            return Err(n.invalid("inputs of different ranks"));
        }
        total = total.zip(x.shape[dim]).map(|(a, b)| a + b);
    }
    shape[dim] = total;
    let name = imp.node_name(n, None);
    let names: Vec<&str> = inputs.iter().map(|x| x.name.as_str()).collect();
    imp.push_node(n, GraphNode::join(&name, dim, &names), shape);
    Ok(())
}

pub(super) fn expand(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let input = imp.constant(n, 0)?.ok_or_else(|| {
        n.unsupported(
            "a computed input",
            "Kiln folds Expand of constants (initial states) only",
        )
    })?;
    let target = imp
        .required_constant(n, 1)?
        .as_ints()
        .ok_or_else(|| n.invalid("shape is not integers"))?;
    let target = super::sizes(n, "shape", &target)?;
    let shape = broadcast(&input.shape, &target)
        .ok_or_else(|| n.invalid(format!("cannot expand {:?} to {target:?}", input.shape)))?;
    let count: usize = shape.iter().product();
    let source = |k: usize| broadcast_source(k, &shape, &input.shape);
    let data = match &input.data {
        ConstData::Int(v) => ConstData::Int((0..count).map(|k| v[source(k)]).collect()),
        ConstData::Float(v) => ConstData::Float((0..count).map(|k| v[source(k)]).collect()),
    };
    imp.set_output(n, 0, Value::Const(Constant { shape, data }));
    Ok(())
}
