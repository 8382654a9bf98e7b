//! Hugging Face Hub ids: resolved from the local cache (`HF_HOME`, default
//! `~/.cache/huggingface/hub`), or downloaded when built with `hub-download`.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Files a model folder needs (weights are added from the index when sharded).
const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL_FILES: &[&str] = &["tokenizer_config.json", "generation_config.json"];

fn cache() -> hf_hub::Cache {
    hf_hub::Cache::from_env()
}

/// Resolves a Hub id (`owner/name`, optionally `owner/name@revision`) to a local folder.
pub fn resolve(id: &str) -> Result<PathBuf> {
    let (name, revision) = match id.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (id, "main".to_string()),
    };
    let repo = hf_hub::Repo::with_revision(name.to_string(), hf_hub::RepoType::Model, revision);
    if let Some(p) = cache().repo(repo.clone()).get("config.json") {
        let folder = p.parent().map(PathBuf::from).unwrap_or_default();
        let has_weights = folder.join("model.safetensors").exists()
            || folder.join("model.safetensors.index.json").exists();
        if has_weights && REQUIRED_FILES.iter().all(|f| folder.join(f).exists()) {
            return Ok(folder);
        }
    }
    download(repo, id)
}

#[cfg(feature = "hub-download")]
fn download(repo: hf_hub::Repo, id: &str) -> Result<PathBuf> {
    let err = |e: hf_hub::api::sync::ApiError| Error::Hub(format!("{id}: {e}"));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(err)?;
    let r = api.repo(repo);
    let mut folder = PathBuf::new();
    for f in REQUIRED_FILES {
        folder = r
            .get(f)
            .map_err(err)?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
    }
    for f in OPTIONAL_FILES {
        let _ = r.get(f);
    }
    match r.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = r.get("model.safetensors.index.json").map_err(err)?;
            let text = crate::util::read_text(&index)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::bad_file(&index, e.to_string()))?;
            let mut shards: Vec<&str> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                r.get(s).map_err(err)?;
            }
        }
    }
    Ok(folder)
}

#[cfg(not(feature = "hub-download"))]
fn download(_repo: hf_hub::Repo, id: &str) -> Result<PathBuf> {
    let _ = OPTIONAL_FILES;
    Err(Error::Hub(format!(
        "`{id}` is not a file or folder here and is not in the Hugging Face cache \
         ({}); this build cannot download (enable the `hub-download` feature)",
        cache().path().display()
    )))
}
