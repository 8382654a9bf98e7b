//! `bipo._bipo`: the native half of the Python package. The Python half
//! (`python/bipo/__init__.py`) owns the user-facing classes and numpy; this module
//! moves plain values (str, int, float, bytes, dicts) across, releases the GIL during
//! every model call, and turns bipo errors into `bipo.BipoError` with the same
//! one-line message as the CLI.
//!
//! Long calls (generation, training, evaluation) run on a worker thread while the
//! calling thread watches for Ctrl-C ([`interruptible`]): Python runs signal handlers
//! only on its main thread, so a worker alone would notice Ctrl-C only at its end.

mod measure;
mod model;
mod train;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bipo::load::LoadedModel;
use bipo::text::ChatTemplate;
use bipo::vector::{SteeringVector, VectorMeta};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

pyo3::create_exception!(_bipo, BipoError, PyException, "Any bipo failure.");
pyo3::create_exception!(
    _bipo,
    FileError,
    BipoError,
    "A file could not be read or written, or is not what it should be."
);
pyo3::create_exception!(
    _bipo,
    InvalidValueError,
    BipoError,
    "A value given is out of range or does not fit (a setting, a vector, a multiplier)."
);
pyo3::create_exception!(
    _bipo,
    ModelError,
    BipoError,
    "The model cannot do it: unsupported architecture, tokenizer or tensor failure."
);
pyo3::create_exception!(
    _bipo,
    JudgeError,
    BipoError,
    "The LLM judge's endpoint failed or answered something unusable."
);

/// A failure on its way to Python: a bipo error keeps its kind (the exception class).
enum Failure {
    Bipo(bipo::Error),
    Other(String),
}

impl From<bipo::Error> for Failure {
    fn from(e: bipo::Error) -> Self {
        Failure::Bipo(e)
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Other(e.into())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Other(e.to_string())
    }
}

/// The Python exception for a failure, with bipo's one-line message: `FileError`,
/// `InvalidValueError`, `ModelError` or `JudgeError` by the error's kind (all
/// `BipoError`s).
fn err(e: impl Into<Failure>) -> PyErr {
    match e.into() {
        Failure::Other(m) => BipoError::new_err(m),
        Failure::Bipo(e) => {
            let m = e.to_string();
            of_kind(&e, m)
        }
    }
}

/// [`err`] with the message prefixed by where it happened (e.g. `vectors[1]`).
fn err_in(context: impl std::fmt::Display, e: bipo::Error) -> PyErr {
    of_kind(&e, format!("{context}: {e}"))
}

fn of_kind(e: &bipo::Error, message: String) -> PyErr {
    use bipo::Error as E;
    match e {
        E::Io { .. } | E::BadFile { .. } => FileError::new_err(message),
        E::Invalid { .. } | E::VectorMismatch { .. } | E::NonFinite(_) | E::Template(_) => {
            InvalidValueError::new_err(message)
        }
        E::UnsupportedArchitecture { .. } | E::Tokenizer(_) | E::Tensor(_) | E::Hub(_) => {
            ModelError::new_err(message)
        }
        E::Judge(_) => JudgeError::new_err(message),
        E::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
        _ => BipoError::new_err(message),
    }
}

/// Layers as Python passes them: layer -> little-endian f32 bytes.
type RawLayers = HashMap<usize, Vec<u8>>;

fn to_vector(layers: RawLayers, meta: &str) -> PyResult<SteeringVector> {
    let mut out = BTreeMap::new();
    for (l, b) in layers {
        if b.len() % 4 != 0 {
            return Err(err(format!(
                "layer {l}: {} bytes is not a float32 array",
                b.len()
            )));
        }
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(l, v);
    }
    let meta: VectorMeta = if meta.is_empty() {
        VectorMeta::default()
    } else {
        serde_json::from_str(meta).map_err(|e| err(format!("vector metadata: {e}")))?
    };
    let v = SteeringVector { layers: out, meta };
    v.validate().map_err(err)?;
    Ok(v)
}

fn from_vector<'py>(
    py: Python<'py>,
    v: &SteeringVector,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String)> {
    let layers = v
        .layers
        .iter()
        .map(|(l, d)| {
            let bytes: Vec<u8> = d.iter().flat_map(|x| x.to_le_bytes()).collect();
            (*l, PyBytes::new(py, &bytes))
        })
        .collect();
    Ok((layers, serde_json::to_string(&v.meta).map_err(err)?))
}

/// Reads a vector file (safetensors, llama.cpp GGUF, or the paper's .pt with `layer`).
#[pyfunction]
#[pyo3(signature = (path, layer=None))]
fn read_vector<'py>(
    py: Python<'py>,
    path: PathBuf,
    layer: Option<usize>,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String)> {
    let v = py
        .detach(|| bipo::io::read_vector_at(&path, layer))
        .map_err(err)?;
    from_vector(py, &v)
}

