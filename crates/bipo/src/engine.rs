//! A batching generation engine: many requests, each with its own steering, run
//! together in one forward pass per step (continuous batching).
//!
//! The engine owns one thread (each step runs on the rayon pool). Requests ([`Job`])
//! queue in a bounded channel; between steps the engine admits queued jobs up to
//! `max_batch` active sequences. Each step is one [`Model::forward_segments`] pass over
//! the next token of every generating sequence and up to `prefill_chunk` prompt tokens
//! of the new ones (so a long prompt is prefilled over several steps and does not stall
//! the others), each sequence with its own steering delta. Every sequence has its own
//! KV cache, freed when it finishes or its client goes away.
//!
//! No async runtime and no HTTP here: results go to a [`Sink`], which the server
//! implements over its channels.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::generate::{Decoder, FinishReason, GenerateOptions, TokenEvent};
use crate::load::LoadedModel;
use crate::models::KvCache;
use crate::steer::{deltas_of, Positions, Steering};
use crate::vector::SteeringVector;

/// Engine limits.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoding together at most.
    pub max_batch: usize,
    /// Jobs waiting for a slot at most; [`Engine::submit`] refuses more.
    pub max_queue: usize,
    /// Prompt tokens per step at most (over all new sequences; the generating ones add
    /// one token each).
    pub prefill_chunk: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_queue: 256,
            prefill_chunk: 256,
        }
    }
}

/// What the engine reports for one job.
#[derive(Debug)]
pub enum Event {
    Token(TokenEvent),
    /// The job ended; no event follows.
    Done(Summary),
    /// The job failed: its input (e.g. a steering vector that drove the activations to
    /// overflow), or, when `internal`, a bug in the engine.
    Failed {
        message: String,
        internal: bool,
    },
}

/// How a job ended.
#[derive(Clone, Debug)]
pub struct Summary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub text: String,
    /// From admission to the first generated token.
    pub first_token_seconds: f64,
    pub total_seconds: f64,
}

/// Where a job's events go.
pub trait Sink: Send {
    /// Delivers one event; false when the receiver is gone (the job is cancelled).
    fn send(&mut self, ev: Event) -> bool;
    /// Whether the receiver is gone (checked before every step).
    fn is_closed(&self) -> bool {
        false
    }
}

/// One steering entry of a request: a vector, its multiplier and where it applies.
pub type SteeringEntry = (Arc<SteeringVector>, f32, Positions);

/// One generation request.
pub struct Job {
    pub prompt: Vec<u32>,
    /// The deltas added while the prompt is prefilled and while tokens are generated.
    pub prompt_deltas: BTreeMap<usize, Vec<f32>>,
    pub decode_deltas: BTreeMap<usize, Vec<f32>>,
    /// Sampling and stopping (its `positions` is not used: see the deltas).
    pub opts: GenerateOptions,
    pub sink: Box<dyn Sink>,
}

impl Job {
    /// A job whose steering is the sum of `entries`, each at its own positions.
    pub fn new(
        prompt: Vec<u32>,
        entries: &[SteeringEntry],
        opts: GenerateOptions,
        sink: Box<dyn Sink>,
    ) -> Self {
        let at = |keep: fn(Positions) -> bool| {
            let v: Vec<(SteeringVector, f32)> = entries
                .iter()
                .filter(|(_, _, p)| keep(*p))
                .map(|(v, m, _)| ((**v).clone(), *m))
                .collect();
            deltas_of(&v)
        };
        Self {
            prompt,
            prompt_deltas: at(Positions::prompt),
            decode_deltas: at(Positions::generated),
            opts,
            sink,
        }
    }
}

/// Counters the server exports.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    /// Steps (forward passes).
    pub decode_steps: AtomicU64,
    /// Sum over steps of the sequences in the step.
    pub decode_rows: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Histogram of sequences per step: counts for 1, 2, 3-4, 5-8, ..., >256.
    pub batch_hist: [AtomicU64; 10],
    /// Microseconds in forward passes that carry prompt tokens, in passes of generating
    /// rows only, and sampling/reporting.
    pub prefill_us: AtomicU64,
    pub decode_us: AtomicU64,
    pub sample_us: AtomicU64,
}

/// Adds the time since `t` to `counter` (microseconds).
fn add_us(counter: &AtomicU64, t: Instant) {
    counter.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
}

impl EngineStats {
    /// Upper bounds of [`Self::batch_hist`]'s buckets (the last is +Inf).
    pub const BATCH_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

