//! `bipo baseline caa|pca|random`: the comparison vectors, as steering-vector files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bipo::baselines::{self, PairReads, ReadAt};
use bipo::load::LoadedModel;
use bipo::text::ChatTemplate;
use bipo::util::layers::LayerSpec;
use bipo::{SteeringVector, VectorMeta};

use crate::args::ModelArgs;
use crate::commands::eval::bar;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Mean activation difference (Rimsky et al.).
    Caa,
    /// First principal component of pair differences (repeng's pca_diff).
    Pca,
    /// Seeded random direction with another vector's norm (needs --like).
    Random,
    /// Mean activation over the matching responses minus the mean over neutral text
    /// (Jorgensen et al.; --neutral FILE, default bipo's own neutral text).
    MeanCentring,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    method: Method,
    /// Model (caa, pca): GGUF file, Hugging Face folder or Hub id.
    #[arg(
        long,
        short = 'm',
        value_name = "FILE|FOLDER|HUB-ID",
        env = "BIPO_MODEL"
    )]
    model: Option<String>,
    /// Device: cpu, cuda, cuda:N, metal or metal:N.
    #[arg(
        long,
        value_name = "DEVICE",
        default_value = "cpu",
        env = "BIPO_DEVICE"
    )]
    device: String,
    /// PEFT LoRA adapter folder merged into the model at load (repeatable).
    #[arg(long, value_name = "ADAPTER")]
    lora: Vec<PathBuf>,
    /// Training data (caa, pca): A/B questions (read at the answer letter) or free-text pairs.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// 0-based blocks whose output is read and steered (caa, pca): N, A-B, A,B,C, -1 (the
    /// last) or 0.5 (half depth); repeatable.
    #[arg(long = "layer", allow_hyphen_values = true)]
    layers: Vec<LayerSpec>,
    /// Where to read free-text responses: last token or mean over response tokens.
    #[arg(long, default_value = "mean")]
    read_at: String,
    /// Vector whose per-layer norms the random vector copies (random).
    #[arg(long, value_name = "FILE")]
    like: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Neutral text (paragraphs separated by blank lines) for mean-centring's reference
    /// mean (default: bipo's own).
    #[arg(long, value_name = "FILE")]
    neutral: Option<PathBuf>,
    /// Drop records with an empty field instead of failing.
    #[arg(long)]
    skip_invalid_rows: bool,
    /// System prompt for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Built-in template (llama2, mistral) instead of the model's own.
    #[arg(long)]
    template: Option<String>,
    /// Output vector file (.safetensors or .gguf).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

/// Per-layer activations of both responses on `data` (A/B: at the letter; pairs: per
/// `read_at`), and the data's sha256.
pub fn reads(
    lm: &LoadedModel,
    template: &ChatTemplate,
    data: &Path,
    layers: &[usize],
    read_at: ReadAt,
    system: Option<&str>,
    skip_invalid: bool,
) -> Result<(PairReads, String)> {
    if let Some(&l) = layers.iter().find(|&&l| l >= lm.model.num_layers()) {
        bail!(
            "invalid --layer {l}: the model has {} layers",
            lm.model.num_layers()
        );
    }
    let pb = bar(0);
    pb.set_message(format!("activations at layers {layers:?}"));
    let (reads, sha, skipped) = baselines::reads_of_file(
        lm,
        template,
        data,
        layers,
        read_at,
        system,
        skip_invalid,
        |d, n| {
            pb.set_length(n as u64);
            pb.set_position(d as u64)
        },
    )?;
    pb.finish_and_clear();
    for s in &skipped {
        crate::note!("skipped {s}");
    }
    Ok((reads, sha))
}

/// Mean-centring at the layers of `reads`, against the neutral text.
pub fn mean_centring(
    lm: &LoadedModel,
    reads: &PairReads,
    neutral: Option<&Path>,
    meta: VectorMeta,
) -> Result<SteeringVector> {
    let layers: Vec<usize> = reads.keys().copied().collect();
    let ids = bipo::eval::damage::neutral_ids(&lm.tokenizer, neutral)?;
    let means = baselines::neutral_means(&lm.model, &ids, &layers)?;
    Ok(baselines::mean_centring(reads, &means, meta)?)
}

/// Metadata for a baseline vector.
pub fn meta(name: &str, method: &str, model: Option<&str>, extra: &[(&str, String)]) -> VectorMeta {
    VectorMeta {
        name: name.into(),
        model: model.map(String::from),
        method: Some(method.into()),
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

pub fn write(v: &SteeringVector, out: &Path) -> Result<()> {
    Ok(bipo::io::write_vector(v, out, "llama")?)
}

pub fn run(a: Args) -> Result<()> {
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    inputs.extend(a.model.as_deref().map(|m| ("--model", Path::new(m))));
    inputs.extend(a.data.as_deref().map(|d| ("--data", d)));
    inputs.extend(a.like.as_deref().map(|l| ("--like", l)));
    inputs.extend(a.neutral.as_deref().map(|l| ("--neutral", l)));
    bipo::util::fs::check_outputs(&inputs, &[("--out", &a.out)])?;
    if !matches!(
        a.out.extension().and_then(|e| e.to_str()),
        Some("gguf" | "safetensors")
    ) {
        bail!(
            "invalid --out {}: use a .safetensors or .gguf extension",
            a.out.display()
        );
    }
    bipo::util::fs::ensure_writable_parent(&a.out)?;
    let stem = a
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v = if a.method == Method::Random {
        let like = a
            .like
            .as_ref()
            .context("random needs --like VECTOR (its norms are copied)")?;
        let l = bipo::io::read_vector(like)?;
        let extra = [
            ("like", like.display().to_string()),
            ("seed", a.seed.to_string()),
        ];
        baselines::random_like(&l, a.seed, meta(&stem, "random", None, &extra))
    } else {
        let (Some(model), Some(data)) = (&a.model, &a.data) else {
            bail!("caa, pca and mean-centring need --model and --data");
        };
        let model = ModelArgs {
            model: model.clone(),
            device: a.device.clone(),
            dtype: "f32".into(),
            train_dtype: "fast".into(),
            lora: a.lora.clone(),
        };
        if a.layers.is_empty() {
            bail!("give at least one --layer");
        }
        let lm = model.load()?;
        let mut layers = std::collections::BTreeSet::new();
        for spec in &a.layers {
            layers.extend(spec.resolve(lm.model.num_layers())?);
        }
        let layers: Vec<usize> = layers.into_iter().collect();
        let read_at: ReadAt = a.read_at.parse()?;
        let template = crate::args::chat_template(&lm, a.template.as_deref())?;
        let (r, sha) = reads(
            &lm,
            &template,
            data,
            &layers,
            read_at,
            a.system.as_deref(),
            a.skip_invalid_rows,
        )?;
        let extra = [("data_sha256", sha), ("read_at", a.read_at.clone())];
        let d = baselines::differences_of(&r);
        let id = lm.identity()?;
        match a.method {
            Method::Caa => baselines::caa(&d, meta(&stem, "caa", Some(&id), &extra)),
            Method::MeanCentring => mean_centring(
                &lm,
                &r,
                a.neutral.as_deref(),
                meta(&stem, "mean-centring", Some(&id), &extra),
            )?,
            _ => baselines::pca_diff(&d, meta(&stem, "pca-diff", Some(&id), &extra)),
        }
    };
    write(&v, &a.out)?;
    for (l, n) in v.norms() {
        crate::note!("layer {l}: norm {n:.4}");
    }
    crate::note!("wrote {}", a.out.display());
    Ok(())
}
