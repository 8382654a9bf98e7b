//! The BiPO objective (Cao et al. 2024, Eq. 3) on the cached-activation engine.
//!
//! For a batch of pairs and a direction d in {-1, +1} drawn per step:
//!
//! ```text
//! loss = mean_i -log sigmoid( beta * d * [ (lp_dv(match_i) - lp_0(match_i))
//!                                        - (lp_dv(opp_i)   - lp_0(opp_i)) ] )
//! ```
//!
//! with `lp` the summed log-probability of the response tokens (EOS included) and
//! `lp_0` the unsteered model. Two computations of the same loss:
//! - [`Prepared::loss`] (bipo's): from the engine's cache of block L's output and of
//!   `lp_0`; each step runs only blocks L+1.. and the head at response positions.
//! - [`Prepared::loss_plain`] (the reference algorithm): a full steered forward and two
//!   full unsteered forwards every step, no caches. Used to check the fast path and as
//!   the benchmark baseline.

use candle_core::{DType, Tensor};

use super::config::TrainConfig;
use super::objective::{neg_log_sigmoid, LossOutput, Objective};
use super::trainer::step_direction;
use crate::activations::Prepared;
use crate::error::Result;

/// BiPO with its temperature `beta`.
pub struct Bipo {
    pub beta: f32,
}

/// Registered in [`super::objective::METHODS`].
pub fn objective(cfg: &TrainConfig) -> Box<dyn Objective> {
    Box::new(Bipo {
        beta: cfg.beta as f32,
    })
}

impl Objective for Bipo {
    fn name(&self) -> &'static str {
        "bipo"
    }

    fn draw(&self, seed: u64, step: usize) -> f32 {
        step_direction(seed, step)
    }

    fn held_out_draws(&self) -> &'static [f32] {
        &[1.0, -1.0]
    }

    fn loss(&self, p: &Prepared, idx: &[usize], v: &Tensor, d: f32) -> Result<LossOutput> {
        p.loss(idx, v, d, self.beta)
    }
}

impl Prepared<'_> {
    /// BiPO loss on examples `idx` with the vector `v` (layers x hidden,) steered by `d`.
    pub fn loss(&self, idx: &[usize], v: &Tensor, d: f32, beta: f32) -> Result<LossOutput> {
        let states = self.prefix_states(idx)?;
        let (delta, later) = self.split_vector(v, d as f64)?;
        let lp = self.logp_steered(idx, &states, Some(&delta), &later)?;
        finish(&lp, &self.ref_tensor(idx)?, d, beta)
    }

    /// The same loss computed the reference way: full steered forward, and two full
    /// unsteered forwards for the reference, every call; no caches.
    pub fn loss_plain(&self, idx: &[usize], v: &Tensor, d: f32, beta: f32) -> Result<LossOutput> {
        let lp = self.logp_plain(idx, Some(&(v * d as f64)?))?;
        // Two reference forwards (matching and opposite), as the reference code does;
        // here both halves come from one padded batch, computed twice.
        let ref_a = self.logp_plain(idx, None)?;
        let ref_b = self.logp_plain(idx, None)?;
        let pick = |t: &Tensor, w: usize| -> Result<Vec<f32>> {
            let v: Vec<f32> = t.to_vec1()?;
            Ok(v.iter().skip(w).step_by(2).copied().collect())
        };
        let (ra, rb) = (pick(&ref_a, 0)?, pick(&ref_b, 1)?);
        let r: Vec<f32> = ra.iter().zip(&rb).flat_map(|(a, b)| [*a, *b]).collect();
        let n = r.len();
        finish(&lp, &Tensor::from_vec(r, n, self.device())?, d, beta)
    }
}

/// lp, lp_ref: (2n,) interleaved (matching, opposite) per pair.
fn finish(lp: &Tensor, lp_ref: &Tensor, d: f32, beta: f32) -> Result<LossOutput> {
    let n = lp.dim(0)? / 2;
    let diff = (lp.to_dtype(DType::F32)? - lp_ref)?.reshape((n, 2))?;
    let margin = ((diff.narrow(1, 0, 1)? - diff.narrow(1, 1, 1)?)?.squeeze(1)? * beta as f64)?;
    let z = (&margin * d as f64)?;
    Ok(LossOutput {
        loss: neg_log_sigmoid(&z)?.mean_all()?,
        margins: margin.to_vec1()?,
    })
}
