//! The per-step arithmetic of the recurrent cells (everything except the
//! matrix products), forward and backward, on row-major slices of one time
//! step: `N` rows of `gates * H` pre-activations or `H` states.
//!
//! Gate order and formulas are PyTorch's:
//! - RNN: `h' = act(W_ih x + b_ih + W_hh h + b_hh)`, act = tanh or ReLU;
//! - LSTM, gates `i, f, g, o`: `c' = f c + i g`, `h' = o tanh(c')`;
//! - GRU, gates `r, z, n`: `n = tanh(W_in x + b_in + r (W_hn h + b_hn))`,
//!   `h' = (1 - z) n + z h`.

use serde::{Deserialize, Serialize};

use crate::tensor::Float;

/// The kind of recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    /// Elman RNN with tanh (PyTorch `nn.RNN`, `nonlinearity='tanh'`).
    RnnTanh,
    /// Elman RNN with ReLU (PyTorch `nn.RNN`, `nonlinearity='relu'`).
    RnnRelu,
    /// Long short-term memory (PyTorch `nn.LSTM`).
    Lstm,
    /// Gated recurrent unit (PyTorch `nn.GRU`).
    Gru,
}

impl CellKind {
    /// Number of gates: rows of `weight_ih` are `gates * hidden_size`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Short name for messages (`GRU`, `LSTM`, `RNN_TANH`, `RNN_RELU`).
    pub fn label(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "RNN_TANH",
            CellKind::RnnRelu => "RNN_RELU",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

#[inline]
fn sigmoid<F: Float>(x: F) -> F {
    // σ(x) = (1 + tanh(x/2)) / 2: vectorisable through `fast_tanh` in f32.
    let half = F::of(0.5);
    half + half * (x * half).fast_tanh()
}

/// Inputs of one forward step.
pub(super) struct StepIn<'a, F> {
    /// `x W_ihᵀ + b_ih` (RNN/LSTM: `+ b_hh` too), `N × GH`.
    pub xw: &'a [F],
    /// `h W_hhᵀ` (GRU: `+ b_hh`), `N × GH`.
    pub hw: &'a [F],
    /// Previous hidden state, `N × H`.
    pub h_prev: &'a [F],
    /// Previous cell state (LSTM), `N × H`, else empty.
    pub c_prev: &'a [F],
    /// Whether each row takes this step.
    pub active: &'a [bool],
}

/// Outputs of one forward step (everything backward needs).
pub(super) struct StepOut<'a, F> {
    /// Activated gates, `N × GH`.
    pub gates: &'a mut [F],
    /// New hidden state, `N × H`.
    pub h: &'a mut [F],
    /// New cell state (LSTM), else empty.
    pub c: &'a mut [F],
    /// `W_hn h + b_hn` (GRU), else empty.
    pub hn: &'a mut [F],
}

/// One forward step of `kind` with hidden size `hs`.
pub(super) fn step_forward<F: Float>(
    kind: CellKind,
    hs: usize,
    i: StepIn<'_, F>,
    o: StepOut<'_, F>,
) {
    let gh = kind.gates() * hs;
    for (b, &act) in i.active.iter().enumerate() {
        let hr = b * hs..(b + 1) * hs;
        if !act {
            o.h[hr.clone()].copy_from_slice(&i.h_prev[hr.clone()]);
            if kind == CellKind::Lstm {
                o.c[hr.clone()].copy_from_slice(&i.c_prev[hr]);
            }
            o.gates[b * gh..(b + 1) * gh].fill(F::zero());
            continue;
        }
        let xw = &i.xw[b * gh..(b + 1) * gh];
        let hw = &i.hw[b * gh..(b + 1) * gh];
        let g = &mut o.gates[b * gh..(b + 1) * gh];
        let h = &mut o.h[hr.clone()];
        match kind {
            CellKind::RnnTanh => {
                for j in 0..hs {
                    let v = (xw[j] + hw[j]).fast_tanh();
                    g[j] = v;
                    h[j] = v;
                }
            }
            CellKind::RnnRelu => {
                for j in 0..hs {
                    let v = (xw[j] + hw[j]).max(F::zero());
                    g[j] = v;
                    h[j] = v;
                }
            }
            CellKind::Lstm => {
                let cp = &i.c_prev[hr.clone()];
                let c = &mut o.c[hr];
                for j in 0..hs {
                    let ig = sigmoid(xw[j] + hw[j]);
                    let fg = sigmoid(xw[hs + j] + hw[hs + j]);
                    let gg = (xw[2 * hs + j] + hw[2 * hs + j]).fast_tanh();
                    let og = sigmoid(xw[3 * hs + j] + hw[3 * hs + j]);
                    g[j] = ig;
                    g[hs + j] = fg;
                    g[2 * hs + j] = gg;
                    g[3 * hs + j] = og;
                    let cn = fg * cp[j] + ig * gg;
                    c[j] = cn;
                    h[j] = og * cn.fast_tanh();
                }
            }
            CellKind::Gru => {
                let hp = &i.h_prev[hr.clone()];
                let hn = &mut o.hn[hr];
                for j in 0..hs {
                    let r = sigmoid(xw[j] + hw[j]);
                    let z = sigmoid(xw[hs + j] + hw[hs + j]);
                    let n = (xw[2 * hs + j] + r * hw[2 * hs + j]).fast_tanh();
                    g[j] = r;
                    g[hs + j] = z;
                    g[2 * hs + j] = n;
                    hn[j] = hw[2 * hs + j];
                    h[j] = (F::one() - z) * n + z * hp[j];
                }
            }
        }
    }
}

