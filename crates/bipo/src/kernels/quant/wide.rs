//! AVX-512 VNNI kernels on 512-bit vectors: two row groups at once (16 rows: group g's
//! tile in the low 256 bits, group g + 1's in the high), against `T` tokens. Each lane
//! runs exactly the operations of its lane in [`super::x86`]'s VNNI kernels, in the
//! same order, so the results are bit for bit theirs (a test); with half the
//! instructions per weight row: one activation broadcast and one `vpdpbusd` serve 16
//! rows instead of 8.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::acts::Acts;
use super::blocks::QType;

/// Two 32-byte loads (group g at `p`, g + 1 at `q`) as one vector.
#[inline(always)]
unsafe fn ld2(p: *const u8, q: *const u8) -> __m512i {
    let lo = _mm256_loadu_si256(p as *const __m256i);
    let hi = _mm256_loadu_si256(q as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// 8 f16 values at `p` and 8 at `q` -> 16 f32 lanes.
#[inline(always)]
unsafe fn halves2(p: *const u8, q: *const u8) -> __m512 {
    let lo = _mm_loadu_si128(p as *const __m128i);
    let hi = _mm_loadu_si128(q as *const __m128i);
    _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi))
}

/// 8 bytes at `p` and 8 at `q` (u8 or i8) -> 16 f32 lanes.
#[inline(always)]
unsafe fn bytes2(p: *const u8, q: *const u8, signed: bool) -> __m512 {
    let b = _mm_unpacklo_epi64(
        _mm_loadl_epi64(p as *const __m128i),
        _mm_loadl_epi64(q as *const __m128i),
    );
    let w = if signed {
        _mm512_cvtepi8_epi32(b)
    } else {
        _mm512_cvtepu8_epi32(b)
    };
    _mm512_cvtepi32_ps(w)
}

#[inline(always)]
unsafe fn prefetch2(p: *const u8, q: *const u8, lines: usize) {
    for l in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * l) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(64 * l) as *const i8);
    }
}

/// `x` shifted left by `s` bits (right by -s) in 16-bit lanes (see `x86::shift`).
#[inline(always)]
unsafe fn shift2(x: __m512i, s: i32) -> __m512i {
    match s {
        4 => _mm512_slli_epi16::<4>(x),
        3 => _mm512_slli_epi16::<3>(x),
        2 => _mm512_slli_epi16::<2>(x),
        1 => _mm512_slli_epi16::<1>(x),
        0 => x,
        -1 => _mm512_srli_epi16::<1>(x),
        -2 => _mm512_srli_epi16::<2>(x),
        _ => _mm512_srli_epi16::<3>(x),
    }
}

/// `(a & b) | c` in one instruction.
#[inline(always)]
unsafe fn and_or(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0xEA>(a, b, c)
}

/// The 4 nibble vectors of one block of both tiles (see `x86::unpack`).
#[inline(always)]
unsafe fn unpack2(
    p: *const u8,
    q: *const u8,
    qs: usize,
    ms: usize,
    per_vec: usize,
) -> ([__m512i; 4], [__m512i; 4]) {
    let m4 = _mm512_set1_epi8(0x0F);
    let (b4, b45) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(0x30));
    let mut lo = [_mm512_setzero_si512(); 4];
    let mut hi = [_mm512_setzero_si512(); 4];
    let (pm, qm) = (p.add(ms), q.add(ms));
    let (cl, ch) = match per_vec {
        2 => (ld2(pm, qm), _mm512_setzero_si512()),
        4 => (ld2(pm, qm), ld2(pm.add(32), qm.add(32))),
        _ => (_mm512_setzero_si512(), _mm512_setzero_si512()),
    };
    for v in 0..4 {
        let x = ld2(p.add(qs + 32 * v), q.add(qs + 32 * v));
        lo[v] = _mm512_and_si512(x, m4);
        hi[v] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m4);
        let s = v as i32;
        if per_vec == 2 {
            lo[v] = and_or(shift2(cl, 4 - s), b4, lo[v]);
            hi[v] = and_or(shift2(cl, -s), b4, hi[v]);
        } else if per_vec == 4 {
            lo[v] = and_or(shift2(cl, 4 - 2 * s), b45, lo[v]);
            hi[v] = and_or(shift2(ch, 4 - 2 * s), b45, hi[v]);
        }
    }
    (lo, hi)
}

