//! Where weights come from: a GGUF file or Hugging Face safetensors, addressed by
//! Hugging Face tensor names in both cases.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::gguf::{unpermute_rope_rows, GgufFile};
use super::lora::{LoraAdapter, Merger};
use crate::error::{Error, Result};
use crate::kernels::quant::QBlocks;
use crate::models::layers::Weight;

/// Maps a Hugging Face tensor name to llama.cpp's GGUF name.
///
/// `model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`. With `sandwich`
/// norms (Gemma) Hugging Face's `post_attention_layernorm` is the attention output's
/// norm (`post_attention_norm`) and `pre_feedforward_layernorm` the MLP's input norm
/// (`ffn_norm`); otherwise `post_attention_layernorm` is the MLP's input norm.
pub fn gguf_name(hf: &str, sandwich: bool) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gg = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if sandwich => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gg}.{kind}"))
}

/// A source of weights by Hugging Face name.
pub enum WeightSource {
    Gguf {
        file: GgufFile,
        /// (query heads, kv heads) when Q/K rows are stored permuted (llama.cpp's llama arch).
        rope_permuted: Option<(usize, usize)>,
        /// Gemma's extra norms change what the norm names mean (see [`gguf_name`]).
        sandwich: bool,
    },
    Safetensors {
        tensors: MmapedSafetensors,
        files: Vec<PathBuf>,
    },
    /// Weights built in code (tests, random models).
    Memory(std::collections::HashMap<String, Weight>),
    /// Another source with LoRA adapters merged into the weights they change.
    Lora {
        base: Box<WeightSource>,
        merger: Merger,
    },
}

