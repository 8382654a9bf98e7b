//! llama.cpp's block formats, read in place: byte layouts, exact dequantization (the
//! same f32 operations as ggml's reference, so values equal candle's and llama.cpp's
//! bit for bit), and scalar dot products with 8-bit activations that define what the
//! SIMD kernels must compute.
//!
//! | type | values/block | bytes | layout |
//! | --- | --- | --- | --- |
//! | Q4_0 | 32 | 18 | f16 d, 16 B nibbles (lo = j, hi = j+16); x = d (q - 8) |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 16 B nibbles; x = d q + m |
//! | Q5_0 | 32 | 22 | f16 d, u32 high bits, 16 B nibbles; x = d (q - 16) |
//! | Q5_1 | 32 | 24 | f16 d, f16 m, u32 high bits, 16 B nibbles; x = d q + m |
//! | Q8_0 | 32 | 34 | f16 d, 32 i8; x = d q |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 B 6-bit scales/mins, 128 B nibbles |
//! | Q5_K | 256 | 176 | Q4_K plus 32 B high bits |
//! | Q6_K | 256 | 210 | 128 B low nibbles, 64 B 2-bit highs, 16 i8 scales, f16 d |

use half::f16;

use super::acts::Acts;

/// A quantization type bipo's kernels handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How activations are quantized for a weight type (llama.cpp's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Per 32 values, f16 scale (Q8_0).
    Q8_0,
    /// Q8_0 plus the block sum `d * sum(q)` rounded to f16 (Q8_1).
    Q8_1,
    /// Per 256 values, f32 scale, sums per 16 (Q8_K).
    Q8K,
}

impl QType {
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::Q4_0 => Self::Q4_0,
            G::Q4_1 => Self::Q4_1,
            G::Q5_0 => Self::Q5_0,
            G::Q5_1 => Self::Q5_1,
            G::Q8_0 => Self::Q8_0,
            G::Q4K => Self::Q4K,
            G::Q5K => Self::Q5K,
            G::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    pub fn act_kind(self) -> ActKind {
        match self {
            Self::Q4_1 | Self::Q5_1 => ActKind::Q8_1,
            Self::Q4K | Self::Q5K | Self::Q6K => ActKind::Q8K,
            _ => ActKind::Q8_0,
        }
    }
}

#[inline(always)]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The integer values of one block as stored (before scales), in value order, for
/// types with one scale per block: Q4_0 (0..15), Q4_1, Q5_0, Q5_1 (0..31), Q8_0 (i8).
#[inline(always)]
pub fn small_block_ints(t: QType, b: &[u8], out: &mut [i32; 32]) {
    match t {
        QType::Q8_0 => (0..32).for_each(|j| out[j] = b[2 + j] as i8 as i32),
        QType::Q4_0 | QType::Q4_1 => {
            let qs = &b[b.len() - 16..];
            for j in 0..16 {
                out[j] = (qs[j] & 0xF) as i32;
                out[j + 16] = (qs[j] >> 4) as i32;
            }
        }
        QType::Q5_0 | QType::Q5_1 => {
            let h = if t == QType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]);
            let qs = &b[h + 4..h + 20];
            for j in 0..16 {
                out[j] = ((qs[j] & 0xF) | ((((qh >> j) << 4) & 0x10) as u8)) as i32;
                out[j + 16] = ((qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8)) as i32;
            }
        }
        _ => unreachable!("K-quants have sub-block scales"),
    }
}

/// Dequantizes one block into `out` (block_values() floats), as ggml's reference does.
pub fn dequantize_block(t: QType, b: &[u8], out: &mut [f32]) {
    match t {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::Q4_1 | QType::Q5_1 => {
            let mut q = [0i32; 32];
            small_block_ints(t, b, &mut q);
            let d = f16_at(b, 0);
            match t {
                QType::Q4_0 => (0..32).for_each(|j| out[j] = (q[j] - 8) as f32 * d),
                QType::Q5_0 => (0..32).for_each(|j| out[j] = (q[j] - 16) as f32 * d),
                QType::Q8_0 => (0..32).for_each(|j| out[j] = q[j] as f32 * d),
                _ => {
                    let m = f16_at(b, 2);
                    (0..32).for_each(|j| out[j] = q[j] as f32 * d + m)
                }
            }
        }
        QType::Q4K | QType::Q5K => {
            let (d, min) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, ql) = if t == QType::Q5K {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            for c in 0..4 {
                let q = &ql[32 * c..32 * c + 32];
                for half in 0..2 {
                    let (sc, m) = scale_min_k4(2 * c + half, scales);
                    let (d1, m1) = (d * sc as f32, min * m as f32);
                    let o = &mut out[64 * c + 32 * half..64 * c + 32 * half + 32];
                    for l in 0..32 {
                        let mut v = if half == 0 { q[l] & 0xF } else { q[l] >> 4 } as i32;
                        if t == QType::Q5K && qh[l] & (1 << (2 * c + half)) != 0 {
                            v += 16;
                        }
                        o[l] = d1 * v as f32 - m1;
                    }
                }
            }
        }
        QType::Q6K => {
            let mut q = [0i32; 256];
            q6k_ints(b, &mut q);
            let d = f16_at(b, 208);
            for (j, o) in out.iter_mut().take(256).enumerate() {
                let sc = b[192 + j / 16] as i8 as f32;
                *o = d * sc * q[j] as f32;
            }
        }
    }
}

