//! A BiPO training run inside another command (`compare`, `sweep-layers`): the same
//! library trainer as `bipo train`, with its outputs (vector, run.json, metrics.jsonl,
//! checkpoint.json) in a folder of its own.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use bipo::data::Dataset;
use bipo::load::LoadedModel;
use bipo::run::{DataRecord, ModelRecord, RunRecord};
use bipo::train::bipo::{tokenize, Prepared};
use bipo::train::rundir::{RunDir, Start};
use bipo::train::{Event, TrainConfig, Trainer};
use bipo::{SteeringVector, VectorMeta};

use crate::commands::eval::bar;

/// Trains a BiPO vector on `data` with `cfg`, writing the run's files into `out`.
pub fn train(
    lm: &LoadedModel,
    cfg: &TrainConfig,
    data: &Dataset,
    data_path: &Path,
    out: &Path,
    name: &str,
) -> Result<SteeringVector> {
    cfg.validate()?;
    let template = crate::args::chat_template(lm, cfg.template.as_deref())?;
    let ex = tokenize(&data.pairs, &lm.tokenizer, &template, cfg.system.as_deref())?;
    // compare and sweep-layers own their output folder: a rerun replaces its run.
    let dir = RunDir::open(out, Start::Replace)?;
    let record = RunRecord::new(
        "bipo",
        cfg,
        ModelRecord::of(lm)?,
        DataRecord::of(data_path, data),
        None,
    );
    record.write(dir.path())?;
    let pb = bar(ex.len() as u64);
    pb.set_message(format!("{name}: caching layer {} states", cfg.layer));
    let mut p = Prepared::new(&lm.model, cfg.layer, ex, cfg.cache_mb << 20, |d, _| {
        pb.set_position(d as u64)
    })?;
    p.set_positions(cfg.positions);
    let meta = VectorMeta {
        name: name.into(),
        model: Some(lm.model.info.source.clone()),
        method: Some("bipo".into()),
        extra: [
            ("config".to_string(), serde_json::to_string(cfg)?),
            ("data_sha256".to_string(), data.sha256.clone()),
        ]
        .into(),
    };
    let trainer = Trainer {
        cfg: cfg.clone(),
        train: &p,
        test: None,
        out: &dir,
        meta,
        inputs: record.inputs(),
        checkpoint_every: bipo::train::trainer::DEFAULT_CHECKPOINT_EVERY,
    };
    let per_epoch = cfg.steps_per_epoch(p.len());
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs, |m| m.min(per_epoch * cfg.epochs));
    pb.set_length(total as u64);
    pb.set_position(0);
    pb.set_message(format!("{name}: training"));
    let never = AtomicBool::new(false);
    let outcome = trainer.run(false, &never, |ev| {
        if let Event::Step(m) = ev {
            pb.set_position(m.step as u64 + 1);
        }
    })?;
    pb.finish_and_clear();
    Ok(outcome.vector)
}
