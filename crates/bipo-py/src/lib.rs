//! `bipo._bipo`: the native half of the Python package. The Python half
//! (`python/bipo/__init__.py`) owns the user-facing classes and numpy; this module
//! moves plain values (str, int, float, bytes, dicts) across, releases the GIL during
//! every model call, and turns bipo errors into `bipo.BipoError` with the same
//! one-line message as the CLI.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bipo::data::{Dataset, PreferencePair};
use bipo::generate::{generate, GenerateOptions, SamplingParams};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::Mode;
use bipo::run::{DataRecord, ModelRecord, RunRecord};
use bipo::steer::{Positions, Steering};
use bipo::text::{ChatTemplate, Message};
use bipo::train::bipo::{tokenize, Prepared};
use bipo::train::rundir::{writes_run_file, RunDir, Start};
use bipo::train::{Event, TrainConfig, Trainer};
use bipo::vector::{SteeringVector, VectorMeta};
use candle_core::Tensor;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::create_exception!(_bipo, BipoError, PyException);

fn err(e: impl std::fmt::Display) -> PyErr {
    BipoError::new_err(e.to_string())
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

/// A loaded model.
#[pyclass(frozen, module = "bipo._bipo")]
struct NativeModel {
    lm: Arc<LoadedModel>,
}

/// Runs `f` with the GIL released, on a worker of the rayon pool (so the parallel
/// loops of a forward pass share the pool by work stealing).
fn off_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> bipo::Result<T> + Send) -> PyResult<T> {
    py.detach(|| rayon::scope(|_| f())).map_err(err)
}

impl NativeModel {
    fn steering(&self, vectors: Vec<(RawLayers, f32)>) -> PyResult<Steering> {
        let m = &self.lm.model;
        let mut vs = Vec::with_capacity(vectors.len());
        for (i, (layers, mult)) in vectors.into_iter().enumerate() {
            if !mult.is_finite() {
                return Err(err(format!(
                    "vectors[{i}]: multiplier {mult} is not finite"
                )));
            }
            let v = to_vector(layers, "")?;
            v.check_fits(m.hidden_size(), m.num_layers())
                .map_err(|e| err(format!("vectors[{i}]: {e}")))?;
            vs.push((v, mult));
        }
        Steering::from_vectors(&vs, m.device(), m.dtype()).map_err(err)
    }

    fn ids(&self, prompt: &str, chat: bool, system: Option<&str>) -> PyResult<Vec<u32>> {
        let lm = &self.lm;
        if !chat {
            return lm.tokenizer.encode(prompt, true).map_err(err);
        }
        let t = lm
            .chat_template
            .as_ref()
            .ok_or_else(|| err("the model has no chat template: pass chat=False"))?;
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", prompt));
        let p = t.render_prompt(&msgs).map_err(err)?;
        lm.tokenizer.encode_chat(&p, true).map_err(err)
    }
}

#[pymethods]
impl NativeModel {
    #[new]
    #[pyo3(signature = (path, device="cpu"))]
    fn new(py: Python<'_>, path: String, device: &str) -> PyResult<Self> {
        let opts = LoadOptions {
            device: bipo::load::parse_device(device).map_err(err)?,
            ..Default::default()
        };
        let lm = py.detach(|| load(&path, &opts)).map_err(err)?;
        Ok(Self { lm: Arc::new(lm) })
    }

    /// Architecture, sizes and weights as JSON.
    fn info(&self) -> PyResult<String> {
        let m = &self.lm.model;
        let mut v = serde_json::to_value(&m.info).map_err(err)?;
        v["num_layers"] = m.num_layers().into();
        v["hidden_size"] = m.hidden_size().into();
        v["max_context"] = m.max_context().into();
        v["has_chat_template"] = self.lm.chat_template.is_some().into();
        Ok(v.to_string())
    }

    /// Token ids of a prompt (chat-templated or raw).
    #[pyo3(signature = (prompt, chat=true, system=None))]
    fn tokenize(&self, prompt: &str, chat: bool, system: Option<&str>) -> PyResult<Vec<u32>> {
        self.ids(prompt, chat, system)
    }

