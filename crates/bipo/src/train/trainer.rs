//! The training loop of every objective ([`super::objective`]): AdamW on the vector
//! only, warm-up + cosine schedule, gradient clipping, a seeded draw per step (BiPO's
//! direction, RePS's factor), per-step metrics, a checkpoint and
//! a vector file after every epoch (and a checkpoint every few steps), exact resume,
//! and a clean stop on request.
//!
//! Resume is exact even after `kill -9`: the checkpoint holds everything the next step
//! depends on (vector, Adam moments, the epoch's running loss), each epoch's order and
//! each step's direction are recomputed from the seed, and `metrics.jsonl` is cut back
//! to the checkpoint's step so no row appears twice. A checkpoint also records the
//! sha256 of the model and data it was trained on; resuming with others is refused.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::objective::{evaluate, objective, Objective};
use super::rundir::RunDir;
use crate::activations::Prepared;
use crate::error::{Error, Result};
use crate::run::RunInputs;
use crate::vector::{SteeringVector, VectorMeta};

/// File names inside the output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const VECTOR_FILE: &str = "vector.safetensors";
pub const RUN_FILE: &str = "run.json";

/// Metrics of one optimizer step.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: usize,
    pub loss: f32,
    /// The step's draw: BiPO's direction d, RePS's steering factor.
    pub d: f32,
    /// Mean margin over the batch: BiPO's beta * (matching margin - opposite margin),
    /// RePS's steering term D+.
    pub reward_margin: f32,
    /// Fraction of pairs the current vector ranks the right way for the draw.
    pub accuracy: f32,
    pub grad_norm: f32,
    pub vector_norm: f32,
    pub lr: f64,
}

/// Metrics after one epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f32,
    /// Held-out loss with +v and, for BiPO, with -v (when a test set is given).
    pub test_loss_plus: Option<f32>,
    pub test_loss_minus: Option<f32>,
    /// Held-out mean margin at +v (higher = behaviour more likely).
    pub test_margin_plus: Option<f32>,
}

/// Progress reports for the caller.
pub enum Event<'a> {
    Step(&'a StepMetrics),
    Epoch(&'a EpochMetrics),
}

/// Everything needed to continue a run exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: usize,
    pub vector: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub config: TrainConfig,
    /// Sum and count of the training losses of the current epoch so far.
    #[serde(default)]
    pub epoch_loss: (f64, usize),
    /// The model and data the run was trained on.
    #[serde(default)]
    pub inputs: RunInputs,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub vector: SteeringVector,
    pub steps: usize,
    pub interrupted: bool,
}

/// A seed for (run seed, stream, index) so each epoch's order and each step's
/// direction can be recomputed on resume without saving RNG state (SplitMix64).
fn mix(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STREAM_ORDER: u64 = 1;
const STREAM_DIRECTION: u64 = 2;

/// Pair order of 0-based `epoch`.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix(
        seed,
        STREAM_ORDER,
        epoch as u64,
    )));
    order
}

/// The random generator of 0-based `step` in stream `stream` (objectives draw from
/// streams of their own, 3 and up), recomputable on resume.
pub(crate) fn step_rng(seed: u64, stream: u64, step: usize) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(mix(seed, stream, step as u64))
}

