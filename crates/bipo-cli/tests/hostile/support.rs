//! Helpers: run the binary, assert one clear error, fingerprint inputs, find leftovers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub use crate::common::{model, root};

/// The binary under test: this build's, or `BIPO_TEST_BIN` (to replay the catalogue
/// against another build, e.g. an older one, and count what it gets wrong).
pub fn exe() -> String {
    std::env::var("BIPO_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bipo").to_string())
}

/// Runs `bipo` with `args`.
pub fn bipo(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `bipo` with `args` and `input` on standard input.
pub fn bipo_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut c = Command::new(exe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command failed with `code` and printed exactly one line, `error: ...`, holding
/// every needle; no panic, no backtrace.
#[track_caller]
pub fn fails(o: &Output, code: i32, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {e}");
    // Progress lines ("[12s] stage: 3/8") and notes may come first when stderr is not a
    // terminal; the error itself is the one last line.
    let lines: Vec<&str> = e.trim_end().lines().collect();
    let (last, before) = lines.split_last().expect("stderr is empty");
    assert!(
        last.starts_with("error: "),
        "the last line is not the error: {e}"
    );
    for l in before {
        let progress = ["[", "warning: ", "note: ", "no --layer given", "skipped "]
            .iter()
            .any(|p| l.starts_with(p));
        assert!(
            progress,
            "one error line expected, after progress lines only: {e}"
        );
    }
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
}

#[track_caller]
pub fn succeeds(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The happy control vector (29 layers, width 576) copied into `dir`.
pub fn happy(dir: &Path) -> PathBuf {
    let src = root().join("assets/happy-control-vector.gguf");
    let dst = dir.join("happy.gguf");
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// The first `n` pairs of the paper's power-seeking training data, as CSV in `dir`.
pub fn pairs(dir: &Path, n: usize) -> PathBuf {
    let src = root().join("../shared/data/bipo/power-seeking/train.csv");
    let text = std::fs::read_to_string(src).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let dst = dir.join("pairs.csv");
    let mut w = csv::Writer::from_path(&dst).unwrap();
    w.write_record(rdr.headers().unwrap()).unwrap();
    for r in rdr
        .records()
        .map(Result::unwrap)
        .filter(|r| r.iter().all(|f| !f.trim().is_empty()))
        .take(n)
    {
        w.write_record(&r).unwrap();
    }
    w.flush().unwrap();
    dst
}

/// A file's identity: its full sha256 (the model: length, mtime and a sampled hash).
fn fingerprint(p: &Path) -> String {
    let meta = std::fs::metadata(p).unwrap();
    if meta.len() > 8 << 20 {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut h = Sha256::new();
        for at in [0, meta.len() / 2, meta.len() - (1 << 20)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut buf).unwrap();
            h.update(&buf);
        }
        return format!(
            "{} {:?} {:x}",
            meta.len(),
            meta.modified().unwrap(),
            h.finalize()
        );
    }
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

/// Fingerprints of input files, to prove a command left them alone.
pub struct Inputs(Vec<(PathBuf, String)>);

impl Inputs {
    pub fn of(paths: &[&Path]) -> Self {
        Self(
            paths
                .iter()
                .map(|p| (p.to_path_buf(), fingerprint(p)))
                .collect(),
        )
    }

    #[track_caller]
    pub fn unchanged(&self) {
        for (p, f) in &self.0 {
            assert!(p.is_file(), "{} vanished", p.display());
            assert_eq!(&fingerprint(p), f, "{} changed", p.display());
        }
    }
}

/// No temporary or half-written file anywhere under `dir`.
#[track_caller]
pub fn no_leftovers(dir: &Path) {
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !n.contains(".tmp-") && !n.starts_with(".bipo-probe"),
            "left behind: {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// Every file under `dir` as text (lossy), for leak checks.
pub fn all_text(dir: &Path) -> String {
    walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            format!(
                "{}\n{}",
                p.display(),
                String::from_utf8_lossy(&std::fs::read(&p).unwrap())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A safetensors vector with one layer of `width` values all equal to `value`.
pub fn flat_vector(path: &Path, layer: usize, width: usize, value: f32) {
    let hdr = serde_json::json!({
        format!("layer.{layer}"): {"dtype": "F32", "shape": [width], "data_offsets": [0, 4 * width]}
    })
    .to_string();
    let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(hdr.as_bytes());
    for _ in 0..width {
        b.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}
