//! SSD training augmentation (Liu et al. 2016, as ssd.pytorch's
//! `SSDAugmentation`), seeded by the caller's `StdRng`: photometric
//! distortion, zoom-out (expand), IoU-constrained random crop, horizontal
//! flip, bilinear resize and mean subtraction.
//!
//! Images are RGB `[3, H, W]` f32 tensors with values in `0..=255`; boxes
//! are continuous pixel corners (see [`crate::voc::Object::pixel_box`]) until
//! [`SsdAugment::apply`] normalises them to `[0, 1]`.

use ndarray::{s, Array3};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::boxes::BBox;
use crate::error::{Error, Result};

/// An image with its boxes and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// RGB `[3, H, W]`.
    pub image: Array3<f32>,
    /// Boxes (pixel corners, or normalised after [`SsdAugment::apply`]).
    pub boxes: Vec<BBox>,
    /// One label per box.
    pub labels: Vec<usize>,
}

impl Sample {
    /// Image height.
    pub fn height(&self) -> usize {
        self.image.shape()[1]
    }

    /// Image width.
    pub fn width(&self) -> usize {
        self.image.shape()[2]
    }
}

/// VOC's per-channel RGB mean (ssd.pytorch's `(104, 117, 123)` in BGR).
pub const VOC_MEAN_RGB: [f32; 3] = [123.0, 117.0, 104.0];

fn coin(rng: &mut StdRng) -> bool {
    rng.random_bool(0.5)
}

/// Adds a uniform brightness delta in `[-delta, delta]` (with probability 1/2).
pub fn random_brightness(img: &mut Array3<f32>, rng: &mut StdRng, delta: f32) {
    if coin(rng) {
        let d = rng.random_range(-delta..=delta);
        img.mapv_inplace(|v| v + d);
    }
}

/// Multiplies by a uniform contrast factor in `[lo, hi]` (with probability 1/2).
pub fn random_contrast(img: &mut Array3<f32>, rng: &mut StdRng, lo: f32, hi: f32) {
    if coin(rng) {
        let a = rng.random_range(lo..=hi);
        img.mapv_inplace(|v| v * a);
    }
}

/// RGB (0..255) to HSV (h in degrees 0..360, s and v in 0..1), as OpenCV's float conversion.
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let (r, g, b) = (r / 255.0, g / 255.0, b / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d <= 0.0 {
        0.0
    } else if max == r {
        60.0 * (g - b) / d
    } else if max == g {
        120.0 + 60.0 * (b - r) / d
    } else {
        240.0 + 60.0 * (r - g) / d
    };
    (if h < 0.0 { h + 360.0 } else { h }, s, max)
}

/// HSV (as [`rgb_to_hsv`]) back to RGB in 0..255.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h = h.rem_euclid(360.0) / 60.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    (r * 255.0, g * 255.0, b * 255.0)
}

fn map_hsv(img: &mut Array3<f32>, f: impl Fn(f32, f32, f32) -> (f32, f32, f32)) {
    let (h, w) = (img.shape()[1], img.shape()[2]);
    for y in 0..h {
        for x in 0..w {
            let (hh, ss, vv) = rgb_to_hsv(img[[0, y, x]], img[[1, y, x]], img[[2, y, x]]);
            let (hh, ss, vv) = f(hh, ss, vv);
            let (r, g, b) = hsv_to_rgb(hh, ss, vv);
            img[[0, y, x]] = r;
            img[[1, y, x]] = g;
            img[[2, y, x]] = b;
        }
    }
}

/// Scales saturation by a uniform factor in `[lo, hi]` (with probability 1/2).
pub fn random_saturation(img: &mut Array3<f32>, rng: &mut StdRng, lo: f32, hi: f32) {
    if coin(rng) {
        let a = rng.random_range(lo..=hi);
        map_hsv(img, |h, s, v| (h, (s * a).clamp(0.0, 1.0), v));
    }
}

/// Shifts hue by a uniform delta in `[-delta, delta]` degrees (with probability 1/2).
pub fn random_hue(img: &mut Array3<f32>, rng: &mut StdRng, delta: f32) {
    if coin(rng) {
        let d = rng.random_range(-delta..=delta);
        map_hsv(img, |h, s, v| (h + d, s, v));
    }
}

/// Permutes the channels randomly (with probability 1/2): ssd.pytorch's
/// `RandomLightingNoise`.
pub fn random_channel_swap(img: &mut Array3<f32>, rng: &mut StdRng) {
    const PERMS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    if coin(rng) {
        let perm = PERMS[rng.random_range(0..6)];
        let src = img.clone();
        for (c, &from) in perm.iter().enumerate() {
            img.slice_mut(s![c, .., ..])
                .assign(&src.slice(s![from, .., ..]));
        }
    }
}

