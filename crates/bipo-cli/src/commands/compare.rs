//! `bipo compare`: BiPO beside CAA, PCA and a random control on the same data and
//! layer, evaluated together into one report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bipo::baselines::{self, ReadAt};
use bipo::eval::report::DataFile;

use crate::args::ModelArgs;
use crate::commands::baseline::{meta, write};
use crate::commands::eval::{eval_writes, run_eval, EvalFlags};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The BiPO vector (from `bipo train`) to compare; without it, BiPO is trained here
    /// on --train (settings: --bipo-config, else the defaults; output in OUT/bipo-run).
    #[arg(long, value_name = "FILE")]
    bipo: Option<PathBuf>,
    /// TOML training settings for the BiPO run when --bipo is not given (and for the
    /// RePS run of --reps, with the method set to reps).
    #[arg(long, value_name = "FILE")]
    bipo_config: Option<PathBuf>,
    /// Also compare a RePS vector: this file, or, given without a value, one trained
    /// here with the BiPO run's settings (output in OUT/reps-run).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    reps: Option<Option<PathBuf>>,
    /// Training pairs the baselines are computed from (the data BiPO was trained on).
    #[arg(long, value_name = "FILE")]
    train: PathBuf,
    /// Layer of the baselines (default: the BiPO vector's first layer).
    #[arg(long)]
    layer: Option<usize>,
    /// Where to read free-text responses for CAA/PCA: last or mean.
    #[arg(long, default_value = "mean")]
    read_at: String,
    /// Seed of the random control.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Drop training records with an empty field instead of failing.
    #[arg(long)]
    skip_invalid_rows: bool,
    #[command(flatten)]
    flags: EvalFlags,
}

pub fn run(a: Args) -> Result<()> {
    let mut inputs = vec![
        ("--model", Path::new(&a.model.model)),
        ("--train", a.train.as_path()),
    ];
    inputs.extend(a.bipo.as_deref().map(|p| ("--bipo", p)));
    inputs.extend(a.bipo_config.as_deref().map(|p| ("--bipo-config", p)));
    inputs.extend(a.reps.iter().flatten().map(|p| ("--reps", p.as_path())));
    let writes = |n: &str| eval_writes(n) || n == "vectors" || n == "bipo-run" || n == "reps-run";
    a.flags.check(&inputs, writes)?;
    // The vectors compare writes must not replace an input either.
    let vec_dir = a.flags.out.join("vectors");
    let written: Vec<PathBuf> = ["bipo", "reps", "caa", "pca", "mean-centring", "random"]
        .iter()
        .map(|n| vec_dir.join(format!("{n}.safetensors")))
        .collect();
    if vec_dir.is_dir() {
        let outs: Vec<(&str, &Path)> = written.iter().map(|p| ("--out", p.as_path())).collect();
        bipo::util::fs::check_outputs(&inputs, &outs)?;
    }
    let trains_reps = matches!(a.reps, Some(None));
    let run_dirs = [
        a.bipo.is_none().then(|| a.flags.out.join("bipo-run")),
        trains_reps.then(|| a.flags.out.join("reps-run")),
    ];
    for dir in run_dirs.into_iter().flatten().filter(|d| d.is_dir()) {
        bipo::util::fs::check_output_dir(&inputs, "--out", &dir, |n| {
            bipo::train::rundir::writes_run_file(n)
        })?;
    }
    let lm = a.model.load()?;
    let mut bipo_v = match &a.bipo {
        Some(p) => {
            let v = bipo::io::read_vector(p)?;
            crate::args::check_vector(&v, p, &lm)?;
            v
        }
        None => {
            let cfg = train_config(&a, &lm, None, "bipo")?;
            let data = bipo::data::load_pairs_with(&a.train, a.skip_invalid_rows)?;
            let out = a.flags.out.join("bipo-run");
            crate::commands::bipo_run::train(&lm, &cfg, &data, &a.train, &out, "bipo")?
        }
    };
    let layer = match a.layer {
        Some(l) => l,
        None => *bipo_v.layers.keys().next().expect("validated"),
    };
    let reps_v = match &a.reps {
        None => None,
        Some(Some(p)) => {
            let mut v = bipo::io::read_vector(p)?;
            crate::args::check_vector(&v, p, &lm)?;
            v.meta.name = "reps".into();
            Some(v)
        }
        Some(None) => {
            let cfg = train_config(&a, &lm, Some(layer), "reps")?;
            let data = bipo::data::load_pairs_with(&a.train, a.skip_invalid_rows)?;
            let out = a.flags.out.join("reps-run");
            let v = crate::commands::bipo_run::train(&lm, &cfg, &data, &a.train, &out, "reps")?;
            Some(v)
        }
    };
    let read_at: ReadAt = a.read_at.parse()?;
    let template = crate::args::chat_template(&lm, a.flags.template.as_deref())?;
    let (r, sha) = crate::commands::baseline::reads(
        &lm,
        &template,
        &a.train,
        &[layer],
        read_at,
        a.flags.system.as_deref(),
        a.skip_invalid_rows,
    )?;
    let d = baselines::differences_of(&r);
    let extra = [("data_sha256", sha.clone()), ("read_at", a.read_at.clone())];
    let id = lm.identity()?;
    let caa = baselines::caa(&d, meta("caa", "caa", Some(&id), &extra));
    let mc = crate::commands::baseline::mean_centring(
        &lm,
        &r,
        a.flags.neutral.as_deref(),
        meta("mean-centring", "mean-centring", Some(&id), &extra),
    )?;
    let pca = baselines::pca_diff(&d, meta("pca", "pca-diff", Some(&id), &extra));
    let rnd_extra = [("like", "bipo".to_string()), ("seed", a.seed.to_string())];
    let random = baselines::random_like(
        &bipo_v,
        a.seed,
        meta("random", "random (BiPO's norm)", None, &rnd_extra),
    );
    bipo_v.meta.name = "bipo".into();
    let dir = a.flags.out.join("vectors");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let mut vectors = vec![bipo_v];
    vectors.extend(reps_v);
    vectors.extend([caa, pca, mc, random]);
    for v in &vectors {
        write(v, &dir.join(format!("{}.safetensors", v.meta.name)))?;
    }
    let train_file = DataFile {
        path: a.train.display().to_string(),
        sha256: sha,
        kind: "train".into(),
        examples: d.values().next().map_or(0, Vec::len),
    };
    let title = a.flags.title.clone().unwrap_or_else(|| {
        let reps = if a.reps.is_some() { " vs RePS" } else { "" };
        format!("BiPO{reps} vs CAA vs PCA vs mean-centring vs random, layer {layer}")
    });
    let r = run_eval(&lm, &vectors, &a.flags, vec![train_file], &title)?;
    crate::outln!("{}", r.markdown())?;
    crate::note!("report: {}", a.flags.out.join("report.md").display());
    Ok(())
}

/// Settings of a run `compare` trains: `--bipo-config` (else the defaults), the layer
/// of `--layer` or `layer`, and `method`.
fn train_config(
    a: &Args,
    lm: &bipo::load::LoadedModel,
    layer: Option<usize>,
    method: &str,
) -> Result<bipo::train::TrainConfig> {
    let mut cfg = bipo::train::TrainConfig::from_toml_or_default(a.bipo_config.as_deref())?;
    if let Some(l) = a.layer.or(layer) {
        cfg.layer = l;
    }
    cfg.method = method.into();
    if cfg.layer >= lm.model.num_layers() {
        anyhow::bail!(
            "invalid layer {}: the model has {} layers",
            cfg.layer,
            lm.model.num_layers()
        );
    }
    Ok(cfg)
}
