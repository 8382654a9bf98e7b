//! `bipo sweep-layers`: CAA at every layer (one activation pass), each scored on A/B
//! questions and/or held-out free-text pairs at -m, 0 and +m, with the damage it does
//! (KL on neutral text at +m), to choose the layer to steer. Rankings are given raw, per
//! unit of vector norm and per unit of damage: CAA's norm grows with depth, so the raw
//! effect alone favours late layers.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bipo::baselines::{self, ReadAt};
use bipo::eval::ab;
use bipo::eval::plot::{LineChart, Series};
use bipo::eval::{EvalData, EvalOptions, DEFAULT_EVAL_BATCH};
use bipo::util::layers::LayerSpec;

use crate::args::ModelArgs;
use crate::commands::baseline::{meta, reads};
use crate::commands::eval::bar;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Pairs the CAA vectors are computed from.
    #[arg(long, value_name = "FILE")]
    train: PathBuf,
    /// A/B questions scored at every layer (this and/or --pairs).
    #[arg(long, value_name = "FILE", required_unless_present = "pairs")]
    data: Option<PathBuf>,
    /// Built-in template (llama2, mistral) instead of the model's own.
    #[arg(long)]
    template: Option<String>,
    /// Held-out free-text pairs, also scored at every layer (mean log-prob margin).
    #[arg(long, value_name = "FILE")]
    pairs: Option<PathBuf>,
    /// Skip the damage measurement (KL on bipo's neutral text at +m, per layer).
    #[arg(long)]
    no_damage: bool,
    /// Layers to try: N, A-B, A,B,C, -1 (the last), 0.5 (half depth) (default: all).
    #[arg(long, value_name = "LAYERS", allow_hyphen_values = true)]
    layers: Option<LayerSpec>,
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
    /// Also train a short BiPO (or --method) run of this many steps at every layer and
    /// score it the same way (0 = CAA only). Runs go to OUT/<method>-L<layer>/; the
    /// `bipo_*` fields of sweep.json hold the trained vector's scores whatever the method.
    #[arg(long, default_value_t = 0, value_name = "N")]
    bipo_steps: usize,
    /// TOML training settings for those runs (layer and step count are set per run).
    #[arg(long, value_name = "FILE")]
    bipo_config: Option<PathBuf>,
    /// Objective of those runs: bipo or reps [default: the config's, else bipo].
    #[arg(long, value_name = "bipo|reps")]
    method: Option<String>,
    /// Output folder: sweep.json, sweep.md, sweep.png, sweep.svg.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    crate::args::check_multiplier(a.multiplier).context("--multiplier")?;
    if a.multiplier == 0.0 {
        bail!("invalid --multiplier 0: the sweep compares -m, 0 and +m");
    }
    if a.limit == 0 || a.train_limit == 0 {
        bail!("invalid --limit/--train-limit 0: must be >= 1");
    }
    let mut inputs = vec![
        ("--model", std::path::Path::new(&a.model.model)),
        ("--train", a.train.as_path()),
    ];
    inputs.extend(a.data.as_deref().map(|p| ("--data", p)));
    inputs.extend(a.pairs.as_deref().map(|p| ("--pairs", p)));
    inputs.extend(a.bipo_config.as_deref().map(|p| ("--bipo-config", p)));
    bipo::util::fs::check_output_dir(&inputs, "--out", &a.out, |n| {
        n.starts_with("sweep")
            || n == "train-subset.csv"
            || n.starts_with("bipo-L")
            || n.starts_with("reps-L")
    })?;
    bipo::util::fs::ensure_writable_dir(&a.out)?;
    let lm = a.model.load()?;
    let n = lm.model.num_layers();
    let layers = match &a.layers {
        Some(s) => s.resolve(n)?,
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
    let (r, _) = reads(
        &lm,
        &template,
        &train,
        &layers,
        a.read_at.parse::<ReadAt>()?,
        None,
        false,
    )?;
    let diffs = bipo::baselines::differences_of(&r);
    let items = match &a.data {
        Some(p) => {
            let mut items = ab::load_ab(p)?;
            items.truncate(a.limit);
            Some(items)
        }
        None => None,
    };
    let neutral: Vec<Vec<u32>> = if a.no_damage {
        Vec::new()
    } else {
        bipo::eval::damage::neutral_ids(&lm.tokenizer, None)?
    };
    let m = a.multiplier;
    let opts = EvalOptions {
        multipliers: vec![-m, 0.0, m],
        batch: DEFAULT_EVAL_BATCH,
        system: None,
        positions: Default::default(),
    };
    let pairs = a
        .pairs
        .as_ref()
        .map(|p| {
            bipo::data::load_pairs(p).map(|d| d.pairs.into_iter().take(a.limit).collect::<Vec<_>>())
        })
        .transpose()?;
    let data = EvalData {
        ab: items.as_deref(),
        pairs: pairs.as_deref(),
        mc: None,
        neutral: &[],
    };
    // Settings and data of the optional BiPO runs, read once for every layer.
    let bipo_setup = if a.bipo_steps > 0 {
        let mut cfg = bipo::train::TrainConfig::from_toml_or_default(a.bipo_config.as_deref())?;
        if let Some(m) = &a.method {
            cfg.method = m.clone();
        }
        cfg.validate()?;
        Some((cfg, bipo::data::load_pairs(&train)?))
    } else {
        None
    };
    let trained = bipo_setup
        .as_ref()
        .map_or_else(|| "bipo".to_string(), |(c, _)| c.method.clone());
    let id = lm.identity()?;
    let pb = bar(layers.len() as u64);
    let mut rows = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        pb.set_message(format!("layer {l}"));
        let one = bipo::baselines::PairDiffs::from([(l, diffs[&l].clone())]);
        let v = baselines::caa(&one, meta(&format!("caa-L{l}"), "caa", Some(&id), &[]));
        let mut vectors = vec![v.clone()];
        if let Some((base, d)) = &bipo_setup {
            let mut cfg = base.clone();
            cfg.layer = l;
            cfg.max_steps = Some(a.bipo_steps);
            let out = a.out.join(format!("{}-L{l}", cfg.method));
            let name = format!("{}-L{l}", cfg.method);
            vectors.push(crate::commands::bipo_run::train(
                &lm, &cfg, d, &train, &out, &name,
            )?);
        }
        let r = bipo::eval::evaluate(&lm, &template, &vectors, &data, &opts, |_, _, _| Ok(()))?;
        let mut row = serde_json::json!({ "layer": l, "norm": v.norms()[&l] });
        if !neutral.is_empty() {
            let set = bipo::eval::damage::DamageSet::from_ids(&lm.model, neutral.clone(), l)?;
            let st = bipo::steer::Steering::from_vectors(
                &[(v.clone(), m)],
                lm.model.device(),
                lm.model.dtype(),
            )?;
            row["kl_plus"] = set.measure(&[st])?[0].kl.into();
        }
        for (prefix, vr) in ["", "bipo_"].iter().zip(&r) {
            if let [lo, zero, hi] = vr.ab_probability.as_slice() {
                row[format!("{prefix}p_minus")] = lo.value.into();
                row[format!("{prefix}p_plus")] = hi.value.into();
                row[format!("{prefix}effect")] = (hi.value - lo.value).into();
                row["p_zero"] = zero.value.into();
            }
            if let [lo, zero, hi] = vr.pref_margin.as_slice() {
                row[format!("{prefix}margin_minus")] = lo.value.into();
                row["margin_zero"] = zero.value.into();
                row[format!("{prefix}margin_plus")] = hi.value.into();
                row[format!("{prefix}margin_effect")] = (hi.value - lo.value).into();
            }
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
    // One chart per metric: CAA at -m, 0, +m (and BiPO at -m, +m when trained).
    let series = |key: &str| -> Vec<Series> {
        let mut out = vec![
            Series {
                name: format!("caa +{m}"),
                points: get(&format!("{key}_plus")),
            },
            Series {
                name: "0".into(),
                points: get(&format!("{key}_zero")),
            },
            Series {
                name: format!("caa -{m}"),
                points: get(&format!("{key}_minus")),
            },
        ];
        if a.bipo_steps > 0 {
            out.push(Series {
                name: format!("{trained} +{m}"),
                points: get(&format!("bipo_{key}_plus")),
            });
            out.push(Series {
                name: format!("{trained} -{m}"),
                points: get(&format!("bipo_{key}_minus")),
            });
        }
        out
    };
    std::fs::create_dir_all(&a.out)?;
    if items.is_some() {
        LineChart {
            title: format!("Layer sweep: p(matching) at multiplier -{m}, 0, +{m}"),
            x_label: "layer".into(),
            y_label: "p(matching answer)".into(),
            series: series("p"),
        }
        .write(&a.out.join("sweep"))?;
    }
    if pairs.is_some() {
        LineChart {
            title: format!("Layer sweep: held-out log-prob margin at multiplier -{m}, 0, +{m}"),
            x_label: "layer".into(),
            y_label: "logp(matching) - logp(opposite)".into(),
            series: series("margin"),
        }
        .write(&a.out.join("sweep-margin"))?;
    }
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut md = format!(
        "# Layer sweep\n\n- model: `{}`\n- command: `{}`\n",
        lm.model.info.source,
        bipo::util::redact::this_command_line(),
    );
    let kl = |r: &serde_json::Value| {
        r["kl_plus"]
            .as_f64()
            .map_or("-".to_string(), |k| format!("{k:.4}"))
    };
    if let (Some(items), Some(p)) = (&items, &a.data) {
        md += &format!(
            "- A/B questions: {} from `{}`\n\n![sweep](sweep.png)\n\n\
             | layer | CAA norm | KL(+{m}) | p(-{m}) | p(0) | p(+{m}) | effect p(+)-p(-) |\n\
             |---|---|---|---|---|---|---|\n",
            items.len(),
            p.display()
        );
        for r in &rows {
            md += &format!(
                "| {} | {:.2} | {} | {:.4} | {:.4} | {:.4} | {:+.4} |\n",
                r["layer"],
                f(r, "norm"),
                kl(r),
                f(r, "p_minus"),
                f(r, "p_zero"),
                f(r, "p_plus"),
                f(r, "effect")
            );
        }
    }
    if pairs.is_some() {
        md += &format!(
            "\n![sweep-margin](sweep-margin.png)\n\n\
             | layer | CAA norm | KL(+{m}) | margin(-{m}) | margin(0) | margin(+{m}) | effect |\n\
             |---|---|---|---|---|---|---|\n"
        );
        for r in &rows {
            md += &format!(
                "| {} | {:.2} | {} | {:.3} | {:.3} | {:.3} | {:+.3} |\n",
                r["layer"],
                f(r, "norm"),
                kl(r),
                f(r, "margin_minus"),
                f(r, "margin_zero"),
                f(r, "margin_plus"),
                f(r, "margin_effect")
            );
        }
    }
    if a.bipo_steps > 0 {
        md += &format!(
            "\n{trained}, {} steps per layer:\n\n| layer | p effect | margin effect |\n|---|---|---|\n",
            a.bipo_steps
        );
        for r in &rows {
            md += &format!(
                "| {} | {:+.4} | {:+.3} |\n",
                r["layer"],
                f(r, "bipo_effect"),
                f(r, "bipo_margin_effect")
            );
        }
    }
    // The layer with the largest effect, per metric that was measured: raw, per unit
    // of CAA norm, and per unit of damage.
    for r in rows.iter_mut() {
        for key in ["effect", "margin_effect"] {
            if let Some(e) = r[key].as_f64() {
                let norm = f(r, "norm");
                r[format!("{key}_per_norm")] = (e / norm).into();
                if let Some(k) = r["kl_plus"].as_f64().filter(|k| *k > 0.0) {
                    r[format!("{key}_per_kl")] = (e / k).into();
                }
            }
        }
    }
    for (key, what) in [
        ("effect", "A/B effect"),
        ("effect_per_norm", "A/B effect per unit of CAA norm"),
        ("effect_per_kl", "A/B effect per nat of damage (KL at +m)"),
        ("margin_effect", "margin effect"),
        (
            "margin_effect_per_norm",
            "margin effect per unit of CAA norm",
        ),
        (
            "margin_effect_per_kl",
            "margin effect per nat of damage (KL at +m)",
        ),
        ("bipo_margin_effect", "BiPO margin effect"),
    ] {
        let best = rows
            .iter()
            .filter(|r| r[key].is_f64())
            .max_by(|x, y| f(x, key).total_cmp(&f(y, key)));
        if let Some(b) = best {
            md += &format!(
                "\nLargest {what}: layer {} ({:+.4}).\n",
                b["layer"],
                f(b, key)
            );
        }
    }
    md += "\nThe raw effect grows with the vector's norm, and CAA's norm grows with depth: \
           prefer the per-norm or per-damage ranking to choose a layer.\n";
    bipo::util::write_atomic(
        &a.out.join("sweep.json"),
        serde_json::to_string_pretty(&rows)?.as_bytes(),
    )?;
    bipo::util::write_atomic(&a.out.join("sweep.md"), md.as_bytes())?;
    crate::outln!("{md}")?;
    Ok(())
}
