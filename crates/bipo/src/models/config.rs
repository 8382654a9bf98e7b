//! [`DecoderConfig`]: the hyper-parameters and architectural switches of the one shared
//! decoder. Each family fills it from its `config.json` mirror or its GGUF metadata;
//! where families differ (extra norms, soft-capping, GeGLU, sliding-window patterns),
//! a switch here says so and the decoder reads it.

use serde::{Deserialize, Serialize};

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up` (Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// GeGLU with the tanh approximation: `gelu_tanh(gate) * up` (Gemma).
    GeluTanh,
}

/// Hyper-parameters of the shared decoder, filled in by each family's `Config`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Per-frequency divisors (Llama-3.1 "llama3" rope scaling, GGUF `rope_freqs.weight`,
    /// or a constant for "linear" scaling).
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2).
    pub attention_bias: bool,
    /// Attend only to the last `n` positions (Mistral v0.1, Phi-3, Gemma's local layers).
    pub sliding_window: Option<usize>,
    /// With a sliding window: which layers use it (Gemma-2: every other layer, Gemma-3:
    /// five in six). None: every layer.
    pub sliding_layers: Option<Vec<bool>>,
    /// Rotary base of the sliding-window layers when it differs from `rope_theta`
    /// (Gemma-3: 10 000 local, 1 000 000 global); local layers take no rope scaling.
    pub rope_local_theta: Option<f64>,
    pub activation: Activation,
    /// Per-head RMSNorm on queries and keys before the rotation (Qwen3, Gemma-3).
    pub qk_norm: bool,
    /// Norms after attention and after the MLP too, before each residual add (Gemma-2/3).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by sqrt(hidden_size) (Gemma).
    pub scale_embeddings: bool,
    /// Attention scores soft-capped as `cap * tanh(s / cap)` (Gemma-2).
    pub attn_logit_softcap: Option<f64>,
    /// Final logits soft-capped the same way (Gemma-2).
    pub final_logit_softcap: Option<f64>,
    /// Attention scale 1/sqrt(this) instead of 1/sqrt(head_dim) (Gemma's
    /// `query_pre_attn_scalar`).
    pub query_pre_attn_scalar: Option<f64>,
    /// Hugging Face stores RMSNorm weights as `w` for a `(1 + w)` scale (Gemma); the
    /// loader adds 1 (llama.cpp's GGUFs already hold `1 + w`).
    #[serde(skip)]
    pub hf_norm_plus_one: bool,
    /// q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj` (Phi-3), split at load.
    pub fused_projections: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            hidden_size: 0,
            intermediate_size: 0,
            num_layers: 0,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 0,
            vocab_size: 0,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_freq_factors: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            attention_bias: false,
            sliding_window: None,
            sliding_layers: None,
            rope_local_theta: None,
            activation: Activation::Silu,
            qk_norm: false,
            sandwich_norms: false,
            scale_embeddings: false,
            attn_logit_softcap: None,
            final_logit_softcap: None,
            query_pre_attn_scalar: None,
            hf_norm_plus_one: false,
            fused_projections: false,
        }
    }
}

impl DecoderConfig {
    /// The attention window of layer `l` (None = global attention).
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        let w = self.sliding_window?;
        match &self.sliding_layers {
            Some(s) if !s.get(l).copied().unwrap_or(true) => None,
            _ => Some(w),
        }
    }

    /// Sliding layers where one in `n` attends globally (llama.cpp's
    /// `set_swa_pattern`): layer l slides unless l % n == n - 1.
    pub fn every_nth_global(n: usize, layers: usize) -> Vec<bool> {
        (0..layers).map(|l| n == 0 || l % n < n - 1).collect()
    }

    /// Whether layer `l` uses the local rotary table.
    pub fn uses_local_rope(&self, l: usize) -> bool {
        self.rope_local_theta.is_some() && self.layer_window(l).is_some()
    }

    /// Attention score scale.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }
}
