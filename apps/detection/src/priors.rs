//! SSD prior (default) boxes, as ssd.pytorch's `PriorBox`.

use serde::{Deserialize, Serialize};

use crate::boxes::{Prior, DEFAULT_VARIANCES};
use crate::error::{Error, Result};

/// The priors of one feature map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureMapSpec {
    /// Feature map size (square, `size x size` cells).
    pub size: usize,
    /// Step in input pixels between cell centres; `None` means
    /// `image_size / size` (centres at `(j + 0.5) / size`).
    pub step: Option<f32>,
    /// Smallest prior side, in input pixels.
    pub min_size: f32,
    /// With `Some(max)`, an extra square prior of side `sqrt(min * max)`.
    pub max_size: Option<f32>,
    /// Aspect ratios besides 1 (each also flipped to `1/r` when `flip`).
    pub aspect_ratios: Vec<f32>,
}

impl FeatureMapSpec {
    /// Priors per cell: 1, +1 with a max size, +1 or +2 (flip) per ratio.
    pub fn priors_per_cell(&self, flip: bool) -> usize {
        1 + usize::from(self.max_size.is_some())
            + self.aspect_ratios.len() * if flip { 2 } else { 1 }
    }
}

/// A prior-box configuration for a whole SSD model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorBoxConfig {
    /// Input image side in pixels (square inputs).
    pub image_size: usize,
    /// One entry per source feature map, in head order.
    pub feature_maps: Vec<FeatureMapSpec>,
    /// Add `1/r` for every aspect ratio `r`.
    pub flip: bool,
    /// Clamp `(cx, cy, w, h)` to `[0, 1]` (as ssd.pytorch).
    pub clip: bool,
    /// Encoding variances `[cx, cy, w, h]`.
    pub variances: [f32; 4],
}

fn spec(size: usize, step: f32, min: f32, max: f32, ratios: &[f32]) -> FeatureMapSpec {
    FeatureMapSpec {
        size,
        step: Some(step),
        min_size: min,
        max_size: Some(max),
        aspect_ratios: ratios.to_vec(),
    }
}

impl PriorBoxConfig {
    /// SSD300 for VOC (ssd.pytorch's `voc` config): 8,732 priors.
    pub fn ssd300() -> Self {
        let maps = [38, 19, 10, 5, 3, 1];
        let steps = [8.0, 16.0, 32.0, 64.0, 100.0, 300.0];
        let mins = [30.0, 60.0, 111.0, 162.0, 213.0, 264.0];
        let maxs = [60.0, 111.0, 162.0, 213.0, 264.0, 315.0];
        let ratios: [&[f32]; 6] = [
            &[2.0],
            &[2.0, 3.0],
            &[2.0, 3.0],
            &[2.0, 3.0],
            &[2.0],
            &[2.0],
        ];
        PriorBoxConfig {
            image_size: 300,
            feature_maps: (0..6)
                .map(|k| spec(maps[k], steps[k], mins[k], maxs[k], ratios[k]))
                .collect(),
            flip: true,
            clip: true,
            variances: DEFAULT_VARIANCES,
        }
    }

