//! The bf16 panel product of [`super::bf16`] on Intel AMX tiles (`tdpbf16ps`, Sapphire
//! Rapids and later): the same packed operands, the same arithmetic (products of bf16
//! pairs, f32 sums), about 8x the multiply-adds per cycle of `vdpbf16ps`.
//!
//! The operands need no new layout. [`super::bf16`]'s A (`a[i * pairs + p]`, a bf16
//! pair per u32) read 16 rows x 16 pairs at a time is an AMX A tile (16 x 64 bytes, row
//! stride `pairs * 4` bytes), and its B (vector `p * nv + v` of a column block = pair p
//! of the block's v-th 16 columns) read 16 pairs at a time is a B tile already in
//! AMX's pair-interleaved form (row stride `nv * 64` bytes). C tiles (16 x 16 f32) are
//! loaded from and stored to the output in place.
//!
//! Every tile is 64 bytes wide and, for whole 16-row blocks of A, 16 rows high; the
//! last `m % 16` rows run on C and A tiles configured that many rows high. The reduced
//! length must be a multiple of 16 pairs; other shapes stay with the AVX-512 kernel.
//!
//! Linux gives a process the AMX tile state only on request (`arch_prctl
//! ARCH_REQ_XCOMP_PERM`); [`available`] asks once. `BIPO_AMX=off` turns AMX off (for
//! side-by-side timing), as does any `BIPO_KERNELS` that turns bf16 off.

