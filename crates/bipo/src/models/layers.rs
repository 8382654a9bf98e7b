//! The decoder shared by the Llama-like families (Llama, Mistral, Qwen2, SmolLM2):
//! pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings ->
//! residual add -> RMSNorm -> SwiGLU MLP -> residual add.
//!
//! Two paths run through the same weights, picked per call by [`Mode`]:
//! - [`Mode::Fast`]: candle's fused ops (`rms_norm`, `rotary_emb::rope`,
//!   `softmax_last_dim`) and quantized matmul (`QMatMul`, activations quantized to 8 bits
//!   as llama.cpp does). None of them has a backward pass.
//! - [`Mode::Differentiable`]: the same maths from elementary tensor ops (each with a
//!   backward) and dequantized f32 weights, for training steering vectors.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Module, Tensor, D};

use super::attention_cpu;
use super::qmatmul::{QBlocks, QBlocksMatMul};
use crate::error::Result;

/// Which implementation of each op a forward pass uses (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused, quantized, inference-only ops.
    #[default]
    Fast,
    /// Elementary ops with a backward pass.
    Differentiable,
}

/// Whether the fused CPU ops with hand-written backward apply (f32 on CPU); other
/// devices and dtypes use elementary ops.
fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Hyper-parameters of the shared decoder, filled in by each family's `Config`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
    /// Per-frequency divisors (Llama-3.1 "llama3" rope scaling, GGUF `rope_freqs.weight`).
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f32>>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2).
    pub attention_bias: bool,
    /// Attend only to the last `n` positions (Mistral v0.1).
    pub sliding_window: Option<usize>,
}

/// A weight as loaded: kept quantized (GGUF) or dense (safetensors, F32/F16 GGUF tensors).
#[derive(Clone, Debug)]
pub enum Weight {
    /// Q4_0/Q4_1/Q8_0, multiplied by bipo's own kernels ([`QBlocks`]).
    Blocks(Arc<QBlocks>),
    /// Other quantization types, multiplied by candle's `QMatMul`.
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Weight {
    /// The weight as a dense tensor of `dtype`.
    pub fn to_dense(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Weight::Blocks(b) => {
                let (r, c) = b.dims();
                Tensor::from_vec(b.dequantize(), (r, c), device)?.to_dtype(dtype)?
            }
            Weight::Quantized(q) => q.dequantize(device)?.to_dtype(dtype)?,
            Weight::Dense(t) => t.to_dtype(dtype)?,
        })
    }

    /// Shape, outermost first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Blocks(b) => vec![b.dims().0, b.dims().1],
            Weight::Quantized(q) => q.shape().dims().to_vec(),
            Weight::Dense(t) => t.dims().to_vec(),
        }
    }
}

/// `y = x W^T (+ b)`.
#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    dtype: DType,
    /// Dequantized weight for the differentiable path, made on first use so that pure
    /// inference never pays its memory.
    dense: OnceLock<Tensor>,
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        let weight = match weight {
            Weight::Dense(t) => Weight::Dense(t.to_dtype(dtype)?),
            q => q,
        };
        let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
        Ok(Self {
            weight,
            bias,
            dtype,
            dense: OnceLock::new(),
        })
    }

    /// The weight as a dense tensor (out, in).
    pub fn dense_weight(&self) -> Result<&Tensor> {
        if let Some(w) = self.dense.get() {
            return Ok(w);
        }
        let w = match &self.weight {
            Weight::Dense(t) => t.clone(),
            q => q.to_dense(&Device::Cpu, self.dtype)?,
        };
        Ok(self.dense.get_or_init(|| w))
    }

    /// xs: (..., in) -> (..., out)
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let ys = match (&self.weight, mode) {
            (Weight::Blocks(b), Mode::Fast) if xs.dtype() == DType::F32 => {
                xs.contiguous()?.apply_op1_no_bwd(&QBlocksMatMul(b))?
            }
            (Weight::Quantized(q), Mode::Fast) => xs.contiguous()?.apply_op1_no_bwd(q.as_ref())?,
            (_, Mode::Differentiable) if xs.device().is_cpu() && self.dtype == DType::F32 => {
                crate::train::ops::frozen_linear(xs, self.dense_weight()?)?
            }
            _ => {
                let w = self.dense_weight()?;
                let dims = xs.dims().to_vec();
                let (k, n) = (dims[dims.len() - 1], w.dim(0)?);
                // (..., k) -> (m, k) so one 2-D matmul runs instead of a batched one.
                let m = xs.elem_count() / k;
                let mut out = dims.clone();
                *out.last_mut().expect("rank >= 1") = n;
                xs.reshape((m, k))?.matmul(&w.t()?)?.reshape(out)?
            }
        };
        match &self.bias {
            Some(b) => Ok(ys.broadcast_add(b)?),
            None => Ok(ys),
        }
    }
}

