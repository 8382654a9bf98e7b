//! bipo's own vector files: safetensors with one F32 tensor `layer.N` per steered
//! layer (N = 0-based block whose output is steered) and the [`VectorMeta`] as JSON in
//! the header's `__metadata__` under `bipo.meta`. Loads without the model.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::vector::{SteeringVector, VectorMeta};

/// `__metadata__` key holding the vector's metadata as JSON.
pub const META_KEY: &str = "bipo.meta";
/// `__metadata__` key naming this layout and its version.
pub const FORMAT_KEY: &str = "bipo.format";
pub const FORMAT: &str = "bipo-steering-vector/1";

/// Writes `v` to `path` atomically (temporary file, then rename). The bytes depend
/// only on the vector: metadata keys and tensors are written in sorted order (the
/// `safetensors` crate writes its metadata map in hash order, so two saves of one
/// vector could differ).
pub fn write(v: &SteeringVector, path: &Path) -> Result<()> {
    v.validate()?;
    crate::util::write_atomic(path, &to_bytes(v))
}

/// The safetensors bytes of `v`: 8-byte little-endian header length, the JSON header
/// (padded with spaces to a multiple of 8, as the format's writers do), then the F32
/// data of each layer in ascending layer order.
pub fn to_bytes(v: &SteeringVector) -> Vec<u8> {
    let q = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let meta = serde_json::to_string(&v.meta).expect("metadata serialises");
    // Keys in sorted order: "bipo.format" < "bipo.meta".
    let mut header = format!(
        "{{\"__metadata__\":{{{}:{},{}:{}}}",
        q(FORMAT_KEY),
        q(FORMAT),
        q(META_KEY),
        q(&meta)
    );
    let mut offset = 0usize;
    for (l, d) in &v.layers {
        let end = offset + d.len() * 4;
        header += &format!(
            ",\"layer.{l}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            d.len()
        );
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for d in v.layers.values() {
        out.extend(d.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

/// Reads a vector written by [`write`] (or any safetensors file of 1-D F32 tensors
/// named `layer.N`).
pub fn read(path: &Path) -> Result<SteeringVector> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&data)
        .map_err(|e| Error::bad_file(path, format!("not a safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| Error::bad_file(path, format!("corrupt safetensors: {e}")))?;
    let mut layers = BTreeMap::new();
    for (name, t) in st.tensors() {
        let layer = name
            .strip_prefix("layer.")
            .and_then(super::parse_layer_index)
            .ok_or_else(|| {
                Error::bad_file(path, format!("tensor `{name}` is not named layer.N"))
            })?;
        if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
            return Err(Error::bad_file(
                path,
                format!(
                    "tensor `{name}` is {:?} {:?}, expected 1-D F32",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if layers.insert(layer, v).is_some() {
            return Err(Error::bad_file(
                path,
                format!("layer {layer} appears twice (tensor `{name}`)"),
            ));
        }
    }
    if layers.is_empty() {
        return Err(Error::bad_file(path, "no `layer.N` tensors"));
    }
    let mut meta: VectorMeta = match header.metadata().as_ref().and_then(|m| m.get(META_KEY)) {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Error::bad_file(path, format!("bad {META_KEY}: {e}")))?,
        None => VectorMeta::default(),
    };
    if meta.name.is_empty() {
        meta.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let v = SteeringVector { layers, meta };
    v.validate()
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    Ok(v)
}
