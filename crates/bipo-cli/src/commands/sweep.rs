//! `bipo sweep-layers`: CAA at every layer (one activation pass), each scored on A/B
//! questions at -m, 0 and +m, to choose the layer to steer.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bipo::baselines::{self, ReadAt};
use bipo::eval::ab;
use bipo::eval::plot::{LineChart, Series};
use bipo::eval::{EvalData, EvalOptions, DEFAULT_EVAL_BATCH};

use crate::args::ModelArgs;
use crate::commands::baseline::{differences, meta};
use crate::commands::eval::bar;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Pairs the CAA vectors are computed from.
    #[arg(long, value_name = "FILE")]
    train: PathBuf,
    /// A/B questions scored at every layer.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Built-in template (llama2, mistral) instead of the model's own.
    #[arg(long)]
    template: Option<String>,
    /// Held-out free-text pairs, also scored at every layer (mean log-prob margin).
    #[arg(long, value_name = "FILE")]
    pairs: Option<PathBuf>,
    /// Layers to try, e.g. 4-20 (default: all).
    #[arg(long, value_name = "A-B")]
    layers: Option<String>,
    /// Multiplier m: each layer is scored at -m, 0 and +m.
    #[arg(long, default_value_t = 1.0)]
    multiplier: f32,
    /// Use only the first N A/B questions (the sweep is meant to be quick).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Use only the first N training pairs.
    #[arg(long, default_value_t = 200)]
    train_limit: usize,
    /// Where to read free-text responses: last or mean.
    #[arg(long, default_value = "mean")]
    read_at: String,
    #[arg(long)]
    skip_invalid_rows: bool,
    /// Output folder: sweep.json, sweep.md, sweep.png, sweep.svg.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
}

fn parse_range(s: &str, n: usize) -> Result<Vec<usize>> {
    let (a, b) = s.split_once('-').context("--layers wants A-B")?;
    let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
    if a > b || b >= n {
        bail!("invalid --layers {s}: the model has layers 0..{}", n - 1);
    }
    Ok((a..=b).collect())
}

