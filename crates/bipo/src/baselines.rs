//! Baseline steering vectors, each a [`SteeringVector`] like BiPO's:
//!
//! - **CAA** (Rimsky et al. 2024): mean over pairs of the difference of block L's output
//!   between the matching and the opposite answer, read at the answer letter of A/B
//!   prompts, or for free-text pairs at the last response token or averaged over the
//!   response tokens ([`ReadAt`]).
//! - **PCA of pair differences** (repeng's `pca_diff`): the first principal component of
//!   the (centred) differences, by power iteration from the mean difference, so it is
//!   deterministic; its sign agrees with the mean difference and it is scaled to the
//!   mean difference's norm, so multipliers compare with CAA's.
//! - **Mean-centring** (Jorgensen et al. 2023, "Improving Activation Steering in Language
//!   Models with Mean-Centring"): the mean of block L's output over the target
//!   behaviour's (matching) responses minus its mean over a broad reference set — here
//!   neutral text, every token of every paragraph ([`neutral_means`]). Against "all
//!   responses" instead it would be exactly half of CAA, so neutral text is the
//!   informative reference.
//! - **Random**: a seeded Gaussian direction with the same per-layer norm as a given
//!   vector — the control every claim is measured against.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use candle_core::{DType, Tensor};

use crate::activations::{Example, Prepared};
use crate::error::{Error, Result};
use crate::models::{Mode, Model};
use crate::steer::Steering;
use crate::vector::{SteeringVector, VectorMeta};

/// Where in a response the activation is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadAt {
    /// The last response token (for A/B examples: the answer letter).
    Last,
    /// The mean over all response tokens.
    Mean,
}

impl std::str::FromStr for ReadAt {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Self::Last),
            "mean" => Ok(Self::Mean),
            o => Err(Error::invalid(
                "read-at",
                format!("`{o}` (expected last or mean)"),
            )),
        }
    }
}

/// Pairs (packed prompt-shared rows) per forward pass.
const ACTIVATION_BATCH: usize = 4;
/// Power-iteration steps for the first principal component.
const PCA_ITERATIONS: usize = 200;

/// Per layer, per pair: activation(matching) - activation(opposite).
pub type PairDiffs = BTreeMap<usize, Vec<Vec<f32>>>;
/// Per layer, per pair: [activation(matching), activation(opposite)].
pub type PairReads = BTreeMap<usize, Vec<[Vec<f32>; 2]>>;

/// Reads block outputs at `layers` for every example and returns per-pair differences.
/// Responses should not end with EOS (read the answer, not the end token).
pub fn pair_differences(
    model: &Model,
    examples: Vec<Example>,
    layers: &[usize],
    read_at: ReadAt,
    progress: impl FnMut(usize, usize),
) -> Result<PairDiffs> {
    Ok(differences_of(&pair_reads(
        model, examples, layers, read_at, progress,
    )?))
}

/// Activations of both responses of every pair in the file `data` at `layers` (A/B
/// files: at the answer letter; pair files: per `read_at`, reading the answer itself,
/// not the end-of-sequence token training appends). Returns the reads, the file's
/// sha256 and the records skipped under `skip_invalid` ("line N: reason").
#[allow(clippy::too_many_arguments)]
pub fn reads_of_file(
    lm: &crate::load::LoadedModel,
    template: &crate::text::ChatTemplate,
    data: &std::path::Path,
    layers: &[usize],
    read_at: ReadAt,
    system: Option<&str>,
    skip_invalid: bool,
    progress: impl FnMut(usize, usize),
) -> Result<(PairReads, String, Vec<String>)> {
    use crate::eval::ab;
    let n = lm.model.num_layers();
    if let Some(&l) = layers.iter().find(|&&l| l >= n) {
        return Err(Error::invalid(
            format!("layer {l}"),
            format!("the model has {n} layers (0..{})", n - 1),
        ));
    }
    let is_ab = ab::is_ab_file(data);
    let (examples, skipped) = if is_ab {
        let ex = ab::examples(&ab::load_ab(data)?, &lm.tokenizer, template, system)?;
        (ex, Vec::new())
    } else {
        let d = crate::data::load_pairs_with(data, skip_invalid)?;
        let mut ex = crate::activations::tokenize(&d.pairs, &lm.tokenizer, template, system)?;
        for e in &mut ex {
            e.responses.iter_mut().for_each(|r| {
                if r.len() > 1 {
                    r.pop();
                }
            });
        }
        (ex, d.skipped)
    };
    let read_at = if is_ab { ReadAt::Last } else { read_at };
    let reads = pair_reads(&lm.model, examples, layers, read_at, progress)?;
    Ok((reads, crate::util::file_sha256(data)?, skipped))
}

