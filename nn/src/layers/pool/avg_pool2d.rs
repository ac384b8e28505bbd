//! 2-D average pooling (PyTorch `nn.AvgPool2d`).

use serde::{Deserialize, Serialize};

use super::{
    check_grad_output, contiguous, default_true, for_planes, tensor_of, validate, PoolGeom,
};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{Float, Tensor};

/// Configuration of an [`AvgPool2d`] layer. Pairs are `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgPool2dConfig {
    /// Window size.
    pub kernel_size: [usize; 2],
    /// Stride; `None` (the default) means the kernel size, as in PyTorch.
    #[serde(default)]
    pub stride: Option<[usize; 2]>,
    /// Implicit zero padding on each side (at most half the kernel; default 0).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Use ceiling instead of floor for the output size (default false).
    #[serde(default)]
    pub ceil_mode: bool,
    /// Count padded positions in the divisor (default true, as in PyTorch).
    #[serde(default = "default_true")]
    pub count_include_pad: bool,
    /// Divide by this instead of the window size (default none).
    #[serde(default)]
    pub divisor_override: Option<usize>,
}

impl AvgPool2dConfig {
    /// Non-overlapping windows of `kernel_size`, no padding, floor mode, padding counted.
    pub fn new(kernel_size: [usize; 2]) -> Self {
        AvgPool2dConfig {
            kernel_size,
            stride: None,
            padding: [0, 0],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// Sets the stride.
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = Some(stride);
        self
    }

    /// Sets the padding.
    pub fn with_padding(mut self, padding: [usize; 2]) -> Self {
        self.padding = padding;
        self
    }

    /// Sets ceil mode.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Sets whether padded positions count in the divisor.
    pub fn with_count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// The effective stride.
    pub fn stride(&self) -> [usize; 2] {
        self.stride.unwrap_or(self.kernel_size)
    }

    /// Validates the configuration.
    pub fn init(&self) -> Result<AvgPool2d> {
        validate("AvgPool2d", self.kernel_size, self.stride(), self.padding)?;
        if self.divisor_override == Some(0) {
            return Err(Error::config(
                "AvgPool2d",
                "divisor_override must be positive",
            ));
        }
        Ok(AvgPool2d {
            config: self.clone(),
        })
    }
}

/// Average pooling over `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    config: AvgPool2dConfig,
}

/// One output's clipped window `[h0, h1) x [w0, w1)` and its divisor.
struct Window {
    h0: usize,
    h1: usize,
    w0: usize,
    w1: usize,
    div: usize,
}

impl AvgPool2d {
    fn geom(&self, shape: &[usize]) -> Result<PoolGeom> {
        let c = &self.config;
        PoolGeom::new(
            &Module::<f32>::name(self),
            None,
            shape,
            c.kernel_size,
            c.stride(),
            c.padding,
            c.ceil_mode,
        )
    }

    /// PyTorch's window and divisor: the window is first clipped to the
    /// padded input (its size is the `count_include_pad` divisor), then to the input.
    fn window(&self, g: &PoolGeom, oh: usize, ow: usize) -> Window {
        let (hs, he) = g.window(oh, 0);
        let (ws, we) = g.window(ow, 1);
        let he = he.min((g.h + g.p[0]) as isize);
        let we = we.min((g.w + g.p[1]) as isize);
        let pool_size = ((he - hs) * (we - ws)).max(0) as usize;
        let (h0, w0) = (hs.max(0) as usize, ws.max(0) as usize);
        let (h1, w1) = ((he.max(0) as usize).min(g.h), (we.max(0) as usize).min(g.w));
        let (h1, w1) = (h1.max(h0), w1.max(w0));
        let div = match self.config.divisor_override {
            Some(d) => d,
            None if self.config.count_include_pad => pool_size,
            None => (h1 - h0) * (w1 - w0),
        };
        Window {
            h0,
            h1,
            w0,
            w1,
            div,
        }
    }
}

