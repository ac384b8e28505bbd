//! Layers other than containers and recurrent layers, to ONNX nodes.

use kiln_nn::layers::LayerConfig;

use kiln_nn::module::qualified;

use super::{attr_float, attr_int, attr_ints, Exporter, Out};
use crate::error::{Error, Result};

fn unsupported(prefix: &str, reason: impl Into<String>) -> Error {
    Error::Export {
        layer: prefix.to_string(),
        reason: reason.into(),
    }
}

/// A per-feature constant `[C]` aligned with dimension 1 of a rank-`rank`
/// input (`[C, 1, 1]` for images).
fn channel_shape(c: usize, rank: usize) -> Vec<usize> {
    let mut s = vec![c];
    s.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    s
}

pub(super) fn layer(ex: &mut Exporter, config: &LayerConfig, prefix: &str, x: Out) -> Result<Out> {
    let r = x.rank;
    let one = |ex: &mut Exporter, op: &str, attrs| {
        Ok(ex.op(op, std::slice::from_ref(&x.name), attrs, prefix, r))
    };
    match config {
        LayerConfig::Relu => one(ex, "Relu", Vec::new()),
        LayerConfig::Tanh => one(ex, "Tanh", Vec::new()),
        LayerConfig::Sigmoid => one(ex, "Sigmoid", Vec::new()),
        LayerConfig::LeakyRelu { negative_slope } => one(
            ex,
            "LeakyRelu",
            vec![attr_float("alpha", *negative_slope as f32)],
        ),
        LayerConfig::HardTanh { min_val, max_val } => {
            let lo = ex.init("min", &[], vec![*min_val as f32]);
            let hi = ex.init("max", &[], vec![*max_val as f32]);
            Ok(ex.op("Clip", &[x.name.clone(), lo, hi], Vec::new(), prefix, r))
        }
        LayerConfig::SoftMax { dim } => one(ex, "Softmax", vec![attr_int("axis", *dim as i64)]),
        LayerConfig::LogSoftMax { dim } => {
            one(ex, "LogSoftmax", vec![attr_int("axis", *dim as i64)])
        }
        LayerConfig::Identity | LayerConfig::Dropout(_) => Ok(x),
        LayerConfig::Flatten { start_dim } => {
            if *start_dim == 1 {
                Ok(ex.op(
                    "Flatten",
                    std::slice::from_ref(&x.name),
                    vec![attr_int("axis", 1)],
                    prefix,
                    2,
                ))
            } else {
                let mut shape = vec![0i64; *start_dim];
                shape.push(-1);
                let s = ex.init_ints("shape", &shape);
                Ok(ex.op(
                    "Reshape",
                    &[x.name.clone(), s],
                    Vec::new(),
                    prefix,
                    start_dim + 1,
                ))
            }
        }
        LayerConfig::Reshape { shape } => {
            // Kiln keeps the first dimension: ONNX's 0 copies it.
            let mut target = vec![0i64];
            target.extend(shape.iter().map(|&d| d as i64));
            let s = ex.init_ints("shape", &target);
            Ok(ex.op(
                "Reshape",
                &[x.name.clone(), s],
                Vec::new(),
                prefix,
                target.len(),
            ))
        }
        LayerConfig::Transpose { dim0, dim1 } => {
            if *dim0 >= r || *dim1 >= r {
                return Err(unsupported(
                    prefix,
                    format!("transpose of {dim0} and {dim1} on rank {r}"),
                ));
            }
            let mut perm: Vec<i64> = (0..r as i64).collect();
            perm.swap(*dim0, *dim1);
            one(ex, "Transpose", vec![attr_ints("perm", &perm)])
        }
        LayerConfig::Linear(c) => {
            let w = ex.tensor(prefix, "weight")?;
            let wt = crate::constant::transpose2(
                &w.iter().copied().collect::<Vec<_>>(),
                c.out_features,
                c.in_features,
            );
            let w = ex.init(
                &qualified(prefix, "weight"),
                &[c.in_features, c.out_features],
                wt,
            );
            let y = ex.op("MatMul", &[x.name.clone(), w], Vec::new(), prefix, r);
            if c.bias {
                let b = ex.param(prefix, "bias", Some(&[c.out_features]))?;
                Ok(ex.op("Add", &[y.name, b], Vec::new(), prefix, r))
            } else {
                Ok(y)
            }
        }
        LayerConfig::Conv2d(c) => {
            let attrs = vec![
                attr_ints(
                    "kernel_shape",
                    &[c.kernel_size[0] as i64, c.kernel_size[1] as i64],
                ),
                attr_ints("strides", &[c.stride[0] as i64, c.stride[1] as i64]),
                attr_ints("dilations", &[c.dilation[0] as i64, c.dilation[1] as i64]),
                attr_ints(
                    "pads",
                    &[
                        c.padding[0] as i64,
                        c.padding[1] as i64,
                        c.padding[0] as i64,
                        c.padding[1] as i64,
                    ],
                ),
                attr_int("group", c.groups as i64),
            ];
            conv(ex, prefix, x, c.bias, attrs)
        }
        LayerConfig::Conv1d(c) => {
            let attrs = vec![
                attr_ints("kernel_shape", &[c.kernel_size as i64]),
                attr_ints("strides", &[c.stride as i64]),
                attr_ints("dilations", &[c.dilation as i64]),
                attr_ints("pads", &[c.padding as i64, c.padding as i64]),
                attr_int("group", c.groups as i64),
            ];
            conv(ex, prefix, x, c.bias, attrs)
        }
        LayerConfig::MaxPool2d(c) => {
            let attrs = pool_attrs(c.kernel_size, c.stride, c.padding, c.ceil_mode);
            one(ex, "MaxPool", attrs)
        }
        LayerConfig::AvgPool2d(c) => {
            if c.divisor_override.is_some() {
                return Err(unsupported(
                    prefix,
                    "average pooling with divisor_override has no ONNX form",
                ));
            }
            let mut attrs = pool_attrs(c.kernel_size, c.stride, c.padding, c.ceil_mode);
            attrs.push(attr_int("count_include_pad", c.count_include_pad as i64));
            one(ex, "AveragePool", attrs)
        }
        LayerConfig::BatchNorm(c) => {
            let n = c.num_features;
            let (w, b) = affine(ex, prefix, c)?;
            let mean = ex.tensor(prefix, "running_mean")?.iter().copied().collect();
            let var = ex.tensor(prefix, "running_var")?.iter().copied().collect();
            let inputs = vec![
                x.name.clone(),
                ex.init(&qualified(prefix, "weight"), &[n], w),
                ex.init(&qualified(prefix, "bias"), &[n], b),
                ex.init(&qualified(prefix, "running_mean"), &[n], mean),
                ex.init(&qualified(prefix, "running_var"), &[n], var),
            ];
            Ok(ex.op(
                "BatchNormalization",
                &inputs,
                vec![
                    attr_float("epsilon", c.eps as f32),
                    attr_float("momentum", (1.0 - c.momentum) as f32),
                ],
                prefix,
                r,
            ))
        }
        LayerConfig::SequenceBatchNorm(c) => {
            // Inference: x * scale + shift over the last (feature) dimension.
            let n = c.num_features;
            let mean: Vec<f32> = ex.tensor(prefix, "running_mean")?.iter().copied().collect();
            let var: Vec<f32> = ex.tensor(prefix, "running_var")?.iter().copied().collect();
            let (w, b) = affine(ex, prefix, c)?;
            let scale: Vec<f32> = (0..n)
                .map(|i| w[i] / (var[i] + c.eps as f32).sqrt())
                .collect();
            let shift: Vec<f32> = (0..n).map(|i| b[i] - mean[i] * scale[i]).collect();
            let s = ex.init(&qualified(prefix, "scale"), &[n], scale);
            let t = ex.init(&qualified(prefix, "shift"), &[n], shift);
            let y = ex.op("Mul", &[x.name.clone(), s], Vec::new(), prefix, r);
            Ok(ex.op("Add", &[y.name, t], Vec::new(), prefix, r))
        }
        LayerConfig::Normalize(c) => {
            // x / sqrt(sum_c x^2 + eps) * weight[c]
            let sq = ex.op(
                "Mul",
                &[x.name.clone(), x.name.clone()],
                Vec::new(),
                prefix,
                r,
            );
            let axes = ex.init_ints("axes", &[1]);
            let sum = ex.op(
                "ReduceSum",
                &[sq.name, axes],
                vec![attr_int("keepdims", 1)],
                prefix,
                r,
            );
            let eps = ex.init("eps", &[], vec![c.eps as f32]);
            let sum = ex.op("Add", &[sum.name, eps], Vec::new(), prefix, r);
            let norm = ex.op("Sqrt", &[sum.name], Vec::new(), prefix, r);
            let y = ex.op("Div", &[x.name.clone(), norm.name], Vec::new(), prefix, r);
            let w = ex.param(prefix, "weight", Some(&channel_shape(c.channels, r)))?;
            Ok(ex.op("Mul", &[y.name, w], Vec::new(), prefix, r))
        }
        LayerConfig::CAdd { shape } => {
            let b = ex.param(prefix, "bias", Some(shape))?;
            Ok(ex.op("Add", &[x.name.clone(), b], Vec::new(), prefix, r))
        }
        LayerConfig::CMul { shape } => {
            let w = ex.param(prefix, "weight", Some(shape))?;
            Ok(ex.op("Mul", &[x.name.clone(), w], Vec::new(), prefix, r))
        }
        LayerConfig::Scale { shape } => {
            let w = ex.param(prefix, "weight", Some(shape))?;
            let b = ex.param(prefix, "bias", Some(shape))?;
            let y = ex.op("Mul", &[x.name.clone(), w], Vec::new(), prefix, r);
            Ok(ex.op("Add", &[y.name, b], Vec::new(), prefix, r))
        }
        LayerConfig::TimeDistributed { inner } => {
            // The layers Kiln puts inside act on the last dimension, which
            // ONNX's MatMul and elementwise operators broadcast over.
            if !per_step(inner) {
                return Err(unsupported(
                    prefix,
                    "time-distributed layers other than linear, elementwise and sequential ones",
                ));
            }
            ex.layer(inner, prefix, x)
        }
        other => Err(unsupported(
            prefix,
            format!(
                "{} has no ONNX export",
                serde_json::to_string(other).unwrap_or_default()
            ),
        )),
    }
}

