//! Fused CPU ops with hand-written backward passes for the differentiable path:
//! RMSNorm, SwiGLU, rotary embedding and softmax. Each replaces 4-10 elementary
//! candle ops (and as many full passes over memory, forward and backward) that
//! dominated a training step once matmuls had no wasted weight gradients.
//! Every op is checked against its elementary-op version, values and gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd::{exp_in_place, sigmoid, sum, with_avx2};

use crate::error::Result;
use crate::util::contiguous_f32;

fn vec_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1()
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension.
struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let h = self.weight.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
            let r = inv_rms(x, self.eps);
            y.iter_mut()
                .zip(x)
                .zip(&self.weight)
                .for_each(|((y, x), w)| *y = x * r * w);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, gs) = (vec_of(x)?, vec_of(g)?);
        let h = self.weight.len();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(h)
            .zip(xs.par_chunks(h).zip(gs.par_chunks(h)))
            .for_each(|(dx, (x, g))| {
                let r = inv_rms(x, self.eps);
                // dx = r (g w) - x r^3 mean(g w x)
                let dot = g
                    .iter()
                    .zip(&self.weight)
                    .zip(x)
                    .map(|((g, w), x)| g * w * x)
                    .sum::<f32>()
                    / h as f32;
                for i in 0..h {
                    dx[i] = r * g[i] * self.weight[i] - x[i] * r * r * r * dot;
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// RMSNorm over the last dimension; gradient for x only (the weight is frozen).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(RmsNorm {
        weight: weight.to_vec1()?,
        eps: eps as f32,
    })?)
}

/// `silu(gate) * up`.
struct SwiGlu;

