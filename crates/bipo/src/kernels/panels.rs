//! Training through quantized weights without an f32 copy of the model: `x W^T` and
//! its input gradient `dy W` computed panel by panel, each panel of rows dequantized
//! into a small thread-local buffer (exactly ggml's values) and multiplied with the
//! f32 GEMM (`stored`), or rounded to bf16 with the activations and multiplied by
//! [`super::bf16`] (`fast`). In f32 the result equals the product with the fully
//! dequantized weight up to the order of f32 additions; in bf16, up to the rounding of
//! both factors. No weight gradient is ever formed (the weights are frozen).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::quant::QBlocks;
use crate::error::Result;
use crate::util::contiguous_f32;

/// Rows per dequantized panel: a multiple of the 8-row tiles, large enough for GEMM to
/// run at speed, small enough (x the width) to stay in cache.
const PANEL_ROWS: usize = 64;
// The bf16 forward needs whole vectors of 16 rows per panel.
const _: () = assert!(PANEL_ROWS.is_multiple_of(16));

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: tasks write disjoint columns (forward) or their own buffers (backward).
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// out (rows m, cols n, row stride dst_rs) = lhs (m x k, row-major) times the transpose
/// of rhs (n x k, row-major).
///
/// # Safety
/// The pointers must cover the given shapes and strides; dst must not alias lhs/rhs.
unsafe fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    rhs: *const f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        1,
        k as isize,
        rhs,
        k as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// out (m x k) += lhs (m x n, row stride lhs_rs) times rhs (n x k, row-major).
///
/// # Safety
/// As [`gemm_nt`].
unsafe fn gemm_nn(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
) {
    gemm::gemm(
        m,
        k,
        n,
        dst,
        1,
        k as isize,
        true,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        k as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// y = x W^T for x (m, k) f32, W quantized (n, k): (m, n). With `bf16` (and a CPU where
/// [`super::bf16::preferred`], k even and n a multiple of 16) the products are of
/// bf16-rounded values ([`super::bf16`]), else of f32.
pub fn matmul_t(w: &QBlocks, x: &[f32], m: usize, bf16: bool) -> Vec<f32> {
    let (n, k) = w.dims();
    // Written panel by panel without being read (no zeroing pass over fresh memory).
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = Ptr(y.as_mut_ptr());
    // x packed once as bf16 pairs, shared by every panel's product.
    let bf16 = bf16 && k.is_multiple_of(2) && n.is_multiple_of(16) && super::bf16::preferred();
    let xp = bf16.then(|| super::bf16::pack_rows(m, k, x, k));
    (0..n.div_ceil(PANEL_ROWS)).into_par_iter().for_each_init(
        || (vec![0f32; PANEL_ROWS * k], super::bf16::Panel::default()),
        |(panel, packed), p| {
            let r0 = p * PANEL_ROWS;
            let rows = PANEL_ROWS.min(n - r0);
            w.dequantize_rows(r0, rows, &mut panel[..rows * k]);
            // SAFETY: x is m*k, the panel rows*k, and this task owns y's columns
            // r0..r0+rows (row stride n).
            unsafe {
                match &xp {
                    Some(xp) => packed.forward(xp, m, k, &panel[..rows * k], out.at(r0), n),
                    None => gemm_nt(m, rows, k, out.at(r0), n, x.as_ptr(), panel.as_ptr()),
                }
            }
        },
    );
    // SAFETY: the panels cover all n columns of all m rows, and each writes every
    // element of its columns (the bf16 product and gemm, which does not read dst).
    unsafe { y.set_len(m * n) };
    y
}

/// dx = dy W for dy (m, n) f32, W quantized (n, k): (m, k). With `bf16` (and a CPU
/// where [`super::bf16::preferred`], and k a multiple of 16) the products are of
/// bf16-rounded values ([`super::bf16`]), else of f32.
pub fn matmul_n(w: &QBlocks, dy: &[f32], m: usize, bf16: bool) -> Vec<f32> {
    let (n, k) = w.dims();
    let bf16 = bf16 && k.is_multiple_of(16) && super::bf16::preferred();
    // On AMX the products are fast enough that adding each panel's share into dx (m x k)
    // costs as much: fewer, larger panels, a multiple of the threads, up to 512 rows
    // (a multiple of 32: whole 16-pair tiles).
    let threads = rayon::current_num_threads().max(1);
    let panel_rows = if bf16 && super::amx::available() {
        let per_thread = n.div_ceil(threads * 512);
        n.div_ceil(threads * per_thread).next_multiple_of(32)
    } else {
        PANEL_ROWS
    };
    let panels = n.div_ceil(panel_rows);
    let tasks = threads.clamp(1, panels);
    let parts: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let mut dx = vec![0f32; m * k];
            let mut panel = vec![0f32; panel_rows * k];
            let mut packed = super::bf16::Panel::default();
            for p in (t..panels).step_by(tasks) {
                let r0 = p * panel_rows;
                let rows = panel_rows.min(n - r0);
                w.dequantize_rows(r0, rows, &mut panel[..rows * k]);
                if bf16 {
                    packed.accumulate(m, k, &mut dx, &dy[r0..], n, &panel[..rows * k]);
                    continue;
                }
                // SAFETY: dy's columns r0..r0+rows (row stride n) times the panel
                // (rows x k) into this task's own dx (m x k).
                unsafe {
                    gemm_nn(
                        m,
                        rows,
                        k,
                        dx.as_mut_ptr(),
                        dy.as_ptr().add(r0),
                        n,
                        panel.as_ptr(),
                    )
                }
            }
            dx
        })
        .collect();
    let mut it = parts.into_iter();
    let mut dx = it.next().unwrap_or_else(|| vec![0f32; m * k]);
    for p in it {
        dx.par_iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    dx
}

/// `x W^T` on a quantized weight (`transposed`: the gradient product `g W`). Each is
/// the other's backward, so the graph stays differentiable in its input; the weight,
/// frozen, gets no gradient. `fast`: both products in bf16 with f32 sums where the CPU
/// has it (the gradient is that of the unrounded product: the rounding passes
/// gradients straight through).
struct QuantLinear {
    w: Arc<QBlocks>,
    transposed: bool,
    fast: bool,
}

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        if self.transposed {
            "quant-linear-t"
        } else {
            "quant-linear"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (m, width) = l.shape().dims2()?;
        let (rows, cols) = self.w.dims();
        // x W^T maps cols -> rows; g W maps rows -> cols.
        let (expect, out) = if self.transposed {
            (rows, cols)
        } else {
            (cols, rows)
        };
        if width != expect {
            candle_core::bail!(
                "{}: input width {width} != the weight's {expect}",
                self.name()
            );
        }
        let y = if self.transposed {
            matmul_n(&self.w, x, m, self.fast)
        } else {
            matmul_t(&self.w, x, m, self.fast)
        };
        Ok((CpuStorage::F32(y), Shape::from((m, out))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(QuantLinear {
            w: self.w.clone(),
            transposed: !self.transposed,
            fast: self.fast,
        })?))
    }
}

