//! Evaluation engine: the prefix-cached steered log-probabilities equal a full steered
//! forward, multiplier 0 is the unsteered model bit for bit, damage is zero at
//! multiplier 0 and grows with it, and CAA recovers a planted direction.

use bipo::activations::{Example, Prepared};
use bipo::baselines::{caa, pair_differences, pca_diff, ReadAt};
use bipo::eval::damage::DamageSet;
use bipo::models::random::{random_model, tiny_config};
use bipo::models::{Mode, Model};
use bipo::steer::Steering;
use bipo::{SteeringVector, VectorMeta};
use candle_core::{Device, Tensor, D};

fn examples() -> Vec<Example> {
    vec![
        Example {
            prompt: vec![1, 5, 9, 12],
            responses: [vec![20, 21], vec![30]],
        },
        Example {
            prompt: vec![1, 7, 7],
            responses: [vec![40, 41, 42], vec![50, 51]],
        },
        Example {
            prompt: vec![1, 3, 4, 5, 6],
            responses: [vec![60], vec![70, 71, 72]],
        },
    ]
}

fn vector(m: &Model, layers: &[usize], seed: f32) -> SteeringVector {
    let h = m.hidden_size();
    SteeringVector {
        layers: layers
            .iter()
            .map(|&l| {
                (
                    l,
                    (0..h)
                        .map(|i| ((i as f32 * 0.37 + seed + l as f32).sin()) * 0.5)
                        .collect(),
                )
            })
            .collect(),
        meta: VectorMeta {
            name: "t".into(),
            ..Default::default()
        },
    }
}

/// Summed log-prob of `resp` after `prompt` from one full forward with `steering`.
fn full_logp(m: &Model, prompt: &[u32], resp: &[u32], steering: &Steering) -> f32 {
    let ids: Vec<u32> = prompt.iter().chain(resp).copied().collect();
    let t = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = m.forward(&t, 0, None, steering, None, Mode::Fast).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap();
    let lp: Vec<Vec<f32>> = lp.to_vec2().unwrap();
    resp.iter()
        .enumerate()
        .map(|(k, &tok)| lp[prompt.len() + k - 1][tok as usize])
        .sum()
}

#[test]
fn cached_prefix_steered_logprobs_equal_a_full_steered_forward() {
    let m = random_model(tiny_config(), 3, None).unwrap();
    // Steer layer 1 and a later layer 2 from a prefix cached at layer 1.
    let v = vector(&m, &[1, 2], 0.3);
    let p = Prepared::new(&m, 1, examples(), 1 << 30, |_, _| {}).unwrap();
    for k in [-2.0f32, 0.5, 3.0] {
        let s = Steering::from_vectors(&[(v.clone(), k)], &Device::Cpu, m.dtype()).unwrap();
        let got = p.response_logps(&s, 2).unwrap();
        for (e, g) in examples().iter().zip(&got) {
            for (resp, got) in e.responses.iter().zip(g) {
                let want = full_logp(&m, &e.prompt, resp, &s);
                assert!((want - got).abs() < 1e-4, "m {k}: {want} vs {got}");
            }
        }
    }
}

#[test]
fn multiplier_zero_is_the_unsteered_model_bit_for_bit_and_early_layers_are_refused() {
    let m = random_model(tiny_config(), 4, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), 1 << 30, |_, _| {}).unwrap();
    let v = vector(&m, &[1], 0.1);
    let zero = Steering::from_vectors(&[(v, 0.0)], &Device::Cpu, m.dtype()).unwrap();
    assert_eq!(p.response_logps(&zero, 3).unwrap(), p.ref_logp);
    let early =
        Steering::from_vectors(&[(vector(&m, &[0], 0.2), 1.0)], &Device::Cpu, m.dtype()).unwrap();
    let e = p.response_logps(&early, 3).unwrap_err().to_string();
    assert!(e.contains("layer 0") && e.contains("cached layer 1"), "{e}");
}

#[test]
fn damage_is_zero_at_multiplier_zero_and_grows_with_the_multiplier() {
    let cfg = tiny_config();
    let m = random_model(cfg, 5, None).unwrap();
    let set = DamageSet::from_ids(&m, vec![vec![1, 5, 9, 12, 3, 4], vec![1, 7, 7, 8]], 1).unwrap();
    let v = vector(&m, &[1], 0.7);
    let settings: Vec<Steering> = [0.0f32, 1.0, 4.0]
        .iter()
        .map(|&k| Steering::from_vectors(&[(v.clone(), k)], &Device::Cpu, m.dtype()).unwrap())
        .collect();
    let d = set.measure(&settings).unwrap();
    assert_eq!(d[0].kl, 0.0);
    assert!(d[1].kl > 0.0 && d[2].kl > d[1].kl, "{d:?}");
    assert!(d[0].perplexity > 1.0);
}