    /// SSD512 for VOC (the original Caffe `ssd_pascal_512.py` sizes): 24,564 priors.
    pub fn ssd512() -> Self {
        let maps = [64, 32, 16, 8, 4, 2, 1];
        let steps = [8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let mins = [20.48, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8];
        let maxs = [51.2, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6];
        let ratios: [&[f32]; 7] = [
            &[2.0],
            &[2.0, 3.0],
            &[2.0, 3.0],
            &[2.0, 3.0],
            &[2.0, 3.0],
            &[2.0],
            &[2.0],
        ];
        PriorBoxConfig {
            image_size: 512,
            feature_maps: (0..7)
                .map(|k| spec(maps[k], steps[k], mins[k], maxs[k], ratios[k]))
                .collect(),
            flip: true,
            clip: true,
            variances: DEFAULT_VARIANCES,
        }
    }

    /// The small CPU-friendly configuration of `ssd_step.py`: 300x300 input,
    /// maps 38/19/10, scales 0.1, 0.35, 0.6 (next 0.85), 4 priors per cell
    /// (ratio 1, the `sqrt(s_k s_k+1)` square, ratio 2 and 1/2): 7,620 priors.
    pub fn small() -> Self {
        let maps = [38, 19, 10];
        let scales = [0.1f32, 0.35, 0.6, 0.85];
        PriorBoxConfig {
            image_size: 300,
            feature_maps: (0..3)
                .map(|k| FeatureMapSpec {
                    size: maps[k],
                    step: None,
                    min_size: scales[k] * 300.0,
                    max_size: Some(scales[k + 1] * 300.0),
                    aspect_ratios: vec![2.0],
                })
                .collect(),
            flip: true,
            clip: true,
            variances: DEFAULT_VARIANCES,
        }
    }

    /// The CPU-friendly 128x128 configuration used by [`crate::model::SsdConfig::tiny`]
    /// (sized for the synthetic shapes data, objects 7–80% of the image):
    /// maps 16/8/4/2, scales 0.08, 0.2, 0.4, 0.65 (next 0.9), 4 priors per
    /// cell as [`PriorBoxConfig::small`]: 1,360 priors.
    pub fn tiny() -> Self {
        let maps = [16, 8, 4, 2];
        let scales = [0.08f32, 0.2, 0.4, 0.65, 0.9];
        PriorBoxConfig {
            image_size: 128,
            feature_maps: (0..4)
                .map(|k| FeatureMapSpec {
                    size: maps[k],
                    step: None,
                    min_size: scales[k] * 128.0,
                    max_size: Some(scales[k + 1] * 128.0),
                    aspect_ratios: vec![2.0],
                })
                .collect(),
            flip: true,
            clip: true,
            variances: DEFAULT_VARIANCES,
        }
    }

    /// The same priors for `image_size`-pixel inputs whose backbone gives
    /// feature maps `maps` (one per map of this config): min and max sizes
    /// keep their share of the image, explicit steps become
    /// `image_size / map`.
    pub fn resized(&self, image_size: usize, maps: &[usize]) -> Result<Self> {
        self.validate()?;
        if maps.len() != self.feature_maps.len() || image_size == 0 {
            return Err(Error::config(
                "PriorBoxConfig",
                format!(
                    "resizing {} feature maps to {image_size} pixels needs {} map sizes, got {maps:?}",
                    self.feature_maps.len(),
                    self.feature_maps.len()
                ),
            ));
        }
        let scale = image_size as f32 / self.image_size as f32;
        let feature_maps = self
            .feature_maps
            .iter()
            .zip(maps)
            .map(|(f, &size)| FeatureMapSpec {
                size,
                step: f.step.map(|_| image_size as f32 / size.max(1) as f32),
                min_size: f.min_size * scale,
                max_size: f.max_size.map(|m| m * scale),
                aspect_ratios: f.aspect_ratios.clone(),
            })
            .collect();
        let resized = PriorBoxConfig {
            image_size,
            feature_maps,
            ..self.clone()
        };
        resized.validate()?;
        Ok(resized)
    }

    /// Checks sizes and ratios are positive.
    pub fn validate(&self) -> Result<()> {
        let what = "PriorBoxConfig";
        if self.image_size == 0 || self.feature_maps.is_empty() {
            return Err(Error::config(
                what,
                "image size and feature maps must be non-empty",
            ));
        }
        kiln_nn::bounds::check(
            "image_size",
            self.image_size,
            1..=crate::model::MAX_IMAGE_SIZE,
        )
        .map_err(|e| Error::range(what, e))?;
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !self.variances.iter().all(|&v| positive(v)) {
            return Err(Error::config(
                what,
                format!("variances {:?} must be finite and positive", self.variances),
            ));
        }
        for (k, f) in self.feature_maps.iter().enumerate() {
            let ok = f.size > 0
                && f.size <= self.image_size
                && f.step.is_none_or(positive)
                && positive(f.min_size)
                && f.max_size.is_none_or(positive)
                && f.aspect_ratios.iter().all(|&r| positive(r));
            if !ok {
                return Err(Error::config(
                    what,
                    format!("feature map {k}: sizes, step and ratios must be positive: {f:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Priors per cell for each feature map (the heads' `A`).
    pub fn priors_per_cell(&self) -> Vec<usize> {
        self.feature_maps
            .iter()
            .map(|f| f.priors_per_cell(self.flip))
            .collect()
    }

    /// Total prior count.
    pub fn num_priors(&self) -> usize {
        self.feature_maps
            .iter()
            .map(|f| f.size * f.size * f.priors_per_cell(self.flip))
            .sum()
    }

    /// All priors, feature map by feature map, row-major over cells, and per
    /// cell in ssd.pytorch's order: min square, max square, then each ratio
    /// `r` as `(s sqrt r, s / sqrt r)` followed by its flip.
    pub fn priors(&self) -> Result<Vec<Prior>> {
        self.validate()?;
        let img = self.image_size as f32;
        let mut out = Vec::with_capacity(self.num_priors());
        for f in &self.feature_maps {
            let f_k = match f.step {
                Some(s) => img / s,
                None => f.size as f32,
            };
            let s_k = f.min_size / img;
            let s_max = f.max_size.map(|m| (s_k * (m / img)).sqrt());
            for i in 0..f.size {
                for j in 0..f.size {
                    let cx = (j as f32 + 0.5) / f_k;
                    let cy = (i as f32 + 0.5) / f_k;
                    let mut push = |w: f32, h: f32| out.push(Prior { cx, cy, w, h });
                    push(s_k, s_k);
                    if let Some(s) = s_max {
                        push(s, s);
                    }
                    for &r in &f.aspect_ratios {
                        let q = r.sqrt();
                        push(s_k * q, s_k / q);
                        if self.flip {
                            push(s_k / q, s_k * q);
                        }
                    }
                }
            }
        }
        if self.clip {
            for p in &mut out {
                p.cx = p.cx.clamp(0.0, 1.0);
                p.cy = p.cy.clamp(0.0, 1.0);
                p.w = p.w.clamp(0.0, 1.0);
                p.h = p.h.clamp(0.0, 1.0);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn resizing_keeps_shares_and_checks_its_inputs() {
        let t = PriorBoxConfig::tiny();
        let r = t.resized(256, &[32, 16, 8, 4]).unwrap();
        assert_eq!(r.num_priors(), 4 * t.num_priors());
        assert!(close(
            r.feature_maps[2].min_size,
            2.0 * t.feature_maps[2].min_size
        ));
        assert!(t.resized(256, &[32, 16, 8]).is_err());
        assert!(t.resized(0, &[1, 1, 1, 1]).is_err());
        let broken = PriorBoxConfig { image_size: 0, ..t };
        assert!(broken.resized(256, &[32, 16, 8, 4]).is_err());
    }

    #[test]
    fn prior_counts() {
        assert_eq!(PriorBoxConfig::ssd300().priors().unwrap().len(), 8732);
        assert_eq!(PriorBoxConfig::ssd512().priors().unwrap().len(), 24564);
        assert_eq!(PriorBoxConfig::small().priors().unwrap().len(), 7620);
        assert_eq!(
            PriorBoxConfig::ssd300().priors_per_cell(),
            vec![4, 6, 6, 6, 4, 4]
        );
        assert_eq!(PriorBoxConfig::small().num_priors(), 7620);
        assert_eq!(PriorBoxConfig::tiny().priors().unwrap().len(), 1360);
    }

    #[test]
    fn ssd300_hand_values() {
        let p = PriorBoxConfig::ssd300().priors().unwrap();
        // First cell of conv4_3: f_k = 300 / 8 = 37.5, centre 0.5 / 37.5.
        let c = 0.5 / 37.5;
        assert!(close(p[0].cx, c) && close(p[0].cy, c) && close(p[0].w, 0.1));
        assert!(close(p[1].w, (0.1f32 * 0.2).sqrt()));
        assert!(close(p[2].w, 0.1 * 2f32.sqrt()) && close(p[2].h, 0.1 / 2f32.sqrt()));
        assert!(close(p[3].w, 0.1 / 2f32.sqrt()) && close(p[3].h, 0.1 * 2f32.sqrt()));
        // Last prior: the 1x1 map, ratio 1/2 at s = 264/300 (w = 0.88/sqrt2, h clipped to 1).
        let last = p[p.len() - 1];
        assert!(close(last.cx, 0.5) && close(last.w, 0.88 / 2f32.sqrt()) && close(last.h, 1.0));
    }

    #[test]
    fn small_matches_ssd_step() {
        let p = PriorBoxConfig::small().priors().unwrap();
        // ssd_step.py: cell (i=0, j=1) of the 38 map: cx = 1.5/38, s = 0.1, s2 = sqrt(0.035).
        let q = &p[4..8];
        assert!(close(q[0].cx, 1.5 / 38.0) && close(q[0].cy, 0.5 / 38.0));
        assert!(close(q[1].w, 0.035f32.sqrt()));
        // Second map starts after 38*38*4; its first prior has s = 0.35.
        let r = p[38 * 38 * 4];
        assert!(close(r.cx, 0.5 / 19.0) && close(r.w, 0.35));
    }
}
