//! `bipo bench`: prompt and decode throughput, unsteered and steered, side by side.

use std::time::Instant;

use anyhow::{Context, Result};
use bipo::models::{KvCache, Mode};
use bipo::steer::Steering;
use bipo::{SteeringVector, VectorMeta};
use candle_core::Tensor;

use crate::args::{ModelArgs, SteerArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    steer: SteerArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128, value_parser = crate::args::positive)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 64, value_parser = crate::args::positive)]
    gen_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::args::positive)]
    repeats: usize,
    /// Also measure batched decoding (the server's continuous batching): aggregate
    /// decode tok/s with this many sequences per step, each row with its own steering
    /// (comma-separated sizes, e.g. 1,8,32,64).
    #[arg(long, value_name = "SIZES", value_delimiter = ',')]
    batch: Vec<usize>,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Aggregate decode tok/s of `b` sequences decoding together after a 32-token prompt,
/// rows alternately steered by `vectors` (per-row deltas) and unsteered.
fn batched(
    lm: &bipo::load::LoadedModel,
    ids: &[u32],
    b: usize,
    gen: usize,
    vectors: &[(SteeringVector, f32)],
) -> Result<f64> {
    let model = &lm.model;
    let prompt = &ids[..ids.len().min(32)];
    let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(model)).collect();
    for c in &mut caches {
        let x = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
        model.forward(&x, 0, Some(c), &Steering::none(), Some(1), Mode::Fast)?;
    }
    let deltas = bipo::steer::deltas_of(vectors);
    let empty = Default::default();
    let rows: Vec<&std::collections::BTreeMap<usize, Vec<f32>>> = (0..b)
        .map(|i| if i % 2 == 0 { &deltas } else { &empty })
        .collect();
    let st = Steering::from_row_deltas(&rows, model.hidden_size(), model.device(), model.dtype())?;
    let mut next = vec![prompt[prompt.len() - 1]; b];
    let t0 = Instant::now();
    for _ in 0..gen {
        let mut cs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits: Vec<Vec<f32>> = model.decode_rows(&next, &mut cs, &st)?.to_vec2()?;
        next = logits
            .iter()
            .map(|l| bipo::generate::top_k_indices(l, 1)[0] as u32)
            .collect();
    }
    Ok((b * gen) as f64 / t0.elapsed().as_secs_f64())
}

/// Text repeated to build a prompt of the requested length.
const FILLER: &str = "The quick brown fox jumps over the lazy dog while the band plays on. ";

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// (prompt tok/s, decode tok/s) of one run.
fn run_once(
    lm: &bipo::load::LoadedModel,
    ids: &[u32],
    gen: usize,
    steering: &Steering,
) -> Result<(f64, f64)> {
    let model = &lm.model;
    let dev = model.device();
    let mut cache = KvCache::new(model);
    let t0 = Instant::now();
    let logits = model.forward(
        &Tensor::new(ids, dev)?.unsqueeze(0)?,
        0,
        Some(&mut cache),
        steering,
        Some(1),
        Mode::Fast,
    )?;
    let mut next: u32 = logits.flatten_all()?.argmax(0)?.to_scalar()?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..gen {
        let logits = model.forward(
            &Tensor::new(&[next], dev)?.unsqueeze(0)?,
            cache.len(),
            Some(&mut cache),
            steering,
            Some(1),
            Mode::Fast,
        )?;
        next = logits.flatten_all()?.argmax(0)?.to_scalar()?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    Ok((ids.len() as f64 / prompt_s, gen as f64 / decode_s))
}

pub fn run(a: Args) -> Result<()> {
    let lm = a.model.load()?;
    let mut ids = lm
        .tokenizer
        .encode(&FILLER.repeat(a.prompt_tokens / 8 + 1), false)?;
    ids.truncate(a.prompt_tokens);
    let mut vectors = a.steer.vectors(&lm)?;
    if vectors.is_empty() {
        // Steering cost does not depend on the values: one direction on every layer.
        let h = lm.model.hidden_size();
        let layers = (0..lm.model.num_layers())
            .map(|l| (l, vec![0.01; h]))
            .collect();
        vectors.push((
            SteeringVector {
                layers,
                meta: VectorMeta {
                    name: "bench".into(),
                    ..Default::default()
                },
            },
            1.0,
        ));
    }
    let steered = Steering::from_vectors(&vectors, lm.model.device(), lm.model.dtype())?;
    let steered_layers = steered.layers().count();
    let none = Steering::none();
    // Warm-up (allocations, weight repacking) is not measured.
    run_once(&lm, &ids, 4, &none).context("warm-up")?;
    let (mut p0, mut d0, mut p1, mut d1) = (vec![], vec![], vec![], vec![]);
    for _ in 0..a.repeats.max(1) {
        // Interleave so both see the same machine state.
        let (p, d) = run_once(&lm, &ids, a.gen_tokens, &none)?;
        p0.push(p);
        d0.push(d);
        let (p, d) = run_once(&lm, &ids, a.gen_tokens, &steered)?;
        p1.push(p);
        d1.push(d);
    }
    let (p0, d0, p1, d1) = (median(p0), median(d0), median(p1), median(d1));
    if a.batch.contains(&0) {
        anyhow::bail!("invalid --batch 0 (must be >= 1)");
    }
    let batches = a
        .batch
        .iter()
        .map(|&b| Ok((b, batched(&lm, &ids, b, a.gen_tokens, &vectors)?)))
        .collect::<Result<Vec<_>>>()?;
    let threads = candle_core::utils::get_num_threads();
    if a.json {
        let out = serde_json::json!({
            "model": lm.model.info.source,
            "weights": lm.model.info.weights,
            "threads": threads,
            "prompt_tokens": ids.len(),
            "gen_tokens": a.gen_tokens,
            "repeats": a.repeats.max(1),
            "unsteered": {"prompt_tok_s": p0, "decode_tok_s": d0},
            "steered": {"layers": steered_layers, "prompt_tok_s": p1, "decode_tok_s": d1},
            "batched_decode_tok_s": batches
                .iter()
                .map(|(b, t)| serde_json::json!({"sequences": b, "tok_s": t}))
                .collect::<Vec<_>>(),
        });
        crate::outln!("{out}")?;
        return Ok(());
    }
    crate::outln!(
        "model: {} ({}), threads: {threads}",
        lm.model.info.source,
        lm.model.info.weights,
    )?;
    crate::outln!(
        "prompt {} tokens, decode {} tokens, median of {}",
        ids.len(),
        a.gen_tokens,
        a.repeats.max(1)
    )?;
    crate::outln!("{:<28} {:>12} {:>12}", "", "prompt tok/s", "decode tok/s")?;
    crate::outln!("{:<28} {:>12.1} {:>12.1}", "unsteered", p0, d0)?;
    crate::outln!(
        "{:<28} {:>12.1} {:>12.1}",
        format!("steered ({steered_layers} layers)"),
        p1,
        d1
    )?;
    crate::outln!(
        "steering cost: prompt {:+.2}%, decode {:+.2}%",
        (p0 / p1 - 1.0) * 100.0,
        (d0 / d1 - 1.0) * 100.0
    )?;
    for (b, tps) in batches {
        crate::outln!("batched decode, {b:>3} sequences (half steered): {tps:>8.1} tok/s")?;
    }
    Ok(())
}
