//! One recurrent layer run over a whole sequence (one direction), with full
//! backpropagation through time.
//!
//! Performance: the input projection of all `T * N` steps is one GEMM
//! `(T*N, F) x (F, G*H)`; each step then does one `(N, H) x (H, G*H)` GEMM
//! and the gate arithmetic. Backward does one `(N, G*H) x (G*H, H)` GEMM per
//! step and three large GEMMs at the end for `dW_ih`, `dW_hh` and `dx`.

use ndarray::{Array2, ArrayView2, Axis};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::cell::{step_backward, step_forward, CellKind, StepCache, StepGrad, StepIn, StepOut};
use super::{check_lengths, contiguous, full_lengths, SequenceModule};
use crate::error::{Error, Result};
use crate::init;
use crate::layers::LayerConfig;
use crate::matmul;
use crate::module::{qualified, Module, Param};
use crate::tensor::{view2, Float, Tensor};

fn default_true() -> bool {
    true
}

/// Configuration of a [`Recurrent`] layer (PyTorch's `nn.RNN`, `nn.LSTM`
/// or `nn.GRU` with one layer, one direction, `batch_first=False`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrentConfig {
    /// The cell.
    pub cell: CellKind,
    /// Input features `F`.
    pub input_size: usize,
    /// Hidden units `H`.
    pub hidden_size: usize,
    /// Whether to learn `bias_ih_l0` and `bias_hh_l0` (default true).
    #[serde(default = "default_true")]
    pub bias: bool,
}

impl RecurrentConfig {
    /// A layer of `cell` with biases.
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize) -> Self {
        RecurrentConfig {
            cell,
            input_size,
            hidden_size,
            bias: true,
        }
    }

    /// An Elman RNN with tanh.
    pub fn rnn_tanh(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::RnnTanh, input_size, hidden_size)
    }

    /// An LSTM.
    pub fn lstm(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::Lstm, input_size, hidden_size)
    }

    /// A GRU.
    pub fn gru(input_size: usize, hidden_size: usize) -> Self {
        Self::new(CellKind::Gru, input_size, hidden_size)
    }

    /// Sets whether the layer has biases.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Validates the configuration and initialises every weight like
    /// PyTorch (uniform in ±1/√hidden_size).
    pub fn init<F: Float>(&self, rng: &mut StdRng) -> Result<Recurrent<F>> {
        if self.input_size == 0 || self.hidden_size == 0 {
            return Err(Error::config(
                self.cell.label(),
                "input_size and hidden_size must be positive",
            ));
        }
        let (h, f, gh) = (
            self.hidden_size,
            self.input_size,
            self.cell.gates() * self.hidden_size,
        );
        let bound = 1.0 / (h as f64).sqrt();
        let weight_ih = Param::new(init::uniform(rng, &[gh, f], bound));
        let weight_hh = Param::new(init::uniform(rng, &[gh, h], bound));
        let bias = self.bias.then(|| {
            (
                Param::new(init::uniform(rng, &[gh], bound)),
                Param::new(init::uniform(rng, &[gh], bound)),
            )
        });
        Ok(Recurrent {
            config: self.clone(),
            weight_ih,
            weight_hh,
            bias,
            cache: None,
        })
    }
}

/// What the forward pass keeps for BPTT.
#[derive(Debug, Clone)]
struct Cache<F> {
    shape: Vec<usize>,
    lengths: Vec<usize>,
    /// Activated gates, `T × N × GH`.
    gates: Vec<F>,
    /// Hidden states `h_0 … h_T`, `(T+1) × N × H` (`h_0 = 0`).
    hs: Vec<F>,
    /// Cell states `c_0 … c_T` (LSTM), else empty.
    cs: Vec<F>,
    /// `W_hn h + b_hn` per step (GRU), else empty.
    hn: Vec<F>,
}

