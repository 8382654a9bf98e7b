//! Llama family: Llama-2, Llama-3/3.1/3.2, SmolLM/SmolLM2, TinyLlama.
//!
//! Traits: RMSNorm pre-norm blocks, grouped-query attention without biases, rotary
//! embeddings (half split; llama.cpp GGUFs store Q/K rows permuted for interleaved
//! rotation, undone at load), SwiGLU MLP, optional "llama3" rope scaling, tied
//! embeddings when `lm_head.weight` is absent (SmolLM2).

use serde::Deserialize;

use super::config::DecoderConfig;
use super::Architecture;
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// Default rotary base when `config.json` omits `rope_theta`.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// Mirrors Hugging Face `LlamaConfig` (`config.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    pub rope_scaling: Option<RopeScaling>,
    /// transformers >= 5 writes rope settings here: one object (`rope_type`,
    /// `rope_theta`, scaling keys), or one per layer type (`full_attention`,
    /// `sliding_attention`).
    pub rope_parameters: Option<serde_json::Value>,
}

/// Rotary settings however the config spells them.
#[derive(Clone, Debug, Default)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
    /// Base of the sliding-window layers when the config gives one per layer type.
    pub local_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
}

/// One rope-parameter object: its base and its scaling (None for "default").
fn rope_object(v: &serde_json::Value) -> Result<(Option<f64>, Option<RopeScaling>)> {
    let theta = v.get("rope_theta").and_then(|t| t.as_f64());
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    if kind == "default" {
        return Ok((theta, None));
    }
    let s: RopeScaling = serde_json::from_value(v.clone())
        .map_err(|e| Error::invalid("config.json rope_parameters", e.to_string()))?;
    Ok((theta, Some(s)))
}

impl Config {
    /// The rotary settings: old style (`rope_theta`, `rope_scaling`) or
    /// `rope_parameters`, flat or per layer type.
    pub fn rope(&self) -> Result<RopeSpec> {
        let mut spec = RopeSpec {
            theta: self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
            scaling: self
                .rope_scaling
                .clone()
                .filter(|s| s.rope_type != "default"),
            ..Default::default()
        };
        let Some(p) = &self.rope_parameters else {
            return Ok(spec);
        };
        let per_layer = p.get("full_attention").is_some() || p.get("sliding_attention").is_some();
        let global = if per_layer {
            p.get("full_attention")
        } else {
            Some(p)
        };
        if let Some(g) = global {
            let (theta, scaling) = rope_object(g)?;
            spec.theta = theta.unwrap_or(spec.theta);
            spec.scaling = scaling;
            spec.partial_rotary_factor = g.get("partial_rotary_factor").and_then(|f| f.as_f64());
        }
        if let Some(l) = p.get("sliding_attention").filter(|_| per_layer) {
            let (theta, scaling) = rope_object(l)?;
            if let Some(s) = scaling {
                return Err(Error::invalid(
                    "config.json rope_parameters.sliding_attention",
                    format!(
                        "rope type `{}` for local layers is not supported",
                        s.rope_type
                    ),
                ));
            }
            spec.local_theta = theta;
        }
        Ok(spec)
    }
}

fn one() -> f64 {
    1.0
}

/// Parses `config.json` into a family's `Config`, naming the file in errors.
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::invalid("config.json", e.to_string()))
}

/// Rope scaling from GGUF metadata (`{arch}.rope.scaling.type`, `.factor`): "linear" as
/// constant divisors; None when absent or "none".
pub fn gguf_rope_factors(g: &GgufFile, arch: &str, head_dim: usize) -> Result<Option<Vec<f32>>> {
    match g.opt_str(&format!("{arch}.rope.scaling.type"))? {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let f = g.float(&format!("{arch}.rope.scaling.factor"))?;
            Ok((f != 1.0).then(|| vec![f as f32; head_dim / 2]))
        }
        Some(other) => Err(Error::bad_file(
            g.path(),
            format!("rope scaling `{other}` is not supported (supported: linear)"),
        )),
    }
}

/// `rope_scaling` of Llama-3.1-style configs.
#[derive(Clone, Debug, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

