//! Direct convolution of small `f32` layers with AVX2 and FMA: stride 1,
//! no padding or dilation, one group, output rows a multiple of 8 wide
//! (LeNet-5's two layers). The forward and backward passes read the image
//! and the output gradient in place instead of building an im2col matrix and calling a
//! gemm per image: for such layers the column copies and the gemm's
//! packing of small operands cost as much as the multiply-adds.
//!
//! The forward pass keeps 2 output vectors (8 positions each) of up to 6
//! channels in registers and runs over every input channel and kernel tap;
//! the weight gradient keeps up to 8 channels' sums for one tap and runs
//! over every output position; the input gradient keeps one output
//! vector's gradients of up to 8 channels and adds their weighted sum to
//! every input row they touch. Other geometries, `f64` and CPUs without
//! AVX2/FMA take the im2col path.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::im2col::Geom;

/// Positions per vector.
const LANES: usize = 8;

/// Whether the direct kernels handle geometry `g` on this CPU.
pub(super) fn usable(g: &Geom) -> bool {
    g.groups == 1
        && (g.sh, g.sw, g.dh, g.dw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0)
        && g.c > 0
        && g.o > 0
        && g.oh > 0
        && g.ow > 0
        && g.ow.is_multiple_of(LANES)
        && g.oh + g.kh - 1 == g.h
        && g.ow + g.kw - 1 == g.w
        && cpu_has_avx2_fma()
}

/// Whether the CPU runs the kernels (AVX2 and FMA).
pub(super) fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights `[o, c, kh, kw]` reordered to `[c, kh, kw, o]`, so that the
/// forward kernel reads one tap's output channels side by side.
pub(super) fn pack_weights(g: &Geom, w: &[f32]) -> Vec<f32> {
    let taps = g.c * g.kh * g.kw;
    let mut packed = vec![0.0; taps * g.o];
    for (o, row) in w.chunks_exact(taps).enumerate().take(g.o) {
        for (t, &v) in row.iter().enumerate() {
            packed[t * g.o + o] = v;
        }
    }
    packed
}

/// Checks the slice lengths every kernel relies on.
fn lengths_fit(g: &Geom, x: usize, per_out: usize, out: usize) -> bool {
    x >= g.c * g.h * g.w && per_out >= g.o * g.c * g.kh * g.kw && out >= g.o * g.oh * g.ow
}

/// Forward pass of one image: `x` is `[c, h, w]`, `packed` the weights from
/// [`pack_weights`], `out` is `[o, oh, ow]` (overwritten; the bias, when
/// given, is its starting value).
pub(super) fn forward_image(
    g: &Geom,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        usable(g) && lengths_fit(g, x.len(), packed.len(), out.len()),
        "direct convolution called outside its geometry"
    );
    assert!(bias.is_none_or(|b| b.len() >= g.o));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `usable` checked that the CPU has AVX2 and FMA, the only
    // features the kernel enables; the lengths were checked above.
    unsafe {
        forward_avx2(g, x, packed, bias, out)
    }
}