/// A recurrent layer over `(T, N, input_size)` giving `(T, N, hidden_size)`
/// (the hidden state of every step; zero initial state). Parameters are
/// named as in PyTorch: `weight_ih_l0 [G*H, F]`, `weight_hh_l0 [G*H, H]`,
/// `bias_ih_l0 [G*H]`, `bias_hh_l0 [G*H]`, so a PyTorch `state_dict` of a
/// one-layer module loads as is.
#[derive(Debug, Clone)]
pub struct Recurrent<F> {
    config: RecurrentConfig,
    /// Input-to-hidden weights of all gates, `[G*H, F]`.
    pub weight_ih: Param<F>,
    /// Hidden-to-hidden weights of all gates, `[G*H, H]`.
    pub weight_hh: Param<F>,
    /// `(bias_ih, bias_hh)`, each `[G*H]`, when configured.
    pub bias: Option<(Param<F>, Param<F>)>,
    cache: Option<Cache<F>>,
}

impl<F: Float> Recurrent<F> {
    /// The layer's configuration.
    pub fn recurrent_config(&self) -> &RecurrentConfig {
        &self.config
    }

    /// Visits the parameters under PyTorch's names with `suffix` appended
    /// (`""`, or `"_reverse"` for the backward direction of a bidirectional layer).
    pub(super) fn visit_named(
        &self,
        prefix: &str,
        suffix: &str,
        f: &mut dyn FnMut(&str, &Param<F>),
    ) {
        f(
            &qualified(prefix, &format!("weight_ih_l0{suffix}")),
            &self.weight_ih,
        );
        f(
            &qualified(prefix, &format!("weight_hh_l0{suffix}")),
            &self.weight_hh,
        );
        if let Some((bi, bh)) = &self.bias {
            f(&qualified(prefix, &format!("bias_ih_l0{suffix}")), bi);
            f(&qualified(prefix, &format!("bias_hh_l0{suffix}")), bh);
        }
    }

    /// Mutable form of [`Recurrent::visit_named`].
    pub(super) fn visit_named_mut(
        &mut self,
        prefix: &str,
        suffix: &str,
        f: &mut dyn FnMut(&str, &mut Param<F>),
    ) {
        f(
            &qualified(prefix, &format!("weight_ih_l0{suffix}")),
            &mut self.weight_ih,
        );
        f(
            &qualified(prefix, &format!("weight_hh_l0{suffix}")),
            &mut self.weight_hh,
        );
        if let Some((bi, bh)) = &mut self.bias {
            f(&qualified(prefix, &format!("bias_ih_l0{suffix}")), bi);
            f(&qualified(prefix, &format!("bias_hh_l0{suffix}")), bh);
        }
    }

    fn check_input(&self, input: &Tensor<F>, lengths: &[usize]) -> Result<()> {
        let s = input.shape();
        if s.len() != 3 || s[2] != self.config.input_size {
            return Err(Error::shape(
                self.name(),
                format!("(T, N, {})", self.config.input_size),
                s,
            ));
        }
        check_lengths(&self.name(), s, lengths)
    }

    fn bias_slice(&self, which: usize) -> Result<Option<&[F]>> {
        match &self.bias {
            None => Ok(None),
            Some((bi, bh)) => {
                let p = if which == 0 { bi } else { bh };
                p.value
                    .as_slice()
                    .map(Some)
                    .ok_or_else(|| Error::invalid(self.name(), "bias is not contiguous"))
            }
        }
    }
}

fn active_at(lengths: &[usize], t: usize) -> Vec<bool> {
    lengths.iter().map(|&l| t < l).collect()
}

/// Rows whose recurrent product step `t` needs: the active rows when they
/// form a prefix (a batch sorted by decreasing length, as DS2's SortaGrad
/// loaders give), else all `N` rows.
fn rows_needed(lengths: &[usize], t: usize) -> usize {
    let b = lengths.iter().filter(|&&l| t < l).count();
    if lengths[..b].iter().all(|&l| t < l) {
        b
    } else {
        lengths.len()
    }
}

