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
        let layer: usize = idx
            .parse()
            .map_err(|_| Error::bad_file(path, format!("tensor `{name}`: bad layer index")))?;
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
        layers.insert(layer, v);
    }
    if layers.is_empty() {
        return Err(Error::bad_file(path, "no `direction.N` tensors"));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = SteeringVector {
        layers,
        meta: VectorMeta {
            name,
            model: model_hint,
            method: Some("llama.cpp control vector".into()),
            extra: Default::default(),
        },
    };
    v.validate()
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    Ok(v)
}
