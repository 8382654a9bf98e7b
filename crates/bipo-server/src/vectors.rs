//! The steering-vector registry and its endpoints: list, upload (hot load), delete.
//!
//! A request copies the deltas of the vectors it names when it is admitted, so
//! replacing or deleting a vector never changes a request already running.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bipo::load::LoadedModel;
use bipo::vector::SteeringVector;

use crate::{ApiError, AppState};

/// Named vectors, each checked against the served model.
pub struct Registry {
    vectors: RwLock<BTreeMap<String, Arc<SteeringVector>>>,
    hidden: usize,
    layers: usize,
}

/// A vector name: 1-64 of `A-Za-z0-9._-`.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "name",
            format!("vector name `{name}`: use 1-64 letters, digits, `.`, `_` or `-`"),
        ))
    }
}

impl Registry {
    pub fn new(lm: &LoadedModel) -> Self {
        Self {
            vectors: RwLock::default(),
            hidden: lm.model.hidden_size(),
            layers: lm.model.num_layers(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<SteeringVector>>> {
        self.vectors.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<SteeringVector>>> {
        self.vectors.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn get(&self, name: &str) -> Option<Arc<SteeringVector>> {
        self.read().get(name).cloned()
    }

    /// Adds a vector after checking it fits the model; an existing name is refused
    /// unless `replace`.
    pub fn insert(&self, name: &str, v: SteeringVector, replace: bool) -> bipo::Result<bool> {
        v.check_fits(self.hidden, self.layers)
            .map_err(|e| bipo::Error::invalid(format!("vector `{name}`"), e.to_string()))?;
        let mut map = self.write();
        if map.contains_key(name) && !replace {
            return Err(bipo::Error::invalid(
                format!("vector `{name}`"),
                "a vector of this name is loaded (pass replace=true to replace it)",
            ));
        }
        Ok(map.insert(name.to_string(), Arc::new(v)).is_some())
    }

    pub fn remove(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    fn describe(name: &str, v: &SteeringVector) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "object": "steering_vector",
            "layers": v.layers.keys().collect::<Vec<_>>(),
            "norms": v.norms().iter().map(|(l, n)| (l.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "method": v.meta.method,
            "model": v.meta.model,
            "source_name": v.meta.name,
            "metadata": v.meta.extra,
        })
    }
}

pub async fn list(State(s): State<Arc<AppState>>) -> Response {
    let data: Vec<_> = s
        .vectors
        .read()
        .iter()
        .map(|(n, v)| Registry::describe(n, v))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct UploadQuery {
    name: Option<String>,
    #[serde(default)]
    replace: bool,
}

/// Parses vector file bytes (safetensors or llama.cpp GGUF, by content).
fn parse_vector(bytes: &[u8], name: &str) -> Result<SteeringVector, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad("file", "the vector file is empty"));
    }
    let dir = tempfile::tempdir().map_err(|e| ApiError::internal(format!("temp folder: {e}")))?;
    let ext = if bytes.starts_with(b"GGUF") {
        "gguf"
    } else {
        "safetensors"
    };
    let path = dir.path().join(format!("upload.{ext}"));
    std::fs::write(&path, bytes).map_err(|e| ApiError::internal(format!("temp file: {e}")))?;
    let mut v = bipo::io::read_vector(&path).map_err(|e| {
        ApiError::bad(
            "file",
            format!("not a steering-vector file (safetensors or llama.cpp GGUF): {e}")
                .replace(&path.display().to_string(), "the upload"),
        )
    })?;
    v.meta.name = name.to_string();
    Ok(v)
}

/// `POST /v1/steering/vectors?name=NAME[&replace=true]` with the file as the raw body,
/// or a multipart form with a `file` part (and optionally a `name` part).
pub async fn upload(
    State(s): State<Arc<AppState>>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let multipart = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = |e: &dyn std::fmt::Display| {
        let m = e.to_string();
        if m.contains("length limit") || m.contains("too large") {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the vector file exceeds {} bytes", s.cfg.max_vector_bytes),
            )
        } else {
            ApiError::bad_body(format!("reading the upload: {m}"))
        }
    };
    let mut name = q.name;
    let mut file_name = None::<String>;
    let bytes = {
        if multipart {
            let mut mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_body(e.body_text()))?;
            let mut file = None;
            let mut form_name = None;
            while let Some(field) = mp.next_field().await.map_err(|e| too_large(&e))? {
                match field.name() {
                    Some("name") => {
                        form_name = Some(field.text().await.map_err(|e| too_large(&e))?)
                    }
                    Some("file") => {
                        file_name = field.file_name().map(str::to_string);
                        file = Some(field.bytes().await.map_err(|e| too_large(&e))?);
                    }
                    _ => {}
                }
            }
            if form_name.is_some() {
                name = form_name;
            }
            file.ok_or_else(|| ApiError::bad("file", "the form has no `file` part"))?
        } else {
            Bytes::from_request(req, &())
                .await
                .map_err(|e| too_large(&e.body_text()))?
        }
    };
    if name.is_none() {
        name = file_name.as_deref().and_then(|f| {
            std::path::Path::new(f)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        });
    }
    let name = name.ok_or_else(|| ApiError::bad("name", "give the vector a name (?name=NAME)"))?;
    check_name(&name)?;
    let v = parse_vector(&bytes, &name)?;
    let replaced = s.vectors.insert(&name, v, q.replace).map_err(|e| {
        let m = e.to_string();
        if m.contains("replace=true") {
            ApiError::new(StatusCode::CONFLICT, m)
        } else {
            ApiError::bad("file", m)
        }
    })?;
    let v = s.vectors.get(&name).expect("just inserted");
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(Registry::describe(&name, &v))).into_response())
}

pub async fn remove(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if s.vectors.remove(&name) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "no steering vector named `{name}`"
        )))
    }
}
