//! The convolution engine shared by [`Conv2d`](super::Conv2d) and
//! [`Conv1d`](super::Conv1d): im2col + [`gemm`](crate::matmul::gemm) forward,
//! and weight/bias/input gradients (col2im) backward.
//!
//! Work is parallel over the batch (one rayon task per group of images; each
//! image's gemm then runs on its own thread). The column buffer of an image
//! is built a band of output rows at a time: about 4 MiB per thread the gemm
//! runs on, wide enough that the gemm packs the weights rarely (a one-row
//! band of a 38x38 SSD layer is a 38-column product that repacks 9 MiB of
//! weights per call) and small enough to stay in the last-level cache
//! between im2col and the gemm that reads it. 1x1 convolutions with stride 1
//! and no padding skip im2col altogether.

use ndarray::{s, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::matmul::gemm;
use crate::tensor::Float;

/// Elements of one column-buffer band per thread of its gemm (4 MiB of
/// f32). Measured on SSD300's VGG layers (2 cores, batch 1 and 8, forward
/// and backward): 1 Mi elements per thread beat 256 Ki by 7-17 %, while
/// 4 Mi per thread was no better.
const BAND_ELEMS_PER_THREAD: usize = 1 << 20;

/// Weight-gradient values the backward pass holds at once (one copy per
/// image of a window, added in image order afterwards; 64 MiB of f32).
const WINDOW_GRAD_ELEMS: usize = 1 << 24;

/// Fewest images in a window, so that even layers with large weights leave
/// images to spread over the pool.
const MIN_IMAGES_PER_WINDOW: usize = 8;

/// Images per backward window: as many as [`WINDOW_GRAD_ELEMS`] allows
/// (every image of a small layer's batch at once: each window ends in a
/// barrier), at least [`MIN_IMAGES_PER_WINDOW`]. Depends on the geometry
/// only, never on the pool.
fn images_per_window(g: &Geom) -> usize {
    (WINDOW_GRAD_ELEMS / (g.o * g.k()).max(1)).max(MIN_IMAGES_PER_WINDOW)
}

/// Geometry of one 2-D convolution (Conv1d uses `h = kh = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geom {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) dh: usize,
    pub(super) dw: usize,
    pub(super) groups: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

/// Output length of one spatial dimension, or `None` when the (padded)
/// input is smaller than the dilated kernel.
pub(super) fn out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    let padded = len + 2 * p;
    (padded >= span).then(|| (padded - span) / s + 1)
}

impl Geom {
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of the column matrix (= weight columns) per group.
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.o * self.p()
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// Output rows per band when each image's gemm runs on `threads` threads.
    fn band_rows(&self, threads: usize) -> usize {
        let elems = BAND_ELEMS_PER_THREAD * threads.max(1);
        (elems / (self.k() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }
    /// Column-buffer length needed for one band of `band_rows` rows.
    fn band_len(&self, band_rows: usize) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * band_rows * self.ow
        }
    }
}

/// The output positions `ow` in `0..n_out` whose input column
/// `ow * s + off` lies in `0..len`.
fn valid_range(off: isize, s: usize, len: usize, n_out: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let room = len as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let lo = (lo as usize).min(n_out);
    let hi = (hi as usize).min(n_out).max(lo);
    (lo, hi)
}

