//! `POST /v1/chat/completions` and `POST /v1/completions`: a request becomes an engine
//! job; its events become one JSON response or a stream of server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bipo::engine::{Event, Job, Sink, SubmitError, Summary};
use bipo::generate::{FinishReason, TokenEvent};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{parse, Endpoint, Prepared};
use crate::{unix_now, ApiError, AppState};

/// Engine events into a tokio channel; a dropped receiver (client gone) cancels the job.
struct ChanSink(UnboundedSender<Event>);

impl Sink for ChanSink {
    fn send(&mut self, ev: Event) -> bool {
        self.0.send(ev).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

pub async fn chat(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    handle(s, Endpoint::Chat, &body).await
}

pub async fn text(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    handle(s, Endpoint::Text, &body).await
}

/// What a response needs besides the events.
struct Ctx {
    s: Arc<AppState>,
    ep: Endpoint,
    id: String,
    created: u64,
    logprobs: Option<usize>,
    steering: Vec<Value>,
    include_usage: bool,
    /// Bytes of text streamed so far (completions' `text_offset`).
    streamed: std::sync::atomic::AtomicUsize,
}

async fn handle(s: Arc<AppState>, ep: Endpoint, body: &[u8]) -> Result<Response, ApiError> {
    let p: Prepared = parse(body)?.prepare(&s, ep)?;
    let (tx, rx) = unbounded_channel();
    let job = Job::new(p.ids, &p.entries, p.opts, Box::new(ChanSink(tx)));
    s.engine.submit(job).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the queue is full ({} waiting, --max-queue); retry later",
                s.cfg.engine.max_queue
            ),
        ),
        SubmitError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    })?;
    let prefix = if ep == Endpoint::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let ctx = Ctx {
        s,
        ep,
        id: format!("{prefix}-{:016x}", rand::random::<u64>()),
        created: unix_now(),
        logprobs: p.logprobs,
        steering: p.steering_echo,
        include_usage: p.include_usage,
        streamed: Default::default(),
    };
    if p.stream {
        Ok(stream_response(ctx, rx))
    } else {
        collect(ctx, rx).await
    }
}

