//! Invariants of the model code on tiny random models built in code (fast, no files).

mod common;

use bipo::models::random::{random_model, tiny_config};
use bipo::models::{KvCache, Mode, Model};
use bipo::steer::Steering;
use bipo::{SteeringVector, VectorMeta};
use candle_core::quantized::GgmlDType;
use candle_core::{Tensor, Var};

const TOKENS: [u32; 9] = [5, 17, 42, 3, 88, 61, 7, 7, 30];

fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn logits(m: &Model, steering: &Steering, mode: Mode) -> Vec<Vec<f32>> {
    m.forward(&ids(&TOKENS), 0, None, steering, None, mode)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn vector(m: &Model, layers: &[usize], scale: f32) -> SteeringVector {
    let h = m.hidden_size();
    SteeringVector {
        layers: layers
            .iter()
            .map(|&l| {
                (
                    l,
                    (0..h)
                        .map(|i| scale * ((i * 7 + l) % 11) as f32 / 11.0 - 0.3)
                        .collect(),
                )
            })
            .collect(),
        meta: VectorMeta {
            name: "test".into(),
            ..Default::default()
        },
    }
}

fn steering(m: &Model, v: &[(SteeringVector, f32)]) -> Steering {
    Steering::from_vectors(v, m.device(), m.dtype()).unwrap()
}

fn models() -> Vec<(&'static str, Model)> {
    vec![
        ("dense f32", random_model(tiny_config(), 1, None).unwrap()),
        (
            "Q4_1",
            random_model(tiny_config(), 2, Some(GgmlDType::Q4_1)).unwrap(),
        ),
        (
            "Q4_0",
            random_model(tiny_config(), 3, Some(GgmlDType::Q4_0)).unwrap(),
        ),
        (
            "Q8_0",
            random_model(tiny_config(), 4, Some(GgmlDType::Q8_0)).unwrap(),
        ),
        ("Q4K (candle kernels)", {
            let mut c = tiny_config();
            c.hidden_size = 256;
            c.intermediate_size = 256;
            c.head_dim = 64;
            random_model(c, 5, Some(GgmlDType::Q4K)).unwrap()
        }),
    ]
}

#[test]
fn kv_cached_decoding_equals_full_recompute() {
    for (name, m) in models() {
        let v = vector(&m, &[0, 2], 1.0);
        let st = steering(&m, &[(v, 1.5)]);
        let full = logits(&m, &st, Mode::Fast);
        let mut cache = KvCache::new(&m);
        // A 4-token prompt, then one token at a time.
        let mut got: Vec<Vec<f32>> = m
            .forward(
                &ids(&TOKENS[..4]),
                0,
                Some(&mut cache),
                &st,
                None,
                Mode::Fast,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for &t in &TOKENS[4..] {
            let l = m
                .forward(
                    &ids(&[t]),
                    cache.len(),
                    Some(&mut cache),
                    &st,
                    None,
                    Mode::Fast,
                )
                .unwrap();
            got.push(l.flatten_all().unwrap().to_vec1().unwrap());
        }
        for (p, (a, b)) in full.iter().zip(&got).enumerate() {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-5, "{name}: position {p} differs by {d}");
        }
    }
}

#[test]
fn multiplier_zero_is_bit_identical_to_no_steering() {
    for (name, m) in models() {
        let v = vector(&m, &[0, 1, 2], 3.0);
        let none = logits(&m, &Steering::none(), Mode::Fast);
        let zero = logits(&m, &steering(&m, &[(v, 0.0)]), Mode::Fast);
        assert_eq!(none, zero, "{name}");
        let steered = logits(
            &m,
            &steering(&m, &[(vector(&m, &[1], 3.0), 1.0)]),
            Mode::Fast,
        );
        assert_ne!(none, steered, "{name}: steering must change the output");
    }
}

#[test]
fn doubled_vector_at_one_equals_vector_at_two() {
    for (name, m) in models() {
        let v = vector(&m, &[1], 1.0);
        let a = logits(&m, &steering(&m, &[(v.scaled(2.0), 1.0)]), Mode::Fast);
        let b = logits(&m, &steering(&m, &[(v, 2.0)]), Mode::Fast);
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn two_vectors_add_up() {
    let (_, m) = models().remove(0);
    let (v1, v2) = (vector(&m, &[1], 1.0), vector(&m, &[1], -0.5));
    let mut sum = v1.clone();
    for (l, d) in sum.layers.iter_mut() {
        d.iter_mut().zip(&v2.layers[l]).for_each(|(a, b)| *a += b);
    }
    let a = logits(&m, &steering(&m, &[(v1, 1.0), (v2, 1.0)]), Mode::Fast);
    let b = logits(&m, &steering(&m, &[(sum, 1.0)]), Mode::Fast);
    assert_eq!(a, b);
}

#[test]
fn fast_and_differentiable_paths_agree_on_dense_weights() {
    let m = random_model(tiny_config(), 7, None).unwrap();
    let st = steering(&m, &[(vector(&m, &[0, 2], 1.0), -1.0)]);
    let a = logits(&m, &st, Mode::Fast);
    let b = logits(&m, &st, Mode::Differentiable);
    let d = common::max_abs_diff(&a, &b);
    assert!(d < 1e-4, "paths differ by {d}");
}

#[test]
fn quantized_fast_path_stays_close_to_dequantized_f32() {
    // Activations are quantized to 8 bits in the fast path, weights are identical.
    // K-quants quantize activations per 256 values instead of 32: a looser bound.
    for (name, m) in models().into_iter().skip(1) {
        let tol = if name.starts_with("Q4K") { 0.1 } else { 0.05 };
        let a = logits(&m, &Steering::none(), Mode::Fast);
        let b = logits(&m, &Steering::none(), Mode::Differentiable);
        let d = common::max_abs_diff(&a, &b);
        let scale = b.iter().flatten().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(
            d < tol * scale,
            "{name}: fast vs f32 differ by {d} (logit scale {scale})"
        );
    }
}

#[test]
fn differentiable_path_gives_a_gradient_for_the_steering_vector() {
    let m = random_model(tiny_config(), 9, Some(GgmlDType::Q4_1)).unwrap();
    let var = Var::zeros(
        m.hidden_size(),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let st = Steering::from_deltas([(1usize, var.as_tensor().clone())].into());
    let l = m
        .forward(&ids(&TOKENS), 0, None, &st, None, Mode::Differentiable)
        .unwrap();
    let loss = l.sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&var).expect("gradient for the steering vector");
    let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(norm > 0.0 && norm.is_finite(), "gradient norm {norm}");
}

#[test]
fn batched_forward_equals_one_sequence_at_a_time() {
    let (_, m) = models().remove(1);
    let st = steering(&m, &[(vector(&m, &[2], 1.0), 1.0)]);
    let rows = [[1u32, 2, 3, 4], [9, 8, 7, 6]];
    let batch = Tensor::new(&rows, m.device()).unwrap();
    let both: Vec<Vec<Vec<f32>>> = m
        .forward(&batch, 0, None, &st, None, Mode::Fast)
        .unwrap()
        .to_vec3()
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        let one: Vec<Vec<f32>> = m
            .forward(&ids(r), 0, None, &st, None, Mode::Fast)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(both[i], one);
    }
}

#[test]
fn sliding_window_limits_attention_to_recent_positions() {
    let mut cfg = tiny_config();
    cfg.sliding_window = Some(3);
    let m = random_model(cfg.clone(), 11, None).unwrap();
    cfg.sliding_window = None;
    let full = random_model(cfg, 11, None).unwrap();
    for mode in [Mode::Fast, Mode::Differentiable] {
        let a = logits(&m, &Steering::none(), mode);
        let b = logits(&full, &Steering::none(), mode);
        // Positions inside the window see the same keys; later ones do not.
        assert_eq!(a[..3], b[..3], "{mode:?}");
        assert_ne!(a[5], b[5], "{mode:?}");
    }
    let fast = logits(&m, &Steering::none(), Mode::Fast);
    let diff = logits(&m, &Steering::none(), Mode::Differentiable);
    let d = common::max_abs_diff(&fast, &diff);
    assert!(d < 1e-4, "windowed paths differ by {d}");
}
