//! The RePS objective on tiny random models: its loss at v = 0 in closed form, autograd
//! against central differences, the factor draws, and a training run through the same
//! trainer as BiPO (exact resume included).

mod common;

use std::sync::atomic::AtomicBool;

use bipo::activations::{Example, Prepared};
use bipo::models::random::{random_model, tiny_config};
use bipo::run::RunInputs;
use bipo::train::objective::{self, Objective};
use bipo::train::rundir::{RunDir, Start};
use bipo::train::trainer::Trainer;
use bipo::train::TrainConfig;
use candle_core::{Tensor, Var};

fn examples() -> Vec<Example> {
    (0..8u32)
        .map(|i| Example {
            prompt: vec![1, 3 + i, 7, 9 + i % 3],
            responses: [vec![20 + i % 5, 21, 2], vec![40 + i % 7, 33, 34, 2]],
        })
        .collect()
}

fn reps(factors: &[f64]) -> Box<dyn Objective> {
    objective::objective(&TrainConfig {
        method: "reps".into(),
        reps_factors: factors.to_vec(),
        ..Default::default()
    })
    .unwrap()
}

fn loss_at(obj: &dyn Objective, p: &Prepared, v: &[f32], a: f32) -> f64 {
    let t = Tensor::new(v, p.device()).unwrap();
    obj.loss(p, &[0, 1, 2, 3], &t, a)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap() as f64
}

fn softplus_neg(z: f64) -> f64 {
    (1.0 + (-z).exp()).ln()
}

#[test]
fn loss_at_the_zero_vector_has_the_closed_form_of_the_unsteered_model() {
    let m = random_model(tiny_config(), 41, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let obj = reps(&[1.0]);
    let z = vec![0f32; m.hidden_size()];
    // At v = 0 neither intervention changes anything: every log-prob is lp_0.
    let mut want = 0f64;
    for i in 0..4 {
        let [lm, lo] = p.ref_logp[i].map(|x| x as f64);
        let e = &p.examples[i];
        let (nm, no) = (e.responses[0].len() as f64, e.responses[1].len() as f64);
        let (bp, bm) = ((lo - lm).max(1.0), (lm - lo).max(1.0));
        want += softplus_neg(bp * lm / nm - lo / no) + softplus_neg(bm * lo / no - lm / nm);
    }
    want /= 4.0;
    for a in [1.0f32, 2.0] {
        let got = loss_at(obj.as_ref(), &p, &z, a);
        assert!(
            (got - want).abs() < 1e-5 * want.max(1.0),
            "factor {a}: {got} vs closed form {want}"
        );
    }
}

#[test]
fn autograd_gradient_matches_central_finite_differences() {
    let m = random_model(tiny_config(), 42, None).unwrap();
    let p = Prepared::new(&m, 0, examples(), usize::MAX, |_, _| {}).unwrap();
    let obj = reps(&[1.0]);
    // A point where both the steering and the nulling term move.
    let v0: Vec<f32> = (0..m.hidden_size())
        .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
        .collect();
    for a in [1.0f32, 1.5] {
        let var = Var::from_tensor(&Tensor::new(v0.as_slice(), m.device()).unwrap()).unwrap();
        let out = obj.loss(&p, &[0, 1, 2, 3], var.as_tensor(), a).unwrap();
        let grad: Vec<f32> = out
            .loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = grad.iter().map(|g| g.abs() as f64).fold(0.0, f64::max);
        assert!(scale > 1e-4, "no gradient at the test point");
        let worst = common::fd_relative_error(&v0, &grad, &[0, 7, 21, 40, 63], |v| {
            loss_at(obj.as_ref(), &p, v, a)
        });
        assert!(
            worst < 2e-2,
            "factor {a}: finite differences differ by {worst} of the gradient scale"
        );
    }
}

#[test]
fn factors_are_drawn_from_the_set_reproducibly() {
    let obj = reps(&[0.5, 1.0, 2.0]);
    let draws: Vec<f32> = (0..60).map(|s| obj.draw(7, s)).collect();
    for f in [0.5, 1.0, 2.0] {
        assert!(draws.contains(&f), "factor {f} never drawn");
    }
    assert!(draws.iter().all(|d| [0.5, 1.0, 2.0].contains(d)));
    assert_eq!(draws, (0..60).map(|s| obj.draw(7, s)).collect::<Vec<_>>());
    assert_ne!(draws, (0..60).map(|s| obj.draw(8, s)).collect::<Vec<_>>());
}

#[test]
fn an_unknown_method_is_refused_naming_the_choices() {
    let cfg = TrainConfig {
        method: "dpo".into(),
        ..Default::default()
    };
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("dpo") && e.contains("bipo") && e.contains("reps"),
        "{e}"
    );
    let cfg = TrainConfig {
        method: "reps".into(),
        reps_factors: vec![1.0, -1.0],
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("reps_factors"));
}

/// The trainer runs RePS like BiPO: the held-out RePS loss falls, and a stopped run
/// resumed reaches the uninterrupted run's vector bit for bit.
#[test]
fn training_lowers_the_held_out_loss_and_resumes_exactly() {
    let m = random_model(tiny_config(), 43, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let cfg = TrainConfig {
        method: "reps".into(),
        layer: 1,
        epochs: 4,
        batch_size: 3,
        warmup_steps: Some(2),
        lr: 0.05,
        ..Default::default()
    };
    let run = |dir: &std::path::Path, start, resume, stop_after: Option<usize>| {
        let out = RunDir::open(dir, start).unwrap();
        let t = Trainer {
            cfg: cfg.clone(),
            train: &p,
            test: Some(&p),
            out: &out,
            meta: Default::default(),
            inputs: RunInputs::default(),
            checkpoint_every: 0,
        };
        let stop = AtomicBool::new(false);
        let mut test_losses = Vec::new();
        let mut steps = 0;
        let o = t
            .run(resume, &stop, |e| match e {
                bipo::train::Event::Step(_) => {
                    steps += 1;
                    if Some(steps) == stop_after {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                bipo::train::Event::Epoch(m) => {
                    assert!(m.test_loss_minus.is_none(), "RePS reports no -v loss");
                    test_losses.push(m.test_loss_plus.unwrap());
                }
            })
            .unwrap();
        (o, test_losses)
    };
    let whole = tempfile::tempdir().unwrap();
    let (full, losses) = run(whole.path(), Start::Fresh, false, None);
    assert_eq!(losses.len(), 4);
    assert!(
        losses[3] < losses[0] - 1e-3,
        "held-out RePS loss did not fall: {losses:?}"
    );
    let split = tempfile::tempdir().unwrap();
    let (first, _) = run(split.path(), Start::Fresh, false, Some(5));
    assert!(first.interrupted);
    let (rest, _) = run(split.path(), Start::Resume, true, None);
    assert_eq!(rest.vector.layers, full.vector.layers);
}
