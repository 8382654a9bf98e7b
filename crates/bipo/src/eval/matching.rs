//! Comparable strength: multipliers mean nothing across vectors of different norms (a
//! BiPO vector of norm 1 beside a CAA vector of norm 30), so before an evaluation each
//! vector can be rescaled to match the first one — in L2 norm, or in the damage it does
//! at multiplier 1 (KL(unsteered || steered) per token on neutral text).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::damage::DamageSet;
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::steer::Steering;
use crate::vector::SteeringVector;

/// What vectors are matched on before they are measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    /// As given.
    #[default]
    None,
    /// Each rescaled to the first vector's L2 norm (over all its layers).
    Norm,
    /// Each rescaled so that at multiplier 1 it does the first vector's damage (KL per
    /// token on neutral text) at multiplier 1.
    Kl,
}

impl FromStr for Match {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Match::None),
            "norm" => Ok(Match::Norm),
            "kl" => Ok(Match::Kl),
            _ => Err(Error::invalid(
                format!("match `{s}`"),
                "choose none, norm or kl",
            )),
        }
    }
}

/// L2 norm over every layer of a vector.
pub fn total_norm(v: &SteeringVector) -> f64 {
    v.layers
        .values()
        .flatten()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Scales giving every vector the first one's total L2 norm (the first gets 1).
pub fn norm_scales(vectors: &[SteeringVector]) -> Result<Vec<f64>> {
    let target = vectors.first().map_or(0.0, total_norm);
    vectors
        .iter()
        .map(|v| {
            let n = total_norm(v);
            if n == 0.0 || target == 0.0 {
                Err(Error::invalid(
                    format!("vector {}", v.meta.name),
                    "a zero vector cannot be matched in norm",
                ))
            } else {
                Ok(target / n)
            }
        })
        .collect()
}

/// Relative tolerance of the KL match.
const KL_TOLERANCE: f64 = 1e-2;

/// The scale `s` at which `kl(s)` (growing with `s`, about quadratically while small)
/// equals `target`, from a first guess: secant steps in log-log space (`s *
/// (target / kl(s))^(1/p)` with `p` the local exponent, 2 at first: exact for a
/// quadratic), kept inside a bracket and bisected when a step leaves it. The outer
/// error says why no scale was found; the inner one is `kl`'s own.
fn solve_scale(
    mut kl: impl FnMut(f64) -> Result<f64>,
    target: f64,
    guess: f64,
) -> std::result::Result<Result<f64>, String> {
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut s = guess;
    let mut last: Option<(f64, f64)> = None;
    for _ in 0..40 {
        let k = match kl(s) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        };
        if (k - target).abs() <= KL_TOLERANCE * target {
            return Ok(Ok(s));
        }
        if k < target {
            lo = s;
        } else {
            hi = s;
        }
        // The local exponent of kl in s, from the last two points.
        let p = match last {
            Some((s0, k0)) if k0 > 0.0 && k > 0.0 && s0 != s => {
                ((k / k0).ln() / (s / s0).ln()).clamp(0.5, 4.0)
            }
            _ => 2.0,
        };
        last = Some((s, k));
        let step = if k > 0.0 {
            s * (target / k).powf(1.0 / p)
        } else {
            s * 4.0
        };
        s = if step > lo && step < hi {
            step
        } else if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            s * 4.0
        };
    }
    Err(format!(
        "no scale reached the first vector's KL {target:.4} (last tried {s:.3e})"
    ))
}

/// Scales making every vector at multiplier 1 do the damage the first does at
/// multiplier 1 (bisection on the scale; KL grows with it). `neutral` is the damage
/// check's text.
pub fn kl_scales(
    lm: &LoadedModel,
    vectors: &[SteeringVector],
    neutral: &[String],
) -> Result<Vec<f64>> {
    if neutral.is_empty() {
        return Err(Error::invalid(
            "match kl",
            "needs neutral text to measure damage on (the damage check is off)",
        ));
    }
    let m = &lm.model;
    let first_layer = |v: &SteeringVector| *v.layers.keys().next().expect("validated");
    let kl_at = |set: &DamageSet, v: &SteeringVector, s: f64| -> Result<f64> {
        let st = Steering::from_vectors(&[(v.clone(), s as f32)], m.device(), m.dtype())?;
        Ok(set.measure(&[st])?[0].kl)
    };
    let Some(v0) = vectors.first() else {
        return Ok(Vec::new());
    };
    let set0 = DamageSet::new(m, &lm.tokenizer, neutral, first_layer(v0))?;
    let target = kl_at(&set0, v0, 1.0)?;
    if target.is_nan() || target <= 0.0 {
        return Err(Error::invalid(
            format!("vector {}", v0.meta.name),
            "does no measurable damage at multiplier 1, so there is no KL to match",
        ));
    }
    let mut scales = vec![1.0];
    for v in &vectors[1..] {
        let set = DamageSet::new(m, &lm.tokenizer, neutral, first_layer(v))?;
        scales.push(
            solve_scale(
                |s| kl_at(&set, v, s),
                target,
                total_norm(v0) / total_norm(v).max(f64::MIN_POSITIVE),
            )
            .map_err(|reason| Error::invalid(format!("vector {}", v.meta.name), reason))??,
        );
    }
    Ok(scales)
}

/// The vectors rescaled as `how` says, with their scales (all 1 for [`Match::None`]).
pub fn matched(
    lm: &LoadedModel,
    vectors: &[SteeringVector],
    how: Match,
    neutral: &[String],
) -> Result<(Vec<SteeringVector>, Vec<f64>)> {
    let scales = match how {
        Match::None => vec![1.0; vectors.len()],
        Match::Norm => norm_scales(vectors)?,
        Match::Kl => kl_scales(lm, vectors, neutral)?,
    };
    let out = vectors
        .iter()
        .zip(&scales)
        .map(|(v, &s)| {
            if s == 1.0 {
                v.clone()
            } else {
                v.scaled(s as f32)
            }
        })
        .collect();
    Ok((out, scales))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::VectorMeta;

    #[test]
    fn the_scale_solver_finds_the_target_of_monotone_curves() {
        for f in [
            |s: f64| 0.3 * s * s,
            |s: f64| s.powi(3) + s,
            |s: f64| (s * 2.0).tanh(),
        ] {
            let mut calls = 0;
            let s = solve_scale(
                |s| {
                    calls += 1;
                    Ok(f(s))
                },
                0.5,
                10.0,
            )
            .unwrap()
            .unwrap();
            assert!((f(s) - 0.5).abs() <= KL_TOLERANCE * 0.5, "{s}");
            assert!(calls <= 12, "{calls} evaluations");
        }
        let never = solve_scale(|_| Ok(0.1), 0.5, 1.0).unwrap_err();
        assert!(never.contains("no scale"), "{never}");
    }

    #[test]
    fn norm_scales_match_the_first_vectors_norm() {
        let a = SteeringVector::single(2, vec![3.0, 4.0], VectorMeta::default());
        let b = SteeringVector::single(2, vec![0.0, 0.5], VectorMeta::default());
        let s = norm_scales(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(s[0], 1.0);
        assert!((total_norm(&b.scaled(s[1] as f32)) - 5.0).abs() < 1e-6);
        let z = SteeringVector::single(2, vec![0.0, 0.0], VectorMeta::default());
        assert!(norm_scales(&[a, z]).is_err());
        assert_eq!("kl".parse::<Match>().unwrap(), Match::Kl);
        assert!("KL-ish".parse::<Match>().is_err());
    }
}
