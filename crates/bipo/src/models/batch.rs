//! One forward pass over many independent sequences (continuous batching): segment i
//! is the next `lens[i]` tokens of sequence i — one token for a sequence that is
//! generating, a chunk of its prompt for one that is prefilling — at its own
//! position, attending over its own KV cache, with its own steering. Every weight is
//! streamed once per pass for all tokens, which is where batching gains its
//! throughput; the attention runs per segment.

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
    pub fn decode_rows(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        steering: &Steering,
    ) -> Result<Tensor> {
        self.forward_segments(tokens, &vec![1; tokens.len()], caches, steering)
    }

    /// Feeds segment i — the next `lens[i]` of `tokens` (segments one after another) —
    /// to the sequence cached in `caches[i]`, from position `caches[i].len()`, and
    /// returns the next-token logits after each segment's last token, (b, vocab) f32.
    /// `steering` holds shared deltas or one row per segment, added to all its tokens.
    ///
    /// Each segment's result (logits and cache) equals a single-sequence
    /// [`Model::forward`] of its tokens. On CPU f32 the segments run as one batch;
    /// elsewhere one at a time.
    pub fn forward_segments(
        &self,
        tokens: &[u32],
        lens: &[usize],
        caches: &mut [&mut KvCache],
        steering: &Steering,
    ) -> Result<Tensor> {
        let b = lens.len();
        if b == 0
            || caches.len() != b
            || lens.contains(&0)
            || lens.iter().sum::<usize>() != tokens.len()
        {
            return Err(Error::invalid(
                "batch",
                format!(
                    "{} tokens in segments of {lens:?} for {} caches",
                    tokens.len(),
                    caches.len()
                ),
            ));
        }
        if let Some((c, n)) = caches
            .iter()
            .zip(lens)
            .find(|(c, &n)| c.len() + n > self.max_context())
        {
            return Err(Error::invalid(
                "context length",
                format!(
                    "{} tokens exceed the model's context of {}",
                    c.len() + n,
                    self.max_context()
                ),
            ));
        }
        let batched = self.device.is_cpu() && self.dtype == DType::F32 && b > 1;
        if !batched {
            let mut rows = Vec::with_capacity(b);
            let mut from = 0;
            for (i, (&n, c)) in lens.iter().zip(caches.iter_mut()).enumerate() {
                let ids = Tensor::new(&tokens[from..from + n], &self.device)?.unsqueeze(0)?;
                let pos = c.len();
                let s = steering.row(i)?;
                rows.push(self.forward(&ids, pos, Some(c), &s, Some(1), Mode::Fast)?);
                from += n;
            }
            // b x (1, 1, vocab) -> (b, vocab)
            return Ok(Tensor::cat(&rows, 0)?.squeeze(1)?);
        }
        let segs: Vec<(usize, usize)> = caches
            .iter()
            .map(|c| c.len())
            .zip(lens.iter().copied())
            .collect();
        // Row r of the batch is a token of segment seg_of[r]: per-row steering repeats
        // each segment's row for its tokens (nothing to do when every segment is 1).
        let steering = if lens.iter().all(|&n| n == 1) {
            steering.clone()
        } else {
            let seg_of: Vec<u32> = (0..b as u32)
                .flat_map(|i| std::iter::repeat_n(i, lens[i as usize]))
                .collect();
            steering.select_rows(&seg_of)?
        };
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(1)?; // (T, 1)
        let mut xs = self.embed(&ids)?; // (T, 1, hidden)
        let ropes = (&self.rope, self.local_rope.as_ref());
        for (l, block) in self.layers.iter().enumerate() {
            let mut layer: Vec<&mut _> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            xs = block.forward_segments(&xs, &segs, ropes, &mut layer)?;
            xs = steering.apply(l, &xs)?;
        }
        for (c, &n) in caches.iter_mut().zip(lens) {
            c.len += n;
        }
        // Each segment's last token: (T, 1, hidden) -> (b, 1, hidden).
        let last: Vec<u32> = lens
            .iter()
            .scan(0u32, |end, &n| {
                *end += n as u32;
                Some(*end - 1)
            })
            .collect();
        if last.len() < tokens.len() {
            xs = xs.index_select(&Tensor::new(last, &self.device)?, 0)?;
        }
        let xs = self.final_norm(&xs, Mode::Fast)?;
        Ok(self.lm_head(&xs, Mode::Fast)?.squeeze(1)?)
    }
}
