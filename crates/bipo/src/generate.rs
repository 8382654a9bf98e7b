//! Text generation with steering: greedy or sampled, KV-cached, streaming.

use std::time::Instant;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::{KvCache, Mode, Model};
use crate::steer::{Positions, Steering};
use crate::text::Tokenizer;

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (None = all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (None = all).
    pub top_p: Option<f32>,
    /// Divide positive logits (multiply negative ones) of tokens already in the
    /// context by this factor; 1 = off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks ranges; errors name the offending value.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "temperature",
                format!("{} (must be >= 0)", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top-k", "0 (must be >= 1)"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid("top-p", format!("{p} (must be in (0, 1])")));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::invalid(
                "repetition penalty",
                format!("{} (must be > 0)", self.repetition_penalty),
            ));
        }
        Ok(())
    }
}

/// Generation settings.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop (and cut the text) when any of these appears in the output.
    pub stop_strings: Vec<String>,
    /// Stop at the model's end-of-sequence tokens.
    pub stop_at_eos: bool,
    /// Report this many top alternatives per step (log-probabilities before sampling).
    pub top_logprobs: usize,
    /// Which positions the steering is added to: all, the prompt's only (the prompt's
    /// keys and values carry it forward), or the generated tokens' only. The first
    /// generated token is predicted at the last prompt position, so `generated` leaves it
    /// unsteered.
    pub positions: Positions,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            stop_at_eos: true,
            top_logprobs: 0,
            positions: Positions::All,
        }
    }
}

/// One generated token, reported as it is produced.
#[derive(Clone, Debug, Serialize)]
pub struct TokenEvent {
    pub id: u32,
    /// The token's own text (special tokens spelled out).
    pub text: String,
    /// Log-probability of this token under the unmodified distribution.
    pub logprob: f32,
    /// The most likely tokens before sampling: (id, log-probability).
    pub top: Vec<(u32, f32)>,
    /// New visible text since the last event (special tokens dropped, held back while a
    /// stop string or a multi-byte character may still be forming).
    #[serde(skip)]
    pub text_delta: String,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

/// Result of [`generate`].
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
}

/// Natural-log softmax in f64 (accurate for reporting log-probabilities).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// `ln sum exp(x)` in f64: `x_i - log_sum_exp(x)` is entry i of [`log_softmax`].
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    crate::kernels::simd::log_sum_exp(logits)
}