    fn record_batch(&self, rows: usize) {
        let i = Self::BATCH_BUCKETS
            .iter()
            .position(|&b| rows <= b)
            .unwrap_or(Self::BATCH_BUCKETS.len());
        self.batch_hist[i].fetch_add(1, Ordering::Relaxed);
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// Why [`Engine::submit`] refused a job.
#[derive(Debug)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

/// Handle to the engine. Dropping it (or [`Engine::shutdown`]) lets the loop finish
/// every admitted and queued job, then stop.
pub struct Engine {
    tx: Option<SyncSender<Job>>,
    stats: Arc<EngineStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    pub fn start(lm: Arc<LoadedModel>, cfg: EngineConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel(cfg.max_queue.max(1));
        let stats = Arc::new(EngineStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("bipo-engine".into())
            .spawn(move || Worker::new(lm, cfg, st).run(rx))
            .expect("spawning the engine thread");
        Self {
            tx: Some(tx),
            stats,
            thread: Some(thread),
        }
    }

    /// Queues a job; refused when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        let tx = self.tx.as_ref().ok_or(SubmitError::ShuttingDown)?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        tx.try_send(job).map_err(|e| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
            }
        })
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Stops taking jobs, finishes the ones taken, and waits for the loop to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One admitted sequence.
struct Seq {
    /// Unique per admitted job (keys the cached batch steering).
    id: u64,
    job: Job,
    cache: KvCache,
    decoder: Decoder,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    admitted: Instant,
    first_token: Option<f64>,
}

impl Seq {
    fn generating(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }

    /// Positions in the cache before this step: the prompt so far, or the prompt and
    /// every generated token but the last (which the step feeds).
    fn cache_len(&self) -> usize {
        if self.generating() {
            self.prefilled + self.decoder.generated().len() - 1
        } else {
            self.prefilled
        }
    }
}

/// A sequence's part of one step: its next `n` tokens (from `Seq::cache_len`).
struct Segment {
    /// Index into the active sequences.
    seq: usize,
    n: usize,
}

struct Worker {
    lm: Arc<LoadedModel>,
    cfg: EngineConfig,
    stats: Arc<EngineStats>,
    active: Vec<Seq>,
    admitted: u64,
    /// The last step's rows (sequence id, generating) and their steering: reused while
    /// the batch does not change, which is most steps.
    batch_steering: Option<(Vec<(u64, bool)>, Steering)>,
}

impl Worker {
    fn new(lm: Arc<LoadedModel>, cfg: EngineConfig, stats: Arc<EngineStats>) -> Self {
        Self {
            lm,
            cfg,
            stats,
            active: Vec::new(),
            admitted: 0,
            batch_steering: None,
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut open = true;
        loop {
            // Admit: block for work when idle, else take what is waiting.
            if self.active.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while open && self.active.len() < self.cfg.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            self.active.retain(|s| !s.job.sink.is_closed());
            // Each step runs on a worker of the rayon pool (`scope` moves it there), so
            // the many parallel loops of a forward pass share the pool by work stealing
            // instead of each waking it from outside; idle waits stay off the pool.
            let step = catch_unwind(AssertUnwindSafe(|| rayon::scope(|_| self.step())));
            if step.is_err() {
                // A bug, not bad input; fail what is running and keep serving.
                for mut s in self.active.drain(..) {
                    s.job.sink.send(Event::Failed {
                        message: "internal error in the engine".into(),
                        internal: true,
                    });
                }
            }
            self.stats
                .active
                .store(self.active.len(), Ordering::Relaxed);
        }
    }

    fn admit(&mut self, mut job: Job) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let max = self.lm.model.max_context();
        match Decoder::new(&job.prompt, &job.opts, max) {
            Ok(_) if job.opts.max_tokens == 0 => {
                job.sink.send(Event::Done(Summary {
                    finish_reason: FinishReason::Length,
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: 0,
                    text: String::new(),
                    first_token_seconds: 0.0,
                    total_seconds: 0.0,
                }));
            }
            Ok(decoder) if job.prompt.len() < max => {
                self.stats
                    .prompt_tokens
                    .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
                self.admitted += 1;
                self.active.push(Seq {
                    id: self.admitted,
                    cache: KvCache::new(&self.lm.model),
                    decoder,
                    prefilled: 0,
                    admitted: Instant::now(),
                    first_token: None,
                    job,
                });
            }
            Ok(_) => {
                job.sink.send(Event::Failed {
                    message: format!(
                        "the prompt has {} tokens; the model's context is {max}",
                        job.prompt.len()
                    ),
                    internal: false,
                });
            }
            Err(e) => {
                job.sink.send(Event::Failed {
                    message: e.to_string(),
                    internal: false,
                });
            }
        }
        self.stats
            .active
            .store(self.active.len(), Ordering::Relaxed);
    }

