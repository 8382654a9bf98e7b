//! Differentiable ops with hand-written backward passes, for training steering vectors
//! through frozen weights.
//!
//! - [`frozen_linear`]: `x W^T` whose backward returns only the input gradient. candle's
//!   matmul backward also builds a weight-sized gradient for every weight it meets,
//!   which for a frozen model is pure waste (a third of the step's matmul work).
//! - [`log_softmax_gather`]: `log_softmax(logits)[target]` per row, fused; backward is
//!   `g * (onehot - softmax)`. candle's element-wise ops run single-threaded and would
//!   materialise several vocabulary-sized intermediates.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd;
use crate::error::Result;
use crate::util::contiguous_f32;

/// `y = x W^T` for a frozen, contiguous f32 weight (n, k).
struct FrozenLinear {
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("frozen-linear", s, l)?;
        let (m, k) = l.shape().dims2()?;
        let (n, wk) = self.weight.dims2()?;
        if wk != k {
            candle_core::bail!("frozen-linear: input width {k} != weight columns {wk}");
        }
        let (ws, wl) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(ws) = &*ws else {
            candle_core::bail!("frozen-linear: weight not on CPU")
        };
        let w = contiguous_f32("frozen-linear", ws, wl)?;
        let mut y = vec![0f32; m * n];
        // SAFETY: the pointers cover x (m*k), w (n*k) and y (m*n) with the strides given;
        // y is freshly allocated and not aliased.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                // rhs[kk, j] = W[j, kk]: W^T read in place.
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dL/dx = dL/dy W; the weight is a plain tensor, so nothing else is tracked.
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x W^T` over the last dimension of x; only x receives a gradient.
/// `weight` must be a contiguous f32 (n, k) CPU tensor.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let m = x.elem_count() / k;
    let y = x.reshape((m, k))?.contiguous()?.apply_op1(FrozenLinear {
        weight: weight.clone(),
    })?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = weight.dim(0)?;
    Ok(y.reshape(out)?)
}

/// Row-wise `log_softmax(logits)[targets[i]]`.
struct LogSoftmaxGather {
    targets: Vec<u32>,
}

/// Per row: log-sum-exp over the vocabulary.
fn row_lse(row: &[f32]) -> f32 {
    simd::log_sum_exp(row) as f32
}

impl CustomOp1 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "log-softmax-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("log-softmax-gather", s, l)?;
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!(
                "log-softmax-gather: {} targets for {n} rows",
                self.targets.len()
            );
        }
        let out: Vec<f32> = x
            .par_chunks_exact(v)
            .zip(&self.targets)
            .map(|(row, &t)| row[t as usize] - row_lse(row))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, v) = x.dims2()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = grad.to_vec1()?;
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_exact_mut(v)
            .zip(xs.par_chunks_exact(v))
            .zip(g.par_iter().zip(self.targets.par_iter()))
            .for_each(|((d, row), (&gi, &t))| {
                let lse = row_lse(row);
                simd::with_avx2(
                    #[inline(always)]
                    || {
                        for (di, &xi) in d.iter_mut().zip(row) {
                            *di = -gi * simd::exp(xi - lse);
                        }
                    },
                );
                d[t as usize] += gi;
            });
        Ok(Some(Tensor::from_vec(dx, (n, v), x.device())?))
    }
}

/// logits: (n, vocab); returns (n,) f32 log-probabilities of `targets`. The fused op on
/// f32 CPU tensors; candle's differentiable ops (f32 accumulation) on other devices.
pub fn log_softmax_gather(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == candle_core::DType::F32 {
        return Ok(logits.contiguous()?.apply_op1(LogSoftmaxGather {
            targets: targets.to_vec(),
        })?);
    }
    let logits = logits.to_dtype(candle_core::DType::F32)?;
    let lsm = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?; // (n, 1)
    Ok(lsm.gather(&idx, 1)?.squeeze(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    #[test]
    fn frozen_linear_matches_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .affine(0.1, -0.5)
            .unwrap();
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 8.0, &dev)
                .unwrap()
                .reshape((2, 4))
                .unwrap()
                .affine(0.3, -1.0)
                .unwrap(),
        )
        .unwrap();
        let ours = frozen_linear(x.as_tensor(), &w).unwrap();
        let theirs = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(
            ours.to_vec2::<f32>().unwrap(),
            theirs.to_vec2::<f32>().unwrap()
        );
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g1.get(&x).unwrap().to_vec2::<f32>().unwrap(),
            g2.get(&x).unwrap().to_vec2::<f32>().unwrap(),
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (p, q) in ra.iter().zip(rb) {
                assert!((p - q).abs() < 1e-5, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn log_softmax_gather_off_the_fused_path_is_f32_and_agrees() {
        // Non-f32 (and non-CPU) logits take candle's ops: same values, f32 output.
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let x = x.sin().unwrap().affine(2.0, 0.0).unwrap();
        let targets = [1u32, 3, 0];
        let fused = log_softmax_gather(&x, &targets).unwrap();
        let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
        let generic = log_softmax_gather(&x64, &targets).unwrap();
        assert_eq!(generic.dtype(), candle_core::DType::F32);
        let (a, b) = (
            fused.to_vec1::<f32>().unwrap(),
            generic.to_vec1::<f32>().unwrap(),
        );
        a.iter()
            .zip(&b)
            .for_each(|(p, q)| assert!((p - q).abs() < 1e-5, "{p} vs {q}"));
    }

    #[test]
    fn log_softmax_gather_matches_candle_and_its_gradient() {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(
            &Tensor::arange(0f32, 15.0, &dev)
                .unwrap()
                .reshape((3, 5))
                .unwrap()
                .sin()
                .unwrap()
                .affine(3.0, 0.0)
                .unwrap(),
        )
        .unwrap();
        let targets = [4u32, 0, 2];
        let ours = log_softmax_gather(logits.as_tensor(), &targets).unwrap();
        let lsm = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1).unwrap();
        let idx = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
        let theirs = lsm.gather(&idx, 1).unwrap().squeeze(1).unwrap();
        let (a, b) = (
            ours.to_vec1::<f32>().unwrap(),
            theirs.to_vec1::<f32>().unwrap(),
        );
        a.iter()
            .zip(&b)
            .for_each(|(p, q)| assert!((p - q).abs() < 1e-5));
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let g1 = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            g1.get(&logits).unwrap().to_vec2::<f32>().unwrap(),
            g2.get(&logits).unwrap().to_vec2::<f32>().unwrap(),
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (p, q) in ra.iter().zip(rb) {
                assert!((p - q).abs() < 1e-5, "{p} vs {q}");
            }
        }
    }
}
