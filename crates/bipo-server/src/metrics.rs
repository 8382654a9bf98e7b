//! `GET /metrics`: Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bipo::engine::EngineStats;

use crate::AppState;

/// Upper bounds (seconds) of the latency histograms.
const SECONDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket of SECONDS, then +Inf.
    counts: [u64; SECONDS.len() + 1],
    sum: f64,
    n: u64,
}

impl Histogram {
    fn observe(&mut self, x: f64) {
        let i = SECONDS
            .iter()
            .position(|&b| x <= b)
            .unwrap_or(SECONDS.len());
        self.counts[i] += 1;
        self.sum += x;
        self.n += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = SECONDS.get(i).map_or("+Inf".into(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {acc}");
        }
        let l = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {}", self.n);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    first_token: Histogram,
    steered: u64,
}

/// Request counters and latency histograms.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Inner>);

/// The label for a request path (a fixed set, so clients cannot grow the label space).
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/health" => "health",
        "/metrics" => "metrics",
        p if p.starts_with("/v1/steering/vectors") => "steering_vectors",
        _ => "other",
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count_request(&self, endpoint: &'static str, status: u16) {
        *self.lock().requests.entry((endpoint, status)).or_default() += 1;
    }

    /// One finished generation: its total latency and time to first token.
    pub fn generation(&self, endpoint: &'static str, seconds: f64, ttft: f64, steered: bool) {
        let mut m = self.lock();
        m.latency.entry(endpoint).or_default().observe(seconds);
        m.first_token.observe(ttft);
        m.steered += steered as u64;
    }

    fn render(&self, e: &EngineStats, vectors: usize) -> String {
        let m = self.lock();
        let mut o = String::new();
        let g = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        g(
            &mut o,
            "bipo_requests_total",
            "counter",
            "HTTP requests by endpoint and status.",
        );
        for ((ep, st), n) in &m.requests {
            let _ = writeln!(
                o,
                "bipo_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}"
            );
        }
        g(
            &mut o,
            "bipo_steered_requests_total",
            "counter",
            "Generations that carried steering.",
        );
        let _ = writeln!(o, "bipo_steered_requests_total {}", m.steered);
        let load = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "bipo_prompt_tokens_total",
                "Prompt tokens admitted.",
                load(&e.prompt_tokens),
            ),
            (
                "bipo_generated_tokens_total",
                "Tokens generated.",
                load(&e.generated_tokens),
            ),
            (
                "bipo_decode_steps_total",
                "Engine steps (one forward pass each over the batch's sequences).",
                load(&e.decode_steps),
            ),
            (
                "bipo_decode_rows_total",
                "Sequences over all steps.",
                load(&e.decode_rows),
            ),
        ] {
            g(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        for (name, help, v) in [
            (
                "bipo_queue_depth",
                "Requests waiting for a batch slot.",
                e.queued.load(Ordering::Relaxed),
            ),
            (
                "bipo_active_sequences",
                "Sequences in the running batch.",
                e.active.load(Ordering::Relaxed),
            ),
            ("bipo_steering_vectors", "Vectors in the registry.", vectors),
        ] {
            g(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        g(
            &mut o,
            "bipo_engine_seconds_total",
            "counter",
            "Engine time by phase: prefill (forward passes that carry prompt tokens, generating rows riding along), decode (passes of generating rows only), sample (sampling and reporting).",
        );
        for (phase, us) in [
            ("prefill", &e.prefill_us),
            ("decode", &e.decode_us),
            ("sample", &e.sample_us),
        ] {
            let s = load(us) as f64 * 1e-6;
            let _ = writeln!(o, "bipo_engine_seconds_total{{phase=\"{phase}\"}} {s}");
        }
        g(
            &mut o,
            "bipo_batch_size",
            "histogram",
            "Sequences per step (generating rows and prompt chunks).",
        );
        let mut acc = 0;
        for (i, c) in e.batch_hist.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            let le = EngineStats::BATCH_BUCKETS
                .get(i)
                .map_or("+Inf".into(), |b| b.to_string());
            let _ = writeln!(o, "bipo_batch_size_bucket{{le=\"{le}\"}} {acc}");
        }
        let _ = writeln!(o, "bipo_batch_size_sum {}", load(&e.decode_rows));
        let _ = writeln!(o, "bipo_batch_size_count {}", load(&e.decode_steps));
        g(
            &mut o,
            "bipo_request_seconds",
            "histogram",
            "Generation latency, admission to last token.",
        );
        for (ep, h) in &m.latency {
            h.write(
                &mut o,
                "bipo_request_seconds",
                &format!("endpoint=\"{ep}\","),
            );
        }
        g(
            &mut o,
            "bipo_time_to_first_token_seconds",
            "histogram",
            "Admission to first token.",
        );
        m.first_token
            .write(&mut o, "bipo_time_to_first_token_seconds", "");
        o
    }
}

pub async fn export(State(s): State<Arc<AppState>>) -> Response {
    let text = s.metrics.render(s.engine.stats(), s.vectors.len());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
