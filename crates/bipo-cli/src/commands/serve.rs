//! `bipo serve`

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::args::ModelArgs;
use bipo::engine::EngineConfig;
use bipo_server::ServerConfig;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A steering vector requests may name: NAME=FILE (or FILE, named by its stem);
    /// repeat for several. More can be loaded while running (POST /v1/steering/vectors).
    #[arg(long = "vector", short = 'v', value_name = "NAME=FILE")]
    vectors: Vec<String>,
    /// Address to listen on; the default serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "BIPO_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Model id reported by /v1/models and in responses (default: the file's stem).
    #[arg(long, value_name = "ID")]
    model_id: Option<String>,
    /// Sequences decoding together in one batch at most.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_batch: usize,
    /// Requests waiting for a batch slot at most; more get HTTP 429.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_queue: usize,
    /// Prompt tokens prefilled per step at most, so long prompts do not stall decoding.
    #[arg(long, default_value_t = 256, value_name = "N")]
    prefill_chunk: usize,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20, value_name = "N")]
    max_body_bytes: usize,
    /// Largest uploaded vector file in bytes (413 above).
    #[arg(long, default_value_t = 64 << 20, value_name = "N")]
    max_vector_bytes: usize,
    /// Longest prompt in tokens (400 above).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_prompt_tokens: usize,
    /// Most new tokens per request (400 above); also the default when a request gives none.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_new_tokens: usize,
    /// Largest |multiplier| a request may use (400 above).
    #[arg(long, default_value_t = 100.0, value_name = "M")]
    max_multiplier: f32,
}

fn parse_vector(spec: &str) -> Result<(String, std::path::PathBuf)> {
    let (name, path) = match spec.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => (n.to_string(), p.into()),
        _ => {
            let p = std::path::PathBuf::from(spec);
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .with_context(|| format!("--vector {spec}: give NAME=FILE"))?;
            (stem, p)
        }
    };
    Ok((name, path))
}

pub fn run(a: Args) -> Result<()> {
    if !(a.max_multiplier.is_finite() && a.max_multiplier > 0.0) {
        anyhow::bail!(
            "invalid --max-multiplier {} (must be > 0)",
            a.max_multiplier
        );
    }
    for (flag, n) in [
        ("--max-batch", a.max_batch),
        ("--max-queue", a.max_queue),
        ("--prefill-chunk", a.prefill_chunk),
        ("--max-new-tokens", a.max_new_tokens),
        ("--max-prompt-tokens", a.max_prompt_tokens),
    ] {
        if n == 0 {
            anyhow::bail!("invalid {flag} 0 (must be >= 1)");
        }
    }
    if a.api_key.as_deref() == Some("") {
        anyhow::bail!("invalid --api-key: it is empty");
    }
    let mut vectors = Vec::new();
    let mut paths = Vec::new();
    for spec in &a.vectors {
        let (name, path) = parse_vector(spec)?;
        let v = bipo::io::read_vector(&path)?;
        if vectors.iter().any(|(n, _)| n == &name) {
            anyhow::bail!("--vector {spec}: the name `{name}` is given twice");
        }
        vectors.push((name, v));
        paths.push(path);
    }
    let lm = a.model.load()?;
    for ((name, v), path) in vectors.iter().zip(&paths) {
        crate::args::check_vector(v, path, &lm).with_context(|| format!("vector `{name}`"))?;
    }
    let model_id = a.model_id.clone().unwrap_or_else(|| {
        lm.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bipo".into())
    });
    let cfg = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        model_id,
        engine: EngineConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            prefill_chunk: a.prefill_chunk,
        },
        max_body_bytes: a.max_body_bytes,
        max_vector_bytes: a.max_vector_bytes,
        max_prompt_tokens: a.max_prompt_tokens,
        max_new_tokens: a.max_new_tokens,
        max_multiplier: a.max_multiplier,
    };
    let names: Vec<String> = vectors.iter().map(|(n, _)| n.clone()).collect();
    let auth = if cfg.api_key.is_some() {
        "API key required"
    } else {
        "no API key"
    };
    bipo_server::run(Arc::new(lm), cfg.clone(), vectors, |addr| {
        crate::note!(
            "serving {} on http://{addr} ({auth}; vectors: {}); Ctrl-C or SIGTERM stops",
            cfg.model_id,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    })?;
    crate::note!("stopped");
    Ok(())
}
