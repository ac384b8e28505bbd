//! ONNX graph to Kiln [`GraphConfig`]: each ONNX node becomes a Kiln layer
//! node (or a join/add node), constants are folded at import time, and the
//! initializers become the layers' parameters and buffers under the names
//! PyTorch gave them where the exporter kept them (`conv1.weight`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use kiln_nn::layers::{Graph, GraphConfig, GraphNode, LayerConfig};
use kiln_nn::module::qualified;
use kiln_nn::{Module, Tensor};
use onnx_protobuf::type_proto::Value as TypeValue;
use onnx_protobuf::{ModelProto, NodeProto, ValueInfoProto};
use rand::SeedableRng;

use crate::attributes::Attributes;
use crate::constant::Constant;
use crate::error::{Error, Result};
use crate::ops;

/// The ONNX operator-set versions (default domain) Kiln imports.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Metadata key of an imported model file: what it was imported from.
pub const IMPORTED_FROM_KEY: &str = "kiln.imported_from";

/// One dimension of a shape known at import time (`None`: set at run time,
/// such as a symbolic batch size).
pub type Dim = Option<usize>;

/// How a value's elements are arranged, where Kiln stores an ONNX tensor in
/// another layout than ONNX describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// As ONNX describes it.
    Plain,
    /// A recurrent layer's `Y`: ONNX `[T, D, N, H]`, stored by Kiln as
    /// `[T, N, D*H]` (directions concatenated on the features).
    RecurrentY { directions: usize, hidden: usize },
    /// `Y` transposed to `[T, N, D, H]`, stored as `[T, N, D*H]`.
    RecurrentYBatchMajor { directions: usize, hidden: usize },
}

/// A value computed by the Kiln graph at run time.
#[derive(Debug, Clone)]
pub(crate) struct Dynamic {
    /// The Kiln graph value (a graph input or node) holding it.
    pub name: String,
    /// Its ONNX shape, as far as it is known.
    pub shape: Vec<Dim>,
    /// How Kiln stores it.
    pub layout: Layout,
}

impl Dynamic {
    /// Its rank.
    pub(crate) fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// An ONNX value during import.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// Known at import time.
    Const(Constant),
    /// Computed at run time.
    Tensor(Dynamic),
}

/// Metadata key of an imported model file: its inputs' names and shapes
/// (JSON, `null` for a dimension set at run time).
pub const INPUTS_KEY: &str = "kiln.inputs";

/// One input of an imported model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInput {
    /// Its ONNX name (also the Kiln graph input's name).
    pub name: String,
    /// Its shape; `None` where the file leaves a dimension symbolic.
    pub shape: Vec<Dim>,
}

/// An ONNX model converted to a Kiln graph and its weights.
#[derive(Debug, Clone)]
pub struct ImportedModel {
    /// The graph's structure.
    pub graph: GraphConfig,
    /// Parameters and buffers by qualified name.
    pub tensors: Vec<(String, Tensor<f32>)>,
    /// The graph's inputs.
    pub inputs: Vec<ModelInput>,
    /// Its outputs' names.
    pub outputs: Vec<String>,
    /// The default-domain operator set the file imports.
    pub opset: i64,
    /// The program that wrote the file (`pytorch 2.15.0`).
    pub producer: String,
}

impl ImportedModel {
    /// The model's structure as a [`LayerConfig`].
    pub fn config(&self) -> LayerConfig {
        LayerConfig::Graph(self.graph.clone())
    }

    /// Builds the Kiln graph and loads every imported tensor into it.
    pub fn build(&self) -> Result<Graph<f32>> {
        let mut graph = self
            .graph
            .init::<f32>(&mut rand::rngs::StdRng::seed_from_u64(0))?;
        let mut by_name: HashMap<&str, &Tensor<f32>> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut problem: Option<(String, String)> = None;
        let mut assign = |name: &str, dst: &mut Tensor<f32>| match by_name.remove(name) {
            Some(src) if src.shape() == dst.shape() => dst.assign(src),
            Some(src) => {
                problem.get_or_insert((
                    name.to_string(),
                    format!(
                        "imported shape {:?}, layer expects {:?}",
                        src.shape(),
                        dst.shape()
                    ),
                ));
            }
            None => {
                problem.get_or_insert((name.to_string(), "no imported tensor".into()));
            }
        };
        graph.visit_params_mut("", &mut |name, p| assign(name, &mut p.value));
        graph.visit_buffers_mut("", &mut |name, b| assign(name, b));
        if let Some((name, reason)) = problem {
            return Err(Error::Tensor { name, reason });
        }
        if let Some(name) = by_name.keys().next() {
            return Err(Error::Tensor {
                name: name.to_string(),
                reason: "imported but the graph has no such parameter".into(),
            });
        }
        graph.set_training(false);
        Ok(graph)
    }