/// matching - opposite, per layer and pair.
pub fn differences_of(reads: &PairReads) -> PairDiffs {
    reads
        .iter()
        .map(|(l, rows)| {
            let d = rows
                .iter()
                .map(|[a, b]| a.iter().zip(b).map(|(x, y)| x - y).collect())
                .collect();
            (*l, d)
        })
        .collect()
}

/// Reads block outputs at `layers` for both responses of every example.
pub fn pair_reads(
    model: &Model,
    examples: Vec<Example>,
    layers: &[usize],
    read_at: ReadAt,
    mut progress: impl FnMut(usize, usize),
) -> Result<PairReads> {
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    let n = examples.len();
    if n == 0 {
        return Err(Error::invalid("baseline data", "no examples"));
    }
    let p = Prepared::for_activations(model, examples)?;
    let mut out: PairReads = layers.iter().map(|&l| (l, Vec::with_capacity(n))).collect();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(ACTIVATION_BATCH) {
        let states = p.layer_states(chunk, &layers)?;
        for (l, st) in layers.iter().zip(&states) {
            for (j, &i) in chunk.iter().enumerate() {
                let row = st.get(j)?; // (T, hidden)
                let read = |r: std::ops::Range<usize>| -> Result<Vec<f32>> {
                    let t = match read_at {
                        ReadAt::Last => row.get(r.end - 1)?,
                        ReadAt::Mean => row.narrow(0, r.start, r.len())?.mean(0)?,
                    };
                    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec1()?)
                };
                let [rm, ro] = p.response_positions(i);
                out.get_mut(l)
                    .expect("layer listed")
                    .push([read(rm)?, read(ro)?]);
            }
        }
        progress(chunk[chunk.len() - 1] + 1, n);
    }
    Ok(out)
}

