//! The BiPO loss: autograd gradient against finite differences on a tiny random model,
//! and the cached fast path against the plain reference computation.

mod common;

use bipo::activations::{Example, Prepared};
use bipo::models::random::{random_model, tiny_config};
use candle_core::{Tensor, Var};

/// Budget large enough to cache every prefix in these tests.
const ALL: usize = 1 << 30;

fn tiny_examples() -> Vec<Example> {
    vec![
        Example {
            prompt: vec![1, 5, 9, 12],
            responses: [vec![20, 21, 2], vec![30, 2]],
        },
        Example {
            prompt: vec![1, 7, 7],
            responses: [vec![40, 41, 42, 2], vec![50, 51, 2]],
        },
        Example {
            prompt: vec![1, 3, 4, 5, 6],
            responses: [vec![60, 2], vec![70, 71, 72, 2]],
        },
    ]
}

fn loss_at(p: &Prepared, v: &[f32], d: f32) -> f64 {
    let t = Tensor::new(v, &candle_core::Device::Cpu).unwrap();
    p.loss(&[0, 1, 2], &t, d, 0.1)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn autograd_gradient_matches_central_finite_differences() {
    let m = random_model(tiny_config(), 21, None).unwrap();
    let p = Prepared::new(&m, 0, tiny_examples(), ALL, |_, _| {}).unwrap();
    // A non-zero point, so the loss is not at its symmetric value log 2.
    let v0: Vec<f32> = (0..m.hidden_size())
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    for d in [1.0f32, -1.0] {
        let var = Var::from_tensor(&Tensor::new(v0.as_slice(), m.device()).unwrap()).unwrap();
        let out = p.loss(&[0, 1, 2], var.as_tensor(), d, 0.1).unwrap();
        let grad: Vec<f32> = out
            .loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .to_vec1()
            .unwrap();
        let coords = [0, 7, 21, 40, 63];
        let worst = common::fd_relative_error(&v0, &grad, &coords, |v| loss_at(&p, v, d));
        // Tolerance: 2% of the largest gradient component (f32 loss, h = 1e-2).
        assert!(
            worst < 2e-2,
            "d={d}: finite differences differ by {worst} of the gradient scale"
        );
    }
}

#[test]
fn loss_at_the_zero_vector_is_log_two_for_both_directions() {
    let m = random_model(tiny_config(), 22, None).unwrap();
    let p = Prepared::new(&m, 1, tiny_examples(), ALL, |_, _| {}).unwrap();
    let z = vec![0f32; m.hidden_size()];
    for d in [1.0, -1.0] {
        assert!((loss_at(&p, &z, d) - std::f64::consts::LN_2).abs() < 1e-5);
    }
}

#[test]
fn cached_and_uncached_prefixes_give_the_same_loss() {
    let m = random_model(tiny_config(), 23, None).unwrap();
    let cached = Prepared::new(&m, 1, tiny_examples(), ALL, |_, _| {}).unwrap();
    let uncached = Prepared::new(&m, 1, tiny_examples(), 0, |_, _| {}).unwrap();
    assert!(cached.is_cached() && !uncached.is_cached());
    let v: Vec<f32> = (0..m.hidden_size())
        .map(|i| (i as f32).sin() * 0.3)
        .collect();
    let (a, b) = (loss_at(&cached, &v, 1.0), loss_at(&uncached, &v, 1.0));
    assert!((a - b).abs() < 1e-6 * a.abs().max(1.0), "{a} vs {b}");
}

#[test]
fn cached_training_loss_and_gradient_equal_the_plain_full_forward_on_the_default_model() {
    let lm = bipo::load::load(common::default_model().to_str().unwrap(), &exact()).unwrap();
    let pairs = bipo::data::load_pairs_with(
        &common::root().join("../shared/data/bipo/power-seeking/train.csv"),
        true,
    )
    .unwrap();
    let template = lm.chat_template.clone().unwrap();
    let ex =
        bipo::activations::tokenize(&pairs.pairs[..4], &lm.tokenizer, &template, None).unwrap();
    let p = Prepared::new(&lm.model, 15, ex, ALL, |_, _| {}).unwrap();
    let v0: Vec<f32> = (0..lm.model.hidden_size())
        .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.02)
        .collect();
    let idx = [0, 1, 2, 3];
    for d in [1.0f32, -1.0] {
        let run = |plain: bool| {
            let var =
                Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device()).unwrap()).unwrap();
            let out = if plain {
                p.loss_plain(&idx, var.as_tensor(), d, 0.1)
            } else {
                p.loss(&idx, var.as_tensor(), d, 0.1)
            }
            .unwrap();
            let loss = out.loss.to_scalar::<f32>().unwrap();
            let g: Vec<f32> = out
                .loss
                .backward()
                .unwrap()
                .get(&var)
                .unwrap()
                .to_vec1()
                .unwrap();
            (loss, g)
        };
        let ((l1, g1), (l2, g2)) = (run(false), run(true));
        let rel = ((l1 - l2) / l2).abs();
        assert!(
            rel < 1e-4,
            "d={d}: loss {l1} vs plain {l2} (relative {rel})"
        );
        let norm = |g: &[f32]| g.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff: Vec<f32> = g1.iter().zip(&g2).map(|(a, b)| a - b).collect();
        let grel = norm(&diff) / norm(&g2);
        assert!(
            grel < 1e-4,
            "d={d}: gradient differs by {grel} (relative norm)"
        );
        eprintln!("d={d}: loss {l1} vs {l2}, gradient relative difference {grel:.2e}");
    }
}