fn failure(message: String, internal: bool) -> ApiError {
    if internal {
        ApiError::internal(message)
    } else {
        ApiError::bad_body(format!("generation failed: {message}"))
    }
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

impl Ctx {
    fn model(&self) -> &str {
        &self.s.cfg.model_id
    }

    fn token_str(&self, id: u32) -> String {
        self.s.lm.tokenizer.token_text(id).unwrap_or_default()
    }

    /// Chat logprobs of one token: `{token, logprob, bytes, top_logprobs}`.
    fn chat_logprob(&self, ev: &TokenEvent) -> Value {
        let entry = |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
        let mut e = entry(&ev.text, ev.logprob);
        e["top_logprobs"] = ev
            .top
            .iter()
            .map(|&(id, lp)| entry(&self.token_str(id), lp))
            .collect();
        e
    }

    /// Completions logprobs of tokens starting at text offset `offset`.
    fn text_logprobs(&self, evs: &[TokenEvent], mut offset: usize) -> Value {
        let mut tokens = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for ev in evs {
            tokens.push(ev.text.clone());
            lps.push(ev.logprob);
            let top: serde_json::Map<String, Value> = ev
                .top
                .iter()
                .map(|&(id, lp)| (self.token_str(id), json!(lp)))
                .collect();
            tops.push(Value::Object(top));
            offsets.push(offset);
            offset += ev.text_delta.len();
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    fn usage(sum: &Summary) -> Value {
        json!({
            "prompt_tokens": sum.prompt_tokens,
            "completion_tokens": sum.completion_tokens,
            "total_tokens": sum.prompt_tokens + sum.completion_tokens,
        })
    }

    fn record(&self, sum: &Summary) {
        self.s.metrics.generation(
            self.ep.label(),
            sum.total_seconds,
            sum.first_token_seconds,
            !self.steering.is_empty(),
        );
    }

    fn envelope(&self, object: &str, choices: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model(),
            "choices": choices,
        });
        if !self.steering.is_empty() {
            v["steering"] = json!(self.steering);
        }
        v
    }

    fn full(&self, evs: &[TokenEvent], sum: &Summary) -> Value {
        let finish = finish_str(sum.finish_reason);
        let choice = match self.ep {
            Endpoint::Chat => {
                let lp = self.logprobs.map(|_| {
                    json!({"content": evs.iter().map(|e| self.chat_logprob(e)).collect::<Vec<_>>()})
                });
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": sum.text},
                    "logprobs": lp,
                    "finish_reason": finish,
                })
            }
            Endpoint::Text => json!({
                "index": 0,
                "text": sum.text,
                "logprobs": self.logprobs.map(|_| self.text_logprobs(evs, 0)),
                "finish_reason": finish,
            }),
        };
        let object = match self.ep {
            Endpoint::Chat => "chat.completion",
            Endpoint::Text => "text_completion",
        };
        let mut v = self.envelope(object, json!([choice]));
        v["usage"] = Self::usage(sum);
        v
    }

    /// One streamed chunk holding `delta` (chat) or `text` (completions).
    fn chunk(&self, text: Option<&str>, ev: Option<&TokenEvent>, finish: Option<&str>) -> Value {
        let choice = match self.ep {
            Endpoint::Chat => json!({
                "index": 0,
                "delta": match text { Some(t) => json!({"content": t}), None => json!({}) },
                "logprobs": ev.filter(|_| self.logprobs.is_some())
                    .map(|e| json!({"content": [self.chat_logprob(e)]})),
                "finish_reason": finish,
            }),
            Endpoint::Text => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": ev.filter(|_| self.logprobs.is_some())
                    .map(|e| {
                        let at = self.streamed.fetch_add(e.text_delta.len(), std::sync::atomic::Ordering::Relaxed);
                        self.text_logprobs(std::slice::from_ref(e), at)
                    }),
                "finish_reason": finish,
            }),
        };
        let object = match self.ep {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Text => "text_completion",
        };
        self.envelope(object, json!([choice]))
    }
}

async fn collect(ctx: Ctx, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut evs = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => evs.push(t),
            Event::Done(sum) => {
                ctx.record(&sum);
                return Ok(axum::Json(ctx.full(&evs, &sum)).into_response());
            }
            Event::Failed { message, internal } => return Err(failure(message, internal)),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the engine stopped",
    ))
}

fn sse(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn stream_response(ctx: Ctx, rx: UnboundedReceiver<Event>) -> Response {
    let ctx = Arc::new(ctx);
    let first = match ctx.ep {
        // The role arrives first, as OpenAI sends it.
        Endpoint::Chat => {
            let mut c = ctx.chunk(None, None, None);
            c["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            vec![sse(&c)]
        }
        Endpoint::Text => vec![],
    };
    let c = ctx.clone();
    let events = UnboundedReceiverStream::new(rx).flat_map(move |ev| {
        let out: Vec<Result<SseEvent, Infallible>> = match ev {
            Event::Token(t) => {
                if t.text_delta.is_empty() && c.logprobs.is_none() {
                    vec![]
                } else {
                    vec![sse(&c.chunk(Some(&t.text_delta), Some(&t), None))]
                }
            }
            Event::Done(sum) => {
                c.record(&sum);
                let mut out = vec![sse(&c.chunk(
                    None,
                    None,
                    Some(finish_str(sum.finish_reason)),
                ))];
                if c.include_usage {
                    let mut u = c.envelope(
                        if c.ep == Endpoint::Chat {
                            "chat.completion.chunk"
                        } else {
                            "text_completion"
                        },
                        json!([]),
                    );
                    u["usage"] = Ctx::usage(&sum);
                    out.push(sse(&u));
                }
                out.push(Ok(SseEvent::default().data("[DONE]")));
                out
            }
            Event::Failed { message, internal } => vec![
                sse(&failure(message, internal).body()),
                Ok(SseEvent::default().data("[DONE]")),
            ],
        };
        stream::iter(out)
    });
    Sse::new(stream::iter(first).chain(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}
