//! A model's layers as text lines (what `kiln model show` prints): each
//! layer's path, its configuration and its parameter count, read from the
//! [`LayerConfig`] tree.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::Result;
use crate::layers::{LayerConfig, NodeOp};
use crate::module::{qualified, ModuleExt};

/// One layer of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLine {
    /// Its path (`features.0`, a graph node's name).
    pub path: String,
    /// Nesting depth (0 for the model's own children).
    pub depth: usize,
    /// The layer's kind and settings, e.g. `conv2d(in_channels=1, …)`.
    pub description: String,
    /// Learnable scalars in this layer (containers: none of their own).
    pub params: usize,
}

/// The layers of `config`, depth first.
pub fn layer_lines(config: &LayerConfig) -> Result<Vec<LayerLine>> {
    let mut out = Vec::new();
    walk(config, "", 0, &mut out)?;
    Ok(out)
}

fn walk(config: &LayerConfig, path: &str, depth: usize, out: &mut Vec<LayerLine>) -> Result<()> {
    match config {
        LayerConfig::Sequential { layers } => {
            for (i, l) in layers.iter().enumerate() {
                walk(l, &qualified(path, &i.to_string()), depth, out)?;
            }
        }
        LayerConfig::Graph(g) => {
            for node in &g.nodes {
                let p = qualified(path, &node.name);
                match &node.op {
                    NodeOp::Layer { layer } => match layer.as_ref() {
                        LayerConfig::Sequential { .. } | LayerConfig::Graph(_) => {
                            out.push(LayerLine {
                                path: p.clone(),
                                depth,
                                description: format!(
                                    "{} of {}",
                                    kind(layer),
                                    node.inputs.join(", ")
                                ),
                                params: 0,
                            });
                            walk(layer, &p, depth + 1, out)?;
                        }
                        leaf => out.push(leaf_line(leaf, p, depth, Some(&node.inputs))?),
                    },
                    NodeOp::Join { dim } => out.push(LayerLine {
                        path: p,
                        depth,
                        description: format!("join(dim={dim}) of {}", node.inputs.join(", ")),
                        params: 0,
                    }),
                    NodeOp::Add => out.push(LayerLine {
                        path: p,
                        depth,
                        description: format!("add of {}", node.inputs.join(", ")),
                        params: 0,
                    }),
                }
            }
        }
        leaf => out.push(leaf_line(leaf, path.to_string(), depth, None)?),
    }
    Ok(())
}

/// The serde tag of a layer (`conv2d`).
fn kind(config: &LayerConfig) -> String {
    serde_json::to_value(config)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "layer".into())
}

fn leaf_line(
    config: &LayerConfig,
    path: String,
    depth: usize,
    inputs: Option<&[String]>,
) -> Result<LayerLine> {
    let mut fields = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(config) {
        for (k, v) in map {
            if k != "type" {
                fields.push(format!("{k}={v}"));
            }
        }
    }
    let mut description = format!("{}({})", kind(config), fields.join(", "));
    if let Some(inputs) = inputs {
        description.push_str(&format!(" of {}", inputs.join(", ")));
    }
    let params = config
        .build::<f32>(&mut StdRng::seed_from_u64(0))?
        .num_params();
    Ok(LayerLine {
        path,
        depth,
        description,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{GraphConfig, GraphNode, LinearConfig};

    #[test]
    fn graph_and_sequential_layers_are_listed_with_their_parameters() {
        let config = LayerConfig::Graph(GraphConfig {
            inputs: vec!["x".into()],
            nodes: vec![
                GraphNode::layer(
                    "body",
                    LayerConfig::Sequential {
                        layers: vec![
                            LayerConfig::Linear(LinearConfig::new(4, 3)),
                            LayerConfig::Tanh,
                        ],
                    },
                    "x",
                ),
                GraphNode::join("cat", 1, &["body", "x"]),
            ],
            outputs: vec!["cat".into()],
        });
        let lines = layer_lines(&config).unwrap();
        let text: Vec<String> = lines
            .iter()
            .map(|l| format!("{} {} {} {}", l.depth, l.path, l.description, l.params))
            .collect();
        assert_eq!(
            text,
            [
                "0 body sequential of x 0",
                "1 body.0 linear(bias=true, in_features=4, out_features=3) 15",
                "1 body.1 tanh() 0",
                "0 cat join(dim=1) of body, x 0",
            ]
        );
    }
}
