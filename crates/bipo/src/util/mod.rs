//! Small helpers shared across modules.

pub mod fs;
pub mod hash_cache;
pub mod layers;
pub mod redact;

pub use fs::write_atomic;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Buffer size for hashing large files.
const HASH_CHUNK: usize = 1 << 20;

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Hex SHA-256 of a file's bytes (model identity in run records and vector metadata).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Refuses non-finite values (NaN or infinity) in model outputs: they mean the
/// activations overflowed (a steering vector far too strong, or corrupt weights), and
/// every number computed from them would be garbage. `what` names the computation.
pub fn check_finite(what: &str, xs: &[f32]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{what}: value {i} is {} (activations overflowed: is a steering multiplier or vector far too large?)",
            xs[i]
        ))),
    }
}

/// A text file's content; a file that is not UTF-8 is refused naming the line and
/// column of the first bad byte.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    text_of(path, bytes)
}

/// `bytes` as UTF-8 text, or an error naming `path` and where the first bad byte is.
pub fn text_of(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = at
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        Error::bad_file(
            path,
            format!(
                "line {line}, column {col}: not UTF-8 text (byte 0x{:02x} at offset {at})",
                e.as_bytes()[at]
            ),
        )
    })
}

/// The f32 values of a contiguous CPU tensor inside a candle custom op; `op` names the
/// op in the error.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 input")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous input")
    };
    Ok(&v[a..b])
}

/// Environment variable that sets how long candle's own worker threads spin for new
/// work before they park.
pub const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spin bipo gives candle's pool unless the user set one. candle's default (25,000)
/// keeps its workers busy-waiting after every small tensor op, on the same cores as
/// bipo's rayon kernels; on 2 threads that costs 10-35% (BENCHMARKS.md, 2026-11-29:
/// prompt 826 -> 1111 tok/s, 64-row decode 659 -> 790, a BiPO step 1.40 -> 1.20 s).
/// Parking at once (1) is slower for training's many small ops.
pub const CANDLE_SPIN_DEFAULT: u32 = 200;

/// Shortens candle's worker spin to [`CANDLE_SPIN_DEFAULT`] when the environment does
/// not set it. candle reads it once, when its pool starts (the first parallel tensor
/// op), so call this at program start, before any model is loaded; the binaries and
/// the Python module do.
pub fn tune_candle_pool() {
    if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
        // Process start, before any thread reads the environment.
        std::env::set_var(CANDLE_SPIN_ENV, CANDLE_SPIN_DEFAULT.to_string());
    }
}

/// Environment variables through which a user tunes glibc's allocator; when any is set,
/// [`tune_allocator`] leaves the allocator alone.
pub const MALLOC_ENV: [&str; 3] = [
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
];

/// Keeps large tensor buffers in glibc's heap instead of a fresh `mmap` per buffer:
/// every new mapping is zero pages that fault on first touch (and, on first write after
/// a read, flush the TLB of every core). Raises the mmap threshold to its maximum
/// (32 MiB) and the trim threshold to 512 MiB, with 64 MiB of top padding. On a
/// 36-pair `bench-train` (BENCHMARKS.md, 2026-11-29 night) page faults fall from
/// 0.64-1.29 M to 0.39 M a run, and steady: steps are the same within noise, the peak
/// RSS 3% higher. The heap stays at its peak instead of shrinking after each step. Does nothing outside glibc, or when the environment sets any of
/// [`MALLOC_ENV`]. Call at program start; the binaries do (the Python module does not:
/// it would change the allocator of the whole Python process).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if MALLOC_ENV.iter().all(|v| std::env::var_os(v).is_none()) {
        const MIB: libc::c_int = 1 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is safe at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 * MIB);
            libc::mallopt(libc::M_TOP_PAD, 64 * MIB);
        }
    }
}
