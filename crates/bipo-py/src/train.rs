//! `train`: a BiPO run, exactly as `bipo train` does it (same run folder, same vector).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bipo::data::{Dataset, PreferencePair};
use bipo::run::{DataRecord, ModelRecord, RunRecord};
use bipo::train::bipo::{tokenize, Prepared};
use bipo::train::rundir::{writes_run_file, RunDir, Start};
use bipo::train::{Event, TrainConfig, Trainer};
use bipo::vector::{SteeringVector, VectorMeta};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::model::NativeModel;
use crate::{err, from_vector, interruptible, template, Callback};

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
    let template = template(lm, cfg.template.as_deref())?;
    let python: &Path = "<python>".as_ref();
    let stop = AtomicBool::new(false);
    let callback = Callback::new(progress, &stop);
    let (v, steps) = interruptible(py, &stop, Some(&callback), || {
        let run = RunDir::open(&out, start)?;
        let record = RunRecord::new(
            "bipo",
            &cfg,
            ModelRecord::of(lm)?,
            DataRecord::of(data_path.as_deref().unwrap_or(python), &train_set),
            test_set
                .as_ref()
                .map(|(t, p)| DataRecord::of(p.as_deref().unwrap_or(python), t)),
        );
        if !resume {
            record.write(run.path())?;
        }
        let prep = |pairs: &[PreferencePair]| -> bipo::Result<Prepared> {
            let ex = tokenize(pairs, &lm.tokenizer, &template, cfg.system.as_deref())?;
            let mut p = Prepared::new(&lm.model, cfg.layer, ex, cfg.cache_mb << 20, |_, _| {})?;
            p.set_positions(cfg.positions);
            Ok(p)
        };
        let train_p = prep(&train_set.pairs)?;
        let test_p = test_set.as_ref().map(|(t, _)| prep(&t.pairs)).transpose()?;
        let per_epoch = cfg.steps_per_epoch(train_p.len());
        let total = cfg
            .max_steps
            .map_or(per_epoch * cfg.epochs, |m| m.min(per_epoch * cfg.epochs));
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
            train: &train_p,
            test: test_p.as_ref(),
            out: &run,
            meta,
            inputs: record.inputs(),
            checkpoint_every: bipo::train::trainer::DEFAULT_CHECKPOINT_EVERY,
        };
        let outcome = trainer.run(resume, &stop, |ev| {
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
        })?;
        let v: SteeringVector =
            bipo::io::read_vector(&out.join(bipo::train::trainer::VECTOR_FILE))?;
        Ok((v, outcome.steps))
    })?;
    let (layers, meta) = from_vector(py, &v)?;
    Ok((layers, meta, steps))
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
    let mut cfg: TrainConfig =
        serde_json::from_value(given).map_err(|e| err(format!("training settings: {e}")))?;
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
