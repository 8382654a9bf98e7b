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

    /// `sum_i w_i v_i` layer by layer (layers missing from a vector count as zero), e.g.
    /// the paper's synergy `v_power + v_wealth`. Widths must agree.
    pub fn combine(parts: &[(&SteeringVector, f32)], meta: VectorMeta) -> Result<Self> {
        let mut layers: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let width = parts.iter().find_map(|(v, _)| v.hidden_size());
        for (v, w) in parts {
            if v.hidden_size() != width {
                return Err(Error::VectorMismatch {
                    name: v.meta.name.clone(),
                    reason: format!("width {:?} differs from {:?}", v.hidden_size(), width),
                });
            }
            for (l, d) in &v.layers {
                let acc = layers.entry(*l).or_insert_with(|| vec![0.0; d.len()]);
                acc.iter_mut().zip(d).for_each(|(a, x)| *a += w * x);
            }
        }
        Ok(Self { layers, meta })
    }

    /// Every direction scaled to unit L2 norm (zero directions stay zero).
    pub fn normalized(&self) -> Self {
        let mut out = self.clone();
        for d in out.layers.values_mut() {
            let n = l2(d);
            if n > 0.0 {
                d.iter_mut().for_each(|x| *x /= n);
            }
        }
        out
    }

    /// L2 norm of each layer's direction.
    pub fn norms(&self) -> BTreeMap<usize, f32> {
        self.layers.iter().map(|(l, d)| (*l, l2(d))).collect()
    }

    /// Cosine similarity with `other` on each layer both steer; vectors of different
    /// widths (made for different models) are refused.
    pub fn cosine(&self, other: &SteeringVector) -> Result<BTreeMap<usize, f32>> {
        if let (Some(a), Some(b)) = (self.hidden_size(), other.hidden_size()) {
            if a != b {
                return Err(Error::VectorMismatch {
                    name: format!("{} vs {}", self.meta.name, other.meta.name),
                    reason: format!("widths differ ({a} vs {b}): they belong to different models"),
                });
            }
        }
        Ok(self
            .layers
            .iter()
            .filter_map(|(l, a)| {
                let b = other.layers.get(l)?;
                let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                let n = l2(a) as f64 * l2(b) as f64;
                Some((*l, if n > 0.0 { (dot / n) as f32 } else { 0.0 }))
            })
            .collect())
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

    /// The model sha256 recorded in the metadata (`meta.model` = `MODEL sha256:HEX`).
    pub fn model_sha256(&self) -> Option<&str> {
        let m = self.meta.model.as_deref()?;
        let hex = &m[m.rfind("sha256:")? + "sha256:".len()..];
        let hex = hex.split_whitespace().next()?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
    }

    /// A warning when the vector records a model other than the one it is applied to
    /// (`model`, with its sha256): a transfer, which the paper shows can work between
    /// related models and fine-tunes but which nothing checks. None when the hashes
    /// agree or either is unknown. (Shapes are [`SteeringVector::check_fits`]'s job.)
    pub fn transfer_warning(&self, model: &str, model_sha256: Option<&str>) -> Option<String> {
        let (ours, theirs) = (self.model_sha256()?, model_sha256?);
        if ours.eq_ignore_ascii_case(theirs) {
            return None;
        }
        let made_for = self.meta.model.as_deref().unwrap_or_default();
        let made_for = made_for[..made_for.rfind("sha256:").unwrap_or(0)].trim_end();
        Some(format!(
            "steering vector {} was made for another model ({made_for}, sha256 {}…), \
             not {model} (sha256 {}…): applying it as a transfer",
            self.meta.name,
            &ours[..12],
            &theirs[..theirs.len().min(12)]
        ))
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

fn l2(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(layers: &[(usize, Vec<f32>)]) -> SteeringVector {
        SteeringVector {
            layers: layers.iter().cloned().collect(),
            meta: VectorMeta {
                name: "t".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn combination_norms_and_cosines_are_layerwise() {
        let a = v(&[(1, vec![3.0, 4.0]), (2, vec![1.0, 0.0])]);
        let b = v(&[(2, vec![0.0, 2.0])]);
        let c = SteeringVector::combine(&[(&a, 1.0), (&b, -0.5)], VectorMeta::default()).unwrap();
        assert_eq!(c.layers[&1], vec![3.0, 4.0]);
        assert_eq!(c.layers[&2], vec![1.0, -1.0]);
        assert_eq!(a.norms()[&1], 5.0);
        assert_eq!(a.normalized().layers[&1], vec![0.6, 0.8]);
        assert_eq!(a.cosine(&b).unwrap(), BTreeMap::from([(2, 0.0)]));
        assert!((a.cosine(&a).unwrap()[&1] - 1.0).abs() < 1e-6);
        assert!(a.cosine(&v(&[(1, vec![1.0; 3])])).is_err());
        assert!(SteeringVector::combine(
            &[(&a, 1.0), (&v(&[(1, vec![1.0])]), 1.0)],
            VectorMeta::default()
        )
        .is_err());
    }

    #[test]
    fn transfer_warning_compares_recorded_and_actual_model_hashes() {
        let sha_a = "a".repeat(64);
        let sha_b = "b".repeat(64);
        let mut x = v(&[(1, vec![1.0])]);
        assert_eq!(
            x.transfer_warning("m.gguf", Some(&sha_a)),
            None,
            "no record"
        );
        x.meta.model = Some(format!("models/base.gguf + LoRA ft sha256:{sha_a}"));
        assert_eq!(x.model_sha256(), Some(sha_a.as_str()));
        assert_eq!(x.transfer_warning("m.gguf", Some(&sha_a)), None);
        assert_eq!(x.transfer_warning("m.gguf", None), None);
        let w = x.transfer_warning("m.gguf", Some(&sha_b)).unwrap();
        assert!(
            w.contains("models/base.gguf + LoRA ft") && w.contains("m.gguf"),
            "{w}"
        );
        assert!(
            w.contains("aaaaaaaaaaaa…") && w.contains("bbbbbbbbbbbb…"),
            "{w}"
        );
        assert!(!w.contains("  "), "{w}");
        x.meta.model = Some("models/base.gguf sha256:short".into());
        assert_eq!(x.model_sha256(), None, "not a sha256");
    }
}
