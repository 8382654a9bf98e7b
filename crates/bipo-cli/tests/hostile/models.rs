//! Models bipo cannot run say why in one line: unknown architectures (GGUF and
//! config.json), a GGUF missing a tensor, and baking into a family without the bias.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QTensor};

use crate::support::*;

fn fixture(family: &str) -> PathBuf {
    root()
        .join("crates/bipo/tests/fixtures/families")
        .join(family)
}

/// Rewrites a GGUF, dropping tensor `drop` and replacing metadata `set`.
fn rewrite_gguf(src: &Path, dst: &Path, drop: Option<&str>, set: Option<(&str, &str)>) {
    let mut f = std::fs::File::open(src).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut meta: Vec<(String, gguf_file::Value)> = c.metadata.clone().into_iter().collect();
    if let Some((k, v)) = set {
        meta.retain(|(x, _)| x != k);
        meta.push((k.into(), gguf_file::Value::String(v.into())));
    }
    let tensors: Vec<(String, QTensor)> = c
        .tensor_infos
        .keys()
        .filter(|n| Some(n.as_str()) != drop)
        .map(|n| {
            (
                n.clone(),
                c.tensor(&mut f, n, &candle_core::Device::Cpu).unwrap(),
            )
        })
        .collect();
    let mr: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(dst).unwrap(), &mr, &tr).unwrap();
}

#[test]
fn a_gguf_of_an_unknown_architecture_names_it_and_the_supported_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mamba.gguf");
    rewrite_gguf(
        &fixture("qwen3").join("model.gguf"),
        &p,
        None,
        Some(("general.architecture", "mamba")),
    );
    fails(
        &bipo(&["inspect", "-m", s(&p)]),
        2,
        &["unsupported architecture `mamba`", "gemma3", "phi3"],
    );
}

#[test]
fn a_config_json_with_an_unsupported_model_type_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture("qwen3").join(f), d.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(
        d.path().join("config.json"),
        cfg.replace("\"qwen3\"", "\"rwkv7\""),
    )
    .unwrap();
    fails(
        &bipo(&["inspect", "-m", s(d.path())]),
        2,
        &["unsupported architecture `rwkv7`", "qwen3"],
    );
}

#[test]
fn a_gemma_gguf_missing_a_tensor_names_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("gemma.gguf");
    rewrite_gguf(
        &fixture("gemma3").join("model.gguf"),
        &p,
        Some("blk.2.attn_k_norm.weight"),
        None,
    );
    fails(
        &bipo(&["inspect", "-m", s(&p)]),
        2,
        &[
            "gemma.gguf",
            "model.layers.2.self_attn.k_norm.weight",
            "missing",
        ],
    );
}

#[test]
fn baking_into_a_family_without_the_bias_says_why() {
    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("v.safetensors");
    flat_vector(&v, 1, 32, 0.1);
    let out = d.path().join("baked.gguf");
    let m = fixture("qwen2").join("model.gguf");
    fails(
        &bipo(&["bake", "-m", s(&m), "-v", s(&v), "-o", s(&out)]),
        2,
        &["`qwen2`", "ffn_down bias", "control vector"],
    );
    assert!(!out.exists());
}
