//! Every kernel against its definition: dequantization equals candle's (which follows
//! ggml's reference) bit for bit, the SIMD kernels equal the scalar dot products for
//! every token count (tiles and remainders), and the product is close to the f32
//! product of the dequantized weights.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;

const TYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Deterministic values in [-1, 1) with a zero block and some large outliers.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i < 32 {
                return 0.0;
            }
            let h = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97));
            let v = ((h >> 8) % 2000) as f32 / 1000.0 - 1.0;
            if h.is_multiple_of(61) {
                v * 9.0
            } else {
                v
            }
        })
        .collect()
}

fn weight(t: GgmlDType, rows: usize, cols: usize, seed: u32) -> QTensor {
    let x = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&x, t).unwrap()
}

#[test]
fn dequantization_equals_candles_bit_for_bit() {
    for t in TYPES {
        let q = weight(t, 5, 512, 1);
        let ours = QBlocks::from_qtensor(&q).unwrap().unwrap().dequantize();
        let theirs: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs, "{t:?}");
    }
}

#[test]
fn tile_dequantization_equals_candles_for_any_row_range() {
    for t in TYPES {
        let q = weight(t, 19, 512, 9);
        let theirs: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w = QBlocks::from_qtensor(&q).unwrap().unwrap();
        assert_eq!(w.dequantize(), theirs, "{t:?}");
        for (r0, n) in [(0, 19), (3, 7), (8, 11), (17, 2)] {
            let mut out = vec![0f32; n * 512];
            w.dequantize_rows(r0, n, &mut out);
            assert_eq!(out, theirs[r0 * 512..(r0 + n) * 512], "{t:?} rows {r0}+{n}");
        }
    }
}

#[test]
fn simd_kernels_equal_the_scalar_definition_for_every_tile_shape() {
    let sets = available();
    assert!(
        !cfg!(target_arch = "x86_64")
            || sets.len() > 1
            || std::env::var_os("BIPO_KERNELS").is_some(),
        "no SIMD kernels ran: {sets:?}"
    );
    for k in sets {
        for t in TYPES {
            let w = QBlocks::from_qtensor(&weight(t, 37, 768, 2))
                .unwrap()
                .unwrap();
            for m in [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 17] {
                let x = values(m * 768, 3 + m as u32);
                let acts = Acts::new(&x, 768, w.qtype().act_kind());
                let got = w.matmul_with(k, &acts, m);
                for i in 0..m {
                    for r in 0..37 {
                        let want = blocks::dot_scalar(w.qtype(), &w.row(r), &acts, i);
                        let g = got[i * 37 + r];
                        // The same sums in another order (the zero points folded in separately).
                        let tol = 1e-4 * want.abs().max(1.0);
                        assert!(
                            (g - want).abs() <= tol,
                            "{t:?} {k:?} m={m} row {r} token {i}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_product_is_close_to_the_f32_product_of_the_same_weights() {
    for t in TYPES {
        let q = weight(t, 20, 512, 4);
        let w = QBlocks::from_qtensor(&q).unwrap().unwrap();
        let x = values(3 * 512, 5);
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let xt = Tensor::from_vec(x.clone(), (3, 512), &Device::Cpu).unwrap();
        let exact: Vec<f32> = xt
            .matmul(&dense.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = w.matmul(&x, 3);
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&exact) {
            // 8-bit activations: error well under 1% of the largest output.
            assert!(
                (a - b).abs() < 0.01 * scale,
                "{t:?}: {a} vs {b} (scale {scale})"
            );
        }
    }
}

#[test]
fn tiles_unpack_to_the_files_blocks_bit_for_bit() {
    for t in TYPES {
        // 11 rows: one full tile group and a padded one.
        let q = weight(t, 11, 512, 8);
        let raw = q.data().unwrap();
        let w = QBlocks::from_qtensor(&q).unwrap().unwrap();
        let rb = raw.len() / 11;
        for r in 0..11 {
            assert_eq!(w.row(r), &raw[r * rb..(r + 1) * rb], "{t:?} row {r}");
        }
    }
}

#[test]
fn a_slice_of_rows_multiplies_like_those_rows() {
    let w = QBlocks::from_qtensor(&weight(GgmlDType::Q4K, 12, 256, 6))
        .unwrap()
        .unwrap();
    let part = w.rows(4, 5);
    let x = values(256, 7);
    let all = w.matmul(&x, 1);
    assert_eq!(part.matmul(&x, 1), all[4..9]);
}

/// A row's product does not depend on the path that computed it: row group 1 inside a
/// pair (the 512-bit kernels on AVX-512 VNNI) and the same group alone (the 256-bit
/// ones) give the same bits, for every token count.
#[test]
fn a_row_group_gives_the_same_bits_in_a_pair_and_alone() {
    for k in available() {
        for t in TYPES {
            let w = QBlocks::from_qtensor(&weight(t, 37, 768, 10))
                .unwrap()
                .unwrap();
            let alone = w.rows(8, 8);
            for m in [1, 3, 8, 13] {
                let x = values(m * 768, 11 + m as u32);
                let acts = Acts::new(&x, 768, w.qtype().act_kind());
                let all = w.matmul_with(k, &acts, m);
                let one = alone.matmul_with(k, &acts, m);
                for i in 0..m {
                    assert_eq!(
                        all[i * 37 + 8..i * 37 + 16],
                        one[i * 8..(i + 1) * 8],
                        "{t:?} {k:?} m={m} token {i}"
                    );
                }
            }
        }
    }
}