    /// Saves the model as a Kiln model file (safetensors with the graph's
    /// config), which `kiln model run`, training and fine-tuning read.
    pub fn save(&self, path: &Path, source: &str) -> Result<()> {
        let graph = self.build()?;
        let mut meta = HashMap::new();
        meta.insert(
            IMPORTED_FROM_KEY.to_string(),
            format!("{source} ({}, opset {})", self.producer, self.opset),
        );
        meta.insert(INPUTS_KEY.to_string(), inputs_to_json(&self.inputs));
        kiln_nn::serialize::save(&graph, path, &meta)?;
        Ok(())
    }
}

/// The [`INPUTS_KEY`] metadata text of `inputs`.
pub fn inputs_to_json(inputs: &[ModelInput]) -> String {
    serde_json::to_string(inputs).unwrap_or_default()
}

/// Reads [`INPUTS_KEY`] metadata.
pub fn inputs_from_json(json: &str) -> std::result::Result<Vec<ModelInput>, serde_json::Error> {
    serde_json::from_str(json)
}

/// Reads `path` and imports it.
pub fn import_file(path: &Path) -> Result<ImportedModel> {
    let model = crate::decode::read_model(path)?;
    import_model(&model, path)
}

/// Imports a decoded model (`path` names it in errors).
pub fn import_model(model: &ModelProto, path: &Path) -> Result<ImportedModel> {
    let model_err = |field: &str, reason: String| Error::Model {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let mut opset = None;
    for o in &model.opset_import {
        match o.domain.as_str() {
            "" | "ai.onnx" => opset = Some(o.version),
            other => {
                return Err(model_err(
                    "opset_import",
                    format!("domain {other:?} (version {}) is not supported", o.version),
                ))
            }
        }
    }
    let opset =
        opset.ok_or_else(|| model_err("opset_import", "no default-domain operator set".into()))?;
    if !OPSETS.contains(&opset) {
        return Err(model_err(
            "opset_import",
            format!(
                "operator set {opset} is not supported (Kiln imports {}-{}); convert it with onnx.version_converter",
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    if !model.functions.is_empty() {
        return Err(model_err(
            "functions",
            "model-local functions are not supported".into(),
        ));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| model_err("graph", "the model has no graph".into()))?;
    if !graph.sparse_initializer.is_empty() {
        return Err(model_err(
            "graph.sparse_initializer",
            "sparse initializers are not supported".into(),
        ));
    }
    let mut imp = Importer::new(&graph.node);
    for init in &graph.initializer {
        imp.values
            .insert(init.name.clone(), Value::Const(Constant::from_proto(init)?));
    }
    let mut inputs = Vec::new();
    for vi in &graph.input {
        if imp.values.contains_key(&vi.name) {
            continue; // an initializer listed as an input (IR < 4 style)
        }
        let shape =
            input_shape(vi).map_err(|r| model_err(&format!("graph.input {:?}", vi.name), r))?;
        imp.used_names.insert(vi.name.clone());
        imp.values.insert(
            vi.name.clone(),
            Value::Tensor(Dynamic {
                name: vi.name.clone(),
                shape: shape.clone(),
                layout: Layout::Plain,
            }),
        );
        inputs.push(ModelInput {
            name: vi.name.clone(),
            shape,
        });
    }
    if inputs.is_empty() {
        return Err(model_err(
            "graph.input",
            "the graph has no run-time input".into(),
        ));
    }
    for vi in &graph.output {
        *imp.uses.entry(vi.name.clone()).or_default() += 1;
    }
    for (index, node) in graph.node.iter().enumerate() {
        if imp.absorbed.contains(&index) {
            continue;
        }
        let label = node_label(node);
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(Error::UnsupportedOp {
                node: label,
                op: node.op_type.clone(),
                domain: node.domain.clone(),
                supported: ops::SUPPORTED.join(", "),
            });
        }
        let mut ctx = NodeCtx {
            proto: node,
            index,
            attrs: Attributes::of(node, &label)?,
            label,
        };
        ops::convert(&mut imp, &mut ctx)?;
        ctx.attrs.finish()?;
    }
    let mut outputs = Vec::new();
    for vi in &graph.output {
        match imp.values.get(&vi.name) {
            Some(Value::Tensor(d)) if d.layout == Layout::Plain => outputs.push(d.name.clone()),
            Some(Value::Tensor(_)) => {
                return Err(model_err(
                    &format!("graph.output {:?}", vi.name),
                    "a recurrent layer's raw [T, directions, N, H] output cannot be a model output"
                        .into(),
                ))
            }
            Some(Value::Const(_)) => {
                return Err(model_err(
                    &format!("graph.output {:?}", vi.name),
                    "the output does not depend on the input (a constant)".into(),
                ))
            }
            None => {
                return Err(model_err(
                    &format!("graph.output {:?}", vi.name),
                    "no node computes it".into(),
                ))
            }
        }
    }
    let graph_config = GraphConfig {
        inputs: inputs.iter().map(|i| i.name.clone()).collect(),
        nodes: imp.nodes,
        outputs,
    };
    Ok(ImportedModel {
        graph: graph_config,
        tensors: imp.tensors,
        inputs,
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        opset,
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
    })
}

/// A node's name for messages: its own, else its first output's.
fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output
            .first()
            .cloned()
            .unwrap_or_else(|| node.op_type.clone())
    }
}

/// PyTorch's module path from an exported node's name: `/features/0/Conv`
/// gives `features.0`, `/Relu_1` stays `Relu_1`.
fn module_path(label: &str, op: &str) -> String {
    let mut parts: Vec<&str> = label.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts.last().is_some_and(|l| l.starts_with(op)) {
        parts.pop();
    }
    if parts.is_empty() {
        label.to_string()
    } else {
        parts.join(".")
    }
}

/// A graph input's float tensor shape.
fn input_shape(vi: &ValueInfoProto) -> std::result::Result<Vec<Dim>, String> {
    let Some(TypeValue::TensorType(t)) = vi.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("not a tensor input".into());
    };
    if t.elem_type != 1 {
        return Err(format!(
            "element type {} is not supported: Kiln models take float inputs",
            crate::constant::dtype_name(t.elem_type)
        ));
    }
    let Some(shape) = t.shape.as_ref() else {
        return Err("the input has no shape; export it with a known rank".into());
    };
    Ok(shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                Some(v as usize)
            }
            _ => None,
        })
        .collect())
}

