//! Steering-vector files. Layer-index conventions of other tools live only here.

pub mod controlvector;
pub mod pt;
pub mod safetensors;

use std::path::Path;

use crate::error::Result;
use crate::vector::SteeringVector;

/// Highest layer index a vector file may name: far above any real model's depth, low
/// enough that a corrupted name is caught as such.
pub const MAX_LAYER_INDEX: usize = 1 << 16;

/// Parses the layer index in a tensor name (`direction.N`, `layer.N`): plain decimal
/// digits without a sign or leading zeros, at most [`MAX_LAYER_INDEX`].
pub(crate) fn parse_layer_index(s: &str) -> Option<usize> {
    let plain =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    s.parse().ok().filter(|&n| plain && n <= MAX_LAYER_INDEX)
}

/// Extensions [`write_vector`] writes, and the format each stands for.
pub const WRITABLE: &[(&str, &str)] = &[
    ("safetensors", "bipo safetensors"),
    ("gguf", "llama.cpp control vector"),
];

/// Writes `v` in the format named by `path`'s extension (`.safetensors` or `.gguf`;
/// `model_hint` is llama.cpp's architecture name for GGUF). Any other extension is
/// refused, so no file carries a name that lies about its format.
pub fn write_vector(v: &SteeringVector, path: &Path, model_hint: &str) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => controlvector::write(v, model_hint, path),
        Some("safetensors") => safetensors::write(v, path),
        other => Err(crate::Error::invalid(
            format!("output file {}", path.display()),
            format!(
                "{} cannot be written; use a .safetensors or .gguf extension",
                other.map_or("a file without an extension".to_string(), |e| format!(
                    "`.{e}`"
                ))
            ),
        )),
    }
}

/// Whether the file starts like a zip archive (PyTorch `.pt`).
fn is_zip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"PK\x03\x04"
}

/// Like [`read_vector`], and also reads PyTorch `.pt` vectors (the BiPO paper's),
/// whose layer is not in the file: `layer` names it.
pub fn read_vector_at(path: &Path, layer: Option<usize>) -> Result<SteeringVector> {
    match layer {
        Some(l) if is_zip(path) => pt::read(path, l),
        _ => read_vector(path),
    }
}

/// Reads a steering vector from any supported file format (by content, not name).
pub fn read_vector(path: &Path) -> Result<SteeringVector> {
    if is_zip(path) {
        return Err(crate::Error::bad_file(
            path,
            "a PyTorch .pt vector does not say its layer: convert it with `bipo vector convert FILE.pt OUT --layer L`",
        ));
    }
    if crate::load::gguf::is_gguf(path) {
        controlvector::read(path)
    } else if path.is_file() && crate::load::weights::check_safetensors_header(path).is_ok() {
        safetensors::read(path)
    } else if path.is_file() {
        Err(crate::Error::bad_file(
            path,
            "not a steering vector (expected GGUF control vector or safetensors)",
        ))
    } else if path.is_dir() {
        Err(crate::Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ))
    } else {
        Err(crate::Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }
}
