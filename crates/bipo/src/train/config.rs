//! Training configuration: every default is a named constant (the BiPO paper's and its
//! released code's values), every field settable from a TOML file or a flag.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const DEFAULT_LR: f64 = 5e-4;
pub const DEFAULT_BETA: f64 = 0.1;
pub const DEFAULT_BATCH_SIZE: usize = 4;
pub const DEFAULT_EPOCHS: usize = 20;
/// Warm-up steps when not set: this many, but at most a tenth of the schedule.
pub const DEFAULT_WARMUP_STEPS: usize = 100;
/// Depth of the default steering layer, as a fraction of the model's layers (the BiPO
/// paper steers layer 15 of Llama-2-7b's 32; CAA's sweeps peak near the middle).
pub const DEFAULT_LAYER_DEPTH: f64 = 0.45;
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.05;
pub const DEFAULT_ADAM_BETA1: f64 = 0.9;
pub const DEFAULT_ADAM_BETA2: f64 = 0.999;
pub const DEFAULT_ADAM_EPS: f64 = 1e-8;
pub const DEFAULT_GRAD_CLIP: f64 = 1.0;
pub const DEFAULT_SEED: u64 = 0;
/// Memory for cached layer-L states; beyond it they are recomputed every step.
pub const DEFAULT_CACHE_MB: usize = 8192;

/// The training objective when none is named (see [`super::objective::METHODS`]).
pub const DEFAULT_METHOD: &str = "bipo";
/// RePS: the steering factors a step samples from (bipo's choice around multiplier 1,
/// so the trained vector's unit strength sits inside the range it was trained on).
pub const DEFAULT_REPS_FACTORS: [f64; 4] = [0.5, 1.0, 1.5, 2.0];