/// Whether the AMX kernel runs: the CPU has AMX-TILE and AMX-BF16, the kernel has it
/// granted, AVX-512 BF16 is in use (for the packers) and `BIPO_AMX` is not `off`.
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            if std::env::var("BIPO_AMX").is_ok_and(|v| v == "off") || !super::bf16::available() {
                return false;
            }
            // Leaf 7 exists on every CPU with AVX-512 (checked above).
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (bf16, tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
            // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: 0 when granted.
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call; it fails cleanly on kernels without AMX.
            bf16 && tile
                && unsafe {
                    libc::syscall(
                        libc::SYS_arch_prctl,
                        ARCH_REQ_XCOMP_PERM,
                        XFEATURE_XTILEDATA,
                    )
                } == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// out (m x cols) += A (m x pairs) B (pairs x cols) (or =, see [`super::bf16::Out`]) in
/// [`super::bf16`]'s layouts; returns the rows it covered: all m, or 0 where it does
/// not run (no AMX, `pairs % 16 != 0` or `cols % 16 != 0`) and the caller must.
///
/// The last `m % 16` rows run on tiles configured that many rows high: every row is
/// computed by the same instructions in the same order wherever it sits in A, so a
/// row's result does not depend on the batch around it.
///
/// # Safety
/// `a` and `b` must hold the layouts' `m * pairs` and `pairs * cols` u32s, and `out`
/// must cover m rows of its stride from its first column through `cols`.
pub unsafe fn multiply(
    m: usize,
    cols: usize,
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: super::bf16::Out,
) -> usize {
    if !available() || !pairs.is_multiple_of(16) || !cols.is_multiple_of(16) || m == 0 {
        return 0;
    }
    assert!(a.len() >= m * pairs && b.len() >= pairs * cols);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: AMX is granted; the caller guarantees the buffers.
        unsafe { x86::multiply(m, cols, pairs, a.as_ptr(), b.as_ptr(), out) };
        m
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    0
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use super::super::bf16::Out;
    use std::arch::asm;

    /// Column vectors (of 16) per block of B: [`super::super::bf16`]'s `NV`.
    const NV: usize = 4;

    /// A tile configuration: palette 1, every tile 64 bytes wide; the C and A tiles
    /// (0-5) `rows` high, the B tiles (6, 7) 16.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn rows(rows: u8) -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64; // colsb (u16, little-endian)
                c[48 + t] = if t < 6 { rows } else { 16 };
            }
            Config(c)
        }

        /// Makes this the thread's tile configuration (zeroing every tile).
        unsafe fn load(&self) {
            unsafe { asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack)) };
        }
    }

    /// C tiles `R x C` (R, C in 1..=2) at rows i (A from `a`, row stride `sa` bytes) and
    /// column vectors from `b` (B tiles of row stride `sb` bytes, the second 64 bytes
    /// on), into `out` (its `ptr` at the first C tile; `load`: onto its values, else from
    /// zero) over `pairs` pairs. tmm0..3 = C, tmm4/5 = A, tmm6/7 = B.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(
        pairs: usize,
        a: *const u32,
        sa: usize,
        b: *const u32,
        sb: usize,
        out: Out,
    ) {
        let Out { ptr: c, ld, load } = out;
        let ld = ld * 4; // bytes
        let c1 = c.wrapping_byte_add(16 * ld);
        unsafe {
            if load {
                asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) c, s = in(reg) ld, options(nostack));
                if C == 2 {
                    asm!("tileloadd tmm1, [{p} + {s}*1]", p = in(reg) c.add(16), s = in(reg) ld, options(nostack));
                }
                if R == 2 {
                    asm!("tileloadd tmm2, [{p} + {s}*1]", p = in(reg) c1, s = in(reg) ld, options(nostack));
                    if C == 2 {
                        asm!("tileloadd tmm3, [{p} + {s}*1]", p = in(reg) c1.add(16), s = in(reg) ld, options(nostack));
                    }
                }
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            let a1 = a.wrapping_byte_add(16 * sa);
            let mut p = 0;
            while p < pairs {
                // 16 pairs: bytes 4p of A's rows, rows p of B.
                let bp = b.wrapping_byte_add(p * sb);
                asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) a.add(p), s = in(reg) sa, options(nostack));
                asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) bp, s = in(reg) sb, options(nostack));
                asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
                if C == 2 {
                    asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) bp.add(16), s = in(reg) sb, options(nostack));
                    asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
                }
                if R == 2 {
                    asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) a1.add(p), s = in(reg) sa, options(nostack));
                    asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
                    if C == 2 {
                        asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
                p += 16;
            }
            asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) c, s = in(reg) ld, options(nostack));
            if C == 2 {
                asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) c.add(16), s = in(reg) ld, options(nostack));
            }
            if R == 2 {
                asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) c1, s = in(reg) ld, options(nostack));
                if C == 2 {
                    asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) c1.add(16), s = in(reg) ld, options(nostack));
                }
            }
        }
    }

    /// As [`super::multiply`]: the whole 16-row blocks, then the last rows on tiles
    /// configured that many rows high.
    pub unsafe fn multiply(
        m: usize,
        cols: usize,
        pairs: usize,
        a: *const u32,
        b: *const u32,
        out: Out,
    ) {
        let whole = m / 16 * 16;
        unsafe {
            if whole > 0 {
                Config::rows(16).load();
                rows(0..whole, cols, pairs, a, b, out);
            }
            if m > whole {
                Config::rows((m - whole) as u8).load();
                rows(whole..m, cols, pairs, a, b, out);
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }

    /// Rows `range` of the product, in blocks of 32 (2x2 C tiles) or 16, on the
    /// configuration loaded (16 rows high, or the height of a last partial block).
    unsafe fn rows(
        range: std::ops::Range<usize>,
        cols: usize,
        pairs: usize,
        a: *const u32,
        b: *const u32,
        out: Out,
    ) {
        let sa = pairs * 4;
        let vecs = cols / 16;
        for jb in 0..vecs.div_ceil(NV) {
            let nv = (vecs - jb * NV).min(NV);
            let sb = nv * 64;
            let mut i = range.start;
            while i < range.end {
                let two = range.end - i >= 32;
                let mut v = 0;
                while v < nv {
                    // SAFETY (offsets): rows i.. of A and out, the block's vector v of B.
                    let (ai, bv) = unsafe { (a.add(i * pairs), b.add((jb * NV * pairs + v) * 16)) };
                    let cv = Out {
                        ptr: out.ptr.wrapping_add(i * out.ld + (jb * NV + v) * 16),
                        ..out
                    };
                    // SAFETY: the caller's buffers; the tiles are configured.
                    unsafe {
                        match (two, nv - v >= 2) {
                            (true, true) => block::<2, 2>(pairs, ai, sa, bv, sb, cv),
                            (true, false) => block::<2, 1>(pairs, ai, sa, bv, sb, cv),
                            (false, true) => block::<1, 2>(pairs, ai, sa, bv, sb, cv),
                            (false, false) => block::<1, 1>(pairs, ai, sa, bv, sb, cv),
                        }
                    }
                    v += 2;
                }
                i += if two { 32 } else { 16 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products themselves are checked in [`super::super::bf16`]'s tests.
    #[test]
    fn covers_every_row_of_whole_tiles() {
        if !available() {
            eprintln!("no AMX on this CPU (or BIPO_AMX=off): nothing runs here");
            return;
        }
        let (cols, pairs) = (32, 32);
        let a = vec![0x3f80_3f80u32; 53 * pairs]; // bf16 pairs (1, 1)
        let b = vec![0x4000_4000u32; pairs * cols]; // bf16 pairs (2, 2)
        let mut y = vec![1f32; 54 * cols];
        let out = |y: &mut Vec<f32>, load| super::super::bf16::Out {
            ptr: y.as_mut_ptr(),
            ld: cols,
            load,
        };
        // 53 rows: three 16-row blocks and a 5-row one. Each element is
        // 1 + 64 products of 1 x 2; the row after them untouched.
        // SAFETY (all calls): the buffers have the layouts' sizes.
        assert_eq!(
            unsafe { multiply(53, cols, pairs, &a, &b, out(&mut y, true)) },
            53
        );
        assert!(y[..53 * cols].iter().all(|&v| v == 129.0));
        assert!(y[53 * cols..].iter().all(|&v| v == 1.0));
        assert_eq!(
            unsafe { multiply(53, cols, pairs, &a, &b, out(&mut y, false)) },
            53
        );
        assert!(y[..53 * cols].iter().all(|&v| v == 128.0));
        assert!(y[53 * cols..].iter().all(|&v| v == 1.0));
        // 24 pairs are not whole tiles: left to the caller.
        assert_eq!(
            unsafe { multiply(53, cols, 24, &a, &b, out(&mut y, true)) },
            0
        );
    }
}