/// Fills `dst` (`rows * ow` values) with the input values that kernel tap
/// `(ki, kj)` meets at output rows `oh0..oh0 + rows` of one input `plane`.
#[inline]
fn patch_row<F: Float>(g: &Geom, plane: &[F], ki: usize, kj: usize, oh0: usize, dst: &mut [F]) {
    let (h, w, ow) = (g.h as isize, g.w, g.ow);
    let zero = F::zero();
    let off_w = (kj * g.dw) as isize - g.pw as isize;
    let (lo, hi) = valid_range(off_w, g.sw, w, ow);
    let start = (lo * g.sw) as isize + off_w;
    for (i, dst) in dst.chunks_exact_mut(ow).enumerate() {
        let ih = ((oh0 + i) * g.sh + ki * g.dh) as isize - g.ph as isize;
        if ih < 0 || ih >= h {
            dst.fill(zero);
            continue;
        }
        let src = &plane[ih as usize * w..(ih as usize + 1) * w];
        dst[..lo].fill(zero);
        dst[hi..].fill(zero);
        if g.sw == 1 {
            let s0 = start as usize;
            for (d, &v) in dst[lo..hi].iter_mut().zip(&src[s0..s0 + hi - lo]) {
                *d = v;
            }
        } else {
            for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                *d = src[start as usize + j * g.sw];
            }
        }
    }
}

/// Adds `src` (`rows * ow` column gradients of kernel tap `(ki, kj)` at
/// output rows `oh0..`) back into one input-gradient `plane`.
#[inline]
fn patch_row_add<F: Float>(g: &Geom, src: &[F], ki: usize, kj: usize, oh0: usize, plane: &mut [F]) {
    let (h, w, ow) = (g.h as isize, g.w, g.ow);
    let off_w = (kj * g.dw) as isize - g.pw as isize;
    let (lo, hi) = valid_range(off_w, g.sw, w, ow);
    let start = (lo * g.sw) as isize + off_w;
    for (i, src) in src.chunks_exact(ow).enumerate() {
        let ih = ((oh0 + i) * g.sh + ki * g.dh) as isize - g.ph as isize;
        if ih < 0 || ih >= h {
            continue;
        }
        let dst = &mut plane[ih as usize * w..(ih as usize + 1) * w];
        if g.sw == 1 {
            let s0 = start as usize;
            for (d, &v) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                *d += v;
            }
        } else {
            for (j, &v) in src[lo..hi].iter().enumerate() {
                dst[start as usize + j * g.sw] += v;
            }
        }
    }
}

/// Fills one input plane's `kh * kw` rows of the column buffer.
fn im2col_plane<F: Float>(g: &Geom, plane: &[F], oh0: usize, dst: &mut [F]) {
    let mut rows_out = dst.chunks_exact_mut(dst.len() / (g.kh * g.kw).max(1));
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            if let Some(dst) = rows_out.next() {
                patch_row(g, plane, ki, kj, oh0, dst);
            }
        }
    }
}

/// Adds one input plane's `kh * kw` rows of column gradients back into it.
fn col2im_plane<F: Float>(g: &Geom, src: &[F], oh0: usize, plane: &mut [F]) {
    let mut rows_in = src.chunks_exact(src.len() / (g.kh * g.kw).max(1));
    for ki in 0..g.kh {
        for kj in 0..g.kw {
            if let Some(src) = rows_in.next() {
                patch_row_add(g, src, ki, kj, oh0, plane);
            }
        }
    }
}

/// Fills `col` (`[k, rows * ow]`) with the patches of output rows
/// `oh0..oh0 + rows` of one group's input planes `x` (`[cg, h, w]`); over
/// the rayon pool (one task per plane) when `split`.
fn im2col<F: Float>(g: &Geom, x: &[F], oh0: usize, rows: usize, col: &mut [F], split: bool) {
    let per_plane = g.kh * g.kw * rows * g.ow;
    let planes = x.chunks_exact(g.h * g.w).take(g.cg());
    if split {
        col.par_chunks_exact_mut(per_plane)
            .zip(planes.collect::<Vec<_>>())
            .for_each(|(dst, plane)| im2col_plane(g, plane, oh0, dst));
    } else {
        for (dst, plane) in col.chunks_exact_mut(per_plane).zip(planes) {
            im2col_plane(g, plane, oh0, dst);
        }
    }
}

