//! Products with frozen weights in bf16 with f32 accumulation (AVX-512 BF16,
//! `vdpbf16ps`, or AMX), for training's fast path ([`crate::models::TrainWeights::Fast`]): the
//! forward `x W^T` and the input gradient `dy W`, both on panels of W's rows that the
//! caller dequantizes to f32.
//!
//! Both operands are rounded to bf16 (round to nearest even) and packed in pairs along
//! the reduced dimension, so that one `vdpbf16ps` adds two products per f32 lane: twice
//! the multiply-adds per instruction of f32 FMA. Products of two bf16 values are exact
//! in f32; the rounding is that of the inputs (relative 2^-9) and of the f32 sums.
//!
//! The kernel computes `out (m x cols) += A (m x pairs) B (pairs x cols)`:
//! - A: `a[i * pairs + p]` = the bf16 pair of row i at reduced positions (2p, 2p+1), as a
//!   u32 (an odd last position is paired with zero);
//! - B: column blocks of up to 64 columns (`nv` <= 4 vectors of 16); block `jb` starts
//!   at vector `jb * 4 * pairs`, and within it vector `p * nv + v` holds the 16 pairs of
//!   the block's `v`-th 16 columns at reduced positions (2p, 2p+1).
//!
//! For `dy W`, A is dy's columns of the panel and B the panel (pairs of rows); for
//! `x W^T`, A is x (pairs along its width) and B the panel transposed (pairs along each
//! row, 16 rows per vector).
//!
//! On CPUs with AMX, products whose reduced length is a multiple of 32 run on
//! [`super::amx`]'s tiles (the same layouts, 2-5x faster). [`preferred`] says whether
//! training uses bf16 at all on this CPU.

/// Rows of dx per micro-tile; vectors of 16 columns per micro-tile (6 x 4 accumulators).
const MR: usize = 6;
const NV: usize = 4;

/// Where a product goes: rows of stride `ld` f32s from `ptr`; `load`: added to what is
/// there, else written over it (never read: it may be uninitialised).
#[derive(Clone, Copy)]
pub struct Out {
    pub ptr: *mut f32,
    pub ld: usize,
    pub load: bool,
}

/// Whether these kernels run: the AVX-512 kernel set is in use ([`super::quant::kernels`],
/// which also honours `BIPO_KERNELS=avx2|scalar`) and the CPU has AVX-512 BF16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            super::quant::kernels() == super::quant::Kernels::Vnni
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether training's fast path multiplies in bf16 on this CPU: on AMX tiles
/// ([`super::amx`]), or with AVX-512 BF16 on AMD CPUs (Zen 4 and later), where
/// `vdpbf16ps` runs at twice f32's multiply-adds (165-205 vs 82-106 GMAC/s). Intel
/// cores run it slower than f32 FMA (68-95 vs 117-150 GMAC/s measured on a Xeon, whose
/// AMX does 210-460): there, without AMX, the products stay f32.
pub fn preferred() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            // Leaf 0 names the vendor in ebx, edx, ecx.
            let id = std::arch::x86_64::__cpuid(0);
            let amd = [id.ebx, id.edx, id.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
            super::amx::available() || (available() && amd)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What training's fast path multiplies with on this CPU, in words (for headers and
/// run records).
pub fn arithmetic() -> &'static str {
    if super::amx::available() {
        "bf16 products on AMX tiles"
    } else if preferred() {
        "bf16 products (AVX-512 BF16)"
    } else if available() {
        "f32 products (AVX-512 BF16 is slower than f32 on this CPU)"
    } else {
        "f32 products (AVX-512 BF16 not in use)"
    }
}