/// A node being converted.
pub(crate) struct NodeCtx<'a> {
    /// The node.
    pub proto: &'a NodeProto,
    /// Its position in the graph.
    pub index: usize,
    /// Its name for messages.
    pub label: String,
    /// Its attributes, consumed by the converter.
    pub attrs: Attributes<'a>,
}

impl NodeCtx<'_> {
    /// An error about this node's structure.
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::Invalid {
            node: self.label.clone(),
            op: self.proto.op_type.clone(),
            reason: reason.into(),
        }
    }

    /// An error for something this node uses that Kiln cannot represent.
    pub(crate) fn unsupported(&self, what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Unsupported {
            node: self.label.clone(),
            op: self.proto.op_type.clone(),
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The name of input `i` (`None` when absent or empty).
    pub(crate) fn input_name(&self, i: usize) -> Option<&str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The name of output `i`.
    pub(crate) fn output_name(&self, i: usize) -> Option<&str> {
        self.proto
            .output
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// The import's state: values by ONNX name and the Kiln graph so far.
pub(crate) struct Importer<'m> {
    pub values: HashMap<String, Value>,
    pub nodes: Vec<GraphNode>,
    pub tensors: Vec<(String, Tensor<f32>)>,
    used_names: HashSet<String>,
    /// How many node inputs and graph outputs read each value.
    pub uses: HashMap<String, usize>,
    /// Nodes folded into an earlier one (MatMul's bias Add).
    pub absorbed: HashSet<usize>,
    /// All nodes of the graph, for look-ahead fusions.
    pub all_nodes: &'m [NodeProto],
}

impl<'m> Importer<'m> {
    fn new(all_nodes: &'m [NodeProto]) -> Self {
        let mut uses: HashMap<String, usize> = HashMap::new();
        for n in all_nodes {
            for i in n.input.iter().filter(|s| !s.is_empty()) {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        Importer {
            values: HashMap::new(),
            nodes: Vec::new(),
            tensors: Vec::new(),
            used_names: HashSet::new(),
            uses,
            absorbed: HashSet::new(),
            all_nodes,
        }
    }

    /// Input `i` of the node, if given.
    pub(crate) fn input(&self, n: &NodeCtx, i: usize) -> Result<Option<Value>> {
        match n.input_name(i) {
            None => Ok(None),
            Some(name) => {
                self.values.get(name).cloned().map(Some).ok_or_else(|| {
                    n.invalid(format!("input {name:?} is computed by no earlier node"))
                })
            }
        }
    }

    /// Input `i`, which must be computed at run time in ONNX's own layout.
    pub(crate) fn dynamic(&self, n: &NodeCtx, i: usize) -> Result<Dynamic> {
        match self.input(n, i)? {
            Some(Value::Tensor(d)) if d.layout == Layout::Plain => Ok(d),
            Some(Value::Tensor(_)) => Err(n.unsupported(
                format!("input {:?}", n.input_name(i).unwrap_or_default()),
                "it is a recurrent layer's output in ONNX's [T, directions, N, H] layout; Kiln imports \
                 the layouts PyTorch exports (Squeeze of axis 1, or Transpose [0, 2, 1, 3] then Reshape)",
            )),
            Some(Value::Const(_)) => Err(n.unsupported(
                format!("input {:?}", n.input_name(i).unwrap_or_default()),
                "Kiln needs this input computed from the model's input, not a constant",
            )),
            None => Err(n.invalid(format!("input {i} is missing"))),
        }
    }

    /// Input `i` as a constant, `None` when absent.
    pub(crate) fn constant(&self, n: &NodeCtx, i: usize) -> Result<Option<Constant>> {
        match self.input(n, i)? {
            None => Ok(None),
            Some(Value::Const(c)) => Ok(Some(c)),
            Some(Value::Tensor(_)) => Err(n.unsupported(
                format!("input {:?}", n.input_name(i).unwrap_or_default()),
                "Kiln needs it known at import time (an initializer or a constant); \
                 export with static shapes and constant folding",
            )),
        }
    }

    /// Input `i` as a required constant.
    pub(crate) fn required_constant(&self, n: &NodeCtx, i: usize) -> Result<Constant> {
        self.constant(n, i)?
            .ok_or_else(|| n.invalid(format!("input {i} is missing")))
    }

    /// Sets output `i` of the node.
    pub(crate) fn set_output(&mut self, n: &NodeCtx, i: usize, value: Value) {
        if let Some(name) = n.output_name(i) {
            self.values.insert(name.to_string(), value);
        }
    }

    /// Whether output `i` of the node is read by anything.
    pub(crate) fn output_used(&self, n: &NodeCtx, i: usize) -> bool {
        n.output_name(i)
            .is_some_and(|name| self.uses.get(name).copied().unwrap_or(0) > 0)
    }

    /// A unique Kiln node name for `n`: the prefix of its weight's name
    /// (`conv1` for `conv1.weight`) when that is PyTorch's naming, else the
    /// ONNX node's name.
    pub(crate) fn node_name(&mut self, n: &NodeCtx, weight_input: Option<usize>) -> String {
        let from_weight = weight_input
            .and_then(|i| n.input_name(i))
            .filter(|w| {
                self.values
                    .get(*w)
                    .is_some_and(|v| matches!(v, Value::Const(_)))
            })
            .and_then(|w| {
                w.strip_suffix(".weight")
                    .or_else(|| w.strip_suffix(".weight_ih_l0"))
            })
            .map(str::to_string);
        let base = from_weight.unwrap_or_else(|| module_path(&n.label, &n.proto.op_type));
        let mut name = base.clone();
        let mut k = 1;
        while self.used_names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    /// Adds a layer node reading `input`, with its parameters and buffers.
    pub(crate) fn push_layer(
        &mut self,
        name: String,
        layer: LayerConfig,
        input: &Dynamic,
        tensors: Vec<(&str, Tensor<f32>)>,
    ) -> String {
        for (local, t) in tensors {
            self.tensors.push((qualified(&name, local), t));
        }
        self.nodes.push(GraphNode::layer(&name, layer, &input.name));
        name
    }

    /// Adds a layer node reading `x` as output 0 of `n`, whose ONNX shape
    /// is `shape`; returns the node's name.
    pub(crate) fn emit(
        &mut self,
        n: &NodeCtx,
        name: String,
        layer: LayerConfig,
        x: &Dynamic,
        tensors: Vec<(&str, Tensor<f32>)>,
        shape: Vec<Dim>,
    ) -> String {
        let name = self.push_layer(name, layer, x, tensors);
        self.set_plain(n, &name, shape);
        name
    }

    /// Makes the Kiln value `name` output 0 of `n`, in ONNX's layout.
    fn set_plain(&mut self, n: &NodeCtx, name: &str, shape: Vec<Dim>) {
        self.set_output(
            n,
            0,
            Value::Tensor(Dynamic {
                name: name.to_string(),
                shape,
                layout: Layout::Plain,
            }),
        );
    }

    /// Adds a non-layer node (join, add) as output 0 of `n`, whose ONNX
    /// shape is `shape`.
    pub(crate) fn push_node(&mut self, n: &NodeCtx, node: GraphNode, shape: Vec<Dim>) {
        self.set_plain(n, &node.name, shape);
        self.nodes.push(node);
    }
}