/// Index of the largest value (ties: the lowest index), as `top_k_indices(xs, 1)`.
fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate().skip(1) {
        if x.total_cmp(&xs[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// Indices of the k largest values, largest first (ties: lower id first).
pub fn top_k_indices(xs: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(xs.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    let cmp = |a: &usize, b: &usize| xs[*b].total_cmp(&xs[*a]).then(a.cmp(b));
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}

/// Chooses the next token from raw logits; `context` are the tokens seen so far.
pub fn sample(logits: &[f32], context: &[u32], p: &SamplingParams, rng: &mut impl Rng) -> u32 {
    if p.repetition_penalty == 1.0 && p.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    let mut logits = logits.to_vec();
    if p.repetition_penalty != 1.0 {
        let mut seen = context.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.temperature == 0.0 {
        return top_k_indices(&logits, 1)[0] as u32;
    }
    let k = p.top_k.unwrap_or(logits.len());
    let idx = top_k_indices(&logits, k);
    let scaled: Vec<f32> = idx.iter().map(|&i| logits[i] / p.temperature).collect();
    let probs: Vec<f64> = log_softmax(&scaled)
        .iter()
        .map(|&l| (l as f64).exp())
        .collect();
    // Nucleus: smallest prefix (probabilities are sorted) reaching top_p.
    let mut keep = probs.len();
    if let Some(tp) = p.top_p {
        let mut acc = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            acc += pr;
            if acc >= tp as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut r = rng.random::<f64>() * total;
    for i in 0..keep {
        r -= probs[i];
        if r <= 0.0 {
            return idx[i] as u32;
        }
    }
    idx[keep - 1] as u32
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string.
fn stop_holdback(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

/// The sampling and stopping state of one generation, fed one logits row at a time:
/// shared by [`generate`] and the batched engine ([`crate::engine`]), so both choose
/// the same tokens, report the same events and stop at the same place.
pub struct Decoder {
    opts: GenerateOptions,
    rng: rand::rngs::StdRng,
    context: Vec<u32>,
    generated: Vec<u32>,
    /// Bytes of visible text already reported.
    emitted: usize,
    visible: String,
    finish: Option<FinishReason>,
    max_context: usize,
}

impl Decoder {
    /// A decoder for a continuation of `prompt`; `max_context` is the model's.
    pub fn new(prompt: &[u32], opts: &GenerateOptions, max_context: usize) -> Result<Self> {
        opts.sampling.validate()?;
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "it is empty (no tokens)"));
        }
        Ok(Self {
            opts: opts.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(opts.sampling.seed),
            context: prompt.to_vec(),
            generated: Vec::new(),
            emitted: 0,
            visible: String::new(),
            finish: (opts.max_tokens == 0).then_some(FinishReason::Length),
            max_context,
        })
    }

    /// Chooses the next token from `logits` (the distribution after the last token)
    /// and reports it. Afterwards [`Self::finished`] says whether generation ended;
    /// if not, [`Self::last_token`] is the token to feed the model next.
    pub fn push(&mut self, tokenizer: &Tokenizer, logits: &[f32]) -> Result<TokenEvent> {
        if self.finish.is_some() {
            return Err(Error::invalid("generation", "it has already finished"));
        }
        crate::util::check_finite(
            &format!("the logits of generated token {}", self.generated.len() + 1),
            logits,
        )?;
        let opts = &self.opts;
        let next = sample(logits, &self.context, &opts.sampling, &mut self.rng);
        // log_softmax(logits)[i] without the whole vector (the engine does this per row
        // per step); the order of logits is the order of log-probabilities.
        let lse = log_sum_exp(logits);
        let lp = |i: usize| (logits[i] as f64 - lse) as f32;
        let top = top_k_indices(logits, opts.top_logprobs)
            .into_iter()
            .map(|i| (i as u32, lp(i)))
            .collect();
        let is_eos = tokenizer.eos_token_ids().contains(&next);
        self.generated.push(next);
        self.context.push(next);
        self.visible = tokenizer.decode(&self.generated, true)?;
        let stop_at = opts
            .stop_strings
            .iter()
            .filter_map(|s| self.visible.find(s.as_str()))
            .min();
        if let Some(cut) = stop_at {
            self.visible.truncate(cut);
        }
        let done = stop_at.is_some() || (is_eos && opts.stop_at_eos);
        let ready = if done {
            self.visible.len()
        } else {
            // Hold back a partial UTF-8 character and anything that may begin a stop string.
            let trimmed = self.visible.trim_end_matches('\u{FFFD}').len();
            trimmed - stop_holdback(&self.visible[..trimmed], &opts.stop_strings)
        };
        let text_delta = if ready > self.emitted {
            let d = self.visible[self.emitted..ready].to_string();
            self.emitted = ready;
            d
        } else {
            String::new()
        };
        self.finish = if stop_at.is_some() {
            Some(FinishReason::Stop)
        } else if is_eos && opts.stop_at_eos {
            Some(FinishReason::Eos)
        } else if self.generated.len() >= opts.max_tokens || self.context.len() >= self.max_context
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        Ok(TokenEvent {
            id: next,
            text: tokenizer.token_text(next)?,
            logprob: lp(next as usize),
            top,
            text_delta,
        })
    }

    /// Why generation ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The token chosen last (to feed the model next).
    pub fn last_token(&self) -> Option<u32> {
        self.generated.last().copied()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// The visible text so far (special tokens dropped, cut at a stop string).
    pub fn text(&self) -> &str {
        &self.visible
    }
}

/// Generates a continuation of `prompt` (token ids) under `steering`, calling
/// `on_token` for every token as it is produced.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    steering: &Steering,
    opts: &GenerateOptions,
    mut on_token: impl FnMut(&TokenEvent) -> Result<()>,
) -> Result<Generation> {
    let mut dec = Decoder::new(prompt, opts, model.max_context())?;
    let device = model.device();
    let mut cache = KvCache::new(model);
    let start = Instant::now();
    let unsteered = Steering::none();
    let (prompt_steering, decode_steering) = (
        if opts.positions.prompt() {
            steering
        } else {
            &unsteered
        },
        if opts.positions.generated() {
            steering
        } else {
            &unsteered
        },
    );
    let ids = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut logits = model.forward(
        &ids,
        0,
        Some(&mut cache),
        prompt_steering,
        Some(1),
        Mode::Fast,
    )?;
    let prompt_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    while dec.finished().is_none() {
        let row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        on_token(&dec.push(tokenizer, &row)?)?;
        let Some(next) = dec.last_token().filter(|_| dec.finished().is_none()) else {
            break;
        };
        let ids = Tensor::new(&[next], device)?.unsqueeze(0)?;
        logits = model.forward(
            &ids,
            cache.len(),
            Some(&mut cache),
            decode_steering,
            Some(1),
            Mode::Fast,
        )?;
    }
    Ok(Generation {
        ids: dec.generated,
        text: dec.visible,
        finish_reason: dec.finish.unwrap_or(FinishReason::Length),
        prompt_tokens: prompt.len(),
        prompt_seconds,
        decode_seconds: decode_start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k_of_one_pick_the_argmax() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(
            sample(&logits, &[], &SamplingParams::default(), &mut rng),
            1
        );
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &[], &p, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_is_reproducible_for_a_seed_and_respects_top_p() {
        let logits = [1.0, 1.0, 1.0, -10.0];
        let p = SamplingParams {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample(&logits, &[], &p, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(
            draw(3).iter().all(|&t| t != 3),
            "a token with p~1e-5 was drawn"
        );
        // top_p 0.3 keeps only the first of three equal tokens (ties: lower id first).
        let p = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.3),
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!((0..20).all(|_| sample(&logits, &[], &p, &mut rng) == 0));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let logits = [2.0, 1.9];
        let p = SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(sample(&logits, &[0], &p, &mut rng), 1);
    }

    #[test]
    fn log_softmax_normalises_and_top_k_sorts() {
        let lp = log_softmax(&[1.0, 3.0, 2.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top_k_indices(&lp, 2), vec![1, 2]);
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_back() {
        let stops = vec!["<END>".to_string()];
        assert_eq!(stop_holdback("hello <EN", &stops), 3);
        assert_eq!(stop_holdback("hello", &stops), 0);
    }

    #[test]
    fn bad_sampling_values_are_named() {
        let e = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("temperature"));
        let e = SamplingParams {
            top_p: Some(1.5),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("top-p"));
    }
}
