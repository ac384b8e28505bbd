//! 2-D max pooling (PyTorch `nn.MaxPool2d`, no dilation).

use serde::{Deserialize, Serialize};

use super::{check_grad_output, contiguous, for_planes, tensor_of, validate, PoolGeom};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::Module;
use crate::tensor::{Float, Tensor};

/// Configuration of a [`MaxPool2d`] layer. Pairs are `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool2dConfig {
    /// Window size.
    pub kernel_size: [usize; 2],
    /// Stride; `None` (the default) means the kernel size, as in PyTorch.
    #[serde(default)]
    pub stride: Option<[usize; 2]>,
    /// Implicit padding on each side (at most half the kernel; default 0).
    #[serde(default)]
    pub padding: [usize; 2],
    /// Use ceiling instead of floor for the output size (default false).
    #[serde(default)]
    pub ceil_mode: bool,
}

impl Pool2dConfig {
    /// Non-overlapping windows of `kernel_size` (stride = kernel), no padding, floor mode.
    pub fn new(kernel_size: [usize; 2]) -> Self {
        Pool2dConfig {
            kernel_size,
            stride: None,
            padding: [0, 0],
            ceil_mode: false,
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

    /// The effective stride.
    pub fn stride(&self) -> [usize; 2] {
        self.stride.unwrap_or(self.kernel_size)
    }

    /// Validates the configuration.
    pub fn init(&self) -> Result<MaxPool2d> {
        validate("MaxPool2d", self.kernel_size, self.stride(), self.padding)?;
        Ok(MaxPool2d {
            config: self.clone(),
            indices: None,
        })
    }
}

/// Max pooling over `[N, C, H, W]`; padded positions never win. Caches the
/// position of every window's maximum (the first one on ties, NaN wins) for backward.
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    config: Pool2dConfig,
    /// Input shape and per-output argmax (index inside its input plane) of the last forward.
    indices: Option<(Vec<usize>, Vec<u32>)>,
}

impl MaxPool2d {
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
}

impl<F: Float> Module<F> for MaxPool2d {
    fn name(&self) -> String {
        let c = &self.config;
        let s = c.stride();
        format!(
            "MaxPool2d({}x{}, stride {}x{})",
            c.kernel_size[0], c.kernel_size[1], s[0], s[1]
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        let g = self.geom(input.shape())?;
        if g.h * g.w > u32::MAX as usize {
            return Err(Error::shape(
                Module::<F>::name(self),
                "planes of fewer than 2^32 elements",
                input.shape(),
            ));
        }
        let x = contiguous(input);
        let (ip, op) = (g.h * g.w, g.oh * g.ow);
        let mut idx = vec![0u32; g.planes() * op];
        for_planes(&x, ip, &mut idx, op, |plane, out| {
            for (oh, orow) in out.chunks_exact_mut(g.ow).enumerate() {
                let (h0, h1) = g.window(oh, 0);
                let (h0, h1) = (h0.max(0) as usize, (h1 as usize).min(g.h));
                for (ow, o) in orow.iter_mut().enumerate() {
                    let (w0, w1) = g.window(ow, 1);
                    let (w0, w1) = (w0.max(0) as usize, (w1 as usize).min(g.w));
                    let mut best = h0 * g.w + w0;
                    let mut max = plane[best];
                    for i in h0..h1 {
                        let row = &plane[i * g.w..i * g.w + w1];
                        for (j, &v) in row.iter().enumerate().skip(w0) {
                            // first maximum wins; a NaN beats everything (as in PyTorch)
                            if v > max || (v.is_nan() && !max.is_nan()) {
                                max = v;
                                best = i * g.w + j;
                            }
                        }
                    }
                    *o = best as u32;
                }
            }
        });
        let y: Vec<F> = x
            .chunks(ip.max(1))
            .zip(idx.chunks(op.max(1)))
            .flat_map(|(plane, ix)| ix.iter().map(move |&i| plane[i as usize]))
            .collect();
        self.indices = Some((input.shape().to_vec(), idx));
        tensor_of(&Module::<F>::name(self), &g.out_shape(), y)
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        let name = Module::<F>::name(self);
        let g = self.geom(input.shape())?;
        check_grad_output(&name, &g, grad_output.shape())?;
        let idx = match &self.indices {
            Some((shape, idx)) if shape == input.shape() => idx,
            Some((shape, _)) => {
                return Err(Error::shape(
                    format!("{name} backward"),
                    format!("the input of the last forward {shape:?}"),
                    input.shape(),
                ))
            }
            None => return Err(Error::NoForward { op: name }),
        };
        let gy = contiguous(grad_output);
        let (ip, op) = (g.h * g.w, g.oh * g.ow);
        let mut gx = vec![F::zero(); g.planes() * ip];
        if ip > 0 && op > 0 {
            for ((gxp, gyp), ixp) in gx.chunks_mut(ip).zip(gy.chunks(op)).zip(idx.chunks(op)) {
                for (&d, &i) in gyp.iter().zip(ixp) {
                    gxp[i as usize] += d;
                }
            }
        }
        tensor_of(&name, input.shape(), gx)
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::MaxPool2d(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::init;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn forward_picks_window_maxima_with_ceil_mode_and_padding() {
        let x = Tensor::from_shape_vec(
            ndarray::IxDyn(&[1, 1, 3, 5]),
            (0..15).map(|v| ((v * 7) % 11) as f64).collect(),
        )
        .unwrap();
        // rows: [0 7 3 10 6] [2 9 5 1 8] [4 0 7 3 10]
        let mut m = Pool2dConfig::new([2, 2])
            .with_ceil_mode(true)
            .init()
            .unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.shape(), [1, 1, 2, 3]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![9.0, 10.0, 8.0, 4.0, 7.0, 10.0]
        );
        let mut m = Pool2dConfig::new([3, 3])
            .with_stride([2, 2])
            .with_padding([1, 1])
            .init()
            .unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.shape(), [1, 1, 2, 3]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            vec![9.0, 10.0, 10.0, 9.0, 9.0, 10.0]
        );
    }

    #[test]
    fn max_pool_passes_gradcheck() {
        let mut rng = StdRng::seed_from_u64(5);
        // distinct values so that no window has a tie
        let mut x: Tensor<f64> = init::uniform(&mut rng, &[2, 3, 7, 6], 1.0);
        for (i, v) in x.iter_mut().enumerate() {
            *v += i as f64 * 1e-3;
        }
        for cfg in [
            Pool2dConfig::new([2, 2]),
            Pool2dConfig::new([2, 2]).with_ceil_mode(true),
            Pool2dConfig::new([3, 2])
                .with_stride([2, 1])
                .with_padding([1, 1])
                .with_ceil_mode(true),
            Pool2dConfig::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 0]),
        ] {
            let mut m = cfg.init().unwrap();
            check_module(&mut m, &x, 1e-7)
                .unwrap()
                .within(1e-6)
                .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
    }

    #[test]
    fn bad_input_and_config_are_errors() {
        let mut m = Pool2dConfig::new([2, 2]).init().unwrap();
        let err = Module::<f32>::forward(&mut m, &Tensor::zeros(ndarray::IxDyn(&[2, 3, 4])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MaxPool2d") && err.contains("[N, C, H, W]") && err.contains("[2, 3, 4]"),
            "{err}"
        );
        let err = Module::<f32>::forward(&mut m, &Tensor::zeros(ndarray::IxDyn(&[2, 3, 1, 4])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MaxPool2d") && err.contains("[2, 3, 1, 4]"),
            "{err}"
        );
        assert!(Pool2dConfig::new([2, 2])
            .with_padding([2, 0])
            .init()
            .is_err());
        let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[1, 1, 4, 4]));
        m.forward(&x).unwrap();
        let err = m
            .backward(&x, &Tensor::zeros(ndarray::IxDyn(&[1, 1, 3, 2])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MaxPool2d")
                && err.contains("[1, 1, 2, 2]")
                && err.contains("[1, 1, 3, 2]"),
            "{err}"
        );
    }
}
