//! The convolution engine shared by [`Conv2d`](super::Conv2d) and
//! [`Conv1d`](super::Conv1d): im2col + [`gemm`](crate::matmul::gemm) forward,
//! and weight/bias/input gradients (col2im) backward.
//!
//! Work is parallel over the batch (one rayon task per group of images; each
//! image's gemm then runs on its own thread). Small layers (LeNet-sized: an
//! image's columns within one band, the batch's within 32 MiB) keep their
//! columns from a training forward pass for the backward pass. The column buffer of an image
//! is built a band of output rows at a time: about 4 MiB per thread the gemm
//! runs on, wide enough that the gemm packs the weights rarely (a one-row
//! band of a 38x38 SSD layer is a 38-column product that repacks 9 MiB of
//! weights per call) and small enough to stay in the last-level cache
//! between im2col and the gemm that reads it. 1x1 convolutions with stride 1
//! and no padding skip im2col altogether, and layers the
//! [`direct`](super::direct) kernels take skip both im2col and the gemm
//! (same batch parallelism; their weight gradients are summed over fixed
//! runs of images, then run after run, as independent of the thread count).

use ndarray::{s, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::direct;
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

/// Column values a batch's cache may hold (32 MiB of f32).
const CACHE_MAX_ELEMS: usize = 1 << 23;

/// The column matrices a small layer's training forward pass keeps for its
/// backward pass (every image's `[groups * k, oh * ow]` columns, image after
/// image), so that backward reads them instead of rebuilding them. The
/// buffer is reused from one batch to the next.
#[derive(Default)]
pub(super) struct ColumnCache<F> {
    cols: Vec<F>,
    /// The geometry and batch size `cols` were built for; `None` when they
    /// are stale or were never built.
    key: Option<(Geom, usize)>,
}

/// A copy of a layer starts without columns: they belong to the original's
/// last forward pass (and may be tens of MiB).
impl<F> Clone for ColumnCache<F> {
    fn clone(&self) -> Self {
        ColumnCache {
            cols: Vec::new(),
            key: None,
        }
    }
}

impl<F> std::fmt::Debug for ColumnCache<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field("values", &self.cols.len())
            .field("key", &self.key)
            .finish()
    }
}

impl<F: Float> ColumnCache<F> {
    /// Forgets the columns (after an inference pass, which keeps none).
    pub(super) fn invalidate(&mut self) {
        self.key = None;
    }

    /// The columns of a batch of `n` images of geometry `g`, if the last
    /// forward pass built them.
    fn get(&self, g: &Geom, n: usize) -> Option<&[F]> {
        (self.key == Some((*g, n))).then_some(self.cols.as_slice())
    }
}

/// Whether a batch of `n` images of geometry `g` keeps its columns: an
/// image's columns within one band of [`BAND_ELEMS_PER_THREAD`] (so each
/// image is built whole), the batch's within [`CACHE_MAX_ELEMS`].
fn cacheable(g: &Geom, n: usize) -> bool {
    let per_image = g.groups * g.k() * g.p();
    !g.pointwise()
        && g.band_rows(1) >= g.oh
        && n.checked_mul(per_image)
            .is_some_and(|total| total > 0 && total <= CACHE_MAX_ELEMS)
}

/// The sum of `v`, over eight running sums (a plain fold is one serial
/// chain of additions that does not vectorise).
fn lane_sum<F: Float>(v: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let tail = chunks.remainder().iter().fold(F::zero(), |a, &x| a + x);
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
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
#[inline]
fn valid_range(off: isize, s: usize, len: usize, n_out: usize) -> (usize, usize) {
    if s == 1 {
        // No divisions for the common stride.
        let lo = (-off).max(0) as usize;
        let hi = (len as isize - off).max(0) as usize;
        let lo = lo.min(n_out);
        return (lo, hi.min(n_out).max(lo));
    }
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let room = len as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let lo = (lo as usize).min(n_out);
    let hi = (hi as usize).min(n_out).max(lo);
    (lo, hi)
}

/// Copies `src` into `dst` (equal lengths) eight values at a time: patch
/// rows are short (LeNet-5's are 8 and 24 values), and a `memcpy` call per
/// row cost more than the copy.
#[inline(always)]
fn copy_short<F: Float>(dst: &mut [F], src: &[F]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        d.copy_from_slice(s);
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = s;
    }
}

