//! Request bodies of the two generation endpoints, checked and turned into an engine
//! job: prompt ids, steering entries, sampling options.

use std::sync::Arc;

use bipo::engine::SteeringEntry;
use bipo::generate::{GenerateOptions, SamplingParams};
use bipo::steer::Positions;
use bipo::text::Message;
use bipo::vector::SteeringVector;
use serde::Deserialize;

use crate::{ApiError, AppState};

/// One value or a list of them (OpenAI's `stop`, a single steering entry).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(x) => vec![x],
            Self::Many(v) => v,
        }
    }
}

/// One steering entry: `{"vector": NAME, "multiplier": 1.5, "layers": [15], "positions": "all"}`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SteeringSpec {
    pub vector: String,
    #[serde(default = "one")]
    pub multiplier: f64,
    pub layers: Option<Vec<usize>>,
    #[serde(default)]
    pub positions: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// A message's content: text, or a list of parts of which the text ones are kept.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `/v1/chat/completions` and `/v1/completions` (unknown fields ignored,
/// as OpenAI clients send many).
#[derive(Deserialize, Debug, Default)]
pub struct GenRequest {
    pub messages: Option<Vec<ChatMessage>>,
    pub prompt: Option<OneOrMany<String>>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany<String>>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
    /// Chat: a bool; completions: the number of alternatives.
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<usize>,
    pub echo: Option<bool>,
    /// Keep generating past end-of-sequence tokens (llama.cpp's extension; benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// One entry or a list (parsed in [`GenRequest::steering`], so errors name the entry).
    pub steering: Option<serde_json::Value>,
}

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Text,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Self::Chat => "chat_completions",
            Self::Text => "completions",
        }
    }
}

/// A checked request, ready for the engine.
pub struct Prepared {
    pub ids: Vec<u32>,
    pub entries: Vec<SteeringEntry>,
    /// The steering as applied, echoed in the response.
    pub steering_echo: Vec<serde_json::Value>,
    pub opts: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities reported (with this many alternatives), or None.
    pub logprobs: Option<usize>,
}

/// Most stop strings and alternatives per token a request may ask for.
const MAX_STOPS: usize = 16;
const MAX_TOP_LOGPROBS: usize = 20;

/// Parses a body, naming the field at fault.
pub fn parse(body: &[u8]) -> Result<GenRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." || path.is_empty() {
            ApiError::bad_body(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad(&path, format!("`{path}`: {inner}"))
        }
    })
}

