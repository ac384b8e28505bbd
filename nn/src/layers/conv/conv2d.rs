//! 2-D convolution over NCHW images (PyTorch `nn.Conv2d` semantics, zero padding).

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::im2col::{out_len, ColumnCache, Geom};
use super::{conv_backward, conv_forward, default_one, default_true, tensor_of, validate};
use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::module::{qualified, Module, Param};
use crate::tensor::{Float, Tensor};

fn ones2() -> [usize; 2] {
    [1, 1]
}

/// Configuration of a [`Conv2d`] layer. Pairs are `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Stride (default `[1, 1]`).
    #[serde(default = "ones2")]
    pub stride: [usize; 2],
    /// Zero padding on each side (default `[0, 0]`).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Kernel dilation (default `[1, 1]`).
    #[serde(default = "ones2")]
    pub dilation: [usize; 2],
    /// Channel groups; both channel counts must be divisible by it (default 1).
    #[serde(default = "default_one")]
    pub groups: usize,
    /// Whether to learn a per-output-channel bias (default true).
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl Conv2dConfig {
    /// A convolution with stride 1, no padding, no dilation, one group and a bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: [usize; 2]) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size,
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the zero padding.
    pub fn with_padding(mut self, padding: [usize; 2]) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation.
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
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
    /// PyTorch (uniform in ±1/√fan_in, fan_in = in/groups · kh · kw).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Conv2d<F>> {
        let [kh, kw] = self.kernel_size;
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        validate(
            "Conv2d",
            self.in_channels,
            self.out_channels,
            self.groups,
            &[
                ("kernel_size", kh),
                ("kernel_size", kw),
                ("stride", sh),
                ("stride", sw),
                ("dilation", dh),
                ("dilation", dw),
            ],
        )?;
        let cg = self.in_channels / self.groups;
        let bound = 1.0 / ((cg * kh * kw) as f64).sqrt();
        let weight = init::uniform(rng, &[self.out_channels, cg, kh, kw], bound);
        let bias = self
            .bias
            .then(|| Param::new(init::uniform(rng, &[self.out_channels], bound)));
        Ok(Conv2d {
            config: self.clone(),
            weight: Param::new(weight),
            bias,
            cols: ColumnCache::default(),
        })
    }
}

/// 2-D convolution: input `[N, C_in, H, W]`, output `[N, C_out, H_out, W_out]`.
#[derive(Debug, Clone)]
pub struct Conv2d<F> {
    config: Conv2dConfig,
    /// Weight, `[out_channels, in_channels / groups, kh, kw]`.
    pub weight: Param<F>,
    /// Bias, `[out_channels]`.
    pub bias: Option<Param<F>>,
    /// Columns of the last training forward pass, for its backward pass.
    cols: ColumnCache<F>,
}

impl<F: Float> Conv2d<F> {
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
            &[n, g.o, g.oh, g.ow],
            &mut self.weight,
            self.bias.as_mut(),
            &self.cols,
            want_gx,
        )
    }

    /// The configuration this layer was built from.
    pub fn conv_config(&self) -> &Conv2dConfig {
        &self.config
    }

    fn geom(&self, input: &Tensor<F>) -> Result<(usize, Geom)> {
        let c = &self.config;
        let expected = || format!("[N, {}, H, W]", c.in_channels);
        if input.ndim() != 4 || input.shape()[1] != c.in_channels {
            return Err(Error::shape(self.name(), expected(), input.shape()));
        }
        let (n, h, w) = (input.shape()[0], input.shape()[2], input.shape()[3]);
        let [kh, kw] = c.kernel_size;
        let [sh, sw] = c.stride;
        let [ph, pw] = c.padding;
        let [dh, dw] = c.dilation;
        let (Some(oh), Some(ow)) = (out_len(h, kh, sh, ph, dh), out_len(w, kw, sw, pw, dw)) else {
            return Err(Error::shape(
                self.name(),
                format!(
                    "{} with padded H, W at least the dilated kernel {}x{}",
                    expected(),
                    dh * (kh - 1) + 1,
                    dw * (kw - 1) + 1
                ),
                input.shape(),
            ));
        };
        Ok((
            n,
            Geom {
                c: c.in_channels,
                h,
                w,
                o: c.out_channels,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                dh,
                dw,
                groups: c.groups,
                oh,
                ow,
            },
        ))
    }
}

