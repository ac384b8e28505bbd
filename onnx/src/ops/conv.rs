//! `Conv` (1-D and 2-D, with groups, dilation and symmetric padding) to
//! Kiln's `Conv1d` and `Conv2d`.

use kiln_nn::layers::{Conv1dConfig, Conv2dConfig, LayerConfig};

use super::{check_auto_pad, sizes, symmetric_pads};
use crate::error::Result;
use crate::import::{Importer, NodeCtx};

/// Output size of a convolution or pooling window along one dimension.
pub(crate) fn window_out(
    input: Option<usize>,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input? + 2 * pad;
    if padded < span {
        return None;
    }
    let steps = padded - span;
    let mut out = if ceil {
        steps.div_ceil(stride)
    } else {
        steps / stride
    } + 1;
    // As PyTorch and ONNX: a ceil-mode window must start inside the input
    // or its left padding.
    if ceil && (out - 1) * stride >= input? + pad {
        out -= 1;
    }
    Some(out)
}

pub(super) fn conv(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let w = imp.required_constant(n, 1)?;
    let b = imp.constant(n, 2)?;
    let spatial = x.rank().saturating_sub(2);
    if !(1..=2).contains(&spatial) || w.shape.len() != spatial + 2 {
        return Err(n.unsupported(
            format!(
                "input of rank {} with a weight of shape {:?}",
                x.rank(),
                w.shape
            ),
            "Kiln imports 1-D and 2-D convolutions",
        ));
    }
    check_auto_pad(n)?;
    let groups = n.attrs.int_or("group", 1)?;
    let groups = sizes(n, "group", &[groups])?[0];
    let kernel = w.shape[2..].to_vec();
    if let Some(k) = n.attrs.ints("kernel_shape")? {
        if sizes(n, "kernel_shape", &k)? != kernel {
            return Err(n.invalid(format!(
                "kernel_shape {k:?} does not match the weight's {:?}",
                w.shape
            )));
        }
    }
    let ones = vec![1i64; spatial];
    let strides = n.attrs.ints("strides")?.unwrap_or_else(|| ones.clone());
    let strides = sizes(n, "strides", &strides)?;
    let dilations = n.attrs.ints("dilations")?.unwrap_or(ones);
    let dilations = sizes(n, "dilations", &dilations)?;
    let pads = n
        .attrs
        .ints("pads")?
        .unwrap_or_else(|| vec![0; 2 * spatial]);
    let pads = symmetric_pads(n, &sizes(n, "pads", &pads)?, spatial)?;
    if strides.len() != spatial
        || dilations.len() != spatial
        || strides.contains(&0)
        || dilations.contains(&0)
    {
        return Err(n.invalid(format!("strides {strides:?} or dilations {dilations:?} do not fit {spatial} spatial dimensions")));
    }
    let out_channels = w.shape[0];
    let in_channels = w.shape[1] * groups;
    if let Some(c) = x.shape[1] {
        if c != in_channels {
            return Err(n.invalid(format!(
                "input has {c} channels but the weight {:?} with {groups} groups takes {in_channels}",
                w.shape
            )));
        }
    }
    if let Some(b) = &b {
        if b.shape != [out_channels] {
            return Err(n.invalid(format!(
                "bias of shape {:?} for {out_channels} output channels",
                b.shape
            )));
        }
    }
    let layer = if spatial == 2 {
        LayerConfig::Conv2d(Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size: [kernel[0], kernel[1]],
            stride: [strides[0], strides[1]],
            padding: [pads[0], pads[1]],
            dilation: [dilations[0], dilations[1]],
            groups,
            bias: b.is_some(),
        })
    } else {
        LayerConfig::Conv1d(Conv1dConfig {
            in_channels,
            out_channels,
            kernel_size: kernel[0],
            stride: strides[0],
            padding: pads[0],
            dilation: dilations[0],
            groups,
            bias: b.is_some(),
        })
    };
    let mut shape = vec![x.shape[0], Some(out_channels)];
    for d in 0..spatial {
        shape.push(window_out(
            x.shape[2 + d],
            kernel[d],
            strides[d],
            pads[d],
            dilations[d],
            false,
        ));
    }
    let mut tensors = vec![("weight", w.to_tensor("weight")?)];
    if let Some(b) = b {
        tensors.push(("bias", b.to_tensor("bias")?));
    }
    let name = imp.node_name(n, Some(1));
    imp.emit(n, name, layer, &x, tensors, shape);
    Ok(())
}
