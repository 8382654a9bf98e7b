//! Weights repacked at load into tiles of 8 rows x one block, so that one 256-bit
//! integer dot product computes 8 rows at once (lane r = row r): the layout a
//! register-blocked kernel streams. Tiles hold exactly the bits of the ggml blocks
//! (Q4_K/Q5_K unpack their 6-bit scales to bytes: +32 bytes per 2,048 values), so the
//! memory read per token stays that of the GGUF file; [`unpack`] restores the ggml
//! blocks bit for bit.
//!
//! Within a tile, a block's 32 values per row are spread over 4 "nibble vectors" of 32
//! bytes: vector v, byte 4r + k holds row r's value 4v + k in its low nibble and value
//! 16 + 4v + k in its high nibble. The high bits sit in the same byte positions, so
//! that one shift and one mask per nibble vector put them in place: the 5-bit types
//! keep one "bit vector" per block, whose byte 4r + k holds at bit v the fifth bit of
//! row r's value 4v + k and at bit 4 + v that of value 16 + 4v + k (v = 0..3); Q6_K
//! keeps two "crumb vectors" per block, whose byte 4r + k holds at bits 2v..2v+1 bits
//! 4-5 of value 4v + k (the first) or 16 + 4v + k (the second).
//! Q8_0 uses 8 vectors of bytes (vector g, byte 4r + k = value 4g + k).
//!
//! | type | tile bytes | contents |
//! | --- | --- | --- |
//! | Q4_0 | 144 | d[8] f16, 4 nibble vectors |
//! | Q4_1 | 160 | d[8], m[8] f16, 4 nibble vectors |
//! | Q5_0 | 176 | d[8], 4 nibble vectors, a bit vector |
//! | Q5_1 | 192 | d[8], m[8], nibbles, a bit vector |
//! | Q8_0 | 272 | d[8], 8 byte vectors |
//! | Q4_K | 1184 | d[8], dmin[8] f16, scales[8 sub][8 rows], mins[8][8] u8, 8 x 4 nibble vectors |
//! | Q5_K | 1440 | Q4_K's, then 8 bit vectors |
//! | Q6_K | 1680 | d[8] f16, scales[16 sub][8 rows] i8, 8 x 4 nibble vectors, 8 x 2 crumb vectors |

use super::blocks::{k4_ints, q6k_ints, scale_min_k4, small_block_ints, QType};

/// Rows per tile.
pub const ROWS: usize = 8;

/// Bytes of one tile (8 rows x one block).
pub fn tile_bytes(t: QType) -> usize {
    match t {
        QType::Q4_0 => 144,
        QType::Q4_1 => 160,
        QType::Q5_0 => 176,
        QType::Q5_1 => 192,
        QType::Q8_0 => 272,
        QType::Q4K => 1184,
        QType::Q5K => 1440,
        QType::Q6K => 1680,
    }
}

/// Offsets inside a small-block tile: (nibbles, high bits).
fn small_offsets(t: QType) -> (usize, usize) {
    match t {
        QType::Q4_0 | QType::Q5_0 => (16, 144),
        _ => (32, 160),
    }
}

