//! A training run's output folder: locked for one process, never silently replaced.
//!
//! - A fresh run refuses a folder that already holds a run (`--resume` continues it,
//!   `--force` replaces it: the old run's files are removed first, so no `epoch-N` file
//!   of the old run is left mixed in).
//! - A resumed run needs the folder's checkpoint.
//! - The folder is locked ([`DirLock`]) for as long as the [`RunDir`] lives, so two runs
//!   cannot write the same files; a killed run's lock is released by the OS.

use std::path::{Path, PathBuf};

use super::trainer::{CHECKPOINT_FILE, METRICS_FILE, RUN_FILE, VECTOR_FILE};
use crate::error::{Error, Result};
use crate::util::fs::{remove_stale_temps, DirLock};

/// How a run starts in its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; the folder must not hold one.
    Fresh,
    /// Continue the run in the folder from its checkpoint.
    Resume,
    /// A new run; any run in the folder is removed first.
    Replace,
}

/// Files a run may have written besides the fixed names: `epoch-N.safetensors`.
fn is_run_file(name: &str) -> bool {
    [
        RUN_FILE,
        CHECKPOINT_FILE,
        METRICS_FILE,
        VECTOR_FILE,
        TEST_MARGINS_FILE,
    ]
    .contains(&name)
        || (name.starts_with("epoch-") && name.ends_with(".safetensors"))
}

/// Held-out margins after training (written by `bipo train`).
pub const TEST_MARGINS_FILE: &str = "test-margins.json";

/// A locked run folder.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: DirLock,
}

impl RunDir {
    /// Locks `path` (creating it) and checks it suits `start`.
    pub fn open(path: &Path, start: Start) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(Error::invalid(
                format!("output folder {}", path.display()),
                "it exists and is not a folder",
            ));
        }
        let lock = DirLock::acquire(path)?;
        remove_stale_temps(path, "");
        let existing = Self::run_files(path)?;
        match start {
            Start::Fresh if !existing.is_empty() => {
                return Err(Error::invalid(
                    format!("output folder {}", path.display()),
                    format!(
                        "it already holds a training run ({}); pass --resume to continue it or --force to replace it",
                        existing.join(", ")
                    ),
                ))
            }
            Start::Resume if !path.join(CHECKPOINT_FILE).is_file() => {
                return Err(Error::invalid(
                    format!("--resume {}", path.display()),
                    format!("there is no {CHECKPOINT_FILE} to resume from (start a new run without --resume)"),
                ))
            }
            Start::Replace => {
                for f in &existing {
                    let p = path.join(f);
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
            _ => {}
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Names of the run files in `path`, sorted.
    fn run_files(path: &Path) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_run_file(n))
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `name` is a file a training run writes (for output-vs-input checks).
pub fn writes_run_file(name: &str) -> bool {
    is_run_file(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_a_run_needs_resume_or_force() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("run");
        drop(RunDir::open(&out, Start::Fresh).unwrap());
        for f in [RUN_FILE, "epoch-3.safetensors", "notes.txt"] {
            std::fs::write(out.join(f), b"x").unwrap();
        }
        let e = RunDir::open(&out, Start::Fresh).unwrap_err().to_string();
        assert!(e.contains("--force") && e.contains("epoch-3"), "{e}");
        let e = RunDir::open(&out, Start::Resume).unwrap_err().to_string();
        assert!(e.contains("no checkpoint.json"), "{e}");
        drop(RunDir::open(&out, Start::Replace).unwrap());
        assert!(!out.join("epoch-3.safetensors").exists() && !out.join(RUN_FILE).exists());
        assert!(out.join("notes.txt").exists(), "only run files are removed");
        let held = RunDir::open(&out, Start::Fresh).unwrap();
        let e = RunDir::open(&out, Start::Fresh).unwrap_err().to_string();
        assert!(e.contains("another bipo process"), "{e}");
        drop(held);
    }
}
