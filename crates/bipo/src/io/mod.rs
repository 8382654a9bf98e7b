//! Steering-vector files. Layer-index conventions of other tools live only here.

pub mod controlvector;
pub mod safetensors;

use std::path::Path;

use crate::error::Result;
use crate::vector::SteeringVector;

/// Reads a steering vector from any supported file format (by content, not name).
pub fn read_vector(path: &Path) -> Result<SteeringVector> {
    if crate::load::gguf::is_gguf(path) {
        controlvector::read(path)
    } else if path.is_file() && crate::load::weights::check_safetensors_header(path).is_ok() {
        safetensors::read(path)
    } else if path.is_file() {
        Err(crate::Error::bad_file(
            path,
            "not a steering vector (expected GGUF control vector or safetensors)",
        ))
    } else {
        Err(crate::Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ))
    }
}
