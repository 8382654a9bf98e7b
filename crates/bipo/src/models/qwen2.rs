//! Qwen2 / Qwen2.5 family.
//!
//! Traits: the Llama block with biases on the q/k/v projections (none on o_proj),
//! half-split rotary stored unpermuted in GGUF too (llama.cpp uses NEOX rotation for
//! it), untied `lm_head` for the larger models and tied embeddings for the small ones;
//! sliding window only when `use_sliding_window` is set.

use serde::Deserialize;

use super::config::DecoderConfig;
use super::{llama, Architecture};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// Mirrors Hugging Face `Qwen2Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config =
        serde_json::from_str(json).map_err(|e| Error::invalid("config.json", e.to_string()))?;
    let mut d = c.base.into_decoder()?;
    d.attention_bias = true;
    d.sliding_window = c.sliding_window.filter(|_| c.use_sliding_window);
    Ok(d)
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    llama::gguf_decoder_config(g, "qwen2", true)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "qwen2",
    hf_model_types: &["qwen2"],
    gguf_names: &["qwen2"],
    gguf_rope_permuted: false,
    from_hf,
    from_gguf,
};
