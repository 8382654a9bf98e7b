//! Steerable decoder-only language models.
//!
//! One loaded [`Model`] is immutable and shared: the KV cache and the steering are
//! passed into every forward call, so many requests (or a training loop and an
//! evaluator) can use the same weights at once.
//!
//! A new family is one file (its `Config` mirroring `config.json`, GGUF metadata
//! reading, a header doc listing its traits) plus one row in [`ARCHITECTURES`].

pub mod attention;
mod batch;
pub mod config;
pub mod gemma2;
pub mod gemma3;
pub mod layers;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod random;
pub mod rope;

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::load::weights::WeightSource;
use crate::steer::Steering;
use attention::{Attention, Masks, StepCtx};
pub use config::{Activation, DecoderConfig};
use layers::{Block, Linear, Mlp, RmsNorm};
pub use layers::{Mode, TrainWeights, Weight};
use rope::Rope;

/// One supported model family.
pub struct Architecture {
    /// Short name shown by `bipo inspect`.
    pub family: &'static str,
    /// `model_type` values in `config.json`.
    pub hf_model_types: &'static [&'static str],
    /// `general.architecture` values in GGUF files.
    pub gguf_names: &'static [&'static str],
    /// Whether llama.cpp stores this family's Q/K rows permuted (see
    /// [`crate::load::gguf::unpermute_rope_rows`]).
    pub gguf_rope_permuted: bool,
    pub from_hf: fn(&str) -> Result<DecoderConfig>,
    pub from_gguf: fn(&GgufFile) -> Result<DecoderConfig>,
}

/// Every family bipo runs.
pub const ARCHITECTURES: &[Architecture] = &[
    llama::ARCHITECTURE,
    mistral::ARCHITECTURE,
    qwen2::ARCHITECTURE,
    qwen3::ARCHITECTURE,
    gemma2::ARCHITECTURE,
    gemma3::ARCHITECTURE,
    phi3::ARCHITECTURE,
];

fn supported(names: impl Fn(&Architecture) -> &'static [&'static str]) -> String {
    ARCHITECTURES
        .iter()
        .flat_map(names)
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family whose `config.json` `model_type` is `name`.
pub fn architecture_for_hf(name: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.hf_model_types.contains(&name))
        .ok_or_else(|| Error::UnsupportedArchitecture {
            name: name.to_string(),
            supported: supported(|a| a.hf_model_types),
        })
}

/// The family whose GGUF `general.architecture` is `name`.
pub fn architecture_for_gguf(name: &str) -> Result<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .find(|a| a.gguf_names.contains(&name))
        .ok_or_else(|| Error::UnsupportedArchitecture {
            name: name.to_string(),
            supported: supported(|a| a.gguf_names),
        })
}

/// What was loaded, for `bipo inspect`, run records and vector metadata.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// Family name from [`ARCHITECTURES`].
    pub family: String,
    /// The path or Hub id the user gave.
    pub source: String,
    /// "gguf" or "safetensors".
    pub format: String,
    /// Weight storage, e.g. "Q4_1 (210), F32 (61), Q8_0 (1)" or "F32".
    pub weights: String,
    /// Compute dtype of activations.
    pub dtype: String,
    pub config: DecoderConfig,
}

/// Per-request attention cache: keys and values of every position seen so far.
pub struct KvCache {
    layers: Vec<attention::LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn new(model: &Model) -> Self {
        let layers = (0..model.cfg.num_layers)
            .map(|_| attention::LayerCache::default())
            .collect();
        Self { layers, len: 0 }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on, in every layer (which also undoes a step
    /// that failed part-way: its first layers appended keys before the length moved).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Ok(());
        }
        for c in &mut self.layers {
            if c.candle.current_seq_len() > len {
                if len > 0 {
                    return Err(Error::invalid(
                        "KV cache",
                        "this device's cache cannot be shortened, only reset",
                    ));
                }
                c.candle.reset();
            }
            c.fast.truncate(len);
        }
        self.len = len;
        Ok(())
    }

