//! In-memory labelled data for single-process training: a feature tensor
//! whose first dimension is the sample, integer labels, seeded splits and
//! mini-batch orders, and loaders for small classic datasets.

pub mod digits;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

/// Samples with class labels.
#[derive(Debug, Clone)]
pub struct LabeledData<F> {
    /// Features, `[N, …]`.
    pub features: Tensor<F>,
    /// One class index per sample.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
}

impl<F: Float> LabeledData<F> {
    /// Checks that features and labels agree and every label is below `num_classes`.
    pub fn new(features: Tensor<F>, labels: Vec<usize>, num_classes: usize) -> Result<Self> {
        if features.ndim() == 0 || features.shape()[0] != labels.len() {
            return Err(Error::shape(
                "LabeledData",
                format!("features with {} samples", labels.len()),
                features.shape(),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= num_classes) {
            return Err(Error::invalid(
                "LabeledData",
                format!("label {bad} is not below {num_classes}"),
            ));
        }
        Ok(LabeledData {
            features,
            labels,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The per-sample feature shape.
    pub fn sample_shape(&self) -> &[usize] {
        &self.features.shape()[1..]
    }

    /// The samples at `indices` (in that order), as a new dataset.
    pub fn subset(&self, indices: &[usize]) -> Self {
        LabeledData {
            features: self.features.select(ndarray::Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        }
    }

    /// A mini-batch: features `[B, …]` and targets `[B]` (class indices as floats).
    pub fn batch(&self, indices: &[usize]) -> (Tensor<F>, Tensor<F>) {
        let x = self.features.select(ndarray::Axis(0), indices);
        let y = Tensor::from_shape_fn(ndarray::IxDyn(&[indices.len()]), |i| {
            F::of_usize(self.labels[indices[i[0]]])
        });
        (x, y)
    }

    /// A fixed, seeded split: a stratified `holdout` fraction of every class
    /// goes to the second set, the rest to the first.
    pub fn split(&self, holdout: f64, seed: u64) -> Result<(Self, Self)> {
        if !(0.0..1.0).contains(&holdout) {
            return Err(Error::config(
                "LabeledData::split",
                format!("holdout {holdout} outside [0, 1)"),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..self.num_classes {
            let mut idx: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            idx.shuffle(&mut rng);
            let n_test = (idx.len() as f64 * holdout).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        Ok((self.subset(&train), self.subset(&test)))
    }

    /// Converts the features to another element type.
    pub fn cast<G: Float>(&self) -> LabeledData<G> {
        LabeledData {
            features: crate::tensor::cast(&self.features),
            labels: self.labels.clone(),
            num_classes: self.num_classes,
        }
    }
}

/// The sample order of one epoch: a permutation of `0..n` that depends only
/// on `(seed, epoch)`, so a resumed run sees the same batches.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut rng);
    idx
}

/// Bilinear resize of `[N, C, H, W]` images to `[N, C, out_h, out_w]`
/// (align_corners = false, as PyTorch's `interpolate(mode="bilinear")`).
pub fn resize_bilinear<F: Float>(
    images: &Tensor<F>,
    out_h: usize,
    out_w: usize,
) -> Result<Tensor<F>> {
    crate::tensor::expect_ndim("resize_bilinear", images, 4, "[N, C, H, W]")?;
    let (n, c, h, w) = (
        images.shape()[0],
        images.shape()[1],
        images.shape()[2],
        images.shape()[3],
    );
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::shape(
            "resize_bilinear",
            "non-empty images",
            images.shape(),
        ));
    }
    let coords = |out: usize, inp: usize| -> Vec<(usize, usize, f64)> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|o| {
                let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f64)
            })
            .collect()
    };
    let ys = coords(out_h, h);
    let xs = coords(out_w, w);
    // Row slices of contiguous planes: indexing a dynamic-rank array per
    // pixel cost more than the interpolation itself.
    let images = images.as_standard_layout();
    let src = images
        .as_slice()
        .ok_or_else(|| Error::invalid("resize_bilinear", "images are not contiguous"))?;
    let mut out = vec![F::zero(); n * c * out_h * out_w];
    for (plane, dst) in src
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(out_h * out_w))
    {
        for (&(y0, y1, fy), dst_row) in ys.iter().zip(dst.chunks_exact_mut(out_w)) {
            let (r0, r1) = (&plane[y0 * w..][..w], &plane[y1 * w..][..w]);
            for (o, &(x0, x1, fx)) in dst_row.iter_mut().zip(&xs) {
                let top = r0[x0].as_f64() * (1.0 - fx) + r0[x1].as_f64() * fx;
                let bot = r1[x0].as_f64() * (1.0 - fx) + r1[x1].as_f64() * fx;
                *o = F::of(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    let out = Tensor::from_shape_vec(ndarray::IxDyn(&[n, c, out_h, out_w]), out)
        .map_err(|e| Error::invalid("resize_bilinear", e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_fixed_and_disjoint() {
        let labels: Vec<usize> = (0..100).map(|i| i % 4).collect();
        let x = Tensor::<f32>::from_shape_fn(ndarray::IxDyn(&[100, 2]), |i| i[0] as f32);
        let d = LabeledData::new(x, labels, 4).unwrap();
        let (a, b) = d.split(0.2, 1).unwrap();
        let (a2, b2) = d.split(0.2, 1).unwrap();
        assert_eq!(a.len(), 80);
        assert_eq!(b.len(), 20);
        assert_eq!(b.labels, b2.labels);
        assert_eq!(a.features, a2.features);
        for c in 0..4 {
            assert_eq!(b.labels.iter().filter(|&&l| l == c).count(), 5);
        }
        let ids_a: Vec<f32> = a
            .features
            .index_axis(ndarray::Axis(1), 0)
            .iter()
            .copied()
            .collect();
        assert!(b
            .features
            .index_axis(ndarray::Axis(1), 0)
            .iter()
            .all(|v| !ids_a.contains(v)));
    }

    #[test]
    fn epoch_order_is_a_permutation_that_depends_on_epoch() {
        let a = epoch_order(50, 7, 0);
        let b = epoch_order(50, 7, 1);
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(50, 7, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn bilinear_resize_matches_hand_values() {
        // 1x1x2x2 -> 4x4, PyTorch align_corners=False:
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(4,4), mode="bilinear")
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&[1, 1, 2, 2]), vec![0.0f64, 1.0, 2.0, 3.0])
            .unwrap();
        let y = resize_bilinear(&x, 4, 4).unwrap();
        let row0 = [0.0, 0.25, 0.75, 1.0];
        let row1 = [0.5, 0.75, 1.25, 1.5];
        for j in 0..4 {
            assert!((y[[0, 0, 0, j]] - row0[j]).abs() < 1e-12);
            assert!((y[[0, 0, 1, j]] - row1[j]).abs() < 1e-12);
        }
        assert!(resize_bilinear(&Tensor::<f64>::zeros(ndarray::IxDyn(&[2, 2])), 4, 4).is_err());
    }

    #[test]
    fn bilinear_resize_of_strided_batches_matches_the_per_pixel_formula() {
        // A permuted (non-contiguous) batch of 2 images x 3 channels, shrunk
        // in one axis and grown in the other; every output pixel against
        // the interpolation written out with array indexing.
        let base = Tensor::<f32>::from_shape_fn(ndarray::IxDyn(&[2, 7, 5, 3]), |i| {
            ((i[0] * 131 + i[1] * 17 + i[2] * 7 + i[3] * 3) % 23) as f32 * 0.37 - 2.0
        });
        let x = base.permuted_axes(ndarray::IxDyn(&[0, 3, 1, 2]));
        assert!(!x.is_standard_layout());
        let (out_h, out_w) = (4usize, 9usize);
        let y = resize_bilinear(&x, out_h, out_w).unwrap();
        assert_eq!(y.shape(), &[2, 3, out_h, out_w]);
        let coord = |o: usize, out: usize, inp: usize| {
            let src = ((o as f64 + 0.5) * (inp as f64 / out as f64) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(inp - 1);
            (i0, (i0 + 1).min(inp - 1), src - i0 as f64)
        };
        for b in 0..2 {
            for c in 0..3 {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let (y0, y1, fy) = coord(oy, out_h, 7);
                        let (x0, x1, fx) = coord(ox, out_w, 5);
                        let v = |yy: usize, xx: usize| f64::from(x[[b, c, yy, xx]]);
                        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
                        let bot = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
                        let want = (top * (1.0 - fy) + bot * fy) as f32;
                        assert_eq!(
                            y[[b, c, oy, ox]],
                            want,
                            "image {b} channel {c} at {oy},{ox}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_labels_are_refused() {
        let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[3, 2]));
        assert!(LabeledData::new(x.clone(), vec![0, 1, 5], 3).is_err());
        assert!(LabeledData::new(x, vec![0, 1], 3).is_err());
    }
}