/// The 256 signed values (-32..31) of a Q6_K block in value order.
#[inline(always)]
pub fn q6k_ints(b: &[u8], q: &mut [i32; 256]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        let o = &mut q[128 * n..];
        for l in 0..32 {
            o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
        }
    }
}

/// Unsigned values (0..15 or 0..31) of a Q4_K/Q5_K block in value order.
#[inline(always)]
pub fn k4_ints(t: QType, b: &[u8], q: &mut [i32; 256]) {
    let (qh, ql) = if t == QType::Q5K {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    for c in 0..4 {
        for l in 0..32 {
            let byte = ql[32 * c + l];
            q[64 * c + l] = (byte & 0xF) as i32;
            q[64 * c + 32 + l] = (byte >> 4) as i32;
            if t == QType::Q5K {
                q[64 * c + l] += 16 * ((qh[l] >> (2 * c)) & 1) as i32;
                q[64 * c + 32 + l] += 16 * ((qh[l] >> (2 * c + 1)) & 1) as i32;
            }
        }
    }
}

/// Scalar dot product of weight row `w` (ggml blocks) with activation row `i` of
/// `a` (quantized for this type): the definition the SIMD kernels are checked against.
pub fn dot_scalar(t: QType, w: &[u8], a: &Acts, i: usize) -> f32 {
    let bb = t.block_bytes();
    let aq = a.row(i);
    let mut sum = 0f32;
    for (blk, b) in w.chunks_exact(bb).enumerate() {
        match t {
            QType::Q4K | QType::Q5K | QType::Q6K => {
                let y = &aq[256 * blk..256 * blk + 256];
                let (dy, bs) = (a.super_scale(i, blk), a.bsums(i, blk));
                if t == QType::Q6K {
                    let mut q = [0i32; 256];
                    q6k_ints(b, &mut q);
                    let mut isum = 0i32;
                    for j in 0..16 {
                        let s: i32 = (0..16).map(|l| q[16 * j + l] * y[16 * j + l] as i32).sum();
                        isum += b[192 + j] as i8 as i32 * s;
                    }
                    sum += f16_at(b, 208) * dy * isum as f32;
                } else {
                    let mut q = [0i32; 256];
                    k4_ints(t, b, &mut q);
                    let (mut isum, mut msum) = (0i32, 0i32);
                    for j in 0..8 {
                        let (sc, m) = scale_min_k4(j, &b[4..16]);
                        let s: i32 = (0..32).map(|l| q[32 * j + l] * y[32 * j + l] as i32).sum();
                        isum += sc as i32 * s;
                        msum += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                    }
                    sum += f16_at(b, 0) * dy * isum as f32 - f16_at(b, 2) * dy * msum as f32;
                }
            }
            _ => {
                let mut q = [0i32; 32];
                small_block_ints(t, b, &mut q);
                let y = &aq[32 * blk..32 * blk + 32];
                let isum: i32 = (0..32).map(|j| q[j] * y[j] as i32).sum();
                let (dw, dy) = (f16_at(b, 0), a.block_scale(i, blk));
                sum += match t {
                    QType::Q4_0 => dw * dy * (isum - 8 * a.block_sum(i, blk)) as f32,
                    QType::Q5_0 => dw * dy * (isum - 16 * a.block_sum(i, blk)) as f32,
                    QType::Q8_0 => dw * dy * isum as f32,
                    _ => dw * dy * isum as f32 + f16_at(b, 2) * a.block_s(i, blk),
                };
            }
        }
    }
    sum
}