fn add_row_bias<F: Float>(m: &mut Array2<F>, b: &[F]) {
    for mut row in m.rows_mut() {
        row.iter_mut().zip(b).for_each(|(v, &c)| *v += c);
    }
}

impl<F: Float> SequenceModule<F> for Recurrent<F> {
    fn forward_with_lengths(&mut self, input: &Tensor<F>, lengths: &[usize]) -> Result<Tensor<F>> {
        self.check_input(input, lengths)?;
        let name = self.name();
        let kind = self.config.cell;
        let (t_len, n, f) = (input.shape()[0], input.shape()[1], self.config.input_size);
        let hs = self.config.hidden_size;
        let gh = kind.gates() * hs;
        let x = contiguous(input);
        let x2 = ArrayView2::from_shape((t_len * n, f), &x)
            .map_err(|_| Error::shape(&name, "contiguous input", input.shape()))?;
        let w_ih = view2(&name, &self.weight_ih.value)?;
        let w_hh = view2(&name, &self.weight_hh.value)?;
        let mut xw = Array2::<F>::zeros((t_len * n, gh));
        matmul::gemm(F::one(), x2, w_ih.t(), F::zero(), &mut xw.view_mut())?;
        let b_ih = self.bias_slice(0)?;
        let b_hh = self.bias_slice(1)?;
        if let Some(b) = b_ih {
            add_row_bias(&mut xw, b);
        }
        // RNN/LSTM: fold b_hh into the input projection; GRU keeps it with
        // the recurrent product (b_hn sits inside r * (W_hn h + b_hn)).
        if kind != CellKind::Gru {
            if let Some(b) = b_hh {
                add_row_bias(&mut xw, b);
            }
        }
        let xw = xw
            .as_slice()
            .ok_or_else(|| Error::invalid(&name, "projection is not contiguous"))?;
        let lstm = kind == CellKind::Lstm;
        let gru = kind == CellKind::Gru;
        let mut gates = vec![F::zero(); t_len * n * gh];
        let mut hsv = vec![F::zero(); (t_len + 1) * n * hs];
        let mut cs = if lstm {
            vec![F::zero(); (t_len + 1) * n * hs]
        } else {
            Vec::new()
        };
        let mut hn = if gru {
            vec![F::zero(); t_len * n * hs]
        } else {
            Vec::new()
        };
        let mut hw = Array2::<F>::zeros((n, gh));
        let nh = n * hs;
        for t in 0..t_len {
            let (done, rest) = hsv.split_at_mut((t + 1) * nh);
            let h_prev = &done[t * nh..];
            let h_prev_v = ArrayView2::from_shape((n, hs), h_prev)
                .map_err(|_| Error::invalid(&name, "hidden state layout"))?;
            let rows = rows_needed(lengths, t);
            if t == 0 {
                hw.fill(F::zero());
            } else if rows > 0 {
                // Rows past `rows` are inactive: step_forward never reads them.
                matmul::gemm(
                    F::one(),
                    h_prev_v.slice(ndarray::s![..rows, ..]),
                    w_hh.t(),
                    F::zero(),
                    &mut hw.slice_mut(ndarray::s![..rows, ..]),
                )?;
            }
            if gru {
                if let Some(b) = b_hh {
                    add_row_bias(&mut hw, b);
                }
            }
            let hw_s = hw
                .as_slice()
                .ok_or_else(|| Error::invalid(&name, "recurrent product is not contiguous"))?;
            let active = active_at(lengths, t);
            let (c_prev, c_out): (&[F], &mut [F]) = if lstm {
                let (cd, cr) = cs.split_at_mut((t + 1) * nh);
                (&cd[t * nh..], &mut cr[..nh])
            } else {
                (&[], &mut [])
            };
            let hn_out: &mut [F] = if gru {
                &mut hn[t * nh..(t + 1) * nh]
            } else {
                &mut []
            };
            step_forward(
                kind,
                hs,
                StepIn {
                    xw: &xw[t * n * gh..(t + 1) * n * gh],
                    hw: hw_s,
                    h_prev,
                    c_prev,
                    active: &active,
                },
                StepOut {
                    gates: &mut gates[t * n * gh..(t + 1) * n * gh],
                    h: &mut rest[..nh],
                    c: c_out,
                    hn: hn_out,
                },
            );
        }
        // Output: h_1..h_T, zero at padded steps.
        let mut out = hsv[nh..].to_vec();
        for t in 0..t_len {
            for (b, &l) in lengths.iter().enumerate() {
                if t >= l {
                    let o = (t * n + b) * hs;
                    out[o..o + hs].fill(F::zero());
                }
            }
        }
        self.cache = Some(Cache {
            shape: input.shape().to_vec(),
            lengths: lengths.to_vec(),
            gates,
            hs: hsv,
            cs,
            hn,
        });
        Tensor::from_shape_vec(ndarray::IxDyn(&[t_len, n, hs]), out)
            .map_err(|_| Error::invalid(&name, "output layout"))
    }

