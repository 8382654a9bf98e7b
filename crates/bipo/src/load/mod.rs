//! Loading a model, its tokenizer and its chat template from a GGUF file, a Hugging
//! Face folder, or a Hub id.

pub mod gguf;
mod gguf_header;
pub mod hub;
pub mod lora;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::models::{self, Model, ModelInfo};
use crate::text::{ChatTemplate, Tokenizer};
use gguf::GgufFile;
use weights::WeightSource;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype; None = f32 (GGUF weights stay quantized for inference regardless).
    pub dtype: Option<DType>,
    /// How training uses quantized weights.
    pub train_weights: crate::models::TrainWeights,
    /// PEFT LoRA adapters (folders) merged into the weights at load, in order.
    pub lora: Vec<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            train_weights: Default::default(),
            lora: Vec::new(),
        }
    }
}

/// The device named by `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`; a backend this
/// build lacks is a clear error saying how to get it.
pub fn parse_device(s: &str) -> Result<Device> {
    let (kind, index) = match s.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>().map_err(|_| {
                Error::invalid("device", format!("`{s}`: `{i}` is not a device number"))
            })?,
        ),
        None => (s, 0),
    };
    let missing = |feature: &str| {
        Error::invalid(
            "device",
            format!(
                "`{s}`: this bipo was built without {feature} support (rebuild with \
                 `cargo build --release --features {feature}`)"
            ),
        )
    };
    match kind {
        "cpu" if index == 0 => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Ok(Device::new_cuda(index)?),
        "cuda" => Err(missing("cuda")),
        "metal" if cfg!(feature = "metal") => Ok(Device::new_metal(index)?),
        "metal" => Err(missing("metal")),
        _ => Err(Error::invalid(
            "device",
            format!("`{s}` (choose cpu, cuda, cuda:N, metal or metal:N)"),
        )),
    }
}

/// A model with everything needed to talk to it.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The model's own chat template, if it ships one.
    pub chat_template: Option<ChatTemplate>,
    /// The main weight file (GGUF) or folder that was loaded.
    pub path: PathBuf,
    /// LoRA adapters merged into the weights (`--lora`), in order.
    pub lora: Vec<weights::LoraRecord>,
    /// [`model_sha256`], once computed.
    sha256: std::sync::OnceLock<Option<String>>,
}

impl LoadedModel {
    /// The model as given, with any merged LoRA adapters: `MODEL + LoRA ADAPTER`.
    pub fn describe(&self) -> String {
        let mut s = self.model.info.source.clone();
        for a in &self.lora {
            s.push_str(&format!(" + LoRA {}", a.path.display()));
        }
        s
    }

    /// What a vector made on this model records as its model: `MODEL sha256:SHA` (see
    /// [`model_sha256`]), which [`crate::SteeringVector::transfer_warning`] reads back.
    pub fn identity(&self) -> Result<String> {
        Ok(match model_sha256(self)? {
            Some(sha) => format!("{} sha256:{sha}", self.describe()),
            None => self.describe(),
        })
    }
}

/// Where a model spec points.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    GgufFile(PathBuf),
    HfFolder(PathBuf),
    HubId(String),
}

