// Shared by the fuzz targets: the readers take paths (as users give them), so each
// input is written to a per-process scratch file first.
use std::path::PathBuf;

pub fn scratch(bytes: &[u8], ext: &str) -> PathBuf {
    let dir = std::env::var_os("BIPO_FUZZ_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let p = dir.join(format!("bipo-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&p, bytes).expect("scratch file");
    p
}
