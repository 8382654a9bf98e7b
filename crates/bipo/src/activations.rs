//! The cached-activation engine under every method: preference pairs as token ids
//! ([`Example`], [`tokenize`]), packed so one prompt serves both responses, block L's
//! output computed once and cached, and the unsteered response log-probabilities
//! ([`Prepared`]). Objectives ([`crate::train`]: BiPO, RePS), baselines and evaluation
//! read activations and log-probabilities through it; it knows nothing of losses.
//!
//! Two ways to the same numbers: from the cache (blocks 0..=L once per example, then
//! each call runs only blocks L+1.. and the head at response positions), and
//! [`Prepared::logp_plain`] (a full forward every call, no caches: the reference
//! algorithm's cost, used to check the cached path and as the benchmark baseline).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::data::PreferencePair;
use crate::error::{Error, Result};
use crate::kernels::ops;
use crate::models::{Mode, Model};
use crate::steer::{Positions, Steering};
use crate::text::{ChatTemplate, Tokenizer};

/// One pair as token ids: a prompt and two responses (matching, opposite), each
/// response ending with the end-of-sequence token.
#[derive(Clone, Debug)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub responses: [Vec<u32>; 2],
}

impl Example {
    pub(crate) fn sequence(&self, which: usize) -> Vec<u32> {
        let mut s = self.prompt.clone();
        s.extend_from_slice(&self.responses[which]);
        s
    }
}

/// Tokenizes pairs: prompt = chat template applied to the question; responses are
/// tokenized on their own (so the prompt/response boundary is exact) plus EOS.
pub fn tokenize(
    pairs: &[PreferencePair],
    tok: &Tokenizer,
    template: &ChatTemplate,
    system: Option<&str>,
) -> Result<Vec<Example>> {
    let eos = *tok
        .eos_token_ids()
        .first()
        .ok_or_else(|| Error::Tokenizer("the model has no end-of-sequence token".into()))?;
    pairs
        .iter()
        .map(|p| {
            let prompt = tok.encode_chat(&template.question_prompt(system, &p.question)?, true)?;
            let resp = |t: &str| -> Result<Vec<u32>> {
                let mut ids = tok.encode_plain(t, false)?;
                ids.push(eos);
                Ok(ids)
            };
            Ok(Example {
                prompt,
                responses: [resp(&p.matching)?, resp(&p.not_matching)?],
            })
        })
        .collect()
}

/// Examples with their cached layer-L states and reference log-probabilities.
pub struct Prepared<'m> {
    model: &'m Model,
    layer: usize,
    pub examples: Vec<Example>,
    /// Per example: block L's output on its packed row, (tokens, hidden). None when
    /// over the memory budget (then recomputed each step).
    prefix: Option<Vec<Tensor>>,
    /// Per example and response: unsteered summed response log-probability.
    pub ref_logp: Vec<[f32; 2]>,
    /// Which positions the steering is added to (all; the prompt's; the responses').
    positions: Positions,
    /// Blocks a trained vector steers, ascending; the first is `layer` (cached).
    steered: Vec<usize>,
}

/// Bytes per f32.
const F32_BYTES: usize = 4;
/// Examples (packed rows) per forward pass while preparing caches.
const PREPARE_BATCH: usize = 4;