/// ssd.pytorch's `PhotometricDistort`: brightness, then either contrast
/// before or after saturation and hue, then a channel swap. Values are
/// clamped to `0..=255` between steps (so the HSV steps see valid colours).
pub fn photometric_distort(img: &mut Array3<f32>, rng: &mut StdRng) {
    let clamp = |img: &mut Array3<f32>| img.mapv_inplace(|v| v.clamp(0.0, 255.0));
    random_brightness(img, rng, 32.0);
    clamp(img);
    let contrast_first = coin(rng);
    if contrast_first {
        random_contrast(img, rng, 0.5, 1.5);
        clamp(img);
    }
    random_saturation(img, rng, 0.5, 1.5);
    random_hue(img, rng, 18.0);
    if !contrast_first {
        random_contrast(img, rng, 0.5, 1.5);
        clamp(img);
    }
    random_channel_swap(img, rng);
}

/// Zoom out: with probability 1/2, places the image at a random offset on a
/// canvas `ratio` in `[1, max_ratio]` times larger, filled with `mean`.
pub fn expand(sample: &mut Sample, rng: &mut StdRng, mean: [f32; 3], max_ratio: f32) {
    if !coin(rng) || max_ratio <= 1.0 {
        return;
    }
    let ratio = rng.random_range(1.0..=max_ratio);
    expand_with(
        sample,
        mean,
        ratio,
        rng.random_range(0.0..=1.0),
        rng.random_range(0.0..=1.0),
    );
}

/// Zoom out by `ratio` (at least 1) with the image's top-left at fractions
/// `fx`, `fy` (in `[0, 1]`) of the free space.
pub fn expand_with(sample: &mut Sample, mean: [f32; 3], ratio: f32, fx: f32, fy: f32) {
    let (h, w) = (sample.height(), sample.width());
    let ratio = ratio.max(1.0);
    let (nh, nw) = ((h as f32 * ratio) as usize, (w as f32 * ratio) as usize);
    let (nh, nw) = (nh.max(h), nw.max(w));
    let left = ((nw - w) as f32 * fx.clamp(0.0, 1.0)) as usize;
    let top = ((nh - h) as f32 * fy.clamp(0.0, 1.0)) as usize;
    let mut canvas = Array3::zeros((3, nh, nw));
    for (c, &m) in mean.iter().enumerate() {
        canvas.slice_mut(s![c, .., ..]).fill(m);
    }
    canvas
        .slice_mut(s![.., top..top + h, left..left + w])
        .assign(&sample.image);
    sample.image = canvas;
    for b in &mut sample.boxes {
        *b = b.shift(left as f32, top as f32);
    }
}

/// The crop modes of the SSD paper's patch sampling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CropMode {
    /// Keep the whole image.
    Original,
    /// A patch whose IoU with some object is at least this.
    MinIou(f32),
    /// Any patch (no IoU constraint).
    Any,
}

/// The paper's options: the whole image, min IoU 0.1/0.3/0.5/0.7/0.9, or any patch.
pub const CROP_MODES: [CropMode; 7] = [
    CropMode::Original,
    CropMode::MinIou(0.1),
    CropMode::MinIou(0.3),
    CropMode::MinIou(0.5),
    CropMode::MinIou(0.7),
    CropMode::MinIou(0.9),
    CropMode::Any,
];

/// Crops `sample` to `rect` (integer pixel corners inside the image),
/// keeping the boxes whose centre lies inside it, clipped and shifted.
/// Returns `false` (leaving the sample untouched) when the rectangle is
/// empty or not inside the image, or when no box would be kept and the
/// sample has boxes.
pub fn crop_to(sample: &mut Sample, rect: [usize; 4]) -> bool {
    let [x0, y0, x1, y1] = rect;
    if x0 >= x1 || y0 >= y1 || x1 > sample.width() || y1 > sample.height() {
        return false;
    }
    let (fx0, fy0, fx1, fy1) = (x0 as f32, y0 as f32, x1 as f32, y1 as f32);
    let mut boxes = Vec::new();
    let mut labels = Vec::new();
    for (b, &l) in sample.boxes.iter().zip(&sample.labels) {
        let (cx, cy) = b.center();
        if cx > fx0 && cx < fx1 && cy > fy0 && cy < fy1 {
            let c = BBox::new(
                b.xmin.max(fx0),
                b.ymin.max(fy0),
                b.xmax.min(fx1),
                b.ymax.min(fy1),
            );
            boxes.push(c.shift(-fx0, -fy0));
            labels.push(l);
        }
    }
    if boxes.is_empty() && !sample.boxes.is_empty() {
        return false;
    }
    sample.image = sample.image.slice(s![.., y0..y1, x0..x1]).to_owned();
    sample.boxes = boxes;
    sample.labels = labels;
    true
}

