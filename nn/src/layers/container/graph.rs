//! [`Graph`]: a directed acyclic graph of modules and merge operations with
//! any number of inputs and outputs (SSD's multi-scale heads, skip
//! connections). Nodes are listed in topological order; each reads the
//! outputs of graph inputs or earlier nodes by name.

use std::collections::HashMap;

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::container::{join, split};
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{expect_same_shape, Float, Tensor};

/// What a graph node computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// A module applied to the node's single input.
    Layer {
        /// The module's configuration.
        layer: Box<LayerConfig>,
    },
    /// Concatenation of all inputs along `dim` (BigDL's JoinTable).
    Join {
        /// Dimension (0 is the batch).
        dim: usize,
    },
    /// Elementwise sum of all inputs (BigDL's CAddTable).
    Add,
}

/// One node of a [`GraphConfig`]. In JSON its operation's fields sit
/// beside `name` and `inputs` (`{"name": …, "op": "join", "dim": 1,
/// "inputs": […]}`); unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NodeWire")]
pub struct GraphNode {
    /// Unique name; also the prefix of the node's parameter names.
    pub name: String,
    /// The operation.
    #[serde(flatten)]
    pub op: NodeOp,
    /// Names of the graph inputs or earlier nodes it reads.
    pub inputs: Vec<String>,
}

/// A [`GraphNode`] as written (`#[serde(flatten)]` cannot refuse unknown
/// keys, so the node is read through this and checked).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeWire {
    name: String,
    op: String,
    #[serde(default)]
    layer: Option<Box<LayerConfig>>,
    #[serde(default)]
    dim: Option<usize>,
    inputs: Vec<String>,
}

impl TryFrom<NodeWire> for GraphNode {
    type Error = String;

    fn try_from(w: NodeWire) -> std::result::Result<Self, String> {
        let op = match (w.op.as_str(), w.layer, w.dim) {
            ("layer", Some(layer), None) => NodeOp::Layer { layer },
            ("join", None, Some(dim)) => NodeOp::Join { dim },
            ("add", None, None) => NodeOp::Add,
            ("layer", _, _) => {
                return Err(format!("node {:?}: op layer takes `layer` only", w.name))
            }
            ("join", _, _) => return Err(format!("node {:?}: op join takes `dim` only", w.name)),
            ("add", _, _) => return Err(format!("node {:?}: op add takes no field", w.name)),
            (other, _, _) => {
                return Err(format!(
                    "node {:?}: unknown op {other:?} (layer, join, add)",
                    w.name
                ))
            }
        };
        Ok(GraphNode {
            name: w.name,
            op,
            inputs: w.inputs,
        })
    }
}

impl GraphNode {
    /// A node applying `layer` to `input`.
    pub fn layer(name: &str, layer: LayerConfig, input: &str) -> Self {
        GraphNode {
            name: name.into(),
            op: NodeOp::Layer {
                layer: Box::new(layer),
            },
            inputs: vec![input.into()],
        }
    }

