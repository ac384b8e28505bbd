//! The VGG16 backbone of SSD300/SSD512 (Liu et al. 2016, as ssd.pytorch):
//! conv1_1…conv5_3 with pool3 in ceil mode, pool5 3x3 stride 1 pad 1, fc6 as
//! a 3x3 convolution with dilation 6 (1024 channels), fc7 1x1, L2
//! normalisation (learned scale, initially 20) on conv4_3, and the extra
//! layers conv8–conv11 (conv12 for 512 inputs).

use super::builder::{Builder, Source};

/// Appends VGG16 and the SSD extra layers after `input` (RGB, side
/// `image_size`); returns the builder and the head sources in order.
/// `extra_512` selects SSD512's extra layers (five, all stride 2 but the
/// last 4x4 one) instead of SSD300's four.
pub(crate) fn vgg16(input: &str, image_size: usize, extra_512: bool) -> (Builder, Vec<Source>) {
    let mut b = Builder::new(input, 3, image_size);
    let mut sources = Vec::new();
    let stages: [(usize, usize); 5] = [(1, 64), (2, 128), (3, 256), (4, 512), (5, 512)];
    for (stage, width) in stages {
        let convs = if stage <= 2 { 2 } else { 3 };
        for k in 1..=convs {
            b.conv_relu(&format!("conv{stage}_{k}"), width, 3, 1, 1);
        }
        match stage {
            4 => {
                let relu = b.last.clone();
                b.l2norm("conv4_3_norm");
                sources.push(b.source());
                b.last = relu;
                b.max_pool("pool4", 2, 2, 0, false);
            }
            5 => b.max_pool("pool5", 3, 1, 1, false),
            3 => b.max_pool("pool3", 2, 2, 0, true),
            _ => b.max_pool(&format!("pool{stage}"), 2, 2, 0, false),
        }
    }
    b.conv("fc6", 1024, 3, 1, 6, 6);
    b.relu("relu_fc6");
    b.conv_relu("fc7", 1024, 1, 1, 0);
    sources.push(b.source());
    // (1x1 channels, 3x3 channels, stride, padding, kernel) per extra block.
    let extras: &[(usize, usize, usize, usize, usize)] = if extra_512 {
        &[
            (256, 512, 2, 1, 3),
            (128, 256, 2, 1, 3),
            (128, 256, 2, 1, 3),
            (128, 256, 2, 1, 3),
            (128, 256, 1, 1, 4),
        ]
    } else {
        &[
            (256, 512, 2, 1, 3),
            (128, 256, 2, 1, 3),
            (128, 256, 1, 0, 3),
            (128, 256, 1, 0, 3),
        ]
    };
    for (i, &(c1, c2, stride, pad, k)) in extras.iter().enumerate() {
        let n = i + 8;
        b.conv_relu(&format!("conv{n}_1"), c1, 1, 1, 0);
        b.conv_relu(&format!("conv{n}_2"), c2, k, stride, pad);
        sources.push(b.source());
    }
    (b, sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssd300_and_ssd512_feature_maps() {
        let (_, s) = vgg16("image", 300, false);
        let sizes: Vec<_> = s.iter().map(|s| (s.size, s.channels)).collect();
        assert_eq!(
            sizes,
            [
                (38, 512),
                (19, 1024),
                (10, 512),
                (5, 256),
                (3, 256),
                (1, 256)
            ]
        );
        assert_eq!(s[0].node, "conv4_3_norm");
        let (_, s) = vgg16("image", 512, true);
        let sizes: Vec<_> = s.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [64, 32, 16, 8, 4, 2, 1]);
    }
}