/// Largest accepted `cache_mb` (1 TiB): beyond it the byte count would overflow.
pub const MAX_CACHE_MB: usize = 1 << 20;

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The objective: `bipo` (the paper's, Eq. 3) or `reps` (see [`super::objective`]).
    pub method: String,
    /// 0-based decoder block whose output is steered (with `layers`: the lowest).
    pub layer: usize,
    /// Several blocks trained jointly, one direction each (ascending, the first equal
    /// to `layer`); empty = `layer` alone.
    pub layers: Vec<usize>,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule still spans `epochs`).
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub beta: f64,
    pub batch_size: usize,
    /// Pairs per forward/backward pass inside a step (`None` = the whole batch): smaller
    /// parts need less memory; gradients are summed, so the step is the same up to
    /// rounding.
    pub micro_batch: Option<usize>,
    /// Linear warm-up steps; `None` = [`DEFAULT_WARMUP_STEPS`] but at most 10% of the
    /// schedule (so short runs on small data still reach the peak rate).
    pub warmup_steps: Option<usize>,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Gradient-norm clipping threshold.
    pub grad_clip: f64,
    pub seed: u64,
    /// System prompt for the chat template.
    pub system: Option<String>,
    /// Built-in template (`llama2`, `mistral`) instead of the model's own.
    pub template: Option<String>,
    pub cache_mb: usize,
    /// Positions the vector is added to while training: all (the paper's), the prompt's
    /// only, or the responses' only (`generated`).
    pub positions: crate::steer::Positions,
    /// RePS: steering factors sampled, one per step.
    pub reps_factors: Vec<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: DEFAULT_METHOD.into(),
            layer: 15,
            layers: Vec::new(),
            epochs: DEFAULT_EPOCHS,
            max_steps: None,
            lr: DEFAULT_LR,
            beta: DEFAULT_BETA,
            batch_size: DEFAULT_BATCH_SIZE,
            micro_batch: None,
            warmup_steps: None,
            weight_decay: DEFAULT_WEIGHT_DECAY,
            adam_beta1: DEFAULT_ADAM_BETA1,
            adam_beta2: DEFAULT_ADAM_BETA2,
            adam_eps: DEFAULT_ADAM_EPS,
            grad_clip: DEFAULT_GRAD_CLIP,
            seed: DEFAULT_SEED,
            system: None,
            template: None,
            cache_mb: DEFAULT_CACHE_MB,
            positions: crate::steer::Positions::All,
            reps_factors: DEFAULT_REPS_FACTORS.to_vec(),
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml(path: &std::path::Path) -> Result<Self> {
        let text = crate::util::read_text(path)?;
        toml::from_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))
    }

    /// The settings of the TOML file at `path`, or the defaults without one.
    pub fn from_toml_or_default(path: Option<&std::path::Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::from_toml)
    }

    /// Whether the TOML file at `path` sets `key` itself (rather than leaving a default).
    pub fn toml_sets(path: &std::path::Path, key: &str) -> Result<bool> {
        let text = crate::util::read_text(path)?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(table.contains_key(key))
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, x: f64| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(name, format!("{x} (must be > 0)")))
            }
        };
        super::objective::objective(self)?.check(self)?;
        pos("lr", self.lr)?;
        pos("beta", self.beta)?;
        pos("adam_eps", self.adam_eps)?;
        pos("grad_clip", self.grad_clip)?;
        for (n, x) in [("batch_size", self.batch_size), ("epochs", self.epochs)] {
            if x == 0 {
                return Err(Error::invalid(n, "0 (must be >= 1)"));
            }
        }
        if !self.layers.is_empty() {
            let ascending = self.layers.windows(2).all(|w| w[0] < w[1]);
            if !ascending || self.layers[0] != self.layer {
                return Err(Error::invalid(
                    "layers",
                    format!(
                        "{:?} (must ascend without repeats and start at layer {})",
                        self.layers, self.layer
                    ),
                ));
            }
        }
        if self.reps_factors.is_empty() {
            return Err(Error::invalid(
                "reps_factors",
                "[] (give at least one factor)",
            ));
        }
        for &f in &self.reps_factors {
            pos("reps_factors", f)?;
        }
        if self.micro_batch == Some(0) {
            return Err(Error::invalid("micro_batch", "0 (must be >= 1)"));
        }
        if self.max_steps == Some(0) {
            return Err(Error::invalid(
                "max_steps",
                "0 (must be >= 1; leave it out to run every epoch)",
            ));
        }
        if self.cache_mb > MAX_CACHE_MB {
            return Err(Error::invalid(
                "cache_mb",
                format!("{} (at most {MAX_CACHE_MB})", self.cache_mb),
            ));
        }
        for (n, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(n, format!("{b} (must be in [0, 1))")));
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                "weight_decay",
                format!("{} (must be >= 0)", self.weight_decay),
            ));
        }
        Ok(())
    }

    /// The blocks a run steers, ascending (the first is cached).
    pub fn steered_layers(&self) -> Vec<usize> {
        if self.layers.is_empty() {
            vec![self.layer]
        } else {
            self.layers.clone()
        }
    }

    /// Steps per epoch for `n` pairs.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size)
    }

    /// Warm-up steps of a schedule of `total` steps (see `warmup_steps`).
    pub fn warmup(&self, total: usize) -> usize {
        self.warmup_steps
            .unwrap_or_else(|| DEFAULT_WARMUP_STEPS.min(total.div_ceil(10)).max(1))
    }

    /// Learning rate at 0-based step `step` of `total`: linear warm-up, then cosine
    /// decay to 0 at the last configured step.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = self.warmup(total);
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The default steering layer of a model with `num_layers` blocks.
pub fn default_layer(num_layers: usize) -> usize {
    ((num_layers as f64 * DEFAULT_LAYER_DEPTH).round() as usize).min(num_layers.saturating_sub(1))
}

