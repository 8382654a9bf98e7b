//! Quantized matrix multiplication for llama.cpp's Q4_0, Q4_1 and Q8_0 blocks, computed
//! as llama.cpp computes it on CPU: activations are quantized to 8 bits per 32-value
//! block (Q8_0, or Q8_1 with the block sum for Q4_1), integer dot products per block,
//! then scaled in f32.
//!
//! candle's own kernels for Q4_1 are scalar (about 3x slower than this at decode) and
//! round the Q8_1 block sum in f16 arithmetic; these follow ggml's reference rounding.
//! Other quantization types go through candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

/// Values per quantization block (all three types).
pub const BLOCK: usize = 32;
/// Output rows per parallel task: large enough to amortise scheduling.
const ROWS_PER_TASK: usize = 32;
/// Largest magnitude of an 8-bit quantized value.
const Q8_MAX: f32 = 127.0;

/// Quantization formats handled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl BlockKind {
    pub fn from_ggml(d: GgmlDType) -> Option<Self> {
        match d {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block in the file.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 2 + BLOCK / 2,
            Self::Q4_1 => 4 + BLOCK / 2,
            Self::Q8_0 => 2 + BLOCK,
        }
    }
}

/// A quantized (rows, cols) weight, repacked at load from llama.cpp's interleaved
/// blocks into separate arrays (quants, f32 scales, f32 offsets) so the hot loop does no
/// f16 conversion. Values are exactly those of the file: `q * d + m`.
#[derive(Debug)]
pub struct QBlocks {
    kind: BlockKind,
    rows: usize,
    cols: usize,
    /// Q4: two 4-bit values per byte (low nibble = value j, high = value j+16 of the
    /// block), 16 bytes per block. Q8_0: one i8 per value, 32 bytes per block.
    qs: Vec<u8>,
    /// Per-block scale.
    d: Vec<f32>,
    /// Per-block offset (Q4_1), empty otherwise.
    m: Vec<f32>,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl QBlocks {
    /// Takes a candle `QTensor` of a supported type; None for other types.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let Some(kind) = BlockKind::from_ggml(t.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = t.shape().dims2()?;
        if cols % BLOCK != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let nblocks = rows * cols / BLOCK;
        let quant_bytes = Self::quant_bytes(kind);
        let mut qs = Vec::with_capacity(nblocks * quant_bytes);
        let mut d = Vec::with_capacity(nblocks);
        let mut m = Vec::new();
        for blk in data.chunks_exact(kind.block_bytes()) {
            d.push(f16_at(blk, 0));
            let head = match kind {
                BlockKind::Q4_1 => {
                    m.push(f16_at(blk, 2));
                    4
                }
                _ => 2,
            };
            qs.extend_from_slice(&blk[head..]);
        }
        Ok(Some(Self {
            kind,
            rows,
            cols,
            qs,
            d,
            m,
        }))
    }

    fn quant_bytes(kind: BlockKind) -> usize {
        match kind {
            BlockKind::Q8_0 => BLOCK,
            _ => BLOCK / 2,
        }
    }

    pub fn kind(&self) -> BlockKind {
        self.kind
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Rows `start..start + n` as their own matrix.
    pub fn rows(&self, start: usize, n: usize) -> Self {
        let nb = self.cols / BLOCK;
        let qb = Self::quant_bytes(self.kind);
        let blocks = start * nb..(start + n) * nb;
        Self {
            kind: self.kind,
            rows: n,
            cols: self.cols,
            qs: self.qs[blocks.start * qb..blocks.end * qb].to_vec(),
            d: self.d[blocks.clone()].to_vec(),
            m: if self.m.is_empty() {
                Vec::new()
            } else {
                self.m[blocks].to_vec()
            },
        }
    }

    /// Row `r` as f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let qb = Self::quant_bytes(self.kind);
        for b in 0..nb {
            let g = r * nb + b;
            let qs = &self.qs[g * qb..(g + 1) * qb];
            let o = &mut out[b * BLOCK..(b + 1) * BLOCK];
            let d = self.d[g];
            match self.kind {
                BlockKind::Q8_0 => o
                    .iter_mut()
                    .zip(qs)
                    .for_each(|(o, &q)| *o = q as i8 as f32 * d),
                BlockKind::Q4_0 | BlockKind::Q4_1 => {
                    let (off, m) = match self.kind {
                        BlockKind::Q4_0 => (8.0, 0.0),
                        _ => (0.0, self.m[g]),
                    };
                    for j in 0..BLOCK / 2 {
                        o[j] = ((qs[j] & 0x0F) as f32 - off) * d + m;
                        o[j + BLOCK / 2] = ((qs[j] >> 4) as f32 - off) * d + m;
                    }
                }
            }
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.dequantize_row(r, row));
        out
    }

