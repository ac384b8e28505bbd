//! SSD models as kiln-nn [`Graph`]s: a backbone (VGG16 for SSD300/SSD512,
//! or the small CPU-friendly one), and per source feature map a 3x3 `loc`
//! conv (`A·4` channels) and a 3x3 `conf` conv (`A·classes` channels),
//! permuted to NHWC, flattened and concatenated into `loc` `[N, P, 4]` and
//! `conf` `[N, P, classes]` in exactly the prior order of
//! [`PriorBoxConfig::priors`] (feature map, cell row-major, prior in cell).
//!
//! The [`SsdConfig`] is stored as JSON in the model file's metadata (beside
//! the graph's own config), so [`Ssd::load`] rebuilds the model from the file.

use std::collections::HashMap;
use std::path::Path;

use kiln_nn::layers::{Conv2dConfig, Graph, GraphConfig, GraphNode, LayerConfig};
use kiln_nn::{serialize, Float, Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::augment::VOC_MEAN_RGB;
use crate::boxes::Prior;
use crate::error::{Error, Result};
use crate::priors::PriorBoxConfig;

mod builder;
mod small;
mod vgg;

pub use small::{SmallBackbone, MAX_SOURCE_DEPTH, MAX_STAGES, MAX_WIDTH};

use builder::Source;

/// Smallest input side of the small backbone, in pixels (its fourth
/// source still has a 1x1 map).
pub const MIN_IMAGE_SIZE: usize = 32;
/// Largest input side, in pixels (a 2048x2048 RGB batch of 16 is already
/// 800 MB of f32 before any activation).
pub const MAX_IMAGE_SIZE: usize = 2048;

/// Metadata key of the [`SsdConfig`] JSON in a model file.
pub const SSD_CONFIG_KEY: &str = "kiln.ssd_config";

/// The feature extractor in front of the heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backbone {
    /// VGG16 with SSD300's extra layers (conv8–conv11).
    Vgg16Ssd300,
    /// VGG16 with SSD512's extra layers (conv8–conv12).
    Vgg16Ssd512,
    /// The small CPU-friendly backbone.
    Small(SmallBackbone),
}

/// A whole SSD model's structure: backbone, classes and priors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdConfig {
    /// The backbone.
    pub backbone: Backbone,
    /// Foreground class names; the model has `classes.len() + 1` outputs
    /// per prior (label 0 is background).
    pub classes: Vec<String>,
    /// Prior boxes; their feature maps must match the backbone's sources.
    pub priors: PriorBoxConfig,
    /// Per-channel RGB mean subtracted from inputs (values in `0..=255`).
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
}

fn default_mean() -> [f32; 3] {
    VOC_MEAN_RGB
}

impl SsdConfig {
    /// SSD300 on VGG16 (8,732 priors).
    pub fn ssd300(classes: Vec<String>) -> Self {
        Self::with(Backbone::Vgg16Ssd300, classes, PriorBoxConfig::ssd300())
    }

    /// SSD512 on VGG16 (24,564 priors).
    pub fn ssd512(classes: Vec<String>) -> Self {
        Self::with(Backbone::Vgg16Ssd512, classes, PriorBoxConfig::ssd512())
    }

    /// The small backbone on 300-pixel inputs with [`PriorBoxConfig::small`]
    /// (maps 38/19/10, 7,620 priors).
    pub fn small(classes: Vec<String>) -> Self {
        let backbone = Backbone::Small(SmallBackbone::default());
        Self::with(backbone, classes, PriorBoxConfig::small())
    }

    /// The plain small SSD of the PyTorch reference step
    /// (`../shared/anchors/ssd_step.py`, benchmarked by `benches/detection`):
    /// [`SmallBackbone::plain`] (conv3x3+ReLU 32/64/128 with 2x2 pools, then
    /// 256-channel sources at strides 8, 16, 32, no batch norm) with
    /// [`PriorBoxConfig::small`] on 300-pixel inputs: maps 38/19/10, 7,620
    /// priors, 2,260,076 parameters with 21 classes. The reference pools in
    /// floor mode but the last; on 300 and 150 floor and ceil agree.
    pub fn small_plain(classes: Vec<String>) -> Self {
        let backbone = Backbone::Small(SmallBackbone::plain());
        Self::with(backbone, classes, PriorBoxConfig::small())
    }

    /// The small backbone on 128-pixel inputs with [`PriorBoxConfig::tiny`]
    /// (maps 16/8/4/2, 1,360 priors): the configuration that trains on a CPU
    /// in minutes.
    pub fn tiny(classes: Vec<String>) -> Self {
        let backbone = Backbone::Small(SmallBackbone::default());
        Self::with(backbone, classes, PriorBoxConfig::tiny())
    }