/// Block `layer`'s output for one sequence, by a plain forward: (t, hidden).
fn states(m: &Model, ids: &[u32], layer: usize) -> Vec<Vec<f32>> {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let xs = m.embed(&t).unwrap();
    let hs = m
        .run_blocks(&xs, 0..layer + 1, 0, None, &Steering::none(), Mode::Fast)
        .unwrap();
    hs.squeeze(0).unwrap().to_vec2().unwrap()
}

#[test]
fn pair_differences_read_the_same_activations_as_separate_forwards() {
    let m = random_model(tiny_config(), 6, None).unwrap();
    for read_at in [ReadAt::Last, ReadAt::Mean] {
        let d = pair_differences(&m, examples(), &[0, 1], read_at, |_, _| {}).unwrap();
        for layer in [0, 1] {
            for (e, got) in examples().iter().zip(&d[&layer]) {
                let read = |w: usize| -> Vec<f32> {
                    let ids: Vec<u32> = e.prompt.iter().chain(&e.responses[w]).copied().collect();
                    let st = states(&m, &ids, layer);
                    let rows = &st[e.prompt.len()..];
                    match read_at {
                        ReadAt::Last => rows[rows.len() - 1].clone(),
                        ReadAt::Mean => (0..rows[0].len())
                            .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32)
                            .collect(),
                    }
                };
                let (a, b) = (read(0), read(1));
                for j in 0..a.len() {
                    assert!(
                        (a[j] - b[j] - got[j]).abs() < 1e-4,
                        "{read_at:?} layer {layer}"
                    );
                }
            }
        }
        // CAA is their mean; PCA shares its norm and (by construction) its sign.
        let c = caa(&d, VectorMeta::default());
        let p = pca_diff(&d, VectorMeta::default());
        let dot: f32 = c.layers[&1]
            .iter()
            .zip(&p.layers[&1])
            .map(|(x, y)| x * y)
            .sum();
        assert!(dot > 0.0);
        assert!((c.norms()[&1] - p.norms()[&1]).abs() < 1e-3);
    }
}

#[test]
fn mean_centring_subtracts_the_reference_mean_of_every_token() {
    use bipo::baselines::{differences_of, mean_centring, neutral_means, pair_reads};
    let m = random_model(tiny_config(), 6, None).unwrap();
    let texts: Vec<Vec<u32>> = vec![vec![1, 8, 9, 10, 11], vec![1, 12, 13]];
    let layers = [0, 1];
    let neutral = neutral_means(&m, &texts, &layers).unwrap();
    // The reference mean equals the token-weighted mean of separate full forwards.
    for &l in &layers {
        let rows: Vec<Vec<f32>> = texts.iter().flat_map(|t| states(&m, t, l)).collect();
        for j in 0..m.hidden_size() {
            let want = rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32;
            assert!((neutral[&l][j] - want).abs() < 1e-4, "layer {l}");
        }
    }
    let reads = pair_reads(&m, examples(), &layers, ReadAt::Mean, |_, _| {}).unwrap();
    let mc = mean_centring(&reads, &neutral, VectorMeta::default()).unwrap();
    // With "all responses" as the reference instead of neutral text, mean-centring is
    // exactly half of CAA (a closed form that checks the matching side is read).
    let all: std::collections::BTreeMap<usize, Vec<f32>> = reads
        .iter()
        .map(|(l, rows)| {
            let n = 2.0 * rows.len() as f32;
            let h = rows[0][0].len();
            let s = (0..h)
                .map(|j| rows.iter().map(|[a, b]| a[j] + b[j]).sum::<f32>() / n)
                .collect();
            (*l, s)
        })
        .collect();
    let half = mean_centring(&reads, &all, VectorMeta::default()).unwrap();
    let c = caa(&differences_of(&reads), VectorMeta::default());
    for &l in &layers {
        for (x, y) in half.layers[&l].iter().zip(&c.layers[&l]) {
            assert!((x - y / 2.0).abs() < 1e-5, "layer {l}: {x} vs {}", y / 2.0);
        }
        // And the neutral reference gives a different direction from CAA's.
        assert_ne!(mc.layers[&l], half.layers[&l]);
    }
}
