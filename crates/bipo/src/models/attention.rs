//! Grouped-query self-attention with rotary embeddings, optional per-head q/k norms,
//! score soft-capping and a sliding window; the masks it needs; the KV cache.

use candle_core::{DType, Device, Tensor, D};

use super::layers::{cpu_f32, Linear, Mode, RmsNorm};
use super::rope::Rope;
use crate::error::Result;
use crate::kernels::attention_cpu;

/// Additive attention masks of one forward call, one per distinct window.
#[derive(Debug, Default)]
pub struct Masks {
    by_window: Vec<(Option<usize>, Option<Tensor>)>,
}

impl Masks {
    /// Causal masks for queries pos..pos+t over keys 0..pos+t, for each window.
    pub fn causal(
        t: usize,
        pos: usize,
        windows: &[Option<usize>],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut by_window = Vec::new();
        for &w in windows {
            if !by_window.iter().any(|(x, _)| *x == w) {
                by_window.push((w, attention_mask(t, pos, w, dtype, device)?));
            }
        }
        Ok(Self { by_window })
    }

    /// Per-row masks (b, 1, t, t) of packed rows: `base` (the tree mask), plus, for each
    /// window, keys `w` or more positions before the query hidden (positions (b, t)).
    pub fn packed(base: &Tensor, positions: &Tensor, windows: &[Option<usize>]) -> Result<Self> {
        let mut by_window: Vec<(Option<usize>, Option<Tensor>)> = Vec::new();
        let (b, t) = positions.dims2()?;
        let pos: Vec<u32> = positions.flatten_all()?.to_vec1()?;
        for &w in windows {
            if by_window.iter().any(|(x, _)| *x == w) {
                continue;
            }
            let mask = match w {
                None => base.clone(),
                Some(w) => {
                    let mut extra = vec![0f32; b * t * t];
                    for r in 0..b {
                        let p = &pos[r * t..(r + 1) * t];
                        for q in 0..t {
                            for k in 0..t {
                                if p[q] as i64 - p[k] as i64 >= w as i64 {
                                    extra[(r * t + q) * t + k] = f32::NEG_INFINITY;
                                }
                            }
                        }
                    }
                    let extra = Tensor::from_vec(extra, (b, 1, t, t), base.device())?
                        .to_dtype(base.dtype())?;
                    (base + extra)?
                }
            };
            by_window.push((w, Some(mask)));
        }
        Ok(Self { by_window })
    }

    /// The mask for layers with window `w`.
    pub fn get(&self, w: Option<usize>) -> Option<&Tensor> {
        self.by_window
            .iter()
            .find(|(x, _)| *x == w)
            .and_then(|(_, m)| m.as_ref())
    }
}

/// What every block of one forward call shares.
pub struct StepCtx<'a> {
    /// Position of the first token of this call.
    pub pos: usize,
    /// Rotary tables: global, and local (sliding-window layers) when they differ.
    pub rope: &'a Rope,
    pub local_rope: Option<&'a Rope>,
    pub masks: &'a Masks,
    /// Explicit (b, t) u32 position ids, for packed sequences (several responses after
    /// one prompt share positions); None = pos..pos+t. Differentiable path only.
    pub positions: Option<&'a Tensor>,
    pub mode: Mode,
}

/// A per-head norm as (f32 weight, eps), or none.
type HeadNorm = Option<(Vec<f32>, f32)>;

/// Grouped-query self-attention of one layer.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Per-head RMSNorm of queries and keys (Qwen3, Gemma-3).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub softcap: Option<f64>,
    /// This layer's window (None = global).
    pub window: Option<usize>,
    /// Whether this layer rotates with the local table.
    pub local_rope: bool,
}