/// Writes 32 values per row of 8 rows: low 4 bits into nibble vectors, then bit 4
/// into the bit vector (`per_vec` 2) or bits 4-5 into the two crumb vectors
/// (`per_vec` 4, Q6_K) at `high`; `per_vec` 0: none. `vals[r][j]`.
fn put_nibbles(vals: &[[i32; 32]; ROWS], qs: &mut [u8], high: &mut [u8], per_vec: usize) {
    high[..16 * per_vec].iter_mut().for_each(|b| *b = 0);
    for v in 0..4 {
        for (r, row) in vals.iter().enumerate() {
            for k in 0..4 {
                let p = 4 * r + k;
                let (lo, hi) = (row[4 * v + k], row[16 + 4 * v + k]);
                qs[32 * v + p] = ((lo & 0xF) | ((hi & 0xF) << 4)) as u8;
                match per_vec {
                    2 => high[p] |= ((((lo >> 4) & 1) << v) | (((hi >> 4) & 1) << (4 + v))) as u8,
                    4 => {
                        high[p] |= (((lo >> 4) & 3) << (2 * v)) as u8;
                        high[32 + p] |= (((hi >> 4) & 3) << (2 * v)) as u8;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Reads back what [`put_nibbles`] wrote.
fn get_nibbles(qs: &[u8], high: &[u8], per_vec: usize, r: usize) -> [i32; 32] {
    let mut out = [0i32; 32];
    for v in 0..4 {
        for k in 0..4 {
            let p = 4 * r + k;
            let byte = qs[32 * v + p];
            let (mut lo, mut hi) = ((byte & 0xF) as i32, (byte >> 4) as i32);
            match per_vec {
                2 => {
                    lo |= ((high[p] as i32 >> v) & 1) << 4;
                    hi |= ((high[p] as i32 >> (4 + v)) & 1) << 4;
                }
                4 => {
                    lo |= ((high[p] as i32 >> (2 * v)) & 3) << 4;
                    hi |= ((high[32 + p] as i32 >> (2 * v)) & 3) << 4;
                }
                _ => {}
            }
            out[4 * v + k] = lo;
            out[16 + 4 * v + k] = hi;
        }
    }
    out
}

/// Packs one tile from the same block of 8 rows (`rows[r]`: that row's ggml block;
/// missing rows are all-zero blocks).
pub fn pack(t: QType, rows: &[&[u8]; ROWS], out: &mut [u8]) {
    let f16_pair = |b: &[u8], i: usize| [b[i], b[i + 1]];
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => {
            let (q_at, m_at) = small_offsets(t);
            let mut vals = [[0i32; 32]; ROWS];
            for r in 0..ROWS {
                out[2 * r..2 * r + 2].copy_from_slice(&f16_pair(rows[r], 0));
                if matches!(t, QType::Q4_1 | QType::Q5_1) {
                    out[16 + 2 * r..18 + 2 * r].copy_from_slice(&f16_pair(rows[r], 2));
                }
                small_block_ints(t, rows[r], &mut vals[r]);
            }
            let per_vec = if matches!(t, QType::Q5_0 | QType::Q5_1) {
                2
            } else {
                0
            };
            let (qs, high) = out.split_at_mut(m_at);
            put_nibbles(&vals, &mut qs[q_at..], high, per_vec);
        }
        QType::Q8_0 => {
            for r in 0..ROWS {
                out[2 * r..2 * r + 2].copy_from_slice(&f16_pair(rows[r], 0));
                for g in 0..8 {
                    for k in 0..4 {
                        out[16 + 32 * g + 4 * r + k] = rows[r][2 + 4 * g + k];
                    }
                }
            }
        }
        QType::Q4K | QType::Q5K => {
            let mut vals = [[0i32; 256]; ROWS];
            for r in 0..ROWS {
                out[2 * r..2 * r + 2].copy_from_slice(&f16_pair(rows[r], 0));
                out[16 + 2 * r..18 + 2 * r].copy_from_slice(&f16_pair(rows[r], 2));
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &rows[r][4..16]);
                    out[32 + 8 * j + r] = sc;
                    out[96 + 8 * j + r] = m;
                }
                k4_ints(t, rows[r], &mut vals[r]);
            }
            let per_vec = if t == QType::Q5K { 2 } else { 0 };
            let (qs, high) = out.split_at_mut(1184);
            for j in 0..8 {
                let sub: [[i32; 32]; ROWS] =
                    std::array::from_fn(|r| std::array::from_fn(|l| vals[r][32 * j + l]));
                let m = if per_vec > 0 {
                    &mut high[32 * j..32 * j + 32]
                } else {
                    &mut [][..]
                };
                put_nibbles(&sub, &mut qs[160 + 128 * j..], m, per_vec);
            }
        }
        QType::Q6K => {
            let mut vals = [[0i32; 256]; ROWS];
            for r in 0..ROWS {
                out[2 * r..2 * r + 2].copy_from_slice(&f16_pair(rows[r], 208));
                for j in 0..16 {
                    out[16 + 8 * j + r] = rows[r][192 + j];
                }
                q6k_ints(rows[r], &mut vals[r]);
                vals[r].iter_mut().for_each(|v| *v += 32);
            }
            let (qs, high) = out.split_at_mut(144 + 1024);
            for g in 0..8 {
                let sub: [[i32; 32]; ROWS] =
                    std::array::from_fn(|r| std::array::from_fn(|l| vals[r][32 * g + l]));
                put_nibbles(
                    &sub,
                    &mut qs[144 + 128 * g..],
                    &mut high[64 * g..64 * g + 64],
                    4,
                );
            }
        }
    }
}

/// The ggml block of row `r` (0..8) of a tile, bit for bit as in the file.
pub fn unpack(t: QType, tile: &[u8], r: usize, out: &mut [u8]) {
    let put16 =
        |o: &mut [u8], i: usize, from: usize| o[i..i + 2].copy_from_slice(&tile[from..from + 2]);
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => {
            let (q_at, m_at) = small_offsets(t);
            let per_vec = if matches!(t, QType::Q5_0 | QType::Q5_1) {
                2
            } else {
                0
            };
            let vals = get_nibbles(&tile[q_at..], &tile[m_at..], per_vec, r);
            put16(out, 0, 2 * r);
            let mut at = 2;
            if matches!(t, QType::Q4_1 | QType::Q5_1) {
                put16(out, 2, 16 + 2 * r);
                at = 4;
            }
            if per_vec > 0 {
                let qh: u32 = (0..32).map(|j| (((vals[j] >> 4) & 1) as u32) << j).sum();
                out[at..at + 4].copy_from_slice(&qh.to_le_bytes());
                at += 4;
            }
            for j in 0..16 {
                out[at + j] = ((vals[j] & 0xF) | ((vals[j + 16] & 0xF) << 4)) as u8;
            }
        }
        QType::Q8_0 => {
            put16(out, 0, 2 * r);
            for g in 0..8 {
                for k in 0..4 {
                    out[2 + 4 * g + k] = tile[16 + 32 * g + 4 * r + k];
                }
            }
        }
        QType::Q4K | QType::Q5K => {
            put16(out, 0, 2 * r);
            put16(out, 2, 16 + 2 * r);
            let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8)
                .map(|j| (tile[32 + 8 * j + r], tile[96 + 8 * j + r]))
                .unzip();
            // ggml's 12-byte packing of eight 6-bit scales and mins.
            let s = &mut out[4..16];
            for j in 0..4 {
                s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
                s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
                s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
            }
            let per_vec = if t == QType::Q5K { 2 } else { 0 };
            let mut vals = [0i32; 256];
            for j in 0..8 {
                let m = if per_vec > 0 {
                    &tile[1184 + 32 * j..]
                } else {
                    &[][..]
                };
                let sub = get_nibbles(&tile[160 + 128 * j..], m, per_vec, r);
                vals[32 * j..32 * j + 32].copy_from_slice(&sub);
            }
            let ql_at = if t == QType::Q5K { 48 } else { 16 };
            if t == QType::Q5K {
                out[16..48].iter_mut().for_each(|b| *b = 0);
            }
            for c in 0..4 {
                for l in 0..32 {
                    let (a, b) = (vals[64 * c + l], vals[64 * c + 32 + l]);
                    out[ql_at + 32 * c + l] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
                    if t == QType::Q5K {
                        out[16 + l] |=
                            ((((a >> 4) & 1) << (2 * c)) | (((b >> 4) & 1) << (2 * c + 1))) as u8;
                    }
                }
            }
        }
        QType::Q6K => {
            put16(out, 208, 2 * r);
            for j in 0..16 {
                out[192 + j] = tile[16 + 8 * j + r];
            }
            let mut vals = [0i32; 256];
            for g in 0..8 {
                let sub = get_nibbles(&tile[144 + 128 * g..], &tile[1168 + 64 * g..], 4, r);
                vals[32 * g..32 * g + 32].copy_from_slice(&sub);
            }
            let (ql, qh) = out[..192].split_at_mut(128);
            qh.iter_mut().for_each(|b| *b = 0);
            for n in 0..2 {
                let v = &vals[128 * n..];
                for l in 0..32 {
                    let q = [v[l], v[l + 32], v[l + 64], v[l + 96]];
                    ql[64 * n + l] = ((q[0] & 0xF) | ((q[2] & 0xF) << 4)) as u8;
                    ql[64 * n + l + 32] = ((q[1] & 0xF) | ((q[3] & 0xF) << 4)) as u8;
                    qh[32 * n + l] = ((q[0] >> 4)
                        | ((q[1] >> 4) << 2)
                        | ((q[2] >> 4) << 4)
                        | ((q[3] >> 4) << 6)) as u8;
                }
            }
        }
    }
}

/// Dequantizes one tile into the first `rows` rows of `out` (row r at r * stride),
/// values exactly as ggml's dequantization computes them.
pub fn dequantize(t: QType, tile: &[u8], rows: usize, out: &mut [f32], stride: usize) {
    let h = |i: usize| half::f16::from_le_bytes([tile[i], tile[i + 1]]).to_f32();
    // Integer values of one 32-value block of row r from nibble vectors + high bits.
    let ints = |q_at: usize, m_at: usize, per_vec: usize, r: usize| -> [i32; 32] {
        let high = if per_vec > 0 { &tile[m_at..] } else { &[][..] };
        get_nibbles(&tile[q_at..], high, per_vec, r)
    };
    match t {
        QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => {
            let (q_at, m_at) = small_offsets(t);
            let per_vec = if matches!(t, QType::Q5_0 | QType::Q5_1) {
                2
            } else {
                0
            };
            for r in 0..rows {
                let q = ints(q_at, m_at, per_vec, r);
                let d = h(2 * r);
                let o = &mut out[r * stride..r * stride + 32];
                match t {
                    QType::Q4_0 => o
                        .iter_mut()
                        .zip(q)
                        .for_each(|(o, q)| *o = (q - 8) as f32 * d),
                    QType::Q5_0 => o
                        .iter_mut()
                        .zip(q)
                        .for_each(|(o, q)| *o = (q - 16) as f32 * d),
                    _ => {
                        let m = h(16 + 2 * r);
                        o.iter_mut().zip(q).for_each(|(o, q)| *o = q as f32 * d + m)
                    }
                }
            }
        }
        QType::Q8_0 => {
            for r in 0..rows {
                let d = h(2 * r);
                for g in 0..8 {
                    for k in 0..4 {
                        out[r * stride + 4 * g + k] =
                            tile[16 + 32 * g + 4 * r + k] as i8 as f32 * d;
                    }
                }
            }
        }
        QType::Q4K | QType::Q5K => {
            let per_vec = if t == QType::Q5K { 2 } else { 0 };
            for r in 0..rows {
                let (d, dmin) = (h(2 * r), h(16 + 2 * r));
                for j in 0..8 {
                    let q = ints(160 + 128 * j, 1184 + 32 * j, per_vec, r);
                    let d1 = d * tile[32 + 8 * j + r] as f32;
                    let m1 = dmin * tile[96 + 8 * j + r] as f32;
                    let o = &mut out[r * stride + 32 * j..r * stride + 32 * j + 32];
                    o.iter_mut()
                        .zip(q)
                        .for_each(|(o, q)| *o = d1 * q as f32 - m1);
                }
            }
        }
        QType::Q6K => {
            for r in 0..rows {
                let d = h(2 * r);
                for g in 0..8 {
                    let q = ints(144 + 128 * g, 1168 + 64 * g, 4, r);
                    let (sl, sh) = (
                        tile[16 + 16 * g + r] as i8 as f32,
                        tile[24 + 16 * g + r] as i8 as f32,
                    );
                    let o = &mut out[r * stride + 32 * g..r * stride + 32 * g + 32];
                    for (l, (o, q)) in o.iter_mut().zip(q).enumerate() {
                        let sc = if l < 16 { sl } else { sh };
                        *o = d * sc * (q - 32) as f32;
                    }
                }
            }
        }
    }
}
