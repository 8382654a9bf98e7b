//! A whole BiPO run as one call: open the run folder, write its record (run.json),
//! tokenize and prepare the pairs (blocks before the layer run once), train with
//! checkpoints and return the outcome. `bipo train`, the BiPO runs inside `compare` and
//! `sweep-layers`, and Python's `bipo.train` all run this, so they produce the same
//! files and the same vector.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::rundir::{RunDir, Start};
use super::trainer::{Outcome, DEFAULT_CHECKPOINT_EVERY};
use super::{Event, TrainConfig, Trainer};
use crate::activations::{tokenize, Prepared};
use crate::data::Dataset;
use crate::error::Result;
use crate::eval::pipeline::template_of;
use crate::load::LoadedModel;
use crate::run::{DataRecord, ModelRecord, RunRecord};
use crate::vector::VectorMeta;

/// One run: what to train on, how, and where.
pub struct TrainJob<'a> {
    pub lm: &'a LoadedModel,
    pub cfg: TrainConfig,
    pub train: &'a Dataset,
    /// Where the training pairs came from, as the run record names it.
    pub train_path: &'a Path,
    /// Held-out pairs (and their source), measured after every epoch.
    pub test: Option<(&'a Dataset, &'a Path)>,
    /// The run folder.
    pub out: &'a Path,
    /// Fresh (refuses an existing run), Replace or Resume.
    pub start: Start,
    /// The vector's name (its metadata).
    pub name: String,
    /// Also checkpoint every this many steps inside an epoch (0: at epoch ends only).
    pub checkpoint_every: usize,
}

impl<'a> TrainJob<'a> {
    /// A job with bipo's defaults for the rest: a fresh run, vector named
    /// `bipo-L<layer>`, the default checkpoint interval.
    pub fn new(
        lm: &'a LoadedModel,
        cfg: TrainConfig,
        train: &'a Dataset,
        train_path: &'a Path,
        out: &'a Path,
    ) -> Self {
        let name = format!("bipo-L{}", cfg.layer);
        Self {
            lm,
            cfg,
            train,
            train_path,
            test: None,
            out,
            start: Start::Fresh,
            name,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// What a run reports as it goes.
pub enum Progress<'e> {
    /// Preparing `what` ("train" or "test"): `done` of `total` examples.
    Preparing {
        what: &'static str,
        done: usize,
        total: usize,
    },
    /// Preparation is over: `total` optimizer steps follow (`cached`: the layer's
    /// inputs fit the cache budget; otherwise they are recomputed every step).
    Training { total: usize, cached: bool },
    /// A step or an epoch ended.
    Event(Event<'e>),
}

/// Multipliers at which a finished run measures its held-out margin.
pub const MARGIN_MULTIPLIERS: [f32; 3] = [-1.0, 0.0, 1.0];

/// How a run ended, with the held-out margins of the final vector.
pub struct RunOutcome {
    pub outcome: Outcome,
    /// (multiplier, mean log-prob margin matching - opposite) on the test pairs at
    /// [`MARGIN_MULTIPLIERS`], when a test set was given and the run finished (also
    /// written to the run folder's `test-margins.json`).
    pub test_margins: Vec<(f32, f64)>,
}

/// Runs the job; `stop` ends it after the current step with a checkpoint written.
pub fn run(
    job: &TrainJob,
    stop: &AtomicBool,
    mut progress: impl FnMut(Progress),
) -> Result<RunOutcome> {
    let (lm, cfg) = (job.lm, &job.cfg);
    cfg.validate()?;
    let template = template_of(lm, cfg.template.as_deref())?;
    let resume = job.start == Start::Resume;
    let dir = RunDir::open(job.out, job.start)?;
    let record = RunRecord::new(
        &cfg.method,
        cfg,
        ModelRecord::of(lm)?,
        DataRecord::of(job.train_path, job.train),
        job.test.map(|(d, p)| DataRecord::of(p, d)),
    );
    if !resume {
        // A resumed run keeps the record of the run it continues (the checkpoint
        // proves the inputs are the same).
        record.write(dir.path())?;
    }
    let mut prepare = |d: &Dataset, what: &'static str| -> Result<Prepared> {
        let ex = tokenize(&d.pairs, &lm.tokenizer, &template, cfg.system.as_deref())?;
        let mut p = Prepared::new(
            &lm.model,
            cfg.layer,
            ex,
            cfg.cache_mb << 20,
            |done, total| progress(Progress::Preparing { what, done, total }),
        )?;
        p.set_positions(cfg.positions);
        p.set_layers(&cfg.steered_layers())?;
        Ok(p)
    };
    let train = prepare(job.train, "train")?;
    let test = job.test.map(|(d, _)| prepare(d, "test")).transpose()?;
    // The sha256 was computed once for the record; identity() reuses it.
    let model = lm.identity()?;
    let meta = VectorMeta {
        name: job.name.clone(),
        model: Some(model),
        method: Some(cfg.method.clone()),
        extra: [
            (
                "config".to_string(),
                serde_json::to_string(cfg).expect("configs serialise"),
            ),
            ("data_sha256".to_string(), job.train.sha256.clone()),
        ]
        .into(),
    };
    let per_epoch = cfg.steps_per_epoch(train.len());
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs, |m| m.min(per_epoch * cfg.epochs));
    progress(Progress::Training {
        total,
        cached: train.is_cached(),
    });
    let trainer = Trainer {
        cfg: cfg.clone(),
        train: &train,
        test: test.as_ref(),
        out: &dir,
        meta,
        inputs: record.inputs(),
        checkpoint_every: job.checkpoint_every,
    };
    let outcome = trainer.run(resume, stop, |ev| progress(Progress::Event(ev)))?;
    let mut test_margins = Vec::new();
    if let (Some(test), false) = (&test, outcome.interrupted) {
        // The held-out preference margin must rise with the multiplier.
        // The directions in layer order, as the trainer holds them.
        let flat: Vec<f32> = outcome.vector.layers.values().flatten().copied().collect();
        let v = candle_core::Tensor::new(flat.as_slice(), lm.model.device())?;
        let mut rows = Vec::new();
        for m in MARGIN_MULTIPLIERS {
            let margin = test.mean_margin(&v, m, cfg.batch_size)?;
            test_margins.push((m, margin as f64));
            rows.push(serde_json::json!({"multiplier": m, "mean_margin": margin}));
        }
        crate::util::write_atomic(
            &dir.path().join(super::rundir::TEST_MARGINS_FILE),
            serde_json::to_string_pretty(&rows)
                .expect("numbers serialise")
                .as_bytes(),
        )?;
    }
    Ok(RunOutcome {
        outcome,
        test_margins,
    })
}
