//! `bipo serve`: an OpenAI-compatible HTTP server where every request brings its own
//! steering (vectors, multipliers, layers, positions), and requests with different
//! steering decode together in one batch ([`bipo::engine`]).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE
//! streaming), `GET /v1/models`, `GET|POST /v1/steering/vectors`,
//! `DELETE /v1/steering/vectors/{name}`, `GET /health`, `GET /metrics`.
//!
//! The library crate `bipo` stays free of async and HTTP: this crate is the only one
//! that knows tokio and axum.

mod api;
mod completions;
mod error;
mod metrics;
mod vectors;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use bipo::engine::{Engine, EngineConfig};
use bipo::load::LoadedModel;
use bipo::vector::SteeringVector;

pub use error::ApiError;

/// Server settings (the flags of `bipo serve`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 = any free port (tests).
    pub port: u16,
    /// Bearer key every request but `/health` must carry; None = no authentication.
    pub api_key: Option<String>,
    /// The model id reported by `/v1/models` and in responses.
    pub model_id: String,
    pub engine: EngineConfig,
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Largest uploaded vector file (413 above).
    pub max_vector_bytes: usize,
    /// Longest prompt in tokens (400 above).
    pub max_prompt_tokens: usize,
    /// Most new tokens one request may ask for (400 above); also the default.
    pub max_new_tokens: usize,
    /// Largest |multiplier| a request may use (400 above).
    pub max_multiplier: f32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            model_id: "bipo".into(),
            engine: EngineConfig::default(),
            max_body_bytes: 1 << 20,
            max_vector_bytes: 64 << 20,
            max_prompt_tokens: 4096,
            max_new_tokens: 1024,
            max_multiplier: 100.0,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub lm: Arc<LoadedModel>,
    pub cfg: ServerConfig,
    pub engine: Engine,
    pub vectors: vectors::Registry,
    pub metrics: metrics::Metrics,
    pub started: u64,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn router(state: Arc<AppState>) -> Router {
    let body = DefaultBodyLimit::max(state.cfg.max_body_bytes);
    let upload = DefaultBodyLimit::max(state.cfg.max_vector_bytes);
    let api = Router::new()
        .route("/v1/chat/completions", post(completions::chat).layer(body))
        .route("/v1/completions", post(completions::text).layer(body))
        .route("/v1/models", get(models))
        .route(
            "/v1/steering/vectors",
            get(vectors::list).post(vectors::upload).layer(upload),
        )
        .route("/v1/steering/vectors/{name}", delete(vectors::remove))
        .route("/metrics", get(metrics::export))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // A bug in a handler answers 500 instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error while handling the request").into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model": s.cfg.model_id,
        "queued": s.engine.stats().queued.load(std::sync::atomic::Ordering::Relaxed),
        "active": s.engine.stats().active.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": s.cfg.model_id,
            "object": "model",
            "created": s.started,
            "owned_by": "bipo",
            "family": s.lm.model.info.family,
            "layers": s.lm.model.num_layers(),
            "hidden_size": s.lm.model.hidden_size(),
            "context_length": s.lm.model.max_context(),
        }],
    }))
    .into_response()
}

/// Equal-length-independent, data-independent comparison of two secrets.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.cfg.api_key {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Counts every response by path and status.
async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = metrics::endpoint_label(req.uri().path());
    let resp = next.run(req).await;
    s.metrics.count_request(path, resp.status().as_u16());
    resp
}

/// A server running on a background thread (tests, benchmarks).
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, stops the engine.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Builds the shared state: engine started, startup vectors checked against the model.
fn state(
    lm: Arc<LoadedModel>,
    cfg: ServerConfig,
    vectors: Vec<(String, SteeringVector)>,
) -> bipo::Result<Arc<AppState>> {
    let registry = vectors::Registry::new(&lm);
    for (name, v) in vectors {
        registry.insert(&name, v, false)?;
    }
    Ok(Arc::new(AppState {
        engine: Engine::start(lm.clone(), cfg.engine.clone()),
        lm,
        cfg,
        vectors: registry,
        metrics: metrics::Metrics::default(),
        started: unix_now(),
    }))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bipo-http")
        .enable_all()
        .build()
}

/// Starts a server on a background thread and returns once it listens.
pub fn spawn(
    lm: Arc<LoadedModel>,
    cfg: ServerConfig,
    vectors: Vec<(String, SteeringVector)>,
) -> bipo::Result<RunningServer> {
    let state = state(lm, cfg.clone(), vectors)?;
    let rt = runtime().map_err(|e| bipo::Error::io("the HTTP runtime", e))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)))
        .map_err(|e| bipo::Error::io(format!("{}:{}", cfg.host, cfg.port), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| bipo::Error::io("the listening socket", e))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = axum::serve(listener, router(state).into_make_service())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    Ok(RunningServer {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests and returns.
/// `on_listen` is told the address once the socket is bound.
pub fn run(
    lm: Arc<LoadedModel>,
    cfg: ServerConfig,
    vectors: Vec<(String, SteeringVector)>,
    on_listen: impl FnOnce(SocketAddr),
) -> bipo::Result<()> {
    let server = spawn(lm, cfg, vectors)?;
    on_listen(server.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| bipo::Error::io("the signal runtime", e))?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| bipo::Error::io("SIGTERM handler", e))?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        Ok::<(), bipo::Error>(())
    })?;
    server.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_equal_only_when_equal() {
        use super::constant_time_eq as eq;
        assert!(eq(b"secret", b"secret"));
        assert!(!eq(b"secret", b"secreT"));
        assert!(!eq(b"secret", b"secret2"));
        assert!(!eq(b"", b"x"));
        assert!(eq(b"", b""));
    }
}
