//! Real checkpoints against llama.cpp (opt-in: they need the models that
//! `scripts/fetch-model.sh all` fetches; run with `scripts/test-real-models.sh`).
//!
//! For each model, `benches/reference/<model>.json` holds what llama.cpp's llama-server
//! computed (`benches/llamacpp_reference.py`): token ids of a few strings, and for a few
//! prompts the greedy tokens with the top-5 log-probabilities at every step, unsteered
//! and with a control vector (a CAA vector, committed beside the JSON). bipo, teacher-
//! forced on llama.cpp's tokens, must give: the same token ids; first-step top-5
//! log-probabilities within 0.3 on average over the prompts and 0.4 at most (see
//! below); the same greedy token at every step up to llama.cpp's first near-tie (top-2
//! within 0.25).
//!
//! Why 0.4 at most: with 8-bit activations, a change in the order of f32 additions
//! moves log-probabilities by up to ~0.17 on these prompts (bipo's scalar kernels
//! against its SIMD ones, both exact to 1e-6 per product), and llama.cpp's own f16 KV
//! cache moves its log-probabilities by up to ~0.09 against an f32 cache. The largest
//! first-step deviations measured were 0.327 (Gemma-3-270m) and 0.361 (Qwen2.5-1.5B
//! with the control vector at x4), both on tokens of rank 4-5.

use std::path::{Path, PathBuf};