impl Config {
    pub fn into_decoder(self) -> Result<DecoderConfig> {
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        let rope = self.rope()?;
        if rope.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            return Err(Error::invalid(
                "config.json partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
        let rope_freq_factors = rope_factors(rope.scaling.as_ref(), head_dim, rope.theta)?;
        Ok(DecoderConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: rope.theta,
            rope_local_theta: rope.local_theta,
            rope_freq_factors,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            ..Default::default()
        })
    }
}

/// Per-frequency divisors for a `rope_scaling` entry: "llama3" (Llama-3.1+), "linear"
/// (every frequency divided by `factor`), or none ("default").
pub fn rope_factors(
    scaling: Option<&RopeScaling>,
    head_dim: usize,
    theta: f64,
) -> Result<Option<Vec<f32>>> {
    match scaling {
        None => Ok(None),
        Some(s) if s.rope_type == "default" => Ok(None),
        Some(s) if s.rope_type == "llama3" => Ok(Some(llama3_freq_factors(s, head_dim, theta)?)),
        Some(s) if s.rope_type == "linear" => Ok(Some(vec![s.factor as f32; head_dim / 2])),
        Some(s) => Err(Error::invalid(
            "config.json rope_scaling",
            format!(
                "type `{}` is not supported (supported: llama3, linear)",
                s.rope_type
            ),
        )),
    }
}

/// Divisors of each rotary frequency under "llama3" scaling (as llama.cpp's
/// `rope_freqs.weight`): low frequencies are slowed by `factor`, high ones kept, and the
/// band between interpolated.
fn llama3_freq_factors(s: &RopeScaling, head_dim: usize, theta: f64) -> Result<Vec<f32>> {
    let (Some(low), Some(high), Some(old_ctx)) = (
        s.low_freq_factor,
        s.high_freq_factor,
        s.original_max_position_embeddings,
    ) else {
        return Err(Error::invalid(
            "config.json rope_scaling",
            "llama3 scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings",
        ));
    };
    let old_ctx = old_ctx as f64;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let scaled = if wavelen < high_wavelen {
                inv
            } else if wavelen > low_wavelen {
                inv / s.factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 - smooth) * inv / s.factor + smooth * inv
            };
            (inv / scaled) as f32
        })
        .collect())
}

/// Reads the decoder hyper-parameters that llama.cpp writes for llama-like families
/// (`{arch}.block_count`, `{arch}.embedding_length`, ...).
pub fn gguf_decoder_config(
    g: &GgufFile,
    arch: &str,
    attention_bias: bool,
) -> Result<DecoderConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden_size = g.size(&key("embedding_length"))?;
    let num_heads = g.size(&key("attention.head_count"))?;
    let head_dim = match g.opt_uint(&key("attention.key_length"))? {
        Some(n) => n as usize,
        None => hidden_size / num_heads,
    };
    let vocab_size = match g.opt_uint(&key("vocab_size"))? {
        Some(n) => n as usize,
        None => g.str_array("tokenizer.ggml.tokens")?.len(),
    };
    Ok(DecoderConfig {
        hidden_size,
        intermediate_size: g.size(&key("feed_forward_length"))?,
        num_layers: g.size(&key("block_count"))?,
        num_heads,
        num_kv_heads: g
            .opt_uint(&key("attention.head_count_kv"))?
            .map(|n| n as usize)
            .unwrap_or(num_heads),
        head_dim,
        vocab_size,
        rms_norm_eps: g.float(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: g
            .opt_float(&key("rope.freq_base"))?
            .unwrap_or(DEFAULT_ROPE_THETA),
        rope_freq_factors: None,
        max_position_embeddings: g.size(&key("context_length"))?,
        tie_word_embeddings: !g.has_tensor("output.weight"),
        attention_bias,
        // llama.cpp applies no window for llama/qwen2 GGUFs whatever the metadata says;
        // families that use one (Phi-3, Gemma) read `attention.sliding_window` themselves.
        ..Default::default()
    })
}

fn from_hf(json: &str) -> Result<DecoderConfig> {
    let c: Config =
        serde_json::from_str(json).map_err(|e| Error::invalid("config.json", e.to_string()))?;
    c.into_decoder()
}

fn from_gguf(g: &GgufFile) -> Result<DecoderConfig> {
    gguf_decoder_config(g, "llama", false)
}

/// The table row for this family.
pub const ARCHITECTURE: Architecture = Architecture {
    family: "llama",
    hf_model_types: &["llama"],
    gguf_names: &["llama"],
    gguf_rope_permuted: true,
    from_hf,
    from_gguf,
};