/// Adds the weight gradient of a run of images to `gw` (`[o, c, kh, kw]`):
/// `x` holds the images `[m, c, h, w]`, `gy` their output gradients
/// `[m, o, oh, ow]`. Each weight's products are summed over all the images
/// in vector lanes before the lanes are added up, so a run of small images
/// pays for one horizontal sum per weight, not one per image.
pub(super) fn weight_grad_images(g: &Geom, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    let (il, ol) = (g.c * g.h * g.w, g.o * g.oh * g.ow);
    let m = x.len() / il.max(1);
    assert!(
        usable(g) && lengths_fit(g, il, gw.len(), ol) && x.len() == m * il && gy.len() == m * ol,
        "direct convolution called outside its geometry"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `forward_image`.
    unsafe {
        weight_grad_avx2(g, m, x, gy, gw)
    }
}

/// Adds the input gradient of one image to `gx` (`[c, h, w]`): `packed` is
/// the weights from [`pack_weights`], `gy` the output gradient
/// `[o, oh, ow]`.
pub(super) fn input_grad_image(g: &Geom, packed: &[f32], gy: &[f32], gx: &mut [f32]) {
    assert!(
        usable(g) && lengths_fit(g, gx.len(), packed.len(), gy.len()),
        "direct convolution called outside its geometry"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `forward_image`.
    unsafe {
        input_grad_avx2(g, packed, gy, gx)
    }
}

/// Output channels per forward block (2 vectors of 6 channels: 12
/// accumulators, 2 input vectors and a broadcast weight in 16 registers).
const FWD_CHANNELS: usize = 6;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(g: &Geom, x: &[f32], packed: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let vectors = g.oh * (g.ow / LANES);
    let mut o0 = 0;
    while o0 < g.o {
        let block = FWD_CHANNELS.min(g.o - o0);
        let mut q = 0;
        while q < vectors {
            let two = q + 1 < vectors;
            macro_rules! run {
                ($($n:literal),*) => {
                    match (block, two) {
                        $(($n, true) => forward_block::<$n, 2>(g, x, packed, bias, out, o0, q),
                          ($n, false) => forward_block::<$n, 1>(g, x, packed, bias, out, o0, q),)*
                        _ => unreachable!("channel blocks are 1 to {FWD_CHANNELS} wide"),
                    }
                };
            }
            run!(1, 2, 3, 4, 5, 6);
            q += if two { 2 } else { 1 };
        }
        o0 += block;
    }
}

/// Output vectors `q..q + V` (row-major over `[oh, ow / 8]`) of channels
/// `o0..o0 + B`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
// Index loops over the accumulator grid: the shape of the register block.
#[allow(clippy::needless_range_loop)]
unsafe fn forward_block<const B: usize, const V: usize>(
    g: &Geom,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    o0: usize,
    q: usize,
) {
    let per_row = g.ow / LANES;
    let mut at = [(0usize, 0usize); V];
    for (v, a) in at.iter_mut().enumerate() {
        *a = ((q + v) / per_row, (q + v) % per_row * LANES);
    }
    let mut acc = [[_mm256_setzero_ps(); B]; V];
    if let Some(b) = bias {
        for j in 0..B {
            let bj = _mm256_set1_ps(b[o0 + j]);
            for a in acc.iter_mut() {
                a[j] = bj;
            }
        }
    }
    let (xp, wp) = (x.as_ptr(), packed.as_ptr());
    for c in 0..g.c {
        for ki in 0..g.kh {
            let mut rows = [xp; V];
            for (r, &(oh, col)) in rows.iter_mut().zip(&at) {
                // In bounds: oh + ki < h and col + kj + 8 <= ow + kw - 1 = w.
                *r = xp.add((c * g.h + oh + ki) * g.w + col);
            }
            let taps = wp.add(((c * g.kh + ki) * g.kw) * g.o + o0);
            for kj in 0..g.kw {
                let mut xv = [_mm256_setzero_ps(); V];
                for (v, r) in xv.iter_mut().zip(&rows) {
                    *v = _mm256_loadu_ps(r.add(kj));
                }
                let wt = taps.add(kj * g.o);
                for j in 0..B {
                    let w = _mm256_broadcast_ss(&*wt.add(j));
                    for v in 0..V {
                        acc[v][j] = _mm256_fmadd_ps(w, xv[v], acc[v][j]);
                    }
                }
            }
        }
    }
    let op = out.as_mut_ptr();
    for (v, &(oh, col)) in at.iter().enumerate() {
        for j in 0..B {
            _mm256_storeu_ps(op.add(((o0 + j) * g.oh + oh) * g.ow + col), acc[v][j]);
        }
    }
}

/// Output channels per gradient block: the weight gradient's 8 sums of one
/// tap, or the input gradient's 8 output-gradient vectors that stay in
/// registers while every tap is visited.
const GRAD_CHANNELS: usize = 8;

/// Calls `$kernel::<B>($args.., o0)` for each block `o0..o0 + B` of
/// [`GRAD_CHANNELS`] output channels (the last block may be narrower).
macro_rules! per_channel_block {
    ($channels:expr, $kernel:ident, $($arg:expr),*) => {{
        let mut o0 = 0;
        while o0 < $channels {
            let block = GRAD_CHANNELS.min($channels - o0);
            match block {
                1 => $kernel::<1>($($arg,)* o0),
                2 => $kernel::<2>($($arg,)* o0),
                3 => $kernel::<3>($($arg,)* o0),
                4 => $kernel::<4>($($arg,)* o0),
                5 => $kernel::<5>($($arg,)* o0),
                6 => $kernel::<6>($($arg,)* o0),
                7 => $kernel::<7>($($arg,)* o0),
                8 => $kernel::<8>($($arg,)* o0),
                _ => unreachable!("channel blocks are 1 to {GRAD_CHANNELS} wide"),
            }
            o0 += block;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_grad_avx2(g: &Geom, m: usize, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    per_channel_block!(g.o, weight_grad_block, g, m, x, gy, gw)
}

/// The weight gradients of channels `o0..o0 + B`, every input channel and
/// tap, summed over the `m` images.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weight_grad_block<const B: usize>(
    g: &Geom,
    m: usize,
    x: &[f32],
    gy: &[f32],
    gw: &mut [f32],
    o0: usize,
) {
    let (xp, gyp) = (x.as_ptr(), gy.as_ptr());
    let plane = g.oh * g.ow;
    let (il, ol) = (g.c * g.h * g.w, g.o * plane);
    let taps = g.kh * g.kw;
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let mut acc = [_mm256_setzero_ps(); B];
                for img in 0..m {
                    for oh in 0..g.oh {
                        let xr = xp.add(img * il + (c * g.h + oh + ki) * g.w + kj);
                        let gr = gyp.add(img * ol + o0 * plane + oh * g.ow);
                        for col in (0..g.ow).step_by(LANES) {
                            let xv = _mm256_loadu_ps(xr.add(col));
                            for (j, a) in acc.iter_mut().enumerate() {
                                let gv = _mm256_loadu_ps(gr.add(j * plane + col));
                                *a = _mm256_fmadd_ps(gv, xv, *a);
                            }
                        }
                    }
                }
                let sums = lane_sums(&acc);
                let at = c * taps + ki * g.kw + kj;
                for (j, s) in sums.iter().enumerate().take(B) {
                    gw[(o0 + j) * g.c * taps + at] += *s;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_grad_avx2(g: &Geom, packed: &[f32], gy: &[f32], gx: &mut [f32]) {
    per_channel_block!(g.o, input_grad_block, g, packed, gy, gx)
}

/// Scatters channels `o0..o0 + B` of the output gradient back over the
/// input: for each output vector, every tap of every input channel gets
/// the weighted sum of the block's gradients.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn input_grad_block<const B: usize>(
    g: &Geom,
    packed: &[f32],
    gy: &[f32],
    gx: &mut [f32],
    o0: usize,
) {
    let (gyp, wp, gxp) = (gy.as_ptr(), packed.as_ptr(), gx.as_mut_ptr());
    let plane = g.oh * g.ow;
    for oh in 0..g.oh {
        for col in (0..g.ow).step_by(LANES) {
            let mut d = [_mm256_setzero_ps(); B];
            for (j, v) in d.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(gyp.add((o0 + j) * plane + oh * g.ow + col));
            }
            // Taps outermost: consecutive updates go to different rows (the
            // taps of one row overlap, and a load of a vector just stored one
            // value over stalls until the store is done).
            for kj in 0..g.kw {
                for c in 0..g.c {
                    for ki in 0..g.kh {
                        // In bounds: oh + ki < h and col + kj + 8 <= ow + kw - 1 = w.
                        let at = gxp.add((c * g.h + oh + ki) * g.w + col + kj);
                        let wt = wp.add(((c * g.kh + ki) * g.kw + kj) * g.o + o0);
                        let mut acc = _mm256_mul_ps(_mm256_broadcast_ss(&*wt), d[0]);
                        for (j, v) in d.iter().enumerate().skip(1) {
                            acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&*wt.add(j)), *v, acc);
                        }
                        _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), acc));
                    }
                }
            }
        }
    }
}

/// The sum of each vector's lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn lane_sums<const B: usize>(acc: &[__m256; B]) -> [f32; 8] {
    let mut out = [0.0f32; 8];
    if B == 8 {
        // A transpose-and-add tree: the 8 sums in one vector.
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let t2 = _mm256_hadd_ps(acc[4], acc[5]);
        let t3 = _mm256_hadd_ps(acc[6], acc[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
        let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(lo, hi));
    } else {
        for (o, a) in out.iter_mut().zip(acc) {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
            *o = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        }
    }
    out
}