    /// y = x W^T for x: (m, cols) row-major, y: (m, rows).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = QuantActs::new(x, self.cols, self.kind == BlockKind::Q4_1);
        let n = self.rows;
        let mut yt = vec![0f32; n * m]; // (rows, m): each task owns whole rows
        yt.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(c, out)| {
                rows_dot(self, &acts, c * ROWS_PER_TASK, out, m);
            });
        if m == 1 {
            return yt;
        }
        let mut y = vec![0f32; m * n];
        for (r, vals) in yt.chunks_exact(m).enumerate() {
            for (i, v) in vals.iter().enumerate() {
                y[i * n + r] = *v;
            }
        }
        y
    }
}

/// Activations quantized to 8 bits per block (ggml's `quantize_row_q8_0/q8_1`).
struct QuantActs {
    q: Vec<i8>,
    d: Vec<f32>,
    /// Q8_1 block sums `sum(q) * d`, rounded through f16 as ggml stores them.
    s: Vec<f32>,
    /// Integer block sums `sum(q)` (for Q4_0's offset of -8).
    isum: Vec<i32>,
    cols: usize,
}

impl QuantActs {
    fn new(x: &[f32], cols: usize, with_sums: bool) -> Self {
        let nb = x.len() / BLOCK;
        let mut a = Self {
            q: vec![0; x.len()],
            d: vec![0.0; nb],
            s: vec![0.0; nb],
            isum: vec![0; nb],
            cols,
        };
        for (b, (xs, qs)) in x
            .chunks_exact(BLOCK)
            .zip(a.q.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let amax = xs.iter().fold(0f32, |acc, v| acc.max(v.abs()));
            let d = amax / Q8_MAX;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            a.d[b] = f16::from_f32(d).to_f32();
            a.isum[b] = sum;
            if with_sums {
                a.s[b] = f16::from_f32(sum as f32 * d).to_f32();
            }
        }
        a
    }
}

/// sum_j w_j * y_j for one 4-bit block (w in 0..16) and one 8-bit block.
#[inline(always)]
fn dot_q4(qs: &[u8; BLOCK / 2], y: &[i8; BLOCK]) -> i32 {
    let (lo, hi) = y.split_at(BLOCK / 2);
    let mut acc = 0i32;
    for j in 0..BLOCK / 2 {
        acc += ((qs[j] & 0x0F) as i16 * lo[j] as i16) as i32;
        acc += ((qs[j] >> 4) as i16 * hi[j] as i16) as i32;
    }
    acc
}

#[inline(always)]
fn dot_q8(w: &[u8; BLOCK], y: &[i8; BLOCK]) -> i32 {
    w.iter()
        .zip(y.iter())
        .map(|(&a, &b)| (a as i8 as i16 * b as i16) as i32)
        .sum()
}

