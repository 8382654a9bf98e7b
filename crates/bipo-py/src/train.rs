//! `train`: a BiPO run, exactly as `bipo train` does it (same run folder, same vector).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bipo::data::{Dataset, PreferencePair};
use bipo::train::pipeline::{self, Progress, TrainJob};
use bipo::train::rundir::{writes_run_file, Start};
use bipo::train::{Event, TrainConfig};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::model::NativeModel;
use crate::{err, err_in, from_vector, interruptible, template, Callback, InvalidValueError};

/// Pairs from Python: a file path, or (question, matching, not_matching) tuples.
fn dataset(data: &Bound<'_, PyAny>, skip_invalid: bool) -> PyResult<(Dataset, Option<PathBuf>)> {
    if let Ok(path) = data.extract::<PathBuf>() {
        let d = bipo::data::load_pairs_with(&path, skip_invalid).map_err(err)?;
        return Ok((d, Some(path)));
    }
    let rows: Vec<(String, String, String)> = data.extract().map_err(|_| {
        err("data: give a file path or a list of {question, matching, not_matching} pairs")
    })?;
    let pairs = rows
        .into_iter()
        .map(|(question, matching, not_matching)| PreferencePair {
            question,
            matching,
            not_matching,
        })
        .collect();
    let mut d = Dataset::from_pairs(pairs).map_err(|e| err_in("data", e))?;
    d.format = "python";
    Ok((d, None))
}

/// Trains a BiPO vector into the run folder `out` (as `bipo train`: run.json,
/// metrics.jsonl, checkpoints, vector.safetensors). `settings` is a JSON object of
/// [`TrainConfig`] keys; `test` optional held-out pairs (evaluated after every epoch).
/// `progress(dict)` is called after every step (`kind` "step") and epoch (`kind`
/// "epoch"); an exception it raises, or Ctrl-C, stops the run after the current step
/// with a checkpoint written (resume with `resume=True`) and is raised again. Returns
/// (layers, meta, steps).
#[pyfunction]
#[pyo3(signature = (model, data, out, settings, resume=false, force=false, progress=None, skip_invalid=false, test=None))]
#[allow(clippy::too_many_arguments)]
pub fn train<'py>(
    py: Python<'py>,
    model: &NativeModel,
    data: &Bound<'py, PyAny>,
    out: PathBuf,
    settings: &str,
    resume: bool,
    force: bool,
    progress: Option<Py<PyAny>>,
    skip_invalid: bool,
    test: Option<&Bound<'py, PyAny>>,
) -> PyResult<(BTreeMap<usize, Bound<'py, PyBytes>>, String, usize)> {
    let lm = &model.lm;
    let (train_set, data_path) = dataset(data, skip_invalid)?;
    let test_set = test.map(|t| dataset(t, skip_invalid)).transpose()?;
    let cfg = config(settings, lm.model.num_layers())?;
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    inputs.extend(data_path.as_deref().map(|p| ("data", p)));
    inputs.extend(
        test_set
            .as_ref()
            .and_then(|t| t.1.as_deref())
            .map(|p| ("test", p)),
    );
    bipo::util::fs::check_output_dir(&inputs, "out", &out, writes_run_file).map_err(err)?;
    let start = match (resume, force) {
        (true, _) => Start::Resume,
        (_, true) => Start::Replace,
        _ => Start::Fresh,
    };
    template(lm, cfg.template.as_deref())?;
    let python: &Path = "<python>".as_ref();
    let mut job = TrainJob::new(
        lm,
        cfg,
        &train_set,
        data_path.as_deref().unwrap_or(python),
        &out,
    );
    job.test = test_set
        .as_ref()
        .map(|(t, p)| (t, p.as_deref().unwrap_or(python)));
    job.start = start;
    let stop = AtomicBool::new(false);
    let callback = Callback::new(progress, &stop);
    let mut total = 0;
    let done = interruptible(py, &stop, Some(&callback), || {
        pipeline::run(&job, &stop, |p| match p {
            Progress::Preparing { .. } => {}
            Progress::Training { total: t, .. } => total = t,
            Progress::Event(ev) => {
                callback.report(|d| match ev {
                    Event::Step(m) => {
                        d.set_item("kind", "step")?;
                        d.set_item("step", m.step + 1)?;
                        d.set_item("total", total)?;
                        d.set_item("epoch", m.epoch + 1)?;
                        d.set_item("loss", m.loss)?;
                        d.set_item("accuracy", m.accuracy)?;
                        d.set_item("vector_norm", m.vector_norm)?;
                        d.set_item("lr", m.lr)
                    }
                    Event::Epoch(e) => {
                        d.set_item("kind", "epoch")?;
                        d.set_item("epoch", e.epoch + 1)?;
                        d.set_item("step", e.step)?;
                        d.set_item("total", total)?;
                        d.set_item("train_loss", e.train_loss)?;
                        d.set_item("test_loss_plus", e.test_loss_plus)?;
                        d.set_item("test_loss_minus", e.test_loss_minus)?;
                        d.set_item("test_margin_plus", e.test_margin_plus)
                    }
                });
            }
        })
    })?;
    let (layers, meta) = from_vector(py, &done.outcome.vector)?;
    Ok((layers, meta, done.outcome.steps))
}

/// The run's settings: the given keys over the defaults, the layer defaulting to the
/// model's middle-ish layer as `bipo train` chooses it.
fn config(settings: &str, n_layers: usize) -> PyResult<TrainConfig> {
    let mut given: serde_json::Value = serde_json::from_str(settings).map_err(err)?;
    let layer_given = given.get("layer").is_some_and(|l| !l.is_null());
    if !layer_given {
        if let Some(o) = given.as_object_mut() {
            o.remove("layer");
        }
    }
    let mut cfg: TrainConfig = serde_json::from_value(given)
        .map_err(|e| InvalidValueError::new_err(format!("training settings: {e}")))?;
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
    Ok(cfg)
}