impl WeightSource {
    /// Memory-maps one or more safetensors files.
    pub fn safetensors(files: Vec<PathBuf>) -> Result<Self> {
        for f in &files {
            check_safetensors_header(f)?;
        }
        // SAFETY: the files are mapped read-only and bipo never writes to them; like every
        // mmap user we rely on no other process truncating them while the model is loaded.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            Error::bad_file(files.first().cloned().unwrap_or_default(), e.to_string())
        })?;
        Ok(Self::Safetensors { tensors, files })
    }

    /// This source with `adapters` merged into the weights they change (none: unchanged).
    pub fn with_lora(self, adapters: Vec<LoraAdapter>) -> Self {
        if adapters.is_empty() {
            return self;
        }
        Self::Lora {
            base: Box::new(self),
            merger: Merger {
                adapters,
                used: Default::default(),
            },
        }
    }

    /// Errors if a LoRA adapter changes a weight the model did not load (run after
    /// building the model); the adapters' identities otherwise.
    pub fn finish_lora(self) -> Result<Vec<LoraRecord>> {
        match self {
            Self::Lora { merger, .. } => {
                merger.check_all_used()?;
                Ok(merger
                    .adapters
                    .iter()
                    .map(|a| LoraRecord {
                        path: a.path.clone(),
                        sha256: a.sha256.clone(),
                    })
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Whether the weights come from a GGUF file (llama.cpp's conventions).
    pub fn is_gguf(&self) -> bool {
        match self {
            Self::Lora { base, .. } => base.is_gguf(),
            s => matches!(s, Self::Gguf { .. }),
        }
    }

    fn describe(&self) -> PathBuf {
        match self {
            Self::Gguf { file, .. } => file.path().to_path_buf(),
            Self::Safetensors { files, .. } => files.first().cloned().unwrap_or_default(),
            Self::Memory(_) => PathBuf::from("<memory>"),
            Self::Lora { base, .. } => base.describe(),
        }
    }

    /// The weight called `hf_name`, or None if the file does not have it.
    pub fn get(&mut self, hf_name: &str, device: &Device) -> Result<Option<Weight>> {
        match self {
            Self::Gguf {
                file,
                rope_permuted,
                sandwich,
            } => {
                let Some(name) = gguf_name(hf_name, *sandwich) else {
                    return Ok(None);
                };
                if !file.has_tensor(&name) {
                    return Ok(None);
                }
                let q = file.tensor(&name, device)?;
                let q = match (*rope_permuted, hf_name) {
                    (Some((h, _)), n) if n.ends_with("q_proj.weight") => {
                        unpermute_rope_rows(&q, h, device)?
                    }
                    (Some((_, kv)), n) if n.ends_with("k_proj.weight") => {
                        unpermute_rope_rows(&q, kv, device)?
                    }
                    _ => q,
                };
                Ok(Some(match q.dtype() {
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        Weight::Dense(q.dequantize(device)?)
                    }
                    _ if device.is_cpu() => match QBlocks::from_qtensor(&q)? {
                        Some(b) => Weight::Blocks(Arc::new(b)),
                        None => Weight::Quantized(Arc::new(q)),
                    },
                    _ => Weight::Quantized(Arc::new(q)),
                }))
            }
            Self::Memory(map) => Ok(map.get(hf_name).cloned()),
            Self::Lora { base, merger } => {
                let Some(w) = base.get(hf_name, device)? else {
                    return Ok(None);
                };
                // Merged in f32 and left f32: the model converts dense weights to its
                // compute dtype, as PEFT's merge works in the weight's precision.
                let merged = merger.merge(hf_name, || w.to_dense(device, DType::F32), device)?;
                Ok(Some(merged.map_or(w, Weight::Dense)))
            }
            Self::Safetensors { tensors, files } => {
                if tensors.get(hf_name).is_err() {
                    return Ok(None);
                }
                let t = tensors.load(hf_name, device).map_err(|e| {
                    let path = files.first().cloned().unwrap_or_default();
                    Error::bad_file(path, format!("tensor `{hf_name}`: {e}"))
                })?;
                Ok(Some(Weight::Dense(t)))
            }
        }
    }

    /// The weight called `hf_name`, checked against `shape`.
    pub fn require(&mut self, hf_name: &str, shape: &[usize], device: &Device) -> Result<Weight> {
        let path = self.describe();
        let w = self
            .get(hf_name, device)?
            .ok_or_else(|| Error::bad_file(&path, format!("tensor `{hf_name}` is missing")))?;
        if w.dims() != shape {
            return Err(Error::bad_file(
                &path,
                format!(
                    "tensor `{hf_name}` has shape {:?}, expected {shape:?}",
                    w.dims()
                ),
            ));
        }
        Ok(w)
    }

    /// A small dense tensor (norm weight, bias) as `dtype`.
    pub fn require_dense(
        &mut self,
        hf_name: &str,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        self.require(hf_name, shape, device)?
            .to_dense(device, dtype)
    }
}

/// A LoRA adapter merged into a loaded model: where it came from and its sha256.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraRecord {
    pub path: PathBuf,
    pub sha256: String,
}

/// Size of the little-endian u64 that starts a safetensors file.
const SAFETENSORS_HEADER_LEN_BYTES: u64 = 8;
/// Largest JSON header we accept (the format's own limit is 100 MB).
const SAFETENSORS_MAX_HEADER: u64 = 100_000_000;

/// Checks that a file looks like safetensors before it is mapped, so the error is clear.
pub fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    if len < SAFETENSORS_HEADER_LEN_BYTES || f.read_exact(&mut n).is_err() {
        return Err(Error::bad_file(path, "not a safetensors file (too short)"));
    }
    let header = u64::from_le_bytes(n);
    if header > SAFETENSORS_MAX_HEADER || header + SAFETENSORS_HEADER_LEN_BYTES > len {
        return Err(Error::bad_file(
            path,
            "not a safetensors file (header length out of range)",
        ));
    }
    let mut first = [0u8; 1];
    if f.read_exact(&mut first).is_err() || first[0] != b'{' {
        return Err(Error::bad_file(
            path,
            "not a safetensors file (no JSON header)",
        ));
    }
    Ok(())
}
