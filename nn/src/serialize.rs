//! Model files: weights and buffers as safetensors, with the model's
//! [`LayerConfig`] (JSON) in the safetensors metadata, so a file alone
//! rebuilds the model. Saving then loading gives bit-identical outputs.
//! Loading checks every tensor's name, shape and dtype and names the
//! offending tensor on any mismatch.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rand::rngs::StdRng;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{from_vec, Float, Tensor};

/// Metadata key holding the model's [`LayerConfig`] as JSON.
pub const CONFIG_KEY: &str = "kiln.model_config";
/// Metadata key holding the file format version.
pub const FORMAT_KEY: &str = "kiln.format";
/// The format version written by this crate.
pub const FORMAT_VERSION: &str = "kiln-nn/1";

/// All parameters and buffers of `model` by qualified name, in a fixed order.
pub fn named_tensors<F: Float>(model: &dyn Module<F>) -> Result<Vec<(String, Tensor<F>)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dup = None;
    model.visit_params("", &mut |name, p| {
        if !seen.insert(name.to_string()) {
            dup = Some(name.to_string());
        }
        out.push((name.to_string(), p.value.clone()));
    });
    model.visit_buffers("", &mut |name, t| {
        if !seen.insert(name.to_string()) {
            dup = Some(name.to_string());
        }
        out.push((name.to_string(), t.clone()));
    });
    match dup {
        Some(name) => Err(Error::Tensor {
            name,
            reason: "two tensors of the model share this name".into(),
        }),
        None => Ok(out),
    }
}

