//! Steering-vector files. Layer-index conventions of other tools live only here.

pub mod controlvector;

use std::path::Path;

use crate::error::Result;
use crate::vector::SteeringVector;

/// Reads a steering vector from any supported file format.
pub fn read_vector(path: &Path) -> Result<SteeringVector> {
    controlvector::read(path)
}