    /// A node concatenating `inputs` along `dim`.
    pub fn join(name: &str, dim: usize, inputs: &[&str]) -> Self {
        GraphNode {
            name: name.into(),
            op: NodeOp::Join { dim },
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A node summing `inputs`.
    pub fn add(name: &str, inputs: &[&str]) -> Self {
        GraphNode {
            name: name.into(),
            op: NodeOp::Add,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The structure of a [`Graph`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Names of the graph's inputs, in the order `forward_many` takes them.
    pub inputs: Vec<String>,
    /// Nodes in topological order.
    pub nodes: Vec<GraphNode>,
    /// Names of the nodes (or inputs) whose values are the graph's outputs.
    pub outputs: Vec<String>,
}

impl GraphConfig {
    /// Validates names and order and builds the graph.
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Graph<F>> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, name) in self.inputs.iter().enumerate() {
            if index.insert(name, i).is_some() {
                return Err(Error::config("Graph", format!("duplicate name {name:?}")));
            }
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(Error::config(
                "Graph",
                "needs at least one input and one output",
            ));
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (k, node) in self.nodes.iter().enumerate() {
            let inputs = node
                .inputs
                .iter()
                .map(|n| {
                    index.get(n.as_str()).copied().ok_or_else(|| {
                        Error::config(
                            "Graph",
                            format!("node {:?} reads {n:?}, which is not a graph input or an earlier node", node.name),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let op = match &node.op {
                NodeOp::Layer { layer } => {
                    if inputs.len() != 1 {
                        return Err(Error::config(
                            "Graph",
                            format!("layer node {:?} needs exactly one input", node.name),
                        ));
                    }
                    RuntimeOp::Layer(layer.build(rng)?)
                }
                NodeOp::Join { dim } => RuntimeOp::Join(*dim),
                NodeOp::Add => RuntimeOp::Add,
            };
            if inputs.is_empty() {
                return Err(Error::config(
                    "Graph",
                    format!("node {:?} has no inputs", node.name),
                ));
            }
            if index.insert(&node.name, self.inputs.len() + k).is_some() {
                return Err(Error::config(
                    "Graph",
                    format!("duplicate name {:?}", node.name),
                ));
            }
            nodes.push(Node {
                name: node.name.clone(),
                op,
                inputs,
            });
        }
        let outputs =
            self.outputs
                .iter()
                .map(|n| {
                    index.get(n.as_str()).copied().ok_or_else(|| {
                        Error::config("Graph", format!("output {n:?} is not a node"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Graph {
            config: self.clone(),
            nodes,
            outputs,
            values: Vec::new(),
            join_sizes: HashMap::new(),
        })
    }
}

enum RuntimeOp<F: Float> {
    Layer(Box<dyn Module<F>>),
    Join(usize),
    Add,
}

struct Node<F: Float> {
    name: String,
    op: RuntimeOp<F>,
    inputs: Vec<usize>,
}

/// A DAG of modules. Values are numbered: graph inputs first, then one per
/// node. With one input and one output it is also a plain [`Module`].
pub struct Graph<F: Float> {
    config: GraphConfig,
    nodes: Vec<Node<F>>,
    outputs: Vec<usize>,
    values: Vec<Tensor<F>>,
    join_sizes: HashMap<usize, Vec<usize>>,
}

impl<F: Float> Graph<F> {
    fn n_inputs(&self) -> usize {
        self.config.inputs.len()
    }

    /// Runs the graph on its inputs (in `GraphConfig::inputs` order) and returns its outputs.
    pub fn forward_many(&mut self, inputs: &[Tensor<F>]) -> Result<Vec<Tensor<F>>> {
        if inputs.len() != self.n_inputs() {
            return Err(Error::invalid(
                "Graph",
                format!(
                    "{} inputs given, graph takes {}",
                    inputs.len(),
                    self.n_inputs()
                ),
            ));
        }
        let mut values: Vec<Tensor<F>> = inputs.to_vec();
        self.join_sizes.clear();
        for (k, node) in self.nodes.iter_mut().enumerate() {
            let args: Vec<&Tensor<F>> = node.inputs.iter().map(|&i| &values[i]).collect();
            let out = match &mut node.op {
                RuntimeOp::Layer(m) => m.forward(args[0]).map_err(|e| in_node(&node.name, e))?,
                RuntimeOp::Join(dim) => {
                    let sizes = args
                        .iter()
                        .map(|a| a.shape().get(*dim).copied().unwrap_or(0))
                        .collect();
                    self.join_sizes.insert(k, sizes);
                    join(&node.name, &args, *dim)?
                }
                RuntimeOp::Add => {
                    let mut acc = args[0].clone();
                    for a in &args[1..] {
                        expect_same_shape(&node.name, &acc, a)?;
                        acc += *a;
                    }
                    acc
                }
            };
            values.push(out);
        }
        let outs = self.outputs.iter().map(|&i| values[i].clone()).collect();
        self.values = values;
        Ok(outs)
    }

    /// Inference: [`Graph::forward_many`] without keeping anything for a
    /// backward pass. Each value is freed after its last reader, and a layer
    /// that is the last reader of its input gets it by value (an in-place
    /// ReLU), so peak memory is a few activations instead of all of them.
    /// A `backward_many` after it reports that no forward pass was made.
    pub fn infer_many(&mut self, inputs: Vec<Tensor<F>>) -> Result<Vec<Tensor<F>>> {
        let n_in = self.n_inputs();
        if inputs.len() != n_in {
            return Err(Error::invalid(
                "Graph",
                format!("{} inputs given, graph takes {n_in}", inputs.len()),
            ));
        }
        self.values.clear();
        self.join_sizes.clear();
        // the last node reading each value; outputs are read "after" every node
        let total = n_in + self.nodes.len();
        let mut last_use = vec![None::<usize>; total];
        for (k, node) in self.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = Some(k);
            }
        }
        for &o in &self.outputs {
            last_use[o] = Some(usize::MAX);
        }
        let mut values: Vec<Option<Tensor<F>>> = inputs.into_iter().map(Some).collect();
        values.resize(total, None);
        let missing = |name: &str| Error::invalid(name, "reads a value already freed");
        for (k, node) in self.nodes.iter_mut().enumerate() {
            let out = match &mut node.op {
                RuntimeOp::Layer(m) => {
                    let i = node.inputs[0];
                    let owned = if last_use[i] == Some(k) {
                        values[i].take()
                    } else {
                        values[i].clone()
                    };
                    let x = owned.ok_or_else(|| missing(&node.name))?;
                    m.infer(x).map_err(|e| in_node(&node.name, e))?
                }
                RuntimeOp::Join(dim) => {
                    let args = node
                        .inputs
                        .iter()
                        .map(|&i| values[i].as_ref().ok_or_else(|| missing(&node.name)))
                        .collect::<Result<Vec<_>>>()?;
                    join(&node.name, &args, *dim)?
                }
                RuntimeOp::Add => {
                    let first = values[node.inputs[0]]
                        .clone()
                        .ok_or_else(|| missing(&node.name))?;
                    let mut acc = first;
                    for &i in &node.inputs[1..] {
                        let a = values[i].as_ref().ok_or_else(|| missing(&node.name))?;
                        expect_same_shape(&node.name, &acc, a)?;
                        acc += a;
                    }
                    acc
                }
            };
            for &i in &node.inputs {
                if last_use[i] == Some(k) {
                    values[i] = None;
                }
            }
            values[n_in + k] = Some(out);
        }
        let mut outs = Vec::with_capacity(self.outputs.len());
        for &o in &self.outputs {
            let v = values[o].clone();
            outs.push(v.ok_or_else(|| Error::invalid("Graph", "an output was freed"))?);
        }
        Ok(outs)
    }

    /// Given one gradient per output, accumulates parameter gradients and
    /// returns one gradient per graph input.
    pub fn backward_many(&mut self, grad_outputs: &[Tensor<F>]) -> Result<Vec<Tensor<F>>> {
        let n_in = self.n_inputs();
        if self.values.len() != n_in + self.nodes.len() {
            return Err(Error::NoForward { op: "Graph".into() });
        }
        if grad_outputs.len() != self.outputs.len() {
            return Err(Error::invalid(
                "Graph backward",
                format!(
                    "{} gradients for {} outputs",
                    grad_outputs.len(),
                    self.outputs.len()
                ),
            ));
        }
        let mut grads: Vec<Option<Tensor<F>>> = vec![None; self.values.len()];
        for (&o, g) in self.outputs.iter().zip(grad_outputs) {
            expect_same_shape("Graph backward (output gradient)", &self.values[o], g)?;
            accumulate(&mut grads[o], g.clone());
        }
        for k in (0..self.nodes.len()).rev() {
            let Some(g) = grads[n_in + k].take() else {
                continue; // the node does not reach any output
            };
            let node = &mut self.nodes[k];
            match &mut node.op {
                RuntimeOp::Layer(m) => {
                    let i = node.inputs[0];
                    let gi = m
                        .backward(&self.values[i], &g)
                        .map_err(|e| in_node(&node.name, e))?;
                    accumulate(&mut grads[i], gi);
                }
                RuntimeOp::Join(dim) => {
                    let sizes = self.join_sizes.get(&k).cloned().unwrap_or_default();
                    let parts = split(&node.name, &g, *dim, &sizes)?;
                    for (&i, p) in node.inputs.iter().zip(parts) {
                        accumulate(&mut grads[i], p);
                    }
                }
                RuntimeOp::Add => {
                    for &i in &node.inputs {
                        accumulate(&mut grads[i], g.clone());
                    }
                }
            }
        }
        Ok((0..n_in)
            .map(|i| {
                grads[i]
                    .take()
                    .unwrap_or_else(|| Tensor::zeros(self.values[i].raw_dim()))
            })
            .collect())
    }
}

fn accumulate<F: Float>(slot: &mut Option<Tensor<F>>, g: Tensor<F>) {
    match slot {
        Some(t) => *t += &g,
        None => *slot = Some(g),
    }
}

fn in_node(node: &str, e: Error) -> Error {
    match e {
        Error::Shape {
            op,
            expected,
            actual,
        } => Error::Shape {
            op: format!("Graph node {node:?}: {op}"),
            expected,
            actual,
        },
        Error::ShapeMismatch { op, lhs, rhs } => Error::ShapeMismatch {
            op: format!("Graph node {node:?}: {op}"),
            lhs,
            rhs,
        },
        other => other,
    }
}

impl<F: Float> Module<F> for Graph<F> {
    fn name(&self) -> String {
        format!("Graph({} nodes)", self.nodes.len())
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        if self.outputs.len() != 1 {
            return Err(Error::invalid(
                self.name(),
                "used as a Module but has several outputs; call forward_many",
            ));
        }
        let mut outs = self.forward_many(std::slice::from_ref(input))?;
        outs.pop()
            .ok_or_else(|| Error::invalid("Graph", "no output"))
    }

    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        if self.outputs.len() != 1 {
            return Err(Error::invalid(
                self.name(),
                "used as a Module but has several outputs; call infer_many",
            ));
        }
        let mut outs = self.infer_many(vec![input])?;
        outs.pop()
            .ok_or_else(|| Error::invalid("Graph", "no output"))
    }

    fn backward(&mut self, _input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let mut g = self.backward_many(std::slice::from_ref(grad_output))?;
        g.pop().ok_or_else(|| Error::invalid("Graph", "no input"))
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        for n in &self.nodes {
            if let RuntimeOp::Layer(m) = &n.op {
                m.visit_params(&qualified(prefix, &n.name), f);
            }
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        for n in &mut self.nodes {
            if let RuntimeOp::Layer(m) = &mut n.op {
                m.visit_params_mut(&qualified(prefix, &n.name), f);
            }
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor<F>)) {
        for n in &self.nodes {
            if let RuntimeOp::Layer(m) = &n.op {
                m.visit_buffers(&qualified(prefix, &n.name), f);
            }
        }
    }

    fn visit_buffers_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor<F>)) {
        for n in &mut self.nodes {
            if let RuntimeOp::Layer(m) = &mut n.op {
                m.visit_buffers_mut(&qualified(prefix, &n.name), f);
            }
        }
    }

    fn set_training(&mut self, training: bool) {
        for n in &mut self.nodes {
            if let RuntimeOp::Layer(m) = &mut n.op {
                m.set_training(training);
            }
        }
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Graph(self.config.clone())
    }
}