    /// Forgets every position.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|c| c.reset());
        self.len = 0;
    }
}

/// A loaded decoder-only language model.
pub struct Model {
    pub info: ModelInfo,
    cfg: DecoderConfig,
    embed_tokens: Weight,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    /// Rotary tables of the sliding-window layers when their base differs (Gemma-3).
    local_rope: Option<Rope>,
    device: Device,
    dtype: DType,
}

/// Loads one layer's weights by Hugging Face name.
struct LayerLoader<'a> {
    src: &'a mut WeightSource,
    cfg: &'a DecoderConfig,
    device: &'a Device,
    dtype: DType,
}

impl LayerLoader<'_> {
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self
            .src
            .require(&format!("{name}.weight"), &[out, inp], self.device)?;
        let b = if bias {
            Some(self.src.require_dense(
                &format!("{name}.bias"),
                &[out],
                self.device,
                self.dtype,
            )?)
        } else {
            None
        };
        Linear::new(w, b, self.dtype)
    }

    /// A norm weight; Hugging Face Gemma weights are stored as `w` for a `1 + w` scale.
    fn norm(&mut self, name: &str, width: usize) -> Result<RmsNorm> {
        let w =
            self.src
                .require_dense(&format!("{name}.weight"), &[width], self.device, self.dtype)?;
        let w = if self.cfg.hf_norm_plus_one && !self.src.is_gguf() {
            (w + 1.0)?
        } else {
            w
        };
        Ok(RmsNorm::new(w, self.cfg.rms_norm_eps))
    }

    /// The q/k/v projections, from three weights or one fused `qkv_proj` (Phi-3).
    fn qkv(&mut self, p: &str) -> Result<[Linear; 3]> {
        let (h, hd, cfg) = (self.cfg.hidden_size, self.cfg.head_dim, self.cfg);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let ab = cfg.attention_bias;
        if !cfg.fused_projections {
            return Ok([
                self.linear(&format!("{p}.q_proj"), q_out, h, ab)?,
                self.linear(&format!("{p}.k_proj"), kv_out, h, ab)?,
                self.linear(&format!("{p}.v_proj"), kv_out, h, ab)?,
            ]);
        }
        let name = format!("{p}.qkv_proj.weight");
        let w = self
            .src
            .require(&name, &[q_out + 2 * kv_out, h], self.device)?;
        Ok([
            Linear::new(w.rows(0, q_out)?, None, self.dtype)?,
            Linear::new(w.rows(q_out, kv_out)?, None, self.dtype)?,
            Linear::new(w.rows(q_out + kv_out, kv_out)?, None, self.dtype)?,
        ])
    }

    /// The gate and up projections, from two weights or one fused `gate_up_proj`.
    fn gate_up(&mut self, p: &str) -> Result<[Linear; 2]> {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        if !self.cfg.fused_projections {
            return Ok([
                self.linear(&format!("{p}.gate_proj"), i, h, false)?,
                self.linear(&format!("{p}.up_proj"), i, h, false)?,
            ]);
        }
        let w = self.src.require(
            &format!("{p}.gate_up_proj.weight"),
            &[2 * i, h],
            self.device,
        )?;
        Ok([
            Linear::new(w.rows(0, i)?, None, self.dtype)?,
            Linear::new(w.rows(i, i)?, None, self.dtype)?,
        ])
    }

    /// The down projection, with the optional bias `bipo bake` writes (it adds to the
    /// block's output exactly like steering).
    fn down(&mut self, p: &str) -> Result<Linear> {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let w = self
            .src
            .require(&format!("{p}.down_proj.weight"), &[h, i], self.device)?;
        let b = match self.src.get(&format!("{p}.down_proj.bias"), self.device)? {
            Some(b) if b.dims() == [h] => Some(b.to_dense(self.device, self.dtype)?),
            Some(b) => {
                return Err(Error::invalid(
                    "model weights",
                    format!(
                        "{p}.down_proj.bias has shape {:?}, expected [{h}]",
                        b.dims()
                    ),
                ))
            }
            None => None,
        };
        Linear::new(w, b, self.dtype)
    }

    fn block(&mut self, l: usize) -> Result<Block> {
        let cfg = self.cfg;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let p = format!("model.layers.{l}");
        let [q_proj, k_proj, v_proj] = self.qkv(&format!("{p}.self_attn"))?;
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(self.norm(&format!("{p}.self_attn.q_norm"), hd)?),
                Some(self.norm(&format!("{p}.self_attn.k_norm"), hd)?),
            )
        } else {
            (None, None)
        };
        let self_attn = Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj: self.linear(
                &format!("{p}.self_attn.o_proj"),
                h,
                cfg.num_heads * hd,
                false,
            )?,
            q_norm,
            k_norm,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            scale: cfg.attn_scale(),
            softcap: cfg.attn_logit_softcap,
            window: cfg.layer_window(l),
            local_rope: cfg.uses_local_rope(l),
        };
        let [gate_proj, up_proj] = self.gate_up(&format!("{p}.mlp"))?;
        let mlp = Mlp {
            gate_proj,
            up_proj,
            down_proj: self.down(&format!("{p}.mlp"))?,
            activation: cfg.activation,
        };
        let input_layernorm = self.norm(&format!("{p}.input_layernorm"), h)?;
        let (post_attention_norm, pre_mlp_norm, post_mlp_norm) = if cfg.sandwich_norms {
            (
                Some(self.norm(&format!("{p}.post_attention_layernorm"), h)?),
                self.norm(&format!("{p}.pre_feedforward_layernorm"), h)?,
                Some(self.norm(&format!("{p}.post_feedforward_layernorm"), h)?),
            )
        } else {
            (
                None,
                self.norm(&format!("{p}.post_attention_layernorm"), h)?,
                None,
            )
        };
        Ok(Block {
            input_layernorm,
            self_attn,
            post_attention_norm,
            pre_mlp_norm,
            mlp,
            post_mlp_norm,
        })
    }
}