/// Sums over a 32-value block: lo[v] with activations 4v.., hi[v] with 16+4v.. (see
/// `x86::block_dot`).
#[inline(always)]
unsafe fn block_dot2(lo: &[__m512i; 4], hi: &[__m512i; 4], y: *const i32) -> (__m512i, __m512i) {
    let mut a = _mm512_setzero_si512();
    let mut b = _mm512_setzero_si512();
    for v in 0..4 {
        a = _mm512_dpbusd_epi32(a, lo[v], _mm512_set1_epi32(y.add(v).read_unaligned()));
        b = _mm512_dpbusd_epi32(b, hi[v], _mm512_set1_epi32(y.add(4 + v).read_unaligned()));
    }
    (a, b)
}

/// Q4_K and Q5_K (`H`), two row groups (`x86::k4` for one).
#[inline(always)]
pub unsafe fn k4<const T: usize, const H: bool>(
    t0s: &[u8],
    t1s: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m512; T] {
    let tb = if H { 1440 } else { 1184 };
    let ys: [*const i8; T] = std::array::from_fn(|k| a.row(t0 + k).as_ptr());
    let blk = a.cols / 32;
    let mut out = [_mm512_setzero_ps(); T];
    for sb in 0..t0s.len() / tb {
        let (p, q) = (t0s.as_ptr().add(sb * tb), t1s.as_ptr().add(sb * tb));
        let (d, dmin) = (halves2(p, q), halves2(p.add(16), q.add(16)));
        for j in 0..8 {
            prefetch2(
                p.wrapping_add(tb + 192 * j),
                q.wrapping_add(tb + 192 * j),
                3,
            );
            let sc = _mm512_mul_ps(d, bytes2(p.add(32 + 8 * j), q.add(32 + 8 * j), false));
            let mn = _mm512_mul_ps(dmin, bytes2(p.add(96 + 8 * j), q.add(96 + 8 * j), false));
            let (lo, hi) = unpack2(p, q, 160 + 128 * j, 1184 + 32 * j, if H { 2 } else { 0 });
            for k in 0..T {
                let i = (t0 + k) * blk + 8 * sb + j;
                let y = ys[k].add(256 * sb + 32 * j) as *const i32;
                let (s0, s1) = block_dot2(&lo, &hi, y);
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let dy = _mm512_set1_ps(*a.d.get_unchecked(i));
                out[k] = _mm512_fmadd_ps(s, _mm512_mul_ps(sc, dy), out[k]);
                out[k] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(*a.s.get_unchecked(i)), out[k]);
            }
        }
    }
    out
}

/// Q6_K, two row groups (`x86::q6k` for one).
#[inline(always)]
pub unsafe fn q6k<const T: usize>(t0s: &[u8], t1s: &[u8], a: &Acts, t0: usize) -> [__m512; T] {
    let ys: [*const i8; T] = std::array::from_fn(|k| a.row(t0 + k).as_ptr());
    let (blk, b16) = (a.cols / 32, a.cols / 16);
    let mut out = [_mm512_setzero_ps(); T];
    let c32 = _mm512_set1_ps(32.0);
    for sb in 0..t0s.len() / 1680 {
        let (p, q) = (t0s.as_ptr().add(sb * 1680), t1s.as_ptr().add(sb * 1680));
        let d = halves2(p, q);
        for g in 0..8 {
            prefetch2(
                p.wrapping_add(1680 + 256 * g),
                q.wrapping_add(1680 + 256 * g),
                4,
            );
            let sl = _mm512_mul_ps(d, bytes2(p.add(16 + 16 * g), q.add(16 + 16 * g), true));
            let sh = _mm512_mul_ps(d, bytes2(p.add(24 + 16 * g), q.add(24 + 16 * g), true));
            let (zl, zh) = (_mm512_mul_ps(sl, c32), _mm512_mul_ps(sh, c32));
            let (lo, hi) = unpack2(p, q, 144 + 128 * g, 1168 + 64 * g, 4);
            for k in 0..T {
                let i = (t0 + k) * blk + 8 * sb + g;
                let i16_ = (t0 + k) * b16 + 16 * sb + 2 * g;
                let y = ys[k].add(256 * sb + 32 * g) as *const i32;
                let (s0, s1) = block_dot2(&lo, &hi, y);
                let dy = _mm512_set1_ps(*a.d.get_unchecked(i));
                out[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(sl, dy), out[k]);
                out[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(sh, dy), out[k]);
                out[k] = _mm512_fnmadd_ps(zl, _mm512_set1_ps(*a.s16.get_unchecked(i16_)), out[k]);
                out[k] =
                    _mm512_fnmadd_ps(zh, _mm512_set1_ps(*a.s16.get_unchecked(i16_ + 1)), out[k]);
            }
        }
    }
    out
}

