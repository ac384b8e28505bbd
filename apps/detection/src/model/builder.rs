//! A small helper that appends layers to a [`GraphConfig`]'s node list while
//! tracking the current node's channel count and (square) spatial size, so
//! the backbones can check their feature maps against the prior-box config.

use kiln_nn::layers::{
    BatchNormConfig, Conv2dConfig, GraphNode, LayerConfig, NormalizeConfig, Pool2dConfig,
};

/// One source feature map of the detection heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Graph node producing it.
    pub(crate) node: String,
    /// Channels.
    pub(crate) channels: usize,
    /// Side in cells.
    pub(crate) size: usize,
}

/// Appends nodes, each reading the previous one.
#[derive(Debug, Clone)]
pub(crate) struct Builder {
    pub(crate) nodes: Vec<GraphNode>,
    pub(crate) last: String,
    pub(crate) channels: usize,
    pub(crate) size: usize,
}

/// Output side of a convolution or floor-mode pooling window.
fn window_out(size: usize, k: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    let span = dilation * (k - 1) + 1;
    (size + 2 * pad).saturating_sub(span) / stride + 1
}

impl Builder {
    /// Starts from the graph input `input` with `channels` channels of side `size`.
    pub(crate) fn new(input: &str, channels: usize, size: usize) -> Self {
        Builder {
            nodes: Vec::new(),
            last: input.to_string(),
            channels,
            size,
        }
    }

    fn push(&mut self, name: &str, layer: LayerConfig) {
        self.nodes.push(GraphNode::layer(name, layer, &self.last));
        self.last = name.to_string();
    }

    /// A square `k x k` convolution to `out` channels.
    pub(crate) fn conv(
        &mut self,
        name: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
    ) {
        let cfg = Conv2dConfig::new(self.channels, out, [k, k])
            .with_stride([stride, stride])
            .with_padding([pad, pad])
            .with_dilation([dilation, dilation]);
        self.push(name, LayerConfig::Conv2d(cfg));
        self.channels = out;
        self.size = window_out(self.size, k, stride, pad, dilation);
    }

    /// ReLU.
    pub(crate) fn relu(&mut self, name: &str) {
        self.push(name, LayerConfig::Relu);
    }

    /// Convolution followed by a ReLU named `relu_<name>`.
    pub(crate) fn conv_relu(
        &mut self,
        name: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) {
        self.conv(name, out, k, stride, pad, 1);
        self.relu(&format!("relu_{name}"));
    }

    /// Batch normalisation over the current channels.
    pub(crate) fn batch_norm(&mut self, name: &str) {
        self.push(
            name,
            LayerConfig::BatchNorm(BatchNormConfig::new(self.channels)),
        );
    }

    /// SSD's L2 normalisation with a learned scale (initially 20).
    pub(crate) fn l2norm(&mut self, name: &str) {
        self.push(
            name,
            LayerConfig::Normalize(NormalizeConfig::new(self.channels)),
        );
    }

    /// Max pooling (PyTorch's output-size rule, ceil mode optional).
    pub(crate) fn max_pool(&mut self, name: &str, k: usize, stride: usize, pad: usize, ceil: bool) {
        let cfg = Pool2dConfig::new([k, k])
            .with_stride([stride, stride])
            .with_padding([pad, pad])
            .with_ceil_mode(ceil);
        self.push(name, LayerConfig::MaxPool2d(cfg));
        let span = self.size + 2 * pad;
        self.size = if ceil {
            let mut out = span.saturating_sub(k).div_ceil(stride) + 1;
            // The last window must start inside the input or left padding.
            if (out - 1) * stride >= self.size + pad {
                out -= 1;
            }
            out
        } else {
            window_out(self.size, k, stride, pad, 1)
        };
    }

    /// The current node as a head source.
    pub(crate) fn source(&self) -> Source {
        Source {
            node: self.last.clone(),
            channels: self.channels,
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_pytorch_rules() {
        let mut b = Builder::new("x", 3, 75);
        b.max_pool("p", 2, 2, 0, true);
        assert_eq!(b.size, 38);
        let mut b = Builder::new("x", 3, 75);
        b.max_pool("p", 2, 2, 0, false);
        assert_eq!(b.size, 37);
        let mut b = Builder::new("x", 3, 19);
        b.max_pool("p", 3, 1, 1, false);
        assert_eq!(b.size, 19);
        b.conv("fc6", 8, 3, 1, 6, 6);
        assert_eq!((b.size, b.channels), (19, 8));
        b.conv("c", 8, 3, 2, 1, 1);
        assert_eq!(b.size, 10);
        b.conv("d", 8, 3, 1, 0, 1);
        assert_eq!(b.size, 8);
        assert_eq!(b.nodes.len(), 4);
        assert_eq!(b.nodes[1].inputs, vec!["p".to_string()]);
    }
}
