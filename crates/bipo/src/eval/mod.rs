//! Measuring steering vectors: behaviour (A/B probability, held-out preference
//! margins), per-sample steerability, damage on neutral text, open-ended answers with
//! an optional LLM judge, and reports with plots.
//!
//! Every measurement reuses the cached prefix: blocks before a vector's first layer are
//! unaffected by it, so they run once per example and only the later blocks run per
//! multiplier ([`Prepared::response_logps`], [`damage::DamageSet`]).

pub mod ab;
pub mod damage;
pub mod judge;
pub mod matching;
pub mod mc;
pub mod open_ended;
pub mod pipeline;
pub mod plot;
pub mod prompting;
pub mod refusal;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::activations::{self, Example, Prepared};
use crate::data::PreferencePair;
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::steer::Steering;
use crate::text::ChatTemplate;
use crate::vector::SteeringVector;

/// The multipliers `bipo eval` uses unless told otherwise.
pub const DEFAULT_MULTIPLIERS: &[f32] = &[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0];
/// Examples (packed rows) per forward pass.
pub const DEFAULT_EVAL_BATCH: usize = 8;
/// Block outputs kept in memory per prepared layer (beyond it they are recomputed).
const CACHE_BUDGET_BYTES: usize = 4 << 30;

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalOptions {
    pub multipliers: Vec<f32>,
    pub batch: usize,
    pub system: Option<String>,
    /// Positions steered in the A/B and held-out pair measurements (the damage check
    /// on neutral text steers every position). For A/B, `generated` steers only the
    /// answer letter, which is predicted from the prompt: the A/B probability then does
    /// not move.
    #[serde(default)]
    pub positions: crate::steer::Positions,
}

/// One metric value at one multiplier.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Point {
    pub multiplier: f32,
    pub value: f64,
}

/// Per-sample steerability (Tan et al. 2024): the least-squares slope of each sample's
/// metric against the multiplier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Steerability {
    /// What the slope is of (e.g. "A/B logit difference").
    pub metric: String,
    pub mean: f64,
    pub std: f64,
    /// Quantiles 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.
    pub quantiles: Vec<f64>,
    /// Fraction of samples whose slope is negative (steered the wrong way).
    pub anti_steerable: f64,
    pub slopes: Vec<f64>,
}

/// All results for one vector.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VectorReport {
    pub name: String,
    pub method: Option<String>,
    /// Per steered layer: L2 norm.
    pub norms: BTreeMap<usize, f32>,
    /// Mean probability of the matching letter (A/B), per multiplier.
    pub ab_probability: Vec<Point>,
    /// Mean probability of the letter A (whatever matches), per multiplier: a model at
    /// chance with a letter bias shows it here.
    #[serde(default)]
    pub ab_letter_a: Vec<Point>,
    /// Scale applied before measuring, when vectors were matched (in norm or KL) to the
    /// first one ([`matching`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Mean log-prob margin matching - opposite (held-out pairs), per multiplier: summed
    /// over each response's tokens, so longer answers weigh more.
    pub pref_margin: Vec<Point>,
    /// The same margin with each response's log-prob divided by its token count
    /// (free of the length bias of the summed margin).
    #[serde(default)]
    pub pref_margin_per_token: Vec<Point>,
    /// Fraction of pairs whose margin is positive, per multiplier.
    pub pref_accuracy: Vec<Point>,
    /// Multiple choice ([`mc`]): share of questions whose best true answer is the most
    /// likely among it and the false ones (TruthfulQA's MC1), per multiplier.
    #[serde(default)]
    pub mc1: Vec<Point>,
    /// Multiple choice: mean probability mass of the true answers (MC2), per multiplier.
    #[serde(default)]
    pub mc2: Vec<Point>,
    pub steerability_ab: Option<Steerability>,
    pub steerability_pref: Option<Steerability>,
    /// Per-question slopes of MC2.
    #[serde(default)]
    pub steerability_mc: Option<Steerability>,
    /// Mean KL(unsteered || steered) per token on neutral text, per multiplier.
    pub kl: Vec<Point>,
    pub perplexity: Vec<Point>,
    /// Examples per second of one A/B pass (one non-zero multiplier, prefix cached).
    pub ab_examples_per_s: Option<f64>,
    /// Examples per second of one held-out-pairs pass (one non-zero multiplier).
    #[serde(default)]
    pub pref_examples_per_s: Option<f64>,
}

/// The data an evaluation runs on.
pub struct EvalData<'a> {
    pub ab: Option<&'a [ab::AbItem]>,
    pub pairs: Option<&'a [PreferencePair]>,
    /// Multiple-choice questions (MC1/MC2).
    pub mc: Option<&'a [mc::McItem]>,
    /// Neutral paragraphs for the damage check (empty: skipped).
    pub neutral: &'a [String],
}

