//! The CUDA backend against the CPU on the default model (built only with `--features
//! cuda`; needs a GPU): logits, the KV cache, steering invariants, and the BiPO loss and
//! its gradient. Run on a GPU machine with
//! `cargo test --release -p bipo --features cuda --test cuda`.
#![cfg(feature = "cuda")]

mod common;

use bipo::activations::{Example, Prepared};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::models::{KvCache, Mode, Model};
use bipo::steer::Steering;
use bipo::{SteeringVector, VectorMeta};
use candle_core::{DType, Device, Tensor, Var};

const TOKENS: [u32; 12] = [1, 4093, 314, 253, 1345, 28, 1206, 2491, 30, 216, 42, 7];

fn model(device: Device) -> LoadedModel {
    let path = common::default_model();
    let opts = LoadOptions {
        device,
        dtype: Some(DType::F32),
        ..Default::default()
    };
    load(path.to_str().unwrap(), &opts).unwrap()
}

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device (these tests need a GPU)")
}

fn vector(m: &Model, layer: usize) -> SteeringVector {
    let h = m.hidden_size();
    let dir = (0..h)
        .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.45)
        .collect();
    SteeringVector {
        layers: [(layer, dir)].into_iter().collect(),
        meta: VectorMeta {
            name: "test".into(),
            ..Default::default()
        },
    }
}

fn logits(m: &Model, st: &Steering, mode: Mode) -> Vec<Vec<f32>> {
    let ids = Tensor::new(&TOKENS, m.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&ids, 0, None, st, None, mode)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// Log-softmax of each row, in f64.
fn log_probs(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + r.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            r.iter().map(|&x| x as f64 - lse).collect()
        })
        .collect()
}

#[test]
fn logits_match_the_cpu_steered_and_unsteered() {
    let (cpu, cuda) = (model(Device::Cpu), model(gpu()));
    for mult in [0.0f32, 4.0] {
        let v = vector(&cpu.model, 15);
        let sc =
            Steering::from_vectors(&[(v.clone(), mult)], cpu.model.device(), DType::F32).unwrap();
        let sg = Steering::from_vectors(&[(v, mult)], cuda.model.device(), DType::F32).unwrap();
        for mode in [Mode::Fast, Mode::Differentiable] {
            let (a, b) = (
                log_probs(&logits(&cpu.model, &sc, mode)),
                log_probs(&logits(&cuda.model, &sg, mode)),
            );
            // Both quantize activations differently for the quantized matmul in Fast
            // mode; the differentiable path multiplies dequantized weights in f32.
            let tol = if mode == Mode::Fast { 0.1 } else { 2e-3 };
            let mut worst = 0f64;
            for (ra, rb) in a.iter().zip(&b) {
                let top = |r: &[f64]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
                assert_eq!(top(ra), top(rb), "top token differs ({mode:?}, x{mult})");
                // Compare where the model puts mass (log-prob > -10).
                for (x, y) in ra.iter().zip(rb) {
                    if *x > -10.0 {
                        worst = worst.max((x - y).abs());
                    }
                }
            }
            eprintln!("{mode:?} x{mult}: largest log-prob difference {worst:.2e}");
            assert!(worst < tol, "{mode:?} x{mult}: {worst} >= {tol}");
        }
    }
}

#[test]
fn kv_cache_equals_recompute_and_multiplier_zero_is_unsteered_on_the_gpu() {
    let lm = model(gpu());
    let m = &lm.model;
    let full = logits(m, &Steering::none(), Mode::Fast);
    let zero = Steering::from_vectors(&[(vector(m, 15), 0.0)], m.device(), DType::F32).unwrap();
    assert_eq!(
        logits(m, &zero, Mode::Fast),
        full,
        "multiplier 0 changed the logits"
    );
    let mut cache = KvCache::new(m);
    let ids = |s: &[u32]| Tensor::new(s, m.device()).unwrap().unsqueeze(0).unwrap();
    let mut got: Vec<Vec<f32>> = m
        .forward(
            &ids(&TOKENS[..5]),
            0,
            Some(&mut cache),
            &Steering::none(),
            None,
            Mode::Fast,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, &t) in TOKENS.iter().enumerate().skip(5) {
        let row = m
            .forward(
                &ids(&[t]),
                i,
                Some(&mut cache),
                &Steering::none(),
                None,
                Mode::Fast,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        got.extend(row);
    }
    let worst = common::max_abs_diff(&got, &full);
    assert!(
        worst < 2e-2,
        "cached decode differs from recompute by {worst}"
    );
}

#[test]
fn bipo_loss_and_gradient_match_the_cpu() {
    let examples = || {
        vec![
            Example {
                prompt: TOKENS[..8].to_vec(),
                responses: [vec![2491, 30, 2], vec![253, 1345, 28, 2]],
            },
            Example {
                prompt: TOKENS[2..10].to_vec(),
                responses: [vec![216, 2], vec![42, 7, 30, 2]],
            },
        ]
    };
    let run = |lm: &LoadedModel, d: f32| -> (f32, Vec<f32>) {
        let p = Prepared::new(&lm.model, 15, examples(), usize::MAX, |_, _| {}).unwrap();
        let v0: Vec<f32> = (0..lm.model.hidden_size())
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.02)
            .collect();
        let var =
            Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device()).unwrap()).unwrap();
        let out = p.loss(&[0, 1], var.as_tensor(), d, 0.1).unwrap();
        let grads = out.loss.backward().unwrap();
        let g = grads.get(&var).unwrap().to_vec1().unwrap();
        (out.loss.to_scalar().unwrap(), g)
    };
    let (cpu, cuda) = (model(Device::Cpu), model(gpu()));
    for d in [1.0f32, -1.0] {
        let ((la, ga), (lb, gb)) = (run(&cpu, d), run(&cuda, d));
        let dot: f64 = ga.iter().zip(&gb).map(|(x, y)| (x * y) as f64).sum();
        let na: f64 = ga.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
        let nb: f64 = gb.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        eprintln!(
            "d {d}: loss cpu {la} cuda {lb}; gradient norm {na:.4e} / {nb:.4e}, cosine {cos:.7}"
        );
        assert!(
            (la - lb).abs() < 1e-4 * la.abs().max(1.0),
            "loss {la} vs {lb}"
        );
        assert!(cos > 0.9999, "gradient cosine {cos}");
        assert!((na - nb).abs() < 1e-3 * na, "gradient norm {na} vs {nb}");
    }
}
