//! Continuous batching on the default model: a batched decode step, and a pass that
//! mixes prompt chunks with decode rows, equal each sequence's single-sequence forward
//! bit for bit, chunked prefill equals one-shot prefill, and
//! the engine returns, for a mix of vectors, multipliers and position modes decoding
//! together, exactly the tokens `generate` returns for each request alone.

mod common;

use std::sync::mpsc;
use std::sync::Arc;

use bipo::engine::{Engine, EngineConfig, Event, Job, Sink, SteeringEntry};
use bipo::generate::{generate, FinishReason, GenerateOptions, SamplingParams};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::{KvCache, Mode};
use bipo::steer::{deltas_of, Positions, Steering};
use bipo::vector::SteeringVector;
use candle_core::{DType, Tensor};

fn model() -> LoadedModel {
    let m = common::default_model();
    load(m.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn happy() -> SteeringVector {
    bipo::io::read_vector(&common::root().join("assets/happy-control-vector.gguf")).unwrap()
}

fn chat(lm: &LoadedModel, q: &str) -> Vec<u32> {
    let p = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    lm.tokenizer.encode(&p, true).unwrap()
}

fn logits_of(lm: &LoadedModel, ids: &[u32], cache: &mut KvCache, st: &Steering) -> Vec<f32> {
    let x = Tensor::new(ids, lm.model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pos = cache.len();
    lm.model
        .forward(&x, pos, Some(cache), st, Some(1), Mode::Fast)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_batched_decode_step_equals_each_row_alone_bit_for_bit() {
    let lm = model();
    let v = happy();
    let prompts = [
        chat(&lm, "How was your day?"),
        chat(&lm, "Name a colour."),
        chat(&lm, "What is the capital of France? Answer in one word."),
    ];
    let mults = [4.0f32, 0.0, -3.0];
    let rows: Vec<_> = mults
        .iter()
        .map(|&m| deltas_of(&[(v.clone(), m)]))
        .collect();
    let h = lm.model.hidden_size();
    let single = |i: usize| {
        Steering::from_row_deltas(&[&rows[i]], h, lm.model.device(), DType::F32).unwrap()
    };
    // Prefill each prompt alone, then decode the three together for a few steps and
    // compare with the same steps run one sequence at a time.
    let mut batch_caches: Vec<KvCache> = Vec::new();
    let mut alone_caches: Vec<KvCache> = Vec::new();
    let mut next: Vec<u32> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut c = KvCache::new(&lm.model);
        let l = logits_of(&lm, p, &mut c, &single(i));
        let mut c2 = KvCache::new(&lm.model);
        logits_of(&lm, p, &mut c2, &single(i));
        batch_caches.push(c);
        alone_caches.push(c2);
        next.push(bipo::generate::top_k_indices(&l, 1)[0] as u32);
    }
    let refs: Vec<_> = rows.iter().collect();
    let st = Steering::from_row_deltas(&refs, h, lm.model.device(), DType::F32).unwrap();
    for step in 0..4 {
        let mut cs: Vec<&mut KvCache> = batch_caches.iter_mut().collect();
        let batched: Vec<Vec<f32>> = lm
            .model
            .decode_rows(&next, &mut cs, &st)
            .unwrap()
            .to_vec2()
            .unwrap();
        for i in 0..3 {
            let alone = logits_of(&lm, &[next[i]], &mut alone_caches[i], &single(i));
            assert_eq!(batched[i], alone, "row {i} differs at step {step}");
        }
        next = batched
            .iter()
            .map(|l| bipo::generate::top_k_indices(l, 1)[0] as u32)
            .collect();
    }
}

#[test]
fn a_pass_of_prompt_chunks_and_decode_rows_equals_each_segment_alone_bit_for_bit() {
    let lm = model();
    let v = happy();
    let h = lm.model.hidden_size();
    let prompts = [
        chat(&lm, "How was your day?"),
        chat(&lm, "Name a colour."),
        chat(&lm, "What is the capital of France? Answer in one word."),
    ];
    let rows: Vec<_> = [4.0f32, 0.0, -3.0]
        .iter()
        .map(|&m| deltas_of(&[(v.clone(), m)]))
        .collect();
    let single = |i: usize| {
        Steering::from_row_deltas(&[&rows[i]], h, lm.model.device(), DType::F32).unwrap()
    };
    // Before the pass: sequence 0 holds its whole prompt and decodes its next token;
    // sequence 1 holds nothing and prefills 5 tokens; sequence 2 holds 4 tokens and
    // prefills the rest of its prompt.
    let mut batch: Vec<KvCache> = (0..3).map(|_| KvCache::new(&lm.model)).collect();
    let mut alone: Vec<KvCache> = (0..3).map(|_| KvCache::new(&lm.model)).collect();
    let l0 = logits_of(&lm, &prompts[0], &mut batch[0], &single(0));
    logits_of(&lm, &prompts[0], &mut alone[0], &single(0));
    logits_of(&lm, &prompts[2][..4], &mut batch[2], &single(2));
    logits_of(&lm, &prompts[2][..4], &mut alone[2], &single(2));
    let next0 = bipo::generate::top_k_indices(&l0, 1)[0] as u32;
    let segs: [Vec<u32>; 3] = [
        vec![next0],
        prompts[1][..5].to_vec(),
        prompts[2][4..].to_vec(),
    ];
    let tokens: Vec<u32> = segs.concat();
    let lens: Vec<usize> = segs.iter().map(|s| s.len()).collect();
    let refs: Vec<_> = rows.iter().collect();
    let st = Steering::from_row_deltas(&refs, h, lm.model.device(), DType::F32).unwrap();
    let mut cs: Vec<&mut KvCache> = batch.iter_mut().collect();
    let batched: Vec<Vec<f32>> = lm
        .model
        .forward_segments(&tokens, &lens, &mut cs, &st)
        .unwrap()
        .to_vec2()
        .unwrap();
    for i in 0..3 {
        let a = logits_of(&lm, &segs[i], &mut alone[i], &single(i));
        assert_eq!(batched[i], a, "segment {i} differs");
        assert_eq!(batch[i].len(), alone[i].len());
    }
    // The caches hold the same keys: one more token each gives the same logits.
    for i in 0..3 {
        let t = bipo::generate::top_k_indices(&batched[i], 1)[0] as u32;
        let a = logits_of(&lm, &[t], &mut alone[i], &single(i));
        let b = logits_of(&lm, &[t], &mut batch[i], &single(i));
        assert_eq!(a, b, "cache of segment {i} differs");
    }
    // Malformed segments are refused, not run.
    let mut cs: Vec<&mut KvCache> = batch.iter_mut().collect();
    let err = lm
        .model
        .forward_segments(&tokens, &[1, 2, 3], &mut cs, &st)
        .unwrap_err();
    assert!(err.to_string().contains("segments"), "{err}");
}

#[test]
fn chunked_prefill_equals_one_shot_prefill() {
    let lm = model();
    let p = chat(
        &lm,
        "Write a short poem about the sea and the stars above it.",
    );
    let st = Steering::from_vectors(&[(happy(), 3.0)], lm.model.device(), DType::F32).unwrap();
    let mut one = KvCache::new(&lm.model);
    let a = logits_of(&lm, &p, &mut one, &st);
    let mut chunked = KvCache::new(&lm.model);
    let mut b = Vec::new();
    for c in p.chunks(7) {
        b = logits_of(&lm, c, &mut chunked, &st);
    }
    assert_eq!(a, b);
}

struct ChanSink(mpsc::Sender<Event>);

impl Sink for ChanSink {
    fn send(&mut self, ev: Event) -> bool {
        self.0.send(ev).is_ok()
    }
}

fn opts(max_tokens: usize, seed: u64, temperature: f32) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            seed,
            ..Default::default()
        },
        stop_at_eos: false,
        top_logprobs: 2,
        ..Default::default()
    }
}

