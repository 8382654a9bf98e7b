//! [`SteeringVector`]: the one value type for steering directions, from training
//! output to files to application.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a vector came from and what it is for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VectorMeta {
    /// Human-readable name (file stem by default), used in error messages.
    pub name: String,
    /// Model the vector was made for (architecture, file hash or Hub id), if known.
    pub model: Option<String>,
    /// How it was made: "bipo", "caa", "llama.cpp control vector", ...
    pub method: Option<String>,
    /// Free-form extra metadata (hyper-parameters, data hash, ...).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// One direction per steered layer.
///
/// Layer `L` is the 0-based decoder block whose *output* the direction is added to
/// (Hugging Face `hidden_states[L+1]`, llama.cpp `direction.L`).
#[derive(Clone, Debug, PartialEq)]
pub struct SteeringVector {
    pub layers: BTreeMap<usize, Vec<f32>>,
    pub meta: VectorMeta,
}

impl SteeringVector {
    /// A vector with one direction at `layer`.
    pub fn single(layer: usize, direction: Vec<f32>, meta: VectorMeta) -> Self {
        Self {
            layers: BTreeMap::from([(layer, direction)]),
            meta,
        }
    }

    /// Width of the directions (all layers share it); None when empty.
    pub fn hidden_size(&self) -> Option<usize> {
        self.layers.values().next().map(|v| v.len())
    }

    /// Every direction multiplied by `k`.
    pub fn scaled(&self, k: f32) -> Self {
        let mut out = self.clone();
        out.layers
            .values_mut()
            .for_each(|v| v.iter_mut().for_each(|x| *x *= k));
        out
    }

    /// Checks the vector is internally consistent: non-empty, one width, finite values.
    pub fn validate(&self) -> Result<()> {
        let name = &self.meta.name;
        let Some(width) = self.hidden_size() else {
            return Err(Error::VectorMismatch {
                name: name.clone(),
                reason: "has no layers".into(),
            });
        };
        for (l, v) in &self.layers {
            if v.len() != width {
                return Err(Error::VectorMismatch {
                    name: name.clone(),
                    reason: format!("layer {l} has width {}, layer widths differ", v.len()),
                });
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::VectorMismatch {
                    name: name.clone(),
                    reason: format!("layer {l} element {i} is {}", v[i]),
                });
            }
        }
        Ok(())
    }

    /// Checks the vector fits a model with `num_layers` blocks of width `hidden_size`.
    pub fn check_fits(&self, hidden_size: usize, num_layers: usize) -> Result<()> {
        self.validate()?;
        let name = &self.meta.name;
        let width = self.hidden_size().unwrap_or(0);
        if width != hidden_size {
            return Err(Error::VectorMismatch {
                name: name.clone(),
                reason: format!("width {width} != model hidden size {hidden_size}"),
            });
        }
        if let Some(&l) = self.layers.keys().find(|&&l| l >= num_layers) {
            return Err(Error::VectorMismatch {
                name: name.clone(),
                reason: format!("layer {l} >= model's {num_layers} layers"),
            });
        }
        Ok(())
    }
}
