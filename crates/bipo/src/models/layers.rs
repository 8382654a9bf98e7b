//! The pieces of the shared decoder block: weights, linear maps, RMSNorm, the gated
//! MLP, and the block itself (pre-norm attention and MLP with residual adds; Gemma's
//! "sandwich" norms after each sub-layer when the config asks for them).
//!
//! Two paths run through the same weights, picked per call by [`Mode`]:
//! - [`Mode::Fast`]: candle's fused ops and quantized matmul (activations quantized to 8
//!   bits as llama.cpp does). None of them has a backward pass.
//! - [`Mode::Differentiable`]: the same maths from ops with a backward pass
//!   ([`crate::kernels::fused`], [`crate::kernels::ops`] or elementary candle ops), for
//!   training steering vectors.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Module, Tensor, D};

use super::attention::{Attention, LayerCache, StepCtx};
pub use super::config::{Activation, DecoderConfig};
use super::rope::Rope;
use crate::error::{Error, Result};
use crate::kernels::quant::{QBlocks, QBlocksMatMul};

/// Which implementation of each op a forward pass uses (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused, quantized, inference-only ops.
    #[default]
    Fast,
    /// Ops with a backward pass.
    Differentiable,
}

/// Whether the fused CPU ops with hand-written backward apply (f32 on CPU); other
/// devices and dtypes use elementary ops.
pub(crate) fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// A weight as loaded: kept quantized (GGUF) or dense (safetensors, F32/F16 GGUF tensors).
#[derive(Clone, Debug)]
pub enum Weight {
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: bipo's own kernels ([`QBlocks`]).
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

    /// Where the weight lives (bipo's own blocks are always in host memory).
    pub fn device(&self) -> Device {
        match self {
            Weight::Blocks(_) => Device::Cpu,
            Weight::Quantized(q) => q.device(),
            Weight::Dense(t) => t.device().clone(),
        }
    }

    /// Shape, outermost first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Blocks(b) => vec![b.dims().0, b.dims().1],
            Weight::Quantized(q) => q.shape().dims().to_vec(),
            Weight::Dense(t) => t.dims().to_vec(),
        }
    }

    /// Rows `start..start + n` of a 2-D weight (splitting fused projections). Quantized
    /// rows are whole blocks, so this moves bytes and never dequantizes.
    pub fn rows(&self, start: usize, n: usize) -> Result<Weight> {
        let dims = self.dims();
        if dims.len() != 2 || start + n > dims[0] {
            return Err(Error::invalid(
                "weight rows",
                format!("{start}..{} of a {dims:?} weight", start + n),
            ));
        }
        Ok(match self {
            Weight::Blocks(b) => Weight::Blocks(Arc::new(b.rows(start, n))),
            Weight::Quantized(q) => {
                let dt = q.dtype();
                let row_bytes = dims[1] / dt.block_size() * dt.type_size();
                let data = q.data()?;
                let bytes = data[start * row_bytes..(start + n) * row_bytes].to_vec();
                let st = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Owned(bytes),
                    &q.device(),
                    dt,
                )?;
                Weight::Quantized(Arc::new(QTensor::new(st, (n, dims[1]))?))
            }
            Weight::Dense(t) => Weight::Dense(t.narrow(0, start, n)?.contiguous()?),
        })
    }
}

/// How the differentiable (training) path uses quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainWeights {
    /// As stored, at speed: panels dequantized on the fly, rounded to bf16 with the
    /// activations (or gradients) and multiplied with f32 sums, both ways, where the CPU
    /// does that faster than f32 ([`crate::kernels::bf16::preferred`]; else f32). Gradients pass the rounding straight through. No
    /// f32 copy.
    #[default]
    Fast,
    /// As stored, in f32: panels dequantized on the fly and multiplied in f32 both ways;
    /// equal to [`TrainWeights::F32`] up to the order of f32 additions. No f32 copy.
    Stored,
    /// A full f32 copy made on first use (the reference path, for checking).
    F32,
}

impl TrainWeights {
    /// The mode's `--train-dtype` name.
    pub fn name(self) -> &'static str {
        match self {
            TrainWeights::Fast => "fast",
            TrainWeights::Stored => "stored",
            TrainWeights::F32 => "f32",
        }
    }

    /// The arithmetic this mode runs on this CPU, in words.
    pub fn arithmetic(self) -> &'static str {
        match self {
            TrainWeights::Fast => crate::kernels::bf16::arithmetic(),
            TrainWeights::Stored => "f32 products",
            TrainWeights::F32 => "f32 products on a dequantized copy",
        }
    }
}