impl<F: Float> Module<F> for Conv2d<F> {
    fn name(&self) -> String {
        let c = &self.config;
        format!(
            "Conv2d({}->{}, {}x{})",
            c.in_channels, c.out_channels, c.kernel_size[0], c.kernel_size[1]
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
        tensor_of(&self.name(), &[n, g.o, g.oh, g.ow], y)
    }

    fn infer(&mut self, input: Tensor<F>) -> Result<Tensor<F>> {
        let (n, g) = self.geom(&input)?;
        self.cols.invalidate();
        let y = conv_forward(&g, n, &input, &self.weight, self.bias.as_ref(), None)?;
        tensor_of(&self.name(), &[n, g.o, g.oh, g.ow], y)
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
        LayerConfig::Conv2d(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use rand::SeedableRng;

    fn rand_input(shape: &[usize], seed: u64) -> Tensor<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        init::uniform(&mut rng, shape, 1.0)
    }

    /// Direct (seven-loop) convolution for reference.
    fn naive(
        cfg: &Conv2dConfig,
        x: &Tensor<f64>,
        w: &Tensor<f64>,
        b: Option<&Tensor<f64>>,
    ) -> Tensor<f64> {
        let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let [kh, kw] = cfg.kernel_size;
        let [sh, sw] = cfg.stride;
        let [ph, pw] = cfg.padding;
        let [dh, dw] = cfg.dilation;
        let oh = out_len(h, kh, sh, ph, dh).unwrap();
        let ow = out_len(wd, kw, sw, pw, dw).unwrap();
        let o = cfg.out_channels;
        let (cg, og) = (c / cfg.groups, o / cfg.groups);
        let mut y = Tensor::zeros(ndarray::IxDyn(&[n, o, oh, ow]));
        for ni in 0..n {
            for oc in 0..o {
                let grp = oc / og;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut s = b.map(|b| b[[oc]]).unwrap_or(0.0);
                        for ci in 0..cg {
                            for a in 0..kh {
                                for bb in 0..kw {
                                    let ih = (i * sh + a * dh) as isize - ph as isize;
                                    let iw = (j * sw + bb * dw) as isize - pw as isize;
                                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd
                                    {
                                        s += w[[oc, ci, a, bb]]
                                            * x[[ni, grp * cg + ci, ih as usize, iw as usize]];
                                    }
                                }
                            }
                        }
                        y[[ni, oc, i, j]] = s;
                    }
                }
            }
        }
        y
    }

    fn configs() -> Vec<Conv2dConfig> {
        vec![
            Conv2dConfig::new(3, 4, [3, 3]),
            Conv2dConfig::new(4, 6, [3, 2])
                .with_stride([2, 1])
                .with_padding([1, 2])
                .with_dilation([2, 1])
                .with_groups(2),
            Conv2dConfig::new(2, 4, [1, 1]).with_bias(false),
            Conv2dConfig::new(4, 2, [1, 1])
                .with_groups(2)
                .with_stride([2, 2]),
            Conv2dConfig::new(2, 3, [2, 3])
                .with_stride([3, 2])
                .with_padding([2, 1]),
        ]
    }

