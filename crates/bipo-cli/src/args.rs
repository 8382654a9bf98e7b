//! Arguments shared by several commands, and their validation into library types.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bipo::load::{LoadOptions, LoadedModel};
use bipo::steer::Steering;
use bipo::text::{ChatTemplate, Message};
use bipo::SteeringVector;
use candle_core::DType;
use clap::Args;

/// Clap parser for counts that must be at least 1.
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be >= 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Which model to load.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF file, Hugging Face model folder, or Hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct).
    #[arg(
        long,
        short = 'm',
        value_name = "FILE|FOLDER|HUB-ID",
        env = "BIPO_MODEL"
    )]
    pub model: String,
    /// Device: cpu, cuda, cuda:N, metal or metal:N (the GPU backends need a build with
    /// `--features cuda` or `metal`).
    #[arg(
        long,
        value_name = "DEVICE",
        default_value = "cpu",
        env = "BIPO_DEVICE"
    )]
    pub device: String,
    /// Compute dtype for safetensors models: f32, bf16 or f16.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Training through quantized weights, none of which copies the model to f32:
    /// `fast` multiplies dequantized panels and activations rounded to bf16, with f32
    /// sums (f32 products without AVX-512 BF16); `stored` multiplies the panels in f32;
    /// `f32` dequantizes a full copy first (the reference path).
    #[arg(long, value_name = "fast|stored|f32", default_value = "fast")]
    pub train_dtype: String,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to
    /// merge into the model's weights at load; repeat to merge several, in order.
    #[arg(long, value_name = "ADAPTER")]
    pub lora: Vec<PathBuf>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let dtype = match self.dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            other => bail!("invalid --dtype `{other}` (choose f32, bf16 or f16)"),
        };
        let train_weights = match self.train_dtype.as_str() {
            "fast" => bipo::models::TrainWeights::Fast,
            "stored" => bipo::models::TrainWeights::Stored,
            "f32" => bipo::models::TrainWeights::F32,
            other => bail!("invalid --train-dtype `{other}` (choose fast, stored or f32)"),
        };
        let opts = LoadOptions {
            device: bipo::load::parse_device(&self.device)?,
            dtype: Some(dtype),
            train_weights,
            lora: self.lora.clone(),
        };
        let t0 = std::time::Instant::now();
        let lm = bipo::load::load(&self.model, &opts)
            .with_context(|| format!("loading model {}", self.model))?;
        let m = &lm.model;
        crate::verbose!(
            "model {}: {} ({}), {} layers, width {}, context {}, weights {}, device {}, \
             {} threads (candle spin {}), {:?} kernels, chat template: {}, loaded in {:.2} s",
            lm.describe(),
            m.info.family,
            m.info.format,
            m.num_layers(),
            m.hidden_size(),
            m.max_context(),
            m.info.weights,
            self.device,
            rayon::current_num_threads(),
            std::env::var(bipo::util::CANDLE_SPIN_ENV).unwrap_or_default(),
            bipo::kernels::quant::kernels(),
            if lm.chat_template.is_some() {
                "yes"
            } else {
                "none"
            },
            t0.elapsed().as_secs_f64()
        );
        Ok(lm)
    }
}

/// Steering vectors to apply.
#[derive(Args, Clone, Debug, Default)]
pub struct SteerArgs {
    /// Steering vector file with optional multiplier (default 1); repeat to add several.
    #[arg(long = "vector", short = 'v', value_name = "FILE[:MULTIPLIER]")]
    pub vectors: Vec<String>,
    /// Apply only the vectors' layers from START to END (inclusive), like llama.cpp's
    /// --control-vector-layer-range.
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    pub layer_range: Option<Vec<usize>>,
}