impl Model {
    /// Builds the model from a weight source (Hugging Face tensor names).
    pub fn build(
        cfg: DecoderConfig,
        src: &mut WeightSource,
        info: ModelInfo,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        if cfg.num_kv_heads == 0
            || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads)
            || !cfg.head_dim.is_multiple_of(2)
        {
            return Err(Error::invalid(
                "model config",
                format!(
                    "{} heads, {} kv heads, head dim {}: heads must divide evenly and head dim be even",
                    cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
                ),
            ));
        }
        let mut loader = LayerLoader {
            src,
            cfg: &cfg,
            device,
            dtype,
        };
        let layers = (0..cfg.num_layers)
            .map(|l| loader.block(l))
            .collect::<Result<Vec<_>>>()?;
        let norm = loader.norm("model.norm", h)?;
        let embed_tokens =
            src.require("model.embed_tokens.weight", &[cfg.vocab_size, h], device)?;
        let embed_tokens = match embed_tokens {
            Weight::Dense(t) => Weight::Dense(t.to_dtype(dtype)?),
            q => q,
        };
        // Tied embeddings when the file has no separate head (SmolLM2, small Qwen2, Gemma).
        let head = match src.get("lm_head.weight", device)? {
            Some(w) if !cfg.tie_word_embeddings || w.dims() == [cfg.vocab_size, h] => w,
            _ => embed_tokens.clone(),
        };
        let n = cfg.max_position_embeddings;
        let rope = Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_freq_factors.as_deref(),
            n,
            dtype,
            device,
        )?;
        let local_rope = cfg
            .rope_local_theta
            .map(|theta| Rope::new(cfg.head_dim, theta, None, n, dtype, device))
            .transpose()?;
        Ok(Self {
            info,
            lm_head: Linear::new(head, None, dtype)?,
            embed_tokens,
            layers,
            norm,
            rope,
            local_rope,
            cfg,
            device: device.clone(),
            dtype,
        })
    }

    /// How training uses quantized weights (see [`TrainWeights`]).
    pub fn set_train_weights(&mut self, w: TrainWeights) {
        for b in &mut self.layers {
            let a = &mut b.self_attn;
            for l in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
                l.train = w;
            }
            for l in [
                &mut b.mlp.gate_proj,
                &mut b.mlp.up_proj,
                &mut b.mlp.down_proj,
            ] {
                l.train = w;
            }
        }
        self.lm_head.train = w;
    }

    /// How training uses quantized weights.
    pub fn train_weights(&self) -> TrainWeights {
        self.lm_head.train
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn num_layers(&self) -> usize {
        self.cfg.num_layers
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Longest context (prompt + generated) the model accepts.
    pub fn max_context(&self) -> usize {
        self.rope.max_positions()
    }

    /// Token embeddings (times sqrt(hidden) where the family scales them).
    /// ids: (b, t) u32 -> (b, t, hidden)
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let xs = self.embed_unscaled(ids)?;
        if !self.cfg.scale_embeddings {
            return Ok(xs);
        }
        // As Hugging Face: the factor is rounded to the activation dtype first.
        let s = Tensor::new(self.cfg.hidden_size as f32, &self.device)?
            .sqrt()?
            .to_dtype(self.dtype)?;
        Ok(xs.broadcast_mul(&s)?)
    }

    fn embed_unscaled(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match &self.embed_tokens {
            Weight::Blocks(b) => {
                let (bsz, s) = ids.dims2()?;
                let h = self.cfg.hidden_size;
                let mut out = vec![0f32; bsz * s * h];
                for (row, &id) in out
                    .chunks_exact_mut(h)
                    .zip(&ids.flatten_all()?.to_vec1::<u32>()?)
                {
                    if id as usize >= self.cfg.vocab_size {
                        return Err(Error::invalid(
                            "token id",
                            format!("{id} >= vocabulary size {}", self.cfg.vocab_size),
                        ));
                    }
                    b.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (bsz, s, h), &self.device)?.to_dtype(self.dtype)?
            }
            Weight::Quantized(q) => q.embedding(ids)?.to_dtype(self.dtype)?,
            Weight::Dense(t) => {
                let (b, s) = ids.dims2()?;
                t.index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, s, self.cfg.hidden_size))?
            }
        })
    }

    /// Runs blocks `layers` on the residual stream xs: (b, t, hidden) holding positions
    /// pos..pos+t, adding the steering after each block.
    pub fn run_blocks(
        &self,
        xs: &Tensor,
        layers: Range<usize>,
        pos: usize,
        mut cache: Option<&mut KvCache>,
        steering: &Steering,
        mode: Mode,
    ) -> Result<Tensor> {
        let t = xs.dim(1)?;
        if pos + t > self.max_context() {
            return Err(Error::invalid(
                "context length",
                format!(
                    "{} tokens exceed the model's {}",
                    pos + t,
                    self.max_context()
                ),
            ));
        }
        if layers.end > self.cfg.num_layers {
            return Err(Error::invalid(
                "layer range",
                format!("{layers:?} exceeds {} layers", self.cfg.num_layers),
            ));
        }
        let windows: Vec<Option<usize>> =
            layers.clone().map(|l| self.cfg.layer_window(l)).collect();
        let masks = Masks::causal(t, pos, &windows, self.dtype, &self.device)?;
        let ctx = StepCtx {
            pos,
            rope: &self.rope,
            local_rope: self.local_rope.as_ref(),
            masks: &masks,
            positions: None,
            mode,
        };
        let mut xs = xs.clone();
        for l in layers {
            let c = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            xs = self.layers[l].forward(&xs, &ctx, c)?;
            xs = steering.apply(l, &xs)?;
        }
        Ok(xs)
    }

    /// Runs blocks `layers` on packed rows xs: (b, t, hidden) with explicit position ids
    /// (b, t) and a per-row additive mask (b, 1, t, t), on the differentiable path.
    /// Used to share one prompt between several responses in one row.
    pub fn run_blocks_packed(
        &self,
        xs: &Tensor,
        layers: Range<usize>,
        positions: &Tensor,
        mask: &Tensor,
        steering: &Steering,
    ) -> Result<Tensor> {
        let max = positions.max_all()?.to_scalar::<u32>()? as usize;
        if max >= self.max_context() {
            return Err(Error::invalid(
                "context length",
                format!("position {max} exceeds the model's {}", self.max_context()),
            ));
        }
        let windows: Vec<Option<usize>> =
            layers.clone().map(|l| self.cfg.layer_window(l)).collect();
        let masks = Masks::packed(mask, positions, &windows)?;
        let ctx = StepCtx {
            pos: 0,
            rope: &self.rope,
            local_rope: self.local_rope.as_ref(),
            masks: &masks,
            positions: Some(positions),
            mode: Mode::Differentiable,
        };
        let mut xs = xs.clone();
        for l in layers {
            xs = self.layers[l].forward(&xs, &ctx, None)?;
            xs = steering.apply(l, &xs)?;
        }
        Ok(xs)
    }

    /// Final norm. xs: (b, t, hidden). Refuses a residual stream that is non-finite or
    /// so large that the norm's sum of squares overflows (the norm would then return
    /// zeros and every logit would be equal: garbage that looks like output).
    pub fn final_norm(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let max = xs
            .detach()
            .to_dtype(DType::F32)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let overflow = (max as f64).powi(2) * self.cfg.hidden_size as f64 > f32::MAX as f64;
        if !max.is_finite() || overflow {
            return Err(Error::NonFinite(format!(
                "the residual stream (largest magnitude {max:e}): activations overflowed; is a steering vector or multiplier far too large?"
            )));
        }
        self.norm.forward(xs, mode)
    }

    /// Vocabulary logits as f32 (soft-capped where the family caps them).
    /// xs: (..., hidden) normed -> (..., vocab)
    pub fn lm_head(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let logits = self.lm_head.forward(xs, mode)?.to_dtype(DType::F32)?;
        match self.cfg.final_logit_softcap {
            Some(cap) => Ok(((logits / cap)?.tanh()? * cap)?),
            None => Ok(logits),
        }
    }

    /// Full forward of ids (b, t) at positions pos..pos+t, returning logits (b, t, vocab)
    /// for the last `last_n` positions only (the head is the most expensive matmul).
    pub fn forward(
        &self,
        ids: &Tensor,
        pos: usize,
        mut cache: Option<&mut KvCache>,
        steering: &Steering,
        last_n: Option<usize>,
        mode: Mode,
    ) -> Result<Tensor> {
        if let Some(c) = cache.as_deref() {
            if c.len != pos {
                return Err(Error::invalid(
                    "position",
                    format!(
                        "cache holds {} positions but forward starts at {pos}",
                        c.len
                    ),
                ));
            }
        }
        let t = ids.dim(1)?;
        if pos + t > self.max_context() {
            // Checked before the embedding, which would allocate t x hidden floats.
            return Err(Error::invalid(
                "context length",
                format!(
                    "{} tokens exceed the model's context of {}",
                    pos + t,
                    self.max_context()
                ),
            ));
        }
        let xs = self.embed(ids)?;
        let xs = self.run_blocks(
            &xs,
            0..self.cfg.num_layers,
            pos,
            cache.as_deref_mut(),
            steering,
            mode,
        )?;
        if let Some(c) = cache {
            c.len += t;
        }
        let xs = match last_n {
            Some(n) if n < t => xs.narrow(1, t - n, n)?,
            _ => xs,
        };
        let xs = self.final_norm(&xs, mode)?;
        self.lm_head(&xs, mode)
    }
}
