//! `NativeModel`: a loaded model, its tokenizer and the calls that run it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bipo::generate::{generate, GenerateOptions, SamplingParams};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::Mode;
use bipo::steer::{Positions, Steering};
use bipo::text::Message;
use candle_core::Tensor;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{err, err_in, interruptible, off_gil, to_vector, RawLayers};

/// A loaded model.
#[pyclass(frozen, module = "bipo._bipo")]
pub struct NativeModel {
    pub(crate) lm: Arc<LoadedModel>,
}

impl NativeModel {
    pub(crate) fn steering(&self, vectors: Vec<(RawLayers, f32)>) -> PyResult<Steering> {
        let m = &self.lm.model;
        let mut vs = Vec::with_capacity(vectors.len());
        for (i, (layers, mult)) in vectors.into_iter().enumerate() {
            if !mult.is_finite() {
                return Err(err(format!(
                    "vectors[{i}]: multiplier {mult} is not finite"
                )));
            }
            let v = to_vector(layers, "")?;
            v.check_fits(m.hidden_size(), m.num_layers())
                .map_err(|e| err_in(format_args!("vectors[{i}]"), e))?;
            vs.push((v, mult));
        }
        Steering::from_vectors(&vs, m.device(), m.dtype()).map_err(err)
    }

    fn ids(&self, prompt: &str, chat: bool, system: Option<&str>) -> PyResult<Vec<u32>> {
        let lm = &self.lm;
        if !chat {
            return lm.tokenizer.encode(prompt, true).map_err(err);
        }
        let t = lm
            .chat_template
            .as_ref()
            .ok_or_else(|| err("the model has no chat template: pass chat=False"))?;
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", prompt));
        let p = t.render_prompt(&msgs).map_err(err)?;
        lm.tokenizer.encode_chat(&p, true).map_err(err)
    }
}

#[pymethods]
impl NativeModel {
    #[new]
    #[pyo3(signature = (path, device="cpu", lora=Vec::new()))]
    fn new(py: Python<'_>, path: String, device: &str, lora: Vec<String>) -> PyResult<Self> {
        let opts = LoadOptions {
            device: bipo::load::parse_device(device).map_err(err)?,
            lora: lora.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        let lm = py.detach(|| load(&path, &opts)).map_err(err)?;
        Ok(Self { lm: Arc::new(lm) })
    }

    /// Architecture, sizes and weights as JSON.
    fn info(&self) -> PyResult<String> {
        let m = &self.lm.model;
        let mut v = serde_json::to_value(&m.info).map_err(err)?;
        v["num_layers"] = m.num_layers().into();
        v["hidden_size"] = m.hidden_size().into();
        v["max_context"] = m.max_context().into();
        v["has_chat_template"] = self.lm.chat_template.is_some().into();
        Ok(v.to_string())
    }

    /// Token ids of a prompt (chat-templated or raw).
    #[pyo3(signature = (prompt, chat=true, system=None))]
    fn tokenize(&self, prompt: &str, chat: bool, system: Option<&str>) -> PyResult<Vec<u32>> {
        self.ids(prompt, chat, system)
    }

    /// Returns (text, ids, finish_reason, prompt_tokens).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, vectors, chat, system, max_tokens, temperature, top_p, top_k, seed, positions, stop))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        vectors: Vec<(RawLayers, f32)>,
        chat: bool,
        system: Option<&str>,
        max_tokens: usize,
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: u64,
        positions: &str,
        stop: Vec<String>,
    ) -> PyResult<(String, Vec<u32>, String, usize)> {
        let steering = self.steering(vectors)?;
        let ids = self.ids(prompt, chat, system)?;
        let positions: Positions = positions.parse().map_err(err)?;
        let opts = GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty: 1.0,
                seed,
            },
            stop_strings: stop,
            stop_at_eos: true,
            top_logprobs: 0,
            positions,
        };
        let lm = &self.lm;
        let stop = AtomicBool::new(false);
        let g = interruptible(py, &stop, None, || {
            generate(
                &lm.model,
                &lm.tokenizer,
                &ids,
                &steering,
                &opts,
                |_| match stop.load(Ordering::SeqCst) {
                    true => Err(bipo::Error::Interrupted),
                    false => Ok(()),
                },
            )
        })?;
        let finish = serde_json::to_value(g.finish_reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok((g.text, g.ids, finish, g.prompt_tokens))
    }

    /// Log-probabilities of each token of `continuation` after `prompt`, steered by
    /// `vectors` at every position. Returns (token ids, log-probabilities).
    #[pyo3(signature = (prompt, continuation, vectors, chat))]
    fn logprobs(
        &self,
        py: Python<'_>,
        prompt: &str,
        continuation: &str,
        vectors: Vec<(RawLayers, f32)>,
        chat: bool,
    ) -> PyResult<(Vec<u32>, Vec<f32>)> {
        let steering = self.steering(vectors)?;
        let head = self.ids(prompt, chat, None)?;
        let tail = self.lm.tokenizer.encode(continuation, false).map_err(err)?;
        if tail.is_empty() {
            return Err(err("continuation: it is empty (no tokens)"));
        }
        let lm = self.lm.clone();
        let lps = off_gil(py, {
            let tail = tail.clone();
            move || {
                let m = &lm.model;
                let all: Vec<u32> = head.iter().chain(&tail).copied().collect();
                let x = Tensor::new(all.as_slice(), m.device())?.unsqueeze(0)?;
                // Logits at the positions that predict the continuation.
                let logits = m.forward(&x, 0, None, &steering, Some(tail.len() + 1), Mode::Fast)?;
                let rows: Vec<Vec<f32>> = logits.squeeze(0)?.to_vec2()?;
                Ok(rows
                    .iter()
                    .zip(&tail)
                    .map(|(r, &t)| (r[t as usize] as f64 - bipo::generate::log_sum_exp(r)) as f32)
                    .collect::<Vec<f32>>())
            }
        })?;
        Ok((tail, lps))
    }

    /// Logits of every position of the token sequence `ids` (no template, no BOS
    /// added), steered by `vectors` at every position: (rows, vocab, little-endian f32
    /// bytes of the rows x vocab matrix).
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        vectors: Vec<(RawLayers, f32)>,
    ) -> PyResult<(usize, usize, Bound<'py, PyBytes>)> {
        if ids.is_empty() {
            return Err(err("ids: the sequence is empty"));
        }
        let steering = self.steering(vectors)?;
        let lm = self.lm.clone();
        let n = ids.len();
        let rows: Vec<Vec<f32>> = off_gil(py, move || {
            let m = &lm.model;
            let x = Tensor::new(ids.as_slice(), m.device())?.unsqueeze(0)?;
            let logits = m.forward(&x, 0, None, &steering, Some(n), Mode::Fast)?;
            Ok(logits.squeeze(0)?.to_vec2()?)
        })?;
        let vocab = rows.first().map_or(0, Vec::len);
        let bytes: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        Ok((n, vocab, PyBytes::new(py, &bytes)))
    }
}
