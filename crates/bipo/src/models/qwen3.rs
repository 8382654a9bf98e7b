//! Qwen3 family (dense models: Qwen3-0.6B ... 32B).
//!
//! Traits: the Llama block without any projection bias, plus an RMSNorm over each
//! query and key head (`q_norm`, `k_norm`, width head_dim) before the rotation;
//! head_dim set explicitly (q width != hidden size); half-split rotary stored
//! unpermuted in GGUF (NEOX rotation in llama.cpp); tied embeddings on the small models.

use serde::Deserialize;

use super::config::DecoderConfig;
use super::{llama, Architecture};
use crate::error::Result;
use crate::load::gguf::GgufFile;

/// Mirrors Hugging Face `Qwen3Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config = llama::parse_config(json)?;
    let mut d = c.base.into_decoder()?;
    d.qk_norm = true;
    d.sliding_window = c.sliding_window.filter(|_| c.use_sliding_window);
    Ok(d)
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    let mut d = llama::gguf_decoder_config(g, "qwen3", false)?;
    d.qk_norm = true;
    Ok(d)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "qwen3",
    hf_model_types: &["qwen3"],
    gguf_names: &["qwen3"],
    gguf_rope_permuted: false,
    from_hf,
    from_gguf,
};
