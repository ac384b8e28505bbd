//! Containers: [`Sequential`], [`Concat`], [`ConcatTable`] and the
//! multi-branch [`Graph`].

mod concat;
mod graph;
mod sequential;

pub use concat::{Concat, ConcatTable};
pub use graph::{Graph, GraphConfig, GraphNode, NodeOp};
pub use sequential::Sequential;

use ndarray::{Axis, Slice};

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Concatenates tensors along `dim`; all other dimensions must agree.
pub fn join<F: Float>(op: &str, parts: &[&Tensor<F>], dim: usize) -> Result<Tensor<F>> {
    let Some(first) = parts.first() else {
        return Err(Error::invalid(op, "nothing to concatenate"));
    };
    if dim >= first.ndim() {
        return Err(Error::shape(
            op,
            format!("tensors with a dimension {dim}"),
            first.shape(),
        ));
    }
    for p in parts {
        let same = p.ndim() == first.ndim()
            && p.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same {
            return Err(Error::ShapeMismatch {
                op: format!("{op}: concatenate along {dim}"),
                lhs: first.shape().to_vec(),
                rhs: p.shape().to_vec(),
            });
        }
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(dim), &views)
        .map_err(|e| Error::invalid(op, format!("concatenate: {e}")))
}

/// Splits `t` along `dim` into pieces of the given sizes (the inverse of [`join`]).
pub fn split<F: Float>(
    op: &str,
    t: &Tensor<F>,
    dim: usize,
    sizes: &[usize],
) -> Result<Vec<Tensor<F>>> {
    if dim >= t.ndim() || sizes.iter().sum::<usize>() != t.shape()[dim] {
        return Err(Error::shape(
            op,
            format!("dimension {dim} of size {}", sizes.iter().sum::<usize>()),
            t.shape(),
        ));
    }
    let mut start = 0usize;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        out.push(
            t.slice_axis(Axis(dim), Slice::from(start..start + s))
                .to_owned(),
        );
        start += s;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::layers::{LayerConfig, LinearConfig};
    use crate::module::{Module, ModuleExt};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn input(shape: &[usize]) -> Tensor<f64> {
        crate::init::uniform(&mut StdRng::seed_from_u64(11), shape, 1.0)
    }

    /// x -> a = tanh(L1 x), b = L2 x; out = join(a, b + a) along features.
    fn two_branch_graph() -> GraphConfig {
        GraphConfig {
            inputs: vec!["x".into()],
            nodes: vec![
                GraphNode::layer("l1", LayerConfig::Linear(LinearConfig::new(4, 3)), "x"),
                GraphNode::layer("a", LayerConfig::Tanh, "l1"),
                GraphNode::layer("b", LayerConfig::Linear(LinearConfig::new(4, 3)), "x"),
                GraphNode::add("sum", &["b", "a"]),
                GraphNode::join("out", 1, &["a", "sum"]),
            ],
            outputs: vec!["out".into()],
        }
    }

    #[test]
    fn graph_with_shared_inputs_join_and_add_passes_gradcheck() {
        let mut g = two_branch_graph()
            .init::<f64>(&mut StdRng::seed_from_u64(1))
            .unwrap();
        let x = input(&[5, 4]);
        assert_eq!(g.forward(&x).unwrap().shape(), &[5, 6]);
        let names: Vec<String> = g.param_layout().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["l1.weight", "l1.bias", "b.weight", "b.bias"]);
        check_module(&mut g, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();
    }

    #[test]
    fn graph_with_several_outputs_and_an_unused_node() {
        let cfg = GraphConfig {
            inputs: vec!["x".into(), "y".into()],
            nodes: vec![
                GraphNode::layer("lx", LayerConfig::Linear(LinearConfig::new(2, 2)), "x"),
                GraphNode::layer("unused", LayerConfig::Linear(LinearConfig::new(2, 2)), "y"),
                GraphNode::add("s", &["lx", "y"]),
            ],
            outputs: vec!["s".into(), "lx".into()],
        };
        let mut g = cfg.init::<f64>(&mut StdRng::seed_from_u64(2)).unwrap();
        let (x, y) = (input(&[3, 2]), input(&[3, 2]).mapv(|v| v * 2.0));
        let outs = g.forward_many(&[x.clone(), y.clone()]).unwrap();
        assert_eq!(outs.len(), 2);
        let ones = Tensor::from_elem(ndarray::IxDyn(&[3, 2]), 1.0);
        g.zero_grad();
        let grads = g.backward_many(&[ones.clone(), ones.clone()]).unwrap();
        // ds/dy = 1 (the unused branch contributes nothing)
        assert!(grads[1].iter().all(|&v| (v - 1.0).abs() < 1e-12));
        let mut unused_grad = 0.0;
        g.visit_params("", &mut |n, p| {
            if n.starts_with("unused") {
                unused_grad += p.grad.iter().map(|v| v.abs()).sum::<f64>();
            }
        });
        assert_eq!(unused_grad, 0.0);
        // as a plain Module a multi-output graph is refused
        assert!(g.forward(&x).is_err());
    }

    /// `infer_many` = `forward_many`, though ReLUs overwrite inputs that no
    /// later node or output reads and values are freed after their last use.
    #[test]
    fn graph_inference_matches_forward_and_keeps_shared_values_intact() {
        let cfg = GraphConfig {
            inputs: vec!["x".into(), "y".into()],
            nodes: vec![
                GraphNode::layer("lx", LayerConfig::Linear(LinearConfig::new(2, 2)), "x"),
                // lx is also an output and read by `s`: relu must not touch it
                GraphNode::layer("r", LayerConfig::Relu, "lx"),
                // r's last reader: may be overwritten in place
                GraphNode::layer("rr", LayerConfig::Relu, "r"),
                GraphNode::add("s", &["rr", "y", "lx"]),
                GraphNode::layer("unused", LayerConfig::Relu, "y"),
                GraphNode::join("j", 1, &["s", "x"]),
            ],
            outputs: vec!["j".into(), "lx".into()],
        };
        let mut g = cfg.init::<f64>(&mut StdRng::seed_from_u64(3)).unwrap();
        let x = input(&[6, 2]) * 4.0;
        let y = input(&[6, 2]).mapv(|v| v - 0.5);
        let want = g.forward_many(&[x.clone(), y.clone()]).unwrap();
        assert!(
            want[1].iter().any(|&v| v < 0.0),
            "the test needs negative values"
        );
        let got = g.infer_many(vec![x, y]).unwrap();
        assert_eq!(got, want);
        // nothing kept for backward
        let ones = [want[0].mapv(|_| 1.0), want[1].mapv(|_| 1.0)];
        assert!(matches!(
            g.backward_many(&ones),
            Err(crate::Error::NoForward { .. })
        ));
        assert!(g.infer_many(vec![input(&[6, 2])]).is_err(), "input count");
    }

    #[test]
    fn graph_config_errors_name_the_node() {
        let mut cfg = two_branch_graph();
        cfg.nodes[1].inputs = vec!["nope".into()];
        let err = cfg
            .init::<f64>(&mut StdRng::seed_from_u64(0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"a\"") && err.contains("nope"), "{err}");
        let mut cfg = two_branch_graph();
        cfg.nodes[4].name = "l1".into();
        assert!(cfg.init::<f64>(&mut StdRng::seed_from_u64(0)).is_err());
        // a shape error inside a node names it
        let mut g = two_branch_graph()
            .init::<f64>(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let err = g.forward(&input(&[2, 5])).unwrap_err().to_string();
        assert!(err.contains("\"l1\"") && err.contains("[2, 5]"), "{err}");
    }

    #[test]
    fn graph_round_trips_through_json_config() {
        let cfg = LayerConfig::Graph(two_branch_graph());
        let json = serde_json::to_string(&cfg).unwrap();
        let back: LayerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cfg, back);
        let m = back.build::<f32>(&mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(m.config(), cfg);
    }

    #[test]
    fn concat_and_concat_table_pass_gradcheck() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut c = Concat::new(1)
            .with(LinearConfig::new(3, 2).init::<f64>(&mut rng).unwrap())
            .with(crate::layers::Tanh::default());
        let x = input(&[4, 3]);
        assert_eq!(c.forward(&x).unwrap().shape(), &[4, 5]);
        check_module(&mut c, &x, 1e-6)
            .unwrap()
            .within(1e-6)
            .unwrap();

        let mut t = ConcatTable::new()
            .with(LinearConfig::new(3, 2).init::<f64>(&mut rng).unwrap())
            .with(crate::layers::Identity);
        let outs = t.forward_table(&x).unwrap();
        assert_eq!(outs.len(), 2);
        let g = t
            .backward_table(
                &x,
                &[
                    Tensor::zeros(ndarray::IxDyn(&[4, 2])),
                    Tensor::from_elem(ndarray::IxDyn(&[4, 3]), 1.0),
                ],
            )
            .unwrap();
        assert!(
            g.iter().all(|&v| (v - 1.0).abs() < 1e-12),
            "identity branch passes its gradient through"
        );
        assert!(t
            .backward_table(&x, &[Tensor::zeros(ndarray::IxDyn(&[4, 2]))])
            .is_err());
    }

    #[test]
    fn sequential_errors_name_the_position() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut s = Sequential::new()
            .with(LinearConfig::new(3, 4).init::<f64>(&mut rng).unwrap())
            .with(LinearConfig::new(5, 2).init::<f64>(&mut rng).unwrap());
        let err = s.forward(&input(&[2, 3])).unwrap_err().to_string();
        assert!(
            err.contains("Sequential.1") && err.contains("Linear(5->2)") && err.contains("[2, 4]"),
            "{err}"
        );
        let mut fresh = Sequential::<f64>::new()
            .with(LinearConfig::new(3, 4).init::<f64>(&mut rng).unwrap())
            .with(crate::layers::Tanh::default());
        assert!(
            fresh.backward(&input(&[2, 3]), &input(&[2, 4])).is_err(),
            "backward before forward"
        );
    }
}