/// Serialises `model` (weights, buffers, config and `extra` metadata) to safetensors bytes.
pub fn to_bytes<F: Float>(
    model: &dyn Module<F>,
    extra: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let tensors = named_tensors(model)?;
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data: Vec<F> = t.iter().copied().collect();
            (name.clone(), t.shape().to_vec(), F::to_le_bytes_vec(&data))
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(F::DTYPE, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Tensor {
                    name: name.clone(),
                    reason: format!("cannot serialise: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = extra.clone();
    let config = serde_json::to_string(&model.config())
        .map_err(|e| Error::invalid("serialize", format!("model config: {e}")))?;
    meta.insert(CONFIG_KEY.into(), config);
    meta.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::invalid("serialize", e.to_string()))
}

/// Writes `model` to `path` atomically (a temporary file renamed into place).
pub fn save<F: Float>(
    model: &dyn Module<F>,
    path: &Path,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let bytes = to_bytes(model, extra)?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The metadata of a model file's bytes (`path` is only used in errors).
pub fn metadata_of(bytes: &[u8], path: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// The model configuration stored in a model file's bytes.
pub fn config_of(bytes: &[u8], path: &Path) -> Result<LayerConfig> {
    let meta = metadata_of(bytes, path)?;
    let json = meta.get(CONFIG_KEY).ok_or_else(|| {
        format_err(
            path,
            format!("no {CONFIG_KEY:?} metadata: not a kiln model file"),
        )
    })?;
    serde_json::from_str(json).map_err(|e| format_err(path, format!("bad model config: {e}")))
}

fn tensor_values<F: Float>(name: &str, view: &TensorView<'_>) -> Result<Vec<F>> {
    let bytes = view.data();
    let bad = || Error::Tensor {
        name: name.to_string(),
        reason: "data length does not match its dtype".into(),
    };
    match view.dtype() {
        Dtype::F32 => Ok(f32::from_le_bytes_vec(bytes)
            .ok_or_else(bad)?
            .into_iter()
            .map(|v| F::of(v as f64))
            .collect()),
        Dtype::F64 => Ok(f64::from_le_bytes_vec(bytes)
            .ok_or_else(bad)?
            .into_iter()
            .map(F::of)
            .collect()),
        other => Err(Error::Tensor {
            name: name.to_string(),
            reason: format!("dtype {other:?} is not supported (F32 or F64)"),
        }),
    }
}

/// Loads weights and buffers from safetensors bytes into `model`. Every
/// tensor of the model must be present with the same shape, and the file
/// may hold no other tensors; the model is left unchanged on error.
pub fn load_weights_from_bytes<F: Float>(
    model: &mut dyn Module<F>,
    bytes: &[u8],
    path: &Path,
) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
    let expected = named_tensors(&*model)?;
    let mut loaded: HashMap<String, Tensor<F>> = HashMap::new();
    for (name, want) in &expected {
        let view = st.tensor(name).map_err(|_| Error::Tensor {
            name: name.clone(),
            reason: format!("missing from {}", path.display()),
        })?;
        if view.shape() != want.shape() {
            return Err(Error::Tensor {
                name: name.clone(),
                reason: format!(
                    "shape {:?} in {} but the model has {:?}",
                    view.shape(),
                    path.display(),
                    want.shape()
                ),
            });
        }
        loaded.insert(
            name.clone(),
            from_vec(view.shape(), tensor_values(name, &view)?)?,
        );
    }
    if let Some(extra) = st.names().into_iter().find(|n| !loaded.contains_key(*n)) {
        return Err(Error::Tensor {
            name: extra.to_string(),
            reason: format!("in {} but not in the model", path.display()),
        });
    }
    model.visit_params_mut("", &mut |name, p| {
        if let Some(t) = loaded.remove(name) {
            p.value = t;
        }
    });
    model.visit_buffers_mut("", &mut |name, b| {
        if let Some(t) = loaded.remove(name) {
            *b = t;
        }
    });
    Ok(())
}

/// Loads weights from a model file into an existing model.
pub fn load_weights<F: Float>(model: &mut dyn Module<F>, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_weights_from_bytes(model, &bytes, path)
}

/// Rebuilds a model from a file: its stored config, then its weights.
pub fn load<F: Float>(path: &Path) -> Result<Box<dyn Module<F>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let config = config_of(&bytes, path)?;
    let mut model = config.build::<F>(&mut StdRng::seed_from_u64(0))?;
    load_weights_from_bytes(model.as_mut(), &bytes, path)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{LinearConfig, Sequential, Tanh};
    use crate::module::ModuleExt;

    fn model(seed: u64) -> Sequential<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Sequential::new()
            .with(LinearConfig::new(4, 3).init::<f32>(&mut rng).unwrap())
            .with(Tanh::default())
            .with(LinearConfig::new(3, 2).init::<f32>(&mut rng).unwrap())
    }

    #[test]
    fn save_then_load_gives_bit_identical_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut m = model(1);
        save(&m, &path, &HashMap::new()).unwrap();
        let mut loaded = load::<f32>(&path).unwrap();
        let x = crate::init::uniform::<f32>(&mut StdRng::seed_from_u64(5), &[7, 4], 2.0);
        let a = m.forward(&x).unwrap();
        let b = loaded.forward(&x).unwrap();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(m.flat_params(), loaded.flat_params());
    }

    #[test]
    fn wrong_shape_or_name_is_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save(&model(1), &path, &HashMap::new()).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let mut other = Sequential::<f32>::new()
            .with(LinearConfig::new(4, 5).init::<f32>(&mut rng).unwrap())
            .with(Tanh::default())
            .with(LinearConfig::new(5, 2).init::<f32>(&mut rng).unwrap());
        let before = other.flat_params();
        let err = load_weights(&mut other, &path).unwrap_err().to_string();
        assert!(
            err.contains("\"0.weight\"") && err.contains("[3, 4]") && err.contains("[5, 4]"),
            "{err}"
        );
        assert_eq!(
            before,
            other.flat_params(),
            "model must be unchanged on error"
        );

        let mut fewer =
            Sequential::<f32>::new().with(LinearConfig::new(4, 3).init::<f32>(&mut rng).unwrap());
        let err = load_weights(&mut fewer, &path).unwrap_err().to_string();
        assert!(err.contains("2.weight") || err.contains("2.bias"), "{err}");
    }

    #[test]
    fn garbage_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, b"not a model at all").unwrap();
        assert!(load::<f32>(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("m.safetensors"));
        let bytes = to_bytes(&model(2), &HashMap::new()).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load::<f32>(&path).is_err());
    }

    #[test]
    fn f32_file_loads_into_f64_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let m = model(3);
        save(&m, &path, &HashMap::new()).unwrap();
        let loaded = load::<f64>(&path).unwrap();
        let want: Vec<f64> = m.flat_params().iter().map(|&v| v as f64).collect();
        assert_eq!(want, loaded.flat_params());
    }
}
