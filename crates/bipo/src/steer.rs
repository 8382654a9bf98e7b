//! Applying steering vectors inside a forward pass.
//!
//! The steering site is [`Steering::apply`], called right after each decoder block's
//! MLP residual add: `h_L <- h_L + sum_i m_i v_i[L]` at every steered position.
//!
//! A [`Steering`] holds per layer either one delta for every row `(hidden,)` or one per
//! row `(b, 1, hidden)` (so one batch carries many different vectors and multipliers),
//! and optionally a `(b, t, 1)` 0/1 mask choosing which positions of this call are
//! steered ([`Positions`]: all of them, the prompt's, or the generated/response ones).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::vector::SteeringVector;

/// Which token positions a steering vector is added to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Every position (the BiPO paper's setting).
    #[default]
    All,
    /// Prompt tokens only; generated (response) tokens run unsteered.
    Prompt,
    /// Generated tokens only (in training and evaluation: the response tokens); the
    /// prompt runs unsteered.
    Generated,
}

impl std::str::FromStr for Positions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "prompt" => Ok(Self::Prompt),
            "generated" => Ok(Self::Generated),
            other => Err(Error::invalid(
                "positions",
                format!("`{other}` (choose all, prompt or generated)"),
            )),
        }
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Prompt => "prompt",
            Self::Generated => "generated",
        })
    }
}

impl Positions {
    /// Whether prompt positions are steered.
    pub fn prompt(self) -> bool {
        self != Self::Generated
    }

    /// Whether generated (response) positions are steered.
    pub fn generated(self) -> bool {
        self != Self::Prompt
    }
}

/// Per-layer additive deltas for one forward pass.
#[derive(Clone, Debug, Default)]
pub struct Steering {
    /// layer -> (hidden,) added to every row, or (b, 1, hidden) one per row.
    deltas: BTreeMap<usize, Tensor>,
    /// (b, t, 1) weights of the positions of this call (0 = unsteered), or None: all.
    mask: Option<Tensor>,
}

