//! A BiPO training run inside another command (`compare`, `sweep-layers`): the same
//! library trainer as `bipo train`, with its outputs (vector, run.json, metrics.jsonl,
//! checkpoint.json) in a folder of its own.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use bipo::data::Dataset;
use bipo::load::LoadedModel;
use bipo::train::bipo::{tokenize, Prepared};
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
    let record = serde_json::json!({
        "tool": format!("bipo {}", env!("CARGO_PKG_VERSION")),
        "method": "bipo",
        "config": cfg,
        "model": { "source": &lm.model.info.source },
        "data": { "path": data_path, "sha256": &data.sha256, "pairs": data.pairs.len(), "skipped": &data.skipped },
    });
    bipo::train::trainer::write_run_record(out, &record)?;
    let pb = bar(ex.len() as u64);
    pb.set_message(format!("{name}: caching layer {} states", cfg.layer));
    let p = Prepared::new(&lm.model, cfg.layer, ex, cfg.cache_mb << 20, |d, _| {
        pb.set_position(d as u64)
    })?;
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
        out_dir: out.to_path_buf(),
        meta,
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
