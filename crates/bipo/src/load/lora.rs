//! PEFT LoRA adapters, merged into the weights at load (`--lora ADAPTER`).
//!
//! A PEFT adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`
//! holding, for each adapted linear layer `M` (Hugging Face name, e.g.
//! `model.layers.3.self_attn.q_proj`), `base_model.model.M.lora_A.weight` of shape
//! `[r, in]` and `base_model.model.M.lora_B.weight` of shape `[out, r]`. PEFT computes
//! `y = W x + s · B (A x)`, so merging is `W' = W + s · B A` with
//!
//! - `s = alpha / r`, or `alpha / sqrt(r)` with `use_rslora`;
//! - `r` = the rows of `A` (so `rank_pattern` needs no reading);
//! - `alpha` = `lora_alpha`, or the first `alpha_pattern` entry whose key matches the
//!   module name the way PEFT matches it (`re.match(rf"(.*\.)?({key})$", name)`).
//!
//! The merge happens in f32 on the weight as the model stores it in Hugging Face row
//! order (a GGUF's permuted Q/K rows are already undone by [`WeightSource`]); a quantized
//! weight that an adapter touches becomes dense f32 (only those matrices). Anything the
//! merge cannot represent is refused by name rather than silently dropped: DoRA,
//! `fan_in_fan_out` (GPT-2's Conv1D), adapted biases or embeddings, `modules_to_save`,
//! and, after the model is built, a target the model does not have (an adapter made for
//! another model).
//!
//! [`WeightSource`]: super::weights::WeightSource

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of `adapter_config.json` that change the merged weights.
#[derive(Debug, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
}

/// One adapted matrix: `B A` times `scale`.
struct Delta {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// A PEFT LoRA adapter, read and checked, ready to merge.
pub struct LoraAdapter {
    /// The folder (or file) given.
    pub path: PathBuf,
    /// sha256 of `adapter_config.json` and the weights (see [`LoraAdapter::sha256`]).
    pub sha256: String,
    /// The base model named in the adapter's config, if any.
    pub base_model: Option<String>,
    /// Hugging Face weight name (`....q_proj.weight`) -> delta.
    deltas: BTreeMap<String, Delta>,
}

impl LoraAdapter {
    /// Reads an adapter folder (or its `adapter_model.safetensors`, with the config beside it).
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join("adapter_model.safetensors"))
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        };
        let config_path = dir.join("adapter_config.json");
        if !config_path.is_file() {
            return Err(Error::bad_file(
                path,
                "not a PEFT LoRA adapter (no adapter_config.json)",
            ));
        }
        if !weights.is_file() {
            let what = if weights.with_extension("bin").is_file() {
                "only adapter_model.bin (pickle) is present; convert it to safetensors"
            } else {
                "no adapter_model.safetensors"
            };
            return Err(Error::bad_file(path, what));
        }
        let cfg: AdapterConfig = serde_json::from_str(&crate::util::read_text(&config_path)?)
            .map_err(|e| Error::bad_file(&config_path, format!("invalid adapter config: {e}")))?;
        let refuse = |reason: &str| Err(Error::bad_file(&config_path, reason));
        if let Some(t) = cfg.peft_type.as_deref().filter(|t| *t != "LORA") {
            return refuse(&format!("peft_type `{t}` is not LORA"));
        }
        if cfg.use_dora {
            return refuse("DoRA adapters (use_dora) cannot be merged as a low-rank sum");
        }
        if cfg.fan_in_fan_out {
            return refuse("fan_in_fan_out adapters (Conv1D layers) are not supported");
        }
        let patterns = cfg
            .alpha_pattern
            .iter()
            .map(|(k, a)| {
                regex::Regex::new(&format!(r"^(.*\.)?({k})$"))
                    .map(|re| (re, *a))
                    .map_err(|e| Error::bad_file(&config_path, format!("alpha_pattern `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::bad_file(&weights, format!("not a safetensors file: {e}")))?;
        let mut a_of: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut b_of: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, view) in st.tensors() {
            let bad =
                |reason: String| Error::bad_file(&weights, format!("tensor `{key}`: {reason}"));
            let rest = key.strip_prefix("base_model.model.").unwrap_or(&key);
            let (module, which) = if let Some(m) = strip_lora(rest, "lora_A") {
                (m, &mut a_of)
            } else if let Some(m) = strip_lora(rest, "lora_B") {
                (m, &mut b_of)
            } else if rest.contains("lora_embedding") {
                return Err(bad("LoRA on embeddings is not supported".into()));
            } else {
                return Err(bad(
                    "not a lora_A/lora_B matrix (adapted biases, modules_to_save and \
                     DoRA magnitudes cannot be merged)"
                        .into(),
                ));
            };
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(e.to_string()))?;
            if t.rank() != 2 {
                return Err(bad(format!("rank {} (expected a matrix)", t.rank())));
            }
            which.insert(module.to_string(), t);
        }
        let mut deltas = BTreeMap::new();
        for (module, a) in a_of {
            let b = b_of.remove(&module).ok_or_else(|| {
                Error::bad_file(&weights, format!("`{module}` has lora_A but no lora_B"))
            })?;
            let (r, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            if r != rb || r == 0 {
                return Err(Error::bad_file(
                    &weights,
                    format!("`{module}`: lora_A has {r} rows but lora_B {rb} columns"),
                ));
            }
            let alpha = patterns
                .iter()
                .find(|(re, _)| re.is_match(&module))
                .map_or(cfg.lora_alpha, |(_, a)| *a);
            let scale = if cfg.use_rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            deltas.insert(format!("{module}.weight"), Delta { a, b, scale });
        }
        if let Some(module) = b_of.keys().next() {
            return Err(Error::bad_file(
                &weights,
                format!("`{module}` has lora_B but no lora_A"),
            ));
        }
        if deltas.is_empty() {
            return Err(Error::bad_file(
                &weights,
                "the adapter holds no LoRA matrices",
            ));
        }
        let sha256 = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(crate::util::file_sha256(&config_path)?);
            h.update(crate::util::file_sha256(&weights)?);
            format!("{:x}", h.finalize())
        };
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            base_model: cfg.base_model_name_or_path,
            deltas,
        })
    }

    /// The Hugging Face weight names the adapter changes.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.deltas.keys().map(String::as_str)
    }

    /// `scale · B A` for `hf_name` (f32, `[out, in]`), if the adapter changes it.
    pub fn delta(&self, hf_name: &str, device: &Device) -> Result<Option<Tensor>> {
        let Some(d) = self.deltas.get(hf_name) else {
            return Ok(None);
        };
        let ba = d.b.matmul(&d.a)?;
        Ok(Some((ba * d.scale)?.to_device(device)?))
    }
}

