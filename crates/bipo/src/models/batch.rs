//! One decode step for many independent sequences (continuous batching): row i is the
//! next token of sequence i, at its own position, attending over its own KV cache,
//! with its own steering. Every weight is streamed once per step for all rows, which
//! is where batching gains its throughput; the attention runs per row.

use candle_core::{DType, Tensor};

use super::{KvCache, Mode, Model};
use crate::error::{Error, Result};
use crate::steer::Steering;

impl Model {
    /// Feeds `tokens[i]` to the sequence cached in `caches[i]` (at position
    /// `caches[i].len()`) and returns the next-token logits, (b, vocab) f32.
    /// `steering` holds shared or per-row deltas (see [`Steering::from_row_deltas`]).
    ///
    /// Each row's result equals a single-sequence [`Model::forward`] of that token.
    /// On CPU f32 the rows run as one batch; elsewhere one at a time.
    pub fn decode_rows(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        steering: &Steering,
    ) -> Result<Tensor> {
        let b = tokens.len();
        if b == 0 || caches.len() != b {
            return Err(Error::invalid(
                "decode batch",
                format!("{b} tokens for {} caches", caches.len()),
            ));
        }
        if let Some(c) = caches.iter().find(|c| c.len() + 1 > self.max_context()) {
            return Err(Error::invalid(
                "context length",
                format!(
                    "{} tokens exceed the model's context of {}",
                    c.len() + 1,
                    self.max_context()
                ),
            ));
        }
        let batched = self.device.is_cpu() && self.dtype == DType::F32 && b > 1;
        if !batched {
            let mut rows = Vec::with_capacity(b);
            for (i, (&t, c)) in tokens.iter().zip(caches.iter_mut()).enumerate() {
                let ids = Tensor::new(&[t], &self.device)?.unsqueeze(0)?;
                let pos = c.len();
                let s = steering.row(i)?;
                rows.push(self.forward(&ids, pos, Some(c), &s, Some(1), Mode::Fast)?);
            }
            // b x (1, 1, vocab) -> (b, vocab)
            return Ok(Tensor::cat(&rows, 0)?.squeeze(1)?);
        }
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(1)?; // (b, 1)
        let mut xs = self.embed(&ids)?; // (b, 1, hidden)
        let ropes = (&self.rope, self.local_rope.as_ref());
        for (l, block) in self.layers.iter().enumerate() {
            let mut layer: Vec<&mut _> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            xs = block.forward_rows(&xs, &positions, ropes, &mut layer)?;
            xs = steering.apply(l, &xs)?;
        }
        for c in caches.iter_mut() {
            c.len += 1;
        }
        let xs = self.final_norm(&xs, Mode::Fast)?;
        Ok(self.lm_head(&xs, Mode::Fast)?.squeeze(1)?)
    }
}