impl Steering {
    /// No steering.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sums `m_i * v_i` per layer. Vectors at multiplier 0 are left out entirely, so
    /// multiplier 0 is bit-identical to no steering. Each vector must already have been
    /// checked against the model ([`SteeringVector::check_fits`]).
    pub fn from_vectors(
        vectors: &[(SteeringVector, f32)],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let deltas = deltas_of(vectors)
            .into_iter()
            .map(|(l, d)| {
                let n = d.len();
                Ok((l, Tensor::from_vec(d, n, device)?.to_dtype(dtype)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { deltas, mask: None })
    }

    /// One row's steering per batch row: row i gets `rows[i]`'s vectors (rows without a
    /// layer add zeros there). `hidden` is the model's width.
    pub fn per_row(
        rows: &[&[(SteeringVector, f32)]],
        hidden: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let per: Vec<BTreeMap<usize, Vec<f32>>> = rows.iter().map(|v| deltas_of(v)).collect();
        let refs: Vec<&BTreeMap<usize, Vec<f32>>> = per.iter().collect();
        Self::from_row_deltas(&refs, hidden, device, dtype)
    }

    /// Per-row steering from ready sums (see [`deltas_of`]): row i adds `rows[i]`'s
    /// delta at each of its layers, zeros at the layers only other rows steer.
    pub fn from_row_deltas(
        rows: &[&BTreeMap<usize, Vec<f32>>],
        hidden: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let layers: std::collections::BTreeSet<usize> =
            rows.iter().flat_map(|m| m.keys().copied()).collect();
        let b = rows.len();
        let mut deltas = BTreeMap::new();
        for l in layers {
            let mut d = vec![0f32; b * hidden];
            for (i, m) in rows.iter().enumerate() {
                if let Some(v) = m.get(&l) {
                    if v.len() != hidden {
                        return Err(Error::invalid(
                            "steering",
                            format!("a layer-{l} delta of width {}, model has {hidden}", v.len()),
                        ));
                    }
                    d[i * hidden..(i + 1) * hidden].copy_from_slice(v);
                }
            }
            deltas.insert(
                l,
                Tensor::from_vec(d, (b, 1, hidden), device)?.to_dtype(dtype)?,
            );
        }
        Ok(Self { deltas, mask: None })
    }

    /// Batch row `i` of this steering alone (a batch of one): per-row deltas and the
    /// mask are narrowed to that row, shared deltas stay.
    pub fn row(&self, i: usize) -> Result<Self> {
        self.map_rows(|t| t.narrow(0, i, 1))
    }

    /// Batch rows picked by index (`rows[r]` is the old row of new row r): per-row
    /// deltas and the mask are gathered, shared deltas stay.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        self.map_rows(|t| t.index_select(&Tensor::new(rows, t.device())?, 0))
    }

    /// `f` applied to the batch axis of the per-row deltas (rank 3) and of the mask.
    fn map_rows(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        let deltas = self
            .deltas
            .iter()
            .map(|(l, d)| Ok((*l, if d.rank() == 3 { f(d)? } else { d.clone() })))
            .collect::<Result<_>>()?;
        let mask = self.mask.as_ref().map(&f).transpose()?;
        Ok(Self { deltas, mask })
    }

    /// Steering from ready-made delta tensors (e.g. a trainable `Var` times a sign).
    pub fn from_deltas(deltas: BTreeMap<usize, Tensor>) -> Self {
        Self { deltas, mask: None }
    }

    /// The same deltas, added only where `mask` (b, t, 1), 1 = steered, says.
    pub fn with_mask(&self, mask: Tensor) -> Self {
        Self {
            deltas: self.deltas.clone(),
            mask: Some(mask),
        }
    }

    /// The position mask, if any.
    pub fn mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// The delta added after block `layer`, if any.
    pub fn delta(&self, layer: usize) -> Option<&Tensor> {
        self.deltas.get(&layer)
    }

    /// The steering of blocks after `layer` only (for resuming from a cached block output).
    pub fn after(&self, layer: usize) -> Self {
        Self {
            deltas: self
                .deltas
                .range(layer + 1..)
                .map(|(l, t)| (*l, t.clone()))
                .collect(),
            mask: self.mask.clone(),
        }
    }

    /// Layers that are steered.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.deltas.keys().copied()
    }

    /// Adds layer `layer`'s delta to xs: (b, t, hidden); returns xs unchanged otherwise.
    pub fn apply(&self, layer: usize, xs: &Tensor) -> Result<Tensor> {
        let Some(d) = self.deltas.get(&layer) else {
            return Ok(xs.clone());
        };
        let plain = xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && !xs.track_op()
            && !d.track_op()
            && self.mask.as_ref().is_none_or(|m| !m.track_op());
        if plain {
            // candle's broadcast add costs ~10% of a 128-token prompt here; a plain loop
            // over the rows does not. Only where no gradient is tracked.
            let (b, t, h) = xs.dims3()?;
            let mut v: Vec<f32> = xs.flatten_all()?.to_vec1()?;
            let d: Vec<f32> = d.flatten_all()?.to_vec1()?;
            // (hidden,) for every row, or (b, 1, hidden) one per row.
            let per_row = d.len() != h;
            if per_row && d.len() != b * h {
                return Err(Error::invalid(
                    "steering",
                    format!("per-row deltas for {} rows, batch has {b}", d.len() / h),
                ));
            }
            let mask: Option<Vec<f32>> = self
                .mask
                .as_ref()
                .map(|m| m.flatten_all()?.to_vec1())
                .transpose()?;
            for (r, row) in v.chunks_exact_mut(h).enumerate() {
                let (bi, ti) = (r / t, r % t);
                let w = mask.as_ref().map_or(1.0, |m| m[bi * t + ti]);
                if w == 0.0 {
                    continue;
                }
                let dr = if per_row {
                    &d[bi * h..(bi + 1) * h]
                } else {
                    &d[..h]
                };
                if w == 1.0 {
                    row.iter_mut().zip(dr).for_each(|(x, y)| *x += y);
                } else {
                    row.iter_mut().zip(dr).for_each(|(x, y)| *x += w * y);
                }
            }
            return Ok(Tensor::from_vec(v, xs.shape(), xs.device())?);
        }
        Ok(match &self.mask {
            None => xs.broadcast_add(d)?,
            Some(m) => xs.broadcast_add(&m.to_dtype(xs.dtype())?.broadcast_mul(d)?)?,
        })
    }
}

/// `sum_i m_i v_i` per layer, leaving out multiplier-0 vectors: the deltas one row adds.
pub fn deltas_of(vectors: &[(SteeringVector, f32)]) -> BTreeMap<usize, Vec<f32>> {
    let mut sums: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    for (v, m) in vectors.iter().filter(|(_, m)| *m != 0.0) {
        for (&layer, dir) in &v.layers {
            let acc = sums.entry(layer).or_insert_with(|| vec![0.0; dir.len()]);
            acc.iter_mut().zip(dir).for_each(|(a, x)| *a += m * x);
        }
    }
    sums
}