fn mean(rows: &[Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0f64; rows[0].len()];
    for r in rows {
        m.iter_mut().zip(r).for_each(|(a, x)| *a += *x as f64);
    }
    m.iter().map(|x| (x / rows.len() as f64) as f32).collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// CAA: the mean pair difference per layer.
pub fn caa(diffs: &PairDiffs, meta: VectorMeta) -> SteeringVector {
    SteeringVector {
        layers: diffs.iter().map(|(l, d)| (*l, mean(d))).collect(),
        meta,
    }
}

/// Runs every text (cut to the context) through blocks 0..=max(layers) and hands each
/// listed layer's block output, (1, t, hidden) in f32, to `visit`.
fn visit_block_outputs(
    model: &Model,
    texts: &[Vec<u32>],
    layers: &[usize],
    mut visit: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    let top = *layers
        .iter()
        .max()
        .ok_or_else(|| Error::invalid("layers", "none given"))?;
    if top >= model.num_layers() {
        return Err(Error::invalid(
            "layer",
            format!("{top} >= the model's {} layers", model.num_layers()),
        ));
    }
    for ids in texts.iter().filter(|t| !t.is_empty()) {
        let ids = &ids[..ids.len().min(model.max_context())];
        let x = Tensor::new(ids, model.device())?.unsqueeze(0)?;
        let mut xs = model.embed(&x)?;
        for l in 0..=top {
            xs = model.run_blocks(&xs, l..l + 1, 0, None, &Steering::none(), Mode::Fast)?;
            if layers.contains(&l) {
                visit(l, &xs.to_dtype(DType::F32)?)?;
            }
        }
    }
    Ok(())
}

/// Mean of block outputs at `layers` over every token of the `texts` (token ids), the
/// reference set of mean-centring. Texts longer than the context are cut.
pub fn neutral_means(
    model: &Model,
    texts: &[Vec<u32>],
    layers: &[usize],
) -> Result<BTreeMap<usize, Vec<f32>>> {
    let h = model.hidden_size();
    let mut sums: BTreeMap<usize, Vec<f64>> = layers.iter().map(|&l| (l, vec![0.0; h])).collect();
    let mut tokens: BTreeMap<usize, usize> = BTreeMap::new();
    visit_block_outputs(model, texts, layers, |l, xs| {
        // (1, t, hidden) -> summed over t
        let s: Vec<f32> = xs.sum((0, 1))?.to_vec1()?;
        let acc = sums.get_mut(&l).expect("every listed layer has a sum");
        acc.iter_mut().zip(&s).for_each(|(a, x)| *a += *x as f64);
        *tokens.entry(l).or_default() += xs.dim(1)?;
        Ok(())
    })?;
    let count = tokens.values().next().copied().unwrap_or(0);
    if count == 0 {
        return Err(Error::invalid("neutral text", "no tokens"));
    }
    let means: BTreeMap<usize, Vec<f32>> = sums
        .into_iter()
        .map(|(l, s)| (l, s.iter().map(|x| (x / count as f64) as f32).collect()))
        .collect();
    for (l, m) in &means {
        crate::util::check_finite(&format!("the neutral-text mean at layer {l}"), m)?;
    }
    Ok(means)
}

/// Mean L2 norm of the residual stream (block outputs) at `layers`, per token of the
/// `texts`, leaving out each text's first token (its norm is typically an outlier many
/// times the rest: the attention sink). A scale for steering vectors: a direction of
/// norm `f x` this changes the residual stream by about `f` of its size.
pub fn residual_norms(
    model: &Model,
    texts: &[Vec<u32>],
    layers: &[usize],
) -> Result<BTreeMap<usize, f32>> {
    let mut sums: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
    visit_block_outputs(model, texts, layers, |l, xs| {
        let t = xs.dim(1)?;
        if t > 1 {
            // (1, t, hidden) -> norms of tokens 1..t
            let n: Vec<f32> = xs
                .narrow(1, 1, t - 1)?
                .sqr()?
                .sum(2)?
                .sqrt()?
                .flatten_all()?
                .to_vec1()?;
            let e = sums.entry(l).or_default();
            e.0 += n.iter().map(|x| *x as f64).sum::<f64>();
            e.1 += n.len();
        }
        Ok(())
    })?;
    let mut out = BTreeMap::new();
    for &l in layers {
        let (sum, n) = sums.get(&l).copied().unwrap_or_default();
        let mean = (sum / n.max(1) as f64) as f32;
        if n == 0 || !mean.is_finite() {
            return Err(Error::invalid(
                "neutral text",
                "too short to measure the residual norm (needs texts of 2+ tokens)",
            ));
        }
        out.insert(l, mean);
    }
    Ok(out)
}

/// Mean-centring: per layer, the mean matching-response activation minus the
/// reference mean (`neutral`, from [`neutral_means`]).
pub fn mean_centring(
    reads: &PairReads,
    neutral: &BTreeMap<usize, Vec<f32>>,
    meta: VectorMeta,
) -> Result<SteeringVector> {
    let mut layers = BTreeMap::new();
    for (l, rows) in reads {
        let reference = neutral.get(l).ok_or_else(|| {
            Error::invalid("mean-centring", format!("no reference mean at layer {l}"))
        })?;
        let matching: Vec<Vec<f32>> = rows.iter().map(|[a, _]| a.clone()).collect();
        let m = mean(&matching);
        layers.insert(*l, m.iter().zip(reference).map(|(a, b)| a - b).collect());
    }
    Ok(SteeringVector { layers, meta })
}

/// First principal component of the centred pair differences per layer, signed to
/// agree with the mean difference and scaled to its norm.
pub fn pca_diff(diffs: &PairDiffs, meta: VectorMeta) -> SteeringVector {
    let layers = diffs
        .iter()
        .map(|(l, d)| {
            let mu = mean(d);
            let centred: Vec<Vec<f32>> = d
                .iter()
                .map(|r| r.iter().zip(&mu).map(|(x, m)| x - m).collect())
                .collect();
            let target = norm(&mu);
            // Start from the mean difference (or a fixed vector if it is zero).
            let mut v: Vec<f32> = if target > 0.0 {
                mu.iter().map(|x| x / target).collect()
            } else {
                vec![1.0 / (mu.len() as f32).sqrt(); mu.len()]
            };
            for _ in 0..PCA_ITERATIONS {
                // v <- C v with C = X^T X (the 1/n does not change the direction).
                let mut next = vec![0f32; v.len()];
                for r in &centred {
                    let proj: f32 = r.iter().zip(&v).map(|(a, b)| a * b).sum();
                    next.iter_mut().zip(r).for_each(|(n, x)| *n += proj * x);
                }
                let nn = norm(&next);
                if nn == 0.0 {
                    break;
                }
                v = next.iter().map(|x| x / nn).collect();
            }
            let agree: f32 = v.iter().zip(&mu).map(|(a, b)| a * b).sum();
            let sign = if agree < 0.0 { -1.0 } else { 1.0 };
            (*l, v.iter().map(|x| x * sign * target).collect())
        })
        .collect();
    SteeringVector { layers, meta }
}

/// A seeded random direction per layer with the same norm as `like`'s.
pub fn random_like(like: &SteeringVector, seed: u64, meta: VectorMeta) -> SteeringVector {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let layers = like
        .layers
        .iter()
        .map(|(l, d)| {
            // Box-Muller: Gaussian components give a direction uniform on the sphere.
            let g: Vec<f32> = (0..d.len())
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            let scale = norm(d) / norm(&g).max(1e-12);
            (*l, g.iter().map(|x| x * scale).collect())
        })
        .collect();
    SteeringVector { layers, meta }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diffs(rows: Vec<Vec<f32>>) -> PairDiffs {
        BTreeMap::from([(3, rows)])
    }

    #[test]
    fn caa_is_the_mean_difference() {
        let d = diffs(vec![vec![1.0, 2.0], vec![3.0, -2.0]]);
        assert_eq!(caa(&d, VectorMeta::default()).layers[&3], vec![2.0, 0.0]);
    }

    #[test]
    fn pca_finds_the_spread_direction_signed_like_the_mean_and_scaled_to_it() {
        // Differences spread along (1, 1) around a mean of (1, 0).
        let d = diffs(vec![
            vec![3.0, 2.0],
            vec![-1.0, -2.0],
            vec![2.0, 1.0],
            vec![0.0, -1.0],
        ]);
        let v = &pca_diff(&d, VectorMeta::default()).layers[&3];
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((v[0] - s).abs() < 1e-4 && (v[1] - s).abs() < 1e-4, "{v:?}");
        // Deterministic.
        assert_eq!(&pca_diff(&d, VectorMeta::default()).layers[&3], v);
    }

    #[test]
    fn random_like_matches_norms_and_depends_only_on_the_seed() {
        let like = caa(&diffs(vec![vec![3.0, 4.0, 0.0]]), VectorMeta::default());
        let a = random_like(&like, 7, VectorMeta::default());
        assert!((norm(&a.layers[&3]) - 5.0).abs() < 1e-4);
        assert_eq!(
            a.layers,
            random_like(&like, 7, VectorMeta::default()).layers
        );
        assert_ne!(
            a.layers,
            random_like(&like, 8, VectorMeta::default()).layers
        );
    }
}
