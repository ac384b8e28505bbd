//! `BatchNormalization` (inference form, with its running statistics) and
//! `Dropout` (kept as a layer, so fine-tuning drops out as the original did).

use kiln_nn::layers::{BatchNormConfig, DropoutConfig, LayerConfig};

use crate::error::Result;
use crate::import::{Importer, NodeCtx};

pub(super) fn batch_norm(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    let eps = n.attrs.float_or("epsilon", 1e-5)?;
    // ONNX's momentum weighs the old running value; Kiln's (PyTorch's) the new batch.
    let momentum = n.attrs.float_or("momentum", 0.9)?;
    n.attrs.expect_int(
        "training_mode",
        0,
        "Kiln imports batch norm in inference form",
    )?;
    if n.proto.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(n.unsupported(
            "outputs running_mean/running_var",
            "training-mode outputs are not supported",
        ));
    }
    if x.rank() < 2 {
        return Err(n.invalid(format!(
            "input of rank {} has no channel dimension",
            x.rank()
        )));
    }
    let stats: Vec<_> = (1..=4)
        .map(|i| imp.required_constant(n, i))
        .collect::<Result<_>>()?;
    let channels = stats[0].len();
    if let Some(s) = stats.iter().find(|s| s.shape != [channels]) {
        return Err(n.invalid(format!(
            "scale, bias, mean and variance must all be [{channels}], found {:?}",
            s.shape
        )));
    }
    if x.shape[1].is_some_and(|c| c != channels) {
        return Err(n.invalid(format!("input {:?} has not {channels} channels", x.shape)));
    }
    if !(eps.is_finite() && eps > 0.0 && (0.0..=1.0).contains(&momentum)) {
        return Err(n.invalid(format!("epsilon {eps} or momentum {momentum} out of range")));
    }
    let layer = LayerConfig::BatchNorm(BatchNormConfig {
        num_features: channels,
        eps: eps as f64,
        momentum: 1.0 - momentum as f64,
        affine: true,
    });
    let tensors = vec![
        ("weight", stats[0].to_tensor("scale")?),
        ("bias", stats[1].to_tensor("B")?),
        ("running_mean", stats[2].to_tensor("input_mean")?),
        ("running_var", stats[3].to_tensor("input_var")?),
    ];
    let name = imp.node_name(n, Some(1));
    imp.emit(n, name, layer, &x, tensors, x.shape.clone());
    Ok(())
}

pub(super) fn dropout(imp: &mut Importer, n: &mut NodeCtx) -> Result<()> {
    let x = imp.dynamic(n, 0)?;
    n.attrs.int("seed")?;
    let ratio = match imp.constant(n, 1)? {
        Some(c) if c.len() == 1 => c.as_floats()[0],
        Some(c) => return Err(n.invalid(format!("ratio of shape {:?} is not a scalar", c.shape))),
        None => 0.5,
    };
    if let Some(t) = imp.constant(n, 2)? {
        if t.as_ints().is_some_and(|v| v.iter().any(|&b| b != 0)) {
            return Err(n.unsupported(
                "input training_mode = true",
                "Kiln imports models for inference",
            ));
        }
    }
    if imp.output_used(n, 1) {
        return Err(n.unsupported("output mask", "Kiln's dropout does not return its mask"));
    }
    if !(0.0..1.0).contains(&ratio) {
        return Err(n.invalid(format!("ratio {ratio} is outside [0, 1)")));
    }
    let name = imp.node_name(n, None);
    let layer = LayerConfig::Dropout(DropoutConfig::new(ratio as f64));
    imp.emit(n, name, layer, &x, Vec::new(), x.shape.clone());
    Ok(())
}
