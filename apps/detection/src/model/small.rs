//! The small CPU-friendly backbone: a few narrow conv stages (3x3, batch
//! norm, ReLU, 2x2 max pool in ceil mode), one more conv at stride 8 giving
//! the first source, then one stride-2 3x3 conv per further source; with
//! `source_depth` above 1 each source gets that many 3x3 convs (the first
//! one strided), which widens the context every source sees at little cost
//! (they run on the small maps). With 128-pixel inputs it gives 16/8/4/2
//! maps; with 300, 38/19/10/….

use kiln_nn::bounds::check;
use serde::{Deserialize, Serialize};

use super::builder::{Builder, Source};
use crate::error::{Error, Result};

/// Most pooled stages of the small backbone.
pub const MAX_STAGES: usize = 8;
/// Widest stage or source, in channels.
pub const MAX_WIDTH: usize = 4096;
/// Most 3x3 convs per source.
pub const MAX_SOURCE_DEPTH: usize = 16;

/// Widths of the small backbone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallBackbone {
    /// Channels of each pooled stage (three stages give stride 8).
    pub stages: Vec<usize>,
    /// Channels of the first source conv and of every extra source.
    pub source_channels: usize,
    /// Batch normalisation after every conv (trains fast from scratch).
    pub batch_norm: bool,
    /// 3x3 convs per source (at least 1): the first is strided (but for the
    /// first source), the others keep the map's size. Left out of the JSON
    /// when 1, so model files and checkpoint settings written before this
    /// setting existed read, and compare, as 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub source_depth: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for SmallBackbone {
    /// Stages 16/32/64, 96-channel sources, batch norm.
    fn default() -> Self {
        SmallBackbone {
            stages: vec![16, 32, 64],
            source_channels: 96,
            batch_norm: true,
            source_depth: 1,
        }
    }
}

impl SmallBackbone {
    /// Stages 32/64/128, 256-channel sources, no batch norm: the backbone
    /// of the plain small SSD ([`crate::model::SsdConfig::small_plain`]).
    pub fn plain() -> Self {
        SmallBackbone {
            stages: vec![32, 64, 128],
            source_channels: 256,
            batch_norm: false,
            source_depth: 1,
        }
    }

    /// Checks the widths and depths: 1 to [`MAX_STAGES`] stages, every
    /// width in `[1, MAX_WIDTH]`, `source_depth` in `[1, MAX_SOURCE_DEPTH]`.
    pub fn validate(&self) -> Result<()> {
        let r = |e| Error::range("SmallBackbone", e);
        check(
            "stages (number of stages)",
            self.stages.len(),
            1..=MAX_STAGES,
        )
        .map_err(r)?;
        for (i, &w) in self.stages.iter().enumerate() {
            check(&format!("stages[{i}]"), w, 1..=MAX_WIDTH).map_err(r)?;
        }
        check("source_channels", self.source_channels, 1..=MAX_WIDTH).map_err(r)?;
        check("source_depth", self.source_depth, 1..=MAX_SOURCE_DEPTH).map_err(r)?;
        Ok(())
    }

    /// Sizes of the `num_sources` feature maps on `image_size`-pixel inputs.
    pub fn feature_map_sizes(&self, image_size: usize, num_sources: usize) -> Vec<usize> {
        let (_, sources) = self.build("image", image_size, num_sources);
        sources.iter().map(|s| s.size).collect()
    }

    /// Appends the backbone after `input` (RGB of side `image_size`) with
    /// `num_sources` head sources.
    pub(crate) fn build(
        &self,
        input: &str,
        image_size: usize,
        num_sources: usize,
    ) -> (Builder, Vec<Source>) {
        let mut b = Builder::new(input, 3, image_size);
        let block = |b: &mut Builder, name: &str, out: usize, stride: usize| {
            b.conv(name, out, 3, stride, 1, 1);
            if self.batch_norm {
                b.batch_norm(&format!("bn_{name}"));
            }
            b.relu(&format!("relu_{name}"));
        };
        for (i, &w) in self.stages.iter().enumerate() {
            block(&mut b, &format!("conv{}", i + 1), w, 1);
            b.max_pool(&format!("pool{}", i + 1), 2, 2, 0, true);
        }
        let mut sources = Vec::with_capacity(num_sources);
        for k in 0..num_sources {
            let stride = if k == 0 { 1 } else { 2 };
            block(&mut b, &format!("src{k}"), self.source_channels, stride);
            for d in 1..self.source_depth {
                block(&mut b, &format!("src{k}_{d}"), self.source_channels, 1);
            }
            sources.push(b.source());
        }
        (b, sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_map_sizes() {
        let (_, s) = SmallBackbone::default().build("image", 128, 4);
        let sizes: Vec<_> = s.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [16, 8, 4, 2]);
        let (_, s) = SmallBackbone::default().build("image", 300, 3);
        let sizes: Vec<_> = s.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [38, 19, 10]);
        assert!(s.iter().all(|s| s.channels == 96));
    }

    #[test]
    fn deeper_sources_keep_the_map_sizes_and_add_convs() {
        let deep = SmallBackbone {
            source_depth: 3,
            ..SmallBackbone::default()
        };
        let (b1, s1) = SmallBackbone::default().build("image", 128, 4);
        let (b3, s3) = deep.build("image", 128, 4);
        let sizes = |s: &[Source]| s.iter().map(|s| s.size).collect::<Vec<_>>();
        assert_eq!(sizes(&s1), sizes(&s3));
        // Two more conv + batch norm + ReLU blocks per source.
        assert_eq!(b3.nodes.len(), b1.nodes.len() + 4 * 2 * 3);
        assert_eq!(s3[1].node, "relu_src1_2");
        assert!(deep.validate().is_ok());
    }

    #[test]
    fn invalid_widths_and_depths_are_refused() {
        for bad in [
            SmallBackbone {
                source_depth: 0,
                ..SmallBackbone::default()
            },
            SmallBackbone {
                stages: vec![],
                ..SmallBackbone::default()
            },
            SmallBackbone {
                source_channels: 0,
                ..SmallBackbone::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_without_a_source_depth_read_as_one() {
        let old = r#"{"stages": [32, 64, 128], "source_channels": 128, "batch_norm": true}"#;
        let b: SmallBackbone = serde_json::from_str(old).unwrap();
        assert_eq!(b.source_depth, 1);
        // ... and one of depth 1 writes the same JSON as before.
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(
            json,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );
        let deep = SmallBackbone {
            source_depth: 2,
            ..b
        };
        let back: SmallBackbone =
            serde_json::from_str(&serde_json::to_string(&deep).unwrap()).unwrap();
        assert_eq!(back, deep);
    }
}
