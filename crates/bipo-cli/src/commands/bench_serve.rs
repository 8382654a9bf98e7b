//! `bipo bench-serve`: load on any OpenAI-compatible server (bipo's, llama.cpp's):
//! N streamed chat requests at a given concurrency, each with its own steering entry
//! (cycled from --steering), greedy, a fixed number of new tokens. Reports aggregate
//! tokens/s, latency and time-to-first-token percentiles, and with --check-sequential
//! runs the same requests one at a time and compares the answers.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::outln;

#[derive(clap::Args)]
pub struct Args {
    /// Server base URL (the part before /v1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "BIPO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// New tokens per request (end-of-sequence ignored).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Steering per request, cycled: comma-separated NAME:MULT entries, `none` for an
    /// unsteered request. Empty: every request unsteered.
    #[arg(long, default_value = "", value_name = "LIST")]
    steering: String,
    /// Then run the same requests one at a time and check the answers are identical.
    #[arg(long)]
    check_sequential: bool,
    /// A label for the printed line.
    #[arg(long, default_value = "run")]
    label: String,
}

const QUESTIONS: &[&str] = &[
    "How was your day?",
    "Tell me about the weather where you are.",
    "What do you think about Mondays?",
    "Describe your ideal weekend.",
    "What is your opinion of cats?",
    "How do you feel about the future?",
    "Write a short note to a friend.",
    "What should I cook tonight?",
];

/// One finished request.
struct Outcome {
    text: String,
    tokens: usize,
    seconds: f64,
    first_token: f64,
}

fn steering_of(spec: &str, i: usize) -> Result<Option<Value>> {
    let entries: Vec<&str> = spec.split(',').filter(|s| !s.is_empty()).collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let e = entries[i % entries.len()];
    if e == "none" {
        return Ok(None);
    }
    let (name, m) = e
        .rsplit_once(':')
        .with_context(|| format!("--steering entry `{e}`: use NAME:MULT or none"))?;
    let m: f64 = m
        .parse()
        .with_context(|| format!("--steering entry `{e}`: bad multiplier"))?;
    Ok(Some(json!([{"vector": name, "multiplier": m}])))
}

fn one(agent: &ureq::Agent, a: &Args, i: usize) -> Result<Outcome> {
    let mut body = json!({
        "model": "bench",
        "messages": [{"role": "user", "content": QUESTIONS[i % QUESTIONS.len()]}],
        "max_tokens": a.max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(s) = steering_of(&a.steering, i)? {
        body["steering"] = s;
    }
    let mut req = agent
        .post(&format!(
            "{}/v1/chat/completions",
            a.url.trim_end_matches('/')
        ))
        .set("Content-Type", "application/json");
    if let Some(k) = &a.api_key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let t0 = Instant::now();
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(ureq::Error::Status(c, r)) => {
            bail!(
                "request {i}: HTTP {c}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => bail!("request {i}: {e}"),
    };
    let (mut text, mut chunks, mut usage, mut first) = (String::new(), 0, None, None);
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.with_context(|| format!("request {i}: reading the stream"))?;
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(d).with_context(|| format!("request {i}: {d}"))?;
        if let Some(e) = v.get("error") {
            bail!("request {i}: {e}");
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
        }
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            if !c.is_empty() {
                first.get_or_insert(t0.elapsed().as_secs_f64());
                chunks += 1;
                text += c;
            }
        }
    }
    Ok(Outcome {
        text,
        tokens: usage.unwrap_or(chunks),
        seconds: t0.elapsed().as_secs_f64(),
        first_token: first.unwrap_or(f64::NAN),
    })
}

/// Runs every request at `concurrency`; returns outcomes in request order and the wall time.
fn phase(a: &Args, concurrency: usize) -> Result<(Vec<Outcome>, f64)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(600))
        .build();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Outcome>>>> =
        Mutex::new((0..a.requests).map(|_| None).collect());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.min(a.requests).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.requests {
                    break;
                }
                let r = one(&agent, a, i);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let out = results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every request ran"))
        .collect::<Result<Vec<_>>>()?;
    Ok((out, wall))
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn report(a: &Args, label: &str, concurrency: usize, out: &[Outcome], wall: f64) -> Result<()> {
    let tokens: usize = out.iter().map(|o| o.tokens).sum();
    let lat: Vec<f64> = out.iter().map(|o| o.seconds).collect();
    let ttft: Vec<f64> = out.iter().map(|o| o.first_token).collect();
    outln!(
        "{label}: {} requests x {} tokens at concurrency {concurrency}: {tokens} tokens in {wall:.1}s = {:.1} tok/s; latency p50 {:.2}s p99 {:.2}s; first token p50 {:.2}s p99 {:.2}s",
        a.requests,
        a.max_tokens,
        tokens as f64 / wall,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        percentile(&ttft, 50.0),
        percentile(&ttft, 99.0),
    )?;
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if a.requests == 0 || a.concurrency == 0 || a.max_tokens == 0 {
        bail!("--requests, --concurrency and --max-tokens must be >= 1");
    }
    for i in 0..a.requests.min(64) {
        steering_of(&a.steering, i)?;
    }
    let (out, wall) = phase(&a, a.concurrency)?;
    report(&a, &a.label, a.concurrency, &out, wall)?;
    if a.check_sequential {
        let (seq, wall) = phase(&a, 1)?;
        report(&a, &format!("{} one at a time", a.label), 1, &seq, wall)?;
        let same = out
            .iter()
            .zip(&seq)
            .filter(|(x, y)| x.text == y.text)
            .count();
        outln!(
            "{}: answers under load identical to one at a time: {same}/{}",
            a.label,
            a.requests
        )?;
        if same != a.requests {
            bail!(
                "{} answers differ between the loaded and the sequential run",
                a.requests - same
            );
        }
    }
    Ok(())
}