impl TrainConfig {
    /// Settings that make a run on `pairs` pairs of a `hidden`-wide model ineffective,
    /// each as one sentence (empty when the run looks sound).
    pub fn warnings(&self, pairs: usize, hidden: usize) -> Vec<String> {
        let mut w = Vec::new();
        let total = self.steps_per_epoch(pairs) * self.epochs;
        let run = self.max_steps.map_or(total, |m| m.min(total));
        let warmup = self.warmup(total);
        if warmup >= total {
            w.push(format!(
                "warm-up ({warmup} steps) is not shorter than the whole schedule ({total} steps = \
                 {} per epoch x {} epochs): the learning rate never reaches its peak; lower \
                 --warmup-steps or leave it out",
                self.steps_per_epoch(pairs),
                self.epochs
            ));
        } else if run <= warmup {
            w.push(format!(
                "--max-steps {run} stops inside the warm-up ({warmup} steps): the learning rate \
                 never reaches its peak"
            ));
        }
        // AdamW moves each coordinate by about lr per step at most, so after the run
        // |v| <= sqrt(hidden) * sum of the step sizes.
        let reach: f64 =
            (0..run).map(|s| self.lr_at(s, total)).sum::<f64>() * (hidden as f64).sqrt();
        if reach < 1.0 {
            w.push(format!(
                "{run} steps at lr {} can move the vector to a norm of at most ~{reach:.3} \
                 (AdamW moves each of its {hidden} entries by about lr per step): too small to \
                 steer; raise --lr, --epochs or --max-steps",
                self.lr
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        let c = TrainConfig {
            warmup_steps: Some(10),
            ..Default::default()
        };
        assert!((c.lr_at(0, 110) - c.lr / 10.0).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - c.lr).abs() < 1e-12);
        assert!((c.lr_at(60, 110) - c.lr * 0.5).abs() < 1e-9);
        assert!(c.lr_at(109, 110) < c.lr * 0.001);
    }

    #[test]
    fn default_warm_up_is_a_tenth_of_a_short_schedule_and_100_of_a_long_one() {
        let c = TrainConfig::default();
        assert_eq!(c.warmup(3200), 100);
        assert_eq!(c.warmup(60), 6);
        assert_eq!(c.warmup(3), 1);
        assert_eq!(
            TrainConfig {
                warmup_steps: Some(7),
                ..c
            }
            .warmup(3),
            7
        );
    }

    #[test]
    fn ineffective_settings_are_warned_about() {
        // The reported case: 12 pairs, batch 4, 20 epochs, --max-steps 10, old default
        // warm-up 100 and lr 5e-4.
        let old = TrainConfig {
            warmup_steps: Some(100),
            max_steps: Some(10),
            ..Default::default()
        };
        let w = old.warnings(12, 576).join("\n");
        assert!(
            w.contains("warm-up (100 steps) is not shorter than the whole schedule (60 steps"),
            "{w}"
        );
        assert!(w.contains("too small to steer"), "{w}");
        let short = TrainConfig {
            warmup_steps: Some(20),
            max_steps: Some(10),
            ..Default::default()
        };
        assert!(short
            .warnings(12, 576)
            .join("\n")
            .contains("--max-steps 10 stops inside the warm-up"));
        // The paper's settings on the paper's data: nothing to say.
        assert!(TrainConfig::default().warnings(640, 4096).is_empty());
        // The new defaults on 12 pairs with a higher rate: nothing either.
        let small = TrainConfig {
            lr: 0.01,
            ..Default::default()
        };
        assert!(
            small.warnings(12, 576).is_empty(),
            "{:?}",
            small.warnings(12, 576)
        );
    }

    #[test]
    fn the_default_layer_is_near_the_middle() {
        assert_eq!(default_layer(32), 14);
        assert_eq!(default_layer(30), 14);
        assert_eq!(default_layer(24), 11);
        assert_eq!(default_layer(1), 0);
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "layer = 13\nlr = 0.001\n").unwrap();
        let c = TrainConfig::from_toml(&p).unwrap();
        assert_eq!((c.layer, c.lr, c.beta), (13, 0.001, DEFAULT_BETA));
        std::fs::write(&p, "layr = 13\n").unwrap();
        assert!(TrainConfig::from_toml(&p)
            .unwrap_err()
            .to_string()
            .contains("layr"));
    }
}