impl GenRequest {
    pub fn prepare(self, s: &AppState, ep: Endpoint) -> Result<Prepared, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad(
                "n",
                "`n`: only 1 choice per request is supported",
            ));
        }
        if self.echo == Some(true) {
            return Err(ApiError::bad("echo", "`echo` is not supported"));
        }
        let ids = match ep {
            Endpoint::Chat => self.chat_ids(s)?,
            Endpoint::Text => self.text_ids(s)?,
        };
        if ids.len() > s.cfg.max_prompt_tokens {
            return Err(ApiError::bad(
                if ep == Endpoint::Chat { "messages" } else { "prompt" },
                format!(
                    "the prompt has {} tokens; this server accepts at most {} (--max-prompt-tokens)",
                    ids.len(),
                    s.cfg.max_prompt_tokens
                ),
            ));
        }
        let context = s.lm.model.max_context();
        if ids.len() >= context {
            return Err(ApiError::bad(
                "messages",
                format!(
                    "the prompt has {} tokens; the model's context is {context}",
                    ids.len()
                ),
            ));
        }
        let (field, asked) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => ("max_completion_tokens", Some(n)),
            (None, n) => ("max_tokens", n),
        };
        if let Some(n) = asked.filter(|&n| n > s.cfg.max_new_tokens) {
            return Err(ApiError::bad(
                field,
                format!(
                    "`{field}` is {n}; this server allows at most {} (--max-new-tokens)",
                    s.cfg.max_new_tokens
                ),
            ));
        }
        let logprobs = self.logprobs(ep)?;
        let stops = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stops.len() > MAX_STOPS || stops.iter().any(String::is_empty) {
            return Err(ApiError::bad(
                "stop",
                format!("`stop`: at most {MAX_STOPS} non-empty strings"),
            ));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k,
            top_p: self.top_p.filter(|&p| p != 1.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(rand::random),
        };
        sampling.validate().map_err(|e| {
            let f = match e.to_string() {
                m if m.contains("temperature") => "temperature",
                m if m.contains("top-p") => "top_p",
                m if m.contains("top-k") => "top_k",
                _ => "repetition_penalty",
            };
            ApiError::bad(f, e.to_string())
        })?;
        let (entries, steering_echo) = self.steering(s)?;
        let opts = GenerateOptions {
            max_tokens: asked
                .unwrap_or(s.cfg.max_new_tokens)
                .min(context - ids.len()),
            sampling,
            stop_strings: stops,
            stop_at_eos: !self.ignore_eos,
            top_logprobs: logprobs.unwrap_or(0),
            positions: Positions::All,
        };
        Ok(Prepared {
            ids,
            entries,
            steering_echo,
            opts,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            logprobs,
        })
    }

    fn chat_ids(&self, s: &AppState) -> Result<Vec<u32>, ApiError> {
        let msgs = self
            .messages
            .as_ref()
            .ok_or_else(|| ApiError::bad("messages", "`messages` is required"))?;
        if msgs.is_empty() {
            return Err(ApiError::bad("messages", "`messages` is empty"));
        }
        let mut out = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::bad(
                        &format!("messages[{i}].role"),
                        format!("`messages[{i}].role` is `{other}`; use system, user or assistant"),
                    ))
                }
            };
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut t = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(x)) => t += x,
                            (kind, _) => {
                                return Err(ApiError::bad(
                                    &format!("messages[{i}].content"),
                                    format!(
                                    "content part of type `{kind}` is not supported (text only)"
                                ),
                                ))
                            }
                        }
                    }
                    t
                }
            };
            out.push(Message::new(role, &text));
        }
        let template = s.lm.chat_template.as_ref().ok_or_else(|| {
            ApiError::bad(
                "messages",
                "the model has no chat template: use /v1/completions",
            )
        })?;
        let prompt = template.render_prompt(&out)?;
        Ok(s.lm.tokenizer.encode_chat(&prompt, true)?)
    }

    fn text_ids(&self, s: &AppState) -> Result<Vec<u32>, ApiError> {
        let prompts = self
            .prompt
            .clone()
            .ok_or_else(|| ApiError::bad("prompt", "`prompt` is required"))?
            .into_vec();
        let [p] = prompts.as_slice() else {
            return Err(ApiError::bad(
                "prompt",
                "`prompt`: exactly one prompt per request",
            ));
        };
        if p.is_empty() {
            return Err(ApiError::bad("prompt", "`prompt` is empty"));
        }
        Ok(s.lm.tokenizer.encode(p, true)?)
    }

    fn logprobs(&self, ep: Endpoint) -> Result<Option<usize>, ApiError> {
        let top = match (ep, &self.logprobs) {
            (_, None | Some(serde_json::Value::Null)) => None,
            (Endpoint::Chat, Some(serde_json::Value::Bool(b))) => {
                b.then_some(self.top_logprobs.unwrap_or(0))
            }
            (Endpoint::Text, Some(v)) if v.as_u64().is_some() => v.as_u64().map(|n| n as usize),
            (Endpoint::Chat, _) => {
                return Err(ApiError::bad(
                    "logprobs",
                    "`logprobs` must be true or false",
                ))
            }
            (Endpoint::Text, _) => {
                return Err(ApiError::bad(
                    "logprobs",
                    "`logprobs` must be a whole number",
                ))
            }
        };
        if ep == Endpoint::Chat && self.top_logprobs.is_some() && top.is_none() {
            return Err(ApiError::bad(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        match top {
            Some(k) if k > MAX_TOP_LOGPROBS => Err(ApiError::bad(
                if ep == Endpoint::Chat {
                    "top_logprobs"
                } else {
                    "logprobs"
                },
                format!("at most {MAX_TOP_LOGPROBS} alternatives per token"),
            )),
            t => Ok(t),
        }
    }

    /// Resolves the steering entries against the registry.
    fn steering(
        &self,
        s: &AppState,
    ) -> Result<(Vec<SteeringEntry>, Vec<serde_json::Value>), ApiError> {
        let items = match self.steering.clone() {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Array(a)) => a,
            Some(one) => vec![one],
        };
        let specs = items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value::<SteeringSpec>(v).map_err(|e| {
                    ApiError::bad(
                        &format!("steering[{i}]"),
                        format!(
                            "`steering[{i}]`: {e} (fields: vector, multiplier, layers, positions)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut entries = Vec::with_capacity(specs.len());
        let mut echo = Vec::with_capacity(specs.len());
        for (i, sp) in specs.into_iter().enumerate() {
            let at = |f: &str| format!("steering[{i}].{f}");
            let v = s.vectors.get(&sp.vector).ok_or_else(|| {
                ApiError::bad(
                    &at("vector"),
                    format!(
                        "unknown steering vector `{}` (GET /v1/steering/vectors lists them)",
                        sp.vector
                    ),
                )
            })?;
            let m = sp.multiplier;
            if !m.is_finite() || m.abs() > s.cfg.max_multiplier as f64 {
                return Err(ApiError::bad(
                    &at("multiplier"),
                    format!(
                        "multiplier {m} of `{}`: must be finite with |m| <= {} (--max-multiplier)",
                        sp.vector, s.cfg.max_multiplier
                    ),
                ));
            }
            let positions: Positions = sp
                .positions
                .as_deref()
                .unwrap_or("all")
                .parse()
                .map_err(|e: bipo::Error| ApiError::bad(&at("positions"), e.to_string()))?;
            let v = match &sp.layers {
                None => v,
                Some(ls) if ls.is_empty() => {
                    return Err(ApiError::bad(
                        &at("layers"),
                        "`layers` is empty (leave it out for all of the vector's layers)",
                    ))
                }
                Some(ls) => {
                    let mut sub = SteeringVector {
                        layers: Default::default(),
                        meta: v.meta.clone(),
                    };
                    for &l in ls {
                        let d = v.layers.get(&l).ok_or_else(|| {
                            ApiError::bad(
                                &at("layers"),
                                format!(
                                    "vector `{}` has no layer {l} (it has {:?})",
                                    sp.vector,
                                    v.layers.keys().collect::<Vec<_>>()
                                ),
                            )
                        })?;
                        sub.layers.insert(l, d.clone());
                    }
                    Arc::new(sub)
                }
            };
            echo.push(serde_json::json!({
                "vector": sp.vector,
                "multiplier": m,
                "layers": v.layers.keys().collect::<Vec<_>>(),
                "positions": positions.to_string(),
            }));
            entries.push((v, m as f32, positions));
        }
        Ok((entries, echo))
    }
}