/// Whether a layer acts on the last dimension only (so it can run on
/// `[T, N, F]` without flattening the time steps).
fn per_step(config: &LayerConfig) -> bool {
    match config {
        LayerConfig::Linear(_)
        | LayerConfig::Relu
        | LayerConfig::Tanh
        | LayerConfig::Sigmoid
        | LayerConfig::LeakyRelu { .. }
        | LayerConfig::HardTanh { .. }
        | LayerConfig::Identity
        | LayerConfig::Dropout(_) => true,
        LayerConfig::Sequential { layers } => layers.iter().all(per_step),
        _ => false,
    }
}

/// A batch norm's scale and shift (ones and zeros when not affine).
fn affine(
    ex: &Exporter,
    prefix: &str,
    c: &kiln_nn::layers::BatchNormConfig,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if !c.affine {
        return Ok((vec![1.0; c.num_features], vec![0.0; c.num_features]));
    }
    Ok((
        ex.tensor(prefix, "weight")?.iter().copied().collect(),
        ex.tensor(prefix, "bias")?.iter().copied().collect(),
    ))
}

fn pads2(p: [usize; 2]) -> Vec<i64> {
    vec![p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]
}

/// The attributes 2-D max and average pooling share.
fn pool_attrs(
    kernel: [usize; 2],
    stride: Option<[usize; 2]>,
    padding: [usize; 2],
    ceil_mode: bool,
) -> Vec<onnx_protobuf::AttributeProto> {
    let stride = stride.unwrap_or(kernel);
    vec![
        attr_ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
        attr_ints("strides", &[stride[0] as i64, stride[1] as i64]),
        attr_ints("pads", &pads2(padding)),
        attr_int("ceil_mode", ceil_mode as i64),
    ]
}

fn conv(
    ex: &mut Exporter,
    prefix: &str,
    x: Out,
    bias: bool,
    attrs: Vec<onnx_protobuf::AttributeProto>,
) -> Result<Out> {
    let mut inputs = vec![x.name.clone(), ex.param(prefix, "weight", None)?];
    if bias {
        inputs.push(ex.param(prefix, "bias", None)?);
    }
    Ok(ex.op("Conv", &inputs, attrs, prefix, x.rank))
}