/// Writes a vector file; the format follows the extension (.safetensors or .gguf).
#[pyfunction]
fn write_vector(py: Python<'_>, layers: RawLayers, meta: &str, path: PathBuf) -> PyResult<()> {
    let v = to_vector(layers, meta)?;
    py.detach(|| bipo::io::write_vector(&v, &path, "llama"))
        .map_err(err)
}

/// Sets the number of worker threads; only before the first model call.
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(err("threads: 0 (must be >= 1)"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|_| err("threads: the thread pool is already running (set threads before the first model call)"))
}

/// Runs `f` with the GIL released, on a worker of the rayon pool (so the parallel
/// loops of a forward pass share the pool by work stealing).
fn off_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> bipo::Result<T> + Send) -> PyResult<T> {
    py.detach(|| rayon::scope(|_| f())).map_err(err)
}

/// Runs `work` on a worker thread with the GIL released while this thread (Python's
/// main thread, where signal handlers run) checks for Ctrl-C every 50 ms. On Ctrl-C
/// `stop` is raised, the work is waited for (so it ends cleanly: a training run writes
/// its checkpoint) and KeyboardInterrupt is raised. Exceptions a [`Callback`] kept are
/// raised the same way; otherwise bipo errors become `BipoError`.
fn interruptible<T: Send>(
    py: Python<'_>,
    stop: &AtomicBool,
    callback: Option<&Callback>,
    work: impl FnOnce() -> bipo::Result<T> + Send,
) -> PyResult<T> {
    let main = std::thread::current();
    let mut interrupted = None;
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = rayon::scope(|_| work());
            main.unpark();
            r
        });
        while !h.is_finished() {
            py.detach(|| std::thread::park_timeout(Duration::from_millis(50)));
            if interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    stop.store(true, Ordering::SeqCst);
                    interrupted = Some(e);
                }
            }
        }
        h.join()
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    if let Some(e) = callback.and_then(Callback::take_raised) {
        return Err(e);
    }
    match result {
        Ok(r) => r.map_err(err),
        Err(_) => Err(err("internal error: a worker thread panicked")),
    }
}

/// A Python progress callback (`progress(dict)`) called from a worker thread. The first
/// exception it raises is kept (to be raised when the call returns) and raises `stop`.
struct Callback<'a> {
    cb: Option<Py<PyAny>>,
    stop: &'a AtomicBool,
    raised: Mutex<Option<PyErr>>,
}

impl<'a> Callback<'a> {
    fn new(cb: Option<Py<PyAny>>, stop: &'a AtomicBool) -> Self {
        Self {
            cb,
            stop,
            raised: Mutex::new(None),
        }
    }

    /// Reports the fields `fill` sets; false once the work should stop (Ctrl-C seen by
    /// the main thread, or the callback raised).
    fn report(&self, fill: impl FnOnce(&Bound<'_, PyDict>) -> PyResult<()>) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        let Some(cb) = &self.cb else { return true };
        let r = Python::attach(|py| {
            let d = PyDict::new(py);
            fill(&d)?;
            cb.call1(py, (d,)).map(|_| ())
        });
        if let Err(e) = r {
            self.stop.store(true, Ordering::SeqCst);
            *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return false;
        }
        true
    }

    fn take_raised(&self) -> Option<PyErr> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The model's chat template, or the built-in one named.
fn template(lm: &LoadedModel, builtin: Option<&str>) -> PyResult<ChatTemplate> {
    if builtin.is_none() && lm.chat_template.is_none() {
        return Err(err(
            "the model has no chat template: set template=\"llama2\" or \"mistral\"",
        ));
    }
    bipo::eval::pipeline::template_of(lm, builtin).map_err(err)
}

/// A seeded random direction per layer with the norms of `like`'s layers.
#[pyfunction]
fn random_like<'py>(
    py: Python<'py>,
    like: RawLayers,
    seed: u64,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String)> {
    let l = to_vector(like, "")?;
    let meta = VectorMeta {
        name: format!("random-{seed}"),
        method: Some("random".into()),
        extra: [("seed".to_string(), seed.to_string())].into(),
        ..Default::default()
    };
    from_vector(py, &bipo::baselines::random_like(&l, seed, meta))
}

#[pymodule]
fn _bipo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    bipo::util::tune_candle_pool();
    m.add("BipoError", m.py().get_type::<BipoError>())?;
    m.add("FileError", m.py().get_type::<FileError>())?;
    m.add("InvalidValueError", m.py().get_type::<InvalidValueError>())?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add("JudgeError", m.py().get_type::<JudgeError>())?;
    m.add_class::<model::NativeModel>()?;
    m.add_function(wrap_pyfunction!(read_vector, m)?)?;
    m.add_function(wrap_pyfunction!(write_vector, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(measure::baseline, m)?)?;
    m.add_function(wrap_pyfunction!(measure::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(random_like, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