/// Splits `FILE[:MULTIPLIER]`. A suffix that is not a number stays part of the path only
/// when a file of that whole name exists; otherwise it is a bad multiplier.
pub fn parse_vector_spec(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((file, m)) = spec.rsplit_once(':') {
        if let Ok(x) = m.parse::<f32>() {
            check_multiplier(x).with_context(|| format!("in `{spec}`"))?;
            return Ok((PathBuf::from(file), x));
        }
        let no_slash_after = !m.contains('/') && !m.contains('\\');
        if no_slash_after && !std::path::Path::new(spec).exists() && !file.is_empty() {
            bail!(
                "invalid multiplier `{m}` in `{spec}` (expected FILE[:MULTIPLIER], e.g. {file}:2)"
            );
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// Keeps only `v`'s layers within `--layer-range START END` (`range` = [START, END],
/// inclusive; clap gives exactly two). Returns whether any layer is left; the caller
/// decides whether none is an error.
pub fn keep_layer_range(v: &mut SteeringVector, range: &[usize]) -> Result<bool> {
    let (a, b) = (range[0], range[1]);
    if a > b {
        bail!("invalid --layer-range {a} {b}: START is after END");
    }
    v.layers.retain(|l, _| (a..=b).contains(l));
    Ok(!v.layers.is_empty())
}

/// Largest multiplier magnitude accepted: far beyond any useful steering strength
/// (typical ones are below 20), small enough that the activations stay finite.
pub const MAX_MULTIPLIER: f32 = bipo::eval::pipeline::MAX_MULTIPLIER;

/// Refuses non-finite and absurd multipliers.
pub fn check_multiplier(x: f32) -> Result<()> {
    Ok(bipo::eval::pipeline::check_multiplier(x)?)
}

impl SteerArgs {
    /// Reads every vector and checks it fits the model.
    pub fn vectors(&self, lm: &LoadedModel) -> Result<Vec<(SteeringVector, f32)>> {
        self.vectors
            .iter()
            .map(|spec| {
                let (path, m) = parse_vector_spec(spec)?;
                let mut v = bipo::io::read_vector(&path)?;
                check_vector(&v, &path, lm)?;
                if let Some(r) = self.layer_range.as_deref() {
                    if !keep_layer_range(&mut v, r)? {
                        crate::note!(
                            "note: {} has no layer in --layer-range {} {}; it steers nothing",
                            path.display(),
                            r[0],
                            r[1]
                        );
                    }
                }
                Ok((v, m))
            })
            .collect()
    }

    pub fn steering(
        &self,
        vectors: &[(SteeringVector, f32)],
        lm: &LoadedModel,
    ) -> Result<Steering> {
        Ok(Steering::from_vectors(
            vectors,
            lm.model.device(),
            lm.model.dtype(),
        )?)
    }
}

/// Refuses a vector that does not fit the model (width, layers, finite values) and warns
/// when its metadata names another model (a transfer: allowed, but said).
pub fn check_vector(v: &SteeringVector, path: &std::path::Path, lm: &LoadedModel) -> Result<()> {
    v.check_fits(lm.model.hidden_size(), lm.model.num_layers())
        .with_context(|| path.display().to_string())?;
    if v.model_sha256().is_some() {
        let sha = bipo::load::model_sha256(lm)?;
        if let Some(w) = v.transfer_warning(&lm.describe(), sha.as_deref()) {
            crate::note!("warning: {}: {w}", path.display());
        }
    }
    Ok(())
}

/// The chat template: a built-in one by name, else the model's own.
pub fn chat_template(lm: &LoadedModel, builtin: Option<&str>) -> Result<ChatTemplate> {
    match builtin {
        Some(name) => Ok(ChatTemplate::builtin(name)?),
        None => lm
            .chat_template
            .clone()
            .context("the model has no chat template: pass --template llama2|mistral"),
    }
}

/// How a question becomes a prompt.
#[derive(Args, Clone, Debug, Default)]
pub struct PromptArgs {
    /// Format the prompt with the chat template (otherwise it is raw text).
    #[arg(long)]
    pub chat: bool,
    /// System prompt (with --chat).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Use a built-in template instead of the model's: llama2 or mistral (the BiPO paper's formats).
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
}

impl PromptArgs {
    pub fn template(&self, lm: &LoadedModel) -> Result<ChatTemplate> {
        chat_template(lm, self.template.as_deref())
    }

    /// Token ids of a conversation (chat: message text stays text, special-token
    /// strings in it included) or of the raw prompt (special-token strings parsed).
    pub fn ids(&self, lm: &LoadedModel, history: &[Message], raw: &str) -> Result<Vec<u32>> {
        if !self.chat {
            return Ok(lm.tokenizer.encode(raw, true)?);
        }
        let mut msgs = Vec::new();
        if let Some(s) = &self.system {
            msgs.push(Message::new("system", s));
        }
        msgs.extend_from_slice(history);
        let prompt = self.template(lm)?.render_prompt(&msgs)?;
        Ok(lm.tokenizer.encode_chat(&prompt, true)?)
    }
}

/// Sampling flags.
#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Penalty > 1 discourages tokens already in the context.
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Where steering vectors are added: all positions, the prompt's only, or the
    /// generated tokens' only (the first generated token is predicted at the prompt's
    /// last position, so `generated` leaves it unsteered).
    #[arg(long, value_name = "all|prompt|generated", default_value = "all")]
    pub positions: bipo::steer::Positions,
}

/// Most alternatives `--logprobs` reports per token.
pub const MAX_TOP_LOGPROBS: usize = 100;

impl SampleArgs {
    pub fn options(&self, top_logprobs: usize) -> Result<bipo::generate::GenerateOptions> {
        if self.max_tokens == 0 {
            bail!("invalid --max-tokens 0: must be >= 1");
        }
        if top_logprobs > MAX_TOP_LOGPROBS {
            bail!("invalid --logprobs {top_logprobs}: at most {MAX_TOP_LOGPROBS}");
        }
        let sampling = bipo::generate::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        sampling.validate()?;
        Ok(bipo::generate::GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop_strings: self.stop.clone(),
            stop_at_eos: !self.ignore_eos,
            top_logprobs,
            positions: self.positions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_specs_split_at_a_numeric_suffix_only() {
        assert_eq!(
            parse_vector_spec("a.gguf:-4").unwrap(),
            (PathBuf::from("a.gguf"), -4.0)
        );
        assert_eq!(
            parse_vector_spec("a.gguf").unwrap(),
            (PathBuf::from("a.gguf"), 1.0)
        );
        assert_eq!(
            parse_vector_spec("C:dir/a.gguf").unwrap(),
            (PathBuf::from("C:dir/a.gguf"), 1.0)
        );
        assert!(parse_vector_spec("a.gguf:inf").is_err());
        assert!(parse_vector_spec("a.gguf:1e20").is_err());
        let e = parse_vector_spec("no-such.gguf:abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid multiplier `abc`"), "{e}");
    }
}
