//! Kiln models to ONNX (opset 17): a [`LayerConfig`] tree and the model's
//! tensors become ONNX nodes and initializers that onnxruntime runs.
//!
//! Every layer of kiln-nn's serialisable tree is exported except
//! `Embedding`; recurrent layers run every sequence over the whole input
//! (ONNX's `sequence_lens` is not written); dropout is exported as the
//! identity (inference). Models whose forward pass is their own code
//! rather than a layer tree (Deep Speech 2) need their own exporter.

mod layers;
mod recurrent;

use std::collections::HashMap;

use kiln_nn::layers::LayerConfig;
use kiln_nn::{Module, Tensor};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::{Tensor as TensorType, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::{Error, Result};

/// The operator set Kiln writes.
pub const EXPORT_OPSET: i64 = 17;

/// A value of the graph being written: its ONNX name and rank.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    pub(crate) name: String,
    pub(crate) rank: usize,
}

/// Exports `model` (whose structure is `config`) for inputs of `input_shape`
/// (`None`: a dimension left symbolic, such as the batch). The model's
/// parameters and buffers are read by their qualified names.
pub fn export_model(
    model: &dyn Module<f32>,
    config: &LayerConfig,
    input_shapes: &[Vec<Option<usize>>],
) -> Result<ModelProto> {
    let mut tensors = HashMap::new();
    for (name, t) in kiln_nn::serialize::named_tensors(model)? {
        tensors.insert(name, t);
    }
    let mut ex = Exporter {
        nodes: Vec::new(),
        initializers: Vec::new(),
        tensors,
        used: 0,
        names: std::collections::HashSet::new(),
    };
    let names: Vec<String> = match config {
        LayerConfig::Graph(g) => g.inputs.clone(),
        _ => vec!["input".to_string()],
    };
    if names.len() != input_shapes.len() {
        return Err(Error::Export {
            layer: "model".into(),
            reason: format!(
                "{} input shapes for {} inputs",
                input_shapes.len(),
                names.len()
            ),
        });
    }
    let inputs: Vec<Out> = names
        .iter()
        .zip(input_shapes)
        .map(|(n, s)| Out {
            name: n.clone(),
            rank: s.len(),
        })
        .collect();
    let outputs = match config {
        LayerConfig::Graph(g) => ex.graph(g, "", &inputs)?,
        other => vec![ex.layer(other, "", inputs[0].clone())?],
    };
    // Graph outputs get their own names.
    let mut output_infos = Vec::new();
    for (k, o) in outputs.iter().enumerate() {
        let name = if outputs.len() == 1 {
            "output".to_string()
        } else {
            format!("output_{k}")
        };
        ex.nodes.push(node(
            "Identity",
            std::slice::from_ref(&o.name),
            &name,
            Vec::new(),
        ));
        output_infos.push(value_info(&name, &vec![None; o.rank]));
    }
    let mut graph = GraphProto::new();
    graph.name = "kiln".into();
    graph.node = ex.nodes;
    graph.initializer = ex.initializers;
    graph.input = names
        .iter()
        .zip(input_shapes)
        .map(|(n, s)| value_info(n, s))
        .collect();
    graph.output = output_infos;
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.producer_name = "kiln".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = EXPORT_OPSET;
    m.opset_import = vec![opset];
    m.graph = Some(graph).into();
    Ok(m)
}

/// The `.onnx` bytes of a model.
pub fn to_bytes(model: &ModelProto) -> Result<Vec<u8>> {
    model.write_to_bytes().map_err(|e| Error::Export {
        layer: "model".into(),
        reason: format!("encoding: {e}"),
    })
}

