//! sha256 of large files (models), remembered by (path, size, modification time), so a
//! multi-GB model is hashed once, not on every run that records or checks its identity
//! (`run.json`, reports, vector metadata, the transfer warning). Hashing reads the whole
//! file: ~140 MB/s on a CPU without SHA extensions, ~30 s for a 7B Q4_K_M.
//!
//! The cache is one text file, `sha256-cache.tsv` in `$BIPO_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/bipo`, else `~/.cache/bipo`: lines `SHA256 \t SIZE \t MTIME_NS \t
//! PATH` (canonical path). A file whose size or modification time changed is hashed
//! again. The cache is an optimisation only: if it cannot be read or written the hash is
//! computed as usual, and it is replaced atomically (temp file + rename).

use std::path::{Path, PathBuf};

use crate::error::Result;

const FILE: &str = "sha256-cache.tsv";
/// Entries kept (most recent last); older ones are dropped.
const MAX_ENTRIES: usize = 512;

/// The cache folder named by the environment, if any.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("BIPO_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("bipo")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/bipo")))
}

/// sha256 of `path`, from the cache in [`cache_dir`] when the file is unchanged.
pub fn file_sha256_cached(path: &Path) -> Result<String> {
    match cache_dir() {
        Some(dir) => file_sha256_cached_in(path, &dir),
        None => super::file_sha256(path),
    }
}

/// [`file_sha256_cached`] with the cache in `dir`.
pub fn file_sha256_cached_in(path: &Path, dir: &Path) -> Result<String> {
    let Some(key) = key_of(path) else {
        return super::file_sha256(path);
    };
    let cache = dir.join(FILE);
    let mut lines: Vec<String> = std::fs::read_to_string(&cache)
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default();
    if let Some(sha) = lines.iter().find_map(|l| {
        l.split_once('\t')
            .filter(|(_, k)| *k == key)
            .map(|(s, _)| s)
    }) {
        return Ok(sha.to_string());
    }
    let sha = super::file_sha256(path)?;
    // The file may have changed while it was read: remember it only if it did not.
    if key_of(path).as_deref() == Some(key.as_str()) {
        let path_part = key.splitn(3, '\t').nth(2).unwrap_or_default().to_string();
        lines.retain(|l| l.splitn(4, '\t').nth(3) != Some(path_part.as_str()));
        lines.push(format!("{sha}\t{key}"));
        let skip = lines.len().saturating_sub(MAX_ENTRIES);
        let text: String = lines[skip..].iter().map(|l| format!("{l}\n")).collect();
        let _ = std::fs::create_dir_all(dir).and_then(|_| {
            super::write_atomic(&cache, text.as_bytes()).map_err(std::io::Error::other)
        });
    }
    Ok(sha)
}

/// `SIZE \t MTIME_NS \t CANONICAL_PATH`, or None when any part is unavailable (or the
/// path holds a tab or newline, which the file format cannot carry).
fn key_of(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&canon).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let p = canon.to_str()?;
    if p.contains(['\t', '\n']) {
        return None;
    }
    Some(format!("{}\t{mtime}\t{p}", meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_hash_is_used_until_the_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let f = tmp.path().join("model.bin");
        std::fs::write(&f, b"weights v1").unwrap();
        let real = crate::util::file_sha256(&f).unwrap();
        assert_eq!(file_sha256_cached_in(&f, &cache).unwrap(), real);
        // Read back from the cache, not recomputed: a doctored entry is returned.
        let text = std::fs::read_to_string(cache.join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1);
        std::fs::write(cache.join(FILE), text.replace(&real, "doctored")).unwrap();
        assert_eq!(file_sha256_cached_in(&f, &cache).unwrap(), "doctored");
        // A different size invalidates the entry, and the new one replaces it.
        std::fs::write(&f, b"weights v2, longer").unwrap();
        let real2 = crate::util::file_sha256(&f).unwrap();
        assert_eq!(file_sha256_cached_in(&f, &cache).unwrap(), real2);
        let text = std::fs::read_to_string(cache.join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        // An unreadable cache folder (a file in its place) is not an error.
        let blocked = tmp.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        assert_eq!(file_sha256_cached_in(&f, &blocked).unwrap(), real2);
    }
}