/// Root-mean-square layer norm: `x / sqrt(mean(x^2) + eps) * w`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Fast => Ok(candle_nn::ops::rms_norm(
                &xs.contiguous()?,
                &self.weight,
                self.eps as f32,
            )?),
            Mode::Differentiable if cpu_f32(xs) => {
                crate::train::fused::rms_norm(xs, &self.weight, self.eps)
            }
            Mode::Differentiable => {
                // Accumulate in f32 like the fused op, whatever the model dtype.
                let dtype = xs.dtype();
                let x = xs.to_dtype(DType::F32)?;
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                let normed = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
                Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
            }
        }
    }
}

/// Rotary position embedding tables, Hugging Face "half split" convention.
#[derive(Debug)]
pub struct Rope {
    /// (max_positions, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
    /// The same tables as f32 vectors for the fused CPU attention.
    cos_f32: Vec<f32>,
    sin_f32: Vec<f32>,
}

/// Positions precomputed at load; longer contexts are refused with a clear error.
const MAX_ROPE_POSITIONS: usize = 32_768;

impl Rope {
    pub fn new(cfg: &DecoderConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
                let factor = cfg
                    .rope_freq_factors
                    .as_ref()
                    .and_then(|v| v.get(i).copied())
                    .unwrap_or(1.0) as f64;
                (f / factor) as f32
            })
            .collect();
        let n = cfg.max_position_embeddings.min(MAX_ROPE_POSITIONS);
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, n as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        Ok(Self {
            cos_f32: cos.flatten_all()?.to_vec1()?,
            sin_f32: sin.flatten_all()?.to_vec1()?,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        })
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// xs: (b, heads, t, head_dim) rotated at explicit positions (b, t), with
    /// elementary (differentiable) ops.
    pub fn forward_at(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, t) = positions.dims2()?;
        let half = xs.dim(D::Minus1)? / 2;
        let flat = positions.flatten_all()?;
        // (b*t, half) -> (b, 1, t, half), shared by every head
        if cpu_f32(xs) {
            let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
            let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
            return crate::train::fused::rope(xs, &cos, &sin);
        }
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, 1, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, 1, t, half))?;
        rope_elementary(xs, &cos, &sin)
    }

    /// xs: (b, heads, t, head_dim), rotated as positions pos..pos+t.
    pub fn forward(&self, xs: &Tensor, pos: usize, mode: Mode) -> Result<Tensor> {
        let t = xs.dim(2)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        match mode {
            Mode::Fast => Ok(candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)?),
            Mode::Differentiable if cpu_f32(xs) => crate::train::fused::rope(xs, &cos, &sin),
            Mode::Differentiable => rope_elementary(xs, &cos, &sin),
        }
    }
}

/// What every block of one forward call shares.
pub struct StepCtx<'a> {
    /// Position of the first token of this call.
    pub pos: usize,
    pub rope: &'a Rope,
    /// Additive (t, t_total) mask shared by the batch, or (b, 1, t, t_total) per row;
    /// None when every key is visible.
    pub mask: Option<&'a Tensor>,
    /// Explicit (b, t) u32 position ids, for packed sequences (several responses after
    /// one prompt share positions); None = pos..pos+t. Differentiable path only.
    pub positions: Option<&'a Tensor>,
    pub window: Option<usize>,
    pub mode: Mode,
}