impl<'m> Prepared<'m> {
    /// Runs blocks 0..=layer once per sequence (caching the output when it fits in
    /// `cache_budget_bytes`) and the unsteered log-probabilities.
    pub fn new(
        model: &'m Model,
        layer: usize,
        examples: Vec<Example>,
        cache_budget_bytes: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        if layer >= model.num_layers() {
            return Err(Error::invalid(
                "layer",
                format!("{layer} >= the model's {} layers", model.num_layers()),
            ));
        }
        check_lengths(model, &examples)?;
        let tokens: usize = examples
            .iter()
            .map(|e| e.prompt.len() + e.responses[0].len() + e.responses[1].len())
            .sum();
        let fits = tokens * model.hidden_size() * F32_BYTES <= cache_budget_bytes;
        let n = examples.len();
        let mut prefix: Option<Vec<Option<Tensor>>> = fits.then(|| vec![None; n]);
        let mut ref_logp = vec![[0f32; 2]; n];
        let mut p = Self {
            model,
            layer,
            examples,
            prefix: None,
            ref_logp: Vec::new(),
            positions: Positions::All,
            steered: vec![layer],
        };
        // Examples of similar length share a forward pass, so that few padded positions
        // are computed. A row's values do not depend on the rows beside it (padding is
        // masked out), only, at the last bit, on the padded length.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| p.packed_len(i));
        let mut done = 0;
        for idx in order.chunks(PREPARE_BATCH) {
            let states = p.prefix_states(idx)?;
            let lp: Vec<f32> = p.logp_from_prefix(idx, &states, None)?.to_vec1()?;
            crate::util::check_finite("the unsteered model's response log-probabilities", &lp)?;
            for (j, &i) in idx.iter().enumerate() {
                ref_logp[i] = [lp[2 * j], lp[2 * j + 1]];
                if let Some(pre) = prefix.as_mut() {
                    pre[i] = Some(states.0.get(j)?.narrow(0, 0, p.packed_len(i))?);
                }
            }
            done += idx.len();
            progress(done, n);
        }
        p.prefix = prefix.map(|pre| pre.into_iter().flatten().collect());
        p.ref_logp = ref_logp;
        Ok(p)
    }

    /// Examples packed for reading activations only: nothing cached, no reference
    /// log-probabilities. Use with [`Self::layer_states`].
    pub fn for_activations(model: &'m Model, examples: Vec<Example>) -> Result<Self> {
        check_lengths(model, &examples)?;
        Ok(Self {
            model,
            layer: 0,
            examples,
            prefix: None,
            ref_logp: Vec::new(),
            positions: Positions::All,
            steered: vec![0],
        })
    }

    /// Steers only `positions` from now on: `Prompt` the prompt tokens, `Generated` the
    /// response tokens (the position predicting a response's first token is the
    /// prompt's last, as in generation). The reference log-probabilities are unsteered
    /// and stay valid.
    pub fn set_positions(&mut self, positions: Positions) {
        self.positions = positions;
    }

    pub fn positions(&self) -> Positions {
        self.positions
    }

    /// Trains one direction per block of `layers` (ascending, the first the prepared
    /// layer, whose output stays the cached one): vectors passed to the objectives are
    /// then the directions of these layers concatenated, (layers x hidden,).
    pub fn set_layers(&mut self, layers: &[usize]) -> Result<()> {
        let ok = layers.first() == Some(&self.layer)
            && layers.windows(2).all(|w| w[0] < w[1])
            && layers.iter().all(|&l| l < self.model.num_layers());
        if !ok {
            return Err(Error::invalid(
                "layers",
                format!(
                    "{layers:?} (must ascend from the prepared layer {}, each < {})",
                    self.layer,
                    self.model.num_layers()
                ),
            ));
        }
        self.steered = layers.to_vec();
        Ok(())
    }

    /// The blocks a trained vector steers (see [`Self::set_layers`]).
    pub fn steered_layers(&self) -> &[usize] {
        &self.steered
    }

    /// `v` (layers x hidden,) times `scale`, cut into one delta per steered layer.
    fn layer_deltas(&self, v: &Tensor, scale: f64) -> Result<BTreeMap<usize, Tensor>> {
        let h = self.model.hidden_size();
        if v.dim(0)? != h * self.steered.len() {
            return Err(Error::invalid(
                "vector",
                format!(
                    "{} values for {} layer(s) of width {h}",
                    v.dim(0)?,
                    self.steered.len()
                ),
            ));
        }
        let scaled = (v * scale)?.to_dtype(self.model.dtype())?;
        if self.steered.len() == 1 {
            return Ok(BTreeMap::from([(self.layer, scaled)]));
        }
        self.steered
            .iter()
            .enumerate()
            .map(|(i, &l)| Ok((l, scaled.narrow(0, i * h, h)?)))
            .collect()
    }