pub fn run(a: Args) -> Result<()> {
    let lm = a.model.load()?;
    let n = lm.model.num_layers();
    let layers = match &a.layers {
        Some(s) => parse_range(s, n)?,
        None => (0..n).collect(),
    };
    // A limited copy of the training data, so the activation pass stays quick.
    let train = if ab::is_ab_file(&a.train) {
        a.train.clone()
    } else {
        let d = bipo::data::load_pairs_with(&a.train, a.skip_invalid_rows)?;
        std::fs::create_dir_all(&a.out)?;
        let p = a.out.join("train-subset.csv");
        let mut w = csv::Writer::from_path(&p)?;
        w.write_record(["question", "matching", "not_matching"])?;
        for x in d.pairs.iter().take(a.train_limit) {
            w.write_record([&x.question, &x.matching, &x.not_matching])?;
        }
        w.flush()?;
        p
    };
    let template = crate::args::chat_template(&lm, a.template.as_deref())?;
    let (diffs, _) = differences(
        &lm,
        &template,
        &train,
        &layers,
        a.read_at.parse::<ReadAt>()?,
        None,
        false,
    )?;
    let mut items = ab::load_ab(&a.data)?;
    items.truncate(a.limit);
    let m = a.multiplier;
    let opts = EvalOptions {
        multipliers: vec![-m, 0.0, m],
        batch: DEFAULT_EVAL_BATCH,
        system: None,
    };
    let pairs = a
        .pairs
        .as_ref()
        .map(|p| {
            bipo::data::load_pairs(p).map(|d| d.pairs.into_iter().take(a.limit).collect::<Vec<_>>())
        })
        .transpose()?;
    let data = EvalData {
        ab: Some(&items),
        pairs: pairs.as_deref(),
        neutral: &[],
    };
    let pb = bar(layers.len() as u64);
    let mut rows = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        pb.set_message(format!("layer {l}"));
        let one = bipo::baselines::PairDiffs::from([(l, diffs[&l].clone())]);
        let v = baselines::caa(&one, meta(&format!("caa-L{l}"), "caa", Some(&lm), &[]));
        let r = bipo::eval::evaluate(
            &lm,
            &template,
            std::slice::from_ref(&v),
            &data,
            &opts,
            |_, _, _| {},
        )?;
        let p: Vec<f64> = r[0].ab_probability.iter().map(|p| p.value).collect();
        let mut row = serde_json::json!({
            "layer": l, "norm": v.norms()[&l], "p_minus": p[0], "p_zero": p[1], "p_plus": p[2],
            "effect": p[2] - p[0],
        });
        if let [lo, zero, hi] = r[0].pref_margin.as_slice() {
            row["margin_minus"] = lo.value.into();
            row["margin_zero"] = zero.value.into();
            row["margin_plus"] = hi.value.into();
            row["margin_effect"] = (hi.value - lo.value).into();
        }
        rows.push(row);
        pb.set_position(i as u64 + 1);
    }
    pb.finish_and_clear();
    let get = |k: &str| {
        rows.iter()
            .map(|r| {
                (
                    r["layer"].as_f64().unwrap_or(0.0),
                    r[k].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let chart = LineChart {
        title: format!("CAA layer sweep: p(matching) at multiplier -{m}, 0, +{m}"),
        x_label: "layer".into(),
        y_label: "p(matching answer)".into(),
        series: vec![
            Series {
                name: format!("+{m}"),
                points: get("p_plus"),
            },
            Series {
                name: "0".into(),
                points: get("p_zero"),
            },
            Series {
                name: format!("-{m}"),
                points: get("p_minus"),
            },
        ],
    };
    std::fs::create_dir_all(&a.out)?;
    chart.write(&a.out.join("sweep"))?;
    if pairs.is_some() {
        LineChart {
            title: format!("CAA layer sweep: held-out log-prob margin at multiplier -{m}, 0, +{m}"),
            x_label: "layer".into(),
            y_label: "logp(matching) - logp(opposite)".into(),
            series: vec![
                Series {
                    name: format!("+{m}"),
                    points: get("margin_plus"),
                },
                Series {
                    name: "0".into(),
                    points: get("margin_zero"),
                },
                Series {
                    name: format!("-{m}"),
                    points: get("margin_minus"),
                },
            ],
        }
        .write(&a.out.join("sweep-margin"))?;
    }
    let mut md = format!(
        "# CAA layer sweep\n\n- model: `{}`\n- command: `{}`\n- A/B questions: {} from `{}`\n\n![sweep](sweep.png)\n\n| layer | CAA norm | p(-{m}) | p(0) | p(+{m}) | effect p(+)-p(-) |\n|---|---|---|---|---|---|\n",
        lm.model.info.source,
        std::env::args().collect::<Vec<_>>().join(" "),
        items.len(),
        a.data.display()
    );
    for r in &rows {
        md += &format!(
            "| {} | {:.2} | {:.4} | {:.4} | {:.4} | {:+.4} |\n",
            r["layer"],
            r["norm"].as_f64().unwrap_or(0.0),
            r["p_minus"].as_f64().unwrap_or(0.0),
            r["p_zero"].as_f64().unwrap_or(0.0),
            r["p_plus"].as_f64().unwrap_or(0.0),
            r["effect"].as_f64().unwrap_or(0.0)
        );
    }
    let best = rows.iter().max_by(|x, y| {
        x["effect"]
            .as_f64()
            .unwrap_or(f64::MIN)
            .total_cmp(&y["effect"].as_f64().unwrap_or(f64::MIN))
    });
    if let Some(b) = best {
        md += &format!("\nLargest effect: layer {}.\n", b["layer"]);
    }
    bipo::util::write_atomic(
        &a.out.join("sweep.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    bipo::util::write_atomic(&a.out.join("sweep.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