/// Training in f32 arithmetic on the stored weights: the layouts compared below then
/// agree to f32 rounding. (The default fast path rounds to bf16, which turns f32-level
/// differences between two layouts into occasional rounding flips.)
fn exact() -> bipo::load::LoadOptions {
    bipo::load::LoadOptions {
        train_weights: bipo::models::TrainWeights::Stored,
        ..Default::default()
    }
}

/// Loss and gradient of a batch of the project's optimism pairs on the default model.
fn default_model_loss(train: bipo::models::TrainWeights) -> (f32, Vec<f32>) {
    let path = common::default_model();
    let opts = bipo::load::LoadOptions {
        train_weights: train,
        ..Default::default()
    };
    let lm = bipo::load::load(path.to_str().unwrap(), &opts).unwrap();
    let data = bipo::data::load_pairs(&common::root().join("data/optimism/train.csv")).unwrap();
    let template = lm.chat_template.clone().unwrap();
    let ex = bipo::activations::tokenize(&data.pairs[..4], &lm.tokenizer, &template, None).unwrap();
    let p = Prepared::new(&lm.model, 24, ex, ALL, |_, _| {}).unwrap();
    let v0: Vec<f32> = (0..lm.model.hidden_size())
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    let var = Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device()).unwrap()).unwrap();
    let out = p.loss(&[0, 1, 2, 3], var.as_tensor(), 1.0, 0.1).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    let g = out
        .loss
        .backward()
        .unwrap()
        .get(&var)
        .unwrap()
        .to_vec1()
        .unwrap();
    (loss, g)
}

#[test]
fn training_on_stored_quantized_weights_equals_the_f32_copy() {
    use bipo::models::TrainWeights;
    let (l_q, g_q) = default_model_loss(TrainWeights::Stored);
    let (l_f, g_f) = default_model_loss(TrainWeights::F32);
    // The same weights (dequantized exactly); only the order of f32 additions differs.
    assert!(
        (l_q - l_f).abs() <= 1e-5 * l_f.abs().max(1.0),
        "loss {l_q} vs {l_f}"
    );
    let scale = g_f.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = g_q
        .iter()
        .zip(&g_f)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("loss stored {l_q} f32 {l_f}; gradient max |diff| {worst:e} of max |g| {scale:e}");
    assert!(
        scale > 0.0 && worst <= 1e-4 * scale,
        "gradient: worst {worst} of scale {scale}"
    );
}

/// Position modes in training: the packed, prefix-cached loss steering only prompt or
/// only response positions equals the plain padded full forward with the same mask (two
/// independent layouts), and each mode differs from steering everything.
#[test]
fn prompt_only_and_response_only_losses_equal_masked_full_forwards() {
    use bipo::steer::Positions;
    let lm = bipo::load::load(common::default_model().to_str().unwrap(), &exact()).unwrap();
    let pairs = bipo::data::load_pairs_with(
        &common::root().join("../shared/data/bipo/power-seeking/train.csv"),
        true,
    )
    .unwrap();
    let template = lm.chat_template.clone().unwrap();
    let ex =
        bipo::activations::tokenize(&pairs.pairs[..3], &lm.tokenizer, &template, None).unwrap();
    let mut p = Prepared::new(&lm.model, 15, ex, ALL, |_, _| {}).unwrap();
    let v0: Vec<f32> = (0..lm.model.hidden_size())
        .map(|i| ((i * 7 % 31) as f32 - 15.0) * 0.05)
        .collect();
    let idx = [0, 1, 2];
    let mut losses = Vec::new();
    for mode in [Positions::All, Positions::Prompt, Positions::Generated] {
        p.set_positions(mode);
        let run = |plain: bool| {
            let var =
                Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device()).unwrap()).unwrap();
            let out = if plain {
                p.loss_plain(&idx, var.as_tensor(), 1.0, 0.1)
            } else {
                p.loss(&idx, var.as_tensor(), 1.0, 0.1)
            }
            .unwrap();
            let g: Vec<f32> = out
                .loss
                .backward()
                .unwrap()
                .get(&var)
                .unwrap()
                .to_vec1()
                .unwrap();
            (out.loss.to_scalar::<f32>().unwrap(), g)
        };
        let ((l1, g1), (l2, g2)) = (run(false), run(true));
        assert!(((l1 - l2) / l2).abs() < 1e-4, "{mode}: {l1} vs plain {l2}");
        let norm = |g: &[f32]| g.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff: Vec<f32> = g1.iter().zip(&g2).map(|(a, b)| a - b).collect();
        assert!(norm(&diff) / norm(&g2) < 1e-3, "{mode}: gradient");
        losses.push(l1);
    }
    assert_ne!(losses[1], losses[0], "prompt-only differs from all");
    assert_ne!(losses[2], losses[0], "response-only differs from all");
    assert_ne!(losses[1], losses[2]);
}

