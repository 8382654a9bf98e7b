//! `bipo bench-train`: BiPO step time, bipo's cached algorithm beside the reference
//! algorithm (full steered forward and backward plus two full reference forwards every
//! step, no caches), on the same batches, in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use bipo::activations::{tokenize, Prepared};
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
    #[arg(long, default_value_t = 4, value_parser = crate::args::positive)]
    batch_size: usize,
    /// Steps timed per algorithm (median reported).
    #[arg(long, default_value_t = 5, value_parser = crate::args::positive)]
    steps: usize,
    /// Skip the reference algorithm.
    #[arg(long)]
    no_reference: bool,
    /// Also time one forward+backward of a 4x128-token batch through blocks layer+1..
    /// and the head (every position), the figure other implementations report.
    #[arg(long)]
    block: bool,
}

/// Batch shape of the block benchmark.
const BLOCK_BATCH: (usize, usize) = (4, 128);

/// One forward+backward of random layer-L states (4, 128, hidden) plus a trainable
/// vector through blocks L+1.. and the head at every position.
fn block_step(lm: &bipo::load::LoadedModel, layer: usize) -> Result<f64> {
    use bipo::models::Mode;
    let m = &lm.model;
    let (b, t) = BLOCK_BATCH;
    let dev = m.device();
    let hs = Tensor::randn(0f32, 1.0, (b, t, m.hidden_size()), dev)?;
    let targets: Vec<u32> = (0..b * t)
        .map(|i| (i * 7919 % m.config().vocab_size) as u32)
        .collect();
    let var = Var::zeros(m.hidden_size(), candle_core::DType::F32, dev)?;
    let start = Instant::now();
    let xs = hs.broadcast_add(var.as_tensor())?;
    let xs = m.run_blocks(
        &xs,
        layer + 1..m.num_layers(),
        0,
        None,
        &bipo::steer::Steering::none(),
        Mode::Differentiable,
    )?;
    let xs = m.final_norm(&xs.reshape((b * t, m.hidden_size()))?, Mode::Differentiable)?;
    let logits = m.lm_head(&xs, Mode::Differentiable)?;
    let lp = bipo::kernels::ops::log_softmax_gather(&logits, &targets)?;
    let _ = lp.sum_all()?.backward()?;
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn run(a: Args) -> Result<()> {
    let ds = bipo::data::load_pairs_with(&a.data, true)?;
    let lm = a.model.load()?;
    let template = crate::args::chat_template(&lm, None)?;
    let ex = tokenize(&ds.pairs, &lm.tokenizer, &template, None)?;
    let n = ex.len();
    let t0 = Instant::now();
    let p = Prepared::new(&lm.model, a.layer, ex, usize::MAX, |_, _| {})?;
    lm.model.device().synchronize()?;
    let prep = t0.elapsed().as_secs_f64();
    let order = epoch_order(0, 0, n);
    let v0 = vec![0.01f32; lm.model.hidden_size()];
    let time = |plain: bool| -> Result<f64> {
        let mut ts = Vec::new();
        // On a GPU the first step loads kernels and sizes the allocator: not timed.
        let warm = usize::from(!lm.model.device().is_cpu());
        for s in 0..a.steps + warm {
            // Steps past the data wrap around to its start.
            let batch: Vec<usize> = (0..a.batch_size.min(n))
                .map(|k| order[(s * a.batch_size + k) % n])
                .collect();
            let batch = batch.as_slice();
            let var = Var::from_tensor(&Tensor::new(v0.as_slice(), lm.model.device())?)?;
            let d = step_direction(0, s);
            let t = Instant::now();
            let out = if plain {
                p.loss_plain(batch, var.as_tensor(), d, 0.1)?
            } else {
                p.loss(batch, var.as_tensor(), d, 0.1)?
            };
            let _ = out.loss.backward()?;
            // GPU work is asynchronous: wait for it before reading the clock.
            lm.model.device().synchronize()?;
            if s >= warm {
                ts.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(median(ts))
    };
    let fast = time(false)?;
    let steps_per_epoch = n.div_ceil(a.batch_size);
    let weights = lm.model.train_weights();
    let arithmetic = format!("{} ({})", weights.name(), weights.arithmetic());
    crate::outln!(
        "model {} | data {} ({} pairs) | layer {} | batch {} | threads {} | training {}",
        lm.model.info.source,
        a.data.display(),
        n,
        a.layer,
        a.batch_size,
        candle_core::utils::get_num_threads(),
        arithmetic
    )?;
    crate::outln!("bipo: prepare (blocks 0..={} + reference log-probs, once) {prep:.1} s; step {fast:.3} s (median of {}); epoch {:.0} s", a.layer, a.steps, prep + fast * steps_per_epoch as f64)?;
    if a.block {
        let ts = (0..a.steps)
            .map(|_| block_step(&lm, a.layer))
            .collect::<Result<Vec<_>>>()?;
        crate::outln!("one forward+backward of a {}x{} batch through blocks {}..{} and the head: {:.3} s (median of {})", BLOCK_BATCH.0, BLOCK_BATCH.1, a.layer + 1, lm.model.num_layers() - 1, median(ts), a.steps)?;
    }
    if !a.no_reference {
        let plain = time(true)?;
        crate::outln!(
            "reference algorithm: step {plain:.3} s; epoch {:.0} s",
            plain * steps_per_epoch as f64
        )?;
        crate::outln!(
            "per-epoch speed-up: {:.2}x (first epoch, including preparation); per-step: {:.2}x",
            plain * steps_per_epoch as f64 / (prep + fast * steps_per_epoch as f64),
            plain / fast
        )?;
    }
    Ok(())
}