/// Elements per parallel task of the element-wise ops.
const CHUNK: usize = 4096;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (
            contiguous_f32(self.name(), s1, l1)?,
            contiguous_f32(self.name(), s2, l2)?,
        );
        if g.len() != u.len() {
            candle_core::bail!("fused-swiglu: shapes differ");
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| {
                with_avx2(
                    #[inline(always)]
                    || {
                        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                            *y = g * sigmoid(g) * u;
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gs, us, dys) = (vec_of(g)?, vec_of(u)?, vec_of(dy)?);
        let (mut dg, mut du) = (vec![0f32; gs.len()], vec![0f32; gs.len()]);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(gs.par_chunks(CHUNK))
            .zip(us.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
            .for_each(|(((dg, du), gs), (us, dys))| {
                with_avx2(
                    #[inline(always)]
                    || {
                        for i in 0..gs.len() {
                            let (g, u, dy) = (gs[i], us[i], dys[i]);
                            let s = sigmoid(g);
                            dg[i] = dy * u * s * (1.0 + g * (1.0 - s));
                            du[i] = dy * g * s;
                        }
                    },
                )
            });
        Ok((
            Some(Tensor::from_vec(dg, g.shape(), g.device())?),
            Some(Tensor::from_vec(du, u.shape(), u.device())?),
        ))
    }
}

/// `silu(gate) * up`, gradients for both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

/// Rotary embedding (half split) of x: (b, heads, t, d) with per-(b, t) angles.
struct Rope {
    /// (b or 1, t, d/2)
    cos: Vec<f32>,
    sin: Vec<f32>,
    batched: bool,
}

impl Rope {
    fn apply(&self, x: &[f32], dims: (usize, usize, usize, usize), inverse: bool) -> Vec<f32> {
        let (_, h, t, d) = dims;
        let half = d / 2;
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let (bi, ti) = (row / (h * t), row % t);
                let base = (if self.batched { bi * t + ti } else { ti }) * half;
                let (c, s) = (&self.cos[base..base + half], &self.sin[base..base + half]);
                for i in 0..half {
                    let (a, b, sn) = (x[i], x[i + half], sign * s[i]);
                    y[i] = a * c[i] - b * sn;
                    y[i + half] = b * c[i] + a * sn;
                }
            });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        Ok((
            CpuStorage::F32(self.apply(contiguous_f32(self.name(), s, l)?, dims, false)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // A rotation's gradient is the inverse rotation of the incoming gradient.
        let dx = self.apply(&vec_of(g)?, x.dims4()?, true);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rotates x: (b, heads, t, d); cos/sin: (t, d/2) shared, or (b, t, d/2) per row.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Rope {
        cos: vec_of(cos)?,
        sin: vec_of(sin)?,
        batched: cos.rank() == 3,
    })?)
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let n = *l.shape().dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(y, x)| {
            with_avx2(
                #[inline(always)]
                || {
                    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x - m);
                    exp_in_place(y);
                    let total = sum(y);
                    y.iter_mut().for_each(|y| *y /= total);
                },
            )
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (ys, gs) = (vec_of(y)?, vec_of(g)?);
        let n = *y.dims().last().unwrap_or(&1);
        let mut dx = vec![0f32; ys.len()];
        dx.par_chunks_mut(n)
            .zip(ys.par_chunks(n).zip(gs.par_chunks(n)))
            .for_each(|(dx, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                dx.iter_mut()
                    .zip(y.iter().zip(g))
                    .for_each(|(d, (y, g))| *d = y * (g - dot));
            });
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Softmax over the last dimension with a backward pass.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn var(shape: &[usize], seed: f32) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 1.5)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Values and gradients (w.r.t. every var, under a fixed random projection) agree.
    fn check(vars: &[&Var], fused: Tensor, plain: Tensor) {
        let a: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        a.iter()
            .zip(&b)
            .for_each(|(x, y)| assert!((x - y).abs() < 1e-5, "value {x} vs {y}"));
        let proj = var(fused.dims(), 0.5).as_tensor().clone();
        let ga = (fused * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (plain * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in vars {
            let x: Vec<f32> = ga.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = gb.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            x.iter()
                .zip(&y)
                .for_each(|(p, q)| assert!((p - q).abs() < 1e-4, "grad {p} vs {q}"));
        }
    }

    #[test]
    fn fused_rms_norm_matches_elementary_ops() {
        let x = var(&[3, 4, 8], 0.1);
        let w = var(&[8], 0.2).as_tensor().clone();
        let plain = {
            let t = x.as_tensor();
            let r = (t.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap();
            t.broadcast_div(&r).unwrap().broadcast_mul(&w).unwrap()
        };
        check(&[&x], rms_norm(x.as_tensor(), &w, 1e-5).unwrap(), plain);
    }

    #[test]
    fn fused_swiglu_matches_elementary_ops() {
        let (g, u) = (var(&[5, 6], 0.3), var(&[5, 6], 0.9));
        let plain = ((g.as_tensor() * candle_nn::ops::sigmoid(g.as_tensor()).unwrap()).unwrap()
            * u.as_tensor())
        .unwrap();
        check(
            &[&g, &u],
            swiglu(g.as_tensor(), u.as_tensor()).unwrap(),
            plain,
        );
    }

    #[test]
    fn fused_softmax_matches_elementary_ops() {
        let x = var(&[2, 3, 7], 0.4);
        check(
            &[&x],
            softmax(x.as_tensor()).unwrap(),
            candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap(),
        );
    }

    #[test]
    fn fused_rope_matches_elementary_ops_shared_and_per_row() {
        let x = var(&[2, 3, 4, 8], 0.6);
        for batched in [false, true] {
            let shape: &[usize] = if batched { &[2, 4, 4] } else { &[4, 4] };
            let ang = var(shape, 0.7).as_tensor().clone();
            let (c, s) = (ang.cos().unwrap(), ang.sin().unwrap());
            let plain = {
                let (c4, s4) = if batched {
                    (c.unsqueeze(1).unwrap(), s.unsqueeze(1).unwrap())
                } else {
                    (c.clone(), s.clone())
                };
                let cc = Tensor::cat(&[&c4, &c4], D::Minus1).unwrap();
                let ss = Tensor::cat(&[&s4, &s4], D::Minus1).unwrap();
                let t = x.as_tensor();
                let (x1, x2) = (
                    t.narrow(D::Minus1, 0, 4).unwrap(),
                    t.narrow(D::Minus1, 4, 4).unwrap(),
                );
                let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
                (t.broadcast_mul(&cc).unwrap() + rot.broadcast_mul(&ss).unwrap()).unwrap()
            };
            check(&[&x], rope(x.as_tensor(), &c, &s).unwrap(), plain);
        }
    }
}
