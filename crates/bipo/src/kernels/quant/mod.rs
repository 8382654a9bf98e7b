//! Quantized matrix multiplication on llama.cpp's block formats, read in place: Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K (everything a Q4_K_M or
//! Q5_K_M file holds). Computed as llama.cpp computes it on CPU: activations quantized
//! to 8 bits per weight type ([`acts`]), integer dot products per block, scaled in f32.
//!
//! [`QBlocks::matmul`] tiles the work: threads take chunks of weight rows, and each row
//! is multiplied with several tokens at once, so a weight block is loaded and unpacked
//! once per 8 tokens (prompt processing, batched decode) and the whole row streams from
//! memory once (decode). Kernels, chosen at run time: AVX-512 VNNI on 512-bit vectors
//! (16 rows x 8 tokens per tile, [`wide`]), AVX2 on 256-bit ones (8 rows x 2 tokens,
//! [`x86`]), else scalar ([`blocks::dot_scalar`]).

pub mod acts;
pub mod blocks;
pub mod tiles;
#[cfg(target_arch = "x86_64")]
pub mod wide;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

pub use acts::Acts;
pub use blocks::QType;

/// A quantized (rows, cols) weight: ggml blocks repacked into 8-row tiles
/// ([`tiles`]), row groups one after another, tiles of a group along the columns.
#[derive(Debug)]
pub struct QBlocks {
    qtype: QType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// Which kernels this CPU runs (checked once; `BIPO_KERNELS=avx2|scalar` forces a
/// slower one, for comparisons and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Scalar,
    Avx2,
    Vnni,
}

/// The kernels in use.
pub fn kernels() -> Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("BIPO_KERNELS").ok();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let vnni = avx2
                && has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512vnni");
            match forced.as_deref() {
                Some("scalar") => return Kernels::Scalar,
                Some("avx2") if avx2 => return Kernels::Avx2,
                _ if vnni => return Kernels::Vnni,
                _ if avx2 => return Kernels::Avx2,
                _ => {}
            }
        }
        let _ = forced;
        Kernels::Scalar
    })
}

/// Every kernel set this CPU can run, slowest first.
pub fn available() -> Vec<Kernels> {
    let best = kernels();
    [Kernels::Scalar, Kernels::Avx2, Kernels::Vnni]
        .into_iter()
        .filter(|k| {
            matches!(
                (k, best),
                (Kernels::Scalar, _)
                    | (Kernels::Avx2, Kernels::Avx2 | Kernels::Vnni)
                    | (Kernels::Vnni, Kernels::Vnni)
            )
        })
        .collect()
}