/// The paper's IoU-constrained random crop: picks a mode from
/// [`CROP_MODES`]; for a patch mode, tries up to 50 patches with sides in
/// `[0.3, 1]` of the image and aspect in `[1/2, 2]`, accepting the first
/// that meets the mode's IoU with some object and keeps at least one box
/// centre. Falls back to the whole image.
pub fn random_crop(sample: &mut Sample, rng: &mut StdRng) {
    let mode = CROP_MODES[rng.random_range(0..CROP_MODES.len())];
    let min_iou = match mode {
        CropMode::Original => return,
        CropMode::MinIou(m) => m,
        CropMode::Any => f32::NEG_INFINITY,
    };
    let (h, w) = (sample.height() as f32, sample.width() as f32);
    for _ in 0..50 {
        let cw = rng.random_range(0.3 * w..=w);
        let ch = rng.random_range(0.3 * h..=h);
        if ch / cw < 0.5 || ch / cw > 2.0 {
            continue;
        }
        let left = rng.random_range(0.0..=(w - cw));
        let top = rng.random_range(0.0..=(h - ch));
        let rect = [
            left as usize,
            top as usize,
            ((left + cw) as usize).max(left as usize + 1),
            ((top + ch) as usize).max(top as usize + 1),
        ];
        let r = BBox::new(
            rect[0] as f32,
            rect[1] as f32,
            rect[2] as f32,
            rect[3] as f32,
        );
        let best = sample
            .boxes
            .iter()
            .map(|b| b.iou(&r))
            .fold(f32::NEG_INFINITY, f32::max);
        if !sample.boxes.is_empty() && best < min_iou {
            continue;
        }
        if crop_to(sample, rect) {
            return;
        }
    }
}

/// Mirrors the image and boxes left-right.
pub fn hflip(sample: &mut Sample) {
    let w = sample.width() as f32;
    sample.image.invert_axis(ndarray::Axis(2));
    for b in &mut sample.boxes {
        *b = BBox::new(w - b.xmax, b.ymin, w - b.xmin, b.ymax);
    }
}

/// Bilinear resize of the image to `out_h x out_w` (align_corners = false),
/// scaling the boxes with it.
pub fn resize(sample: &mut Sample, out_h: usize, out_w: usize) -> Result<()> {
    let (h, w) = (sample.height(), sample.width());
    let x = sample
        .image
        .clone()
        .into_dyn()
        .insert_axis(ndarray::Axis(0));
    let y = kiln_nn::data::resize_bilinear(&x, out_h, out_w)?;
    sample.image = y
        .index_axis_move(ndarray::Axis(0), 0)
        .into_dimensionality()
        .map_err(|e| Error::invalid("resize", e.to_string()))?;
    let (sx, sy) = (out_w as f32 / w as f32, out_h as f32 / h as f32);
    for b in &mut sample.boxes {
        *b = b.scale(sx, sy);
    }
    Ok(())
}

/// Subtracts a per-channel mean.
pub fn subtract_mean(img: &mut Array3<f32>, mean: [f32; 3]) {
    for (c, m) in mean.iter().enumerate() {
        img.slice_mut(s![c, .., ..]).mapv_inplace(|v| v - m);
    }
}

/// The SSD training pipeline's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsdAugment {
    /// Output side (square), e.g. 300.
    pub size: usize,
    /// Per-channel RGB mean, used for the expand canvas and subtracted at the end.
    pub mean: [f32; 3],
    /// Largest zoom-out ratio (4 in the paper).
    pub max_expand: f32,
    /// Apply photometric distortion.
    pub photometric: bool,
}

impl SsdAugment {
    /// The paper's settings for a `size x size` model with VOC's mean.
    pub fn new(size: usize) -> Self {
        SsdAugment {
            size,
            mean: VOC_MEAN_RGB,
            max_expand: 4.0,
            photometric: true,
        }
    }

