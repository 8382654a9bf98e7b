//! File-system safety: atomic writes, refusing outputs that are inputs, and folder locks.
//!
//! Rules every command follows: an input is never overwritten (outputs are checked
//! against inputs before any work), nothing half-written is left on disk (temporary
//! file + rename; stale temporaries of dead processes are removed), and one output
//! folder serves one process at a time (an advisory lock the OS releases when the
//! process dies, even by `kill -9`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so
/// `path` never holds a half-written file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_temps(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The folder holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether a process with this id is running (Linux: /proc; elsewhere assumed alive).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes `.{name}.tmp-PID` files (or every `.*.tmp-PID` when `name` is empty) left in
/// `dir` by processes that no longer run (killed between create and rename).
pub fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some((stem, pid)) = file.strip_prefix('.').and_then(|f| f.rsplit_once(".tmp-")) else {
            continue;
        };
        if !name.is_empty() && stem != name {
            continue;
        }
        if let Ok(pid) = pid.parse::<u32>() {
            if pid != std::process::id() && !process_alive(pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Whether two existing paths name the same file (through links and `..`).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// An absolute, link-free spelling of a path that may not exist yet (its folder must).
fn resolved(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (parent_dir(p).canonicalize(), p.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => p.to_path_buf(),
    }
}

/// Whether writing `output` would replace `input`.
pub fn is_same_path(output: &Path, input: &Path) -> bool {
    same_file(output, input) || resolved(output) == resolved(input)
}

/// Refuses, before any work, an output file that is one of the inputs. Each input and
/// output is named by what it is (`"--model"`, `"--out"`) for the message.
pub fn check_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<()> {
    for (out_flag, out) in outputs {
        for (in_flag, inp) in inputs {
            if is_same_path(out, inp) {
                return Err(Error::invalid(
                    format!("{out_flag} {}", out.display()),
                    format!(
                        "it is the same file as {in_flag} {}; refusing to overwrite an input",
                        inp.display()
                    ),
                ));
            }
        }
        if out.is_dir() {
            return Err(Error::invalid(
                format!("{out_flag} {}", out.display()),
                "it is a folder; give a file name",
            ));
        }
    }
    Ok(())
}

/// Refuses an output folder that would overwrite an input: an input that is the folder
/// itself, or lies in it under a name the command writes (`written(name)` is true).
pub fn check_output_dir(
    inputs: &[(&str, &Path)],
    out_flag: &str,
    dir: &Path,
    written: impl Fn(&str) -> bool,
) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::invalid(
            format!("{out_flag} {}", dir.display()),
            "it exists and is not a folder",
        ));
    }
    let dir_r = resolved(dir);
    for (in_flag, inp) in inputs {
        let inp_r = resolved(inp);
        let clash = inp_r == dir_r
            || (inp_r.parent() == Some(dir_r.as_path())
                && inp_r
                    .file_name()
                    .is_some_and(|n| written(&n.to_string_lossy())));
        if clash {
            return Err(Error::invalid(
                format!("{out_flag} {}", dir.display()),
                format!(
                    "writing there would overwrite the {in_flag} input {}",
                    inp.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Creates `dir` if needed and proves it writable (a probe file is written and removed),
/// so a command finds an unwritable output before its compute, not after.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(format!(".bipo-probe-{}", std::process::id()));
    File::create(&probe).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Proves the folder that will hold output file `path` is writable.
pub fn ensure_writable_parent(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("folder {} does not exist", dir.display()),
            ),
        ));
    }
    ensure_writable_dir(dir)
}

/// File name of a folder's lock.
pub const LOCK_FILE: &str = ".bipo.lock";

/// An exclusive advisory lock on a folder, held while the value lives. The OS releases
/// it when the process ends however it ends, so a killed run never blocks the next.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, or says which folder is busy.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::invalid(
                format!("output folder {}", dir.display()),
                format!("another bipo process is using it (lock {})", path.display()),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_inputs_are_refused_through_links_and_dots() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.gguf");
        std::fs::write(&a, b"x").unwrap();
        let dotted = d.path().join("sub/../a.gguf");
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(check_outputs(&[("--model", &a)], &[("--out", &dotted)]).is_err());
        #[cfg(unix)]
        {
            let link = d.path().join("link.gguf");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            let e = check_outputs(&[("--model", &a)], &[("--out", &link)]).unwrap_err();
            assert!(e.to_string().contains("--model"), "{e}");
            let hard = d.path().join("hard.gguf");
            std::fs::hard_link(&a, &hard).unwrap();
            assert!(check_outputs(&[("--model", &a)], &[("--out", &hard)]).is_err());
        }
        let b = d.path().join("b.gguf");
        assert!(check_outputs(&[("--model", &a)], &[("--out", &b)]).is_ok());
    }

    #[test]
    fn an_output_folder_may_hold_inputs_it_does_not_write() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("vector.safetensors");
        std::fs::write(&v, b"x").unwrap();
        let writes_reports = |n: &str| n.starts_with("report.");
        assert!(check_output_dir(&[("-v", &v)], "--out", d.path(), writes_reports).is_ok());
        let r = d.path().join("report.json");
        std::fs::write(&r, b"x").unwrap();
        assert!(check_output_dir(&[("--data", &r)], "--out", d.path(), writes_reports).is_err());
        assert!(check_output_dir(&[("--data", &r)], "--out", &r, writes_reports).is_err());
    }

    #[test]
    fn a_locked_folder_is_refused_until_the_lock_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(d.path()).unwrap();
        let e = DirLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains("another bipo process"), "{e}");
        drop(first);
        DirLock::acquire(d.path()).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // PID 4194304 is above Linux's pid_max, so it never runs.
        let stale = d.path().join(".x.json.tmp-4194304");
        std::fs::write(&stale, b"half").unwrap();
        write_atomic(&d.path().join("x.json"), b"{}").unwrap();
        assert!(!stale.exists() || !cfg!(target_os = "linux"));
        assert_eq!(std::fs::read(d.path().join("x.json")).unwrap(), b"{}");
    }
}
