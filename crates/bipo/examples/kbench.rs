//! Quantized matmul throughput per weight type at decode (1 token), short-prompt (35)
//! and prompt (128 tokens) shapes of Qwen2.5-1.5B / 0.5B and SmolLM2: `cargo run
//! --release --example kbench` (RAYON_NUM_THREADS sets the threads;
//! BIPO_KERNELS=avx2|scalar forces a slower kernel set; KBENCH_STREAM=1 [M=tokens]
//! measures products whose weights stream from memory instead, as decode does;
//! KBENCH_TRAIN=1 times training's panel products, f32 beside bf16, forward and input
//! gradient, at a step's size: 512 tokens).

use bipo::kernels::quant::{Acts, QBlocks};
use candle_core::quantized::{GgmlDType, QTensor};

fn main() {
    bipo::util::tune_allocator();
    if std::env::var_os("KBENCH_STREAM").is_some() {
        return stream();
    }
    if std::env::var_os("KBENCH_TRAIN").is_some() {
        return train();
    }
    let shapes = [
        (GgmlDType::Q4K, 8960usize, 1536usize),
        (GgmlDType::Q6K, 1536, 8960),
        (GgmlDType::Q5_0, 4864, 896),
        (GgmlDType::Q8_0, 896, 4864),
        (GgmlDType::Q4_1, 1536, 576),
    ];
    println!(
        "kernels: {:?}, threads: {}",
        bipo::kernels::quant::kernels(),
        rayon::current_num_threads()
    );
    for (t, n, k) in shapes {
        let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &candle_core::Device::Cpu).unwrap();
        let q = QBlocks::from_qtensor(&QTensor::quantize(&w, t).unwrap())
            .unwrap()
            .unwrap();
        for m in [1usize, 35, 128] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let a = Acts::new(&x, k, q.qtype().act_kind());
            let reps = if m == 1 { 200 } else { 10 };
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t0 = std::time::Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(q.matmul_quantized(&a, m));
                }
                best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{t:?} {n}x{k} m={m}: {:.3} ms, {:.1} GMAC/s",
                best * 1e3,
                (m * n * k) as f64 / best / 1e9
            );
        }
    }
}

/// Decode from memory rather than cache (`KBENCH_STREAM=1`, `M` tokens, default 1):
/// Q4_K products over enough matrices (370 MB) to overflow the last-level cache, as
/// GB/s of weights, beside a plain parallel read of as many bytes.
fn stream() {
    use rayon::prelude::*;
    let (t, n, k, copies) = (GgmlDType::Q4K, 8960usize, 1536usize, 48);
    let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &candle_core::Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, t).unwrap();
    let ws: Vec<QBlocks> = (0..copies)
        .map(|_| QBlocks::from_qtensor(&q).unwrap().unwrap())
        .collect();
    let bytes = (n * k) as f64 * 144.0 / 256.0 * copies as f64;
    let m: usize = std::env::var("M")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let a = Acts::new(&x, k, ws[0].qtype().act_kind());
    let plain: Vec<u64> = vec![1; bytes as usize / 8];
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for w in &ws {
            std::hint::black_box(w.matmul_quantized(&a, m));
        }
        let s = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let sum: u64 = plain
            .par_chunks(1 << 16)
            .map(|c| c.iter().sum::<u64>())
            .sum();
        std::hint::black_box(sum);
        let r = t1.elapsed().as_secs_f64();
        println!(
            "stream {t:?} {copies} x {n}x{k} m={m}: {:.1} GB/s of weights; plain read {:.1} GB/s",
            bytes / s / 1e9,
            bytes / r / 1e9
        );
    }
}

/// Training's products (`KBENCH_TRAIN=1`): `x W^T` and `dy W` on dequantized panels, in
/// f32 and in bf16, 512 tokens, SmolLM2's and Qwen2.5-0.5B's MLP shapes.
fn train() {
    use bipo::kernels::panels::{matmul_n, matmul_t};
    let m = 512;
    println!(
        "bf16 available: {}, AMX: {}, threads: {}",
        bipo::kernels::bf16::available(),
        bipo::kernels::amx::available(),
        rayon::current_num_threads()
    );
    for (t, n, k) in [
        (GgmlDType::Q4_1, 1536usize, 576usize),
        (GgmlDType::Q4_1, 576, 1536),
        (GgmlDType::Q5_0, 4864, 896),
    ] {
        let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &candle_core::Device::Cpu).unwrap();
        let q = QBlocks::from_qtensor(&QTensor::quantize(&w, t).unwrap())
            .unwrap()
            .unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let dy: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.21).cos()).collect();
        let time = |f: &dyn Fn()| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t0 = std::time::Instant::now();
                f();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            (m * n * k) as f64 / best / 1e9
        };
        for bf16 in [false, true] {
            let fwd = time(&|| {
                std::hint::black_box(matmul_t(&q, &x, m, bf16));
            });
            let bwd = time(&|| {
                std::hint::black_box(matmul_n(&q, &dy, m, bf16));
            });
            println!(
                "{t:?} {n}x{k} m={m} {}: forward {fwd:.1} GMAC/s, input gradient {bwd:.1} GMAC/s",
                if bf16 { "bf16" } else { "f32" }
            );
        }
    }
}