impl<F: Float> Module<F> for AvgPool2d {
    fn name(&self) -> String {
        let c = &self.config;
        let s = c.stride();
        format!(
            "AvgPool2d({}x{}, stride {}x{})",
            c.kernel_size[0], c.kernel_size[1], s[0], s[1]
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let g = self.geom(input.shape())?;
        let x = contiguous(input);
        let (ip, op) = (g.h * g.w, g.oh * g.ow);
        let mut y = vec![F::zero(); g.planes() * op];
        let this = &*self;
        for_planes(&x, ip, &mut y, op, |plane, out| {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let win = this.window(&g, oh, ow);
                    if win.h0 >= win.h1 || win.w0 >= win.w1 || win.div == 0 {
                        continue;
                    }
                    let mut sum = F::zero();
                    for i in win.h0..win.h1 {
                        sum += plane[i * g.w + win.w0..i * g.w + win.w1]
                            .iter()
                            .copied()
                            .sum::<F>();
                    }
                    out[oh * g.ow + ow] = sum / F::of_usize(win.div);
                }
            }
        });
        tensor_of(&Module::<F>::name(self), &g.out_shape(), y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        let g = self.geom(input.shape())?;
        check_grad_output(&name, &g, grad_output.shape())?;
        let gy = contiguous(grad_output);
        let (ip, op) = (g.h * g.w, g.oh * g.ow);
        let mut gx = vec![F::zero(); g.planes() * ip];
        if ip > 0 && op > 0 {
            for (gxp, gyp) in gx.chunks_mut(ip).zip(gy.chunks(op)) {
                for oh in 0..g.oh {
                    for ow in 0..g.ow {
                        let win = self.window(&g, oh, ow);
                        if win.h0 >= win.h1 || win.w0 >= win.w1 || win.div == 0 {
                            continue;
                        }
                        let d = gyp[oh * g.ow + ow] / F::of_usize(win.div);
                        for i in win.h0..win.h1 {
                            gxp[i * g.w + win.w0..i * g.w + win.w1]
                                .iter_mut()
                                .for_each(|v| *v += d);
                        }
                    }
                }
            }
        }
        tensor_of(&name, input.shape(), gx)
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::AvgPool2d(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn divisors_follow_pytorch() {
        let x = Tensor::<f64>::ones(ndarray::IxDyn(&[1, 1, 3, 3]));
        // k=2, s=2, p=1, ceil: windows [-1,1) [1,3) [3,5)->dropped? (2*2 >= 3+1): out 2
        let mut m = AvgPool2dConfig::new([2, 2])
            .with_padding([1, 1])
            .with_ceil_mode(true)
            .init()
            .unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.shape(), [1, 1, 2, 2]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![0.25, 0.5, 0.5, 1.0]
        );
        let mut m = m
            .config
            .clone()
            .with_count_include_pad(false)
            .init()
            .unwrap();
        let y = m.forward(&x).unwrap();
        assert!(y.iter().all(|&v| v == 1.0));
        // ceil mode window running past the padded input: divisor is clipped to it
        let x = Tensor::<f64>::ones(ndarray::IxDyn(&[1, 1, 1, 4]));
        let mut m = AvgPool2dConfig::new([1, 3])
            .with_stride([1, 2])
            .with_ceil_mode(true)
            .init()
            .unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![1.0, 1.0]);
    }

    #[test]
    fn avg_pool_passes_gradcheck() {
        let mut rng = StdRng::seed_from_u64(6);
        let x: Tensor<f64> = init::uniform(&mut rng, &[2, 2, 7, 6], 1.0);
        for cfg in [
            AvgPool2dConfig::new([2, 2]),
            AvgPool2dConfig::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_ceil_mode(true),
            AvgPool2dConfig::new([3, 2])
                .with_stride([2, 1])
                .with_padding([1, 1])
                .with_ceil_mode(true)
                .with_count_include_pad(false),
        ] {
            let mut m = cfg.init().unwrap();
            check_module(&mut m, &x, 1e-6)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut m = AvgPool2dConfig::new([2, 2]).init().unwrap();
        let err = Module::<f32>::forward(&mut m, &Tensor::zeros(ndarray::IxDyn(&[3, 4])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AvgPool2d") && err.contains("[N, C, H, W]") && err.contains("[3, 4]"),
            "{err}"
        );
        assert!(AvgPool2dConfig::new([2, 2])
            .with_padding([0, 2])
            .init()
            .is_err());
    }
}
