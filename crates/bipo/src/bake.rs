//! Folding steering vectors into a model file (`bipo bake`), so runtimes without
//! control-vector support generate steered text.
//!
//! For the llama architecture, llama.cpp adds an optional `blk.L.ffn_down.bias` right
//! after the MLP's down projection, before the residual add (`build_ffn` in
//! `src/models/llama.cpp`): adding `sum_i m_i v_i[L]` there adds it to block L's output
//! at every position — exactly where a control vector `direction.L` is added. Other
//! architectures are refused until the same is shown for them.

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;
use crate::vector::SteeringVector;

/// Architectures whose down-projection bias is proven equivalent to steering.
pub const BAKEABLE: &[&str] = &["llama"];
/// Metadata key recording what was baked in.
pub const BAKED_KEY: &str = "bipo.baked";

/// Writes `output`: `input` with `sum_i m_i v_i` added to each steered block's output.
pub fn bake_gguf(input: &Path, vectors: &[(SteeringVector, f32)], output: &Path) -> Result<()> {
    crate::util::fs::check_outputs(&[("model", input)], &[("output", output)])?;
    let mut g = GgufFile::open(input)?;
    let arch = g.str("general.architecture")?.to_string();
    if !BAKEABLE.contains(&arch.as_str()) {
        return Err(Error::bad_file(
            input,
            format!(
                "cannot bake into architecture `{arch}`: llama.cpp's `{arch}` graph has no \
                 per-block ffn_down bias, so a baked vector would be ignored (bakeable: {}); \
                 pass the vector as a control vector instead (llama.cpp --control-vector-scaled)",
                BAKEABLE.join(", ")
            ),
        ));
    }
    let hidden = g.size(&format!("{arch}.embedding_length"))?;
    let layers = g.size(&format!("{arch}.block_count"))?;
    let mut delta: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for (v, m) in vectors {
        v.check_fits(hidden, layers)?;
        for (l, d) in &v.layers {
            let acc = delta.entry(*l).or_insert_with(|| vec![0.0; hidden]);
            acc.iter_mut().zip(d).for_each(|(a, x)| *a += m * x);
        }
    }
    let names: Vec<String> = g.tensor_names().into_iter().map(String::from).collect();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len() + delta.len());
    for n in &names {
        tensors.push((n.clone(), g.tensor(n, &Device::Cpu)?));
    }
    for (l, d) in &delta {
        let name = format!("blk.{l}.ffn_down.bias");
        let mut bias = d.clone();
        if let Some(i) = tensors.iter().position(|(n, _)| n == &name) {
            let old: Vec<f32> = tensors.remove(i).1.dequantize(&Device::Cpu)?.to_vec1()?;
            bias.iter_mut().zip(old).for_each(|(b, o)| *b += o);
        }
        let t = Tensor::from_vec(bias, hidden, &Device::Cpu)?;
        tensors.push((name, QTensor::quantize(&t, GgmlDType::F32)?));
    }
    let record = serde_json::json!(vectors
        .iter()
        .map(|(v, m)| serde_json::json!({"name": v.meta.name, "multiplier": m, "layers": v.layers.keys().collect::<Vec<_>>()}))
        .collect::<Vec<_>>())
    .to_string();
    let mut meta: Vec<(String, gguf_file::Value)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != BAKED_KEY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    meta.push((BAKED_KEY.to_string(), gguf_file::Value::String(record)));
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta_refs, &tensor_refs)?;
    crate::util::write_atomic(output, &buf.into_inner())
}
