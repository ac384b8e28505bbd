//! 2-D `MaxPool`, `AveragePool` and their global forms.

use kiln_nn::layers::{AvgPool2dConfig, LayerConfig, Pool2dConfig};

use super::conv::window_out;
use super::{check_auto_pad, sizes, symmetric_pads};
use crate::error::Result;
use crate::import::{Dynamic, Importer, NodeCtx};

fn four_d(n: &NodeCtx, x: &Dynamic) -> Result<()> {
    if x.rank() != 4 {
        return Err(n.unsupported(
            format!("input of rank {}", x.rank()),
            "Kiln pools 2-D images ([N, C, H, W])",
        ));
    }
    Ok(())
}

pub(super) fn pool(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    four_d(n, &x)?;
    if imp.output_used(n, 1) {
        return Err(n.unsupported(
            "output Indices",
            "Kiln's max pooling does not return indices",
        ));
    }
    check_auto_pad(n)?;
    let kernel = n
        .attrs
        .ints("kernel_shape")?
        .ok_or_else(|| n.invalid("attribute kernel_shape is missing"))?;
    let kernel = sizes(n, "kernel_shape", &kernel)?;
    let strides = n.attrs.ints("strides")?.unwrap_or(vec![1, 1]);
    let strides = sizes(n, "strides", &strides)?;
    let pads = n.attrs.ints("pads")?.unwrap_or(vec![0; 4]);
    let pads = symmetric_pads(n, &sizes(n, "pads", &pads)?, 2)?;
    let ceil_mode = n.attrs.int_or("ceil_mode", 0)? != 0;
    if let Some(d) = n.attrs.ints("dilations")? {
        if d.iter().any(|&v| v != 1) {
            return Err(n.unsupported(
                format!("attribute dilations = {d:?}"),
                "Kiln pools without dilation",
            ));
        }
    }
    if kernel.len() != 2 || strides.len() != 2 || kernel.contains(&0) || strides.contains(&0) {
        return Err(n.invalid(format!(
            "kernel {kernel:?} or strides {strides:?} are not two positive sizes"
        )));
    }
    let kernel_size = [kernel[0], kernel[1]];
    let stride = Some([strides[0], strides[1]]);
    let padding = [pads[0], pads[1]];
    let layer = if n.proto.op_type == "MaxPool" {
        n.attrs
            .expect_int("storage_order", 0, "only row-major indices")?;
        LayerConfig::MaxPool2d(Pool2dConfig {
            kernel_size,
            stride,
            padding,
            ceil_mode,
        })
    } else {
        let count_include_pad = n.attrs.int_or("count_include_pad", 0)? != 0;
        LayerConfig::AvgPool2d(AvgPool2dConfig {
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
            divisor_override: None,
        })
    };
    let shape = vec![
        x.shape[0],
        x.shape[1],
        window_out(x.shape[2], kernel[0], strides[0], pads[0], 1, ceil_mode),
        window_out(x.shape[3], kernel[1], strides[1], pads[1], 1, ceil_mode),
    ];
    super::shape::emit(imp, n, layer, &x, shape);
    Ok(())
}

pub(super) fn global_pool(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    four_d(n, &x)?;
    let (Some(h), Some(w)) = (x.shape[2], x.shape[3]) else {
        return Err(n.unsupported(
            format!("input of shape {:?}", x.shape),
            "Kiln needs the image size known at import time to pool globally",
        ));
    };
    let kernel_size = [h, w];
    let layer = if n.proto.op_type == "GlobalMaxPool" {
        LayerConfig::MaxPool2d(Pool2dConfig {
            kernel_size,
            stride: None,
            padding: [0, 0],
            ceil_mode: false,
        })
    } else {
        LayerConfig::AvgPool2d(AvgPool2dConfig {
            kernel_size,
            stride: None,
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        })
    };
    let shape = vec![x.shape[0], x.shape[1], Some(1), Some(1)];
    super::shape::emit(imp, n, layer, &x, shape);
    Ok(())
}