use bipo::load::LoadedModel;
use bipo::models::{KvCache, Mode};
use bipo::steer::Steering;
use candle_core::{Device, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Largest mean (over prompts) of the first-step top-5 deviation.
const FIRST_STEP_MEAN: f64 = 0.3;
/// Largest first-step deviation of any prompt (see the module docs).
const FIRST_STEP_MAX: f64 = 0.4;
/// llama.cpp's top-2 closer than this is a near-tie: greedy comparison stops there.
const NEAR_TIE: f64 = 0.25;

struct Step {
    id: u32,
    top: Vec<(u32, f64)>,
}

fn steps(g: &serde_json::Value) -> Vec<Step> {
    let ids = g["ids"].as_array().unwrap();
    let tops = g["top"].as_array().unwrap();
    ids.iter()
        .zip(tops)
        .map(|(id, t)| Step {
            id: id.as_u64().unwrap() as u32,
            top: t
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                .collect(),
        })
        .collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// bipo's log-probabilities at every step of llama.cpp's greedy continuation.
fn teacher_forced(
    lm: &LoadedModel,
    prompt: &str,
    want: &[Step],
    steering: &Steering,
) -> Vec<Vec<f64>> {
    let m = &lm.model;
    let ids = lm.tokenizer.encode(prompt, true).unwrap();
    let mut cache = KvCache::new(m);
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut logits = m
        .forward(&t, 0, Some(&mut cache), steering, Some(1), Mode::Fast)
        .unwrap();
    let mut out = Vec::new();
    for s in want {
        let row: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        out.push(log_softmax(&row));
        let t = Tensor::new(&[s.id], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        logits = m
            .forward(
                &t,
                cache.len(),
                Some(&mut cache),
                steering,
                Some(1),
                Mode::Fast,
            )
            .unwrap();
    }
    out
}

#[derive(Default)]
struct Tally {
    first_max: f64,
    first_sum: f64,
    prompts: usize,
    agreed: usize,
    compared: usize,
}

/// Compares one prompt; returns failures as text.
fn check(
    lm: &LoadedModel,
    g: &serde_json::Value,
    steering: &Steering,
    tally: &mut Tally,
) -> Vec<String> {
    let prompt = g["prompt"].as_str().unwrap();
    let want = steps(g);
    let got = teacher_forced(lm, prompt, &want, steering);
    let mut fails = Vec::new();
    let first = want[0]
        .top
        .iter()
        .map(|(id, lp)| (got[0][*id as usize] - lp).abs())
        .fold(0.0, f64::max);
    tally.first_max = tally.first_max.max(first);
    tally.first_sum += first;
    tally.prompts += 1;
    if first > FIRST_STEP_MAX {
        fails.push(format!("{prompt:?}: first-step deviation {first:.3}"));
    }
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        if w.top.len() >= 2 && w.top[0].1 - w.top[1].1 < NEAR_TIE {
            break;
        }
        // The reference ran with `ignore_eos`: where llama.cpp's most likely token was
        // end-of-sequence it took the next one, and the comparison ends there.
        if w.top[0].0 != w.id {
            break;
        }
        tally.compared += 1;
        let argmax = (0..g.len()).max_by(|&a, &b| g[a].total_cmp(&g[b])).unwrap() as u32;
        if argmax != w.id {
            fails.push(format!(
                "{prompt:?}: step {k}: bipo picks {argmax} ({:.3}, llama.cpp {:.3}) over {} ({:.3}, llama.cpp {:.3})",
                g[argmax as usize],
                w.top.iter().find(|t| t.0 == argmax).map_or(f64::NAN, |t| t.1),
                w.id,
                g[w.id as usize],
                w.top[0].1,
            ));
            break;
        }
        tally.agreed += 1;
    }
    fails
}

fn run(name: &str) {
    let reference = root()
        .join("benches/reference")
        .join(format!("{name}.json"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let model = root().join("models").join(r["model"].as_str().unwrap());
    assert!(
        model.is_file(),
        "{} missing: scripts/fetch-model.sh {name}",
        model.display()
    );
    let lm = bipo::load::load(model.to_str().unwrap(), &Default::default()).unwrap();
    let mut fails = Vec::new();
    let mut tok_ok = 0;
    for t in r["tokenize"].as_array().unwrap() {
        let want: Vec<u32> = serde_json::from_value(t["ids"].clone()).unwrap();
        let got = lm
            .tokenizer
            .encode(t["text"].as_str().unwrap(), false)
            .unwrap();
        if got == want {
            tok_ok += 1;
        } else {
            fails.push(format!("tokenize {:?}: {got:?} vs {want:?}", t["text"]));
        }
    }
    let cv = &r["control_vector"];
    let vec_path = root()
        .join("benches/reference")
        .join(cv["file"].as_str().unwrap());
    let v = bipo::io::read_vector(&vec_path).unwrap();
    let scale = cv["scale"].as_f64().unwrap() as f32;
    let steering = Steering::from_vectors(&[(v, scale)], &Device::Cpu, lm.model.dtype()).unwrap();
    let mut report = String::new();
    for (what, key, st) in [
        ("unsteered", "greedy", Steering::none()),
        ("control vector", "steered", steering),
    ] {
        let mut tally = Tally::default();
        for g in r[key].as_array().unwrap() {
            fails.extend(check(&lm, g, &st, &mut tally));
        }
        let mean = tally.first_sum / tally.prompts as f64;
        if mean > FIRST_STEP_MEAN {
            fails.push(format!("{what}: mean first-step deviation {mean:.3}"));
        }
        report += &format!(
            "{name} {what}: first-step top-5 |Δ| mean {mean:.3} max {:.3}; greedy {}/{} steps before near-ties\n",
            tally.first_max,
            tally.agreed,
            tally.compared
        );
    }
    println!(
        "{name}: tokenizer {tok_ok}/{} strings identical\n{report}",
        r["tokenize"].as_array().unwrap().len()
    );
    assert!(fails.is_empty(), "{name}: {fails:#?}");
}

#[test]
#[ignore = "needs models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf: scripts/test-real-models.sh"]
fn qwen2_5_coder_0_5b_matches_llama_cpp() {
    run("qwen2.5-coder-0.5b");
}

#[test]
#[ignore = "needs models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf: scripts/test-real-models.sh"]
fn qwen2_5_coder_1_5b_matches_llama_cpp() {
    run("qwen2.5-coder-1.5b");
}

#[test]
#[ignore = "needs models/gemma-3-270m-q4_k_m.gguf: scripts/test-real-models.sh"]
fn gemma_3_270m_matches_llama_cpp() {
    run("gemma-3-270m");
}
