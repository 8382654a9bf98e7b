//! The training loop on a tiny random model: exact resume, clean stop, checkpoints,
//! refusal to resume with other settings, and the loss falling for both directions.

use std::sync::atomic::{AtomicBool, Ordering};

use bipo::models::random::{random_model, tiny_config};
use bipo::train::bipo::{Example, Prepared};
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
        warmup_steps: 2,
        lr: 0.05,
        ..Default::default()
    }
}

fn trainer<'a, 'm>(p: &'a Prepared<'m>, dir: &std::path::Path) -> Trainer<'a, 'm> {
    Trainer {
        cfg: config(),
        train: p,
        test: Some(p),
        out_dir: dir.to_path_buf(),
        meta: Default::default(),
    }
}

#[test]
fn an_interrupted_run_resumed_reaches_the_same_vector_bit_for_bit() {
    let m = random_model(tiny_config(), 31, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let full_dir = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let full = trainer(&p, full_dir.path())
        .run(false, &never, |_| {})
        .unwrap();
    assert!(!full.interrupted);
    assert_eq!(full.steps, 12);

    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    // Stop mid-epoch (step 5 of 12), as Ctrl-C does: the step finishes, a checkpoint is written.
    let part = trainer(&p, dir.path())
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
    let resumed = trainer(&p, dir.path()).run(true, &never, |_| {}).unwrap();
    assert_eq!(resumed.steps, 12);
    assert_eq!(resumed.vector.layers, full.vector.layers);
    let saved = bipo::io::read_vector(&dir.path().join(VECTOR_FILE)).unwrap();
    assert_eq!(saved.layers, full.vector.layers);
    // One metrics line per step and per epoch, none repeated across the interruption.
    let lines = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 12 + 3);
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let m = random_model(tiny_config(), 32, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(true);
    trainer(&p, dir.path()).run(false, &stop, |_| {}).unwrap();
    let mut t = trainer(&p, dir.path());
    t.cfg.lr = 0.01;
    let e = t
        .run(true, &AtomicBool::new(false), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("different training config"), "{e}");
}

#[test]
fn held_out_loss_falls_for_both_directions() {
    let m = random_model(tiny_config(), 33, None).unwrap();
    let p = Prepared::new(&m, 1, examples(), usize::MAX, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut epochs = Vec::new();
    trainer(&p, dir.path())
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
