//! Limited-memory BFGS (`torch.optim.LBFGS`).
//!
//! L-BFGS cannot be an elementwise [`super::Optimizer`]: one step runs
//! several iterations, each of which re-evaluates the loss and gradient at
//! new parameters (and the strong-Wolfe line search evaluates trial points),
//! and its direction couples all elements through dot products. So it takes
//! a closure that evaluates `(loss, gradient)` at given parameters, and it
//! needs the whole parameter vector (it cannot be sharded elementwise).

use serde::{Deserialize, Serialize};

use super::check_non_negative;
use crate::error::{Error, Result};
use crate::tensor::Float;

/// Line search used by [`Lbfgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineSearch {
    /// Fixed step `lr` (PyTorch's `line_search_fn=None`).
    #[default]
    None,
    /// Strong Wolfe conditions with cubic interpolation (`line_search_fn="strong_wolfe"`).
    StrongWolfe,
}

/// Configuration of [`Lbfgs`]; defaults are PyTorch's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbfgsConfig {
    /// Step length (default 1).
    pub lr: f64,
    /// Maximum iterations per [`Lbfgs::step`] (default 20).
    pub max_iter: usize,
    /// Maximum function evaluations per step (default `max_iter · 5 / 4`).
    pub max_eval: Option<usize>,
    /// Stop when the largest gradient magnitude is at most this (default 1e-7).
    pub tolerance_grad: f64,
    /// Stop when the step or the loss change is below this (default 1e-9).
    pub tolerance_change: f64,
    /// Number of curvature pairs kept (default 100).
    pub history_size: usize,
    /// The line search (default none).
    pub line_search: LineSearch,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        LbfgsConfig {
            lr: 1.0,
            max_iter: 20,
            max_eval: None,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            history_size: 100,
            line_search: LineSearch::None,
        }
    }
}

impl LbfgsConfig {
    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let w = "LBFGS";
        check_non_negative(w, "lr", self.lr)?;
        check_non_negative(w, "tolerance_grad", self.tolerance_grad)?;
        check_non_negative(w, "tolerance_change", self.tolerance_change)?;
        if self.max_iter == 0 || self.history_size == 0 || self.max_eval == Some(0) {
            return Err(Error::config(
                w,
                format!(
                    "max_iter ({}), history_size ({}) and max_eval ({:?}) must be positive",
                    self.max_iter, self.history_size, self.max_eval
                ),
            ));
        }
        Ok(())
    }

    /// Validates and builds the optimizer.
    pub fn build(&self) -> Result<Lbfgs> {
        self.validate()?;
        Ok(Lbfgs {
            cfg: self.clone(),
            state: State::default(),
        })
    }
}

/// State kept between steps (PyTorch's `state` dict of LBFGS).
#[derive(Debug, Clone, Default)]
struct State {
    func_evals: usize,
    n_iter: usize,
    d: Vec<f64>,
    t: f64,
    old_dirs: Vec<Vec<f64>>,
    old_stps: Vec<Vec<f64>>,
    ro: Vec<f64>,
    h_diag: f64,
    prev_flat_grad: Option<Vec<f64>>,
}

/// L-BFGS over one flat parameter vector, a port of `torch.optim.LBFGS`
/// (computing in `f64`).
#[derive(Debug, Clone)]
pub struct Lbfgs {
    cfg: LbfgsConfig,
    state: State,
}

