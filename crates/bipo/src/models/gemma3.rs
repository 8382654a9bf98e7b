//! Gemma-3 family, text models (270M, 1B; the text stack of 4B-27B).
//!
//! Traits: Gemma-2's (scaled embeddings, `(1 + w)` RMSNorm, sandwich norms, GeGLU with
//! tanh GELU, attention scaled by 1/sqrt(query_pre_attn_scalar)) without the attention
//! soft-cap, plus an RMSNorm over each query and key head before the rotation; five
//! sliding-window (local) layers to one global layer; local layers rotate with base
//! 10 000 and no scaling, global ones with `rope_theta` (1 000 000) and the configured
//! scaling (linear x8 on the larger models); half-split rotary, unpermuted in GGUF;
//! tied embeddings.

use serde::Deserialize;

use super::config::DecoderConfig;
use super::gemma2::{activation, gemma_traits, gguf_query_scalar, gguf_windows, sliding_layers};
use super::{llama, Architecture};
use crate::error::Result;
use crate::load::gguf::GgufFile;

/// Local (sliding-window) layers' rotary base when the config does not say.
pub const DEFAULT_LOCAL_THETA: f64 = 10_000.0;
/// One global layer in this many.
pub const DEFAULT_PATTERN: usize = 6;

/// Mirrors Hugging Face `Gemma3TextConfig` (`config.json`, `model_type` gemma3_text).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    #[serde(default = "gelu_tanh")]
    pub hidden_activation: String,
    pub query_pre_attn_scalar: Option<f64>,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub rope_local_base_freq: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
}

fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config = llama::parse_config(json)?;
    let tied = !json.contains("\"tie_word_embeddings\"") || c.base.tie_word_embeddings;
    let local_theta = c.base.rope()?.local_theta;
    let mut d = c.base.into_decoder()?;
    gemma_traits(&mut d);
    d.activation = activation(&c.hidden_activation)?;
    d.tie_word_embeddings = tied;
    d.qk_norm = true;
    d.query_pre_attn_scalar = c.query_pre_attn_scalar;
    d.sliding_window = c.sliding_window;
    let n = c.sliding_window_pattern.unwrap_or(DEFAULT_PATTERN);
    d.sliding_layers = Some(sliding_layers(c.layer_types.as_deref(), n, d.num_layers)?);
    d.rope_local_theta = Some(
        local_theta
            .or(c.rope_local_base_freq)
            .unwrap_or(DEFAULT_LOCAL_THETA),
    );
    d.attn_logit_softcap = c.attn_logit_softcapping;
    d.final_logit_softcap = c.final_logit_softcapping;
    Ok(d)
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    let mut d = llama::gguf_decoder_config(g, "gemma3", false)?;
    gemma_traits(&mut d);
    d.qk_norm = true;
    d.query_pre_attn_scalar = Some(gguf_query_scalar(&d));
    d.rope_freq_factors = llama::gguf_rope_factors(g, "gemma3", d.head_dim)?;
    // llama.cpp: a window only when the file gives one; one global layer in six and a
    // local base of 10 000 unless the file says otherwise.
    gguf_windows(
        g,
        "gemma3",
        &mut d,
        None,
        DEFAULT_PATTERN,
        Some(DEFAULT_LOCAL_THETA),
    )?;
    d.final_logit_softcap = g.opt_float("gemma3.final_logit_softcapping")?;
    Ok(d)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "gemma3",
    hf_model_types: &["gemma3_text"],
    gguf_names: &["gemma3"],
    gguf_rope_permuted: false,
    from_hf,
    from_gguf,
};
