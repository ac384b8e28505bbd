//! Elementwise activations and (log-)softmax.

use kiln_nn::layers::LayerConfig;

use crate::error::Result;
use crate::import::{Importer, NodeCtx, Value};

pub(super) fn activation(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let layer = match n.proto.op_type.as_str() {
        "Relu" => LayerConfig::Relu,
        "Tanh" => LayerConfig::Tanh,
        "Sigmoid" => LayerConfig::Sigmoid,
        "LeakyRelu" => LayerConfig::LeakyRelu {
            negative_slope: n.attrs.float_or("alpha", 0.01)? as f64,
        },
        "Softmax" | "LogSoftmax" => {
            let axis = n.attrs.int_or("axis", -1)?;
            let dim = super::resolve_axis(n, axis, x.rank())? as isize;
            if n.proto.op_type == "Softmax" {
                LayerConfig::SoftMax { dim }
            } else {
                LayerConfig::LogSoftMax { dim }
            }
        }
        _ => {
            // Clip: bounds are optional constant inputs (opset 11+).
            let bound = |i: usize| -> Result<Option<f64>> {
                match imp.constant(n, i)? {
                    None => Ok(None),
                    Some(c) if c.len() == 1 => Ok(Some(c.as_floats()[0] as f64)),
                    Some(c) => {
                        Err(n.invalid(format!("bound {i} has shape {:?}, not a scalar", c.shape)))
                    }
                }
            };
            let min = bound(1)?.unwrap_or(f64::NEG_INFINITY);
            let max = bound(2)?.unwrap_or(f64::INFINITY);
            if min.is_nan() || max.is_nan() || min > max {
                return Err(n.invalid(format!("bounds [{min}, {max}] are not an interval")));
            }
            if min == f64::NEG_INFINITY && max == f64::INFINITY {
                // No bounds: the identity.
                imp.set_output(n, 0, Value::Tensor(x));
                return Ok(());
            }
            if min == 0.0 && max == f64::INFINITY {
                LayerConfig::Relu
            } else if min == max {
                return Err(n.unsupported(
                    format!("bounds [{min}, {max}]"),
                    "a clip to one value is a constant",
                ));
            } else {
                // A missing bound is the largest f32 (model files are JSON,
                // which has no infinity).
                let big = f32::MAX as f64;
                LayerConfig::HardTanh {
                    min_val: min.max(-big),
                    max_val: max.min(big),
                }
            }
        }
    };
    let name = imp.node_name(n, None);
    imp.emit(n, name, layer, &x, Vec::new(), x.shape.clone());
    Ok(())
}
