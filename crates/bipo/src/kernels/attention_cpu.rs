//! Fused CPU attention for the inference path: rotary embedding, KV-cache append and
//! causal (optionally windowed) attention, all in f32: per query all scores, their
//! softmax, then the weighted values, each a loop that vectorizes (AVX2 when present).
//!
//! One call replaces about fifteen small tensor ops per layer (reshapes, rope, repeat,
//! two matmuls, softmax), whose fixed costs dominate decode time on a small model.
//! Emulating llama.cpp's f16 KV cache and f16 flash-attention accumulation was measured
//! and did not bring log-probabilities closer to llama.cpp's (see BENCHMARKS.md), so the
//! cache stays f32.

use rayon::prelude::*;

use super::simd::{axpy, dot, exp_in_place, sum, with_avx2};

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
    // Each task: one (batch, head) pair, all its queries. Per query: every score, then
    // their softmax, then the weighted sum of values (three independent loops that
    // vectorize, instead of one online-softmax chain through the keys).
    let run = |(bh, o): (usize, &mut Vec<f32>)| {
        with_avx2(
            #[inline(always)]
            || {
                let (bi, hi) = (bh / h, bh % h);
                let g = hi / rep;
                let (kc, vc) = (&cache.k[bi * kvh + g], &cache.v[bi * kvh + g]);
                let mut scores = vec![0f32; total];
                for ti in 0..t {
                    let qpos = pos + ti;
                    let row = (bi * t + ti) * h * hd + hi * hd;
                    let qh = &q[row..row + hd];
                    let first = match sh.window {
                        Some(w) => (qpos + 1).saturating_sub(w),
                        None => 0,
                    };
                    let keys = first..qpos.min(total - 1) + 1;
                    let sc = &mut scores[..keys.len()];
                    for (s, j) in sc.iter_mut().zip(keys.clone()) {
                        *s = dot(&kc[j * hd..(j + 1) * hd], qh) * scale;
                    }
                    if let Some(cap) = sh.softcap {
                        sc.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
                    }
                    let m = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    sc.iter_mut().for_each(|s| *s -= m);
                    exp_in_place(sc);
                    let inv = 1.0 / sum(sc);
                    let acc = &mut o[ti * hd..(ti + 1) * hd];
                    for (&p, j) in sc.iter().zip(keys) {
                        axpy(acc, p, &vc[j * hd..(j + 1) * hd]);
                    }
                    acc.iter_mut().for_each(|a| *a *= inv);
                }
            },
        )
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
