//! Phi-3 family (Phi-3-mini/small/medium 4k, Phi-3.5-mini's architecture).
//!
//! Traits: the Llama block with the q/k/v projections fused into one `qkv_proj` and
//! the gate and up projections into one `gate_up_proj` (gate first), split at load
//! (quantized rows are moved as bytes); no biases; a sliding window on every layer
//! (2047 on mini-4k; llama.cpp ignores it, and so does bipo on GGUF files); half-split rotary, unpermuted in GGUF (NEOX rotation in
//! llama.cpp); untied `lm_head`. The 128k variants' "longrope" scaling is refused.

use serde::Deserialize;

use super::config::DecoderConfig;
use super::{llama, Architecture};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// Mirrors Hugging Face `Phi3Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    pub sliding_window: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config = llama::parse_config(json)?;
    let partial = c
        .partial_rotary_factor
        .or(c.base.rope()?.partial_rotary_factor);
    if partial.is_some_and(|f| f != 1.0) {
        return Err(Error::invalid(
            "config.json partial_rotary_factor",
            "partial rotary embeddings are not supported",
        ));
    }
    let mut d = c.base.into_decoder()?;
    d.fused_projections = true;
    d.sliding_window = c.sliding_window;
    Ok(d)
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    if g.has_tensor("rope_factors_long.weight") {
        return Err(Error::bad_file(
            g.path(),
            "Phi-3 long-context (longrope) models are not supported; use a 4k-context variant",
        ));
    }
    let mut d = llama::gguf_decoder_config(g, "phi3", false)?;
    d.fused_projections = true;
    // llama.cpp disables Phi-3's sliding window (it only matters past 2047 tokens);
    // bipo follows llama.cpp on GGUF files and transformers on Hugging Face folders.
    Ok(d)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "phi3",
    hf_model_types: &["phi3"],
    gguf_names: &["phi3"],
    gguf_rope_permuted: false,
    from_hf,
    from_gguf,
};