/// A raw pointer the row-group tasks write disjoint outputs through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the columns of its own row groups.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl QBlocks {
    /// Takes a candle `QTensor` of a supported type; None for other types.
    pub fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Self>> {
        let Some(qtype) = QType::from_ggml(t.dtype()) else {
            return Ok(None);
        };
        let (rows, cols) = t.shape().dims2()?;
        if !cols.is_multiple_of(qtype.block_values()) {
            return Ok(None);
        }
        Ok(Some(Self::from_raw(qtype, rows, cols, &t.data()?)))
    }

    /// Packs ggml blocks (rows x cols, row-major) into tiles.
    pub fn from_raw(qtype: QType, rows: usize, cols: usize, raw: &[u8]) -> Self {
        let nb = cols / qtype.block_values();
        let (bb, tb) = (qtype.block_bytes(), tiles::tile_bytes(qtype));
        let groups = rows.div_ceil(tiles::ROWS);
        let zero = vec![0u8; bb];
        let mut data = vec![0u8; groups * nb * tb];
        data.par_chunks_mut(nb * tb)
            .enumerate()
            .for_each(|(g, out)| {
                for (b, tile) in out.chunks_exact_mut(tb).enumerate() {
                    let blocks: [&[u8]; tiles::ROWS] = std::array::from_fn(|k| {
                        let r = g * tiles::ROWS + k;
                        if r < rows {
                            &raw[(r * nb + b) * bb..(r * nb + b + 1) * bb]
                        } else {
                            &zero[..]
                        }
                    });
                    tiles::pack(qtype, &blocks, tile);
                }
            });
        Self {
            qtype,
            rows,
            cols,
            data,
        }
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / self.qtype.block_values()
    }

    /// The tiles of row group `g` (rows 8g..8g+8).
    fn group(&self, g: usize) -> &[u8] {
        let n = self.blocks_per_row() * tiles::tile_bytes(self.qtype);
        &self.data[g * n..(g + 1) * n]
    }

    /// Row `r` as ggml blocks, bit for bit as in the file.
    pub fn row(&self, r: usize) -> Vec<u8> {
        let (bb, tb) = (self.qtype.block_bytes(), tiles::tile_bytes(self.qtype));
        let group = self.group(r / tiles::ROWS);
        let mut out = vec![0u8; self.blocks_per_row() * bb];
        for (tile, o) in group.chunks_exact(tb).zip(out.chunks_exact_mut(bb)) {
            tiles::unpack(self.qtype, tile, r % tiles::ROWS, o);
        }
        out
    }

    /// Rows `start..start + n` as their own matrix.
    pub fn rows(&self, start: usize, n: usize) -> Self {
        let raw: Vec<u8> = (start..start + n).flat_map(|r| self.row(r)).collect();
        Self::from_raw(self.qtype, n, self.cols, &raw)
    }

    /// Row `r` as f32 (exactly ggml's dequantization).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (bv, bb) = (self.qtype.block_values(), self.qtype.block_bytes());
        for (b, o) in self.row(r).chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
            blocks::dequantize_block(self.qtype, b, o);
        }
    }

    /// Rows `r0..r0 + n` as f32 into `out` (n x cols, row-major), tile by tile.
    pub fn dequantize_rows(&self, r0: usize, n: usize, out: &mut [f32]) {
        let (bv, tb) = (self.qtype.block_values(), tiles::tile_bytes(self.qtype));
        let cols = self.cols;
        let mut r = r0;
        while r < r0 + n {
            let g = r / tiles::ROWS;
            let first = r % tiles::ROWS;
            let take = (tiles::ROWS - first).min(r0 + n - r);
            let group = self.group(g);
            if first == 0 {
                let o = &mut out[(r - r0) * cols..];
                for (b, tile) in group.chunks_exact(tb).enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    if take == tiles::ROWS && kernels() != Kernels::Scalar {
                        // SAFETY: AVX2, FMA and F16C are present (kernels() checked).
                        unsafe { x86::dequantize_tile(self.qtype, tile, &mut o[b * bv..], cols) };
                        continue;
                    }
                    tiles::dequantize(self.qtype, tile, take, &mut o[b * bv..], cols);
                }
            } else {
                // A range starting inside a tile group: dequantize the group, copy rows.
                let mut tmp = vec![0f32; tiles::ROWS * cols];
                for (b, tile) in group.chunks_exact(tb).enumerate() {
                    tiles::dequantize(self.qtype, tile, tiles::ROWS, &mut tmp[b * bv..], cols);
                }
                out[(r - r0) * cols..(r - r0 + take) * cols]
                    .copy_from_slice(&tmp[first * cols..(first + take) * cols]);
            }
            r += take;
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let span = tiles::ROWS * self.cols;
        out.par_chunks_mut(span).enumerate().for_each(|(g, o)| {
            let n = o.len() / self.cols;
            self.dequantize_rows(g * tiles::ROWS, n, o)
        });
        out
    }

    /// y = x W^T for x: (m, cols) row-major, y: (m, rows).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let acts = Acts::new(x, self.cols, self.qtype.act_kind());
        self.matmul_quantized(&acts, m)
    }

    /// y = x W^T with x already quantized for this weight type.
    pub fn matmul_quantized(&self, acts: &Acts, m: usize) -> Vec<f32> {
        self.matmul_with(kernels(), acts, m)
    }

    /// [`Self::matmul_quantized`] with the given kernels (they must run on this CPU:
    /// see [`available`]).
    pub fn matmul_with(&self, k: Kernels, acts: &Acts, m: usize) -> Vec<f32> {
        let n = self.rows;
        let groups = n.div_ceil(tiles::ROWS);
        // Groups per task: enough work per task, a few tasks per thread.
        let threads = rayon::current_num_threads().max(1);
        // Even, so that pairs of groups stay together for the 512-bit kernels.
        let per_task = (groups / (4 * threads)).clamp(2, 64).next_multiple_of(2);
        let mut y = vec![0f32; m * n];
        let out = OutPtr(y.as_mut_ptr());
        (0..groups.div_ceil(per_task))
            .into_par_iter()
            .for_each(|c| {
                let gs = c * per_task..((c + 1) * per_task).min(groups);
                // SAFETY: tasks own disjoint row groups, so disjoint columns of y.
                unsafe { self.groups_dot(k, acts, gs, out, m) }
            });
        y
    }

    /// Row groups `gs` against every token, written into y (m, rows).
    unsafe fn groups_dot(
        &self,
        k: Kernels,
        a: &Acts,
        gs: std::ops::Range<usize>,
        y: OutPtr,
        m: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        match k {
            // SAFETY: `kernels()`/`available()` checked that the CPU has these features.
            Kernels::Vnni => return groups_vnni(self, a, gs, y, m),
            Kernels::Avx2 => return groups_avx2(self, a, gs, y, m),
            Kernels::Scalar => {}
        }
        let _ = k;
        let n = self.rows;
        for g in gs {
            for r in g * tiles::ROWS..((g + 1) * tiles::ROWS).min(n) {
                let w = self.row(r);
                for i in 0..m {
                    *y.0.add(i * n + r) = blocks::dot_scalar(self.qtype, &w, a, i);
                }
            }
        }
    }
}

