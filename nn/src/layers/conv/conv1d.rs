//! 1-D convolution over `[N, C, L]` sequences (PyTorch `nn.Conv1d`), run by
//! the 2-D engine with height 1.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::im2col::{out_len, ColumnCache, Geom};
use super::{conv_backward, conv_forward, default_one, default_true, tensor_of, validate};
use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

/// Configuration of a [`Conv1d`] layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel length.
    pub kernel_size: usize,
    /// Stride (default 1).
    #[serde(default = "default_one")]
    pub stride: usize,
    /// Zero padding on each side (default 0).
    #[serde(default)]
    pub padding: usize,
    /// Kernel dilation (default 1).
    #[serde(default = "default_one")]
    pub dilation: usize,
    /// Channel groups (default 1).
    #[serde(default = "default_one")]
    pub groups: usize,
    /// Whether to learn a per-output-channel bias (default true).
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Conv1dConfig {
    /// A convolution with stride 1, no padding, no dilation, one group and a bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: usize) -> Self {
        Conv1dConfig {
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the zero padding.
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the number of groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Enables or disables the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Validates the configuration and initialises weight and bias like
    /// PyTorch (uniform in ±1/√fan_in, fan_in = in/groups · kernel_size).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Conv1d<F>> {
        validate(
            "Conv1d",
            self.in_channels,
            self.out_channels,
            self.groups,
            &[
                ("kernel_size", self.kernel_size),
                ("stride", self.stride),
                ("dilation", self.dilation),
            ],
        )?;
        let cg = self.in_channels / self.groups;
        let bound = 1.0 / ((cg * self.kernel_size) as f64).sqrt();
        let weight = init::uniform(rng, &[self.out_channels, cg, self.kernel_size], bound);
        let bias = self
            .bias
            .then(|| Param::new(init::uniform(rng, &[self.out_channels], bound)));
        Ok(Conv1d {
            config: self.clone(),
            weight: Param::new(weight),
            bias,
            cols: ColumnCache::default(),
        })
    }
}

/// 1-D convolution: input `[N, C_in, L]`, output `[N, C_out, L_out]`.
#[derive(Debug, Clone)]
pub struct Conv1d<F> {
    config: Conv1dConfig,
    /// Weight, `[out_channels, in_channels / groups, kernel_size]`.
    pub weight: Param<F>,
    /// Bias, `[out_channels]`.
    pub bias: Option<Param<F>>,
    /// Columns of the last training forward pass, for its backward pass.
    cols: ColumnCache<F>,
}

impl<F: Float> Conv1d<F> {
    /// Parameter gradients and (when `want_gx`) the input gradient as a
    /// flat buffer, reading the columns the last forward pass kept.
    fn backward_engine(
        &mut self,
        input: &Tensor<F>,
        grad_output: &Tensor<F>,
        want_gx: bool,
    ) -> Result<Vec<F>> {
        let (n, g) = self.geom(input)?;
        conv_backward(
            &self.name(),
            &g,
            n,
            input,
            grad_output,
            &[n, g.o, g.ow],
            &mut self.weight,
            self.bias.as_mut(),
            &self.cols,
            want_gx,
        )
    }

    fn geom(&self, input: &Tensor<F>) -> Result<(usize, Geom)> {
        let c = &self.config;
        let expected = || format!("[N, {}, L]", c.in_channels);
        if input.ndim() != 3 || input.shape()[1] != c.in_channels {
            return Err(Error::shape(self.name(), expected(), input.shape()));
        }
        let (n, l) = (input.shape()[0], input.shape()[2]);
        let Some(ol) = out_len(l, c.kernel_size, c.stride, c.padding, c.dilation) else {
            return Err(Error::shape(
                self.name(),
                format!(
                    "{} with padded L at least the dilated kernel {}",
                    expected(),
                    c.dilation * (c.kernel_size - 1) + 1
                ),
                input.shape(),
            ));
        };
        Ok((
            n,
            Geom {
                c: c.in_channels,
                h: 1,
                w: l,
                o: c.out_channels,
                kh: 1,
                kw: c.kernel_size,
                sh: 1,
                sw: c.stride,
                ph: 0,
                pw: c.padding,
                dh: 1,
                dw: c.dilation,
                groups: c.groups,
                oh: 1,
                ow: ol,
            },
        ))
    }
}