/// `x W^T` over the last dimension of x for a quantized weight, differentiable in x
/// (`fast`: see [`QuantLinear`]).
pub fn quant_linear(x: &Tensor, w: &Arc<QBlocks>, fast: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank >= 1");
    let m = x.elem_count() / k;
    let y = x.reshape((m, k))?.contiguous()?.apply_op1(QuantLinear {
        w: w.clone(),
        transposed: false,
        fast,
    })?;
    let mut out = dims;
    *out.last_mut().expect("rank >= 1") = w.dims().0;
    Ok(y.reshape(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Var};

    #[test]
    fn panels_equal_the_dequantized_product_and_its_input_gradient() {
        let dev = Device::Cpu;
        // 70 rows: a panel and a partial one, a partial tile group, f32 arithmetic. 96
        // rows in bf16 (where the CPU has it; rows a multiple of 16): within bf16's
        // rounding of both factors.
        let cases = [(70, false, 1e-3), (96, true, 1e-2)];
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            for (rows, fast, tol) in cases {
                let w = Tensor::randn(0f32, 1.0, (rows, 512), &dev).unwrap();
                let q = QTensor::quantize(&w, t).unwrap();
                let dense = q.dequantize(&dev).unwrap();
                let qb = Arc::new(QBlocks::from_qtensor(&q).unwrap().unwrap());
                let x = Tensor::randn(0f32, 1.0, (2, 3, 512), &dev).unwrap();
                let x = Var::from_tensor(&x).unwrap();
                let ours = quant_linear(x.as_tensor(), &qb, fast).unwrap();
                let want = x.as_tensor().broadcast_matmul(&dense.t().unwrap()).unwrap();
                let (d, scale) = max_diff(&ours, &want);
                assert!(d < tol * scale, "{t:?} fast {fast} forward {d} of {scale}");
                // Gradient of sum(y * c) w.r.t. x equals c W.
                let c = Tensor::randn(0f32, 1.0, (2, 3, rows), &dev).unwrap();
                let g = (ours * &c).unwrap().sum_all().unwrap().backward().unwrap();
                let gx = g.get(&x).unwrap();
                let want = c.broadcast_matmul(&dense).unwrap();
                let (d, scale) = max_diff(gx, &want);
                assert!(d < tol * scale, "{t:?} fast {fast} gradient {d} of {scale}");
            }
        }
    }

    /// Largest |a - b| and the larger of 1 and max |b|.
    fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
        let m = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        (m((a - b).unwrap()), m(b.clone()).max(1.0))
    }
}