/// The tiled loop for one instruction set: each row group's tiles stay in cache while
/// every token tile of `T` passes over them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn groups_with<I: x86::Isa, const T: usize>(
    w: &QBlocks,
    a: &Acts,
    gs: std::ops::Range<usize>,
    y: OutPtr,
    m: usize,
) {
    let (n, t) = (w.rows, w.qtype);
    let store = |v, i, g| store8(y, n, i, g, v);
    for g in gs {
        let tl = w.group(g);
        let mut i = 0;
        while i + T <= m {
            let v = x86::group::<I, T>(t, tl, a, i);
            for (k, vk) in v.iter().enumerate() {
                store(*vk, i + k, g);
            }
            i += T;
        }
        while i < m {
            store(x86::group::<I, 1>(t, tl, a, i)[0], i, g);
            i += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn groups_avx2(w: &QBlocks, a: &Acts, gs: std::ops::Range<usize>, y: OutPtr, m: usize) {
    groups_with::<x86::Avx2, 2>(w, a, gs, y, m)
}

/// 8 rows' outputs of token `i` into y (m, n) at row group `g` (fewer at the end).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store8(y: OutPtr, n: usize, i: usize, g: usize, v: std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let r0 = g * tiles::ROWS;
    let dst = y.0.add(i * n + r0);
    if r0 + tiles::ROWS <= n {
        _mm256_storeu_ps(dst, v);
    } else {
        let mut tmp = [0f32; tiles::ROWS];
        _mm256_storeu_ps(tmp.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n - r0);
    }
}

/// Fewest tokens for the 512-bit pair kernels; fewer (decode) take the 256-bit ones.
/// With 1-3 tokens the weights stream from memory faster than the kernels use them,
/// and one read stream per thread (one row group at a time) beats two (a pair's tiles
/// lie one group apart): from memory, 1.5x the GB/s at 1 token and 1.1x at 2, equal
/// at 4 (`KBENCH_STREAM=1 M=1 cargo run --release --example kbench`); decode on real
/// checkpoints gained 20-45% (BENCHMARKS.md). In cache the pairs stay faster.
const PAIRS_FROM: usize = 4;

/// Pairs of row groups on 512-bit vectors ([`wide`]), 8 tokens per tile, then the
/// remaining 1-7 in one tile; an odd last group on 256-bit ones (4 tokens per tile).
/// 8 tokens: measured against 2, 4, 6, 12 and 16 (examples/kbench.rs, Q4_K prompt
/// shape: 16 spills registers); the 512-bit pairs gave 1.3-2.4x the 256-bit kernels' throughput at
/// prompt shapes on one thread. The small types keep their zero-point sums in separate
/// accumulators, as the 256-bit kernels do, so both give the same bits (folding them
/// in was 5-20% faster, but its rounding put a baked model 0.104 away from the same
/// vector applied as steering, over the 0.1 that tests/cli.rs allows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512f,avx512bw")]
unsafe fn groups_vnni(w: &QBlocks, a: &Acts, gs: std::ops::Range<usize>, y: OutPtr, m: usize) {
    if m < PAIRS_FROM {
        return groups_with::<x86::Vnni, 4>(w, a, gs, y, m);
    }
    let mut g = gs.start;
    while g + 2 <= gs.end {
        let mut i = 0;
        while i + 8 <= m {
            pair_vnni::<8>(w, a, g, i, y);
            i += 8;
        }
        // The last 1-7 tokens in one pass too (each pass streams the weights once).
        match m - i {
            7 => pair_vnni::<7>(w, a, g, i, y),
            6 => pair_vnni::<6>(w, a, g, i, y),
            5 => pair_vnni::<5>(w, a, g, i, y),
            4 => pair_vnni::<4>(w, a, g, i, y),
            3 => pair_vnni::<3>(w, a, g, i, y),
            2 => pair_vnni::<2>(w, a, g, i, y),
            1 => pair_vnni::<1>(w, a, g, i, y),
            _ => {}
        }
        g += 2;
    }
    groups_with::<x86::Vnni, 4>(w, a, g..gs.end, y, m)
}

/// Row groups g and g + 1 against tokens i..i+T (16 rows per 512-bit vector).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_vnni<const T: usize>(w: &QBlocks, a: &Acts, g: usize, i: usize, y: OutPtr) {
    use std::arch::x86_64::*;
    let v = wide::group2::<T>(w.qtype, w.group(g), w.group(g + 1), a, i);
    for (k, vk) in v.into_iter().enumerate() {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(vk)));
        store8(y, w.rows, i + k, g, _mm512_castps512_ps256(vk));
        store8(y, w.rows, i + k, g + 1, hi);
    }
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
mod tests;