/// Adds `src` into `dst` (equal lengths) eight values at a time, as
/// [`copy_short`].
#[inline(always)]
fn add_short<F: Float>(dst: &mut [F], src: &[F]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        for k in 0..8 {
            d[k] += s[k];
        }
    }
    for (d, &s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d += s;
    }
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
        if lo > 0 {
            dst[..lo].fill(zero);
        }
        if hi < ow {
            dst[hi..].fill(zero);
        }
        if g.sw == 1 {
            let s0 = start as usize;
            copy_short(&mut dst[lo..hi], &src[s0..s0 + hi - lo]);
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
            add_short(&mut dst[s0..s0 + hi - lo], &src[lo..hi]);
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
/// With `keep` (the image's `[groups * k, oh * ow]` slot of a
/// [`ColumnCache`]) the columns are built there, the whole image at once.
#[allow(clippy::too_many_arguments)]
fn forward_image<F: Float>(
    g: &Geom,
    plan: Plan,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    col: &mut Vec<F>,
    mut keep: Option<&mut [F]>,
) -> Result<()> {
    let (cg, og, k, p) = (g.cg(), g.og(), g.k(), g.p());
    let Plan { band, split } = plan;
    let band = if keep.is_some() { g.oh } else { band };
    if keep.is_none() {
        col.resize(g.band_len(band), F::zero());
    }
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
            let cols = match keep.as_deref_mut() {
                Some(kept) => &mut kept[grp * k * p..(grp + 1) * k * p],
                None => &mut col[..k * nc],
            };
            im2col(g, xg, oh0, rows, cols, split);
            let p0 = oh0 * g.ow;
            gemm(
                F::one(),
                wg,
                view(k, nc, cols)?,
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
    /// Scratch for bands of `band` rows: column space unless the columns
    /// are cached, column-gradient space when the input gradient is wanted.
    fn new(g: &Geom, band: usize, cached: bool, want_gx: bool) -> Self {
        let scratch = |wanted: bool| {
            if wanted {
                vec![F::zero(); g.band_len(band)]
            } else {
                Vec::new()
            }
        };
        Acc {
            gw: vec![F::zero(); g.o * g.k()],
            gb: vec![F::zero(); g.o],
            col: scratch(!cached),
            gcol: scratch(want_gx),
        }
    }
}

/// Backward pass of one image: accumulates weight and bias gradients into
/// `acc` and, when `gx` is given (`[c, h, w]`, zero on entry), adds the
/// input gradient into it. `cached` is the image's columns from the forward
/// pass (then the whole image is one band), else they are rebuilt.
#[allow(clippy::too_many_arguments)]
fn backward_image<F: Float>(
    g: &Geom,
    plan: Plan,
    x: &[F],
    weight: &[F],
    gy: &[F],
    mut gx: Option<&mut [F]>,
    cached: Option<&[F]>,
    acc: &mut Acc<F>,
) -> Result<()> {
    let (cg, og, k, p) = (g.cg(), g.og(), g.k(), g.p());
    let plane = g.h * g.w;
    let Plan { band, split } = plan;
    let band = if cached.is_some() { g.oh } else { band };
    for grp in 0..g.groups {
        let xg = &x[grp * cg * plane..(grp + 1) * cg * plane];
        let mut gxg = gx
            .as_deref_mut()
            .map(|gx| &mut gx[grp * cg * plane..(grp + 1) * cg * plane]);
        let wg = view(og, k, &weight[grp * og * k..(grp + 1) * og * k])?;
        let gyg = view(og, p, &gy[grp * og * p..(grp + 1) * og * p])?;
        let mut gwg = view_mut(og, k, &mut acc.gw[grp * og * k..(grp + 1) * og * k])?;
        if g.pointwise() {
            let xv = view(cg, p, xg)?;
            gemm(F::one(), gyg, xv.t(), F::one(), &mut gwg)?;
            if let Some(gxg) = gxg {
                gemm(F::one(), wg.t(), gyg, F::zero(), &mut view_mut(cg, p, gxg)?)?;
            }
            continue;
        }
        let mut oh0 = 0;
        while oh0 < g.oh {
            let rows = band.min(g.oh - oh0);
            let nc = rows * g.ow;
            let p0 = oh0 * g.ow;
            let gy_band = gyg.slice(s![.., p0..p0 + nc]);
            let cols = match cached {
                Some(c) => &c[grp * k * p..(grp + 1) * k * p],
                None => {
                    im2col(g, xg, oh0, rows, &mut acc.col[..k * nc], split);
                    &acc.col[..k * nc]
                }
            };
            gemm(
                F::one(),
                gy_band,
                view(k, nc, cols)?.t(),
                F::one(),
                &mut gwg,
            )?;
            if let Some(gxg) = gxg.as_deref_mut() {
                let mut gcol = view_mut(k, nc, &mut acc.gcol[..k * nc])?;
                gemm(F::one(), wg.t(), gy_band, F::zero(), &mut gcol)?;
                col2im(g, &acc.gcol[..k * nc], oh0, rows, gxg, split);
            }
            oh0 += rows;
        }
    }
    for (b, row) in acc.gb.iter_mut().zip(gy.chunks_exact(p)) {
        *b += lane_sum(row);
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

/// The forward pass of a batch through the [`direct`] kernels when they
/// take this layer (`f32`, [`direct::usable`]); `false`, with `out`
/// untouched, otherwise.
fn forward_direct<F: Float>(
    g: &Geom,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    parallel: bool,
) -> bool {
    if !direct::usable(g) {
        return false;
    }
    let (Some(x), Some(w), Some(out)) = (F::as_f32(x), F::as_f32(weight), F::as_f32_mut(out))
    else {
        return false;
    };
    let bias = match bias.map(F::as_f32) {
        Some(None) => return false,
        b => b.flatten(),
    };
    let packed = direct::pack_weights(g, w);
    let (il, ol) = (g.in_len(), g.out_len());
    let image = |(y, xi): (&mut [f32], &[f32])| direct::forward_image(g, xi, &packed, bias, y);
    if parallel {
        out.par_chunks_mut(ol).zip(x.par_chunks(il)).for_each(image);
    } else {
        out.chunks_mut(ol).zip(x.chunks(il)).for_each(image);
    }
    true
}

/// Bytes of images and output gradients the direct weight-gradient kernel
/// sums in one pass: as many images as fit in L1 (each tap re-reads them).
const DIRECT_RUN_BYTES: usize = 32 << 10;

/// Images whose weight gradients the direct kernels sum in one pass (one
/// horizontal sum per weight per run instead of per image: LeNet-5's
/// second layer, 4 images; its first, whose images are larger, 1); the
/// runs' sums are then added in order, whatever the number of threads.
/// Depends on the geometry only.
fn direct_run_images(g: &Geom) -> usize {
    let bytes = (g.in_len() + g.out_len()) * std::mem::size_of::<f32>();
    (DIRECT_RUN_BYTES / bytes.max(1)).clamp(1, 8)
}

/// [`backward`] through the [`direct`] kernels, when they take this layer
/// (`f32`, [`direct::usable`]); `None`, with nothing touched, otherwise.
#[allow(clippy::too_many_arguments)]
fn backward_direct<F: Float>(
    g: &Geom,
    n: usize,
    x: &[F],
    weight: &[F],
    gy: &[F],
    gw: &mut [F],
    gb: Option<&mut [F]>,
    want_gx: bool,
    parallel: bool,
) -> Option<Vec<F>> {
    if !direct::usable(g) {
        return None;
    }
    let (il, ol) = (g.in_len(), g.out_len());
    let x = F::as_f32(x.get(..n * il)?)?;
    let gy = F::as_f32(gy.get(..n * ol)?)?;
    let gw = F::as_f32_mut(gw)?;
    let packed = direct::pack_weights(g, F::as_f32(weight)?);
    let mut gx = vec![F::zero(); if want_gx { n * il } else { 0 }];
    let per_run = direct_run_images(g);
    let runs = n.div_ceil(per_run);
    let mut gx_runs: Vec<Option<&mut [f32]>> = match F::as_f32_mut(&mut gx) {
        Some(gx) if want_gx => gx.chunks_mut(per_run * il).map(Some).collect(),
        _ => (0..runs).map(|_| None).collect(),
    };
    // One run of images: its weight and bias gradient sums; its input
    // gradients go straight to their place.
    type Run<'a, 'b> = ((&'b [f32], &'b [f32]), &'a mut Option<&'b mut [f32]>);
    let run = |((xs, gys), gxs): Run<'_, '_>| {
        let mut w_sum = vec![0f32; g.o * g.k()];
        direct::weight_grad_images(g, xs, gys, &mut w_sum);
        let mut b_sum = vec![0f32; g.o];
        for gyi in gys.chunks_exact(ol) {
            for (b, row) in b_sum.iter_mut().zip(gyi.chunks_exact(g.p())) {
                *b += lane_sum(row);
            }
        }
        if let Some(gxs) = gxs.as_deref_mut() {
            for (gxi, gyi) in gxs.chunks_exact_mut(il).zip(gys.chunks_exact(ol)) {
                direct::input_grad_image(g, &packed, gyi, gxi);
            }
        }
        (w_sum, b_sum)
    };
    let (xr, gyr) = (per_run * il, per_run * ol);
    let sums: Vec<(Vec<f32>, Vec<f32>)> = if parallel {
        x.par_chunks(xr)
            .zip(gy.par_chunks(gyr))
            .zip(gx_runs.par_iter_mut())
            .map(run)
            .collect()
    } else {
        x.chunks(xr)
            .zip(gy.chunks(gyr))
            .zip(gx_runs.iter_mut())
            .map(run)
            .collect()
    };
    drop(gx_runs);
    let mut gb = gb.and_then(F::as_f32_mut);
    for (w_sum, b_sum) in &sums {
        gw.iter_mut().zip(w_sum).for_each(|(a, &b)| *a += b);
        if let Some(gb) = gb.as_deref_mut() {
            gb.iter_mut().zip(b_sum).for_each(|(a, &b)| *a += b);
        }
    }
    Some(gx)
}

/// Forward pass of a batch: `x` is `[n, c, h, w]` (row-major); returns
/// `[n, o, oh, ow]` as a flat buffer. With a `cache`, a small layer
/// ([`cacheable`]) keeps its columns there for [`backward`] (the cache is
/// marked stale otherwise).
pub(super) fn forward<F: Float>(
    g: &Geom,
    n: usize,
    x: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    cache: Option<&mut ColumnCache<F>>,
) -> Result<Vec<F>> {
    let mut out = vec![F::zero(); n * g.out_len()];
    let keep = match cache {
        Some(c) => {
            c.key = None;
            cacheable(g, n).then_some(c)
        }
        None => None,
    };
    if n == 0 || g.out_len() == 0 {
        return Ok(out);
    }
    let (il, ol) = (g.in_len(), g.out_len());
    let parallel = batch_parallel(n);
    if forward_direct(g, x, weight, bias, &mut out, parallel) {
        return Ok(out);
    }
    let plan = Plan::new(g, parallel);
    if let Some(cache) = keep {
        let per_image = g.groups * g.k() * g.p();
        cache.cols.resize(n * per_image, F::zero());
        let image = |((y, xi), kept): ((&mut [F], &[F]), &mut [F])| {
            forward_image(g, plan, xi, weight, bias, y, &mut Vec::new(), Some(kept))
        };
        if parallel {
            out.par_chunks_mut(ol)
                .zip(x.par_chunks(il))
                .zip(cache.cols.par_chunks_mut(per_image))
                .try_for_each(image)?;
        } else {
            out.chunks_mut(ol)
                .zip(x.chunks(il))
                .zip(cache.cols.chunks_mut(per_image))
                .try_for_each(image)?;
        }
        cache.key = Some((*g, n));
    } else if parallel {
        out.par_chunks_mut(ol)
            .zip(x.par_chunks(il))
            .try_for_each_init(Vec::new, |col, (y, xi)| {
                forward_image(g, plan, xi, weight, bias, y, col, None)
            })?;
    } else if plan.split && !g.pointwise() {
        for (y, xi) in out.chunks_mut(ol).zip(x.chunks(il)) {
            forward_image_bands(g, xi, weight, bias, y)?;
        }
    } else {
        let mut col = Vec::new();
        for (y, xi) in out.chunks_mut(ol).zip(x.chunks(il)) {
            forward_image(g, plan, xi, weight, bias, y, &mut col, None)?;
        }
    }
    Ok(out)
}

/// Backward pass of a batch: adds the weight gradient to `gw` and the bias
/// gradient to `gb` (when given) and returns the input gradient as a flat
/// `[n, c, h, w]` buffer, or an empty one when `want_gx` is false (an input
/// that needs no gradient, such as a model's images). Reads the columns
/// from `cache` when the last forward pass kept them for this batch.
///
/// Each image's weight and bias gradients are summed on their own and the
/// images' sums are then added in image order (a window of images at a
/// time: [`images_per_window`]), whether the images ran on one thread or
/// were spread over the pool: the result does not depend on the number of
/// threads or on how rayon split the batch (folding a share of the images
/// per thread made it depend on both).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<F: Float>(
    g: &Geom,
    n: usize,
    x: &[F],
    weight: &[F],
    gy: &[F],
    gw: &mut [F],
    mut gb: Option<&mut [F]>,
    cache: Option<&ColumnCache<F>>,
    want_gx: bool,
) -> Result<Vec<F>> {
    let (il, ol) = (g.in_len(), g.out_len());
    let mut gx = if want_gx {
        vec![F::zero(); n * il]
    } else {
        Vec::new()
    };
    if n == 0 || ol == 0 || il == 0 {
        return Ok(gx);
    }
    let parallel = batch_parallel(n);
    if let Some(gx) = backward_direct(
        g,
        n,
        x,
        weight,
        gy,
        gw,
        gb.as_deref_mut(),
        want_gx,
        parallel,
    ) {
        return Ok(gx);
    }
    let plan = Plan::new(g, parallel);
    let cols = cache.and_then(|c| c.get(g, n));
    let col_slots: Vec<Option<&[F]>> = match cols {
        Some(c) => c.chunks_exact(c.len() / n).map(Some).collect(),
        None => vec![None; n],
    };
    let mut gx_slots: Vec<Option<&mut [F]>> = if want_gx {
        gx.chunks_mut(il).map(Some).collect()
    } else {
        (0..n).map(|_| None).collect()
    };
    let scratch = || {
        let band = if cols.is_some() { g.oh } else { plan.band };
        Acc::new(g, band, cols.is_some(), want_gx)
    };
    // One image: its gradients go into fresh sums; the thread's column
    // scratch is reused.
    type Item<'a, 'b, F> = (
        ((&'a mut Option<&'b mut [F]>, &'a Option<&'b [F]>), &'b [F]),
        &'b [F],
    );
    let image = |acc: &mut Acc<F>, (((gxi, ci), xi), gyi): Item<'_, '_, F>| {
        backward_image(g, plan, xi, weight, gyi, gxi.as_deref_mut(), *ci, acc)?;
        Ok::<_, Error>((
            std::mem::replace(&mut acc.gw, vec![F::zero(); g.o * g.k()]),
            std::mem::replace(&mut acc.gb, vec![F::zero(); g.o]),
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
        let windows = gx_slots
            .chunks_mut(window)
            .zip(col_slots.chunks(window))
            .zip(x.chunks(window * il))
            .zip(gy.chunks(window * ol));
        for (((gxs, cs), xs), gys) in windows {
            let per_image: Vec<(Vec<F>, Vec<F>)> = if parallel {
                gxs.par_iter_mut()
                    .zip(cs.par_iter())
                    .zip(xs.par_chunks(il))
                    .zip(gys.par_chunks(ol))
                    .map_init(scratch, image)
                    .collect::<Result<_>>()?
            } else {
                let acc = serial_scratch.get_or_insert_with(scratch);
                gxs.iter_mut()
                    .zip(cs.iter())
                    .zip(xs.chunks(il))
                    .zip(gys.chunks(ol))
                    .map(|item| image(acc, item))
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
    drop(gx_slots);
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

    fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
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

    fn one_thread_pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
    }

    /// Input, weights and output gradient of a random `f32` batch.
    fn random_batch(rng: &mut StdRng, g: &Geom, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (
            random_f32(rng, n * g.in_len()),
            random_f32(rng, g.o * g.k()),
            random_f32(rng, n * g.out_len()),
        )
    }

    /// Weight, bias and input gradients of a batch in `f32`, the parameter
    /// gradients starting from non-zero values (they accumulate).
    fn f32_gradients(
        g: &Geom,
        n: usize,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut gw, mut gb) = (vec![0.5f32; w.len()], vec![0.25f32; g.o]);
        let gx = backward(g, n, x, w, gy, &mut gw, Some(&mut gb), None, true).unwrap();
        (gw, gb, gx)
    }

    #[test]
    fn weight_gradients_do_not_depend_on_how_the_batch_is_spread_over_threads() {
        // The same batch from outside the pool (images spread over its
        // threads, several windows) and from inside a one-thread pool
        // (images in turn): bit-identical gradients.
        let mut rng = StdRng::seed_from_u64(21);
        let one = one_thread_pool();
        let small = geom(5, 9, 8, 7, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        // weights large enough that 19 images take three windows
        let large = geom(512, 3, 3, 512, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(images_per_window(&large), MIN_IMAGES_PER_WINDOW);
        for (g, n) in [(small, 1), (small, 2), (small, 7), (small, 19), (large, 19)] {
            let (x, w, gy) = random_batch(&mut rng, &g, n);
            let run = || f32_gradients(&g, n, &x, &w, &gy);
            let spread = run();
            let serial = one.install(run);
            assert!(spread == serial, "n={n}: gradients differ");
        }
    }

    #[test]
    fn direct_kernels_match_the_f64_im2col_path_and_ignore_thread_counts() {
        // Layers the direct f32 kernels take (LeNet-5's two, channel blocks
        // with remainders, an odd number of output vectors, a non-square
        // kernel) against the same batch in f64, which runs im2col + gemm.
        let mut rng = StdRng::seed_from_u64(33);
        let one = one_thread_pool();
        let cases = [
            (geom(1, 28, 28, 6, [5, 5], [1, 1], [0, 0], [1, 1], 1), 5),
            (geom(6, 12, 12, 16, [5, 5], [1, 1], [0, 0], [1, 1], 1), 4),
            (geom(3, 5, 10, 10, [3, 3], [1, 1], [0, 0], [1, 1], 1), 3),
            (geom(2, 7, 20, 9, [2, 5], [1, 1], [0, 0], [1, 1], 1), 2),
            // several runs of images, spread over the pool from outside it
            (geom(6, 12, 12, 16, [5, 5], [1, 1], [0, 0], [1, 1], 1), 19),
        ];
        for (g, n) in cases {
            assert!(direct::usable(&g) || !direct::cpu_has_avx2_fma(), "{g:?}");
            let (x, w, gy) = random_batch(&mut rng, &g, n);
            let b = random_f32(&mut rng, g.o);
            let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let close = |got: &[f32], want: &[f64], what: &str| {
                assert_eq!(got.len(), want.len(), "{what}");
                for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (a as f64 - e).abs() < 1e-4 * e.abs().max(1.0),
                        "{g:?} {what}[{i}]: {a} vs {e}"
                    );
                }
            };
            let y = forward(&g, n, &x, &w, Some(&b), None).unwrap();
            let y64 = forward(&g, n, &wide(&x), &wide(&w), Some(&wide(&b)), None).unwrap();
            close(&y, &y64, "output");
            let run = || f32_gradients(&g, n, &x, &w, &gy);
            let (gw, gb, gx) = run();
            let (mut gw64, mut gb64) = (vec![0.5f64; w.len()], vec![0.25f64; g.o]);
            let gx64 = backward(
                &g,
                n,
                &wide(&x),
                &wide(&w),
                &wide(&gy),
                &mut gw64,
                Some(&mut gb64),
                None,
                true,
            )
            .unwrap();
            close(&gw, &gw64, "weight gradient");
            close(&gb, &gb64, "bias gradient");
            close(&gx, &gx64, "input gradient");
            // Spread over the pool or one image after another: same bits.
            assert!(
                one.install(run) == (gw, gb, gx),
                "{g:?}: thread counts matter"
            );
            assert!(one.install(|| forward(&g, n, &x, &w, Some(&b), None).unwrap()) == y);
        }
        // What the kernels leave to im2col.
        for g in [
            geom(3, 12, 12, 4, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            geom(3, 12, 19, 4, [3, 3], [1, 1], [0, 0], [1, 1], 1),
            geom(3, 12, 17, 4, [3, 3], [2, 2], [0, 0], [1, 1], 1),
            geom(4, 12, 12, 4, [3, 3], [1, 1], [0, 0], [2, 2], 1),
            geom(4, 12, 10, 4, [3, 3], [1, 1], [0, 0], [1, 1], 2),
        ] {
            assert!(!direct::usable(&g), "{g:?}");
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
                let y = forward(&g, n, &x, &w, None, None).unwrap();
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
                let yb = forward(&g, n, &x, &w, Some(&bias), None).unwrap();
                for (i, (a, b)) in yb.iter().zip(&y).enumerate() {
                    let ch = (i / g.p()) % g.o;
                    assert!((a - b - bias[ch]).abs() < 1e-12, "{g:?} at {i}");
                }
                // backward is the adjoint: <gy, conv(x)> = <conv^T(gy), x> and = <gw, w>
                let gy = random(&mut rng, n * g.out_len());
                let mut gw = vec![0.0; w.len()];
                let gx = backward(&g, n, &x, &w, &gy, &mut gw, None, None, true).unwrap();
                let lhs: f64 = gy.iter().zip(&y).map(|(a, b)| a * b).sum();
                let rhs: f64 = gx.iter().zip(&x).map(|(a, b)| a * b).sum();
                let rhs_w: f64 = gw.iter().zip(&w).map(|(a, b)| a * b).sum();
                assert!((lhs - rhs).abs() < 1e-8 * lhs.abs().max(1.0), "{g:?}");
                assert!((lhs - rhs_w).abs() < 1e-8 * lhs.abs().max(1.0), "{g:?}");
            }
        }
    }

    #[test]
    fn cached_columns_give_the_gradients_of_rebuilt_ones() {
        let mut rng = StdRng::seed_from_u64(5);
        // LeNet-sized layers the direct kernels leave to im2col (padding).
        for g in [
            geom(1, 28, 28, 6, [5, 5], [1, 1], [2, 2], [1, 1], 1),
            geom(6, 12, 12, 16, [5, 5], [1, 1], [1, 1], [1, 1], 1),
            geom(4, 9, 11, 6, [3, 2], [2, 1], [1, 2], [1, 2], 2),
        ] {
            for n in [1, 3] {
                let (x, w, gy) = random_batch(&mut rng, &g, n);
                let b = random_f32(&mut rng, g.o);
                let mut cache = ColumnCache::default();
                let y = forward(&g, n, &x, &w, Some(&b), Some(&mut cache)).unwrap();
                assert!(cache.get(&g, n).is_some(), "{g:?} n={n}: columns kept");
                assert_eq!(y, forward(&g, n, &x, &w, Some(&b), None).unwrap());
                let run = |cache: Option<&ColumnCache<f32>>, want_gx: bool| {
                    let (mut gw, mut gb) = (vec![0.5f32; w.len()], vec![0.25f32; g.o]);
                    let gx = backward(&g, n, &x, &w, &gy, &mut gw, Some(&mut gb), cache, want_gx)
                        .unwrap();
                    (gw, gb, gx)
                };
                let rebuilt = run(None, true);
                assert_eq!(run(Some(&cache), true), rebuilt, "{g:?} n={n}");
                // without the input gradient: the same parameter gradients, no gx
                let (gw, gb, gx) = run(Some(&cache), false);
                assert!(gx.is_empty());
                assert_eq!((gw, gb), (rebuilt.0.clone(), rebuilt.1.clone()));
                let (gw, gb, gx) = run(None, false);
                assert!(gx.is_empty());
                assert_eq!((gw, gb), (rebuilt.0, rebuilt.1));
            }
        }
    }

    #[test]
    fn columns_are_kept_only_for_the_batch_and_layer_they_were_built_for() {
        let mut rng = StdRng::seed_from_u64(6);
        let g = geom(2, 6, 6, 3, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        let other = geom(2, 6, 6, 3, [3, 3], [1, 1], [0, 0], [1, 1], 1);
        let x = random(&mut rng, 4 * g.in_len());
        let w = random(&mut rng, g.o * g.k());
        let mut cache = ColumnCache::default();
        forward(&g, 4, &x, &w, None, Some(&mut cache)).unwrap();
        assert!(cache.get(&g, 4).is_some());
        assert!(cache.get(&g, 3).is_none() && cache.get(&other, 4).is_none());
        // a stale cache is not read: backward of 3 of the images rebuilds
        let gy = random(&mut rng, 3 * g.out_len());
        let mut gw_cached = vec![0.0; w.len()];
        let mut gw_plain = vec![0.0; w.len()];
        let n3 = 3 * g.in_len();
        let a = backward(
            &g,
            3,
            &x[..n3],
            &w,
            &gy,
            &mut gw_cached,
            None,
            Some(&cache),
            true,
        );
        let b = backward(&g, 3, &x[..n3], &w, &gy, &mut gw_plain, None, None, true);
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(gw_cached, gw_plain);
        // a layer too large to keep marks the cache stale
        let large = geom(64, 40, 100, 3, [3, 3], [1, 1], [1, 1], [1, 1], 1);
        assert!(!cacheable(&large, 1));
        let xl = random(&mut rng, large.in_len());
        let wl = random(&mut rng, large.o * large.k());
        forward(&large, 1, &xl, &wl, None, Some(&mut cache)).unwrap();
        assert!(cache.get(&large, 1).is_none() && cache.get(&g, 4).is_none());
        // pointwise layers read their input directly: nothing to keep
        let pw = geom(4, 5, 5, 2, [1, 1], [1, 1], [0, 0], [1, 1], 1);
        assert!(!cacheable(&pw, 2));
    }

    #[test]
    fn lane_sum_adds_every_element() {
        for len in [0usize, 1, 7, 8, 9, 17, 100] {
            let v: Vec<f64> = (0..len).map(|i| (i * i) as f64 + 0.5).collect();
            assert_eq!(lane_sum(&v), v.iter().sum::<f64>(), "len {len}");
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
