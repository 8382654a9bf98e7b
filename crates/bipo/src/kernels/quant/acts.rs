//! Activations quantized to 8 bits the way llama.cpp quantizes them for each weight
//! type: Q8_0 (per 32 values, f16 scale), Q8_1 (plus the f16-rounded block sum) and
//! Q8_K (per 256 values, f32 scale, sums per 16). Kept as separate arrays (values,
//! scales, sums) so the SIMD kernels load them directly.

use half::f16;
use rayon::prelude::*;

use super::blocks::ActKind;

/// `m` rows of `cols` activations, quantized.
pub struct Acts {
    pub kind: ActKind,
    pub cols: usize,
    /// (m, cols) values.
    pub q: Vec<i8>,
    /// Per 32 values: the scale (Q8_0/Q8_1: f16-rounded; Q8_K: the super-block's).
    pub d: Vec<f32>,
    /// Per 32 values: integer sum of q.
    pub sum: Vec<i32>,
    /// Per 32 values: Q8_1's f16(d * sum); otherwise d * sum.
    pub s: Vec<f32>,
    /// Q8_K: per 16 values, the integer sum of q.
    pub bsums: Vec<i16>,
    /// Q8_K: per 16 values, d * sum(q).
    pub s16: Vec<f32>,
}

impl Acts {
    /// Quantizes `x` (m rows of `cols`, cols a multiple of the block) as `kind` does;
    /// rows in parallel when there are several.
    pub fn new(x: &[f32], cols: usize, kind: ActKind) -> Self {
        let n32 = x.len() / 32;
        let q8k = kind == ActKind::Q8K;
        let mut a = Self {
            kind,
            cols,
            q: vec![0; x.len()],
            d: vec![0.0; n32],
            sum: vec![0; n32],
            s: vec![0.0; n32],
            bsums: vec![0; if q8k { x.len() / 16 } else { 0 }],
            s16: vec![0.0; if q8k { x.len() / 16 } else { 0 }],
        };
        // Whole rows per task, a few tasks per thread; one task for a decode row.
        let rows = x.len() / cols.max(1);
        let tasks = (2 * rayon::current_num_threads()).min(rows).max(1);
        let n = rows.div_ceil(tasks).max(1) * cols.max(1);
        let blocks = x
            .par_chunks(n)
            .zip(a.q.par_chunks_mut(n))
            .zip(a.d.par_chunks_mut(n / 32))
            .zip(a.sum.par_chunks_mut(n / 32))
            .zip(a.s.par_chunks_mut(n / 32));
        if q8k {
            blocks
                .zip(a.bsums.par_chunks_mut(n / 16))
                .zip(a.s16.par_chunks_mut(n / 16))
                .for_each(|((((((x, q), d), sum), s), bsums), s16)| {
                    fill_q8k(x, q, d, sum, s, bsums, s16)
                });
        } else {
            let q8_1 = kind == ActKind::Q8_1;
            blocks.for_each(|((((x, q), d), sum), s)| fill_q8(q8_1, x, q, d, sum, s));
        }
        a
    }

    /// Activation row `i`'s values.
    #[inline(always)]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.q[i * self.cols..(i + 1) * self.cols]
    }

    /// Scale of 32-value block `b` of row `i`.
    #[inline(always)]
    pub fn block_scale(&self, i: usize, b: usize) -> f32 {
        self.d[i * self.cols / 32 + b]
    }

    #[inline(always)]
    pub fn block_sum(&self, i: usize, b: usize) -> i32 {
        self.sum[i * self.cols / 32 + b]
    }

    #[inline(always)]
    pub fn block_s(&self, i: usize, b: usize) -> f32 {
        self.s[i * self.cols / 32 + b]
    }

    /// Q8_K scale of super-block `sb` of row `i`.
    #[inline(always)]
    pub fn super_scale(&self, i: usize, sb: usize) -> f32 {
        self.d[i * self.cols / 32 + 8 * sb]
    }

    /// Q8_K per-16 sums of super-block `sb` of row `i`.
    #[inline(always)]
    pub fn bsums(&self, i: usize, sb: usize) -> &[i16] {
        let at = i * self.cols / 16 + 16 * sb;
        &self.bsums[at..at + 16]
    }
}

/// Q8_0 / Q8_1 (`q8_1`) blocks of 32 for the values `x`.
fn fill_q8(q8_1: bool, x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [i32], s: &mut [f32]) {
    for (b, (xs, qs)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut total = 0i32;
        for (q, v) in qs.iter_mut().zip(xs) {
            // ggml's AVX2 quantizer rounds half to even.
            *q = nearest(v * id) as i8;
            total += *q as i32;
        }
        let d16 = f16::from_f32(scale).to_f32();
        d[b] = d16;
        sum[b] = total;
        s[b] = if q8_1 {
            f16::from_f32(scale * total as f32).to_f32()
        } else {
            d16 * total as f32
        };
    }
}

/// Q8_K super-blocks of 256 for the values `x` (per 32: scale, sum, d * sum; per 16:
/// sums and d * sums).
fn fill_q8k(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    sum: &mut [i32],
    s: &mut [f32],
    bsums: &mut [i16],
    s16: &mut [f32],
) {
    for (sb, (xs, qs)) in x.chunks_exact(256).zip(q.chunks_exact_mut(256)).enumerate() {
        let scale = quantize_q8k(xs, qs);
        for (k, b16) in qs.chunks_exact(16).enumerate() {
            let t: i16 = b16.iter().map(|&v| v as i16).sum();
            bsums[16 * sb + k] = t;
            s16[16 * sb + k] = scale * t as f32;
        }
        for k in 0..8 {
            let i = 8 * sb + k;
            d[i] = scale;
            sum[i] = bsums[2 * i] as i32 + bsums[2 * i + 1] as i32;
            s[i] = scale * sum[i] as f32;
        }
    }
}

/// Round half to even for |x| < 2^22, as ggml's `nearest_int` (adding 1.5 * 2^23 leaves
/// the rounded integer in the low mantissa bits); vectorizes, unlike `round_ties_even`.
#[inline(always)]
fn nearest(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `quantize_row_q8_K_ref` for one super-block: the value of largest magnitude
/// maps to -127 (the scale takes its sign); returns the scale.
fn quantize_q8k(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = nearest(iscale * v).min(127) as i8;
    }
    1.0 / iscale
}