/// The loss-and-gradient closure of [`Lbfgs::step`].
pub type LbfgsClosure<'a, F> = dyn FnMut(&[F]) -> Result<(F, Vec<F>)> + 'a;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn abs_max(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

impl Lbfgs {
    /// The configuration.
    pub fn config(&self) -> &LbfgsConfig {
        &self.cfg
    }

    /// Total closure evaluations so far (PyTorch's `state["func_evals"]`).
    pub fn func_evals(&self) -> usize {
        self.state.func_evals
    }

    /// Total iterations so far (PyTorch's `state["n_iter"]`).
    pub fn n_iter(&self) -> usize {
        self.state.n_iter
    }

    fn eval<F: Float>(
        n: usize,
        closure: &mut LbfgsClosure<'_, F>,
        x: &[f64],
    ) -> Result<(f64, Vec<f64>)> {
        let p: Vec<F> = x.iter().map(|&v| F::of(v)).collect();
        let (loss, g) = closure(&p)?;
        if g.len() != n {
            return Err(Error::shape(
                "LBFGS closure",
                format!("a gradient of {n} values"),
                &[g.len()],
            ));
        }
        Ok((loss.as_f64(), g.iter().map(|v| v.as_f64()).collect()))
    }

    /// Runs one L-BFGS step (up to `max_iter` iterations) from `params`,
    /// updating them in place; `closure(p)` returns the loss and its gradient
    /// at `p`. Returns the loss at the initial parameters, as PyTorch does.
    pub fn step<F: Float>(
        &mut self,
        params: &mut [F],
        closure: &mut LbfgsClosure<'_, F>,
    ) -> Result<F> {
        let n = params.len();
        let cfg = self.cfg.clone();
        let max_eval = cfg.max_eval.unwrap_or(cfg.max_iter * 5 / 4);
        let mut x: Vec<f64> = params.iter().map(|v| v.as_f64()).collect();
        if let Some(prev) = &self.state.prev_flat_grad {
            if prev.len() != n {
                return Err(Error::shape(
                    "LBFGS::step",
                    format!("{} parameters", prev.len()),
                    &[n],
                ));
            }
        }
        let (orig_loss, mut flat_grad) = Self::eval(n, closure, &x)?;
        let mut loss = orig_loss;
        let mut current_evals = 1;
        self.state.func_evals += 1;
        if abs_max(&flat_grad) <= cfg.tolerance_grad {
            return Ok(F::of(orig_loss));
        }
        let st = &mut self.state;
        let mut n_iter = 0;
        while n_iter < cfg.max_iter {
            n_iter += 1;
            st.n_iter += 1;
            if st.n_iter == 1 {
                st.d = flat_grad.iter().map(|g| -g).collect();
                st.old_dirs.clear();
                st.old_stps.clear();
                st.ro.clear();
                st.h_diag = 1.0;
            } else if let Some(prev) = &st.prev_flat_grad {
                let y: Vec<f64> = flat_grad.iter().zip(prev).map(|(a, b)| a - b).collect();
                let s: Vec<f64> = st.d.iter().map(|v| v * st.t).collect();
                let ys = dot(&y, &s);
                if ys > 1e-10 {
                    if st.old_dirs.len() == cfg.history_size {
                        st.old_dirs.remove(0);
                        st.old_stps.remove(0);
                        st.ro.remove(0);
                    }
                    st.h_diag = ys / dot(&y, &y);
                    st.old_dirs.push(y);
                    st.old_stps.push(s);
                    st.ro.push(1.0 / ys);
                }
                let num_old = st.old_dirs.len();
                let mut al = vec![0.0; num_old];
                let mut q: Vec<f64> = flat_grad.iter().map(|g| -g).collect();
                for i in (0..num_old).rev() {
                    al[i] = dot(&st.old_stps[i], &q) * st.ro[i];
                    for (qv, y) in q.iter_mut().zip(&st.old_dirs[i]) {
                        *qv -= al[i] * y;
                    }
                }
                let mut r: Vec<f64> = q.iter().map(|v| v * st.h_diag).collect();
                for (((y, s), ro), al_i) in
                    st.old_dirs.iter().zip(&st.old_stps).zip(&st.ro).zip(&al)
                {
                    let be_i = dot(y, &r) * ro;
                    for (rv, sv) in r.iter_mut().zip(s) {
                        *rv += (al_i - be_i) * sv;
                    }
                }
                st.d = r;
            }
            st.prev_flat_grad = Some(flat_grad.clone());
            let prev_loss = loss;
            st.t = if st.n_iter == 1 {
                (1.0f64).min(1.0 / flat_grad.iter().map(|g| g.abs()).sum::<f64>()) * cfg.lr
            } else {
                cfg.lr
            };
            let gtd = dot(&flat_grad, &st.d);
            if gtd > -cfg.tolerance_change {
                break;
            }
            let mut ls_func_evals = 0;
            let mut opt_cond = false;
            match cfg.line_search {
                LineSearch::StrongWolfe => {
                    let x_init = x.clone();
                    let d = st.d.clone();
                    let mut obj = |t: f64| -> Result<(f64, Vec<f64>)> {
                        let xt: Vec<f64> = x_init.iter().zip(&d).map(|(a, b)| a + t * b).collect();
                        Self::eval(n, closure, &xt)
                    };
                    // PyTorch caps the line search at the evaluations left
                    // and uses its default tolerance_change there.
                    let max_ls = max_eval.saturating_sub(current_evals).max(1);
                    let (l, g, t, evals) =
                        strong_wolfe(&mut obj, st.t, &d, (loss, &flat_grad, gtd), max_ls)?;
                    loss = l;
                    flat_grad = g;
                    st.t = t;
                    ls_func_evals = evals;
                    for (xv, dv) in x.iter_mut().zip(&st.d) {
                        *xv += st.t * dv;
                    }
                    opt_cond = abs_max(&flat_grad) <= cfg.tolerance_grad;
                }
                LineSearch::None => {
                    for (xv, dv) in x.iter_mut().zip(&st.d) {
                        *xv += st.t * dv;
                    }
                    if n_iter != cfg.max_iter {
                        let (l, g) = Self::eval(n, closure, &x)?;
                        loss = l;
                        flat_grad = g;
                        opt_cond = abs_max(&flat_grad) <= cfg.tolerance_grad;
                        ls_func_evals = 1;
                    }
                }
            }
            current_evals += ls_func_evals;
            st.func_evals += ls_func_evals;
            if n_iter == cfg.max_iter
                || current_evals >= max_eval
                || opt_cond
                || abs_max(&st.d) * st.t.abs() <= cfg.tolerance_change
                || (loss - prev_loss).abs() < cfg.tolerance_change
            {
                break;
            }
        }
        for (p, v) in params.iter_mut().zip(&x) {
            *p = F::of(*v);
        }
        Ok(F::of(orig_loss))
    }
}

/// Minimiser of the cubic interpolating `(x1, f1, g1)` and `(x2, f2, g2)`,
/// clamped to `bounds` (PyTorch's `_cubic_interpolate`).
fn cubic_interpolate(
    (x1, f1, g1): (f64, f64, f64),
    (x2, f2, g2): (f64, f64, f64),
    bounds: Option<(f64, f64)>,
) -> f64 {
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

/// One bracket end: step, loss, gradient, directional derivative.
type Point = (f64, f64, Vec<f64>, f64);

/// Strong-Wolfe line search (PyTorch's `_strong_wolfe`, c1 = 1e-4,
/// c2 = 0.9, tolerance_change = 1e-9, at most `max_ls` iterations) from
/// the point with loss `f`, gradient `g` and directional derivative `gtd`.
/// Returns (loss, gradient, step, evaluations).
fn strong_wolfe(
    obj: &mut dyn FnMut(f64) -> Result<(f64, Vec<f64>)>,
    mut t: f64,
    d: &[f64],
    (f, g, gtd): (f64, &[f64], f64),
    max_ls: usize,
) -> Result<(f64, Vec<f64>, f64, usize)> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    let tolerance_change = 1e-9;
    let d_norm = abs_max(d);
    let (mut f_new, mut g_new) = obj(t)?;
    let mut evals = 1;
    let mut gtd_new = dot(&g_new, d);
    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (0.0, f, g.to_vec(), gtd);
    let mut done = false;
    let mut ls_iter = 0;
    let mut bracket: Vec<Point> = Vec::new();
    while ls_iter < max_ls {
        if f_new > f + C1 * t * gtd || (ls_iter > 1 && f_new >= f_prev) {
            bracket = vec![
                (t_prev, f_prev, g_prev.clone(), gtd_prev),
                (t, f_new, g_new.clone(), gtd_new),
            ];
            break;
        }
        if gtd_new.abs() <= -C2 * gtd {
            bracket = vec![(t, f_new, g_new.clone(), gtd_new)];
            done = true;
            break;
        }
        if gtd_new >= 0.0 {
            bracket = vec![
                (t_prev, f_prev, g_prev.clone(), gtd_prev),
                (t, f_new, g_new.clone(), gtd_new),
            ];
            break;
        }
        let min_step = t + 0.01 * (t - t_prev);
        let max_step = t * 10.0;
        let tmp = t;
        t = cubic_interpolate(
            (t_prev, f_prev, gtd_prev),
            (t, f_new, gtd_new),
            Some((min_step, max_step)),
        );
        t_prev = tmp;
        f_prev = f_new;
        g_prev = g_new;
        gtd_prev = gtd_new;
        (f_new, g_new) = obj(t)?;
        evals += 1;
        gtd_new = dot(&g_new, d);
        ls_iter += 1;
    }
    if ls_iter == max_ls {
        bracket = vec![(0.0, f, g.to_vec(), gtd), (t, f_new, g_new, gtd_new)];
    }
    // Zoom: shrink the bracket until a point satisfies the Wolfe conditions.
    let mut insuf_progress = false;
    let order = |b: &[Point]| {
        if b[0].1 <= b[b.len() - 1].1 {
            (0, 1)
        } else {
            (1, 0)
        }
    };
    let (mut low, mut high) = order(&bracket);
    while !done && ls_iter < max_ls && bracket.len() == 2 {
        if (bracket[1].0 - bracket[0].0).abs() * d_norm < tolerance_change {
            break;
        }
        t = cubic_interpolate(
            (bracket[0].0, bracket[0].1, bracket[0].3),
            (bracket[1].0, bracket[1].1, bracket[1].3),
            None,
        );
        let bmax = bracket[0].0.max(bracket[1].0);
        let bmin = bracket[0].0.min(bracket[1].0);
        let eps = 0.1 * (bmax - bmin);
        if (bmax - t).min(t - bmin) < eps {
            if insuf_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() {
                    bmax - eps
                } else {
                    bmin + eps
                };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        let (fn_, gn) = obj(t)?;
        evals += 1;
        let gtdn = dot(&gn, d);
        ls_iter += 1;
        if fn_ > f + C1 * t * gtd || fn_ >= bracket[low].1 {
            bracket[high] = (t, fn_, gn, gtdn);
            (low, high) = order(&bracket);
        } else {
            if gtdn.abs() <= -C2 * gtd {
                done = true;
            } else if gtdn * (bracket[high].0 - bracket[low].0) >= 0.0 {
                bracket[high] = bracket[low].clone();
            }
            bracket[low] = (t, fn_, gn, gtdn);
        }
    }
    let pick = if bracket.len() == 2 { low } else { 0 };
    match bracket.into_iter().nth(pick) {
        Some((t, f_new, g_new, _)) => Ok((f_new, g_new, t, evals)),
        None => Err(Error::invalid("LBFGS strong_wolfe", "empty bracket")),
    }
}