impl<F: Float> Module<F> for Conv1d<F> {
    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "Conv1d({}->{}, {})",
            c.in_channels, c.out_channels, c.kernel_size
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let (n, g) = self.geom(input)?;
        let y = conv_forward(
            &g,
            n,
            input,
            &self.weight,
            self.bias.as_ref(),
            Some(&mut self.cols),
        )?;
        tensor_of(&self.name(), &[n, g.o, g.ow], y)
    }

    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        let (n, g) = self.geom(&input)?;
        self.cols.invalidate();
        let y = conv_forward(&g, n, &input, &self.weight, self.bias.as_ref(), None)?;
        tensor_of(&self.name(), &[n, g.o, g.ow], y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let gx = self.backward_engine(input, grad_output, true)?;
        tensor_of(&self.name(), input.shape(), gx)
    }

    fn backward_params(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<()> {
        self.backward_engine(input, grad_output, false).map(|_| ())
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        f(&qualified(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        f(&qualified(prefix, "weight"), &mut self.weight);
        if let Some(b) = &mut self.bias {
            f(&qualified(prefix, "bias"), b);
        }
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Conv1d(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::layers::Conv2dConfig;
    use rand::SeedableRng;

    fn rand_input(shape: &[usize], seed: u64) -> Tensor<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        init::uniform(&mut rng, shape, 1.0)
    }

    #[test]
    fn conv1d_passes_gradcheck() {
        for cfg in [
            Conv1dConfig::new(2, 3, 3),
            Conv1dConfig::new(4, 2, 2)
                .with_stride(2)
                .with_padding(2)
                .with_dilation(2)
                .with_groups(2)
                .with_bias(false),
        ] {
            let mut rng = StdRng::seed_from_u64(1);
            let mut conv = cfg.init::<f64>(&mut rng).unwrap();
            let x = rand_input(&[3, cfg.in_channels, 9], 2);
            check_module(&mut conv, &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
    }

    #[test]
    fn conv1d_equals_conv2d_of_height_one() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut c1 = Conv1dConfig::new(4, 6, 3)
            .with_padding(1)
            .with_stride(2)
            .with_groups(2)
            .init::<f64>(&mut rng)
            .unwrap();
        let mut c2 = Conv2dConfig::new(4, 6, [1, 3])
            .with_padding([0, 1])
            .with_stride([1, 2])
            .with_groups(2)
            .init::<f64>(&mut rng)
            .unwrap();
        c2.weight.value = c1
            .weight
            .value
            .clone()
            .into_shape_with_order(vec![6, 2, 1, 3])
            .unwrap();
        c2.bias.as_mut().unwrap().value = c1.bias.as_ref().unwrap().value.clone();
        let x = rand_input(&[2, 4, 11], 3);
        let y1 = c1.forward(&x).unwrap();
        let x2 = x.clone().into_shape_with_order(vec![2, 4, 1, 11]).unwrap();
        let y2 = c2.forward(&x2).unwrap();
        assert_eq!(y1.shape(), [2, 6, 6]);
        assert!(y1.iter().zip(y2.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
    }

    #[test]
    fn bad_input_names_layer_and_shapes() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut conv = Conv1dConfig::new(3, 4, 3).init::<f32>(&mut rng).unwrap();
        for shape in [&[2usize, 3, 8, 8][..], &[2, 2, 8], &[1, 3, 2]] {
            let err = conv
                .forward(&Tensor::zeros(ndarray::IxDyn(shape)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("Conv1d")
                    && err.contains("[N, 3, L]")
                    && err.contains(&format!("{shape:?}")),
                "{err}"
            );
        }
    }
}
