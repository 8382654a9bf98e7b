//! The BiPO paper's released vectors: PyTorch `.pt` files (a zip holding a pickle and
//! raw storages) with one tensor of the hidden size (float32, or float16 / bfloat16
//! widened exactly). The layer is not in the file; the caller names it.
//!
//! The pickle is read by candle's pickle *interpreter*, which only builds data (class
//! references stay names, `REDUCE` stays an unevaluated node): no code from the file
//! ever runs. Only `torch._utils._rebuild_tensor_v2` of a float32, float16 or bfloat16
//! storage is accepted, at the root or as the single tensor of a dict.

use std::io::Read;
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::DType;

use crate::error::{Error, Result};
use crate::vector::{SteeringVector, VectorMeta};

/// Largest pickle we parse: a one-tensor file's pickle is a few hundred bytes.
const MAX_PICKLE_BYTES: u64 = 1 << 20;
/// Largest tensor storage we read: 64 MiB, far above any model's hidden size.
const MAX_STORAGE_BYTES: u64 = 1 << 26;

/// Reads a one-tensor `.pt` file as the direction for `layer`.
pub fn read(path: &Path, layer: usize) -> Result<SteeringVector> {
    let bad = |r: String| Error::bad_file(path, r);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a PyTorch zip file: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("unreadable zip directory: {e}")))?;
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad("no data.pkl inside".into()))?
        .clone();
    let dir = pkl
        .strip_suffix(".pkl")
        .expect("suffix checked")
        .to_string();
    let mut bytes = Vec::new();
    zip.by_name(&pkl)
        .map_err(|e| bad(e.to_string()))?
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("unreadable pickle: {e}")))?;
    let root = stack
        .finalize()
        .map_err(|e| bad(format!("unreadable pickle: {e}")))?;
    // A bare tensor, or a dict holding exactly one.
    let obj = match root {
        Object::Dict(kv) if kv.len() == 1 => kv.into_iter().next().expect("one entry").1,
        Object::Dict(kv) => {
            return Err(bad(format!(
                "a dict of {} entries; expected one tensor",
                kv.len()
            )))
        }
        other => other,
    };
    let info = obj
        .into_tensor_info(Object::Unicode("vector".into()), Path::new(&dir))
        .map_err(|e| bad(format!("not a tensor: {e}")))?
        .ok_or_else(|| bad("the pickle does not hold a torch tensor".into()))?;
    // float16 / bfloat16 vectors are widened exactly; anything else is refused.
    let width = match info.dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        other => {
            return Err(bad(format!(
                "tensor is {other:?}, expected float32, float16 or bfloat16"
            )))
        }
    };
    let dims = info.layout.shape().dims().to_vec();
    if dims.len() != 1 || !info.layout.is_contiguous() {
        return Err(bad(format!(
            "tensor has shape {dims:?}; expected one contiguous dimension (the hidden size)"
        )));
    }
    let (n, offset) = (dims[0], info.layout.start_offset());
    let need = offset
        .checked_add(n)
        .and_then(|e| e.checked_mul(width))
        .filter(|&b| b as u64 <= MAX_STORAGE_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "tensor of {n} elements at offset {offset} is implausibly large"
            ))
        })?;
    let mut raw = Vec::new();
    // Read no more than the tensor needs: a hostile archive cannot make us inflate more.
    zip.by_name(&info.path)
        .map_err(|e| bad(format!("storage `{}`: {e}", info.path)))?
        .take(need as u64)
        .read_to_end(&mut raw)
        .map_err(|e| Error::io(path, e))?;
    if raw.len() < need {
        return Err(bad(format!(
            "storage holds {} bytes, the tensor needs {need}",
            raw.len()
        )));
    }
    let bytes = &raw[offset * width..need];
    let direction: Vec<f32> = match info.dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = SteeringVector::single(
        layer,
        direction,
        VectorMeta {
            name,
            method: Some("bipo (paper .pt)".into()),
            ..Default::default()
        },
    );
    v.validate().map_err(|e| bad(e.to_string()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn a_torch_saved_float_tensor_reads_exactly() {
        // Written by `torch.save(torch.arange(8, dtype=torch.float32) * 0.5 - 1, path)`.
        let v = read(&fixture("arange8.pt"), 13).unwrap();
        assert_eq!(
            v.layers[&13],
            (0..8).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<_>>()
        );
        // Saved in float16 and bfloat16 (these values are exact in both): widened.
        for f in ["arange8-f16.pt", "arange8-bf16.pt"] {
            assert_eq!(
                read(&fixture(f), 13).unwrap().layers[&13],
                v.layers[&13],
                "{f}"
            );
        }
        // The same tensor inside a one-entry dict.
        assert_eq!(
            read(&fixture("dict8.pt"), 2).unwrap().layers[&2],
            v.layers[&13]
        );
    }

    #[test]
    fn malformed_and_unsupported_pt_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("junk.pt");
        std::fs::write(&p, b"PK\x03\x04 not really").unwrap();
        assert!(read(&p, 0).unwrap_err().to_string().contains("junk.pt"));
        let e = read(&fixture("f64.pt"), 0).unwrap_err().to_string();
        assert!(e.contains("expected float32, float16 or bfloat16"), "{e}");
        let e = read(&fixture("matrix.pt"), 0).unwrap_err().to_string();
        assert!(e.contains("one contiguous dimension"), "{e}");
    }
}