    fn backward_with_lengths(
        &mut self,
        input: &Tensor<F>,
        lengths: &[usize],
        grad_output: &Tensor<F>,
    ) -> Result<Tensor<F>> {
        self.check_input(input, lengths)?;
        let name = self.name();
        let kind = self.config.cell;
        let (t_len, n, f) = (input.shape()[0], input.shape()[1], self.config.input_size);
        let hs = self.config.hidden_size;
        let gh = kind.gates() * hs;
        if grad_output.shape() != [t_len, n, hs] {
            return Err(Error::shape(
                format!("{name} backward"),
                format!("grad_output [{t_len}, {n}, {hs}]"),
                grad_output.shape(),
            ));
        }
        let cache = self
            .cache
            .take()
            .ok_or_else(|| Error::NoForward { op: name.clone() })?;
        if cache.shape != input.shape() || cache.lengths != lengths {
            let shape = cache.shape.clone();
            self.cache = Some(cache);
            return Err(Error::shape(
                format!("{name} backward (input or lengths differ from the last forward)"),
                format!("{shape:?}"),
                input.shape(),
            ));
        }
        let gy = contiguous(grad_output);
        let nh = n * hs;
        let lstm = kind == CellKind::Lstm;
        let gru = kind == CellKind::Gru;
        let mut dxw = Array2::<F>::zeros((t_len * n, gh));
        let mut dhw = Array2::<F>::zeros((t_len * n, gh));
        let mut dh_next = vec![F::zero(); nh];
        let mut dh = vec![F::zero(); nh];
        let mut dc = vec![F::zero(); if lstm { nh } else { 0 }];
        {
            let w_hh = view2(&name, &self.weight_hh.value)?;
            let dxw_s = dxw
                .as_slice_mut()
                .ok_or_else(|| Error::invalid(&name, "gradient layout"))?;
            let dhw_s = dhw
                .as_slice_mut()
                .ok_or_else(|| Error::invalid(&name, "gradient layout"))?;
            for t in (0..t_len).rev() {
                let active = active_at(lengths, t);
                for (b, &act) in active.iter().enumerate() {
                    let r = b * hs..(b + 1) * hs;
                    let o = t * nh + b * hs;
                    for (j, d) in dh[r.clone()].iter_mut().enumerate() {
                        *d = dh_next[r.start + j] + if act { gy[o + j] } else { F::zero() };
                    }
                }
                let gr = t * n * gh..(t + 1) * n * gh;
                let (c_prev, c): (&[F], &[F]) = if lstm {
                    (
                        &cache.cs[t * nh..(t + 1) * nh],
                        &cache.cs[(t + 1) * nh..(t + 2) * nh],
                    )
                } else {
                    (&[], &[])
                };
                step_backward(
                    kind,
                    hs,
                    &dh,
                    StepCache {
                        gates: &cache.gates[gr.clone()],
                        h_prev: &cache.hs[t * nh..(t + 1) * nh],
                        c_prev,
                        c,
                        hn: if gru {
                            &cache.hn[t * nh..(t + 1) * nh]
                        } else {
                            &[]
                        },
                        active: &active,
                    },
                    StepGrad {
                        dc: &mut dc,
                        dxw: &mut dxw_s[gr.clone()],
                        dhw: &mut dhw_s[gr.clone()],
                        dh_prev: &mut dh_next,
                    },
                );
                // Inactive rows have zero dhw: only the needed prefix multiplies.
                let rows = rows_needed(lengths, t);
                if t > 0 && rows > 0 {
                    let dhw_t = ArrayView2::from_shape((rows, gh), &dhw_s[gr][..rows * gh])
                        .map_err(|_| Error::invalid(&name, "gradient layout"))?;
                    let mut dhn =
                        ndarray::ArrayViewMut2::from_shape((rows, hs), &mut dh_next[..rows * hs])
                            .map_err(|_| Error::invalid(&name, "gradient layout"))?;
                    matmul::gemm(F::one(), dhw_t, w_hh, F::one(), &mut dhn)?;
                }
            }
        }
        // Parameter gradients: three large GEMMs over all steps.
        let x = contiguous(input);
        let x2 = ArrayView2::from_shape((t_len * n, f), &x)
            .map_err(|_| Error::shape(&name, "contiguous input", input.shape()))?;
        let h_prev = ArrayView2::from_shape((t_len * n, hs), &cache.hs[..t_len * nh])
            .map_err(|_| Error::invalid(&name, "hidden state layout"))?;
        {
            let mut gw = crate::tensor::view2_mut(&name, &mut self.weight_ih.grad)?;
            matmul::gemm(F::one(), dxw.t(), x2, F::one(), &mut gw)?;
        }
        {
            let mut gw = crate::tensor::view2_mut(&name, &mut self.weight_hh.grad)?;
            matmul::gemm(F::one(), dhw.t(), h_prev, F::one(), &mut gw)?;
        }
        if let Some((bi, bh)) = &mut self.bias {
            let gbi = dxw.sum_axis(Axis(0)).into_dyn();
            bi.grad.zip_mut_with(&gbi, |g, &d| *g += d);
            // RNN/LSTM fold b_hh with b_ih, so its gradient is the same.
            let gbh = dhw.sum_axis(Axis(0)).into_dyn();
            bh.grad.zip_mut_with(&gbh, |g, &d| *g += d);
        }
        let w_ih = view2(&name, &self.weight_ih.value)?;
        let mut dx = Array2::<F>::zeros((t_len * n, f));
        matmul::gemm(F::one(), dxw.view(), w_ih, F::zero(), &mut dx.view_mut())?;
        self.cache = Some(cache);
        dx.into_shape_with_order(ndarray::IxDyn(&[t_len, n, f]))
            .map_err(|_| Error::invalid(&name, "input gradient layout"))
    }
}