    /// `v` (layers x hidden,) times `scale` as steering: the delta added to the cached
    /// layer's output and the steering of the later layers (none for one layer).
    pub(crate) fn split_vector(&self, v: &Tensor, scale: f64) -> Result<(Tensor, Steering)> {
        let mut deltas = self.layer_deltas(v, scale)?;
        let first = deltas
            .remove(&self.layer)
            .expect("the cached layer is steered");
        Ok((first, Steering::from_deltas(deltas)))
    }

    /// (rows, t, 1) 0/1 weights of the steered positions for rows laid out by `len_of`
    /// (row r holds a prompt of `prompt_of(r)` tokens followed by response tokens), or
    /// None when every position is steered.
    pub(crate) fn position_mask(
        &self,
        rows: usize,
        t: usize,
        prompt_of: impl Fn(usize) -> usize,
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        if self.positions == Positions::All {
            return Ok(None);
        }
        let mut m = vec![0f32; rows * t];
        for r in 0..rows {
            let p = prompt_of(r).min(t);
            let (lo, hi) = match self.positions {
                Positions::Prompt => (0, p),
                _ => (p, t),
            };
            m[r * t + lo..r * t + hi].iter_mut().for_each(|x| *x = 1.0);
        }
        Ok(Some(
            Tensor::from_vec(m, (rows, t, 1), self.model.device())?.to_dtype(dtype)?,
        ))
    }

    /// Unsteered outputs of each block in `layers` (ascending) on the packed rows of
    /// `idx`: one (n, T, hidden) tensor per layer. Row i holds the prompt, then the
    /// matching response, then the opposite one ([`Self::response_positions`]).
    pub fn layer_states(&self, idx: &[usize], layers: &[usize]) -> Result<Vec<Tensor>> {
        let (ids, pos, mask) = self.packed(idx)?;
        let mut xs = self.model.embed(&ids)?;
        let mut out = Vec::with_capacity(layers.len());
        let mut next = 0;
        for &l in layers {
            if l < next || l >= self.model.num_layers() {
                return Err(Error::invalid(
                    "layers",
                    format!(
                        "{layers:?}: must ascend, each < {}",
                        self.model.num_layers()
                    ),
                ));
            }
            xs = self
                .model
                .run_blocks_packed(&xs, next..l + 1, &pos, &mask, &Steering::none())?;
            out.push(xs.clone());
            next = l + 1;
        }
        Ok(out)
    }

    /// Positions of example i's (matching, opposite) response tokens in its packed row.
    pub fn response_positions(&self, i: usize) -> [std::ops::Range<usize>; 2] {
        let e = &self.examples[i];
        let (p, m, o) = (e.prompt.len(), e.responses[0].len(), e.responses[1].len());
        [p..p + m, p + m..p + m + o]
    }