impl ModelSource {
    /// Classifies `spec`: an existing file must be GGUF, an existing folder a Hugging
    /// Face model folder, and anything else of the form `owner/name` a Hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        let p = Path::new(spec);
        if p.is_dir() {
            return Ok(Self::HfFolder(p.to_path_buf()));
        }
        if p.is_file() {
            if gguf::is_gguf(p) {
                return Ok(Self::GgufFile(p.to_path_buf()));
            }
            if weights::check_safetensors_header(p).is_ok() {
                return Err(Error::bad_file(
                    p,
                    "a safetensors file alone is not a model: give the folder holding it, config.json and tokenizer.json",
                ));
            }
            return Err(Error::bad_file(p, "not a GGUF file and not a model folder"));
        }
        let looks_like_id = spec.split('/').count() == 2
            && !spec.starts_with('.')
            && !spec.starts_with('/')
            && !spec.ends_with(".gguf");
        if looks_like_id {
            return Ok(Self::HubId(spec.to_string()));
        }
        Err(Error::io(
            p,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }
}

/// The model's identity: the sha256 of a GGUF file, or for a folder the sha256 of the
/// list "name sha256" of its config.json, tokenizer files and weight files; with LoRA
/// adapters merged, the sha256 of "base SHA" followed by "lora SHA" for each adapter.
pub fn model_sha256(lm: &LoadedModel) -> Result<Option<String>> {
    if let Some(s) = lm.sha256.get() {
        return Ok(s.clone());
    }
    let s = combined_sha256(lm)?;
    Ok(lm.sha256.get_or_init(|| s).clone())
}

fn combined_sha256(lm: &LoadedModel) -> Result<Option<String>> {
    use sha2::{Digest, Sha256};
    let base = base_sha256(lm)?;
    if lm.lora.is_empty() {
        return Ok(base);
    }
    let Some(base) = base else { return Ok(None) };
    let mut h = Sha256::new();
    h.update(format!("base {base}\n"));
    for a in &lm.lora {
        h.update(format!("lora {}\n", a.sha256));
    }
    Ok(Some(format!("{:x}", h.finalize())))
}

fn base_sha256(lm: &LoadedModel) -> Result<Option<String>> {
    use sha2::{Digest, Sha256};
    let p = &lm.path;
    let sha = crate::util::hash_cache::file_sha256_cached;
    if p.is_file() {
        return sha(p).map(Some);
    }
    if !p.is_dir() {
        return Ok(None);
    }
    let mut files = safetensors_files(p)?;
    for extra in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if p.join(extra).is_file() {
            files.push(p.join(extra));
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        h.update(format!("{name} {}\n", sha(f)?));
    }
    Ok(Some(format!("{:x}", h.finalize())))
}

/// Loads the model named by `spec` (GGUF file, Hugging Face folder, or Hub id).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let mut lm = match ModelSource::parse(spec)? {
        ModelSource::GgufFile(p) => load_gguf(&p, spec, opts)?,
        ModelSource::HfFolder(p) => load_hf_folder(&p, spec, opts)?,
        ModelSource::HubId(id) => {
            let folder = hub::resolve(&id)?;
            load_hf_folder(&folder, spec, opts)?
        }
    };
    lm.model.set_train_weights(opts.train_weights);
    Ok(lm)
}

/// The adapters named in `opts`, read and checked.
fn adapters(opts: &LoadOptions) -> Result<Vec<lora::LoraAdapter>> {
    opts.lora
        .iter()
        .map(|p| lora::LoraAdapter::open(p))
        .collect()
}

fn load_gguf(path: &Path, spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let g = GgufFile::open(path)?;
    let arch_name = g.str("general.architecture")?.to_string();
    if arch_name == crate::io::controlvector::CONTROL_VECTOR_ARCH {
        return Err(Error::bad_file(
            path,
            "this is a control vector, not a model: pass it with --vector",
        ));
    }
    let arch = models::architecture_for_gguf(&arch_name)?;
    let mut cfg = (arch.from_gguf)(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let chat_template = g
        .opt_str("tokenizer.chat_template")?
        .map(|source| ChatTemplate::Jinja {
            source: source.to_string(),
            bos_token: tokenizer
                .bos_token_id()
                .and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default(),
            eos_token: tokenizer
                .eos_token_ids()
                .first()
                .and_then(|&i| tokenizer.id_to_token(i))
                .unwrap_or_default(),
        });
    let mut weights_hist: BTreeMap<String, usize> = BTreeMap::new();
    for name in g.tensor_names() {
        let (_, dt) = g.tensor_info(name).expect("listed");
        *weights_hist.entry(format!("{dt:?}")).or_default() += 1;
    }
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let mut g = g;
    if g.has_tensor("rope_freqs.weight") {
        let f = g
            .tensor("rope_freqs.weight", &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        cfg.rope_freq_factors = Some(f.to_vec1::<f32>()?);
    }
    let info = ModelInfo {
        family: arch.family.into(),
        source: spec.into(),
        format: "gguf".into(),
        weights: weights_hist
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect::<Vec<_>>()
            .join(", "),
        dtype: format!("{dtype:?}").to_lowercase(),
        config: cfg.clone(),
    };
    let rope_permuted = arch
        .gguf_rope_permuted
        .then_some((cfg.num_heads, cfg.num_kv_heads));
    let mut src = WeightSource::Gguf {
        file: g,
        rope_permuted,
        sandwich: cfg.sandwich_norms,
    }
    .with_lora(adapters(opts)?);
    let model = Model::build(cfg, &mut src, info, &opts.device, dtype)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: path.to_path_buf(),
        lora: src.finish_lora()?,
        sha256: Default::default(),
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::util::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))
}

