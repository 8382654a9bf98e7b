//! The training loop on a tiny random model: exact resume, clean stop, checkpoints,
//! refusal to resume with other settings, and the loss falling for both directions.

use std::sync::atomic::{AtomicBool, Ordering};

use bipo::activations::{Example, Prepared};
use bipo::models::random::{random_model, tiny_config};
use bipo::run::RunInputs;
use bipo::train::rundir::{RunDir, Start};
use bipo::train::trainer::{Event, Trainer, CHECKPOINT_FILE, METRICS_FILE, VECTOR_FILE};
use bipo::train::TrainConfig;

fn examples() -> Vec<Example> {
    (0..10u32)
        .map(|i| Example {
            prompt: vec![1, 3 + i, 7, 9 + i % 3],
            responses: [vec![20 + i % 5, 21, 2], vec![40 + i % 7, 2]],
        })
        .collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        layer: 1,
        epochs: 3,
        batch_size: 3,
        warmup_steps: Some(2),
        lr: 0.05,
        ..Default::default()
    }
}

fn trainer<'a, 'm>(p: &'a Prepared<'m>, out: &'a RunDir) -> Trainer<'a, 'm> {
    Trainer {
        cfg: config(),
        train: p,
        test: Some(p),
        out,
        meta: Default::default(),
        inputs: RunInputs {
            data_sha256: Some("d".into()),
            ..Default::default()
        },
        checkpoint_every: 0,
    }
}

fn open(dir: &std::path::Path, start: Start) -> RunDir {
    RunDir::open(dir, start).unwrap()
}