    /// Whether block outputs are cached (false: recomputed every step).
    pub fn is_cached(&self) -> bool {
        self.prefix.is_some()
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Width of the model's residual stream (the vector's length).
    pub fn model_hidden_size(&self) -> usize {
        self.model.hidden_size()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Packed rows: per example `prompt ++ matching ++ opposite`, where the opposite
    /// response takes the same positions as the matching one and attends only to the
    /// prompt and itself. One prompt then serves both responses (about 1.6x fewer
    /// tokens than two full sequences), with exactly the attention each would see alone.
    /// Returns ids (n, T), positions (n, T) and the additive mask (n, 1, T, T).
    fn packed(&self, idx: &[usize]) -> Result<(Tensor, Tensor, Tensor)> {
        let t = idx.iter().map(|&i| self.packed_len(i)).max().unwrap_or(0);
        let n = idx.len();
        let (mut ids, mut pos) = (vec![0u32; n * t], vec![0u32; n * t]);
        let mut mask = vec![f32::NEG_INFINITY; n * t * t];
        for (r, &i) in idx.iter().enumerate() {
            let e = &self.examples[i];
            let (p, rm) = (e.prompt.len(), e.responses[0].len());
            let len = self.packed_len(i);
            // Segment of each token: 0 prompt, 1 matching, 2 opposite.
            let seg = |j: usize| {
                if j < p {
                    0
                } else if j < p + rm {
                    1
                } else {
                    2
                }
            };
            for (j, tok) in e
                .prompt
                .iter()
                .chain(&e.responses[0])
                .chain(&e.responses[1])
                .enumerate()
            {
                ids[r * t + j] = *tok;
                pos[r * t + j] = if seg(j) == 2 {
                    (j - rm) as u32
                } else {
                    j as u32
                };
            }
            for q in 0..t {
                let row = &mut mask[(r * t + q) * t..(r * t + q + 1) * t];
                if q >= len {
                    row[q] = 0.0; // padding attends to itself only (no empty softmax)
                    continue;
                }
                for (k, m) in row.iter_mut().enumerate().take(q + 1) {
                    if seg(k) == 0 || seg(k) == seg(q) {
                        *m = 0.0;
                    }
                }
            }
        }
        let dev = self.model.device();
        Ok((
            Tensor::from_vec(ids, (n, t), dev)?,
            Tensor::from_vec(pos, (n, t), dev)?,
            Tensor::from_vec(mask, (n, 1, t, t), dev)?.to_dtype(self.model.dtype())?,
        ))
    }

    fn packed_len(&self, i: usize) -> usize {
        let e = &self.examples[i];
        e.prompt.len() + e.responses[0].len() + e.responses[1].len()
    }

    /// Block L's output on the packed rows of `idx`: (n, T, hidden), plus positions and mask.
    pub(crate) fn prefix_states(&self, idx: &[usize]) -> Result<(Tensor, Tensor, Tensor)> {
        let (ids, pos, mask) = self.packed(idx)?;
        if let Some(pre) = &self.prefix {
            let t = ids.dim(1)?;
            let rows = idx
                .iter()
                .map(|&i| pre[i].pad_with_zeros(0, 0, t - pre[i].dim(0)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Ok((Tensor::stack(&rows, 0)?, pos, mask));
        }
        let xs = self.model.embed(&ids)?;
        let hs =
            self.model
                .run_blocks_packed(&xs, 0..self.layer + 1, &pos, &mask, &Steering::none())?;
        Ok((hs, pos, mask))
    }

    /// Summed response log-probabilities (2n,), interleaved (matching, opposite), from
    /// block L's output plus `delta`.
    pub(crate) fn logp_from_prefix(
        &self,
        idx: &[usize],
        states: &(Tensor, Tensor, Tensor),
        delta: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.logp_steered(idx, states, delta, &Steering::none())
    }

    /// Like [`Self::logp_from_prefix`], also steering the blocks after L with `later`.
    pub(crate) fn logp_steered(
        &self,
        idx: &[usize],
        states: &(Tensor, Tensor, Tensor),
        delta: Option<&Tensor>,
        later: &Steering,
    ) -> Result<Tensor> {
        let (hs, pos, mask) = states;
        let (rows, t, _) = hs.dims3()?;
        let steered =
            self.position_mask(rows, t, |r| self.examples[idx[r]].prompt.len(), hs.dtype())?;
        let xs = match (delta, &steered) {
            (Some(d), None) => hs.broadcast_add(d)?,
            (Some(d), Some(m)) => hs.broadcast_add(&m.broadcast_mul(d)?)?,
            (None, _) => hs.clone(),
        };
        let masked_later;
        let later = match &steered {
            Some(m) if !later.is_empty() => {
                masked_later = later.with_mask(m.clone());
                &masked_later
            }
            _ => later,
        };
        let n = self.model.num_layers();
        let xs = self
            .model
            .run_blocks_packed(&xs, self.layer + 1..n, pos, mask, later)?;
        // Row of the state predicting response token k, within the packed row.
        let rows = |i: usize, w: usize, k: usize| -> usize {
            let e = &self.examples[i];
            match (w, k) {
                (_, 0) => e.prompt.len() - 1,
                (0, k) => e.prompt.len() + k - 1,
                (_, k) => e.prompt.len() + e.responses[0].len() + k - 1,
            }
        };
        self.response_logp(idx, &xs, rows)
    }

    /// Head and log-softmax only at the positions that predict response tokens, summed
    /// per response: (2n,) interleaved (matching, opposite). xs: (n_rows, T, hidden);
    /// `row(i, w, k)` is the position predicting token k of response w of example i in
    /// the row that holds it (row j of xs for packed, 2j + w for unpacked).
    pub(crate) fn response_logp(
        &self,
        idx: &[usize],
        xs: &Tensor,
        row: impl Fn(usize, usize, usize) -> usize,
    ) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let packed = b == idx.len();
        let mut rows: Vec<u32> = Vec::new();
        let mut targets: Vec<u32> = Vec::new();
        let mut spans = Vec::with_capacity(2 * idx.len());
        for (j, &i) in idx.iter().enumerate() {
            for w in 0..2 {
                let r = if packed { j } else { 2 * j + w };
                let start = rows.len();
                for (k, &tok) in self.examples[i].responses[w].iter().enumerate() {
                    rows.push((r * t + row(i, w, k)) as u32);
                    targets.push(tok);
                }
                spans.push(start..rows.len());
            }
        }
        let n_tok = rows.len();
        let mut owner = vec![0f32; spans.len() * n_tok]; // (2n, n_tok) one-hot
        for (s, span) in spans.iter().enumerate() {
            owner[s * n_tok + span.start..s * n_tok + span.end]
                .iter_mut()
                .for_each(|x| *x = 1.0);
        }
        let dev = xs.device();
        let picked = xs
            .reshape((b * t, h))?
            .index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        let normed = self.model.final_norm(&picked, Mode::Differentiable)?;
        let logits = self.model.lm_head(&normed, Mode::Differentiable)?;
        let lp = ops::log_softmax_gather(&logits, &targets)?; // (n_tok,)
        let owner = Tensor::from_vec(owner, (spans.len(), n_tok), dev)?;
        Ok(owner.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?)
    }

    /// Mean over all examples of `lp(matching) - lp(opposite)` with the vector `v`
    /// (layers x hidden,) at `multiplier`, without gradients.
    pub fn mean_margin(&self, v: &Tensor, multiplier: f32, batch: usize) -> Result<f32> {
        let idx: Vec<usize> = (0..self.len()).collect();
        let mut sum = 0f64;
        let (delta, later) = self.split_vector(&v.detach(), multiplier as f64)?;
        for chunk in idx.chunks(batch.max(1)) {
            let states = self.prefix_states(chunk)?;
            let lp: Vec<f32> = self
                .logp_steered(chunk, &states, Some(&delta), &later)?
                .to_vec1()?;
            crate::util::check_finite("steered response log-probabilities", &lp)?;
            sum += lp
                .chunks_exact(2)
                .map(|p| (p[0] - p[1]) as f64)
                .sum::<f64>();
        }
        Ok((sum / self.len().max(1) as f64) as f32)
    }

    /// Per example, the summed (matching, opposite) response log-probabilities under
    /// `steering`, without gradients, `batch` examples per forward pass. Steering must
    /// not touch blocks before the prepared layer (their outputs are cached); an empty
    /// steering returns the cached unsteered values (bit-identical to multiplier 0).
    pub fn response_logps(&self, steering: &Steering, batch: usize) -> Result<Vec<[f32; 2]>> {
        if let Some(l) = steering.layers().find(|&l| l < self.layer) {
            return Err(Error::invalid(
                "steering",
                format!(
                    "layer {l} lies before the cached layer {}; prepare at layer {l} or earlier",
                    self.layer
                ),
            ));
        }
        if steering.is_empty() {
            return Ok(self.ref_logp.clone());
        }
        let later = steering.after(self.layer);
        let delta = steering.delta(self.layer);
        let idx: Vec<usize> = (0..self.len()).collect();
        let mut out = Vec::with_capacity(self.len());
        for chunk in idx.chunks(batch.max(1)) {
            let states = self.prefix_states(chunk)?;
            let lp: Vec<f32> = self
                .logp_steered(chunk, &states, delta, &later)?
                .to_vec1()?;
            crate::util::check_finite("steered response log-probabilities", &lp)?;
            out.extend(lp.chunks_exact(2).map(|p| [p[0], p[1]]));
        }
        Ok(out)
    }

    /// Summed response log-probabilities (2n,), interleaved (matching, opposite), the
    /// reference way: a full forward from the embeddings every call (no caches), with
    /// the (already scaled) vector `v` (layers x hidden,) added to the steered blocks'
    /// outputs at the steered positions.
    pub fn logp_plain(&self, idx: &[usize], v: Option<&Tensor>) -> Result<Tensor> {
        let seqs: Vec<Vec<u32>> = idx
            .iter()
            .flat_map(|&i| [0, 1].map(|w| self.examples[i].sequence(w)))
            .collect();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        // Right padding: after every real token, so the causal mask hides it.
        let flat: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(0, t - s.len())))
            .collect();
        let ids = Tensor::from_vec(flat, (seqs.len(), t), self.model.device())?;
        let m = self.model;
        let st = match v {
            None => Steering::none(),
            Some(v) => {
                let st = Steering::from_deltas(self.layer_deltas(v, 1.0)?);
                // Padded rows: sequence 2j + w is example idx[j]'s prompt then response w.
                let steered = self.position_mask(
                    seqs.len(),
                    t,
                    |r| self.examples[idx[r / 2]].prompt.len(),
                    m.dtype(),
                )?;
                match steered {
                    Some(mask) => st.with_mask(mask),
                    None => st,
                }
            }
        };
        let xs = m.embed(&ids)?;
        let xs = m.run_blocks(&xs, 0..m.num_layers(), 0, None, &st, Mode::Differentiable)?;
        self.response_logp(idx, &xs, |i, _, k| self.examples[i].prompt.len() + k - 1)
    }

    /// The model the activations come from.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub(crate) fn ref_tensor(&self, idx: &[usize]) -> Result<Tensor> {
        let r: Vec<f32> = idx.iter().flat_map(|&i| self.ref_logp[i]).collect();
        let n = r.len();
        Ok(Tensor::from_vec(r, n, self.model.device())?)
    }
}

/// Refuses, before anything is allocated for it, an example longer than the model's
/// context (prompt plus the longer response) or with an empty prompt or response.
pub fn check_lengths(model: &Model, examples: &[Example]) -> Result<()> {
    for (i, e) in examples.iter().enumerate() {
        let longest = e.prompt.len() + e.responses[0].len().max(e.responses[1].len());
        if longest > model.max_context() {
            return Err(Error::invalid(
                format!("example {}", i + 1),
                format!(
                    "{longest} tokens (prompt {} + response) exceed the model's context of {}",
                    e.prompt.len(),
                    model.max_context()
                ),
            ));
        }
        if e.prompt.is_empty() || e.responses.iter().any(Vec::is_empty) {
            return Err(Error::invalid(
                format!("example {}", i + 1),
                "its prompt or a response has no tokens",
            ));
        }
    }
    Ok(())
}