/// What one backward step reads.
pub(super) struct StepCache<'a, F> {
    /// Activated gates of the step, `N × GH`.
    pub gates: &'a [F],
    /// Hidden state before the step, `N × H`.
    pub h_prev: &'a [F],
    /// Cell state before (LSTM), else empty.
    pub c_prev: &'a [F],
    /// Cell state after (LSTM), else empty.
    pub c: &'a [F],
    /// `W_hn h + b_hn` (GRU), else empty.
    pub hn: &'a [F],
    /// Whether each row took the step.
    pub active: &'a [bool],
}

/// Gradients produced by one backward step.
pub(super) struct StepGrad<'a, F> {
    /// In: dL/dc after the step (LSTM). Out: dL/dc before it.
    pub dc: &'a mut [F],
    /// dL/d(x W_ihᵀ + b_ih), `N × GH`.
    pub dxw: &'a mut [F],
    /// dL/d(h W_hhᵀ + b_hh), `N × GH`.
    pub dhw: &'a mut [F],
    /// The part of dL/dh_prev that does not go through `W_hh`, `N × H`.
    pub dh_prev: &'a mut [F],
}

/// One backward step: `dh` is the total gradient on the step's new hidden state.
pub(super) fn step_backward<F: Float>(
    kind: CellKind,
    hs: usize,
    dh: &[F],
    s: StepCache<'_, F>,
    d: StepGrad<'_, F>,
) {
    let gh = kind.gates() * hs;
    let one = F::one();
    for (b, &act) in s.active.iter().enumerate() {
        let hr = b * hs..(b + 1) * hs;
        let gr = b * gh..(b + 1) * gh;
        if !act {
            d.dh_prev[hr.clone()].copy_from_slice(&dh[hr]);
            d.dxw[gr.clone()].fill(F::zero());
            d.dhw[gr].fill(F::zero());
            continue;
        }
        let g = &s.gates[gr.clone()];
        let dh = &dh[hr.clone()];
        let dxw = &mut d.dxw[gr.clone()];
        match kind {
            CellKind::RnnTanh => {
                for j in 0..hs {
                    dxw[j] = dh[j] * (one - g[j] * g[j]);
                }
                d.dhw[gr].copy_from_slice(dxw);
                d.dh_prev[hr].fill(F::zero());
            }
            CellKind::RnnRelu => {
                for j in 0..hs {
                    dxw[j] = if g[j] > F::zero() { dh[j] } else { F::zero() };
                }
                d.dhw[gr].copy_from_slice(dxw);
                d.dh_prev[hr].fill(F::zero());
            }
            CellKind::Lstm => {
                let cp = &s.c_prev[hr.clone()];
                let c = &s.c[hr.clone()];
                let dc = &mut d.dc[hr.clone()];
                for j in 0..hs {
                    let (ig, fg, gg, og) = (g[j], g[hs + j], g[2 * hs + j], g[3 * hs + j]);
                    let tc = c[j].fast_tanh();
                    let dct = dc[j] + dh[j] * og * (one - tc * tc);
                    dxw[j] = dct * gg * ig * (one - ig);
                    dxw[hs + j] = dct * cp[j] * fg * (one - fg);
                    dxw[2 * hs + j] = dct * ig * (one - gg * gg);
                    dxw[3 * hs + j] = dh[j] * tc * og * (one - og);
                    dc[j] = dct * fg;
                }
                d.dhw[gr].copy_from_slice(dxw);
                d.dh_prev[hr].fill(F::zero());
            }
            CellKind::Gru => {
                let hp = &s.h_prev[hr.clone()];
                let hn = &s.hn[hr.clone()];
                let dhw = &mut d.dhw[gr];
                let dhp = &mut d.dh_prev[hr];
                for j in 0..hs {
                    let (r, z, n) = (g[j], g[hs + j], g[2 * hs + j]);
                    let dn = dh[j] * (one - z) * (one - n * n);
                    let dz = dh[j] * (hp[j] - n) * z * (one - z);
                    let dr = dn * hn[j] * r * (one - r);
                    dxw[j] = dr;
                    dxw[hs + j] = dz;
                    dxw[2 * hs + j] = dn;
                    dhw[j] = dr;
                    dhw[hs + j] = dz;
                    dhw[2 * hs + j] = dn * r;
                    dhp[j] = dh[j] * z;
                }
            }
        }
    }
}
