//! A BiPO training run inside another command (`compare`, `sweep-layers`): the
//! library's training pipeline, as `bipo train` runs it, with its outputs (vector,
//! run.json, metrics.jsonl, checkpoint.json) in a folder of its own.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use bipo::data::Dataset;
use bipo::load::LoadedModel;
use bipo::train::pipeline::{self, Progress, TrainJob};
use bipo::train::rundir::Start;
use bipo::train::{Event, TrainConfig};
use bipo::SteeringVector;

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
    // The CLI's hint for a model without a chat template.
    crate::args::chat_template(lm, cfg.template.as_deref())?;
    let mut job = TrainJob::new(lm, cfg.clone(), data, data_path, out);
    // compare and sweep-layers own their output folder: a rerun replaces its run.
    job.start = Start::Replace;
    job.name = name.into();
    let pb = bar(0);
    let never = AtomicBool::new(false);
    let done = pipeline::run(&job, &never, |p| match p {
        Progress::Preparing { done, total, .. } => {
            pb.set_message(format!("{name}: caching layer {} states", cfg.layer));
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
        Progress::Training { total, .. } => {
            pb.set_length(total as u64);
            pb.set_position(0);
            pb.set_message(format!("{name}: training"));
        }
        Progress::Event(Event::Step(m)) => pb.set_position(m.step as u64 + 1),
        Progress::Event(Event::Epoch(_)) => {}
    })?;
    pb.finish_and_clear();
    Ok(done.outcome.vector)
}