    /// The configuration recorded in an SSD model file's bytes (`path`
    /// names them in errors), without building the model.
    pub fn of_model_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let meta = serialize::metadata_of(bytes, path)?;
        let json = meta.get(SSD_CONFIG_KEY).ok_or_else(|| Error::Json {
            what: format!("{}", path.display()),
            reason: format!("no {SSD_CONFIG_KEY:?} metadata: not an SSD model file"),
        })?;
        serde_json::from_str(json).map_err(|e| Error::Json {
            what: format!("{}: SsdConfig", path.display()),
            reason: e.to_string(),
        })
    }

    /// A preset by name: `ssd300`, `ssd512`, `small` or `tiny`.
    pub fn preset(name: &str, classes: Vec<String>) -> Result<Self> {
        match name {
            "ssd300" => Ok(Self::ssd300(classes)),
            "ssd512" => Ok(Self::ssd512(classes)),
            "small" => Ok(Self::small(classes)),
            "tiny" => Ok(Self::tiny(classes)),
            other => Err(Error::config(
                "SsdConfig",
                format!("unknown preset {other:?} (ssd300, ssd512, small, tiny)"),
            )),
        }
    }

    /// This configuration on `image_size`-pixel inputs (small backbone
    /// only; `image_size` in `[32, 2048]`, any value: the backbone pools in
    /// ceil mode): the feature maps follow the backbone, the priors keep
    /// their share of the image ([`PriorBoxConfig::resized`]).
    pub fn with_image_size(mut self, image_size: usize) -> Result<Self> {
        let Backbone::Small(b) = &self.backbone else {
            return Err(Error::config(
                "SsdConfig",
                "another input size needs the small backbone (presets tiny and small); VGG16 SSD is 300 or 512",
            ));
        };
        kiln_nn::bounds::check("image_size", image_size, MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE)
            .map_err(|e| Error::range("SsdConfig", e))?;
        let maps = b.feature_map_sizes(image_size, self.priors.feature_maps.len());
        self.priors = self.priors.resized(image_size, &maps)?;
        Ok(self)
    }

    fn with(backbone: Backbone, classes: Vec<String>, priors: PriorBoxConfig) -> Self {
        SsdConfig {
            backbone,
            classes,
            priors,
            mean: VOC_MEAN_RGB,
        }
    }

    /// Classes including background.
    pub fn num_classes(&self) -> usize {
        self.classes.len() + 1
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.priors.image_size
    }

    /// The graph: input `image` `[N, 3, S, S]`, outputs `loc` and `conf`.
    /// Fails when the backbone's feature maps differ from the priors'.
    pub fn graph(&self) -> Result<GraphConfig> {
        self.priors.validate()?;
        if self.classes.is_empty() {
            return Err(Error::config("SsdConfig", "needs at least one class"));
        }
        let size = self.image_size();
        let maps = self.priors.feature_maps.len();
        let (b, sources) = match &self.backbone {
            Backbone::Vgg16Ssd300 => vgg::vgg16("image", size, false),
            Backbone::Vgg16Ssd512 => vgg::vgg16("image", size, true),
            Backbone::Small(s) => {
                s.validate()?;
                s.build("image", size, maps)
            }
        };
        let want: Vec<usize> = self.priors.feature_maps.iter().map(|f| f.size).collect();
        let got: Vec<usize> = sources.iter().map(|s| s.size).collect();
        if want != got {
            return Err(Error::config(
                "SsdConfig",
                format!(
                    "the backbone on {size}-pixel inputs gives feature maps {got:?} but the priors expect {want:?}"
                ),
            ));
        }
        let mut nodes = b.nodes;
        heads(
            &mut nodes,
            &sources,
            &self.priors.priors_per_cell(),
            self.num_classes(),
        );
        Ok(GraphConfig {
            inputs: vec!["image".into()],
            nodes,
            outputs: vec!["loc".into(), "conf".into()],
        })
    }
}

/// Appends the loc/conf heads and the two concatenations.
fn heads(nodes: &mut Vec<GraphNode>, sources: &[Source], per_cell: &[usize], classes: usize) {
    let mut locs = Vec::with_capacity(sources.len());
    let mut confs = Vec::with_capacity(sources.len());
    for (k, (src, &a)) in sources.iter().zip(per_cell).enumerate() {
        for (kind, width, list) in [("loc", 4, &mut locs), ("conf", classes, &mut confs)] {
            let conv = format!("{kind}{k}");
            let cfg = Conv2dConfig::new(src.channels, a * width, [3, 3]).with_padding([1, 1]);
            nodes.push(GraphNode::layer(&conv, LayerConfig::Conv2d(cfg), &src.node));
            // NCHW -> NHWC -> [N, H·W·A, width]: prior (i·W + j)·A + a.
            let flat = format!("{kind}{k}_flat");
            let to_rows = LayerConfig::Sequential {
                layers: vec![
                    LayerConfig::Transpose { dim0: 1, dim1: 2 },
                    LayerConfig::Transpose { dim0: 2, dim1: 3 },
                    LayerConfig::Reshape {
                        shape: vec![-1, width as isize],
                    },
                ],
            };
            nodes.push(GraphNode::layer(&flat, to_rows, &conv));
            list.push(flat);
        }
    }
    let locs: Vec<&str> = locs.iter().map(String::as_str).collect();
    let confs: Vec<&str> = confs.iter().map(String::as_str).collect();
    nodes.push(GraphNode::join("loc", 1, &locs));
    nodes.push(GraphNode::join("conf", 1, &confs));
}

