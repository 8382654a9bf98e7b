//! Training objectives: what one optimizer step minimises, computed on the
//! cached-activation engine ([`Prepared`]). The trainer owns everything else (AdamW,
//! schedule, clipping, checkpoints, exact resume), so an objective is one file that
//! implements [`Objective`] plus one line in [`METHODS`].
//!
//! - `bipo` ([`super::bipo`]): Cao et al. 2024, Eq. 3; a direction d in {-1, +1} drawn
//!   per step; needs the unsteered log-probabilities (cached once).
//! - `reps` ([`super::reps`]): Wu et al. 2025, reference-free preference steering; a
//!   steering factor drawn per step; steering and suppression terms in every step.

use candle_core::Tensor;

use super::config::TrainConfig;
use crate::activations::Prepared;
use crate::error::{Error, Result};

/// Output of one loss evaluation.
pub struct LossOutput {
    /// Scalar loss (differentiable w.r.t. the vector when it is a `Var`).
    pub loss: Tensor,
    /// Per pair: the objective's preference margin at the step's draw, signed so that
    /// `margin * draw > 0` means the pair is ranked the way the draw asks.
    pub margins: Vec<f32>,
}

/// A training objective for one steering vector at the prepared layer.
pub trait Objective: Send + Sync {
    /// The name `--method` takes, recorded in the vector's metadata and the run record.
    fn name(&self) -> &'static str;

    /// The random draw of 0-based `step` (BiPO's direction, RePS's steering factor),
    /// a function of (seed, step) only, so a resumed run redraws the same values.
    fn draw(&self, seed: u64, step: usize) -> f32;

    /// Draws at which held-out loss is reported after each epoch: the first is the
    /// "+v" figure, a second (BiPO's -1) the "-v" one.
    fn held_out_draws(&self) -> &'static [f32];

    /// Refuses settings this objective cannot train (checked by
    /// [`TrainConfig::validate`]); the default accepts all.
    fn check(&self, _cfg: &TrainConfig) -> Result<()> {
        Ok(())
    }

    /// Mean loss over examples `idx` with the vector `v` (layers x hidden,) at `draw`.
    fn loss(&self, p: &Prepared, idx: &[usize], v: &Tensor, draw: f32) -> Result<LossOutput>;
}

type Constructor = fn(&TrainConfig) -> Box<dyn Objective>;

/// Every objective `--method` accepts: name and constructor.
pub const METHODS: &[(&str, Constructor)] = &[
    ("bipo", super::bipo::objective),
    ("reps", super::reps::objective),
];

/// Refuses a method no objective is registered under, naming the ones that are.
pub fn check_method(name: &str) -> Result<()> {
    if METHODS.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    let names: Vec<&str> = METHODS.iter().map(|(n, _)| *n).collect();
    Err(Error::invalid(
        "method",
        format!("`{name}` (choose {})", names.join(" or ")),
    ))
}

/// The objective `cfg.method` names.
pub fn objective(cfg: &TrainConfig) -> Result<Box<dyn Objective>> {
    check_method(&cfg.method)?;
    let (_, make) = METHODS
        .iter()
        .find(|(n, _)| *n == cfg.method)
        .expect("checked above");
    Ok(make(cfg))
}

/// Mean held-out loss and margin over all of `p` at `draw`, without gradients,
/// `batch` examples per pass.
pub fn evaluate(
    obj: &dyn Objective,
    p: &Prepared,
    v: &Tensor,
    draw: f32,
    batch: usize,
) -> Result<(f32, f32)> {
    let (mut loss, mut margin, mut n) = (0f64, 0f64, 0usize);
    let idx: Vec<usize> = (0..p.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let out = obj.loss(p, chunk, &v.detach(), draw)?;
        loss += out.loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        margin += out.margins.iter().map(|&m| m as f64).sum::<f64>();
        n += chunk.len();
    }
    Ok(((loss / n as f64) as f32, (margin / n as f64) as f32))
}

/// `-log sigmoid(z)` elementwise, stable for any z: `relu(-z) + log(1 + exp(-|z|))`.
pub fn neg_log_sigmoid(z: &Tensor) -> Result<Tensor> {
    Ok((z.neg()?.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}
