//! Mistral family: Mistral-7B v0.1/v0.2/v0.3 and their instruct tunes.
//!
//! Traits: the Llama block (RMSNorm, GQA without biases, half-split rotary, SwiGLU,
//! untied `lm_head`) plus an optional sliding attention window (v0.1: 4096).
//! llama.cpp writes Mistral GGUFs under the `llama` architecture, so they load through
//! the Llama row; the window is then absent from the metadata (prompts shorter than the
//! window are unaffected).

use serde::Deserialize;

use super::config::DecoderConfig;
use super::{llama, Architecture};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// Mirrors Hugging Face `MistralConfig` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    pub sliding_window: Option<usize>,
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config =
        serde_json::from_str(json).map_err(|e| Error::invalid("config.json", e.to_string()))?;
    let mut d = c.base.into_decoder()?;
    d.sliding_window = c.sliding_window;
    Ok(d)
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    llama::gguf_decoder_config(g, "mistral", false)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "mistral",
    hf_model_types: &["mistral"],
    gguf_names: &["mistral"],
    gguf_rope_permuted: true,
    from_hf,
    from_gguf,
};