/// bf16 of an f32, rounded to nearest even (NaN stays NaN), as its bits.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits.
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A (m x len at row stride `stride`) rounded and packed as bf16 pairs (see the module
/// doc). Requires [`available`].
pub fn pack_rows(m: usize, len: usize, src: &[f32], stride: usize) -> Vec<u32> {
    assert!(available(), "bf16: unsupported CPU");
    assert!(m == 0 || src.len() >= (m - 1) * stride + len);
    let mut a = vec![0u32; m * len.div_ceil(2)];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were checked; `a` has the layout's size.
    unsafe {
        x86::pack_a(m, len, src, stride, &mut a)
    };
    a
}

/// Reusable packing buffers for the panel products.
#[derive(Default)]
pub struct Panel {
    a: Vec<u32>,
    b: Vec<u32>,
}

impl Panel {
    /// dx (m x k, row-major) += dy[:, r0..r0+rows] (dy row stride `n`) times `w` (rows x
    /// k, row-major f32). Requires [`available`] and `k.is_multiple_of(16)`.
    pub fn accumulate(
        &mut self,
        m: usize,
        k: usize,
        dx: &mut [f32],
        dy: &[f32],
        n: usize,
        w: &[f32],
    ) {
        assert!(
            available() && k.is_multiple_of(16),
            "bf16 panel: unsupported"
        );
        let rows = w.len() / k;
        assert!(dx.len() >= m * k && w.len() == rows * k && rows > 0);
        assert!(m == 0 || dy.len() >= (m - 1) * n + rows);
        let pairs = rows.div_ceil(2);
        self.a.resize(m * pairs, 0);
        self.b.resize(pairs * k, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were checked; the buffers have the sizes the layouts need.
        unsafe {
            x86::pack_a(m, rows, dy, n, &mut self.a);
            x86::pack_b(rows, k, w, &mut self.b);
            x86::multiply(
                m,
                k,
                pairs,
                &self.a,
                &self.b,
                Out {
                    ptr: dx.as_mut_ptr(),
                    ld: k,
                    load: true,
                },
            );
        }
    }

    /// y[:, r0..r0+rows] (y row stride `n`, `y` starting at column r0) = x `w`^T, for x
    /// given packed by [`pack_rows`] (m rows of width k) and `w` (rows x k, row-major
    /// f32). Requires [`available`], `k.is_multiple_of(2)` and `rows.is_multiple_of(16)`.
    ///
    /// # Safety
    /// `y` must cover m rows of stride n from column r0 through r0 + rows, and no other
    /// thread may write those columns meanwhile. They are written, never read: they may
    /// be uninitialised.
    pub unsafe fn forward(
        &mut self,
        x: &[u32],
        m: usize,
        k: usize,
        w: &[f32],
        y: *mut f32,
        n: usize,
    ) {
        let rows = w.len() / k;
        assert!(
            available() && k.is_multiple_of(2) && rows.is_multiple_of(16) && w.len() == rows * k
        );
        let pairs = k / 2;
        assert!(x.len() >= m * pairs && n >= rows);
        self.a.resize(rows * pairs, 0);
        self.b.resize(pairs * rows, 0);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were checked; the buffers have the layouts' sizes; the
        // caller guarantees y.
        unsafe {
            x86::pack_a(rows, k, w, k, &mut self.a);
            x86::transpose_b(rows, pairs, &self.a, &mut self.b);
            x86::multiply(
                m,
                rows,
                pairs,
                x,
                &self.b,
                Out {
                    ptr: y,
                    ld: n,
                    load: false,
                },
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Out, MR, NV};
    use std::arch::x86_64::*;

    /// 32 f32 from `src` (the first `len`, zeros after) as 32 bf16 in order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16x32(src: *const f32, len: usize) -> __m512i {
        let m0 = if len >= 16 { 0xffff } else { (1u32 << len) - 1 } as u16;
        let m1 = if len >= 32 {
            0xffff
        } else if len > 16 {
            ((1u32 << (len - 16)) - 1) as u16
        } else {
            0
        };
        let lo = _mm512_maskz_loadu_ps(m0, src);
        let hi = _mm512_maskz_loadu_ps(m1, src.wrapping_add(16));
        // cvtne2ps: the second operand fills the low half.
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }

    /// A: each row's `rows` values from column r0 (already offset in `dy`) as bf16, in
    /// order, padded to an even count: consecutive pairs are the u32s the kernel reads.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_a(m: usize, rows: usize, dy: &[f32], n: usize, a: &mut [u32]) {
        let pairs = rows.div_ceil(2);
        for i in 0..m {
            let src = dy.as_ptr().add(i * n);
            let dst = a.as_mut_ptr().add(i * pairs) as *mut u16;
            let mut c = 0;
            while c < rows {
                let len = (rows - c).min(32);
                let v = bf16x32(src.add(c), len);
                // Store the converted values plus the zero pad of an odd tail.
                let keep = len.next_multiple_of(2);
                let mask = if keep >= 32 {
                    u32::MAX
                } else {
                    (1u32 << keep) - 1
                };
                _mm512_mask_storeu_epi16(dst.add(c) as *mut i16, mask, v);
                c += 32;
            }
        }
    }

    /// B: rows 2p and 2p+1 of the panel interleaved per column, in the module's layout.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_b(rows: usize, k: usize, w: &[f32], b: &mut [u32]) {
        let pairs = rows.div_ceil(2);
        // Interleave [r0 c0..15 | r1 c0..15] into (r0 c, r1 c) pairs.
        let idx: [i16; 32] = std::array::from_fn(|t| ((t % 2) * 16 + t / 2) as i16);
        let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
        let zero = [0f32; 16];
        let vecs = k / 16;
        for jb in 0..vecs.div_ceil(NV) {
            let nv = (vecs - jb * NV).min(NV);
            let base = b.as_mut_ptr().add(jb * NV * pairs * 16);
            for p in 0..pairs {
                let r0 = w.as_ptr().add(2 * p * k);
                let r1 = if 2 * p + 1 < rows {
                    w.as_ptr().add((2 * p + 1) * k)
                } else {
                    zero.as_ptr()
                };
                let step = if 2 * p + 1 < rows { 1 } else { 0 };
                for v in 0..nv {
                    let c = (jb * NV + v) * 16;
                    let x = _mm512_cvtne2ps_pbh(
                        _mm512_loadu_ps(r1.add(c * step)),
                        _mm512_loadu_ps(r0.add(c)),
                    );
                    let x =
                        _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(x));
                    _mm512_storeu_si512(base.add((p * nv + v) * 16) as *mut _, x);
                }
            }
        }
    }

    /// B from rows of pairs (`w`: rows x pairs u32, as [`pack_a`] makes them): vector v
    /// of pair p holds pair p of 16 consecutive rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn transpose_b(rows: usize, pairs: usize, w: &[u32], b: &mut [u32]) {
        let vecs = rows / 16;
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(pairs as i32),
        );
        for jb in 0..vecs.div_ceil(NV) {
            let nv = (vecs - jb * NV).min(NV);
            let base = b.as_mut_ptr().add(jb * NV * pairs * 16);
            for v in 0..nv {
                let rows16 = w.as_ptr().add((jb * NV + v) * 16 * pairs) as *const i32;
                for p in 0..pairs {
                    let x = _mm512_i32gather_epi32::<4>(lanes, rows16.add(p));
                    _mm512_storeu_si512(base.add((p * nv + v) * 16) as *mut _, x);
                }
            }
        }
    }

    /// out[i0..i0+R][cols of block] (+)= A rows x B block, `V` vectors wide; `load`:
    /// add to out, else overwrite it.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const V: usize>(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        dx: *mut f32,
        ld: usize,
        load: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(dx.add(i * ld + 16 * v));
                }
            }
        }
        for p in 0..pairs {
            let bv: [__m512bh; V] = std::array::from_fn(|v| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add((p * V + v) * 16) as *const _,
                ))
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *a.add(i * pairs + p) as i32,
                ));
                for (x, bw) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, *bw);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(dx.add(i * ld + 16 * v), *x);
            }
        }
    }

    /// Runs `tile::<r, v>` for the runtime remainders.
    macro_rules! dispatch {
        ($r:expr, $v:expr, $($args:expr),*) => {
            match ($r, $v) {
                (6, 4) => tile::<6, 4>($($args),*),
                (6, 3) => tile::<6, 3>($($args),*),
                (6, 2) => tile::<6, 2>($($args),*),
                (6, 1) => tile::<6, 1>($($args),*),
                (5, 4) => tile::<5, 4>($($args),*),
                (5, 3) => tile::<5, 3>($($args),*),
                (5, 2) => tile::<5, 2>($($args),*),
                (5, 1) => tile::<5, 1>($($args),*),
                (4, 4) => tile::<4, 4>($($args),*),
                (4, 3) => tile::<4, 3>($($args),*),
                (4, 2) => tile::<4, 2>($($args),*),
                (4, 1) => tile::<4, 1>($($args),*),
                (3, 4) => tile::<3, 4>($($args),*),
                (3, 3) => tile::<3, 3>($($args),*),
                (3, 2) => tile::<3, 2>($($args),*),
                (3, 1) => tile::<3, 1>($($args),*),
                (2, 4) => tile::<2, 4>($($args),*),
                (2, 3) => tile::<2, 3>($($args),*),
                (2, 2) => tile::<2, 2>($($args),*),
                (2, 1) => tile::<2, 1>($($args),*),
                (1, 4) => tile::<1, 4>($($args),*),
                (1, 3) => tile::<1, 3>($($args),*),
                (1, 2) => tile::<1, 2>($($args),*),
                (1, 1) => tile::<1, 1>($($args),*),
                _ => unreachable!("tile {}x{}", $r, $v),
            }
        };
    }

    /// out (m x cols, row stride ld) += A (m x pairs) B (pairs x cols) (`load`; else
    /// out = A B, out never read), column block by column block, each block of B reused
    /// across all rows of A.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn multiply(m: usize, cols: usize, pairs: usize, a: &[u32], b: &[u32], out: Out) {
        // On AMX tiles where the CPU has them (all rows, or none).
        let done = crate::kernels::amx::multiply(m, cols, pairs, a, b, out);
        let Out { ptr: out, ld, load } = out;
        let vecs = cols / 16;
        for jb in 0..vecs.div_ceil(NV) {
            let nv = (vecs - jb * NV).min(NV);
            let bb = b.as_ptr().add(jb * NV * pairs * 16);
            let mut i = done;
            while i < m {
                let r = (m - i).min(MR);
                let o = out.add(i * ld + jb * NV * 16);
                dispatch!(r, nv, pairs, a.as_ptr().add(i * pairs), bb, o, ld, load);
                i += r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn panel_forward_equals_the_bf16_rounded_product() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: only the rounding is checked here");
            return;
        }
        let mut seed = 11;
        // Rows 16..80 (1-5 vectors: a partial column block), m not a multiple of 6, k
        // even but not a multiple of 16, y wider than the panel.
        // m = 53: a 32-row and a 16-row AMX block plus a 5-row one (where the CPU has AMX).
        for (m, rows, k, n) in [
            (13, 64, 576, 80),
            (1, 16, 2, 16),
            (8, 80, 34, 96),
            (53, 80, 576, 96),
        ] {
            let r0 = n - rows;
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed)).collect();
            let mut y = vec![0f32; m * n];
            let xp = pack_rows(m, k, &x, k);
            // SAFETY: y has m rows of n columns; the panel's columns r0..n exist.
            unsafe { Panel::default().forward(&xp, m, k, &w, y.as_mut_ptr().add(r0), n) };
            let r = |v: f32| from_bf16(to_bf16(v)) as f64;
            for i in 0..m {
                assert!(
                    y[i * n..i * n + r0].iter().all(|&v| v == 0.0),
                    "outside the panel"
                );
                for j in 0..rows {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for c in 0..k {
                        want += r(x[i * k + c]) * r(w[j * k + c]);
                        mag += (x[i * k + c] * w[j * k + c]).abs() as f64;
                    }
                    let got = y[i * n + r0 + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (mag + 1.0),
                        "{m}x{rows}x{k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// A row's product does not depend on where it sits in A (which 6-row tile, which
    /// AMX block, whole or partial): bit for bit, so a pair's log-probabilities do not
    /// depend on the batch it is packed in.
    #[test]
    fn a_rows_product_does_not_depend_on_its_position() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: only the rounding is checked here");
            return;
        }
        let mut seed = 5;
        let (m, rows, k) = (21, 64, 576);
        let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed)).collect();
        let forward = |x: &[f32], m: usize| {
            let mut y = vec![0f32; m * rows];
            let xp = pack_rows(m, k, x, k);
            // SAFETY: y has m rows of `rows` columns.
            unsafe { Panel::default().forward(&xp, m, k, &w, y.as_mut_ptr(), rows) };
            y
        };
        let alone = forward(&x, m);
        for shift in [1, 5, 11, 16, 27] {
            // The same rows after `shift` others.
            let mut xs: Vec<f32> = (0..shift * k).map(|_| lcg(&mut seed)).collect();
            xs.extend_from_slice(&x);
            let y = forward(&xs, shift + m);
            assert!(
                y[shift * rows..] == alone[..],
                "shifted by {shift}: a row's product changed"
            );
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn panel_product_equals_the_bf16_rounded_product() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: only the rounding is checked here");
            return;
        }
        let mut seed = 7;
        // Shapes with every remainder: rows odd and even, m not a multiple of 6, k with
        // 1-3 spare vectors of 16, dy wider than the panel (row stride n).
        for (m, rows, k, n) in [
            (13, 64, 576, 70),
            (1, 7, 16, 7),
            (8, 33, 112, 40),
            (6, 2, 48, 2),
            (53, 64, 576, 70),
            (53, 32, 112, 40),
        ] {
            let r0 = n - rows;
            let dy: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed)).collect();
            let start: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let mut dx = start.clone();
            let mut p = Panel::default();
            p.accumulate(m, k, &mut dx, &dy[r0..], n, &w);
            let r = |x: f32| from_bf16(to_bf16(x)) as f64;
            for i in 0..m {
                for c in 0..k {
                    let (mut want, mut exact, mut mag) = (start[i * k + c] as f64, 0f64, 0f64);
                    for j in 0..rows {
                        let (a, b) = (dy[i * n + r0 + j], w[j * k + c]);
                        want += r(a) * r(b);
                        exact += (a * b) as f64;
                        mag += (a * b).abs() as f64;
                    }
                    let got = dx[i * k + c] as f64;
                    // Against the rounded inputs: only f32 sums differ.
                    assert!(
                        (got - want).abs() <= 1e-6 * (mag + 1.0),
                        "{m}x{rows}x{k}: {got} vs {want}"
                    );
                    // Against f32 inputs: within bf16's rounding of both factors.
                    let exact = exact + start[i * k + c] as f64;
                    assert!(
                        (got - exact).abs() <= 2f64.powi(-7) * (mag + 1.0),
                        "{got} vs {exact}"
                    );
                }
            }
        }
    }
}