impl Attention {
    fn rope<'a>(&self, ctx: &StepCtx<'a>) -> &'a Rope {
        match (self.local_rope, ctx.local_rope) {
            (true, Some(r)) => r,
            _ => ctx.rope,
        }
    }

    /// xs: (b, t, hidden) at positions ctx.pos..ctx.pos+t.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: &StepCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (pos, mode) = (ctx.pos, ctx.mode);
        let rope = self.rope(ctx);
        let mask = ctx.masks.get(self.window);
        let fused = ctx.positions.is_none() && mask.is_none_or(|m| m.rank() == 2);
        if fused && mode == Mode::Fast && xs.device().is_cpu() && xs.dtype() == DType::F32 {
            return self.forward_fused(xs, pos, rope, cache);
        }
        let cache = cache.map(|c| &mut c.candle);
        let (b, t, _) = xs.dims3()?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // (b, t, heads*hd) -> (b, heads, t, hd)
        let heads = |proj: &Linear, n: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
            let x = proj.forward(xs, mode)?.reshape((b, t, n, hd))?;
            let x = match norm {
                Some(nm) => nm.forward(&x, mode)?,
                None => x,
            };
            Ok(x.transpose(1, 2)?)
        };
        let q = heads(&self.q_proj, h, self.q_norm.as_ref())?;
        let k = heads(&self.k_proj, kvh, self.k_norm.as_ref())?;
        let v = heads(&self.v_proj, kvh, None)?;
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
        let scores = (q.matmul(&k.t()?)? * self.scale)?; // (b, kvh, rep*t, t_total)
        let scores = match self.softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
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
            Mode::Differentiable if cpu_f32(&scores) => crate::kernels::fused::softmax(&scores)?,
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

    /// The q, k and v projections of xs as flat f32 rows (the CPU inference path).
    fn qkv_f32(&self, xs: &Tensor) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let flat = |p: &Linear| -> Result<Vec<f32>> {
            Ok(p.forward(xs, Mode::Fast)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok((
            flat(&self.q_proj)?,
            flat(&self.k_proj)?,
            flat(&self.v_proj)?,
        ))
    }

    /// The per-head q and k norms as (f32 weight, eps), for [`attention_cpu`].
    fn head_norms_f32(&self) -> Result<[HeadNorm; 2]> {
        let norm = |n: &Option<RmsNorm>| -> Result<Option<(Vec<f32>, f32)>> {
            n.as_ref()
                .map(|n| Ok((n.weight_f32()?, n.eps() as f32)))
                .transpose()
        };
        Ok([norm(&self.q_norm)?, norm(&self.k_norm)?])
    }

    /// This layer's shapes and tables for [`attention_cpu::attention`].
    fn cpu_shape<'a>(
        &self,
        batch: usize,
        t: usize,
        rope: &'a Rope,
        [qn, kn]: &'a [HeadNorm; 2],
    ) -> attention_cpu::AttnShape<'a> {
        attention_cpu::AttnShape {
            batch,
            t,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            cos: &rope.cos_f32,
            sin: &rope.sin_f32,
            window: self.window,
            scale: self.scale as f32,
            softcap: self.softcap.map(|c| c as f32),
            q_norm: qn.as_ref().map(|(w, e)| (w.as_slice(), *e)),
            k_norm: kn.as_ref().map(|(w, e)| (w.as_slice(), *e)),
        }
    }

    /// The inference path on CPU: projections, then [`attention_cpu::attention`].
    fn forward_fused(
        &self,
        xs: &Tensor,
        pos: usize,
        rope: &Rope,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (mut q, mut k, v) = self.qkv_f32(xs)?;
        let norms = self.head_norms_f32()?;
        let shape = self.cpu_shape(b, t, rope, &norms);
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

impl Attention {
    /// One step of independent sequences on the CPU f32 path: the rows of xs
    /// (T, 1, hidden) are segments one after another; segment i, `(pos, len)` =
    /// `segs[i]`, is `len` tokens from position `pos`, attending over `caches[i]`. The
    /// projections run batched (each weight is streamed once for all rows); the
    /// attention runs per segment, segments in parallel.
    pub fn forward_segments(
        &self,
        xs: &Tensor,
        segs: &[(usize, usize)],
        (global, local): (&Rope, Option<&Rope>),
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        use rayon::prelude::*;
        let rows = xs.dim(0)?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let rope = match (self.local_rope, local) {
            (true, Some(r)) => r,
            _ => global,
        };
        let (mut q, mut k, mut v) = self.qkv_f32(xs)?; // (T, h*hd), (T, kvh*hd) x2
        let norms = self.head_norms_f32()?;
        // Each segment's rows of q, k and v, as disjoint slices.
        let qs = split_segments(&mut q, segs, h * hd);
        let ks = split_segments(&mut k, segs, kvh * hd);
        let vs = split_segments(&mut v, segs, kvh * hd);
        let out: Vec<Vec<f32>> = qs
            .into_par_iter()
            .zip(ks.into_par_iter())
            .zip(vs.into_par_iter())
            .zip(caches.par_iter_mut())
            .zip(segs.par_iter())
            .map(|((((q, k), v), c), &(pos, n))| {
                let shape = self.cpu_shape(1, n, rope, &norms);
                attention_cpu::attention(&shape, q, k, &*v, pos, &mut c.fast)
            })
            .collect();
        let out = Tensor::from_vec(out.concat(), (rows, 1, h * hd), xs.device())?;
        self.o_proj.forward(&out, Mode::Fast)
    }
}

/// `x` (rows of `width` values) cut into consecutive segments of `segs[i].1` rows.
fn split_segments<'a>(
    mut x: &'a mut [f32],
    segs: &[(usize, usize)],
    width: usize,
) -> Vec<&'a mut [f32]> {
    segs.iter()
        .map(|&(_, n)| {
            let (a, rest) = std::mem::take(&mut x).split_at_mut(n * width);
            x = rest;
            a
        })
        .collect()
}

/// One layer's KV cache: f32 for the fused CPU path, candle tensors otherwise.
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