/// A graph input or output of rank `shape.len()`, float.
fn value_info(name: &str, shape: &[Option<usize>]) -> ValueInfoProto {
    let mut s = TensorShapeProto::new();
    for (k, d) in shape.iter().enumerate() {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Some(v) => DimValue::DimValue(*v as i64),
            None => DimValue::DimParam(format!("d{k}")),
        });
        s.dim.push(dim);
    }
    let mut t = TensorType::new();
    t.elem_type = 1;
    t.shape = Some(s).into();
    let mut ty = TypeProto::new();
    ty.value = Some(TypeValue::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

fn node(op: &str, inputs: &[String], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = output.into();
    n.input = inputs.to_vec();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// An integer attribute.
pub(crate) fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

/// A list-of-integers attribute.
pub(crate) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

/// A float attribute.
pub(crate) fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

/// A string attribute.
pub(crate) fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

/// A list-of-strings attribute.
pub(crate) fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRINGS.into();
    a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
    a
}

/// The graph being written.
pub(crate) struct Exporter {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    tensors: HashMap<String, Tensor<f32>>,
    used: usize,
    names: std::collections::HashSet<String>,
}

impl Exporter {
    /// A fresh value name.
    fn fresh(&mut self, hint: &str) -> String {
        self.used += 1;
        let hint = if hint.is_empty() { "v" } else { hint };
        format!("{hint}:{}", self.used)
    }

    /// The model's tensor `local` of the layer at `prefix`.
    pub(crate) fn tensor(&self, prefix: &str, local: &str) -> Result<Tensor<f32>> {
        let name = kiln_nn::module::qualified(prefix, local);
        self.tensors
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::Export {
                layer: prefix.to_string(),
                reason: format!("the model has no tensor {name:?}"),
            })
    }

    /// Adds a float initializer and returns its name: `hint` itself (a
    /// parameter's qualified name) the first time, else a fresh name.
    pub(crate) fn init(&mut self, hint: &str, shape: &[usize], data: Vec<f32>) -> String {
        let name = if hint.contains('.') && self.names.insert(hint.to_string()) {
            hint.to_string()
        } else {
            self.fresh(hint)
        };
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = shape.iter().map(|&d| d as i64).collect();
        t.data_type = 1;
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name
    }

    /// Adds the model's tensor `local` of the layer at `prefix` as an
    /// initializer of `shape` (its own shape when `None`); returns its name.
    pub(crate) fn param(
        &mut self,
        prefix: &str,
        local: &str,
        shape: Option<&[usize]>,
    ) -> Result<String> {
        let t = self.tensor(prefix, local)?;
        let shape = shape.map_or_else(|| t.shape().to_vec(), <[usize]>::to_vec);
        Ok(self.init(
            &kiln_nn::module::qualified(prefix, local),
            &shape,
            t.iter().copied().collect(),
        ))
    }

    /// Adds an int64 initializer (shapes, axes) and returns its name.
    pub(crate) fn init_ints(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = vec![values.len() as i64];
        t.data_type = 7;
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name
    }

    /// Adds a node and returns its output, of rank `rank`.
    pub(crate) fn op(
        &mut self,
        op: &str,
        inputs: &[String],
        attrs: Vec<AttributeProto>,
        hint: &str,
        rank: usize,
    ) -> Out {
        let name = self.fresh(&format!("{hint}/{op}"));
        self.nodes.push(node(op, inputs, &name, attrs));
        Out { name, rank }
    }

    /// A node with several outputs; returns the first, of rank `rank`.
    pub(crate) fn op_outputs(
        &mut self,
        op: &str,
        inputs: &[String],
        outputs: usize,
        attrs: Vec<AttributeProto>,
        hint: &str,
        rank: usize,
    ) -> Out {
        let name = self.fresh(&format!("{hint}/{op}"));
        let mut n = node(op, inputs, &name, attrs);
        for k in 1..outputs {
            n.output.push(format!("{name}.{k}"));
        }
        self.nodes.push(n);
        Out { name, rank }
    }

    fn graph(
        &mut self,
        g: &kiln_nn::layers::GraphConfig,
        prefix: &str,
        inputs: &[Out],
    ) -> Result<Vec<Out>> {
        use kiln_nn::layers::NodeOp;
        let mut values: HashMap<&str, Out> = HashMap::new();
        for (name, o) in g.inputs.iter().zip(inputs) {
            values.insert(name, o.clone());
        }
        for n in &g.nodes {
            let ins: Vec<Out> = n
                .inputs
                .iter()
                .map(|i| {
                    values
                        .get(i.as_str())
                        .cloned()
                        .ok_or_else(|| Error::Export {
                            layer: n.name.clone(),
                            reason: format!("reads {i:?}, which is not defined"),
                        })
                })
                .collect::<Result<_>>()?;
            let path = kiln_nn::module::qualified(prefix, &n.name);
            let out = match &n.op {
                NodeOp::Layer { layer } => self.layer(layer, &path, ins[0].clone())?,
                NodeOp::Join { dim } => {
                    let names: Vec<String> = ins.iter().map(|o| o.name.clone()).collect();
                    self.op(
                        "Concat",
                        &names,
                        vec![attr_int("axis", *dim as i64)],
                        &path,
                        ins[0].rank,
                    )
                }
                NodeOp::Add => {
                    let mut acc = ins[0].clone();
                    for x in &ins[1..] {
                        acc = self.op(
                            "Add",
                            &[acc.name.clone(), x.name.clone()],
                            Vec::new(),
                            &path,
                            acc.rank,
                        );
                    }
                    acc
                }
            };
            values.insert(&n.name, out);
        }
        g.outputs
            .iter()
            .map(|o| {
                values
                    .get(o.as_str())
                    .cloned()
                    .ok_or_else(|| Error::Export {
                        layer: prefix.to_string(),
                        reason: format!("output {o:?} is not defined"),
                    })
            })
            .collect()
    }

    /// Writes `config` (the layer at `prefix`) applied to `x`.
    pub(crate) fn layer(&mut self, config: &LayerConfig, prefix: &str, x: Out) -> Result<Out> {
        match config {
            LayerConfig::Sequential { layers } => {
                let mut x = x;
                for (i, l) in layers.iter().enumerate() {
                    x = self.layer(l, &kiln_nn::module::qualified(prefix, &i.to_string()), x)?;
                }
                Ok(x)
            }
            LayerConfig::Graph(g) => {
                let mut outs = self.graph(g, prefix, std::slice::from_ref(&x))?;
                if outs.len() != 1 {
                    return Err(Error::Export {
                        layer: prefix.into(),
                        reason: "a nested graph with several outputs".into(),
                    });
                }
                Ok(outs.remove(0))
            }
            LayerConfig::Concat { dim, branches } => {
                let mut names = Vec::new();
                for (i, b) in branches.iter().enumerate() {
                    names.push(
                        self.layer(
                            b,
                            &kiln_nn::module::qualified(prefix, &i.to_string()),
                            x.clone(),
                        )?
                        .name,
                    );
                }
                Ok(self.op(
                    "Concat",
                    &names,
                    vec![attr_int("axis", *dim as i64)],
                    prefix,
                    x.rank,
                ))
            }
            LayerConfig::Recurrent(_) | LayerConfig::BiRecurrent(_) => {
                recurrent::recurrent(self, config, prefix, x)
            }
            other => layers::layer(self, other, prefix, x),
        }
    }
}