/// `M` from `M.lora_X.weight` (or PEFT's in-memory `M.lora_X.default.weight`).
fn strip_lora<'a>(key: &'a str, which: &str) -> Option<&'a str> {
    key.strip_suffix(&format!(".{which}.weight"))
        .or_else(|| key.strip_suffix(&format!(".{which}.default.weight")))
}

/// Adapters being merged while a model is built: which targets were used, so that an
/// adapter for another model is an error, not a silent no-op.
pub struct Merger {
    pub(crate) adapters: Vec<LoraAdapter>,
    pub(crate) used: BTreeSet<(usize, String)>,
}

impl Merger {
    /// `w` plus every adapter's delta for `hf_name` (shape-checked); None if none applies.
    pub(crate) fn merge(
        &mut self,
        hf_name: &str,
        dense_f32: impl FnOnce() -> Result<Tensor>,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let mut merged: Option<Tensor> = None;
        let mut base = Some(dense_f32);
        for (i, ad) in self.adapters.iter().enumerate() {
            let Some(delta) = ad.delta(hf_name, device)? else {
                continue;
            };
            let w = match merged.take() {
                Some(w) => w,
                None => (base.take().expect("taken once"))()?,
            };
            if w.dims() != delta.dims() {
                return Err(Error::bad_file(
                    &ad.path,
                    format!(
                        "`{hf_name}`: the adapter's B·A is {:?} but the model's weight is {:?} \
                         (an adapter for another model?)",
                        delta.dims(),
                        w.dims()
                    ),
                ));
            }
            merged = Some((w + delta)?);
            self.used.insert((i, hf_name.to_string()));
        }
        Ok(merged)
    }

    /// Errors if an adapter changes a weight the model never asked for.
    pub(crate) fn check_all_used(&self) -> Result<()> {
        for (i, ad) in self.adapters.iter().enumerate() {
            if let Some(t) = ad
                .targets()
                .find(|t| !self.used.contains(&(i, t.to_string())))
            {
                return Err(Error::bad_file(
                    &ad.path,
                    format!(
                        "the adapter changes `{t}`, which this model does not have (made for {})",
                        ad.base_model.as_deref().unwrap_or("another model")
                    ),
                ));
            }
        }
        Ok(())
    }
}