    /// Returns (text, ids, finish_reason, prompt_tokens).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, vectors, chat, system, max_tokens, temperature, top_p, top_k, seed, positions, stop))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        vectors: Vec<(RawLayers, f32)>,
        chat: bool,
        system: Option<&str>,
        max_tokens: usize,
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: u64,
        positions: &str,
        stop: Vec<String>,
    ) -> PyResult<(String, Vec<u32>, String, usize)> {
        let steering = self.steering(vectors)?;
        let ids = self.ids(prompt, chat, system)?;
        let positions: Positions = positions.parse().map_err(err)?;
        let opts = GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty: 1.0,
                seed,
            },
            stop_strings: stop,
            stop_at_eos: true,
            top_logprobs: 0,
            positions,
        };
        let lm = self.lm.clone();
        let g = off_gil(py, move || {
            generate(&lm.model, &lm.tokenizer, &ids, &steering, &opts, |_| Ok(()))
        })?;
        let finish = serde_json::to_value(g.finish_reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok((g.text, g.ids, finish, g.prompt_tokens))
    }

    /// Log-probabilities of each token of `continuation` after `prompt`, steered by
    /// `vectors` at every position. Returns (token ids, log-probabilities).
    #[pyo3(signature = (prompt, continuation, vectors, chat))]
    fn logprobs(
        &self,
        py: Python<'_>,
        prompt: &str,
        continuation: &str,
        vectors: Vec<(RawLayers, f32)>,
        chat: bool,
    ) -> PyResult<(Vec<u32>, Vec<f32>)> {
        let steering = self.steering(vectors)?;
        let head = self.ids(prompt, chat, None)?;
        let tail = self.lm.tokenizer.encode(continuation, false).map_err(err)?;
        if tail.is_empty() {
            return Err(err("continuation: it is empty (no tokens)"));
        }
        let lm = self.lm.clone();
        let lps = off_gil(py, {
            let tail = tail.clone();
            move || {
                let m = &lm.model;
                let all: Vec<u32> = head.iter().chain(&tail).copied().collect();
                let x = Tensor::new(all.as_slice(), m.device())?.unsqueeze(0)?;
                // Logits at the positions that predict the continuation.
                let logits = m.forward(&x, 0, None, &steering, Some(tail.len() + 1), Mode::Fast)?;
                let rows: Vec<Vec<f32>> = logits.squeeze(0)?.to_vec2()?;
                Ok(rows
                    .iter()
                    .zip(&tail)
                    .map(|(r, &t)| (r[t as usize] as f64 - bipo::generate::log_sum_exp(r)) as f32)
                    .collect::<Vec<f32>>())
            }
        })?;
        Ok((tail, lps))
    }
}

/// Pairs from Python: a file path, or (question, matching, not_matching) tuples.
fn dataset(data: &Bound<'_, PyAny>, skip_invalid: bool) -> PyResult<(Dataset, Option<PathBuf>)> {
    if let Ok(path) = data.extract::<PathBuf>() {
        let d = bipo::data::load_pairs_with(&path, skip_invalid).map_err(err)?;
        return Ok((d, Some(path)));
    }
    let rows: Vec<(String, String, String)> = data.extract().map_err(|_| {
        err("data: give a file path or a list of {question, matching, not_matching} pairs")
    })?;
    let mut pairs = Vec::with_capacity(rows.len());
    for (i, (q, m, n)) in rows.into_iter().enumerate() {
        if q.trim().is_empty() || m.trim().is_empty() || n.trim().is_empty() {
            return Err(err(format!("data: pair {i} has an empty field")));
        }
        pairs.push(PreferencePair {
            question: q,
            matching: m,
            not_matching: n,
        });
    }
    let json = serde_json::to_vec(
        &pairs
            .iter()
            .map(|p| [&p.question, &p.matching, &p.not_matching])
            .collect::<Vec<_>>(),
    )
    .map_err(err)?;
    let sha256 = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&json));
    Ok((
        Dataset {
            pairs,
            sha256: format!("{sha256:x}"),
            format: "python",
            skipped: Vec::new(),
        },
        None,
    ))
}