/// Q4_0 (K=0), Q4_1 (1), Q5_0 (2), Q5_1 (3), two row groups (`x86::small` for one).
#[inline(always)]
pub unsafe fn small<const T: usize, const K: u8>(
    t0s: &[u8],
    t1s: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m512; T] {
    let tb = [144, 160, 176, 192][K as usize];
    let (q_at, m_at) = [(16, 144), (32, 160), (16, 144), (32, 160)][K as usize];
    let per_vec = if K >= 2 { 2 } else { 0 };
    let ys: [*const i8; T] = std::array::from_fn(|k| a.row(t0 + k).as_ptr());
    let blk = a.cols / 32;
    let mut out = [_mm512_setzero_ps(); T];
    let mut corr = [_mm512_setzero_ps(); T];
    for b in 0..t0s.len() / tb {
        let (p, q) = (t0s.as_ptr().add(b * tb), t1s.as_ptr().add(b * tb));
        prefetch2(
            p.wrapping_add(2 * tb),
            q.wrapping_add(2 * tb),
            tb.div_ceil(64),
        );
        let d = halves2(p, q);
        let off = match K {
            0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            2 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
            _ => halves2(p.add(16), q.add(16)),
        };
        let (lo, hi) = unpack2(p, q, q_at, m_at, per_vec);
        for k in 0..T {
            let i = (t0 + k) * blk + b;
            let (s0, s1) = block_dot2(&lo, &hi, ys[k].add(32 * b) as *const i32);
            let s = _mm512_add_epi32(s0, s1);
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(*a.d.get_unchecked(i)));
            out[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, out[k]);
            corr[k] = _mm512_fmadd_ps(off, _mm512_set1_ps(*a.s.get_unchecked(i)), corr[k]);
        }
    }
    std::array::from_fn(|k| _mm512_add_ps(out[k], corr[k]))
}

/// Q8_0, two row groups: weights biased to unsigned, the bias removed through the
/// activations' block sums (`x86::q8_0` for one).
#[inline(always)]
pub unsafe fn q8_0<const T: usize>(t0s: &[u8], t1s: &[u8], a: &Acts, t0: usize) -> [__m512; T] {
    let ys: [*const i8; T] = std::array::from_fn(|k| a.row(t0 + k).as_ptr());
    let blk = a.cols / 32;
    let mut out = [_mm512_setzero_ps(); T];
    let mut corr = [_mm512_setzero_ps(); T];
    let bias = _mm512_set1_epi8(-128);
    for b in 0..t0s.len() / 272 {
        let (p, q) = (t0s.as_ptr().add(b * 272), t1s.as_ptr().add(b * 272));
        prefetch2(p.wrapping_add(2 * 272), q.wrapping_add(2 * 272), 5);
        let d = halves2(p, q);
        let u: [__m512i; 8] = std::array::from_fn(|g| {
            _mm512_xor_si512(ld2(p.add(16 + 32 * g), q.add(16 + 32 * g)), bias)
        });
        let off = _mm512_mul_ps(d, _mm512_set1_ps(-128.0));
        for k in 0..T {
            let i = (t0 + k) * blk + b;
            let y = ys[k].add(32 * b) as *const i32;
            let mut s = _mm512_setzero_si512();
            for (g, ug) in u.iter().enumerate() {
                s = _mm512_dpbusd_epi32(s, *ug, _mm512_set1_epi32(y.add(g).read_unaligned()));
            }
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(*a.d.get_unchecked(i)));
            out[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, out[k]);
            corr[k] = _mm512_fmadd_ps(off, _mm512_set1_ps(*a.s.get_unchecked(i)), corr[k]);
        }
    }
    std::array::from_fn(|k| _mm512_add_ps(out[k], corr[k]))
}

/// Two row groups' tiles (`t0s`: g, `t1s`: g + 1) against tokens t0..t0+T; per token
/// 16 outputs (rows of g, then of g + 1).
#[inline(always)]
pub unsafe fn group2<const T: usize>(
    t: QType,
    t0s: &[u8],
    t1s: &[u8],
    a: &Acts,
    t0: usize,
) -> [__m512; T] {
    match t {
        QType::Q4_0 => small::<T, 0>(t0s, t1s, a, t0),
        QType::Q4_1 => small::<T, 1>(t0s, t1s, a, t0),
        QType::Q5_0 => small::<T, 2>(t0s, t1s, a, t0),
        QType::Q5_1 => small::<T, 3>(t0s, t1s, a, t0),
        QType::Q8_0 => q8_0::<T>(t0s, t1s, a, t0),
        QType::Q4K => k4::<T, false>(t0s, t1s, a, t0),
        QType::Q5K => k4::<T, true>(t0s, t1s, a, t0),
        QType::Q6K => q6k::<T>(t0s, t1s, a, t0),
    }
}
