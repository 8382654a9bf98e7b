//! Rotary position embedding tables, Hugging Face "half split" convention.

use candle_core::{DType, Device, Tensor, D};

use super::layers::{cpu_f32, Mode};
use crate::error::Result;

/// Positions precomputed at load; longer contexts are refused with a clear error.
pub const MAX_ROPE_POSITIONS: usize = 32_768;

/// cos/sin tables of one rotary base.
#[derive(Debug)]
pub struct Rope {
    /// (max_positions, head_dim / 2)
    cos: Tensor,
    sin: Tensor,
    /// The same tables as f32 vectors for the fused CPU attention.
    pub(crate) cos_f32: Vec<f32>,
    pub(crate) sin_f32: Vec<f32>,
}

impl Rope {
    /// Tables for base `theta`, each frequency divided by its factor (rope scaling).
    pub fn new(
        head_dim: usize,
        theta: f64,
        factors: Option<&[f32]>,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let factor = factors.and_then(|v| v.get(i).copied()).unwrap_or(1.0) as f64;
                (f / factor) as f32
            })
            .collect();
        let n = max_positions.min(MAX_ROPE_POSITIONS);
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
    /// differentiable ops.
    pub fn forward_at(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, t) = positions.dims2()?;
        let half = xs.dim(D::Minus1)? / 2;
        let flat = positions.flatten_all()?;
        // (b*t, half) -> (b, 1, t, half), shared by every head
        if cpu_f32(xs) {
            let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
            let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
            return crate::kernels::fused::rope(xs, &cos, &sin);
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
            Mode::Differentiable if cpu_f32(xs) => crate::kernels::fused::rope(xs, &cos, &sin),
            Mode::Differentiable => rope_elementary(xs, &cos, &sin),
        }
    }
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
