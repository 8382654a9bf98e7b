//! Paths shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root: `BIPO_ROOT` when set (a test binary run on another machine),
/// else where the tests were built.
pub fn root() -> PathBuf {
    match std::env::var_os("BIPO_ROOT") {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// The default model, fetched by `scripts/fetch-model.sh`. Tests fail (never skip) when
/// it is absent, saying how to get it.
pub fn default_model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-model.sh first",
        p.display()
    );
    p
}

/// llama.cpp reference facts (`../shared/reference/...`), read-only.
pub fn reference(name: &str) -> PathBuf {
    let p = root()
        .join("../shared/reference/smollm2-135m-instruct-q4_1")
        .join(name);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// (positions, vocabulary) logits of one forward over `input` from position 0.
pub fn logits(
    m: &bipo::models::Model,
    input: &[u32],
    steering: &bipo::steer::Steering,
    mode: bipo::models::Mode,
) -> Vec<Vec<f32>> {
    let ids = candle_core::Tensor::new(input, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&ids, 0, None, steering, None, mode)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// Central differences against an autograd gradient: the largest |fd_i - grad_i| over
/// `coords`, relative to the gradient's largest component. `loss(v)` is the scalar loss
/// at `v`; `grad` the autograd gradient at `v0`. The step h = 1e-2 balances truncation
/// against f32 rounding of the loss.
pub fn fd_relative_error(
    v0: &[f32],
    grad: &[f32],
    coords: &[usize],
    loss: impl Fn(&[f32]) -> f64,
) -> f64 {
    let h = 1e-2f32;
    let scale = grad.iter().map(|g| g.abs() as f64).fold(0.0, f64::max);
    coords
        .iter()
        .map(|&i| {
            let (mut a, mut b) = (v0.to_vec(), v0.to_vec());
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&a) - loss(&b)) / (2.0 * h as f64);
            (fd - grad[i] as f64).abs() / scale
        })
        .fold(0.0, f64::max)
}

/// Largest |a - b| over two equally shaped matrices.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "different numbers of rows");
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