impl<F: Float> Module<F> for Recurrent<F> {
    fn name(&self) -> String {
        format!(
            "{}({}->{})",
            self.config.cell.label(),
            self.config.input_size,
            self.config.hidden_size
        )
    }

    fn forward(&mut self, input: &Tensor<F>) -> Result<Tensor<F>> {
        self.forward_with_lengths(input, &full_lengths(input.shape()))
    }

    fn backward(&mut self, input: &Tensor<F>, grad_output: &Tensor<F>) -> Result<Tensor<F>> {
        self.backward_with_lengths(input, &full_lengths(input.shape()), grad_output)
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param<F>)) {
        self.visit_named(prefix, "", f)
    }

    fn visit_params_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<F>)) {
        self.visit_named_mut(prefix, "", f)
    }

    fn config(&self) -> LayerConfig {
        LayerConfig::Recurrent(self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_module;
    use crate::layers::recurrent::WithLengths;
    use rand::SeedableRng;

    const KINDS: [CellKind; 4] = [
        CellKind::RnnTanh,
        CellKind::RnnRelu,
        CellKind::Lstm,
        CellKind::Gru,
    ];

    fn input(shape: &[usize], seed: u64) -> Tensor<f64> {
        init::uniform(&mut StdRng::seed_from_u64(seed), shape, 1.0)
    }

    #[test]
    fn every_cell_passes_gradcheck_with_full_lengths() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut m = RecurrentConfig::new(kind, 3, 4)
                .init::<f64>(&mut rng)
                .unwrap();
            let r = check_module(&mut m, &input(&[4, 2, 3], 7), 1e-6).unwrap();
            r.within(1e-6).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn every_cell_passes_gradcheck_with_unequal_lengths() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(10 + i as u64);
            let inner = RecurrentConfig::new(kind, 3, 4)
                .with_bias(i % 2 == 0)
                .init::<f64>(&mut rng)
                .unwrap();
            let mut m = WithLengths {
                inner,
                lengths: vec![5, 2, 0, 4],
            };
            let r = check_module(&mut m, &input(&[5, 4, 3], 8), 1e-6).unwrap();
            r.within(1e-6).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn sorted_lengths_take_the_prefix_path_and_pass_gradcheck() {
        assert_eq!(rows_needed(&[5, 3, 1], 2), 2);
        assert_eq!(rows_needed(&[1, 3, 5], 2), 3);
        assert_eq!(rows_needed(&[1, 1], 2), 0);
        for (i, kind) in KINDS.into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(20 + i as u64);
            let inner = RecurrentConfig::new(kind, 3, 4)
                .init::<f64>(&mut rng)
                .unwrap();
            let mut m = WithLengths {
                inner,
                lengths: vec![5, 4, 2, 0],
            };
            let r = check_module(&mut m, &input(&[5, 4, 3], 9), 1e-6).unwrap();
            r.within(1e-6).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }

    #[test]
    fn padded_steps_give_zero_output_and_frozen_state() {
        let mut m = RecurrentConfig::gru(2, 3)
            .init::<f64>(&mut StdRng::seed_from_u64(1))
            .unwrap();
        let x = input(&[4, 2, 2], 3);
        let y = m.forward_with_lengths(&x, &[4, 2]).unwrap();
        assert!(y.slice(ndarray::s![2.., 1, ..]).iter().all(|&v| v == 0.0));
        // Sequence 1 alone, truncated to 2 steps, gives the same outputs.
        let x1 = x.slice(ndarray::s![..2, 1..2, ..]).to_owned().into_dyn();
        let y1 = m.forward(&x1).unwrap();
        for t in 0..2 {
            for j in 0..3 {
                assert!((y[[t, 1, j]] - y1[[t, 0, j]]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bad_shapes_and_lengths_are_errors() {
        let mut m = RecurrentConfig::lstm(3, 2)
            .init::<f32>(&mut StdRng::seed_from_u64(1))
            .unwrap();
        let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[4, 2, 3]));
        assert!(m
            .forward(&Tensor::zeros(ndarray::IxDyn(&[4, 2, 5])))
            .is_err());
        assert!(m.forward(&Tensor::zeros(ndarray::IxDyn(&[4, 3]))).is_err());
        let e = m.forward_with_lengths(&x, &[5, 1]).unwrap_err().to_string();
        assert!(e.contains("LSTM") && e.contains("exceeds"), "{e}");
        assert!(m.forward_with_lengths(&x, &[1]).is_err());
        assert!(m.backward(&x, &x).is_err());
        let y = m.forward(&x).unwrap();
        assert!(m.backward(&x, &x).is_err());
        assert!(m.backward(&x, &y).is_ok());
        assert!(RecurrentConfig::gru(0, 2)
            .init::<f32>(&mut StdRng::seed_from_u64(1))
            .is_err());
    }
}
