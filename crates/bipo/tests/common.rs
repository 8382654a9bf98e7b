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

/// Largest |a - b| over two equally shaped matrices.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
