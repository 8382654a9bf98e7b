//! Every model family against Hugging Face transformers itself: a tiny random model per
//! family, made by transformers (`scripts/make-family-fixtures.py`), and the logits
//! transformers computed on a fixed input, unsteered and with a vector added to one
//! decoder layer's output by a forward hook. bipo must agree within 1e-4 on the fast
//! and the differentiable path, loading the Hugging Face folder and (where present)
//! the GGUF file llama.cpp's own converter made from it.

mod common;

use std::path::{Path, PathBuf};

use bipo::models::{Mode, Model};
use bipo::steer::Steering;
use bipo::{SteeringVector, VectorMeta};
use candle_core::Device;

const FAMILIES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma2-scalar",
    "gemma3",
    "phi3",
];
/// Largest accepted |logit difference| (f32 arithmetic in both).
const TOLERANCE: f32 = 1e-4;

fn dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/families")
        .join(family)
}

/// (positions, vocabulary) logits.
type Logits = Vec<Vec<f32>>;

struct Reference {
    input: Vec<u32>,
    logits: Vec<Vec<f32>>,
    layer: usize,
    vector: Vec<f32>,
    steered: Vec<Vec<f32>>,
    /// Leading positions where llama.cpp's reading of the GGUF equals transformers
    /// (fewer where llama.cpp ignores the family's sliding window).
    gguf_positions: usize,
    /// Gemma: transformers on the GGUF's norms (llama.cpp's converter stores 1 + w
    /// rounded to the checkpoint's dtype), when they differ from the folder's.
    gguf: Option<(Logits, Logits)>,
}

fn reference(family: &str) -> Reference {
    let text = std::fs::read_to_string(dir(family).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |k: &str| -> Vec<Vec<f32>> { serde_json::from_value(v[k].clone()).unwrap() };
    Reference {
        input: serde_json::from_value(v["input_ids"].clone()).unwrap(),
        logits: rows("logits"),
        layer: v["steer_layer"].as_u64().unwrap() as usize,
        vector: serde_json::from_value(v["vector"].clone()).unwrap(),
        steered: rows("steered_logits"),
        gguf_positions: v["gguf_positions"].as_u64().unwrap() as usize,
        gguf: v
            .get("gguf_logits")
            .map(|_| (rows("gguf_logits"), rows("gguf_steered_logits"))),
    }
}

/// (fast, differentiable, steered fast, steered differentiable) max |Δ logit| over the
/// first `rows` positions.
fn deviations(model_path: &Path, r: &Reference, rows: usize) -> [f32; 4] {
    let lm = bipo::load::load(model_path.to_str().unwrap(), &Default::default()).unwrap();
    let v = SteeringVector::single(r.layer, r.vector.clone(), VectorMeta::default());
    let steer = Steering::from_vectors(&[(v, 1.0)], &Device::Cpu, candle_core::DType::F32).unwrap();
    let none = Steering::none();
    let m = &lm.model;
    let cmp =
        |got: Vec<Vec<f32>>, want: &[Vec<f32>]| common::max_abs_diff(&got[..rows], &want[..rows]);
    [
        cmp(common::logits(m, &r.input, &none, Mode::Fast), &r.logits),
        cmp(
            common::logits(m, &r.input, &none, Mode::Differentiable),
            &r.logits,
        ),
        cmp(common::logits(m, &r.input, &steer, Mode::Fast), &r.steered),
        cmp(
            common::logits(m, &r.input, &steer, Mode::Differentiable),
            &r.steered,
        ),
    ]
}

#[test]
fn every_family_matches_transformers_unsteered_and_steered() {
    let mut failures = Vec::new();
    println!("| family | source | fast | differentiable | steered fast | steered diff. |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for fam in FAMILIES {
        let r = reference(fam);
        // A steering vector must actually move the logits, or the steered check is empty.
        assert!(
            common::max_abs_diff(&r.logits, &r.steered) > 0.05,
            "{fam}: the reference vector does nothing"
        );
        let mut sources = vec![("hf folder".to_string(), dir(fam), r.input.len())];
        let gguf = dir(fam).join("model.gguf");
        if gguf.is_file() {
            let what = match r.gguf_positions {
                n if n == r.input.len() => "gguf (llama.cpp converter)".to_string(),
                n => format!("gguf, first {n} positions (llama.cpp: no window)"),
            };
            sources.push((what, gguf, r.gguf_positions));
        }
        for (what, path, rows) in sources {
            let is_gguf = path.extension().is_some_and(|e| e == "gguf");
            let d = match (&r.gguf, is_gguf) {
                (Some((l, s)), true) => {
                    let as_stored = Reference {
                        logits: l.clone(),
                        steered: s.clone(),
                        input: r.input.clone(),
                        vector: r.vector.clone(),
                        gguf: None,
                        ..r
                    };
                    deviations(&path, &as_stored, rows)
                }
                _ => deviations(&path, &r, rows),
            };
            println!(
                "| {fam} | {what} | {:.2e} | {:.2e} | {:.2e} | {:.2e} |",
                d[0], d[1], d[2], d[3]
            );
            if d.iter().any(|x| x.is_nan() || *x > TOLERANCE) {
                failures.push(format!("{fam} ({what}): {d:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "beyond {TOLERANCE}: {failures:#?}");
}

/// Summed log-prob of `resp` after `prompt` from one full forward with `steering`.
fn full_logp(m: &Model, prompt: &[u32], resp: &[u32], steering: &Steering) -> f32 {
    let ids: Vec<u32> = prompt.iter().chain(resp).copied().collect();
    let lg = common::logits(m, &ids, steering, Mode::Fast);
    resp.iter()
        .enumerate()
        .map(|(k, &tok)| {
            let row = &lg[prompt.len() + k - 1];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            row[tok as usize] - lse
        })
        .sum()
}

#[test]
fn the_packed_prefix_cache_equals_full_forwards_in_every_family() {
    use bipo::activations::{Example, Prepared};
    // Prompts and responses longer than the fixtures' 4-token windows, so the packed
    // rows' window masks (shifted positions of the second response) are exercised.
    let examples = vec![
        Example {
            prompt: vec![1, 5, 9, 12, 33, 40],
            responses: [vec![20, 21, 22], vec![30, 31, 32, 33, 34]],
        },
        Example {
            prompt: vec![1, 7, 7, 8],
            responses: [vec![40, 41, 42, 43, 44, 45], vec![50]],
        },
    ];
    for fam in FAMILIES {
        let lm = bipo::load::load(dir(fam).to_str().unwrap(), &Default::default()).unwrap();
        let m = &lm.model;
        let h = m.hidden_size();
        let v = SteeringVector {
            layers: [1, 2]
                .iter()
                .map(|&l| {
                    (
                        l,
                        (0..h)
                            .map(|i| (i as f32 * 0.37 + l as f32).sin() * 0.4)
                            .collect(),
                    )
                })
                .collect(),
            meta: VectorMeta::default(),
        };
        let p = Prepared::new(m, 1, examples.clone(), 1 << 30, |_, _| {}).unwrap();
        for k in [0.0f32, -1.5, 2.0] {
            let s = Steering::from_vectors(&[(v.clone(), k)], &Device::Cpu, m.dtype()).unwrap();
            let got = p.response_logps(&s, 2).unwrap();
            for (e, g) in examples.iter().zip(&got) {
                for (resp, got) in e.responses.iter().zip(g) {
                    let want = full_logp(m, &e.prompt, resp, &s);
                    assert!((want - got).abs() < 1e-4, "{fam} x{k}: {want} vs {got}");
                }
            }
        }
    }
}