/// Direction d in {-1, +1} of 0-based `step`.
pub fn step_direction(seed: u64, step: usize) -> f32 {
    if step_rng(seed, STREAM_DIRECTION, step).random_bool(0.5) {
        1.0
    } else {
        -1.0
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Default interval, in steps, between checkpoints inside an epoch.
pub const DEFAULT_CHECKPOINT_EVERY: usize = 25;

/// The training run.
pub struct Trainer<'a, 'm> {
    pub cfg: TrainConfig,
    pub train: &'a Prepared<'m>,
    pub test: Option<&'a Prepared<'m>>,
    /// The locked output folder.
    pub out: &'a RunDir,
    /// Metadata copied into every saved vector.
    pub meta: VectorMeta,
    /// The model and data of this run (checked against the checkpoint on resume).
    pub inputs: RunInputs,
    /// Checkpoint every this many steps (and at every epoch's end); 0 = epochs only.
    pub checkpoint_every: usize,
}

/// Optimizer state between steps.
struct State {
    step: usize,
    v: Vec<f32>,
    m1: Vec<f32>,
    m2: Vec<f32>,
    epoch_loss: (f64, usize),
}

impl Trainer<'_, '_> {
    fn out_dir(&self) -> &Path {
        self.out.path()
    }

    /// Values trained: the model's width times the steered layers.
    fn width(&self) -> usize {
        self.train.model_hidden_size() * self.train.steered_layers().len()
    }

    /// The flat state (layers x hidden) as a vector, one direction per steered layer.
    fn vector_of(&self, v: &[f32]) -> SteeringVector {
        let h = self.train.model_hidden_size();
        SteeringVector {
            layers: self
                .train
                .steered_layers()
                .iter()
                .zip(v.chunks_exact(h))
                .map(|(&l, d)| (l, d.to_vec()))
                .collect(),
            meta: self.meta.clone(),
        }
    }

    fn save_vector(&self, v: &[f32], file: &str) -> Result<SteeringVector> {
        let sv = self.vector_of(v);
        crate::io::safetensors::write(&sv, &self.out_dir().join(file))?;
        Ok(sv)
    }

    fn save_checkpoint(&self, s: &State) -> Result<()> {
        let ck = Checkpoint {
            step: s.step,
            vector: s.v.clone(),
            adam_m: s.m1.clone(),
            adam_v: s.m2.clone(),
            config: self.cfg.clone(),
            epoch_loss: s.epoch_loss,
            inputs: self.inputs.clone(),
        };
        let json = serde_json::to_vec(&ck).expect("checkpoint serialises");
        crate::util::write_atomic(&self.out_dir().join(CHECKPOINT_FILE), &json)
    }

    /// Loads the checkpoint in the output folder, refusing one made with another config
    /// or other inputs.
    pub fn load_checkpoint(&self) -> Result<Checkpoint> {
        let p = self.out_dir().join(CHECKPOINT_FILE);
        let text = crate::util::read_text(&p)?;
        let ck: Checkpoint =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&p, e.to_string()))?;
        let same = TrainConfig {
            max_steps: self.cfg.max_steps,
            ..ck.config.clone()
        } == self.cfg;
        if !same {
            return Err(Error::bad_file(
                &p,
                format!(
                    "was written with a different training config ({}); resume with the same settings",
                    config_diff(&ck.config, &self.cfg)
                ),
            ));
        }
        self.inputs.check_resumes(&ck.inputs, &p)?;
        let n = self.width();
        if ck.vector.len() != n || ck.adam_m.len() != n || ck.adam_v.len() != n {
            return Err(Error::bad_file(
                &p,
                format!("vector width is not the model's width x steered layers ({n})"),
            ));
        }
        Ok(ck)
    }

    /// Rewrites metrics.jsonl keeping only rows written before checkpoint step `step`
    /// (and dropping a line cut short by a kill), so resumed rows are not duplicated.
    fn truncate_metrics(&self, step: usize) -> Result<()> {
        let p = self.out_dir().join(METRICS_FILE);
        if !p.is_file() {
            return Ok(());
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut kept = String::new();
        for line in text.lines() {
            let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let at = row["metrics"]["step"].as_u64().unwrap_or(u64::MAX) as usize;
            let keep = match row["type"].as_str() {
                Some("step") => at < step,
                Some("epoch") => at <= step,
                _ => false,
            };
            if keep {
                kept += line;
                kept.push('\n');
            }
        }
        crate::util::write_atomic(&p, kept.as_bytes())
    }

    /// Runs from step 0, or from the checkpoint when `resume` is set, until the last
    /// step, `max_steps`, or `stop` being raised (then a checkpoint is written).
    pub fn run(
        &self,
        resume: bool,
        stop: &AtomicBool,
        mut on_event: impl FnMut(Event),
    ) -> Result<Outcome> {
        let cfg = &self.cfg;
        cfg.validate()?;
        let obj: Box<dyn Objective> = objective(cfg)?;
        let n = self.train.len();
        let per_epoch = cfg.steps_per_epoch(n);
        let total = per_epoch * cfg.epochs;
        let last = cfg.max_steps.map_or(total, |m| m.min(total));
        let mut st = if resume {
            let ck = self.load_checkpoint()?;
            self.truncate_metrics(ck.step)?;
            State {
                step: ck.step,
                v: ck.vector,
                m1: ck.adam_m,
                m2: ck.adam_v,
                epoch_loss: ck.epoch_loss,
            }
        } else {
            let zeros = vec![0f32; self.width()];
            State {
                step: 0,
                v: zeros.clone(),
                m1: zeros.clone(),
                m2: zeros,
                epoch_loss: (0.0, 0),
            }
        };
        let metrics_path = self.out_dir().join(METRICS_FILE);
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&metrics_path)
            .map_err(|e| Error::io(&metrics_path, e))?;
        let mut log = |line: serde_json::Value| -> Result<()> {
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))
        };
        let dev = self.train.device().clone();
        let mut interrupted = false;
        let mut saved_at: Option<usize> = None;
        while st.step < last {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            let step = st.step;
            let epoch = step / per_epoch;
            let k = step % per_epoch;
            let order = epoch_order(cfg.seed, epoch, n);
            let batch = &order[k * cfg.batch_size..((k + 1) * cfg.batch_size).min(n)];
            let d = obj.draw(cfg.seed, step);
            // Micro-batches bound the memory of the backward pass: each part's gradient
            // is weighted by its share of the batch (the loss is a mean over pairs), so
            // the sum is the whole batch's gradient. One part (the default) is exactly
            // the unsplit computation (weight 1.0).
            let micro = cfg.micro_batch.unwrap_or(batch.len()).max(1);
            let mut g = vec![0f32; st.v.len()];
            let (mut loss, mut margins) = (0f32, Vec::with_capacity(batch.len()));
            for part in batch.chunks(micro) {
                let w = part.len() as f32 / batch.len() as f32;
                let var = Var::from_tensor(&Tensor::new(st.v.as_slice(), &dev)?)?;
                let out = obj.loss(self.train, part, var.as_tensor(), d)?;
                let l = out.loss.to_scalar::<f32>()?;
                if !l.is_finite() {
                    return Err(Error::NonFinite(format!(
                        "the training loss at step {step} ({l}); the last good checkpoint is kept in {}",
                        self.out_dir().display()
                    )));
                }
                if let Some(gp) = out.loss.backward()?.get(&var) {
                    let gp: Vec<f32> = gp.to_vec1()?;
                    g.iter_mut().zip(&gp).for_each(|(a, x)| *a += w * x);
                }
                loss += w * l;
                margins.extend(out.margins);
            }
            crate::util::check_finite(&format!("the gradient at step {step}"), &g)?;
            let grad_norm = norm(&g);
            if grad_norm as f64 > cfg.grad_clip {
                let s = (cfg.grad_clip / (grad_norm as f64 + 1e-6)) as f32;
                g.iter_mut().for_each(|x| *x *= s);
            }
            // AdamW (decoupled weight decay), bias-corrected, as torch.optim.AdamW.
            let lr = cfg.lr_at(step, total);
            let t = (step + 1) as i32;
            let (b1, b2) = (cfg.adam_beta1, cfg.adam_beta2);
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let params = st.v.iter_mut().zip(st.m1.iter_mut()).zip(st.m2.iter_mut());
            for (((p, m1), m2), &gi) in params.zip(&g) {
                let gi = gi as f64;
                let mut x = *p as f64 * (1.0 - lr * cfg.weight_decay);
                let m = b1 * *m1 as f64 + (1.0 - b1) * gi;
                let s = b2 * *m2 as f64 + (1.0 - b2) * gi * gi;
                x -= lr * (m / c1) / ((s / c2).sqrt() + cfg.adam_eps);
                (*p, *m1, *m2) = (x as f32, m as f32, s as f32);
            }
            let accuracy =
                margins.iter().filter(|&&m| m * d > 0.0).count() as f32 / margins.len() as f32;
            let sm = StepMetrics {
                step,
                epoch,
                loss,
                d,
                reward_margin: margins.iter().sum::<f32>() / margins.len() as f32,
                accuracy,
                grad_norm,
                vector_norm: norm(&st.v),
                lr,
            };
            log(serde_json::json!({"type": "step", "metrics": &sm}))?;
            on_event(Event::Step(&sm));
            st.epoch_loss = (st.epoch_loss.0 + loss as f64, st.epoch_loss.1 + 1);
            st.step += 1;
            let step = st.step;
            if step % per_epoch == 0 || step == last {
                let e = (step - 1) / per_epoch;
                let vt = Tensor::new(st.v.as_slice(), &dev)?;
                let (mut tp, mut tm, mut mp) = (None, None, None);
                if let Some(test) = self.test {
                    let draws = obj.held_out_draws();
                    let (lp, marg) = evaluate(obj.as_ref(), test, &vt, draws[0], cfg.batch_size)?;
                    tp = Some(lp);
                    mp = Some(marg);
                    if let Some(&minus) = draws.get(1) {
                        tm = Some(evaluate(obj.as_ref(), test, &vt, minus, cfg.batch_size)?.0);
                    }
                }
                let em = EpochMetrics {
                    epoch: e,
                    step,
                    train_loss: (st.epoch_loss.0 / st.epoch_loss.1.max(1) as f64) as f32,
                    test_loss_plus: tp,
                    test_loss_minus: tm,
                    test_margin_plus: mp,
                };
                if step % per_epoch == 0 {
                    st.epoch_loss = (0.0, 0);
                }
                log(serde_json::json!({"type": "epoch", "metrics": &em}))?;
                on_event(Event::Epoch(&em));
                self.save_vector(&st.v, &format!("epoch-{}.safetensors", e + 1))?;
                self.save_vector(&st.v, VECTOR_FILE)?;
                self.save_checkpoint(&st)?;
                saved_at = Some(step);
            } else if self.checkpoint_every > 0 && step % self.checkpoint_every == 0 {
                self.save_checkpoint(&st)?;
            }
        }
        if interrupted {
            self.save_checkpoint(&st)?;
        }
        // The last epoch already wrote this state unless the run stopped in between
        // (or had nothing left to do on resume).
        let vector = if saved_at == Some(st.step) {
            self.vector_of(&st.v)
        } else {
            self.save_vector(&st.v, VECTOR_FILE)?
        };
        Ok(Outcome {
            vector,
            steps: st.step,
            interrupted,
        })
    }
}

/// The settings that differ between two configs, as "name: old -> new".
fn config_diff(old: &TrainConfig, new: &TrainConfig) -> String {
    let (a, b) = (
        serde_json::to_value(old).expect("config serialises"),
        serde_json::to_value(new).expect("config serialises"),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    a.iter()
        .filter(|(k, v)| *k != "max_steps" && b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: {v} -> {}",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
