//! `bipo train`: BiPO on preference pairs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bipo::train::pipeline::{Progress as TrainProgress, TrainJob};
use bipo::train::rundir::{writes_run_file, Start};
use bipo::train::{Event, TrainConfig};
use bipo::util::layers::LayerSpec;

use crate::args::ModelArgs;
use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Preference pairs: BiPO CSV, CAA/Anthropic JSON(L), {positive,negative} JSONL or DPO JSONL.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Held-out pairs: the loss for +v (and, for BiPO, -v) is reported after every epoch.
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
    /// used 15 of 32]. Several (`12,15`, `10-14`) train one direction per block jointly
    /// (BiPO), with the blocks before the lowest cached.
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
    /// Objective: bipo (the paper's Eq. 3) or reps (reference-free preference steering,
    /// Wu et al. 2025) [default: bipo].
    #[arg(long, value_name = "bipo|reps")]
    method: Option<String>,
    /// BiPO's beta [default: 0.1].
    #[arg(long)]
    beta: Option<f64>,
    /// RePS: steering factors sampled per step, comma-separated [default: 0.5,1,1.5,2].
    #[arg(long, value_name = "A,B,..", value_delimiter = ',')]
    reps_factors: Option<Vec<f64>>,
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
        method,
        reps_factors,
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
        let layers = spec
            .resolve(lm.model.num_layers())
            .with_context(|| format!("--layer {spec}"))?;
        cfg.layer = layers[0];
        cfg.layers = if layers.len() > 1 { layers } else { Vec::new() };
        cfg.validate().with_context(|| format!("--layer {spec}"))?;
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
    // The CLI's hint for a model without a chat template.
    crate::args::chat_template(&lm, cfg.template.as_deref())?;
    for w in cfg.warnings(train.pairs.len(), lm.model.hidden_size()) {
        crate::note!("warning: {w}");
    }
    let stem = a
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::verbose!("settings: {}", serde_json::to_string(&cfg)?);
    let mut job = TrainJob::new(&lm, cfg.clone(), &train, &a.data, &a.out);
    job.test = a
        .test
        .as_deref()
        .and_then(|p| test.as_ref().map(|t| (t, p)));
    job.start = start;
    job.name = format!("bipo-{stem}-L{}", cfg.layer);
    job.checkpoint_every = a.checkpoint_every;
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
    let prep = Progress::new(0, "{spinner} {msg} [{bar:30}] {pos}/{len} {eta}");
    let mut bar: Option<Progress> = None;
    let done = bipo::train::pipeline::run(&job, &stop, |p| match p {
        TrainProgress::Preparing { what, done, total } => {
            prep.set_message(format!("caching layer {} states ({what})", cfg.layer));
            prep.set_length(total as u64);
            prep.set_position(done as u64);
        }
        TrainProgress::Training { total, cached } => {
            prep.finish_and_clear();
            if !cached {
                crate::note!(
                    "note: layer-{} states exceed --cache-mb {}; recomputing them every step",
                    cfg.layer,
                    cfg.cache_mb
                );
            }
            let b = Progress::new(
                total as u64,
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            );
            b.set_message("training");
            bar = Some(b);
        }
        TrainProgress::Event(ev) => {
            if let Some(pb) = &bar {
                report(pb, ev);
            }
        }
    })?;
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    let outcome = done.outcome;
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
    for (m, margin) in done.test_margins {
        crate::note!(
            "test log-prob margin (matching - opposite, summed over tokens) at multiplier {m:+}: {margin:.4}"
        );
    }
    Ok(())
}

/// A training step on the bar, an epoch as a line that stays.
fn report(pb: &Progress, ev: Event) {
    match ev {
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
                (Some(p), Some(m), Some(g)) => format!(
                    ", test loss +v {p:.4} -v {m:.4}, test reward margin +v {g:+.4} \
                     (beta x log-prob gain over the unsteered model)"
                ),
                (Some(p), None, Some(g)) => format!(
                    ", test loss +v {p:.4}, test steering margin +v {g:+.4} \
                     (RePS's D+: weighted mean log-prob of matching minus opposite)"
                ),
                _ => String::new(),
            };
            pb.println(format!(
                "epoch {}: train loss {:.4}{test}",
                e.epoch + 1,
                e.train_loss
            ));
        }
    }
}