/// Trains a BiPO vector into the run folder `out` (as `bipo train`: run.json,
/// metrics.jsonl, checkpoints, vector.safetensors). `settings` is a JSON object of
/// [`TrainConfig`] keys. `progress(dict)` is called after every step; an exception it
/// raises, or Ctrl-C, stops the run after that step with a checkpoint written (resume
/// with `resume=True`) and is raised again. Returns (layers, meta, steps).
#[pyfunction]
#[pyo3(signature = (model, data, out, settings, resume=false, force=false, progress=None, skip_invalid=false))]
#[allow(clippy::too_many_arguments)]
fn train<'py>(
    py: Python<'py>,
    model: &NativeModel,
    data: &Bound<'py, PyAny>,
    out: PathBuf,
    settings: &str,
    resume: bool,
    force: bool,
    progress: Option<Py<PyAny>>,
    skip_invalid: bool,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String, usize)> {
    let lm = model.lm.clone();
    let (train_set, data_path) = dataset(data, skip_invalid)?;
    let mut given: serde_json::Value = serde_json::from_str(settings).map_err(err)?;
    let layer_given = given.get("layer").is_some_and(|l| !l.is_null());
    if !layer_given {
        if let Some(o) = given.as_object_mut() {
            o.remove("layer");
        }
    }
    let mut cfg: TrainConfig =
        serde_json::from_value(given).map_err(|e| err(format!("training settings: {e}")))?;
    let n_layers = lm.model.num_layers();
    if !layer_given {
        cfg.layer = bipo::train::default_layer(n_layers);
    }
    if cfg.layer >= n_layers {
        return Err(err(format!(
            "layer {}: the model has {n_layers} layers (0..{})",
            cfg.layer,
            n_layers - 1
        )));
    }
    cfg.validate().map_err(err)?;
    let inputs: Vec<(&str, &std::path::Path)> = data_path
        .as_deref()
        .map(|p| ("data", p))
        .into_iter()
        .collect();
    bipo::util::fs::check_output_dir(&inputs, "out", &out, writes_run_file).map_err(err)?;
    let start = match (resume, force) {
        (true, _) => Start::Resume,
        (_, true) => Start::Replace,
        _ => Start::Fresh,
    };
    let template = match cfg.template.as_deref() {
        Some(name) => ChatTemplate::builtin(name).map_err(err)?,
        None => lm.chat_template.clone().ok_or_else(|| {
            err("the model has no chat template: set template=\"llama2\" or \"mistral\"")
        })?,
    };
    let stop = AtomicBool::new(false);
    let raised: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let result = py.detach(|| {
        rayon::scope(|_| -> bipo::Result<(SteeringVector, usize)> {
            let run = RunDir::open(&out, start)?;
            let record = RunRecord::new(
                "bipo",
                &cfg,
                ModelRecord::of(&lm)?,
                DataRecord::of(
                    data_path.as_deref().unwrap_or("<python>".as_ref()),
                    &train_set,
                ),
                None,
            );
            if !resume {
                record.write(run.path())?;
            }
            let ex = tokenize(
                &train_set.pairs,
                &lm.tokenizer,
                &template,
                cfg.system.as_deref(),
            )?;
            let mut prep = Prepared::new(&lm.model, cfg.layer, ex, cfg.cache_mb << 20, |_, _| {})?;
            prep.set_positions(cfg.positions);
            let meta = VectorMeta {
                name: format!("bipo-L{}", cfg.layer),
                model: Some(lm.model.info.source.clone()),
                method: Some("bipo".into()),
                extra: [
                    (
                        "config".to_string(),
                        serde_json::to_string(&cfg).unwrap_or_default(),
                    ),
                    ("data_sha256".to_string(), train_set.sha256.clone()),
                ]
                .into(),
            };
            let trainer = Trainer {
                cfg: cfg.clone(),
                train: &prep,
                test: None,
                out: &run,
                meta,
                inputs: record.inputs(),
                checkpoint_every: bipo::train::trainer::DEFAULT_CHECKPOINT_EVERY,
            };
            let outcome = trainer.run(resume, &stop, |ev| {
                let Event::Step(m) = ev else { return };
                Python::attach(|py| {
                    let r = py.check_signals().and_then(|_| match &progress {
                        Some(cb) => {
                            let d = pyo3::types::PyDict::new(py);
                            d.set_item("step", m.step + 1)?;
                            d.set_item("epoch", m.epoch + 1)?;
                            d.set_item("loss", m.loss)?;
                            d.set_item("accuracy", m.accuracy)?;
                            d.set_item("vector_norm", m.vector_norm)?;
                            cb.call1(py, (d,)).map(|_| ())
                        }
                        None => Ok(()),
                    });
                    if let Err(e) = r {
                        stop.store(true, Ordering::SeqCst);
                        *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                });
            })?;
            let v = bipo::io::read_vector(&out.join(bipo::train::trainer::VECTOR_FILE))?;
            Ok((v, outcome.steps))
        })
    });
    if let Some(e) = raised.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let (v, steps) = result.map_err(err)?;
    let (layers, meta) = from_vector(py, &v)?;
    Ok((layers, meta, steps))
}

/// A baseline vector from pairs: "caa" (mean difference), "pca" (first principal
/// component of the differences) or "mean-centring" (mean matching activation minus the
/// mean over bipo's neutral text), at `layers`. Returns (layers, meta).
#[pyfunction]
#[pyo3(signature = (model, data, method, layers, read_at="mean", system=None, template=None, skip_invalid=false))]
#[allow(clippy::too_many_arguments)]
fn baseline<'py>(
    py: Python<'py>,
    model: &NativeModel,
    data: PathBuf,
    method: &str,
    layers: Vec<usize>,
    read_at: &str,
    system: Option<&str>,
    template: Option<&str>,
    skip_invalid: bool,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String)> {
    use bipo::baselines;
    if !["caa", "pca", "mean-centring"].contains(&method) {
        return Err(err(format!(
            "method `{method}`: choose caa, pca or mean-centring (random: SteeringVector.random_like)"
        )));
    }
    if layers.is_empty() {
        return Err(err("layers: give at least one layer"));
    }
    let lm = model.lm.clone();
    let read_at: baselines::ReadAt = read_at.parse().map_err(err)?;
    let template = match template {
        Some(name) => ChatTemplate::builtin(name).map_err(err)?,
        None => lm.chat_template.clone().ok_or_else(|| {
            err("the model has no chat template: set template=\"llama2\" or \"mistral\"")
        })?,
    };
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = off_gil(py, move || {
        let (reads, sha, _) = baselines::reads_of_file(
            &lm,
            &template,
            &data,
            &layers,
            read_at,
            system,
            skip_invalid,
            |_, _| {},
        )?;
        let meta = VectorMeta {
            name: format!("{method}-{stem}"),
            model: Some(lm.model.info.source.clone()),
            method: Some(if method == "pca" { "pca-diff" } else { method }.into()),
            extra: [("data_sha256".to_string(), sha)].into(),
        };
        let d = baselines::differences_of(&reads);
        Ok(match method {
            "caa" => baselines::caa(&d, meta),
            "pca" => baselines::pca_diff(&d, meta),
            _ => {
                use bipo::eval::damage;
                let ids = damage::paragraphs(damage::NEUTRAL_TEXT)
                    .iter()
                    .map(|t| lm.tokenizer.encode(t, true))
                    .collect::<bipo::Result<Vec<_>>>()?;
                let ls: Vec<usize> = reads.keys().copied().collect();
                let means = baselines::neutral_means(&lm.model, &ids, &ls)?;
                baselines::mean_centring(&reads, &means, meta)?
            }
        })
    })?;
    from_vector(py, &v)
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
    m.add("BipoError", m.py().get_type::<BipoError>())?;
    m.add_class::<NativeModel>()?;
    m.add_function(wrap_pyfunction!(read_vector, m)?)?;
    m.add_function(wrap_pyfunction!(write_vector, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(baseline, m)?)?;
    m.add_function(wrap_pyfunction!(random_like, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