/// Dot products of weight rows r0.. with every activation row; out is (rows, m).
#[inline(always)]
fn rows_dot_body(w: &QBlocks, a: &QuantActs, r0: usize, out: &mut [f32], m: usize) {
    let nb = w.cols / BLOCK;
    let qb = QBlocks::quant_bytes(w.kind);
    for (j, row_out) in out.chunks_exact_mut(m).enumerate() {
        let r = r0 + j;
        let wq = &w.qs[r * nb * qb..(r + 1) * nb * qb];
        let wd = &w.d[r * nb..(r + 1) * nb];
        for (i, o) in row_out.iter_mut().enumerate() {
            let aq = &a.q[i * a.cols..(i + 1) * a.cols];
            let ad = &a.d[i * nb..(i + 1) * nb];
            let mut sum = 0f32;
            match w.kind {
                BlockKind::Q8_0 => {
                    for ((wq, yq), (wd, yd)) in wq
                        .chunks_exact(BLOCK)
                        .zip(aq.chunks_exact(BLOCK))
                        .zip(wd.iter().zip(ad))
                    {
                        let dot =
                            dot_q8(wq.try_into().expect("block"), yq.try_into().expect("block"));
                        sum += dot as f32 * wd * yd;
                    }
                }
                BlockKind::Q4_0 => {
                    let isum = &a.isum[i * nb..(i + 1) * nb];
                    for (((wq, yq), (wd, yd)), ys) in wq
                        .chunks_exact(BLOCK / 2)
                        .zip(aq.chunks_exact(BLOCK))
                        .zip(wd.iter().zip(ad))
                        .zip(isum)
                    {
                        // (w - 8) . y = w . y - 8 sum(y)
                        let dot =
                            dot_q4(wq.try_into().expect("block"), yq.try_into().expect("block"))
                                - 8 * ys;
                        sum += dot as f32 * wd * yd;
                    }
                }
                BlockKind::Q4_1 => {
                    let wm = &w.m[r * nb..(r + 1) * nb];
                    let s = &a.s[i * nb..(i + 1) * nb];
                    for (((wq, yq), (wd, yd)), (wm, ys)) in wq
                        .chunks_exact(BLOCK / 2)
                        .zip(aq.chunks_exact(BLOCK))
                        .zip(wd.iter().zip(ad))
                        .zip(wm.iter().zip(s))
                    {
                        let dot =
                            dot_q4(wq.try_into().expect("block"), yq.try_into().expect("block"));
                        sum += dot as f32 * wd * yd + wm * ys;
                    }
                }
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_dot_avx2(w: &QBlocks, a: &QuantActs, r0: usize, out: &mut [f32], m: usize) {
    rows_dot_body(w, a, r0, out, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn rows_dot_avx512(w: &QBlocks, a: &QuantActs, r0: usize, out: &mut [f32], m: usize) {
    rows_dot_body(w, a, r0, out, m)
}

/// Whether the AVX-512 VNNI build of the kernel can run here (checked once; setting
/// `BIPO_NO_AVX512` forces the AVX2 build, for comparisons).
#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::env::var_os("BIPO_NO_AVX512").is_none()
    })
}

fn rows_dot(w: &QBlocks, a: &QuantActs, r0: usize, out: &mut [f32], m: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_vnni() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { rows_dot_avx512(w, a, r0, out, m) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { rows_dot_avx2(w, a, r0, out, m) };
    }
    rows_dot_body(w, a, r0, out, m)
}

/// candle op: xs (..., cols) f32 -> (..., rows). No backward (inference path only).
pub struct QBlocksMatMul<'a>(pub &'a QBlocks);

impl CustomOp1 for QBlocksMatMul<'_> {
    fn name(&self) -> &'static str {
        "bipo-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = self.0;
        let x = crate::util::contiguous_f32(self.name(), storage, layout)?;
        let mut dims = layout.shape().dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        if k != w.cols {
            candle_core::bail!("bipo-qmatmul: input width {k} != weight columns {}", w.cols);
        }
        let m = x.len() / k.max(1);
        dims.push(w.rows);
        Ok((CpuStorage::F32(w.matmul(x, m)), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn random_matrix(rows: usize, cols: usize, seed: u32) -> Tensor {
        // A deterministic spread of values, including negatives and a zero block.
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i < BLOCK {
                    0.0
                } else {
                    (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32
                        / 1000.0
                        - 1.0
                }
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn dequantization_matches_candle_bit_for_bit() {
        for dt in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&random_matrix(6, 96, 1), dt).unwrap();
            let ours = QBlocks::from_qtensor(&q).unwrap().unwrap().dequantize();
            let theirs: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "{dt:?}");
        }
    }

    #[test]
    fn quantized_matmul_is_close_to_the_f32_product_of_the_same_weights() {
        for dt in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&random_matrix(70, 128, 2), dt).unwrap();
            let w = QBlocks::from_qtensor(&q).unwrap().unwrap();
            let x = random_matrix(3, 128, 3);
            let exact = x
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap();
            let exact: Vec<f32> = exact.flatten_all().unwrap().to_vec1().unwrap();
            let got = w.matmul(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 3);
            for (a, b) in got.iter().zip(&exact) {
                // 8-bit activations: error well under 1% of the row's magnitude (~sqrt(128)).
                assert!((a - b).abs() < 0.05, "{dt:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn one_row_at_a_time_equals_the_batched_product() {
        let q = QTensor::quantize(&random_matrix(40, 64, 4), GgmlDType::Q4_1).unwrap();
        let w = QBlocks::from_qtensor(&q).unwrap().unwrap();
        let x: Vec<f32> = random_matrix(5, 64, 5)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let all = w.matmul(&x, 5);
        for i in 0..5 {
            assert_eq!(
                w.matmul(&x[i * 64..(i + 1) * 64], 1),
                all[i * 40..(i + 1) * 40]
            );
        }
    }
}