    /// Augments a training sample (pixel boxes in, normalised boxes out):
    /// distort, expand, crop, flip, resize, subtract the mean.
    pub fn apply(&self, mut sample: Sample, rng: &mut StdRng) -> Result<Sample> {
        self.check(&sample)?;
        if self.photometric {
            photometric_distort(&mut sample.image, rng);
        }
        expand(&mut sample, rng, self.mean, self.max_expand);
        random_crop(&mut sample, rng);
        if coin(rng) {
            hflip(&mut sample);
        }
        self.finish(sample)
    }

    /// The evaluation transform: resize and subtract the mean (pixel boxes in,
    /// normalised boxes out).
    pub fn eval(&self, sample: Sample) -> Result<Sample> {
        self.check(&sample)?;
        self.finish(sample)
    }

    fn check(&self, sample: &Sample) -> Result<()> {
        if sample.image.shape()[0] != 3 || sample.height() == 0 || sample.width() == 0 {
            return Err(Error::shape(
                "SsdAugment",
                "[3, H, W] with H, W > 0",
                sample.image.shape(),
            ));
        }
        if sample.boxes.len() != sample.labels.len() {
            return Err(Error::invalid(
                "SsdAugment",
                format!(
                    "{} boxes but {} labels",
                    sample.boxes.len(),
                    sample.labels.len()
                ),
            ));
        }
        if self.size == 0 {
            return Err(Error::config("SsdAugment", "size must be positive"));
        }
        Ok(())
    }

    fn finish(&self, mut sample: Sample) -> Result<Sample> {
        resize(&mut sample, self.size, self.size)?;
        subtract_mean(&mut sample.image, self.mean);
        let s = 1.0 / self.size as f32;
        for b in &mut sample.boxes {
            *b = b.scale(s, s).clip(1.0, 1.0);
        }
        Ok(sample)
    }
}