#[test]
fn mixed_steering_in_one_batch_returns_what_each_request_returns_alone() {
    let lm = Arc::new(model());
    let v = Arc::new(happy());
    let questions = [
        "How was your day?",
        "Name a colour.",
        "Tell me about Mondays.",
        "What do you think of rain?",
        "Describe your job.",
        "Say something about cats.",
    ];
    // (multiplier, positions, temperature) per request; a different mix on each row.
    let cases: [(f32, Positions, f32); 6] = [
        (6.0, Positions::All, 0.0),
        (0.0, Positions::All, 0.0),
        (-4.0, Positions::Prompt, 0.0),
        (5.0, Positions::Generated, 0.0),
        (3.0, Positions::All, 0.8),
        (-2.0, Positions::Generated, 0.7),
    ];
    // Prefill chunks of 5 tokens make prompts interleave with other rows' decoding.
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 4,
            max_queue: 16,
            prefill_chunk: 5,
        },
    );
    let mut rxs = Vec::new();
    for (i, (q, (m, pos, temp))) in questions.iter().zip(cases).enumerate() {
        let (tx, rx) = mpsc::channel();
        let entries: Vec<SteeringEntry> = vec![(v.clone(), m, pos)];
        let job = Job::new(
            chat(&lm, q),
            &entries,
            opts(10 + 2 * i, i as u64, temp),
            Box::new(ChanSink(tx)),
        );
        engine.submit(job).ok().unwrap();
        rxs.push(rx);
    }
    for (i, rx) in rxs.into_iter().enumerate() {
        let evs: Vec<Event> = rx.iter().collect();
        let (toks, lps): (Vec<u32>, Vec<f32>) = evs
            .iter()
            .filter_map(|e| match e {
                Event::Token(t) => Some((t.id, t.logprob)),
                _ => None,
            })
            .unzip();
        let Some(Event::Done(sum)) = evs.last() else {
            panic!("request {i} did not end with Done: {:?}", evs.last());
        };
        assert_eq!(sum.finish_reason, FinishReason::Length);
        let (m, pos, temp) = cases[i];
        let mut o = opts(10 + 2 * i, i as u64, temp);
        o.positions = pos;
        let st =
            Steering::from_vectors(&[((*v).clone(), m)], lm.model.device(), DType::F32).unwrap();
        let mut ref_lps = Vec::new();
        let g = generate(
            &lm.model,
            &lm.tokenizer,
            &chat(&lm, questions[i]),
            &st,
            &o,
            |e| {
                ref_lps.push(e.logprob);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            toks, g.ids,
            "request {i}: tokens differ from generate alone"
        );
        assert_eq!(lps, ref_lps, "request {i}: log-probabilities differ");
        assert_eq!(sum.text, g.text);
    }
    assert!(
        engine
            .stats()
            .decode_steps
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let rows = engine
        .stats()
        .decode_rows
        .load(std::sync::atomic::Ordering::Relaxed);
    let steps = engine
        .stats()
        .decode_steps
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        rows > steps,
        "no decode step held more than one row ({rows} rows, {steps} steps)"
    );
}

#[test]
fn an_overflowing_request_fails_alone_and_its_batch_mates_finish() {
    let lm = Arc::new(model());
    let v = Arc::new(happy());
    let engine = Engine::start(lm.clone(), EngineConfig::default());
    let mut rxs = Vec::new();
    for m in [1.0f32, 1e30, -1.0] {
        let (tx, rx) = mpsc::channel();
        let job = Job::new(
            chat(&lm, "Hello"),
            &[(v.clone(), m, Positions::Generated)],
            opts(6, 0, 0.0),
            Box::new(ChanSink(tx)),
        );
        engine.submit(job).ok().unwrap();
        rxs.push(rx);
    }
    let ends: Vec<Event> = rxs
        .into_iter()
        .map(|rx| rx.iter().last().unwrap())
        .collect();
    assert!(matches!(ends[0], Event::Done(_)), "{:?}", ends[0]);
    assert!(
        matches!(&ends[1], Event::Failed { message: m, internal: false } if m.contains("overflow") || m.contains("finite")),
        "{:?}",
        ends[1]
    );
    assert!(matches!(ends[2], Event::Done(_)), "{:?}", ends[2]);
}
