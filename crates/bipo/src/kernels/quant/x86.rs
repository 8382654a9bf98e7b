//! x86-64 kernels on [`super::tiles`]: 8 weight rows (one per 32-bit lane) against `T`
//! quantized activation rows. Each tile's weights are unpacked into registers once and
//! used for all `T` tokens; each 256-bit integer dot product (`vpdpbusd`, or
//! `vpmaddubsw` + `vpmaddwd` on AVX2) then computes 4 values of 8 rows against 4
//! activation values broadcast to every lane. Weights are unsigned (0..15, 0..31,
//! 0..63; Q8_0 biased by 128 on VNNI); zero points and offsets are applied through the
//! activations' block sums. Results equal [`super::blocks::dot_scalar`] up to the order
//! of f32 additions.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::acts::Acts;
use super::blocks::QType;

/// The integer dot-product instructions of one instruction set.
pub trait Isa {
    /// Q8_0 weights biased to unsigned (+128) instead of the sign trick.
    const BIASED_Q8: bool;
    /// acc + per-lane sums of 4 u8 x i8 products.
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` then `vpmaddwd`.
pub struct Avx2;
/// AVX-512 VNNI, BW and VL, on 256-bit vectors.
pub struct Vnni;

impl Isa for Avx2 {
    const BIASED_Q8: bool = false;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
}

impl Isa for Vnni {
    const BIASED_Q8: bool = true;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

/// Asks for `lines` cache lines from `p` ahead of use (weights stream from memory once
/// per token in decode, so their loads are what waits).
#[inline(always)]
unsafe fn prefetch(p: *const u8, lines: usize) {
    for l in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * l) as *const i8);
    }
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 8 f16 values -> f32 lanes.
#[inline(always)]
unsafe fn halves(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// 8 bytes (u8 or i8) -> f32 lanes.
#[inline(always)]
unsafe fn bytes_f32(p: *const u8, signed: bool) -> __m256 {
    let b = _mm_loadl_epi64(p as *const __m128i);
    let w = if signed {
        _mm256_cvtepi8_epi32(b)
    } else {
        _mm256_cvtepu8_epi32(b)
    };
    _mm256_cvtepi32_ps(w)
}

/// `x` shifted left by `s` bits (right by -s) in 16-bit lanes; every caller masks the
/// result to bits that came from the same byte.
#[inline(always)]
unsafe fn shift(x: __m256i, s: i32) -> __m256i {
    match s {
        4 => _mm256_slli_epi16::<4>(x),
        3 => _mm256_slli_epi16::<3>(x),
        2 => _mm256_slli_epi16::<2>(x),
        1 => _mm256_slli_epi16::<1>(x),
        0 => x,
        -1 => _mm256_srli_epi16::<1>(x),
        -2 => _mm256_srli_epi16::<2>(x),
        _ => _mm256_srli_epi16::<3>(x),
    }
}

/// The 4 nibble vectors of one block at `q` as (values 4v.., values 16+4v..), with bit 4
/// from the bit vector at `m` (`per_vec` 2) or bits 4-5 from the two crumb vectors at
/// `m` (`per_vec` 4); `per_vec` 0: none (see `tiles`).
#[inline(always)]
unsafe fn unpack(q: *const u8, m: *const u8, per_vec: usize) -> ([__m256i; 4], [__m256i; 4]) {
    let m4 = _mm256_set1_epi8(0x0F);
    let (b4, b45) = (_mm256_set1_epi8(0x10), _mm256_set1_epi8(0x30));
    let mut lo = [_mm256_setzero_si256(); 4];
    let mut hi = [_mm256_setzero_si256(); 4];
    let (cl, ch) = match per_vec {
        2 => (ld(m), _mm256_setzero_si256()),
        4 => (ld(m), ld(m.add(32))),
        _ => (_mm256_setzero_si256(), _mm256_setzero_si256()),
    };
    for v in 0..4 {
        let x = ld(q.add(32 * v));
        let s = v as i32;
        // The high bits to bit 4 (bit v / 4 + v of the bit vector) or to bits 4-5
        // (bits 2v..2v+1 of each crumb vector).
        let (bl, bh) = match per_vec {
            2 => (
                _mm256_and_si256(shift(cl, 4 - s), b4),
                _mm256_and_si256(shift(cl, -s), b4),
            ),
            4 => (
                _mm256_and_si256(shift(cl, 4 - 2 * s), b45),
                _mm256_and_si256(shift(ch, 4 - 2 * s), b45),
            ),
            _ => (_mm256_setzero_si256(), _mm256_setzero_si256()),
        };
        lo[v] = _mm256_or_si256(_mm256_and_si256(x, m4), bl);
        hi[v] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), bh);
    }
    (lo, hi)
}

/// Sum over a 32-value block: lo[v] with activations 4v.., hi[v] with 16+4v...
#[inline(always)]
unsafe fn block_dot<I: Isa>(
    lo: &[__m256i; 4],
    hi: &[__m256i; 4],
    y: *const i32,
) -> (__m256i, __m256i) {
    let mut a = _mm256_setzero_si256();
    let mut b = _mm256_setzero_si256();
    for v in 0..4 {
        a = I::dot(a, lo[v], _mm256_set1_epi32(y.add(v).read_unaligned()));
        b = I::dot(b, hi[v], _mm256_set1_epi32(y.add(4 + v).read_unaligned()));
    }
    (a, b)
}

/// Activation rows of `T` tokens from `t0`.
#[inline(always)]
unsafe fn rows<const T: usize>(a: &Acts, t0: usize) -> [*const i8; T] {
    std::array::from_fn(|k| a.row(t0 + k).as_ptr())
}

/// One row group (8 rows: `nt` tiles along the columns) against tokens t0..t0+T;
/// returns per token the 8 rows' outputs.
#[inline(always)]
pub unsafe fn group<I: Isa, const T: usize>(
    t: QType,
    tiles: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m256; T] {
    match t {
        QType::Q4_0 => small::<I, T, 0>(tiles, a, t0),
        QType::Q4_1 => small::<I, T, 1>(tiles, a, t0),
        QType::Q5_0 => small::<I, T, 2>(tiles, a, t0),
        QType::Q5_1 => small::<I, T, 3>(tiles, a, t0),
        QType::Q8_0 => q8_0::<I, T>(tiles, a, t0),
        QType::Q4K => k4::<I, T, false>(tiles, a, t0),
        QType::Q5K => k4::<I, T, true>(tiles, a, t0),
        QType::Q6K => q6k::<I, T>(tiles, a, t0),
    }
}

/// Q4_0 (K=0), Q4_1 (1), Q5_0 (2), Q5_1 (3).
#[inline(always)]
unsafe fn small<I: Isa, const T: usize, const K: u8>(
    tiles: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m256; T] {
    let tb = [144, 160, 176, 192][K as usize];
    let (q_at, m_at) = [(16, 144), (32, 160), (16, 144), (32, 160)][K as usize];
    let per_vec = if K >= 2 { 2 } else { 0 };
    let ys = rows::<T>(a, t0);
    let blk = a.cols / 32;
    let mut out = [_mm256_setzero_ps(); T];
    let mut corr = [_mm256_setzero_ps(); T];
    for b in 0..tiles.len() / tb {
        let p = tiles.as_ptr().add(b * tb);
        prefetch(p.wrapping_add(2 * tb), tb.div_ceil(64));
        let d = halves(p);
        let off = match K {
            0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
            2 => _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
            _ => halves(p.add(16)),
        };
        let (lo, hi) = unpack(p.add(q_at), p.add(m_at), per_vec);
        for k in 0..T {
            let i = (t0 + k) * blk + b;
            let (s0, s1) = block_dot::<I>(&lo, &hi, ys[k].add(32 * b) as *const i32);
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(*a.d.get_unchecked(i)));
            out[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), scale, out[k]);
            corr[k] = _mm256_fmadd_ps(off, _mm256_set1_ps(*a.s.get_unchecked(i)), corr[k]);
        }
    }
    std::array::from_fn(|k| _mm256_add_ps(out[k], corr[k]))
}

/// Q8_0: 8 byte vectors per tile; VNNI biases them to unsigned, AVX2 moves the sign.
#[inline(always)]
unsafe fn q8_0<I: Isa, const T: usize>(tiles: &[u8], a: &Acts, t0: usize) -> [__m256; T] {
    let ys = rows::<T>(a, t0);
    let blk = a.cols / 32;
    let mut out = [_mm256_setzero_ps(); T];
    let mut corr = [_mm256_setzero_ps(); T];
    let bias = _mm256_set1_epi8(-128);
    for b in 0..tiles.len() / 272 {
        let p = tiles.as_ptr().add(b * 272);
        prefetch(p.wrapping_add(2 * 272), 5);
        let d = halves(p);
        let w: [__m256i; 8] = std::array::from_fn(|g| ld(p.add(16 + 32 * g)));
        let u: [__m256i; 8] = if I::BIASED_Q8 {
            std::array::from_fn(|g| _mm256_xor_si256(w[g], bias))
        } else {
            std::array::from_fn(|g| _mm256_sign_epi8(w[g], w[g]))
        };
        let off = _mm256_mul_ps(d, _mm256_set1_ps(-128.0));
        for k in 0..T {
            let i = (t0 + k) * blk + b;
            let y = ys[k].add(32 * b) as *const i32;
            let mut s = _mm256_setzero_si256();
            for g in 0..8 {
                let yv = _mm256_set1_epi32(y.add(g).read_unaligned());
                let yv = if I::BIASED_Q8 {
                    yv
                } else {
                    _mm256_sign_epi8(yv, w[g])
                };
                s = I::dot(s, u[g], yv);
            }
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(*a.d.get_unchecked(i)));
            out[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, out[k]);
            if I::BIASED_Q8 {
                corr[k] = _mm256_fmadd_ps(off, _mm256_set1_ps(*a.s.get_unchecked(i)), corr[k]);
            }
        }
    }
    std::array::from_fn(|k| _mm256_add_ps(out[k], corr[k]))
}

/// Q4_K and Q5_K (`H`: the fifth bit): 8 sub-blocks of 32 with 6-bit scales and mins.
#[inline(always)]
unsafe fn k4<I: Isa, const T: usize, const H: bool>(
    tiles: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m256; T] {
    let tb = if H { 1440 } else { 1184 };
    let ys = rows::<T>(a, t0);
    let blk = a.cols / 32;
    let mut out = [_mm256_setzero_ps(); T];
    for sb in 0..tiles.len() / tb {
        let p = tiles.as_ptr().add(sb * tb);
        let (d, dmin) = (halves(p), halves(p.add(16)));
        for j in 0..8 {
            // Three lines of the next tile per sub-block: all of it by the end.
            prefetch(p.wrapping_add(tb + 192 * j), 3);
            let sc = _mm256_mul_ps(d, bytes_f32(p.add(32 + 8 * j), false));
            let mn = _mm256_mul_ps(dmin, bytes_f32(p.add(96 + 8 * j), false));
            let (lo, hi) = unpack(
                p.add(160 + 128 * j),
                p.add(1184 + 32 * j),
                if H { 2 } else { 0 },
            );
            for k in 0..T {
                let i = (t0 + k) * blk + 8 * sb + j;
                let y = ys[k].add(256 * sb + 32 * j) as *const i32;
                let (s0, s1) = block_dot::<I>(&lo, &hi, y);
                let dy = _mm256_set1_ps(*a.d.get_unchecked(i));
                let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                out[k] = _mm256_fmadd_ps(s, _mm256_mul_ps(sc, dy), out[k]);
                out[k] = _mm256_fnmadd_ps(mn, _mm256_set1_ps(*a.s.get_unchecked(i)), out[k]);
            }
        }
    }
    out
}

/// Q6_K: values 0..63 centred on 32, a signed 8-bit scale per 16 values.
#[inline(always)]
unsafe fn q6k<I: Isa, const T: usize>(tiles: &[u8], a: &Acts, t0: usize) -> [__m256; T] {
    let ys = rows::<T>(a, t0);
    let (blk, b16) = (a.cols / 32, a.cols / 16);
    let mut out = [_mm256_setzero_ps(); T];
    let c32 = _mm256_set1_ps(32.0);
    for sb in 0..tiles.len() / 1680 {
        let p = tiles.as_ptr().add(sb * 1680);
        let d = halves(p);
        for g in 0..8 {
            prefetch(p.wrapping_add(1680 + 256 * g), 4);
            let sl = _mm256_mul_ps(d, bytes_f32(p.add(16 + 16 * g), true));
            let sh = _mm256_mul_ps(d, bytes_f32(p.add(24 + 16 * g), true));
            let (zl, zh) = (_mm256_mul_ps(sl, c32), _mm256_mul_ps(sh, c32));
            let (lo, hi) = unpack(p.add(144 + 128 * g), p.add(1168 + 64 * g), 4);
            for k in 0..T {
                let i = (t0 + k) * blk + 8 * sb + g;
                let i16_ = (t0 + k) * b16 + 16 * sb + 2 * g;
                let y = ys[k].add(256 * sb + 32 * g) as *const i32;
                let (s0, s1) = block_dot::<I>(&lo, &hi, y);
                let dy = _mm256_set1_ps(*a.d.get_unchecked(i));
                out[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(sl, dy), out[k]);
                out[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(sh, dy), out[k]);
                out[k] = _mm256_fnmadd_ps(zl, _mm256_set1_ps(*a.s16.get_unchecked(i16_)), out[k]);
                out[k] =
                    _mm256_fnmadd_ps(zh, _mm256_set1_ps(*a.s16.get_unchecked(i16_ + 1)), out[k]);
            }
        }
    }
    out
}

/// Writes 8 rows x 32 values from unpacked bytes `buf` (vector v at 32v: lanes of 4
/// values 4v.. per row; "high" vectors at 128 + 32v: values 16 + 4v..) as
/// `(q - zero) * scale (+ offset)`, scales per row (lo: values 0..15, hi: 16..31).
#[inline(always)]
unsafe fn emit(
    buf: &[u8; 256],
    signed: bool,
    zero: i32,
    scale: (__m256, __m256),
    offset: Option<__m256>,
    out: *mut f32,
    stride: usize,
) {
    for p in 0..4i32 {
        let idx = _mm256_setr_epi32(
            2 * p,
            2 * p,
            2 * p,
            2 * p,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
            2 * p + 1,
        );
        let (sl, sh) = (
            _mm256_permutevar8x32_ps(scale.0, idx),
            _mm256_permutevar8x32_ps(scale.1, idx),
        );
        let o2 = offset.map(|o| _mm256_permutevar8x32_ps(o, idx));
        let r0 = out.add(2 * p as usize * stride);
        let r1 = r0.add(stride);
        for v in 0..4 {
            for (half, s2, col) in [(0, sl, 4 * v), (128, sh, 16 + 4 * v)] {
                let b = _mm_loadl_epi64(
                    buf.as_ptr().add(half + 32 * v + 8 * p as usize) as *const __m128i
                );
                let q = if signed {
                    _mm256_cvtepi8_epi32(b)
                } else {
                    _mm256_cvtepu8_epi32(b)
                };
                let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(zero)));
                let mut x = _mm256_mul_ps(f, s2);
                if let Some(o) = o2 {
                    x = _mm256_add_ps(x, o);
                }
                _mm_storeu_ps(r0.add(col), _mm256_castps256_ps128(x));
                _mm_storeu_ps(r1.add(col), _mm256_extractf128_ps(x, 1));
            }
        }
    }
}

#[inline(always)]
unsafe fn spill(lo: &[__m256i; 4], hi: &[__m256i; 4]) -> [u8; 256] {
    let mut buf = [0u8; 256];
    for v in 0..4 {
        _mm256_storeu_si256(buf.as_mut_ptr().add(32 * v) as *mut __m256i, lo[v]);
        _mm256_storeu_si256(buf.as_mut_ptr().add(128 + 32 * v) as *mut __m256i, hi[v]);
    }
    buf
}

/// Dequantizes a full tile (8 rows x one block) into `out` (row r at r * stride),
/// with the same f32 operations as ggml's dequantization (so bit for bit).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_tile(t: QType, tile: &[u8], out: &mut [f32], stride: usize) {
    let p = tile.as_ptr();
    let o = out.as_mut_ptr();
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => {
            let (q_at, m_at, per_vec, zero) = match t {
                QType::Q4_0 => (16, 144, 0, 8),
                QType::Q5_0 => (16, 144, 2, 16),
                QType::Q4_1 => (32, 160, 0, 0),
                _ => (32, 160, 2, 0),
            };
            let (lo, hi) = unpack(p.add(q_at), p.add(m_at), per_vec);
            let d = halves(p);
            let m = matches!(t, QType::Q4_1 | QType::Q5_1).then(|| halves(p.add(16)));
            emit(&spill(&lo, &hi), false, zero, (d, d), m, o, stride);
        }
        QType::Q8_0 => {
            let d = halves(p);
            let mut buf = [0u8; 256];
            // Vector g holds values 4g..4g+3 per row: g < 4 are "low", g >= 4 "high".
            for g in 0..8 {
                let at = if g < 4 { 32 * g } else { 128 + 32 * (g - 4) };
                buf[at..at + 32].copy_from_slice(&tile[16 + 32 * g..48 + 32 * g]);
            }
            emit(&buf, true, 0, (d, d), None, o, stride);
        }
        QType::Q4K | QType::Q5K => {
            let (d, dmin) = (halves(p), halves(p.add(16)));
            for j in 0..8 {
                let (lo, hi) = unpack(
                    p.add(160 + 128 * j),
                    p.add(1184 + 32 * j),
                    if t == QType::Q5K { 2 } else { 0 },
                );
                let d1 = _mm256_mul_ps(d, bytes_f32(p.add(32 + 8 * j), false));
                let m1 = _mm256_mul_ps(dmin, bytes_f32(p.add(96 + 8 * j), false));
                let neg = _mm256_sub_ps(_mm256_setzero_ps(), m1);
                emit(
                    &spill(&lo, &hi),
                    false,
                    0,
                    (d1, d1),
                    Some(neg),
                    o.add(32 * j),
                    stride,
                );
            }
        }
        QType::Q6K => {
            let d = halves(p);
            for g in 0..8 {
                let (lo, hi) = unpack(p.add(144 + 128 * g), p.add(1168 + 64 * g), 4);
                let sl = _mm256_mul_ps(d, bytes_f32(p.add(16 + 16 * g), true));
                let sh = _mm256_mul_ps(d, bytes_f32(p.add(24 + 16 * g), true));
                emit(
                    &spill(&lo, &hi),
                    false,
                    32,
                    (sl, sh),
                    None,
                    o.add(32 * g),
                    stride,
                );
            }
        }
    }
}
