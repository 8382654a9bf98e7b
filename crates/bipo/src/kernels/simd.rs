//! Small f32 loops written so the compiler vectorizes them, and [`with_avx2`], which
//! compiles a closure's body for AVX2 when the CPU has it (the crate itself targets
//! baseline x86-64, i.e. 4-wide SSE2).
//!
//! Every loop uses plain multiplies and adds in a fixed order (no fused multiply-add,
//! which the compiler would not form by itself anyway), so a result has the same bits
//! with and without AVX2.

/// Runs `f` compiled with AVX2 enabled when the CPU has it, plainly otherwise. Mark
/// the closure `#[inline(always)]` (a large one is otherwise compiled on its own,
/// without AVX2); the helpers below are, so inside `f` they vectorize 8 wide.
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Dot product in eight independent lanes, summed lane 0..7 then the tail.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `acc += a * x`.
#[inline(always)]
pub fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(s, x)| *s += a * x);
}

/// Sum in eight independent lanes.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let c = xs.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..8 {
            lanes[i] += x[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `e^x` in f32 (Cephes `expf`: x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial
/// for e^r, 2^n from the exponent bits), within 2 ulp of the exact value for
/// x in [-87, 88]. Below that it gives e^-87 at least, and 0 for x < -103 (for softmax
/// and sigmoid, the same as 0); above, e^88 at most and infinity above 89. NaN stays
/// NaN. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2, high part (exact in 8 bits)
    const C2: f32 = -2.121_944_4e-4; // ln 2 - C1
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n for n in [-126, 127] without a float-to-int conversion (which does not
    // vectorize): 2^23 + n + 127 holds n + 127 in its low mantissa bits, and shifting
    // them into the exponent field drops the rest. A NaN's r keeps the result NaN.
    let scale = f32::from_bits((n + (8_388_608.0 + 127.0)).to_bits() << 23);
    let y = er * scale;
    if x < -103.0 {
        0.0
    } else if x > 89.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `ln(sum(e^x))` over a whole vector, accurate for reporting log-probabilities:
/// shifted by the maximum, exponentials in f32, partial sums of 1024 gathered in f64.
/// Runs with AVX2 when present.
pub fn log_sum_exp(xs: &[f32]) -> f64 {
    with_avx2(
        #[inline(always)]
        || {
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if max.is_infinite() {
                // All -inf (an empty distribution) or a +inf present: the limit, unless
                // a NaN is there (which `max` skips).
                return if xs.iter().any(|x| x.is_nan()) {
                    f64::NAN
                } else {
                    max as f64
                };
            }
            let mut buf = [0f32; 1024];
            let mut total = 0f64;
            for c in xs.chunks(1024) {
                let b = &mut buf[..c.len()];
                b.iter_mut().zip(c).for_each(|(b, &x)| *b = x - max);
                exp_in_place(b);
                total += sum(b) as f64;
            }
            max as f64 + total.ln()
        },
    )
}

/// `x <- e^x` for every element.
#[inline(always)]
pub fn exp_in_place(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = exp(*x));
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), exact));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-95.0) > 0.0 && exp(-95.0) < 1e-37);
    }

    #[test]
    fn log_sum_exp_matches_the_f64_formula() {
        let xs: Vec<f32> = (0..49_152)
            .map(|i| (i as f32 * 0.731).sin() * 12.0)
            .collect();
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exact = max + xs.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&xs) - exact).abs() < 1e-6);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert!(log_sum_exp(&[1.0, f32::NAN]).is_nan());
        assert!(log_sum_exp(&[f32::NAN]).is_nan());
        assert_eq!(log_sum_exp(&[1.0, f32::INFINITY]), f64::INFINITY);
    }

    #[test]
    fn avx2_and_plain_give_the_same_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let ys: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain = {
            let mut e = xs.clone();
            exp_in_place(&mut e);
            (e, dot(&xs, &ys), sum(&xs))
        };
        let wide = with_avx2(
            #[inline(always)]
            || {
                let mut e = xs.clone();
                exp_in_place(&mut e);
                (e, dot(&xs, &ys), sum(&xs))
            },
        );
        assert_eq!(plain.0, wide.0);
        assert_eq!(plain.1.to_bits(), wide.1.to_bits());
        assert_eq!(plain.2.to_bits(), wide.2.to_bits());
    }
}
