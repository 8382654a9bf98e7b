//! Fused CPU attention for the inference path: rotary embedding, KV-cache append and
//! causal (optionally windowed) attention with an online softmax, all in f32.
//!
//! One call replaces about fifteen small tensor ops per layer (reshapes, rope, repeat,
//! two matmuls, softmax), whose fixed costs dominate decode time on a small model.
//! Emulating llama.cpp's f16 KV cache and f16 flash-attention accumulation was measured
//! and did not bring log-probabilities closer to llama.cpp's (see BENCHMARKS.md), so the
//! cache stays f32.

use rayon::prelude::*;

/// (query position, key position) pairs above which heads run in parallel.
const PARALLEL_WORK: usize = 4096;

/// One layer's cache: per (batch, kv head), `len * head_dim` keys and values.
#[derive(Clone, Debug, Default)]
pub struct KvLayer {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvLayer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let hd = self.k.first().map_or(0, |k| k.len() / self.len.max(1));
        for x in self.k.iter_mut().chain(self.v.iter_mut()) {
            x.truncate(len * hd);
        }
        self.len = len;
    }
}

/// Shapes and tables for one call.
pub struct AttnShape<'a> {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Rotary tables (max_positions, head_dim / 2), row-major.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub window: Option<usize>,
    /// Score scale (1/sqrt(head_dim) unless the model says otherwise).
    pub scale: f32,
    /// Scores soft-capped as `cap * tanh(s / cap)` (Gemma-2).
    pub softcap: Option<f32>,
    /// Per-head RMSNorm (weight, eps) of queries and keys before rotation.
    pub q_norm: Option<(&'a [f32], f32)>,
    pub k_norm: Option<(&'a [f32], f32)>,
}

/// In-place RMSNorm of one head vector.
fn head_norm(x: &mut [f32], norm: Option<(&[f32], f32)>) {
    if let Some((w, eps)) = norm {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * r * w);
    }
}

/// f32 dot product in eight independent lanes so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Rotates one head vector in place at position `pos` (Hugging Face half split).
fn rope(x: &mut [f32], pos: usize, cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (c, s) = (
        &cos[pos * half..(pos + 1) * half],
        &sin[pos * half..(pos + 1) * half],
    );
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
    }
}

/// q: (b, t, heads*hd), k/v: (b, t, kv_heads*hd), positions pos..pos+t, all f32
/// row-major and not yet rotated. Appends k/v to `cache` and returns (b, t, heads*hd).
pub fn attention(
    sh: &AttnShape,
    q: &mut [f32],
    k: &mut [f32],
    v: &[f32],
    pos: usize,
    cache: &mut KvLayer,
) -> Vec<f32> {
    let (b, t, h, kvh, hd) = (sh.batch, sh.t, sh.heads, sh.kv_heads, sh.head_dim);
    if cache.k.is_empty() {
        cache.k = vec![Vec::new(); b * kvh];
        cache.v = vec![Vec::new(); b * kvh];
    }
    assert_eq!(cache.k.len(), b * kvh, "KV cache batch size changed");
    assert_eq!(cache.len, pos, "KV cache length != position");
    for bi in 0..b {
        for ti in 0..t {
            let p = pos + ti;
            let row = (bi * t + ti) * h * hd;
            q[row..row + h * hd].chunks_exact_mut(hd).for_each(|x| {
                head_norm(x, sh.q_norm);
                rope(x, p, sh.cos, sh.sin)
            });
            let row = (bi * t + ti) * kvh * hd;
            for g in 0..kvh {
                let kx = &mut k[row + g * hd..row + (g + 1) * hd];
                head_norm(kx, sh.k_norm);
                rope(kx, p, sh.cos, sh.sin);
                cache.k[bi * kvh + g].extend_from_slice(kx);
                let vx = &v[row + g * hd..row + (g + 1) * hd];
                cache.v[bi * kvh + g].extend_from_slice(vx);
            }
        }
    }
    cache.len += t;
    let total = cache.len;
    let scale = sh.scale;
    let rep = h / kvh;
    let mut out = vec![0f32; b * t * h * hd];
    // Each task: one (batch, head) pair, all its queries.
    let run = |(bh, o): (usize, &mut Vec<f32>)| {
        let (bi, hi) = (bh / h, bh % h);
        let g = hi / rep;
        let (kc, vc) = (&cache.k[bi * kvh + g], &cache.v[bi * kvh + g]);
        let mut acc = vec![0f32; hd];
        for ti in 0..t {
            let qpos = pos + ti;
            let row = (bi * t + ti) * h * hd + hi * hd;
            let qh = &q[row..row + hd];
            acc.iter_mut().for_each(|a| *a = 0.0);
            let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
            let first = match sh.window {
                Some(w) => (qpos + 1).saturating_sub(w),
                None => 0,
            };
            for j in first..=qpos.min(total - 1) {
                let kj = &kc[j * hd..(j + 1) * hd];
                let mut score = dot(kj, qh) * scale;
                if let Some(cap) = sh.softcap {
                    score = cap * (score / cap).tanh();
                }
                // Online softmax: rescale the running sum when a larger score arrives.
                let (mut ms, mut vs) = (1f32, 1f32);
                if score > m {
                    ms = (m - score).exp();
                    m = score;
                    acc.iter_mut().for_each(|a| *a *= ms);
                } else {
                    vs = (score - m).exp();
                }
                let vj = &vc[j * hd..(j + 1) * hd];
                acc.iter_mut().zip(vj).for_each(|(a, x)| *a += x * vs);
                s = s * ms + vs;
            }
            let inv = 1.0 / s;
            for (d, a) in acc.iter().enumerate() {
                o[ti * hd + d] = a * inv;
            }
        }
    };
    let mut per_head: Vec<Vec<f32>> = vec![vec![0f32; t * hd]; b * h];
    if t * total >= PARALLEL_WORK {
        per_head.par_iter_mut().enumerate().for_each(run);
    } else {
        per_head.iter_mut().enumerate().for_each(run);
    }
    // (b, h, t, hd) -> (b, t, h*hd)
    for (bh, o) in per_head.iter().enumerate() {
        let (bi, hi) = (bh / h, bh % h);
        for ti in 0..t {
            let dst = (bi * t + ti) * h * hd + hi * hd;
            out[dst..dst + hd].copy_from_slice(&o[ti * hd..(ti + 1) * hd]);
        }
    }
    out
}