/// Stacks augmented samples (all `[3, S, S]`) into an `[N, 3, S, S]` batch
/// and their ground truth for [`crate::multibox::encode_targets`].
pub fn collate(
    samples: &[Sample],
) -> Result<(kiln_nn::Tensor<f32>, Vec<crate::multibox::GroundTruth>)> {
    let Some(first) = samples.first() else {
        return Err(Error::invalid("collate", "no samples"));
    };
    let shape = first.image.shape().to_vec();
    let mut data = Vec::with_capacity(samples.len() * first.image.len());
    let mut gts = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        if s.image.shape() != shape.as_slice() {
            return Err(Error::shape(
                "collate",
                format!("sample {i} of shape {shape:?}"),
                s.image.shape(),
            ));
        }
        data.extend(s.image.iter().copied());
        gts.push(crate::multibox::GroundTruth {
            boxes: s.boxes.clone(),
            labels: s.labels.clone(),
        });
    }
    let mut dims = vec![samples.len()];
    dims.extend(shape);
    Ok((kiln_nn::tensor::from_vec(&dims, data)?, gts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A `w x h` black image with a white filled box over `b` (integer pixel corners).
    fn synthetic(w: usize, h: usize, b: [usize; 4]) -> Sample {
        let mut image = Array3::zeros((3, h, w));
        image.slice_mut(s![.., b[1]..b[3], b[0]..b[2]]).fill(255.0);
        Sample {
            image,
            boxes: vec![BBox::new(
                b[0] as f32,
                b[1] as f32,
                b[2] as f32,
                b[3] as f32,
            )],
            labels: vec![1],
        }
    }

    /// The bounding box of pixels brighter than 128 in channel 0.
    fn bright_box(img: &Array3<f32>) -> [f32; 4] {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for ((_, y, x), &v) in img.slice(s![0..1, .., ..]).indexed_iter() {
            if v > 128.0 {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
            }
        }
        [x0 as f32, y0 as f32, x1 as f32, y1 as f32]
    }

    #[test]
    fn flip_moves_box_with_pixels() {
        let mut s = synthetic(20, 10, [2, 3, 7, 8]);
        hflip(&mut s);
        assert_eq!(s.boxes[0].to_array(), [13.0, 3.0, 18.0, 8.0]);
        assert_eq!(bright_box(&s.image), [13.0, 3.0, 18.0, 8.0]);
    }

    #[test]
    fn expand_places_image_on_mean_canvas() {
        let mut s = synthetic(10, 10, [2, 2, 6, 6]);
        expand_with(&mut s, [1.0, 2.0, 3.0], 3.0, 0.5, 0.25);
        assert_eq!(s.image.shape(), &[3, 30, 30]);
        // left = 20 * 0.5 = 10, top = 20 * 0.25 = 5.
        assert_eq!(s.boxes[0].to_array(), [12.0, 7.0, 16.0, 11.0]);
        assert_eq!(bright_box(&s.image), [12.0, 7.0, 16.0, 11.0]);
        assert_eq!(s.image[[2, 0, 0]], 3.0);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let mut s = synthetic(10, 10, [2, 2, 6, 6]);
            expand(&mut s, &mut rng, VOC_MEAN_RGB, 4.0);
            assert!(s.width() <= 40 && s.height() <= 40);
            assert_eq!(s.boxes[0].to_array(), bright_box(&s.image));
        }
    }

    #[test]
    fn crop_keeps_centred_boxes_and_clips() {
        let mut s = synthetic(20, 20, [2, 2, 10, 10]);
        s.boxes.push(BBox::new(15.0, 15.0, 19.0, 19.0));
        s.labels.push(2);
        assert!(crop_to(&mut s, [4, 4, 14, 14]));
        // The first box's centre (6, 6) is inside: clipped to (4..10) and shifted by -4;
        // the second's centre (17, 17) is outside: dropped.
        assert_eq!(s.boxes, vec![BBox::new(0.0, 0.0, 6.0, 6.0)]);
        assert_eq!(s.labels, vec![1]);
        assert_eq!(bright_box(&s.image), [0.0, 0.0, 6.0, 6.0]);
        let mut t = synthetic(20, 20, [2, 2, 6, 6]);
        assert!(!crop_to(&mut t, [10, 10, 20, 20]));
        assert!(!crop_to(&mut t, [0, 0, 21, 20]) && !crop_to(&mut t, [5, 0, 5, 20]));
        assert_eq!(t.width(), 20);
    }

    #[test]
    fn random_crop_respects_geometry() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut s = synthetic(40, 30, [10, 8, 25, 20]);
            random_crop(&mut s, &mut rng);
            assert!(!s.boxes.is_empty());
            let b = s.boxes[0];
            assert!(b.xmin >= 0.0 && b.ymin >= 0.0);
            assert!(b.xmax <= s.width() as f32 && b.ymax <= s.height() as f32);
            assert_eq!(b.to_array(), bright_box(&s.image));
        }
    }

    #[test]
    fn resize_scales_boxes() {
        let mut s = synthetic(20, 10, [4, 2, 12, 8]);
        resize(&mut s, 20, 40).unwrap();
        assert_eq!(s.image.shape(), &[3, 20, 40]);
        assert_eq!(s.boxes[0].to_array(), [8.0, 4.0, 24.0, 16.0]);
        assert_eq!(bright_box(&s.image), [8.0, 4.0, 24.0, 16.0]);
    }

    #[test]
    fn photometric_keeps_range_and_geometry() {
        let mut rng = StdRng::seed_from_u64(3);
        let (r, g, b) = hsv_to_rgb(rgb_to_hsv(200.0, 30.0, 90.0).0, 0.85, 200.0 / 255.0);
        assert!((r - 200.0).abs() < 1.0 && (g - 30.0).abs() < 1.0 && (b - 90.0).abs() < 1.0);
        for _ in 0..10 {
            let mut img = synthetic(8, 8, [1, 1, 4, 4]).image;
            img.slice_mut(s![1, .., ..]).fill(100.0);
            photometric_distort(&mut img, &mut rng);
            assert!(img.iter().all(|v| (0.0..=255.0).contains(v)));
        }
    }

    #[test]
    fn pipeline_is_seeded_and_normalises() {
        let aug = SsdAugment::new(32);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            aug.apply(synthetic(50, 40, [10, 10, 30, 30]), &mut rng)
                .unwrap()
        };
        let (a, b) = (run(5), run(5));
        assert_eq!(a, b);
        assert_eq!(a.image.shape(), &[3, 32, 32]);
        for s in (0..20).map(run) {
            for bx in &s.boxes {
                assert!(bx.xmin >= 0.0 && bx.xmax <= 1.0 && bx.xmin < bx.xmax);
            }
        }
        let (x, gts) = collate(&[a.clone(), b]).unwrap();
        assert_eq!(x.shape(), &[2, 3, 32, 32]);
        assert_eq!(gts[0].boxes, a.boxes);
        assert!(collate(&[a, synthetic(4, 4, [0, 0, 1, 1])]).is_err());
        let e = aug.eval(synthetic(64, 32, [0, 0, 32, 16])).unwrap();
        assert_eq!(e.boxes[0].to_array(), [0.0, 0.0, 0.5, 0.5]);
        assert_eq!(e.image[[0, 0, 0]], 255.0 - 123.0);
    }
}