/// `y = x W^T (+ b)`.
#[derive(Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    dtype: DType,
    /// Dequantized weight for the differentiable path ([`TrainWeights::F32`], or on
    /// devices and dtypes without the panel kernels), made on first use so that
    /// inference never pays its memory.
    dense: OnceLock<Tensor>,
    pub(crate) train: TrainWeights,
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
            train: TrainWeights::default(),
        })
    }

    /// The weight as a dense tensor (out, in).
    pub fn dense_weight(&self) -> Result<&Tensor> {
        if let Some(w) = self.dense.get() {
            return Ok(w);
        }
        let w = match &self.weight {
            Weight::Dense(t) => t.clone(),
            q => q.to_dense(&q.device(), self.dtype)?,
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
            (Weight::Blocks(b), Mode::Differentiable)
                if self.train != TrainWeights::F32 && cpu_f32(xs) =>
            {
                crate::kernels::panels::quant_linear(xs, b, self.train == TrainWeights::Fast)?
            }
            (_, Mode::Differentiable) if xs.device().is_cpu() && self.dtype == DType::F32 => {
                crate::kernels::ops::frozen_linear(xs, self.dense_weight()?)?
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

/// Root-mean-square layer norm: `x / sqrt(mean(x^2) + eps) * w` over the last axis.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The scale as f32 values (for the fused CPU attention's q/k norms).
    pub fn weight_f32(&self) -> Result<Vec<f32>> {
        Ok(self.weight.to_dtype(DType::F32)?.to_vec1()?)
    }

    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Fast => Ok(candle_nn::ops::rms_norm(
                &xs.contiguous()?,
                &self.weight,
                self.eps as f32,
            )?),
            Mode::Differentiable if cpu_f32(xs) => {
                crate::kernels::fused::rms_norm(xs, &self.weight, self.eps)
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

/// Gated feed-forward: `down(act(gate(x)) * up(x))`, act = SiLU (SwiGLU) or tanh-GELU
/// (GeGLU).
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub activation: Activation,
}

impl Mlp {
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs, mode)?;
        let up = self.up_proj.forward(xs, mode)?;
        let hidden = match (self.activation, mode) {
            (Activation::Silu, _) if cpu_f32(xs) => crate::kernels::fused::swiglu(&gate, &up)?,
            (Activation::Silu, Mode::Fast) => (candle_nn::Activation::Silu.forward(&gate)? * up)?,
            // silu(x) = x * sigmoid(x) from elementary ops (the fused op has no backward).
            (Activation::Silu, Mode::Differentiable) => {
                ((&gate * candle_nn::ops::sigmoid(&gate)?)? * up)?
            }
            // candle's `gelu` is the tanh approximation, with a backward pass.
            (Activation::GeluTanh, _) => (gate.gelu()? * up)?,
        };
        self.down_proj.forward(&hidden, mode)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// Norm of the attention output before the residual add (Gemma).
    pub post_attention_norm: Option<RmsNorm>,
    /// Norm before the MLP (Hugging Face `post_attention_layernorm` in Llama-like
    /// models, `pre_feedforward_layernorm` in Gemma).
    pub pre_mlp_norm: RmsNorm,
    pub mlp: Mlp,
    /// Norm of the MLP output before the residual add (Gemma).
    pub post_mlp_norm: Option<RmsNorm>,
}

impl Block {
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &StepCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        self.forward_with(xs, ctx.mode, |h| self.self_attn.forward(h, ctx, cache))
    }

    /// One step of independent sequences: the rows of xs (T, 1, hidden) are segments
    /// one after another; segment i, `(pos, len)` = `segs[i]`, is the next `len` tokens
    /// of the sequence cached in `caches[i]`, from position `pos`.
    pub fn forward_segments(
        &self,
        xs: &Tensor,
        segs: &[(usize, usize)],
        ropes: (&Rope, Option<&Rope>),
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        self.forward_with(xs, Mode::Fast, |h| {
            self.self_attn.forward_segments(h, segs, ropes, caches)
        })
    }

    /// The block around a given attention call.
    fn forward_with(
        &self,
        xs: &Tensor,
        mode: Mode,
        attention: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(xs, mode)?;
        let mut h = attention(&h)?;
        if let Some(n) = &self.post_attention_norm {
            h = n.forward(&h, mode)?;
        }
        let xs = (xs + h)?;
        let h = self.pre_mlp_norm.forward(&xs, mode)?;
        let mut h = self.mlp.forward(&h, mode)?;
        if let Some(n) = &self.post_mlp_norm {
            h = n.forward(&h, mode)?;
        }
        Ok((xs + h)?)
    }
}