/// The safetensors files of a folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
fn safetensors_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::bad_file(
            folder,
            "no model.safetensors or model.safetensors.index.json",
        ));
    }
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_file(&index, "no `weight_map` object"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| folder.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn load_hf_folder(folder: &Path, spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let config_path = folder.join("config.json");
    if !config_path.is_file() {
        return Err(Error::bad_file(
            folder,
            "not a model folder (no config.json); give a GGUF file or a Hugging Face model folder",
        ));
    }
    let config_text = crate::util::read_text(&config_path)?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| Error::bad_file(&config_path, format!("invalid JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::bad_file(&config_path, "no `model_type`"))?;
    let arch = models::architecture_for_hf(model_type)?;
    let cfg =
        (arch.from_hf)(&config_text).map_err(|e| Error::bad_file(&config_path, e.to_string()))?;
    let tok_config_path = folder.join("tokenizer_config.json");
    let tok_config = tok_config_path
        .is_file()
        .then(|| read_json(&tok_config_path))
        .transpose()?;
    let gen_config_path = folder.join("generation_config.json");
    let mut extra_eos: Vec<u32> = Vec::new();
    for v in [
        Some(config.clone()),
        gen_config_path
            .is_file()
            .then(|| read_json(&gen_config_path))
            .transpose()?,
    ]
    .into_iter()
    .flatten()
    {
        match v.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => extra_eos.extend(n.as_u64().map(|x| x as u32)),
            Some(serde_json::Value::Array(a)) => {
                extra_eos.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            _ => {}
        }
    }
    let tokenizer = Tokenizer::from_files(
        &folder.join("tokenizer.json"),
        tok_config.as_ref(),
        &extra_eos,
    )?;
    let token_str = |key: &str| -> String {
        tok_config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(|v| {
                v.as_str()
                    .map(String::from)
                    .or_else(|| v.get("content")?.as_str().map(String::from))
            })
            .unwrap_or_default()
    };
    let chat_template = tok_config
        .as_ref()
        .and_then(|c| c.get("chat_template"))
        .and_then(|t| match t {
            serde_json::Value::String(s) => Some(s.clone()),
            // A list of named templates: take "default".
            serde_json::Value::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|e| e.get("template")?.as_str().map(String::from)),
            _ => None,
        })
        .map(|source| ChatTemplate::Jinja {
            source,
            bos_token: token_str("bos_token"),
            eos_token: token_str("eos_token"),
        });
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let files = safetensors_files(folder)?;
    let info = ModelInfo {
        family: arch.family.into(),
        source: spec.into(),
        format: "safetensors".into(),
        weights: config
            .get("torch_dtype")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        config: cfg.clone(),
    };
    let mut src = WeightSource::safetensors(files)?.with_lora(adapters(opts)?);
    let model = Model::build(cfg, &mut src, info, &opts.device, dtype)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        path: folder.to_path_buf(),
        lora: src.finish_lora()?,
        sha256: Default::default(),
    })
}