/// Adds the column gradients `col` (`[k, rows * ow]`) of output rows
/// `oh0..oh0 + rows` back into one group's input-gradient planes `gx`; over
/// the rayon pool (one task per plane: planes do not overlap) when `split`.
fn col2im<F: Float>(g: &Geom, col: &[F], oh0: usize, rows: usize, gx: &mut [F], split: bool) {
    let per_plane = g.kh * g.kw * rows * g.ow;
    let planes = gx.chunks_exact_mut(g.h * g.w).take(g.cg());
    if split {
        col.par_chunks_exact(per_plane)
            .zip(planes.collect::<Vec<_>>())
            .for_each(|(src, plane)| col2im_plane(g, src, oh0, plane));
    } else {
        for (src, plane) in col.chunks_exact(per_plane).zip(planes) {
            col2im_plane(g, src, oh0, plane);
        }
    }
}

fn view<'a, F>(rows: usize, cols: usize, data: &'a [F]) -> Result<ArrayView2<'a, F>> {
    ArrayView2::from_shape((rows, cols), data).map_err(|_| {
        Error::invalid(
            "conv",
            format!("buffer of {} for [{rows}, {cols}]", data.len()),
        )
    })
}

fn view_mut<'a, F>(rows: usize, cols: usize, data: &'a mut [F]) -> Result<ArrayViewMut2<'a, F>> {
    let n = data.len();
    ArrayViewMut2::from_shape((rows, cols), data)
        .map_err(|_| Error::invalid("conv", format!("buffer of {n} for [{rows}, {cols}]")))
}

/// How one image is worked through: `band` output rows at a time, with the
/// column copies and bias spread over the rayon pool when `split` (a lone
/// image whose gemm uses the whole pool; otherwise the other threads would
/// idle through them).
#[derive(Debug, Clone, Copy)]
struct Plan {
    band: usize,
    split: bool,
}

impl Plan {
    /// The plan for one image when the batch is (or is not) spread over the pool.
    fn new(g: &Geom, batch_parallel: bool) -> Plan {
        let threads = gemm_threads(batch_parallel);
        Plan {
            band: g.band_rows(threads),
            split: threads > 1,
        }
    }
}

/// Forward pass of one image: `x` is `[c, h, w]`, `out` is `[o, oh * ow]`.
fn forward_image<F: Float>(
    g: &Geom,
    plan: Plan,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    col: &mut Vec<F>,
) -> Result<()> {
    let (cg, og, k, p) = (g.cg(), g.og(), g.k(), g.p());
    let Plan { band, split } = plan;
    col.resize(g.band_len(band), F::zero());
    for grp in 0..g.groups {
        let xg = &x[grp * cg * g.h * g.w..(grp + 1) * cg * g.h * g.w];
        let wg = view(og, k, &weight[grp * og * k..(grp + 1) * og * k])?;
        let mut yg = view_mut(og, p, &mut out[grp * og * p..(grp + 1) * og * p])?;
        if g.pointwise() {
            gemm(F::one(), wg, view(cg, p, xg)?, F::zero(), &mut yg)?;
            continue;
        }
        let mut oh0 = 0;
        while oh0 < g.oh {
            let rows = band.min(g.oh - oh0);
            let nc = rows * g.ow;
            im2col(g, xg, oh0, rows, &mut col[..k * nc], split);
            let p0 = oh0 * g.ow;
            gemm(
                F::one(),
                wg,
                view(k, nc, &col[..k * nc])?,
                F::zero(),
                &mut yg.slice_mut(s![.., p0..p0 + nc]),
            )?;
            oh0 += rows;
        }
    }
    if let Some(b) = bias {
        let add = |(row, &bv): (&mut [F], &F)| row.iter_mut().for_each(|v| *v += bv);
        if split {
            out.par_chunks_exact_mut(p).zip(b).for_each(add);
        } else {
            out.chunks_exact_mut(p).zip(b).for_each(add);
        }
    }
    Ok(())
}