    #[test]
    fn forward_matches_direct_convolution() {
        for (i, cfg) in configs().into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut conv = cfg.init::<f64>(&mut rng).unwrap();
            let x = rand_input(&[3, cfg.in_channels, 7, 6], 10 + i as u64);
            let y = conv.forward(&x).unwrap();
            let want = naive(
                &cfg,
                &x,
                &conv.weight.value,
                conv.bias.as_ref().map(|b| &b.value),
            );
            assert_eq!(y.shape(), want.shape(), "{cfg:?}");
            assert!((&y - &want).iter().all(|d| d.abs() < 1e-12), "{cfg:?}");
        }
    }

    #[test]
    fn conv2d_passes_gradcheck_with_groups_dilation_stride_padding() {
        for (i, cfg) in configs().into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut conv = cfg.init::<f64>(&mut rng).unwrap();
            let x = rand_input(&[2, cfg.in_channels, 6, 5], 20 + i as u64);
            check_module(&mut conv, &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
    }

    #[test]
    fn single_image_and_batch_agree() {
        let cfg = Conv2dConfig::new(3, 5, [3, 3]).with_padding([1, 1]);
        let mut rng = StdRng::seed_from_u64(4);
        let mut conv = cfg.init::<f64>(&mut rng).unwrap();
        let x = rand_input(&[4, 3, 9, 8], 3);
        let y = conv.forward(&x).unwrap();
        let gy = rand_input(y.shape(), 5);
        let gx = conv.backward(&x, &gy).unwrap();
        let gw = conv.weight.grad.clone();
        conv.weight.grad.fill(0.0);
        for i in 0..4 {
            let xi = x
                .slice(ndarray::s![i..i + 1, .., .., ..])
                .to_owned()
                .into_dyn();
            let gyi = gy
                .slice(ndarray::s![i..i + 1, .., .., ..])
                .to_owned()
                .into_dyn();
            let yi = conv.forward(&xi).unwrap();
            assert!((&yi - &y.slice(ndarray::s![i..i + 1, .., .., ..]))
                .iter()
                .all(|d| d.abs() < 1e-12));
            let gxi = conv.backward(&xi, &gyi).unwrap();
            assert!((&gxi - &gx.slice(ndarray::s![i..i + 1, .., .., ..]))
                .iter()
                .all(|d| d.abs() < 1e-12));
        }
        assert!((&conv.weight.grad - &gw).iter().all(|d| d.abs() < 1e-10));
    }

    #[test]
    fn an_inference_pass_between_forward_and_backward_leaves_no_stale_columns() {
        let cfg = Conv2dConfig::new(2, 3, [3, 3]).with_padding([1, 1]);
        let mut rng = StdRng::seed_from_u64(8);
        let mut conv = cfg.init::<f64>(&mut rng).unwrap();
        let mut fresh = conv.clone();
        let x = rand_input(&[3, 2, 7, 6], 1);
        let other = rand_input(&[3, 2, 7, 6], 2);
        let y = conv.forward(&x).unwrap();
        let gy = rand_input(y.shape(), 3);
        // same shape, other images: had `infer` kept its columns, backward
        // would read them instead of x's
        conv.infer(other).unwrap();
        let gx = conv.backward(&x, &gy).unwrap();
        fresh.forward(&x).unwrap();
        assert_eq!(gx, fresh.backward(&x, &gy).unwrap());
        assert_eq!(conv.weight.grad, fresh.weight.grad);
    }

    #[test]
    fn backward_params_accumulates_what_backward_does() {
        use crate::layers::{Flatten, LinearConfig, Sequential, Tanh};
        use crate::module::ModuleExt;
        // the same model twice (same seed): conv first, then linear first
        let build = |conv_first: bool| {
            let mut rng = StdRng::seed_from_u64(9);
            let mut net = Sequential::<f64>::new();
            if conv_first {
                net = net
                    .with(
                        Conv2dConfig::new(1, 3, [3, 3])
                            .init::<f64>(&mut rng)
                            .unwrap(),
                    )
                    .with(Tanh::default())
                    .with(
                        Conv2dConfig::new(3, 2, [3, 3])
                            .init::<f64>(&mut rng)
                            .unwrap(),
                    );
            } else {
                net = net
                    .with(Flatten::new(1))
                    .with(LinearConfig::new(64, 5).init::<f64>(&mut rng).unwrap())
                    .with(Tanh::default())
                    .with(LinearConfig::new(5, 3).init::<f64>(&mut rng).unwrap());
            }
            net
        };
        let x = rand_input(&[2, 1, 8, 8], 4);
        for conv_first in [true, false] {
            let (mut full, mut params_only) = (build(conv_first), build(conv_first));
            let y = full.forward(&x).unwrap();
            let gy = rand_input(y.shape(), 6);
            full.backward(&x, &gy).unwrap();
            params_only.forward(&x).unwrap();
            params_only.backward_params(&x, &gy).unwrap();
            assert_eq!(full.flat_grads(), params_only.flat_grads());
            assert!(full.flat_grads().iter().any(|&g| g != 0.0));
            // before any forward pass there is nothing to go back through
            let err = build(conv_first).backward_params(&x, &gy).unwrap_err();
            assert!(matches!(err, Error::NoForward { .. }), "{err}");
        }
    }

    #[test]
    fn bad_input_names_layer_and_shapes() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut conv = Conv2dConfig::new(3, 4, [3, 3])
            .init::<f32>(&mut rng)
            .unwrap();
        for shape in [&[2usize, 3, 8][..], &[2, 2, 8, 8], &[1, 3, 2, 8]] {
            let err = conv
                .forward(&Tensor::zeros(ndarray::IxDyn(shape)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("Conv2d")
                    && err.contains("[N, 3, H, W]")
                    && err.contains(&format!("{shape:?}")),
                "{err}"
            );
        }
        let x = Tensor::zeros(ndarray::IxDyn(&[1, 3, 5, 5]));
        let err = conv
            .backward(&x, &Tensor::zeros(ndarray::IxDyn(&[1, 4, 2, 2])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Conv2d") && err.contains("[1, 4, 3, 3]") && err.contains("[1, 4, 2, 2]"),
            "{err}"
        );
    }

    #[test]
    fn bad_config_is_refused() {
        let mut rng = StdRng::seed_from_u64(0);
        assert!(Conv2dConfig::new(3, 4, [3, 3])
            .with_groups(2)
            .init::<f32>(&mut rng)
            .is_err());
        assert!(Conv2dConfig::new(3, 4, [0, 3])
            .init::<f32>(&mut rng)
            .is_err());
        assert!(Conv2dConfig::new(3, 4, [3, 3])
            .with_stride([0, 1])
            .init::<f32>(&mut rng)
            .is_err());
    }

    #[test]
    fn config_round_trips_through_json_with_defaults() {
        let c: Conv2dConfig =
            serde_json::from_str(r#"{"in_channels":1,"out_channels":6,"kernel_size":[5,5]}"#)
                .unwrap();
        assert_eq!(c, Conv2dConfig::new(1, 6, [5, 5]));
        let l = LayerConfig::Conv2d(c.clone().with_groups(1).with_padding([2, 2]));
        let back: LayerConfig = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        let mut rng = StdRng::seed_from_u64(0);
        let m = l.build::<f32>(&mut rng).unwrap();
        assert_eq!(m.config(), l);
    }

    fn time_fwd_bwd(cfg: Conv2dConfig, shape: [usize; 4], reps: usize) {
        let mut rng = StdRng::seed_from_u64(0);
        let mut conv = cfg.init::<f32>(&mut rng).unwrap();
        let x: Tensor<f32> = init::uniform(&mut rng, &shape, 1.0);
        let y = conv.forward(&x).unwrap();
        let gy = y.mapv(|v| v * 0.5);
        conv.backward(&x, &gy).unwrap();
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            let y = conv.forward(&x).unwrap();
            tf = tf.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let gx = conv.backward(&x, &gy).unwrap();
            tb = tb.min(t.elapsed().as_secs_f64());
            assert_eq!(gx.len() + y.len(), x.len() + gy.len());
        }
        println!(
            "{} on {shape:?}: forward {:.2} ms, backward {:.2} ms (best of {reps})",
            conv.name(),
            tf * 1e3,
            tb * 1e3
        );
    }

    /// Release-mode timing of the LeNet-5 convolutions (batch 128):
    /// `cargo test -p kiln-nn --release --lib conv2d_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conv2d_timing_lenet() {
        time_fwd_bwd(Conv2dConfig::new(1, 6, [5, 5]), [128, 1, 28, 28], 50);
        time_fwd_bwd(Conv2dConfig::new(6, 16, [5, 5]), [128, 6, 12, 12], 50);
    }

    /// Release-mode timing of a 3x3 64->64 convolution on 75x75, batch 32.
    #[test]
    #[ignore]
    fn conv2d_timing_3x3_64() {
        time_fwd_bwd(
            Conv2dConfig::new(64, 64, [3, 3]).with_padding([1, 1]),
            [32, 64, 75, 75],
            3,
        );
    }

    /// Forward + backward of a LeNet-5 (conv 1->6 5x5, tanh, max-pool 2,
    /// conv 6->16 5x5, tanh, max-pool 2, 256->120->84->10, log-softmax) on a
    /// batch of 128 28x28 images (release, `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn lenet5_step_timing() {
        use crate::layers::{Flatten, LinearConfig, LogSoftMax, Pool2dConfig, Sequential, Tanh};
        let mut rng = StdRng::seed_from_u64(0);
        let mut net = Sequential::<f32>::new()
            .with(
                Conv2dConfig::new(1, 6, [5, 5])
                    .init::<f32>(&mut rng)
                    .unwrap(),
            )
            .with(Tanh::default())
            .with(Pool2dConfig::new([2, 2]).init().unwrap())
            .with(
                Conv2dConfig::new(6, 16, [5, 5])
                    .init::<f32>(&mut rng)
                    .unwrap(),
            )
            .with(Tanh::default())
            .with(Pool2dConfig::new([2, 2]).init().unwrap())
            .with(Flatten::new(1))
            .with(LinearConfig::new(256, 120).init::<f32>(&mut rng).unwrap())
            .with(Tanh::default())
            .with(LinearConfig::new(120, 84).init::<f32>(&mut rng).unwrap())
            .with(Tanh::default())
            .with(LinearConfig::new(84, 10).init::<f32>(&mut rng).unwrap())
            .with(LogSoftMax::new(1));
        let x: Tensor<f32> = init::uniform(&mut rng, &[128, 1, 28, 28], 1.0);
        let gy: Tensor<f32> = init::uniform(&mut rng, &[128, 10], 0.01);
        let mut best = f64::MAX;
        for _ in 0..30 {
            let t = std::time::Instant::now();
            net.forward(&x).unwrap();
            net.backward(&x, &gy).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "LeNet-5 forward+backward, batch 128: {:.2} ms (best of 30)",
            best * 1e3
        );
    }
}