    /// One forward pass for every sequence: the next token of each generating one, and
    /// up to `prefill_chunk` prompt tokens of the prefilling ones, oldest first. A
    /// sequence whose prompt is then complete samples its first token from the pass.
    fn step(&mut self) {
        let mut budget = self.cfg.prefill_chunk.max(1);
        let mut segs = Vec::new();
        for (i, s) in self.active.iter().enumerate() {
            if s.generating() {
                segs.push(Segment { seq: i, n: 1 });
            } else if budget > 0 {
                let n = (s.job.prompt.len() - s.prefilled).min(budget);
                budget -= n;
                segs.push(Segment { seq: i, n });
            }
        }
        if segs.is_empty() {
            return;
        }
        let prefilling = segs.iter().any(|g| !self.active[g.seq].generating());
        self.stats.record_batch(segs.len());
        let t = Instant::now();
        let logits = match self.forward(&segs) {
            Ok(l) => l.into_iter().map(Ok).collect(),
            Err(_) if segs.len() > 1 => {
                // Undo the partial step and run the segments alone, so one request
                // whose steering overflows fails alone.
                segs.iter()
                    .map(|g| {
                        let len = self.active[g.seq].cache_len();
                        self.active[g.seq].cache.truncate(len)?;
                        Ok(self.forward(std::slice::from_ref(g))?.remove(0))
                    })
                    .collect()
            }
            Err(e) => vec![Err(e)],
        };
        add_us(
            if prefilling {
                &self.stats.prefill_us
            } else {
                &self.stats.decode_us
            },
            t,
        );
        let t = Instant::now();
        // Sequences that sample now: the generating ones and those whose prompt is in.
        let mut rows = Vec::with_capacity(segs.len());
        let mut out = Vec::with_capacity(segs.len());
        for (g, r) in segs.iter().zip(logits) {
            let s = &mut self.active[g.seq];
            let ok = r.is_ok();
            if ok && !s.generating() {
                s.prefilled += g.n;
                if !s.generating() {
                    continue;
                }
            }
            rows.push(g.seq);
            out.push(r);
        }
        self.finish_rows(&rows, out.into_iter());
        add_us(&self.stats.sample_us, t);
    }

    /// Runs `segs` in one pass; returns each one's next-token logits.
    fn forward(&mut self, segs: &[Segment]) -> Result<Vec<Vec<f32>>> {
        let m = &self.lm.model;
        let mut tokens = Vec::new();
        let mut lens = Vec::with_capacity(segs.len());
        let mut deltas = Vec::with_capacity(segs.len());
        let mut key = Vec::with_capacity(segs.len());
        let mut caches: Vec<&mut KvCache> = Vec::with_capacity(segs.len());
        let mut next = segs.iter().peekable();
        for (i, s) in self.active.iter_mut().enumerate() {
            let Some(g) = next.next_if(|g| g.seq == i) else {
                continue;
            };
            if s.generating() {
                tokens.push(s.decoder.last_token().ok_or_else(|| {
                    Error::invalid("decode", "a generating sequence without a token")
                })?);
                deltas.push(&s.job.decode_deltas);
                key.push((s.id, true));
            } else {
                tokens.extend_from_slice(&s.job.prompt[s.prefilled..s.prefilled + g.n]);
                deltas.push(&s.job.prompt_deltas);
                key.push((s.id, false));
            }
            lens.push(g.n);
            caches.push(&mut s.cache);
        }
        let steering = match &self.batch_steering {
            Some((prev, st)) if *prev == key => st.clone(),
            _ => {
                let st =
                    Steering::from_row_deltas(&deltas, m.hidden_size(), m.device(), m.dtype())?;
                self.batch_steering = Some((key, st.clone()));
                st
            }
        };
        let logits = m.forward_segments(&tokens, &lens, &mut caches, &steering)?;
        Ok(logits.to_vec2()?)
    }

    fn finish_rows(&mut self, rows: &[usize], logits: impl Iterator<Item = Result<Vec<f32>>>) {
        let mut by_row: Vec<Option<Result<Vec<f32>>>> =
            (0..self.active.len()).map(|_| None).collect();
        for (&i, r) in rows.iter().zip(logits) {
            by_row[i] = Some(r);
        }
        // Sampling and log-probabilities read the whole vocabulary per row: rows in
        // parallel, then the events go out in order.
        let tok = &self.lm.tokenizer;
        let pushed: Vec<Option<Result<TokenEvent>>> = self
            .active
            .par_iter_mut()
            .zip(by_row.into_par_iter())
            .map(|(s, r)| r.map(|r| r.and_then(|l| s.decoder.push(tok, &l))))
            .collect();
        let mut drop = Vec::new();
        for (i, p) in pushed.into_iter().enumerate() {
            let keep = match p {
                None => true,
                Some(Ok(ev)) => self.deliver(i, ev),
                Some(Err(e)) => {
                    self.active[i].job.sink.send(Event::Failed {
                        message: e.to_string(),
                        internal: false,
                    });
                    false
                }
            };
            if !keep {
                drop.push(i);
            }
        }
        for i in drop.into_iter().rev() {
            self.active.remove(i);
        }
    }

    /// Sends sequence i's new token, and its summary when it was the last; false when
    /// the sequence is over.
    fn deliver(&mut self, i: usize, ev: TokenEvent) -> bool {
        let s = &mut self.active[i];
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let now = s.admitted.elapsed().as_secs_f64();
        let first = *s.first_token.get_or_insert(now);
        if !s.job.sink.send(Event::Token(ev)) {
            return false;
        }
        let Some(finish_reason) = s.decoder.finished() else {
            return true;
        };
        s.job.sink.send(Event::Done(Summary {
            finish_reason,
            prompt_tokens: s.job.prompt.len(),
            completion_tokens: s.decoder.generated().len(),
            text: s.decoder.text().to_string(),
            first_token_seconds: first,
            total_seconds: now,
        }));
        false
    }
}
