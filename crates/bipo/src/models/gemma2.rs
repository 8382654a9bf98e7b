//! Gemma-2 family (2B, 9B, 27B).
//!
//! Traits: embeddings scaled by sqrt(hidden); RMSNorm with a `(1 + w)` scale (Hugging
//! Face stores `w`, llama.cpp's GGUF `1 + w`); "sandwich" norms: the attention output
//! and the MLP output are normed again before each residual add; GeGLU MLP with the
//! tanh GELU; attention scaled by 1/sqrt(query_pre_attn_scalar) and soft-capped
//! (`50 tanh(s / 50)`); final logits soft-capped (`30 tanh(l / 30)`); even layers
//! attend in a 4096-token sliding window, odd layers globally; half-split rotary,
//! unpermuted in GGUF; tied embeddings.

use serde::Deserialize;

use super::config::{Activation, DecoderConfig};
use super::{llama, Architecture};
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// Mirrors Hugging Face `Gemma2Config` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub base: llama::Config,
    #[serde(default = "gelu_tanh")]
    pub hidden_activation: String,
    pub query_pre_attn_scalar: Option<f64>,
    pub sliding_window: Option<usize>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    /// Newer configs spell the pattern out per layer.
    pub layer_types: Option<Vec<String>>,
}

fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}

/// The GELU variants Gemma configs name; all are the tanh approximation here.
pub fn activation(name: &str) -> Result<Activation> {
    match name {
        "gelu_pytorch_tanh" | "gelu_tanh" | "gelu" => Ok(Activation::GeluTanh),
        "silu" => Ok(Activation::Silu),
        other => Err(Error::invalid(
            "config.json hidden_activation",
            format!("`{other}` is not supported (gelu_pytorch_tanh, silu)"),
        )),
    }
}

/// Which layers slide, from `layer_types` ("sliding_attention" / "full_attention"),
/// else one global layer in `n`.
pub fn sliding_layers(types: Option<&[String]>, n: usize, layers: usize) -> Result<Vec<bool>> {
    match types {
        None => Ok(DecoderConfig::every_nth_global(n, layers)),
        Some(t) if t.len() != layers => Err(Error::invalid(
            "config.json layer_types",
            format!("{} entries for {layers} layers", t.len()),
        )),
        Some(t) => t
            .iter()
            .map(|k| match k.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(Error::invalid(
                    "config.json layer_types",
                    format!("`{other}` (expected sliding_attention or full_attention)"),
                )),
            })
            .collect(),
    }
}

/// llama.cpp's reading of a Gemma GGUF's window: `{arch}.attention.sliding_window`
/// (or `default`), the pattern `{arch}.attention.sliding_window_pattern` (one global
/// layer in n, or a per-layer array; default `n`), and the local rotary base
/// `{arch}.rope.freq_base_swa` (default `local_theta`).
pub fn gguf_windows(
    g: &GgufFile,
    arch: &str,
    d: &mut DecoderConfig,
    default_window: Option<usize>,
    n: usize,
    local_theta: Option<f64>,
) -> Result<()> {
    use candle_core::quantized::gguf_file::Value;
    d.sliding_window = g
        .opt_uint(&format!("{arch}.attention.sliding_window"))?
        .map(|w| w as usize)
        .or(default_window)
        .filter(|&w| w > 0);
    let key = format!("{arch}.attention.sliding_window_pattern");
    d.sliding_layers = Some(match g.get(&key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                _ => Err(Error::bad_file(
                    g.path(),
                    format!("`{key}` is not an array of booleans"),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => DecoderConfig::every_nth_global(g.uint(&key)? as usize, d.num_layers),
        None => DecoderConfig::every_nth_global(n, d.num_layers),
    });
    d.rope_local_theta = g
        .opt_float(&format!("{arch}.rope.freq_base_swa"))?
        .or(local_theta);
    Ok(())
}

/// Applies the traits every Gemma generation shares.
pub fn gemma_traits(d: &mut DecoderConfig) {
    d.scale_embeddings = true;
    d.sandwich_norms = true;
    d.hf_norm_plus_one = true;
    d.activation = Activation::GeluTanh;
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config = llama::parse_config(json)?;
    let tied = !json.contains("\"tie_word_embeddings\"") || c.base.tie_word_embeddings;
    let mut d = c.base.into_decoder()?;
    gemma_traits(&mut d);
    d.activation = activation(&c.hidden_activation)?;
    d.tie_word_embeddings = tied;
    d.query_pre_attn_scalar = c.query_pre_attn_scalar;
    d.sliding_window = c.sliding_window;
    d.sliding_layers = Some(sliding_layers(c.layer_types.as_deref(), 2, d.num_layers)?);
    d.attn_logit_softcap = c.attn_logit_softcapping;
    d.final_logit_softcap = c.final_logit_softcapping;
    Ok(d)
}

/// llama.cpp's attention scale for Gemma GGUFs: 1/sqrt(head_dim), except the 27B
/// models (46 layers), which use 1/sqrt(hidden / heads).
pub fn gguf_query_scalar(d: &DecoderConfig) -> f64 {
    if d.num_layers == 46 {
        (d.hidden_size / d.num_heads) as f64
    } else {
        d.head_dim as f64
    }
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    let mut d = llama::gguf_decoder_config(g, "gemma2", false)?;
    gemma_traits(&mut d);
    d.query_pre_attn_scalar = Some(gguf_query_scalar(&d));
    // llama.cpp: a 4096 window on one layer in two; the local base is the global one.
    let theta = d.rope_theta;
    gguf_windows(g, "gemma2", &mut d, Some(4096), 2, None)?;
    d.rope_local_theta = d.rope_local_theta.filter(|&t| t != theta);
    d.attn_logit_softcap = g.opt_float("gemma2.attn_logit_softcapping")?;
    d.final_logit_softcap = g.opt_float("gemma2.final_logit_softcapping")?;
    Ok(d)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "gemma2",
    hf_model_types: &["gemma2"],
    gguf_names: &["gemma2"],
    gguf_rope_permuted: false,
    from_hf,
    from_gguf,
};
