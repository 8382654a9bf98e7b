//! Damage checks: how much steering changes the model on text that has nothing to do
//! with the behaviour. Mean KL divergence of the next-token distribution from the
//! unsteered model's, and perplexity, on neutral text.
//!
//! bipo ships its own neutral text ([`NEUTRAL_TEXT`], plain factual paragraphs written
//! for the project); each paragraph is one sequence.

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::models::{Mode, Model};
use crate::steer::Steering;
use crate::text::Tokenizer;

/// The neutral paragraphs, separated by blank lines.
pub const NEUTRAL_TEXT: &str = include_str!("../../data/neutral.txt");

/// Damage at one steering setting.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Damage {
    /// Mean over predicted tokens of KL(p_unsteered || p_steered), in nats.
    pub kl: f64,
    /// exp(mean negative log-likelihood of the next token) under the steered model.
    pub perplexity: f64,
}

/// Neutral sequences with their block-L outputs cached (steering before L is refused).
pub struct DamageSet<'m> {
    model: &'m Model,
    layer: usize,
    /// Per sequence: token ids and block L's unsteered output (1, t, hidden).
    seqs: Vec<(Vec<u32>, Tensor)>,
}

/// Splits text into paragraphs (blank-line separated), trimmed, empty ones dropped.
pub fn paragraphs(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Token ids (BOS added as the tokenizer does) of the neutral text: the paragraphs of
/// `file`, or of bipo's own [`NEUTRAL_TEXT`].
pub fn neutral_ids(tok: &Tokenizer, file: Option<&std::path::Path>) -> Result<Vec<Vec<u32>>> {
    let text = match file {
        Some(p) => crate::util::read_text(p)?,
        None => NEUTRAL_TEXT.to_string(),
    };
    paragraphs(&text)
        .iter()
        .map(|t| tok.encode(t, true))
        .collect()
}

impl<'m> DamageSet<'m> {
    /// Tokenizes `texts` (BOS added as the tokenizer does) and runs blocks 0..=layer once.
    pub fn new(model: &'m Model, tok: &Tokenizer, texts: &[String], layer: usize) -> Result<Self> {
        let ids = texts
            .iter()
            .map(|t| tok.encode_plain(t, true))
            .collect::<Result<Vec<_>>>()?;
        Self::from_ids(model, ids, layer)
    }

    /// Like [`Self::new`] from token ids; sequences shorter than two tokens are dropped.
    pub fn from_ids(model: &'m Model, ids: Vec<Vec<u32>>, layer: usize) -> Result<Self> {
        if layer >= model.num_layers() {
            return Err(Error::invalid(
                "layer",
                format!("{layer} >= the model's layers"),
            ));
        }
        let mut seqs = Vec::new();
        for ids in ids {
            if ids.len() < 2 {
                continue;
            }
            let ids = ids[..ids.len().min(model.max_context())].to_vec();
            let xs = model.embed(&Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?)?;
            let hs = model.run_blocks(&xs, 0..layer + 1, 0, None, &Steering::none(), Mode::Fast)?;
            seqs.push((ids, hs));
        }
        if seqs.is_empty() {
            return Err(Error::invalid(
                "neutral text",
                "no paragraph has two tokens",
            ));
        }
        Ok(Self { model, layer, seqs })
    }

    /// Tokens predicted per measurement (all positions but the first of each sequence).
    pub fn num_predictions(&self) -> usize {
        self.seqs.iter().map(|(ids, _)| ids.len() - 1).sum()
    }

    /// Log-softmax over the vocabulary at every position but the last: (t-1, vocab).
    fn logp(&self, hs: &Tensor, steering: &Steering) -> Result<Tensor> {
        let m = self.model;
        let xs = match steering.delta(self.layer) {
            Some(d) => hs.broadcast_add(d)?,
            None => hs.clone(),
        };
        let t = xs.dim(1)?;
        let xs = m.run_blocks(
            &xs,
            self.layer + 1..m.num_layers(),
            0,
            None,
            &steering.after(self.layer),
            Mode::Fast,
        )?;
        let xs = xs.narrow(1, 0, t - 1)?.squeeze(0)?;
        let logits = m.lm_head(&m.final_norm(&xs, Mode::Fast)?, Mode::Fast)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// Damage for each steering setting (an empty steering gives KL 0 and the
    /// unsteered perplexity).
    pub fn measure(&self, settings: &[Steering]) -> Result<Vec<Damage>> {
        if let Some(l) = settings
            .iter()
            .flat_map(|s| s.layers())
            .find(|&l| l < self.layer)
        {
            return Err(Error::invalid(
                "steering",
                format!("layer {l} lies before the cached layer {}", self.layer),
            ));
        }
        let mut kl = vec![0f64; settings.len()];
        let mut nll = vec![0f64; settings.len()];
        for (ids, hs) in &self.seqs {
            let base = self.logp(hs, &Steering::none())?;
            let p0 = base.exp()?;
            let targets = Tensor::new(&ids[1..], self.model.device())?.unsqueeze(1)?;
            for (i, s) in settings.iter().enumerate() {
                let lp = if s.is_empty() {
                    base.clone()
                } else {
                    self.logp(hs, s)?
                };
                // KL(p0 || p) per position = sum_v p0 (log p0 - log p).
                kl[i] += (&p0 * (&base - &lp)?)?.sum_all()?.to_scalar::<f32>()? as f64;
                nll[i] -= lp.gather(&targets, 1)?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let n = self.num_predictions() as f64;
        let all: Vec<f32> = kl.iter().chain(&nll).map(|&x| x as f32).collect();
        crate::util::check_finite("the damage check (KL, perplexity on neutral text)", &all)?;
        Ok(kl
            .iter()
            .zip(&nll)
            .map(|(k, l)| Damage {
                kl: k / n,
                perplexity: (l / n).exp(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_neutral_text_has_many_paragraphs() {
        let p = paragraphs(NEUTRAL_TEXT);
        assert!(p.len() >= 12, "{}", p.len());
        assert!(p.iter().all(|x| !x.contains('\n') && x.len() > 100));
    }
}