/// A two-layer vector (blocks 0 and 2 of 3, cache at block 0, block 2 steered inside
/// the differentiable forward): the cached loss and gradient equal the plain full
/// forward's, and autograd matches central differences on coordinates of both layers.
#[test]
fn a_two_layer_vector_trains_through_the_cache_like_the_full_forward() {
    let m = random_model(tiny_config(), 24, None).unwrap();
    let mut p = Prepared::new(&m, 0, tiny_examples(), ALL, |_, _| {}).unwrap();
    p.set_layers(&[0, 2]).unwrap();
    let h = m.hidden_size();
    let v0: Vec<f32> = (0..2 * h)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    let idx = [0, 1, 2];
    let run = |plain: bool, v: &[f32]| {
        let var = Var::from_tensor(&Tensor::new(v, m.device()).unwrap()).unwrap();
        let out = if plain {
            p.loss_plain(&idx, var.as_tensor(), 1.0, 0.1)
        } else {
            p.loss(&idx, var.as_tensor(), 1.0, 0.1)
        }
        .unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        let g: Vec<f32> = out
            .loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .to_vec1()
            .unwrap();
        (loss, g)
    };
    let ((lc, gc), (lp, gp)) = (run(false, &v0), run(true, &v0));
    assert!((lc - lp).abs() < 1e-5 * lc.abs().max(1.0), "{lc} vs {lp}");
    let scale = gp.iter().fold(0f32, |a, x| a.max(x.abs()));
    let diff = gc
        .iter()
        .zip(&gp)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        diff < 1e-4 * scale,
        "gradients differ by {diff} (scale {scale})"
    );
    // Both layers' directions receive gradient.
    for half in [&gc[..h], &gc[h..]] {
        assert!(half.iter().any(|g| g.abs() > 1e-6 * scale));
    }
    let coords = [3, 40, h + 5, h + 50];
    let worst = common::fd_relative_error(&v0, &gc, &coords, |v| run(false, v).0);
    assert!(
        worst < 2e-2,
        "finite differences differ by {worst} of the scale"
    );
    // A vector of the wrong width is refused, naming the layers.
    let short = Tensor::new(&v0[..h], m.device()).unwrap();
    let e = p.loss(&idx, &short, 1.0, 0.1).err().unwrap().to_string();
    assert!(e.contains("2 layer(s)"), "{e}");
    assert!(
        p.set_layers(&[1, 2]).is_err(),
        "layers must start at the cached one"
    );
}

/// The fast path rounds activations, gradients and weight panels to bf16 in its
/// products (where [`bipo::kernels::bf16::preferred`]): the loss and gradient move by
/// that rounding only.
#[test]
fn fast_training_path_is_close_to_the_f32_copy() {
    use bipo::models::TrainWeights;
    let (l_q, g_q) = default_model_loss(TrainWeights::Fast);
    let (l_f, g_f) = default_model_loss(TrainWeights::F32);
    let dot: f64 = g_q.iter().zip(&g_f).map(|(a, b)| (a * b) as f64).sum();
    let nq: f64 = g_q.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
    let nf: f64 = g_f.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
    let cos = dot / (nq * nf);
    let rel = g_q
        .iter()
        .zip(&g_f)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        / nf;
    println!("loss fast {l_q} f32 {l_f}; gradient cosine {cos:.6}, relative difference {rel:.2e}");
    // Measured with bf16 on AVX-512: loss 0.69894 vs 0.69822, gradient cosine 0.99994,
    // relative difference 1.1e-2; on AMX tiles: 0.69391, 0.99993, 1.25e-2. The two bf16
    // paths differ only in the order of f32 sums, yet as much from each other as from
    // f32: one flipped rounding early on sends the rest of the forward down another,
    // equally rounded, path. Their summed response log-probabilities (about -55 nats)
    // sit 0.01-0.30 nats from f32's either way, and the loss moves by beta / 2 per nat
    // of margin: 0.02 bounds that. (8-bit activations, tried first, gave 0.6807,
    // 0.9992, 4.1e-2.)
    assert!((l_q - l_f).abs() <= 2e-2, "loss {l_q} vs {l_f}");
    assert!(
        cos > 0.99 && rel < 0.1,
        "gradient cosine {cos}, relative {rel}"
    );
}
