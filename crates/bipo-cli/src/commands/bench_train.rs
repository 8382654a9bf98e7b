//! `bipo bench-train`: BiPO step time, bipo's cached algorithm beside the reference
//! algorithm (full steered forward and backward plus two full reference forwards every
//! step, no caches), on the same batches, in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bipo::train::bipo::{tokenize, Prepared};
use bipo::train::trainer::{epoch_order, step_direction};
use candle_core::{Tensor, Var};

use crate::args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Preference pairs (records with empty fields are skipped).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    #[arg(long, default_value_t = 15)]
    layer: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Steps timed per algorithm (median reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Skip the reference algorithm.
    #[arg(long)]
    no_reference: bool,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    let ds = bipo::data::load_pairs_with(&a.data, true)?;
    let lm = a.model.load()?;
    let template = lm
        .chat_template
        .clone()
        .context("model has no chat template")?;
    let ex = tokenize(&ds.pairs, &lm.tokenizer, &template, None)?;
    let n = ex.len();
    let t0 = Instant::now();
    let p = Prepared::new(&lm.model, a.layer, ex, usize::MAX, |_, _| {})?;
    let prep = t0.elapsed().as_secs_f64();
    let order = epoch_order(0, 0, n);
    let v0 = vec![0.01f32; lm.model.hidden_size()];
    let time = |plain: bool| -> Result<f64> {
        let mut ts = Vec::new();
        for s in 0..a.steps {
            let batch = &order[s * a.batch_size..(s + 1) * a.batch_size];
            let var = Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device())?)?;
            let d = step_direction(0, s);
            let t = Instant::now();
            let out = if plain {
                p.loss_plain(batch, var.as_tensor(), d, 0.1)?
            } else {
                p.loss(batch, var.as_tensor(), d, 0.1)?
            };
            let _ = out.loss.backward()?;
            ts.push(t.elapsed().as_secs_f64());
        }
        Ok(median(ts))
    };
    let fast = time(false)?;
    let steps_per_epoch = n.div_ceil(a.batch_size);
    println!(
        "model {} | data {} ({} pairs) | layer {} | batch {} | threads {}",
        lm.model.info.source,
        a.data.display(),
        n,
        a.layer,
        a.batch_size,
        candle_core::utils::get_num_threads()
    );
    println!("bipo: prepare (blocks 0..={} + reference log-probs, once) {prep:.1} s; step {fast:.3} s (median of {}); epoch {:.0} s", a.layer, a.steps, prep + fast * steps_per_epoch as f64);
    if !a.no_reference {
        let plain = time(true)?;
        println!(
            "reference algorithm: step {plain:.3} s; epoch {:.0} s",
            plain * steps_per_epoch as f64
        );
        println!(
            "per-epoch speed-up: {:.2}x (first epoch, including preparation); per-step: {:.2}x",
            plain * steps_per_epoch as f64 / (prep + fast * steps_per_epoch as f64),
            plain / fast
        );
    }
    Ok(())
}
