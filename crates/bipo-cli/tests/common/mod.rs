//! Paths and helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model (fetched by `scripts/fetch-model.sh`); tests fail, never skip,
/// when it is absent.
pub fn model() -> String {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-model.sh",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// Runs the `bipo` binary.
pub fn bipo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bipo"))
        .args(args)
        .output()
        .unwrap()
}
