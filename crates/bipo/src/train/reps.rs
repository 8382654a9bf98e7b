//! RePS, reference-free preference steering (Wu et al. 2025, "Improved Representation
//! Steering for Language Models", arXiv 2505.20809), for one steering vector `v` added
//! to block L's output, on preference pairs (x, matching y_m, opposite y_o).
//!
//! Each step draws a steering factor `a` from `reps_factors` and minimises, per pair,
//!
//! ```text
//! l_s(y) = log p(y | x, h_L <- h_L + a v) / |y|          length-normalised, steered
//! l_n(y) = log p(y | x, h_L <- h_L - relu(h_L . w) w) / |y|,  w = v / |v|   (nulled)
//! b+ = max(lp_0(y_o) - lp_0(y_m), 1)      b- = max(lp_0(y_m) - lp_0(y_o), 1)
//! D+ = b+ l_s(y_m) - l_s(y_o)             (steering: the behaviour gets likelier)
//! D- = b- l_n(y_o) - l_n(y_m)             (suppression: nulling v removes it)
//! loss = -log sigmoid(D+) - log sigmoid(D-)
//! ```
//!
//! `lp_0` is the unsteered summed log-probability (EOS included, `|y|` counts it): the
//! model enters only through the factors b+- (which up-weight a response the model finds
//! unlikely), never as a reference term inside the sigmoid as in BiPO/DPO, hence
//! "reference-free". The suppression term uses the paper's nulling intervention for
//! steering vectors (the positive projection on the vector's direction removed), not
//! -v, so RePS trains `+v` for steering and the direction itself for removal; negative
//! multipliers are not trained. `|v|` is smoothed (`sqrt(|v|^2 + 1e-12)`) so v = 0 is
//! finite: there both interventions do nothing and the loss has the closed form of
//! the unsteered log-probabilities (tested).

use candle_core::{DType, Tensor};
use rand::Rng;

use super::config::TrainConfig;
use super::objective::{neg_log_sigmoid, LossOutput, Objective};
use crate::activations::Prepared;
use crate::error::{Error, Result};

/// RePS with the steering factors it samples from.
pub struct Reps {
    pub factors: Vec<f32>,
}

/// Registered in [`super::objective::METHODS`].
pub fn objective(cfg: &TrainConfig) -> Box<dyn Objective> {
    Box::new(Reps {
        factors: cfg.reps_factors.iter().map(|&f| f as f32).collect(),
    })
}

/// Random stream of the factor draws (the trainer's streams are 1 and 2).
const STREAM_FACTOR: u64 = 3;
/// Why RePS refuses several layers.
const ONE_LAYER: &str =
    "RePS trains one layer (its nulling intervention acts on the cached layer's states)";

/// |v|^2 smoothing: w = v / sqrt(|v|^2 + EPS2).
const EPS2: f64 = 1e-12;

impl Objective for Reps {
    fn name(&self) -> &'static str {
        "reps"
    }

    fn draw(&self, seed: u64, step: usize) -> f32 {
        let mut rng = super::trainer::step_rng(seed, STREAM_FACTOR, step);
        self.factors[rng.random_range(0..self.factors.len())]
    }

    fn held_out_draws(&self) -> &'static [f32] {
        &[1.0]
    }

    fn check(&self, cfg: &TrainConfig) -> Result<()> {
        match cfg.steered_layers().as_slice() {
            [_] => Ok(()),
            many => Err(Error::invalid(
                "layers",
                format!("{many:?}: {ONE_LAYER}; use --method bipo for several"),
            )),
        }
    }

    fn loss(&self, p: &Prepared, idx: &[usize], v: &Tensor, a: f32) -> Result<LossOutput> {
        if p.steered_layers().len() > 1 {
            return Err(Error::invalid("layers", ONE_LAYER));
        }
        let n = idx.len();
        let dt = p.model().dtype();
        let states = p.prefix_states(idx)?;
        // (2n,) interleaved (matching, opposite) summed log-probs under each intervention.
        let steer = (v * a as f64)?.to_dtype(dt)?;
        let lp_s = p.logp_from_prefix(idx, &states, Some(&steer))?;
        let w = v
            .broadcast_div(&(v.sqr()?.sum_all()? + EPS2)?.sqrt()?)?
            .to_dtype(dt)?;
        let hs = &states.0;
        let (b, t, h) = hs.dims3()?;
        // (b*t, h) x (h, 1) -> (b*t, 1): the projection on w, kept where positive.
        let proj = hs.reshape((b * t, h))?.matmul(&w.unsqueeze(1)?)?.relu()?;
        let null = proj
            .broadcast_mul(&w.unsqueeze(0)?)?
            .reshape((b, t, h))?
            .neg()?;
        let lp_n = p.logp_from_prefix(idx, &states, Some(&null))?;
        // Constants per pair: 1/|y| for both responses, and the factors b+ and b-.
        let mut inv_len = Vec::with_capacity(2 * n);
        let (mut bp, mut bm) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &i in idx {
            let e = &p.examples[i];
            inv_len.extend(e.responses.iter().map(|r| 1.0 / r.len() as f32));
            let [m, o] = p.ref_logp[i];
            bp.push((o - m).max(1.0));
            bm.push((m - o).max(1.0));
        }
        let dev = p.device();
        let inv_len = Tensor::from_vec(inv_len, 2 * n, dev)?;
        let (bp, bm) = (Tensor::from_vec(bp, n, dev)?, Tensor::from_vec(bm, n, dev)?);
        let norm = |lp: &Tensor| -> Result<(Tensor, Tensor)> {
            let l = (lp.to_dtype(DType::F32)? * &inv_len)?.reshape((n, 2))?;
            Ok((
                l.narrow(1, 0, 1)?.squeeze(1)?,
                l.narrow(1, 1, 1)?.squeeze(1)?,
            ))
        };
        let (s_m, s_o) = norm(&lp_s)?;
        let (n_m, n_o) = norm(&lp_n)?;
        let d_plus = ((s_m * bp)? - s_o)?;
        let d_minus = ((n_o * bm)? - n_m)?;
        let loss = (neg_log_sigmoid(&d_plus)? + neg_log_sigmoid(&d_minus)?)?.mean_all()?;
        Ok(LossOutput {
            loss,
            margins: d_plus.to_vec1()?,
        })
    }
}
