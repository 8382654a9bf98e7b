//! `bipo train`: BiPO on preference pairs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bipo::run::{DataRecord, ModelRecord, RunRecord};
use bipo::train::bipo::{tokenize, Prepared};
use bipo::train::rundir::{writes_run_file, RunDir, Start};
use bipo::train::{Event, TrainConfig, Trainer};
use bipo::util::layers::LayerSpec;
use bipo::VectorMeta;

use crate::args::ModelArgs;
use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Preference pairs: BiPO CSV, CAA/Anthropic JSON(L), {positive,negative} JSONL or DPO JSONL.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Held-out pairs: BiPO loss for +v and -v is reported after every epoch.
    #[arg(long, value_name = "FILE")]
    test: Option<PathBuf>,
    /// Output folder: vector.safetensors, epoch-N.safetensors, run.json, metrics.jsonl, checkpoint.json.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
    /// TOML file with training settings; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// 0-based decoder block whose output is steered: N, -1 (the last), or a fraction of
    /// depth like 0.5 [default: ~45% of the model's depth, e.g. 14 of 30; the BiPO paper
    /// used 15 of 32].
    #[arg(long, allow_hyphen_values = true)]
    layer: Option<LayerSpec>,
    /// Passes over the training pairs [default: 20, the paper's].
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Peak learning rate of AdamW [default: 0.0005, the paper's].
    #[arg(long)]
    lr: Option<f64>,
    /// BiPO's beta [default: 0.1].
    #[arg(long)]
    beta: Option<f64>,
    /// Pairs per optimizer step [default: 4].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Positions the vector is added to while training: all (the paper's), prompt
    /// tokens only, or response tokens only (generated) [default: all].
    #[arg(long, value_name = "all|prompt|generated")]
    positions: Option<bipo::steer::Positions>,
    /// Pairs per forward/backward pass inside a step (gradients are summed): less memory
    /// for large models, the same step up to rounding [default: the whole batch].
    #[arg(long, value_name = "N")]
    micro_batch: Option<usize>,
    /// Linear warm-up steps before the cosine decay [default: 100, but at most 10% of
    /// the schedule's steps].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// AdamW's decoupled weight decay [default: 0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Gradient-norm clipping threshold [default: 1.0].
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Seed of the pair order and of each step's direction [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// System prompt for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Built-in template (llama2, mistral) instead of the model's own.
    #[arg(long)]
    template: Option<String>,
    /// Memory (MB) for cached layer-L states; beyond it they are recomputed each step
    /// [default: 8192].
    #[arg(long)]
    cache_mb: Option<usize>,
    /// Continue from OUT/checkpoint.json (same settings, model and data); reaches the same vector as an uninterrupted run.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace a training run already in OUT (its files are removed first).
    #[arg(long)]
    force: bool,
    /// Also write a checkpoint every N steps inside an epoch (0 = at epoch ends only).
    #[arg(long, value_name = "N", default_value_t = bipo::train::trainer::DEFAULT_CHECKPOINT_EVERY)]
    checkpoint_every: usize,
    /// Drop records with an empty field (listed in run.json) instead of failing.
    #[arg(long)]
    skip_invalid_rows: bool,
}

/// Multipliers at which the held-out margin is reported after training.
const MARGIN_MULTIPLIERS: [f32; 3] = [-1.0, 0.0, 1.0];

/// The settings from `--config` and the flags, and whether a layer was given by either.
fn config(a: &Args) -> Result<(TrainConfig, bool)> {
    let (mut c, layer_in_file) = match &a.config {
        Some(p) => (
            TrainConfig::from_toml(p)?,
            TrainConfig::toml_sets(p, "layer")?,
        ),
        None => (TrainConfig::default(), false),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(x) = a.$f.clone() { c.$f = x; } )* };
    }
    set!(
        epochs,
        lr,
        beta,
        batch_size,
        weight_decay,
        grad_clip,
        seed,
        cache_mb
    );
    if a.warmup_steps.is_some() {
        c.warmup_steps = a.warmup_steps;
    }
    if a.micro_batch.is_some() {
        c.micro_batch = a.micro_batch;
    }
    if let Some(p) = a.positions {
        c.positions = p;
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if a.system.is_some() {
        c.system = a.system.clone();
    }
    if a.template.is_some() {
        c.template = a.template.clone();
    }
    c.validate()?;
    Ok((c, layer_in_file || a.layer.is_some()))
}

