//! Measuring and baselines: `baseline` (as `bipo baseline`) and `evaluate` (as `bipo
//! eval`: the library's evaluation pipeline).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bipo::eval::pipeline::{self, EvalConfig};
use bipo::vector::VectorMeta;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::model::NativeModel;
use crate::{
    err, err_in, from_vector, interruptible, off_gil, to_vector, Callback, InvalidValueError,
    RawLayers,
};

/// A baseline vector from pairs: "caa" (mean difference), "pca" (first principal
/// component of the differences) or "mean-centring" (mean matching activation minus the
/// mean over bipo's neutral text), at `layers`. Returns (layers, meta).
#[pyfunction]
#[pyo3(signature = (model, data, method, layers, read_at="mean", system=None, template=None, skip_invalid=false))]
#[allow(clippy::too_many_arguments)]
pub fn baseline<'py>(
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
    let template = crate::template(&lm, template)?;
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
            model: Some(lm.identity()?),
            method: Some(if method == "pca" { "pca-diff" } else { method }.into()),
            extra: [("data_sha256".to_string(), sha)].into(),
        };
        let d = baselines::differences_of(&reads);
        Ok(match method {
            "caa" => baselines::caa(&d, meta),
            "pca" => baselines::pca_diff(&d, meta),
            _ => {
                let ids = bipo::eval::damage::neutral_ids(&lm.tokenizer, None)?;
                let ls: Vec<usize> = reads.keys().copied().collect();
                let means = baselines::neutral_means(&lm.model, &ids, &ls)?;
                baselines::mean_centring(&reads, &means, meta)?
            }
        })
    })?;
    from_vector(py, &v)
}

/// Evaluates vectors (layers, metadata JSON) as `bipo eval` does, with `config` a JSON
/// object of [`EvalConfig`] keys and `judge_key` the judge's API key. With `out` the
/// report, plots and answers are written there (replacing an earlier report, as `bipo
/// eval` does; never an input). `progress(dict)` gets `stage`, `done`, `total`; Ctrl-C or an exception it
/// raises stops the evaluation. Returns (report JSON, answers JSON, report as Markdown).
#[pyfunction]
#[pyo3(signature = (model, vectors, config, out=None, judge_key=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    model: &NativeModel,
    vectors: Vec<(RawLayers, String)>,
    config: &str,
    out: Option<PathBuf>,
    judge_key: Option<String>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, String, String)> {
    let lm = &model.lm;
    let mut cfg: EvalConfig = serde_json::from_str(config)
        .map_err(|e| InvalidValueError::new_err(format!("evaluation settings: {e}")))?;
    cfg.check().map_err(err)?;
    let vectors = vectors
        .into_iter()
        .enumerate()
        .map(|(i, (layers, meta))| {
            let v = to_vector(layers, &meta)?;
            v.check_fits(lm.model.hidden_size(), lm.model.num_layers())
                .map_err(|e| err_in(format_args!("vectors[{i}]"), e))?;
            Ok(v)
        })
        .collect::<PyResult<Vec<_>>>()?;
    if let Some(dir) = &out {
        let mut inputs: Vec<(&str, &Path)> =
            cfg.data.iter().map(|d| ("data", d.as_path())).collect();
        inputs.extend(cfg.neutral.as_deref().map(|p| ("neutral", p)));
        bipo::util::fs::check_output_dir(&inputs, "out", dir, pipeline::writes_eval_file)
            .map_err(err)?;
    }
    if let Some(j) = cfg.judge.as_mut() {
        j.api_key = judge_key.or_else(|| std::env::var("OPENAI_API_KEY").ok());
        j.cache_dir = out.as_ref().map(|o| o.join("judge-cache"));
    }
    let stop = AtomicBool::new(false);
    let callback = Callback::new(progress, &stop);
    let result = interruptible(py, &stop, Some(&callback), || {
        let r = pipeline::run(lm, &vectors, &cfg, Vec::new(), |stage, done, total| {
            let go = callback.report(|d| {
                d.set_item("stage", stage)?;
                d.set_item("done", done)?;
                d.set_item("total", total)
            });
            if go {
                Ok(())
            } else {
                Err(bipo::Error::Interrupted)
            }
        })?;
        if let Some(dir) = &out {
            r.write(dir)?;
        }
        Ok(r)
    })?;
    Ok((
        serde_json::to_string(&result.report).map_err(err)?,
        serde_json::to_string(&result.answers).map_err(err)?,
        result.report.markdown(),
    ))
}