/// Forward pass of a lone image with its bands spread over the rayon pool:
/// each task copies its band's columns and runs a one-thread gemm into its
/// own columns of the output (no thread waits on another's copy, and no
/// small products split across threads).
fn forward_image_bands<F: Float>(
    g: &Geom,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
) -> Result<()> {
    let (cg, og, k, p) = (g.cg(), g.og(), g.k(), g.p());
    let threads = rayon::current_num_threads().max(1);
    // the fewest rounds of `threads` equal bands that fit one thread's buffer
    let rounds = g.oh.div_ceil(threads * g.band_rows(1)).max(1);
    let band = g.oh.div_ceil(threads * rounds).max(1);
    let nc_max = band * g.ow;
    for grp in 0..g.groups {
        let xg = &x[grp * cg * g.h * g.w..(grp + 1) * cg * g.h * g.w];
        let wg = view(og, k, &weight[grp * og * k..(grp + 1) * og * k])?;
        let bg = bias.map(|b| &b[grp * og..(grp + 1) * og]);
        let mut yg = view_mut(og, p, &mut out[grp * og * p..(grp + 1) * og * p])?;
        yg.axis_chunks_iter_mut(ndarray::Axis(1), nc_max)
            .into_par_iter()
            .enumerate()
            .try_for_each_init(Vec::new, |col: &mut Vec<F>, (i, mut y)| {
                let oh0 = i * band;
                let nc = y.ncols();
                col.resize(k * nc, F::zero());
                im2col(g, xg, oh0, nc / g.ow, col, false);
                gemm(F::one(), wg, view(k, nc, col)?, F::zero(), &mut y)?;
                if let Some(b) = bg {
                    for (mut row, &bv) in y.rows_mut().into_iter().zip(b) {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
                Ok::<_, Error>(())
            })?;
    }
    Ok(())
}

/// Per-thread scratch and gradient accumulators of the backward pass.
struct Acc<F> {
    gw: Vec<F>,
    gb: Vec<F>,
    col: Vec<F>,
    gcol: Vec<F>,
}

impl<F: Float> Acc<F> {
    fn new(g: &Geom, band: usize) -> Self {
        Acc {
            gw: vec![F::zero(); g.o * g.k()],
            gb: vec![F::zero(); g.o],
            col: vec![F::zero(); g.band_len(band)],
            gcol: vec![F::zero(); g.band_len(band)],
        }
    }
}

/// Backward pass of one image: accumulates weight and bias gradients into
/// `acc` and adds the input gradient into `gx` (`[c, h, w]`, zero on entry).
fn backward_image<F: Float>(
    g: &Geom,
    plan: Plan,
    x: &[F],
    weight: &[F],
    gy: &[F],
    gx: &mut [F],
    acc: &mut Acc<F>,
) -> Result<()> {
    let (cg, og, k, p) = (g.cg(), g.og(), g.k(), g.p());
    let plane = g.h * g.w;
    let Plan { band, split } = plan;
    for grp in 0..g.groups {
        let xg = &x[grp * cg * plane..(grp + 1) * cg * plane];
        let gxg = &mut gx[grp * cg * plane..(grp + 1) * cg * plane];
        let wg = view(og, k, &weight[grp * og * k..(grp + 1) * og * k])?;
        let gyg = view(og, p, &gy[grp * og * p..(grp + 1) * og * p])?;
        let mut gwg = view_mut(og, k, &mut acc.gw[grp * og * k..(grp + 1) * og * k])?;
        if g.pointwise() {
            let xv = view(cg, p, xg)?;
            gemm(F::one(), gyg, xv.t(), F::one(), &mut gwg)?;
            gemm(F::one(), wg.t(), gyg, F::zero(), &mut view_mut(cg, p, gxg)?)?;
            continue;
        }
        let mut oh0 = 0;
        while oh0 < g.oh {
            let rows = band.min(g.oh - oh0);
            let nc = rows * g.ow;
            let p0 = oh0 * g.ow;
            let gy_band = gyg.slice(s![.., p0..p0 + nc]);
            im2col(g, xg, oh0, rows, &mut acc.col[..k * nc], split);
            let colv = view(k, nc, &acc.col[..k * nc])?;
            gemm(F::one(), gy_band, colv.t(), F::one(), &mut gwg)?;
            let mut gcol = view_mut(k, nc, &mut acc.gcol[..k * nc])?;
            gemm(F::one(), wg.t(), gy_band, F::zero(), &mut gcol)?;
            col2im(g, &acc.gcol[..k * nc], oh0, rows, gxg, split);
            oh0 += rows;
        }
    }
    for (b, row) in acc.gb.iter_mut().zip(gy.chunks_exact(p)) {
        *b += row.iter().copied().sum::<F>();
    }
    Ok(())
}

/// Whether to spread `n` images over the rayon pool (a single image, or a
/// call already inside the pool, runs on the calling thread so its gemm can
/// use the pool itself).
fn batch_parallel(n: usize) -> bool {
    n > 1 && rayon::current_thread_index().is_none()
}

/// Threads each image's gemm may use: one when the images are spread over
/// the pool (or the call is already inside it), else the whole pool.
fn gemm_threads(batch_parallel: bool) -> usize {
    if batch_parallel || rayon::current_thread_index().is_some() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Forward pass of a batch: `x` is `[n, c, h, w]` (row-major); returns
/// `[n, o, oh, ow]` as a flat buffer.
pub(super) fn forward<F: Float>(
    g: &Geom,
    n: usize,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
) -> Result<Vec<F>> {
    let mut out = vec![F::zero(); n * g.out_len()];
    if n == 0 || g.out_len() == 0 {
        return Ok(out);
    }
    let (il, ol) = (g.in_len(), g.out_len());
    let parallel = batch_parallel(n);
    let plan = Plan::new(g, parallel);
    if parallel {
        out.par_chunks_mut(ol)
            .zip(x.par_chunks(il))
            .try_for_each_init(Vec::new, |col, (y, xi)| {
                forward_image(g, plan, xi, weight, bias, y, col)
            })?;
    } else if plan.split && !g.pointwise() {
        for (y, xi) in out.chunks_mut(ol).zip(x.chunks(il)) {
            forward_image_bands(g, xi, weight, bias, y)?;
        }
    } else {
        let mut col = Vec::new();
        for (y, xi) in out.chunks_mut(ol).zip(x.chunks(il)) {
            forward_image(g, plan, xi, weight, bias, y, &mut col)?;
        }
    }
    Ok(out)
}

/// Backward pass of a batch: adds the weight gradient to `gw` and the bias
/// gradient to `gb` (when given) and returns the input gradient as a flat
/// `[n, c, h, w]` buffer.
///
/// Each image's weight and bias gradients are summed on their own and the
/// images' sums are then added in image order (a window of images at a
/// time: [`images_per_window`]), whether the images ran on one thread or
/// were spread over the pool: the result does not depend on the number of
/// threads or on how rayon split the batch (folding a share of the images
/// per thread made it depend on both).
pub(super) fn backward<F: Float>(
    g: &Geom,
    n: usize,
    x: &[F],
    weight: &[F],
    gy: &[F],
    gw: &mut [F],
    gb: Option<&mut [F]>,
) -> Result<Vec<F>> {
    let (il, ol) = (g.in_len(), g.out_len());
    let mut gx = vec![F::zero(); n * il];
    if n == 0 || ol == 0 || il == 0 {
        return Ok(gx);
    }
    let parallel = batch_parallel(n);
    let plan = Plan::new(g, parallel);
    // One image: its gradients go into fresh sums; the thread's column
    // scratch is reused.
    let image = |scratch: &mut Acc<F>, ((gxi, xi), gyi): ((&mut [F], &[F]), &[F])| {
        backward_image(g, plan, xi, weight, gyi, gxi, scratch)?;
        Ok::<_, Error>((
            std::mem::replace(&mut scratch.gw, vec![F::zero(); g.o * g.k()]),
            std::mem::replace(&mut scratch.gb, vec![F::zero(); g.o]),
        ))
    };
    let mut sum_w = vec![F::zero(); g.o * g.k()];
    let mut sum_b = vec![F::zero(); g.o];
    // Spread over the pool, the windows run inside it: entering the pool
    // from outside once per window cost more than the window's work on
    // small images.
    let mut run_windows = || -> Result<()> {
        let mut serial_scratch = None;
        let window = images_per_window(g);
        let windows = gx
            .chunks_mut(window * il)
            .zip(x.chunks(window * il))
            .zip(gy.chunks(window * ol));
        for ((gxs, xs), gys) in windows {
            let per_image: Vec<(Vec<F>, Vec<F>)> = if parallel {
                gxs.par_chunks_mut(il)
                    .zip(xs.par_chunks(il))
                    .zip(gys.par_chunks(ol))
                    .map_init(|| Acc::new(g, plan.band), image)
                    .collect::<Result<_>>()?
            } else {
                let scratch = serial_scratch.get_or_insert_with(|| Acc::new(g, plan.band));
                gxs.chunks_mut(il)
                    .zip(xs.chunks(il))
                    .zip(gys.chunks(ol))
                    .map(|item| image(scratch, item))
                    .collect::<Result<_>>()?
            };
            for (w_i, b_i) in &per_image {
                sum_w.iter_mut().zip(w_i).for_each(|(a, &b)| *a += b);
                sum_b.iter_mut().zip(b_i).for_each(|(a, &b)| *a += b);
            }
        }
        Ok(())
    };
    if parallel {
        rayon::scope(|_| run_windows())?;
    } else {
        run_windows()?;
    }
    gw.iter_mut().zip(&sum_w).for_each(|(a, &b)| *a += b);
    if let Some(gb) = gb {
        gb.iter_mut().zip(&sum_b).for_each(|(a, &b)| *a += b);
    }
    Ok(gx)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[allow(clippy::too_many_arguments)]
    fn geom(
        c: usize,
        h: usize,
        w: usize,
        o: usize,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        d: [usize; 2],
        groups: usize,
    ) -> Geom {
        Geom {
            c,
            h,
            w,
            o,
            kh: k[0],
            kw: k[1],
            sh: s[0],
            sw: s[1],
            ph: p[0],
            pw: p[1],
            dh: d[0],
            dw: d[1],
            groups,
            oh: out_len(h, k[0], s[0], p[0], d[0]).unwrap(),
            ow: out_len(w, k[1], s[1], p[1], d[1]).unwrap(),
        }
    }

    fn random(rng: &mut StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Direct convolution of one image for reference.
    fn naive(g: &Geom, x: &[f64], w: &[f64]) -> Vec<f64> {
        let (cg, og) = (g.cg(), g.og());
        let mut y = vec![0.0; g.out_len()];
        for oc in 0..g.o {
            let grp = oc / og;
            for i in 0..g.oh {
                for j in 0..g.ow {
                    let mut s = 0.0;
                    for ci in 0..cg {
                        for a in 0..g.kh {
                            for b in 0..g.kw {
                                let ih = (i * g.sh + a * g.dh) as isize - g.ph as isize;
                                let iw = (j * g.sw + b * g.dw) as isize - g.pw as isize;
                                if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w
                                {
                                    s += w[((oc * cg + ci) * g.kh + a) * g.kw + b]
                                        * x[((grp * cg + ci) * g.h + ih as usize) * g.w
                                            + iw as usize];
                                }
                            }
                        }
                    }
                    y[(oc * g.oh + i) * g.ow + j] = s;
                }
            }
        }
        y
    }

    #[test]
    fn weight_gradients_do_not_depend_on_how_the_batch_is_spread_over_threads() {
        // The same batch from outside the pool (images spread over its
        // threads, several windows) and from inside a one-thread pool
        // (images in turn): bit-identical gradients.
        let mut rng = StdRng::seed_from_u64(21);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let small = geom(5, 9, 8, 7, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        // weights large enough that 19 images take three windows
        let large = geom(512, 3, 3, 512, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(images_per_window(&large), MIN_IMAGES_PER_WINDOW);
        for (g, n) in [(small, 1), (small, 2), (small, 7), (small, 19), (large, 19)] {
            let x: Vec<f32> = (0..n * g.in_len())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let w: Vec<f32> = (0..g.o * g.k())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let gy: Vec<f32> = (0..n * g.out_len())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let run = || {
                let (mut gw, mut gb) = (vec![0.5f32; w.len()], vec![0.25f32; g.o]);
                let gx = backward(&g, n, &x, &w, &gy, &mut gw, Some(&mut gb)).unwrap();
                (gw, gb, gx)
            };
            let spread = run();
            let serial = one.install(run);
            assert!(spread == serial, "n={n}: gradients differ");
        }
    }

    #[test]
    fn multi_band_images_match_direct_convolution_and_adjoint() {
        let mut rng = StdRng::seed_from_u64(9);
        for g in [
            geom(64, 40, 100, 3, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            geom(128, 100, 70, 4, [3, 2], [2, 1], [1, 1], [2, 1], 2),
        ] {
            assert!(g.band_rows(1) < g.oh, "{g:?} must need several bands");
            // n = 1 from outside the pool: the image's column copies are split
            // over the pool (with 2+ cores); n = 2: one image per task
            for n in [1, 2] {
                let x = random(&mut rng, n * g.in_len());
                let w = random(&mut rng, g.o * g.k());
                let y = forward(&g, n, &x, &w, None).unwrap();
                for b in 0..n {
                    let want = naive(&g, &x[b * g.in_len()..(b + 1) * g.in_len()], &w);
                    let got = &y[b * g.out_len()..(b + 1) * g.out_len()];
                    assert!(
                        want.iter().zip(got).all(|(a, b)| (a - b).abs() < 1e-10),
                        "{g:?}"
                    );
                }
                // the bias lands on every position of its output channel
                let bias = random(&mut rng, g.o);
                let yb = forward(&g, n, &x, &w, Some(&bias)).unwrap();
                for (i, (a, b)) in yb.iter().zip(&y).enumerate() {
                    let ch = (i / g.p()) % g.o;
                    assert!((a - b - bias[ch]).abs() < 1e-12, "{g:?} at {i}");
                }
                // backward is the adjoint: <gy, conv(x)> = <conv^T(gy), x> and = <gw, w>
                let gy = random(&mut rng, n * g.out_len());
                let mut gw = vec![0.0; w.len()];
                let gx = backward(&g, n, &x, &w, &gy, &mut gw, None).unwrap();
                let lhs: f64 = gy.iter().zip(&y).map(|(a, b)| a * b).sum();
                let rhs: f64 = gx.iter().zip(&x).map(|(a, b)| a * b).sum();
                let rhs_w: f64 = gw.iter().zip(&w).map(|(a, b)| a * b).sum();
                assert!((lhs - rhs).abs() < 1e-8 * lhs.abs().max(1.0), "{g:?}");
                assert!((lhs - rhs_w).abs() < 1e-8 * lhs.abs().max(1.0), "{g:?}");
            }
        }
    }

    #[test]
    fn valid_range_matches_brute_force() {
        for off in -5isize..5 {
            for s in 1..4 {
                for len in 0..7 {
                    for n_out in 0..8 {
                        let (lo, hi) = valid_range(off, s, len, n_out);
                        for o in 0..n_out {
                            let i = o as isize * s as isize + off;
                            let inside = i >= 0 && i < len as isize;
                            assert_eq!(inside, o >= lo && o < hi, "{off} {s} {len} {n_out} {o}");
                        }
                    }
                }
            }
        }
    }
}