/// The two outputs of an SSD forward pass.
#[derive(Debug, Clone)]
pub struct SsdOutput<F: Float> {
    /// Encoded box offsets, `[N, P, 4]`.
    pub loc: Tensor<F>,
    /// Class logits, `[N, P, classes]` (background first).
    pub conf: Tensor<F>,
}

/// An SSD model: its config, graph and priors.
pub struct Ssd<F: Float> {
    config: SsdConfig,
    graph: Graph<F>,
    priors: Vec<Prior>,
}

impl<F: Float> Ssd<F> {
    /// A freshly initialised model.
    pub fn new(config: SsdConfig, rng: &mut StdRng) -> Result<Self> {
        let graph = config.graph()?.init::<F>(rng)?;
        let priors = config.priors.priors()?;
        Ok(Ssd {
            config,
            graph,
            priors,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SsdConfig {
        &self.config
    }

    /// The priors, in output order.
    pub fn priors(&self) -> &[Prior] {
        &self.priors
    }

    /// The underlying graph (parameters, flat buffers, train/eval mode).
    pub fn graph(&self) -> &Graph<F> {
        &self.graph
    }

    /// The underlying graph, mutably.
    pub fn graph_mut(&mut self) -> &mut Graph<F> {
        &mut self.graph
    }

    /// Switches batch norm between training and evaluation behaviour.
    pub fn set_training(&mut self, training: bool) {
        self.graph.set_training(training);
    }

    /// Runs the model on `images` `[N, 3, S, S]` (mean already subtracted).
    pub fn forward(&mut self, images: &Tensor<F>) -> Result<SsdOutput<F>> {
        self.check_images("Ssd::forward", images)?;
        let outs = self.graph.forward_many(std::slice::from_ref(images))?;
        into_output("Ssd::forward", outs)
    }

    /// Inference on `images` `[N, 3, S, S]` (mean already subtracted): the
    /// same outputs as [`Ssd::forward`], keeping nothing for a backward pass
    /// (each activation is freed after its last reader, ReLUs work in place).
    pub fn infer(&mut self, images: Tensor<F>) -> Result<SsdOutput<F>> {
        self.check_images("Ssd::infer", &images)?;
        let outs = self.graph.infer_many(vec![images])?;
        into_output("Ssd::infer", outs)
    }

    fn check_images(&self, op: &str, images: &Tensor<F>) -> Result<()> {
        let s = self.config.image_size();
        if images.ndim() != 4 || images.shape()[1..] != [3, s, s] {
            return Err(Error::shape(
                op,
                format!("[N, 3, {s}, {s}]"),
                images.shape(),
            ));
        }
        Ok(())
    }

    /// Back-propagates the gradients of the loss w.r.t. the last forward's
    /// `loc` and `conf`, accumulating parameter gradients.
    pub fn backward(&mut self, grad_loc: Tensor<F>, grad_conf: Tensor<F>) -> Result<()> {
        self.graph.backward_many(&[grad_loc, grad_conf])?;
        Ok(())
    }

    /// Writes the model (weights, batch-norm statistics, graph config and
    /// [`SsdConfig`]) to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(&self.config).map_err(|e| Error::Json {
            what: "SsdConfig".into(),
            reason: e.to_string(),
        })?;
        let extra = HashMap::from([(SSD_CONFIG_KEY.to_string(), json)]);
        serialize::save(&self.graph, path, &extra)?;
        Ok(())
    }

    /// Loads a model written by [`Ssd::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let config = SsdConfig::of_model_bytes(&bytes, path)?;
        let mut model = Ssd::new(config, &mut StdRng::seed_from_u64(0))?;
        serialize::load_weights_from_bytes(&mut model.graph, &bytes, path)?;
        Ok(model)
    }
}

/// The graph's two outputs, `[loc, conf]`, as an [`SsdOutput`].
fn into_output<F: Float>(op: &str, mut outs: Vec<Tensor<F>>) -> Result<SsdOutput<F>> {
    let (Some(conf), Some(loc)) = (outs.pop(), outs.pop()) else {
        return Err(Error::invalid(op, "the graph lost an output"));
    };
    Ok(SsdOutput { loc, conf })
}

#[cfg(test)]
pub(crate) mod tests;