/// `x * cos + rotate_half(x) * sin` from elementary ops (with backward, any device);
/// cos/sin hold the half-dimension angles, broadcastable to xs without the last axis.
fn rope_elementary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// Grouped-query self-attention.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// xs: (b, t, hidden) at positions ctx.pos..ctx.pos+t.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &StepCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (pos, rope, mask, mode) = (ctx.pos, ctx.rope, ctx.mask, ctx.mode);
        let fused = ctx.positions.is_none() && mask.is_none_or(|m| m.rank() == 2);
        if fused && mode == Mode::Fast && xs.device().is_cpu() && xs.dtype() == DType::F32 {
            return self.forward_fused(xs, pos, rope, cache, ctx.window);
        }
        let cache = cache.map(|c| &mut c.candle);
        let (b, t, _) = xs.dims3()?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // (b, t, heads*hd) -> (b, heads, t, hd)
        let q = self
            .q_proj
            .forward(xs, mode)?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(xs, mode)?
            .reshape((b, t, kvh, hd))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(xs, mode)?
            .reshape((b, t, kvh, hd))?
            .transpose(1, 2)?;
        let (q, k) = match ctx.positions {
            Some(p) => (rope.forward_at(&q, p)?, rope.forward_at(&k, p)?),
            None => (rope.forward(&q, pos, mode)?, rope.forward(&k, pos, mode)?),
        };
        let (k, v) = match cache {
            Some(c) => c.append(&k.contiguous()?, &v.contiguous()?)?,
            None => (k, v.contiguous()?),
        };
        let t_total = k.dim(2)?;
        let rep = h / kvh;
        // Group the query heads that share a kv head instead of copying K and V:
        // (b, h, t, hd) -> (b, kvh, rep*t, hd)
        let q = q.contiguous()?.reshape((b, kvh, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?; // (b, kvh, rep*t, t_total)
        let scores = match mask {
            Some(m) => scores
                .reshape((b, kvh, rep, t, t_total))?
                // (b, 1, t, T) per-row masks gain the head-group axis: (b, 1, 1, t, T).
                .broadcast_add(&if m.rank() == 4 {
                    m.unsqueeze(2)?
                } else {
                    m.clone()
                })?
                .reshape((b, kvh, rep * t, t_total))?,
            None => scores,
        };
        let probs = match mode {
            Mode::Fast => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Differentiable if cpu_f32(&scores) => crate::train::fused::softmax(&scores)?,
            Mode::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs.matmul(&v)?; // (b, kvh, rep*t, hd)
                                     // (b, kvh, rep*t, hd) -> (b, h, t, hd) -> (b, t, h*hd)
        let out = out
            .reshape((b, h, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, h * hd))?;
        self.o_proj.forward(&out, mode)
    }
}

impl Attention {
    /// The inference path on CPU: projections, then [`attention_cpu::attention`].
    fn forward_fused(
        &self,
        xs: &Tensor,
        pos: usize,
        rope: &Rope,
        cache: Option<&mut LayerCache>,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let flat = |x: Tensor| -> Result<Vec<f32>> { Ok(x.flatten_all()?.to_vec1::<f32>()?) };
        let mut q = flat(self.q_proj.forward(xs, Mode::Fast)?)?;
        let mut k = flat(self.k_proj.forward(xs, Mode::Fast)?)?;
        let v = flat(self.v_proj.forward(xs, Mode::Fast)?)?;
        let shape = attention_cpu::AttnShape {
            batch: b,
            t,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            cos: &rope.cos_f32,
            sin: &rope.sin_f32,
            window,
        };
        let mut scratch = attention_cpu::KvLayer::default();
        let (cache, pos) = match cache {
            Some(c) => (&mut c.fast, pos),
            // Without a cache, positions still start at `pos`; keys before it are absent.
            None if pos == 0 => (&mut scratch, 0),
            None => {
                return Err(crate::Error::invalid(
                    "position",
                    format!("{pos} without a KV cache (the earlier keys are needed)"),
                ))
            }
        };
        let out = attention_cpu::attention(&shape, &mut q, &mut k, &v, pos, cache);
        let out = Tensor::from_vec(out, (b, t, self.num_heads * self.head_dim), xs.device())?;
        self.o_proj.forward(&out, Mode::Fast)
    }
}

/// One layer's KV cache: f16 for the fused CPU path, candle tensors otherwise.
#[derive(Debug)]
pub struct LayerCache {
    pub fast: attention_cpu::KvLayer,
    pub candle: candle_nn::kv_cache::KvCache,
}

/// Initial capacity of each layer's candle cache; it grows by this much when full.
const KV_CACHE_CHUNK: usize = 512;

impl Default for LayerCache {
    fn default() -> Self {
        Self {
            fast: Default::default(),
            candle: candle_nn::kv_cache::KvCache::new(2, KV_CACHE_CHUNK),
        }
    }
}

impl LayerCache {
    pub fn reset(&mut self) {
        self.fast.reset();
        self.candle.reset();
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs, mode)?;
        if mode == Mode::Differentiable && cpu_f32(xs) {
            let up = self.up_proj.forward(xs, mode)?;
            return self
                .down_proj
                .forward(&crate::train::fused::swiglu(&gate, &up)?, mode);
        }
        let gate = match mode {
            Mode::Fast => candle_nn::Activation::Silu.forward(&gate)?,
            // silu(x) = x * sigmoid(x) from elementary ops (the fused op has no backward).
            Mode::Differentiable => (&gate * candle_nn::ops::sigmoid(&gate)?)?,
        };
        let up = self.up_proj.forward(xs, mode)?;
        self.down_proj.forward(&(gate * up)?, mode)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &StepCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let mode = ctx.mode;
        let h = self.input_layernorm.forward(xs, mode)?;
        let h = self.self_attn.forward(&h, ctx, cache)?;
        let xs = (xs + h)?;
        let h = self.post_attention_layernorm.forward(&xs, mode)?;
        let h = self.mlp.forward(&h, mode)?;
        Ok((xs + h)?)
    }
}

/// Additive attention mask for queries at positions pos..pos+t over keys 0..pos+t:
/// causal, and limited to the last `window` keys when a sliding window is set.
/// Returns None when every query may see every key (single-token decode, no window hit).
pub fn attention_mask(
    t: usize,
    pos: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = pos + t;
    let window_hit = window.is_some_and(|w| total > w);
    if t == 1 && !window_hit {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let qpos = pos + i;
            (0..total).map(move |j| {
                let future = j > qpos;
                let too_old = window.is_some_and(|w| qpos - j.min(qpos) >= w);
                if future || too_old {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(mask, (t, total), device)?.to_dtype(dtype)?,
    ))
}