#[test]
fn an_interrupted_run_resumed_reaches_the_same_vector_bit_for_bit() {
    let m = random_model(tiny_config(), 31, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let full_dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let full_out = open(full_dir.path(), Start::Fresh);
    let full = trainer(&p, &full_out).run(false, &never, |_| {}).unwrap();
    assert!(!full.interrupted);
    assert_eq!(full.steps, 12);

    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    // Stop mid-epoch (step 5 of 12), as Ctrl-C does: the step finishes, a checkpoint is written.
    let out = open(dir.path(), Start::Fresh);
    let part = trainer(&p, &out)
        .run(false, &stop, |e| {
            if let Event::Step(s) = e {
                if s.step == 4 {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    assert!(part.interrupted);
    assert_eq!(part.steps, 5);
    assert!(dir.path().join(CHECKPOINT_FILE).is_file());
    drop(out);
    let out = open(dir.path(), Start::Resume);
    let resumed = trainer(&p, &out).run(true, &never, |_| {}).unwrap();
    assert_eq!(resumed.steps, 12);
    assert_eq!(resumed.vector.layers, full.vector.layers);
    let saved = bipo::io::read_vector(&dir.path().join(VECTOR_FILE)).unwrap();
    assert_eq!(saved.layers, full.vector.layers);
    // One metrics line per step and per epoch, none repeated across the interruption,
    // and the same lines as the uninterrupted run.
    let lines = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 12 + 3);
    let full_lines = std::fs::read_to_string(full_dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(lines, full_lines);
}

#[test]
fn a_kill_after_a_mid_epoch_checkpoint_resumes_exactly_without_duplicate_rows() {
    let m = random_model(tiny_config(), 34, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let never = AtomicBool::new(false);
    let full_dir = tempfile::tempdir().unwrap();
    let full_out = open(full_dir.path(), Start::Fresh);
    let full = trainer(&p, &full_out).run(false, &never, |_| {}).unwrap();
    let full_metrics = std::fs::read_to_string(full_dir.path().join(METRICS_FILE)).unwrap();

    // A run checkpointing every 2 steps, "killed" after step 7: the process dies with
    // rows for steps 6 and 7 and half a line written after the step-6 checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let out = open(dir.path(), Start::Fresh);
    let stop = AtomicBool::new(false);
    let mut t = trainer(&p, &out);
    t.checkpoint_every = 2;
    t.run(false, &stop, |e| {
        if let Event::Step(s) = e {
            if s.step == 6 {
                stop.store(true, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    drop(out);
    // Emulate the kill: the Ctrl-C checkpoint at step 7 never happened; the step-6
    // one did (rewrite it from a run stopped there), and a torn line trails the log.
    let ck6 = {
        let d = tempfile::tempdir().unwrap();
        let o = open(d.path(), Start::Fresh);
        let stop = AtomicBool::new(false);
        let mut t = trainer(&p, &o);
        t.checkpoint_every = 2;
        t.run(false, &stop, |e| {
            if let Event::Step(s) = e {
                if s.step == 5 {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
        std::fs::read(d.path().join(CHECKPOINT_FILE)).unwrap()
    };
    std::fs::write(dir.path().join(CHECKPOINT_FILE), ck6).unwrap();
    let mut log = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    log += "{\"type\":\"step\",\"metr";
    std::fs::write(dir.path().join(METRICS_FILE), log).unwrap();

    let out = open(dir.path(), Start::Resume);
    let mut t = trainer(&p, &out);
    t.checkpoint_every = 2;
    let resumed = t.run(true, &never, |_| {}).unwrap();
    assert_eq!(resumed.vector.layers, full.vector.layers);
    let metrics = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(metrics, full_metrics, "each step once, epoch losses exact");
}

#[test]
fn resuming_with_other_data_or_model_is_refused() {
    let m = random_model(tiny_config(), 35, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = open(dir.path(), Start::Fresh);
    trainer(&p, &out)
        .run(false, &AtomicBool::new(true), |_| {})
        .unwrap();
    for (what, inputs) in [
        (
            "--data",
            RunInputs {
                data_sha256: Some("other".into()),
                ..Default::default()
            },
        ),
        (
            "model",
            RunInputs {
                model_sha256: Some("m2".into()),
                data_sha256: Some("d".into()),
                ..Default::default()
            },
        ),
    ] {
        let mut t = trainer(&p, &out);
        t.inputs = inputs;
        let e = t
            .run(true, &AtomicBool::new(false), |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("trained with {what}")), "{e}");
    }
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let m = random_model(tiny_config(), 32, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(true);
    let out = open(dir.path(), Start::Fresh);
    trainer(&p, &out).run(false, &stop, |_| {}).unwrap();
    let mut t = trainer(&p, &out);
    t.cfg.lr = 0.01;
    let e = t
        .run(true, &AtomicBool::new(false), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("different training config") && e.contains("lr"),
        "{e}"
    );
}

#[test]
fn held_out_loss_falls_for_both_directions() {
    let m = random_model(tiny_config(), 33, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = Vec::new();
    let out = open(dir.path(), Start::Fresh);
    trainer(&p, &out)
        .run(false, &AtomicBool::new(false), |e| {
            if let Event::Epoch(m) = e {
                epochs.push((m.test_loss_plus.unwrap(), m.test_loss_minus.unwrap()));
            }
        })
        .unwrap();
    let (first, last) = (epochs[0], *epochs.last().unwrap());
    assert!(last.0 < first.0 && last.1 < first.1, "{epochs:?}");
    assert!(
        last.0 < std::f32::consts::LN_2 && last.1 < std::f32::consts::LN_2,
        "{epochs:?}"
    );
    // One vector file per epoch.
    for e in 1..=3 {
        assert!(dir.path().join(format!("epoch-{e}.safetensors")).is_file());
    }
}

/// The vector a fixed BiPO run on the tiny model reaches, committed before the training
/// code was restructured (objectives, activation engine): any later version must reach
/// it. Bit for bit on the machine that wrote it; the bound leaves room only for a CPU
/// whose GEMM blocks the sums differently (rounding, ~1e-7 relative), not for any change
/// of the algorithm (one step of lr 0.01 moves entries by ~1e-2). `BIPO_WRITE_FIXTURES=1`
/// rewrites the file (only on purpose).
#[test]
fn bipo_reaches_the_committed_vector() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bipo-tiny-run.safetensors");
    let m = random_model(tiny_config(), 36, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = open(dir.path(), Start::Fresh);
    let got = trainer(&p, &out)
        .run(false, &AtomicBool::new(false), |_| {})
        .unwrap()
        .vector;
    if std::env::var_os("BIPO_WRITE_FIXTURES").is_some() {
        bipo::io::safetensors::write(&got, &fixture).unwrap();
    }
    let want = bipo::io::read_vector(&fixture).unwrap();
    assert_eq!(
        got.layers.keys().collect::<Vec<_>>(),
        want.layers.keys().collect::<Vec<_>>()
    );
    let (g, w) = (&got.layers[&1], &want.layers[&1]);
    let scale = w.iter().fold(0f32, |a, x| a.max(x.abs()));
    assert!(scale > 1e-3, "the committed run moved the vector");
    let diff = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        diff <= 1e-5 * scale,
        "max |got - committed| = {diff} (scale {scale})"
    );
}

/// Micro-batches (gradient accumulation) give the whole batch's step up to rounding:
/// batch 3 as parts of 1 and of 2 (uneven: 2 + 1) vs unsplit, same vector to 1e-5.
#[test]
fn micro_batches_reach_the_vector_of_whole_batches() {
    let m = random_model(tiny_config(), 36, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let run = |micro: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let out = open(dir.path(), Start::Fresh);
        let mut t = trainer(&p, &out);
        t.cfg.micro_batch = micro;
        t.run(false, &AtomicBool::new(false), |_| {})
            .unwrap()
            .vector
    };
    let whole = run(None);
    let w = &whole.layers[&1];
    let scale = w.iter().fold(0f32, |a, x| a.max(x.abs()));
    for micro in [1, 2] {
        let got = run(Some(micro));
        let diff = got.layers[&1]
            .iter()
            .zip(w)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "micro {micro}: {diff} (scale {scale})"
        );
    }
    // Parts as large as the batch are the unsplit computation, bit for bit.
    assert_eq!(run(Some(3)).layers, whole.layers);
}

/// Two layers trained jointly: both directions move, the vector file holds both, and a
/// stopped run resumed reaches the uninterrupted run's vector bit for bit.
#[test]
fn a_two_layer_run_saves_both_directions_and_resumes_exactly() {
    let m = random_model(tiny_config(), 37, None).unwrap();
    let mut p = Prepared::new(&m, 0, examples(), usize::MAX, |_, _| {}).unwrap();
    p.set_layers(&[0, 2]).unwrap();
    let cfg = TrainConfig {
        layer: 0,
        layers: vec![0, 2],
        ..config()
    };
    let run = |dir: &std::path::Path, start: Start, stop_after: Option<usize>| {
        let out = open(dir, start);
        let t = Trainer {
            cfg: cfg.clone(),
            ..trainer(&p, &out)
        };
        let stop = AtomicBool::new(false);
        let mut steps = 0;
        t.run(start == Start::Resume, &stop, |e| {
            if let Event::Step(_) = e {
                steps += 1;
                if Some(steps) == stop_after {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        })
        .unwrap()
    };
    let whole = tempfile::tempdir().unwrap();
    let full = run(whole.path(), Start::Fresh, None);
    assert_eq!(
        full.vector.layers.keys().copied().collect::<Vec<_>>(),
        [0, 2]
    );
    assert!(
        full.vector.norms().values().all(|&n| n > 1e-3),
        "{:?}",
        full.vector.norms()
    );
    let file = bipo::io::read_vector(&whole.path().join(VECTOR_FILE)).unwrap();
    assert_eq!(file.layers, full.vector.layers);
    let split = tempfile::tempdir().unwrap();
    assert!(run(split.path(), Start::Fresh, Some(4)).interrupted);
    let rest = run(split.path(), Start::Resume, None);
    assert_eq!(rest.vector.layers, full.vector.layers);
}
