//! llama.cpp control-vector GGUF files (`general.architecture = controlvector`).
//!
//! Tensors `direction.N` (F32, 1-D, hidden size) where N is the 0-based decoder block
//! whose output llama.cpp adds the direction to — the same convention as bipo's layer
//! index, so N maps to layer N unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::vector::{SteeringVector, VectorMeta};

/// `general.architecture` value of control-vector files.
pub const CONTROL_VECTOR_ARCH: &str = "controlvector";
/// bipo's own key (llama.cpp ignores it): the vector's metadata as JSON.
pub const BIPO_META_KEY: &str = "bipo.meta";
/// bipo's own key stating the layer convention, for readers of the file.
pub const BIPO_LAYERS_KEY: &str = "bipo.layer_convention";
const LAYER_CONVENTION: &str = "direction.N is added to the output of 0-based decoder block N";

/// Writes `v` as a llama.cpp control vector (atomically). llama.cpp rejects
/// `direction.0`, so a vector steering block 0 is refused.
pub fn write(v: &SteeringVector, model_hint: &str, path: &Path) -> Result<()> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    v.validate()?;
    if v.layers.contains_key(&0) {
        return Err(Error::invalid(
            "control vector",
            format!(
                "{}: llama.cpp rejects direction.0 (steering block 0's output); drop layer 0 first",
                path.display()
            ),
        ));
    }
    let tensors = v
        .layers
        .iter()
        .map(|(l, d)| {
            let t = candle_core::Tensor::from_slice(d, d.len(), &Device::Cpu)?;
            Ok((
                format!("direction.{l}"),
                QTensor::quantize(&t, GgmlDType::F32)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = [
        (
            "general.architecture",
            gguf_file::Value::String(CONTROL_VECTOR_ARCH.into()),
        ),
        (
            "controlvector.model_hint",
            gguf_file::Value::String(model_hint.into()),
        ),
        (
            "controlvector.layer_count",
            gguf_file::Value::U32(v.layers.len() as u32),
        ),
        (
            BIPO_META_KEY,
            gguf_file::Value::String(serde_json::to_string(&v.meta).expect("metadata serialises")),
        ),
        (
            BIPO_LAYERS_KEY,
            gguf_file::Value::String(LAYER_CONVENTION.into()),
        ),
    ];
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta_refs, &tensor_refs)?;
    crate::util::write_atomic(path, &buf.into_inner())
}

/// Reads a llama.cpp control vector.
pub fn read(path: &Path) -> Result<SteeringVector> {
    let mut g = GgufFile::open(path)?;
    let arch = g.str("general.architecture")?;
    if arch != CONTROL_VECTOR_ARCH {
        return Err(Error::bad_file(
            path,
            format!("general.architecture is `{arch}`, not `{CONTROL_VECTOR_ARCH}`"),
        ));
    }
    let model_hint = g.opt_str("controlvector.model_hint")?.map(str::to_string);
    let mut layers = BTreeMap::new();
    let names: Vec<String> = g.tensor_names().into_iter().map(String::from).collect();
    for name in names {
        let Some(idx) = name.strip_prefix("direction.") else {
            continue;
        };
        let layer = super::parse_layer_index(idx).ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "tensor `{name}`: bad layer index (expected 0..={})",
                    super::MAX_LAYER_INDEX
                ),
            )
        })?;
        let (shape, _) = g.tensor_info(&name).expect("listed tensor exists");
        if shape.len() != 1 {
            return Err(Error::bad_file(
                path,
                format!("tensor `{name}` has rank {}, expected 1", shape.len()),
            ));
        }
        let t = g.tensor(&name, &Device::Cpu)?;
        if t.dtype() != candle_core::quantized::GgmlDType::F32 {
            return Err(Error::bad_file(
                path,
                format!("tensor `{name}` is {:?}, expected F32", t.dtype()),
            ));
        }
        let v = t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
        if layers.insert(layer, v).is_some() {
            return Err(Error::bad_file(
                path,
                format!("layer {layer} appears twice (tensor `{name}`)"),
            ));
        }
    }
    if layers.is_empty() {
        return Err(Error::bad_file(path, "no `direction.N` tensors"));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = match g.opt_str(BIPO_META_KEY)? {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Error::bad_file(path, format!("bad {BIPO_META_KEY}: {e}")))?,
        None => VectorMeta {
            name,
            model: model_hint,
            method: Some("llama.cpp control vector".into()),
            extra: Default::default(),
        },
    };
    let v = SteeringVector { layers, meta };
    v.validate()
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    Ok(v)
}