/// Least-squares slope of ys against xs.
pub fn slope(xs: &[f32], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mx = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        sxy += (*x as f64 - mx) * (y - my);
        sxx += (*x as f64 - mx).powi(2);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Steerability from per-multiplier, per-sample metric values `per_m[m][sample]`.
pub fn steerability(metric: &str, multipliers: &[f32], per_m: &[Vec<f64>]) -> Steerability {
    let n = per_m.first().map_or(0, Vec::len);
    let slopes: Vec<f64> = (0..n)
        .map(|i| slope(multipliers, &per_m.iter().map(|v| v[i]).collect::<Vec<_>>()))
        .collect();
    let mut sorted = slopes.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let mean = slopes.iter().sum::<f64>() / n.max(1) as f64;
    let var = slopes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
    Steerability {
        metric: metric.into(),
        mean,
        std: var.sqrt(),
        quantiles: if n == 0 {
            vec![]
        } else {
            [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0].map(q).to_vec()
        },
        anti_steerable: slopes.iter().filter(|s| **s < 0.0).count() as f64 / n.max(1) as f64,
        slopes,
    }
}

fn first_layer(v: &SteeringVector) -> usize {
    *v.layers
        .keys()
        .next()
        .expect("validated vectors have layers")
}

/// Evaluates every vector at every multiplier on the given data. `progress(stage, done,
/// total)` reports as it goes; an error it returns (e.g. [`Error::Interrupted`]) stops
/// the evaluation at the next report and is returned.
pub fn evaluate(
    lm: &LoadedModel,
    template: &ChatTemplate,
    vectors: &[SteeringVector],
    data: &EvalData,
    opts: &EvalOptions,
    mut progress: impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<Vec<VectorReport>> {
    let m = &lm.model;
    if opts.multipliers.is_empty() {
        return Err(Error::invalid("multipliers", "none given"));
    }
    for v in vectors {
        v.check_fits(m.hidden_size(), m.num_layers())?;
    }
    let sys = opts.system.as_deref();
    let ab_ex = data
        .ab
        .map(|items| ab::examples(items, &lm.tokenizer, template, sys))
        .transpose()?;
    let pair_ex = data
        .pairs
        .map(|p| activations::tokenize(p, &lm.tokenizer, template, sys))
        .transpose()?;
    let mc_ex = data
        .mc
        .map(|items| mc::examples(items, &lm.tokenizer, template, sys))
        .transpose()?;
    // One prepared set per (data, first layer), shared by vectors starting there.
    let mut prepared: HashMap<(&str, usize), Prepared> = HashMap::new();
    let mut damage_sets: HashMap<usize, damage::DamageSet> = HashMap::new();
    let mut reports = Vec::new();
    for (vi, v) in vectors.iter().enumerate() {
        let layer = first_layer(v);
        let mut r = VectorReport {
            name: v.meta.name.clone(),
            method: v.meta.method.clone(),
            norms: v.norms(),
            ..Default::default()
        };
        let settings: Vec<Steering> = opts
            .multipliers
            .iter()
            .map(|&k| Steering::from_vectors(&[(v.clone(), k)], m.device(), m.dtype()))
            .collect::<Result<_>>()?;
        for (is_ab, ex) in [(true, &ab_ex), (false, &pair_ex)] {
            let Some(ex) = ex else { continue };
            let stage = if is_ab { "A/B" } else { "held-out pairs" };
            let p = prepared_for(&mut prepared, stage, lm, layer, ex, opts, &mut progress)?;
            let mut per_m: Vec<Vec<f64>> = Vec::new();
            for (k, (mult, s)) in opts.multipliers.iter().zip(&settings).enumerate() {
                progress(
                    &format!("{stage}: {} ({}/{})", v.meta.name, vi + 1, vectors.len()),
                    k,
                    settings.len(),
                )?;
                let t0 = Instant::now();
                let lps = p.response_logps(s, opts.batch)?;
                if !s.is_empty() {
                    let rate = Some(lps.len() as f64 / t0.elapsed().as_secs_f64());
                    if is_ab {
                        r.ab_examples_per_s = rate;
                    } else {
                        r.pref_examples_per_s = rate;
                    }
                }
                let diffs: Vec<f64> = lps.iter().map(|l| (l[0] - l[1]) as f64).collect();
                let n = diffs.len() as f64;
                if is_ab {
                    let pm: Vec<f64> = lps
                        .iter()
                        .map(|&l| ab::matching_probability(l) as f64)
                        .collect();
                    let items = data.ab.expect("A/B examples come from A/B items");
                    let pa = pm
                        .iter()
                        .zip(items)
                        .map(|(p, it)| if it.matching_is_b { 1.0 - p } else { *p });
                    r.ab_letter_a.push(Point {
                        multiplier: *mult,
                        value: pa.sum::<f64>() / n,
                    });
                    r.ab_probability.push(Point {
                        multiplier: *mult,
                        value: pm.iter().sum::<f64>() / n,
                    });
                } else {
                    r.pref_margin.push(Point {
                        multiplier: *mult,
                        value: diffs.iter().sum::<f64>() / n,
                    });
                    let per_token = lps.iter().zip(ex.iter()).map(|(l, e)| {
                        let len = |i: usize| e.responses[i].len().max(1) as f64;
                        l[0] as f64 / len(0) - l[1] as f64 / len(1)
                    });
                    r.pref_margin_per_token.push(Point {
                        multiplier: *mult,
                        value: per_token.sum::<f64>() / n,
                    });
                    r.pref_accuracy.push(Point {
                        multiplier: *mult,
                        value: diffs.iter().filter(|d| **d > 0.0).count() as f64 / n,
                    });
                }
                per_m.push(diffs);
            }
            let st = if is_ab {
                &mut r.steerability_ab
            } else {
                &mut r.steerability_pref
            };
            let metric = if is_ab {
                "A/B logit difference (matching - other)"
            } else {
                "log-prob margin (matching - opposite)"
            };
            *st = Some(steerability(metric, &opts.multipliers, &per_m));
        }
        if let (Some(items), Some((ex, layout))) = (data.mc, &mc_ex) {
            let stage = "multiple choice";
            let p = prepared_for(&mut prepared, stage, lm, layer, ex, opts, &mut progress)?;
            let mut per_m: Vec<Vec<f64>> = Vec::new();
            for (k, (mult, s)) in opts.multipliers.iter().zip(&settings).enumerate() {
                let stage = format!(
                    "multiple choice: {} ({}/{})",
                    v.meta.name,
                    vi + 1,
                    vectors.len()
                );
                progress(&stage, k, settings.len())?;
                let sc = mc::scores(items, layout, &p.response_logps(s, opts.batch)?);
                let n = sc.len() as f64;
                let at = |value| Point {
                    multiplier: *mult,
                    value,
                };
                r.mc1.push(at(sc.iter().map(|x| x.0).sum::<f64>() / n));
                r.mc2.push(at(sc.iter().map(|x| x.1).sum::<f64>() / n));
                per_m.push(sc.iter().map(|x| x.1).collect());
            }
            r.steerability_mc = Some(steerability(
                "MC2 (true answers' probability mass)",
                &opts.multipliers,
                &per_m,
            ));
        }
        if !data.neutral.is_empty() {
            progress(&format!("damage: {}", v.meta.name), 0, 1)?;
            if let std::collections::hash_map::Entry::Vacant(e) = damage_sets.entry(layer) {
                e.insert(damage::DamageSet::new(
                    m,
                    &lm.tokenizer,
                    data.neutral,
                    layer,
                )?);
            }
            let d = damage_sets[&layer].measure(&settings)?;
            for (mult, d) in opts.multipliers.iter().zip(d) {
                r.kl.push(Point {
                    multiplier: *mult,
                    value: d.kl,
                });
                r.perplexity.push(Point {
                    multiplier: *mult,
                    value: d.perplexity,
                });
            }
        }
        reports.push(r);
    }
    Ok(reports)
}

/// The prepared set of `examples` (the data called `what`) cached up to `layer`, made on
/// first use and kept in `cache` for every later vector whose first layer is `layer`.
fn prepared_for<'c, 'm>(
    cache: &'c mut HashMap<(&'static str, usize), Prepared<'m>>,
    what: &'static str,
    lm: &'m LoadedModel,
    layer: usize,
    examples: &[Example],
    opts: &EvalOptions,
    progress: &mut impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<&'c mut Prepared<'m>> {
    use std::collections::hash_map::Entry;
    match cache.entry((what, layer)) {
        Entry::Occupied(o) => Ok(o.into_mut()),
        Entry::Vacant(e) => {
            let stage = format!("{what}: caching blocks 0..={layer}");
            let mut p = prepare(lm, layer, examples.to_vec(), &stage, progress)?;
            p.set_positions(opts.positions);
            Ok(e.insert(p))
        }
    }
}

fn prepare<'m>(
    lm: &'m LoadedModel,
    layer: usize,
    ex: Vec<Example>,
    stage: &str,
    progress: &mut impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<Prepared<'m>> {
    progress(stage, 0, ex.len())?;
    // Preparation cannot stop half-way: a stop requested during it is returned when it
    // ends.
    let mut stopped = None;
    let p = Prepared::new(&lm.model, layer, ex, CACHE_BUDGET_BYTES, |d, n| {
        if stopped.is_none() {
            stopped = progress(stage, d, n).err();
        }
    })?;
    match stopped {
        Some(e) => Err(e),
        None => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_and_anti_steerable_fraction_are_computed_per_sample() {
        let ms = [-1.0, 0.0, 1.0];
        // Sample 0 rises by 2 per unit, sample 1 falls by 1.
        let per_m = vec![vec![-2.0, 1.0], vec![0.0, 0.0], vec![2.0, -1.0]];
        let s = steerability("x", &ms, &per_m);
        assert!((s.slopes[0] - 2.0).abs() < 1e-12 && (s.slopes[1] + 1.0).abs() < 1e-12);
        assert_eq!(s.anti_steerable, 0.5);
        assert!((s.mean - 0.5).abs() < 1e-12);
    }
}