pub fn run(a: Args) -> Result<()> {
    let (mut cfg, layer_given) = config(&a)?;
    let model_path = std::path::Path::new(&a.model.model);
    let mut inputs = vec![("--data", a.data.as_path()), ("--model", model_path)];
    inputs.extend(a.test.as_deref().map(|t| ("--test", t)));
    inputs.extend(a.config.as_deref().map(|t| ("--config", t)));
    bipo::util::fs::check_output_dir(&inputs, "--out", &a.out, writes_run_file)?;
    let start = match (a.resume, a.force) {
        (true, _) => Start::Resume,
        (_, true) => Start::Replace,
        _ => Start::Fresh,
    };
    let out = RunDir::open(&a.out, start)?;
    let train = bipo::data::load_pairs_with(&a.data, a.skip_invalid_rows)?;
    let test = a
        .test
        .as_ref()
        .map(|p| bipo::data::load_pairs_with(p, a.skip_invalid_rows))
        .transpose()?;
    for s in train
        .skipped
        .iter()
        .chain(test.iter().flat_map(|t| t.skipped.iter()))
    {
        crate::note!("skipped {s}");
    }
    let lm = a.model.load()?;
    if let Some(spec) = &a.layer {
        cfg.layer = spec
            .resolve_one(lm.model.num_layers())
            .with_context(|| format!("--layer {spec}"))?;
    } else if !layer_given {
        cfg.layer = bipo::train::default_layer(lm.model.num_layers());
        crate::note!(
            "no --layer given: steering layer {} of {} (~45% depth; `bipo sweep-layers` compares layers)",
            cfg.layer,
            lm.model.num_layers()
        );
    }
    if cfg.layer >= lm.model.num_layers() {
        anyhow::bail!(
            "invalid --layer {}: the model has {} layers (0..{})",
            cfg.layer,
            lm.model.num_layers(),
            lm.model.num_layers() - 1
        );
    }
    let template = crate::args::chat_template(&lm, cfg.template.as_deref())?;
    let model_rec = ModelRecord::of(&lm)?;
    let model_sha = model_rec.sha256.clone();
    let record = RunRecord::new(
        "bipo",
        &cfg,
        model_rec,
        DataRecord::of(&a.data, &train),
        a.test
            .as_deref()
            .zip(test.as_ref())
            .map(|(p, t)| DataRecord::of(p, t)),
    );
    if !a.resume {
        // A resumed run keeps the record of the run it continues (the checkpoint
        // proves the inputs are the same).
        record.write(out.path())?;
    }
    let prep = |pairs: &[bipo::data::PreferencePair], what: &str| -> Result<Prepared> {
        let ex = tokenize(pairs, &lm.tokenizer, &template, cfg.system.as_deref())?;
        let pb = Progress::new(
            ex.len() as u64,
            "{spinner} {msg} [{bar:30}] {pos}/{len} {eta}",
        );
        pb.set_message(format!("caching layer {} states ({what})", cfg.layer));
        let mut p = Prepared::new(&lm.model, cfg.layer, ex, cfg.cache_mb << 20, |done, _| {
            pb.set_position(done as u64)
        })?;
        p.set_positions(cfg.positions);
        pb.finish_and_clear();
        Ok(p)
    };
    for w in cfg.warnings(train.pairs.len(), lm.model.hidden_size()) {
        crate::note!("warning: {w}");
    }
    let train_p = prep(&train.pairs, "train")?;
    let test_p = test.as_ref().map(|t| prep(&t.pairs, "test")).transpose()?;
    if !train_p.is_cached() {
        crate::note!(
            "note: layer-{} states exceed --cache-mb {}; recomputing them every step",
            cfg.layer,
            cfg.cache_mb
        );
    }
    let stem = a
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = VectorMeta {
        name: format!("bipo-{stem}-L{}", cfg.layer),
        model: Some(format!(
            "{} {}",
            lm.model.info.source,
            model_sha
                .as_deref()
                .map(|s| format!("sha256:{s}"))
                .unwrap_or_default()
        )),
        method: Some("bipo".into()),
        extra: [
            ("config".to_string(), serde_json::to_string(&cfg)?),
            ("data_sha256".to_string(), train.sha256.clone()),
        ]
        .into(),
    };
    let trainer = Trainer {
        cfg: cfg.clone(),
        train: &train_p,
        test: test_p.as_ref(),
        out: &out,
        meta,
        inputs: record.inputs(),
        checkpoint_every: a.checkpoint_every,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: finish the step and write a checkpoint. Second: exit now.
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            crate::note!(
                "\nstopping after this step; a checkpoint will be written (Ctrl-C again to abort)"
            );
        })
        .context("installing the Ctrl-C handler")?;
    }
    let per_epoch = cfg.steps_per_epoch(train_p.len());
    let total = cfg
        .max_steps
        .map_or(per_epoch * cfg.epochs, |m| m.min(per_epoch * cfg.epochs));
    let pb = Progress::new(
        total as u64,
        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
    );
    pb.set_message("training");
    let outcome = trainer.run(a.resume, &stop, |ev| match ev {
        Event::Step(m) => {
            pb.set_position(m.step as u64 + 1);
            pb.set_message(format!(
                "training  epoch {} loss {:.4} acc {:.2} |v| {:.3}",
                m.epoch + 1,
                m.loss,
                m.accuracy,
                m.vector_norm
            ));
        }
        Event::Epoch(e) => {
            let test = match (e.test_loss_plus, e.test_loss_minus, e.test_margin_plus) {
                (Some(p), Some(m), Some(g)) => {
                    format!(", test loss +v {p:.4} -v {m:.4}, test margin +v {g:+.4}")
                }
                _ => String::new(),
            };
            pb.println(format!(
                "epoch {}: train loss {:.4}{test}",
                e.epoch + 1,
                e.train_loss
            ));
        }
    })?;
    pb.finish_and_clear();
    let path = a.out.join(bipo::train::trainer::VECTOR_FILE);
    if outcome.interrupted {
        crate::note!(
            "interrupted at step {}; resume with --resume. Vector so far: {}",
            outcome.steps,
            path.display()
        );
        std::process::exit(130);
    }
    crate::note!(
        "trained {} steps; vector: {}",
        outcome.steps,
        path.display()
    );
    if let Some(test) = &test_p {
        // The held-out preference margin must rise with the multiplier.
        let v = candle_core::Tensor::new(
            outcome.vector.layers[&cfg.layer].as_slice(),
            lm.model.device(),
        )?;
        let mut rows = Vec::new();
        for m in MARGIN_MULTIPLIERS {
            let margin = test.mean_margin(&v, m, cfg.batch_size)?;
            crate::note!(
                "test mean log-prob margin (matching - opposite) at multiplier {m:+}: {margin:.4}"
            );
            rows.push(serde_json::json!({"multiplier": m, "mean_margin": margin}));
        }
        bipo::util::write_atomic(
            &a.out.join(bipo::train::rundir::TEST_MARGINS_FILE),
            serde_json::to_string_pretty(&rows)?.as_bytes(),
        )?;
    }
    Ok(())
}
