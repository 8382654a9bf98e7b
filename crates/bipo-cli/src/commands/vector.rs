//! `bipo vector`: inspect, convert, scale, combine and compare steering vectors in any
//! supported format (bipo safetensors, llama.cpp control-vector GGUF).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bipo::{SteeringVector, VectorMeta};
use clap::Subcommand;

use bipo::util::layers::LayerSpec;

use crate::args::parse_vector_spec;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Layers, width, norms and metadata of a vector file.
    Info {
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Keep (or with --drop, remove) some layers: `select IN OUT --layers 1-20`.
    Select {
        input: PathBuf,
        output: PathBuf,
        /// Layers of the vector: N, A-B, A,B,C, -1 (its last layer).
        #[arg(long, allow_hyphen_values = true)]
        layers: LayerSpec,
        /// Remove the listed layers instead of keeping them.
        #[arg(long)]
        drop: bool,
        #[arg(long, default_value = "llama")]
        model_hint: String,
    },
    /// Rewrite a vector in the format named by OUT's extension (.gguf or .safetensors).
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// The layer of a PyTorch .pt vector (the BiPO paper's files do not store it).
        #[arg(long)]
        layer: Option<usize>,
        /// `controlvector.model_hint` for GGUF output (llama.cpp's architecture name).
        #[arg(long, default_value = "llama")]
        model_hint: String,
    },
    /// Multiply every direction by K.
    Scale {
        input: PathBuf,
        #[arg(allow_negative_numbers = true)]
        k: f32,
        output: PathBuf,
        #[arg(long, default_value = "llama")]
        model_hint: String,
    },
    /// Rescale to a given norm, so vectors of different methods compare at equal
    /// strength: `normalize IN OUT --norm 4` (the whole vector) or `--per-layer`; or
    /// every layer to a fraction of the model's residual-stream norm at that layer:
    /// `normalize IN OUT --to-residual 0.1 -m MODEL`.
    Normalize {
        input: PathBuf,
        output: PathBuf,
        /// Target L2 norm (> 0).
        #[arg(
            long,
            required_unless_present = "to_residual",
            conflicts_with = "to_residual"
        )]
        norm: Option<f32>,
        /// Give every layer's direction this norm (default: the vector as a whole).
        #[arg(long)]
        per_layer: bool,
        /// Give every layer's direction this fraction of the mean residual-stream norm
        /// at that layer (block outputs on neutral text, first token left out); needs -m.
        #[arg(long, value_name = "FRACTION", requires = "model")]
        to_residual: Option<f32>,
        /// The model whose residual norms --to-residual uses.
        #[arg(
            long,
            short = 'm',
            value_name = "FILE|FOLDER|HUB-ID",
            env = "BIPO_MODEL"
        )]
        model: Option<String>,
        /// Neutral text for --to-residual (paragraphs separated by blank lines; default:
        /// bipo's own).
        #[arg(long, value_name = "FILE")]
        neutral: Option<PathBuf>,
        #[arg(long, default_value = "llama")]
        model_hint: String,
    },
    /// Weighted sum of vectors: `-o OUT A.gguf:1 B.safetensors:0.5`.
    Combine {
        /// Output file (.safetensors or .gguf); `--out` also works, as elsewhere.
        #[arg(short, long, visible_alias = "out")]
        output: PathBuf,
        #[arg(required = true, value_name = "FILE[:WEIGHT]")]
        inputs: Vec<String>,
        #[arg(long, default_value = "llama")]
        model_hint: String,
    },
    /// Per-layer norms and pairwise cosine similarities.
    Compare {
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn write(v: &SteeringVector, path: &Path, hint: &str) -> Result<()> {
    bipo::io::write_vector(v, path, hint)?;
    crate::note!("wrote {}", path.display());
    Ok(())
}

/// Refuses an output that is one of the inputs, or a format that cannot be written,
/// before reading anything.
fn check_output(inputs: &[&Path], output: &Path) -> Result<()> {
    let named: Vec<(&str, &Path)> = inputs.iter().map(|p| ("the input", *p)).collect();
    bipo::util::fs::check_outputs(&named, &[("output", output)])?;
    if !matches!(
        output.extension().and_then(|e| e.to_str()),
        Some("gguf" | "safetensors")
    ) {
        bail!(
            "invalid output file {}: use a .safetensors or .gguf extension",
            output.display()
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    match &a.cmd {
        Cmd::Convert { input, output, .. }
        | Cmd::Scale { input, output, .. }
        | Cmd::Select { input, output, .. } => check_output(&[input], output)?,
        Cmd::Normalize {
            input,
            output,
            neutral,
            ..
        } => {
            let mut inputs = vec![input.as_path()];
            inputs.extend(neutral.as_deref());
            check_output(&inputs, output)?
        }
        Cmd::Combine { inputs, output, .. } => {
            let paths = inputs
                .iter()
                .map(|s| parse_vector_spec(s).map(|(p, _)| p))
                .collect::<Result<Vec<_>>>()?;
            check_output(
                &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
                output,
            )?
        }
        _ => {}
    }
    if let Cmd::Scale { k, .. } = &a.cmd {
        crate::args::check_multiplier(*k).context("vector scale K")?;
    }
    match a.cmd {
        Cmd::Info { file, json: true } => {
            let v = bipo::io::read_vector(&file)?;
            let out = serde_json::json!({
                "file": file.display().to_string(),
                "name": v.meta.name,
                "method": v.meta.method,
                "model": v.meta.model,
                "width": v.hidden_size(),
                "layers": v.layers.keys().collect::<Vec<_>>(),
                "norms": v.norms(),
                "metadata": v.meta.extra,
            });
            crate::outln!("{out}")?;
        }
        Cmd::Select {
            input,
            output,
            layers,
            drop,
            model_hint,
        } => {
            let mut v = bipo::io::read_vector(&input)?;
            let depth = v.layers.keys().next_back().map_or(0, |l| l + 1);
            let listed = layers.resolve(depth)?;
            if let Some(l) = listed.iter().find(|l| !v.layers.contains_key(l)) {
                bail!(
                    "invalid --layers {layers}: layer {l} is not in {} (it has {})",
                    input.display(),
                    v.layers
                        .keys()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            v.layers.retain(|l, _| listed.contains(l) != drop);
            if v.layers.is_empty() {
                bail!(
                    "invalid --layers {layers}: no layer of {} would be left",
                    input.display()
                );
            }
            write(&v, &output, &model_hint)?;
        }
        Cmd::Normalize {
            input,
            output,
            norm,
            per_layer,
            to_residual,
            model,
            neutral,
            model_hint,
        } => {
            let mut v = bipo::io::read_vector(&input)?;
            let factors = match (norm, to_residual, model) {
                (Some(norm), _, _) => norm_factors(&v, norm, per_layer)?,
                (None, Some(f), Some(model)) => {
                    residual_factors(&v, &input, f, &model, neutral.as_deref())?
                }
                _ => unreachable!("clap requires --norm, or --to-residual with -m"),
            };
            for (l, d) in v.layers.iter_mut() {
                if factors[l].is_infinite() {
                    bail!(
                        "{}: layer {l} is all zeros; it has no direction to rescale",
                        input.display()
                    );
                }
                d.iter_mut().for_each(|x| *x *= factors[l]);
            }
            if let Some(f) = to_residual {
                v.meta
                    .extra
                    .insert("normalized_to_residual".into(), f.to_string());
            }
            write(&v, &output, &model_hint)?;
        }
        Cmd::Info { file, json: false } => {
            let v = bipo::io::read_vector(&file)?;
            crate::outln!("name:    {}", v.meta.name)?;
            crate::outln!("method:  {}", v.meta.method.as_deref().unwrap_or("unknown"))?;
            crate::outln!("model:   {}", v.meta.model.as_deref().unwrap_or("unknown"))?;
            crate::outln!("width:   {}", v.hidden_size().unwrap_or(0))?;
            crate::outln!(
                "layers:  {}",
                v.layers
                    .keys()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for (l, n) in v.norms() {
                crate::outln!("  layer {l:>3}  norm {n:.4}")?;
            }
            for (k, val) in &v.meta.extra {
                crate::outln!("{k}: {val}")?;
            }
        }
        Cmd::Convert {
            input,
            output,
            layer,
            model_hint,
        } => write(
            &bipo::io::read_vector_at(&input, layer)?,
            &output,
            &model_hint,
        )?,
        Cmd::Scale {
            input,
            k,
            output,
            model_hint,
        } => {
            write(
                &bipo::io::read_vector(&input)?.scaled(k),
                &output,
                &model_hint,
            )?;
        }
        Cmd::Combine {
            output,
            inputs,
            model_hint,
        } => {
            let parts = inputs
                .iter()
                .map(|s| {
                    let (p, w) = parse_vector_spec(s)?;
                    Ok((bipo::io::read_vector(&p)?, w))
                })
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<(&SteeringVector, f32)> = parts.iter().map(|(v, w)| (v, *w)).collect();
            let name = output
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = VectorMeta {
                name,
                method: Some(format!("combination of {}", inputs.join(" + "))),
                ..Default::default()
            };
            write(&SteeringVector::combine(&refs, meta)?, &output, &model_hint)?;
        }
        Cmd::Compare { files, json } => {
            let vs = files
                .iter()
                .map(|f| bipo::io::read_vector(f))
                .collect::<bipo::Result<Vec<_>>>()?;
            if json {
                let mut pairs = Vec::new();
                for i in 0..vs.len() {
                    for j in i + 1..vs.len() {
                        let cos = vs[i].cosine(&vs[j]).with_context(|| {
                            format!("{} vs {}", files[i].display(), files[j].display())
                        })?;
                        pairs.push(serde_json::json!({
                            "a": files[i].display().to_string(),
                            "b": files[j].display().to_string(),
                            "cosine": cos,
                        }));
                    }
                }
                let norms: Vec<_> = files
                    .iter()
                    .zip(&vs)
                    .map(|(f, v)| {
                        serde_json::json!({
                            "file": f.display().to_string(),
                            "norms": v.norms(),
                        })
                    })
                    .collect();
                crate::outln!(
                    "{}",
                    serde_json::json!({"vectors": norms, "cosines": pairs})
                )?;
                return Ok(());
            }
            for (f, v) in files.iter().zip(&vs) {
                let norms: Vec<String> = v
                    .norms()
                    .iter()
                    .map(|(l, n)| format!("{l}:{n:.3}"))
                    .collect();
                crate::outln!("{}  norms {}", f.display(), norms.join(" "))?;
            }
            for i in 0..vs.len() {
                for j in i + 1..vs.len() {
                    let cos: Vec<String> = vs[i]
                        .cosine(&vs[j])
                        .with_context(|| {
                            format!("{} vs {}", files[i].display(), files[j].display())
                        })?
                        .iter()
                        .map(|(l, c)| format!("{l}:{c:+.3}"))
                        .collect();
                    let shown = if cos.is_empty() {
                        "no common layers".to_string()
                    } else {
                        cos.join(" ")
                    };
                    crate::outln!(
                        "cosine {} vs {}: {shown}",
                        files[i].display(),
                        files[j].display()
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn layer_norm(d: &[f32]) -> f32 {
    d.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Per-layer scale factors giving the vector (or with `per_layer` each layer) the L2
/// norm `norm` (infinite for a zero layer that must be rescaled).
fn norm_factors(v: &SteeringVector, norm: f32, per_layer: bool) -> Result<BTreeMap<usize, f32>> {
    if !(norm.is_finite() && norm > 0.0 && norm <= crate::args::MAX_MULTIPLIER) {
        bail!("invalid --norm {norm}: must be > 0 and finite");
    }
    let total = v.norms().values().map(|n| n * n).sum::<f32>().sqrt();
    Ok(v.layers
        .iter()
        .map(|(l, d)| {
            let n = if per_layer { layer_norm(d) } else { total };
            (*l, if n == 0.0 { f32::INFINITY } else { norm / n })
        })
        .collect())
}

/// Per-layer scale factors giving each layer `f` times the model's mean residual-stream
/// norm at that layer, measured on neutral text.
fn residual_factors(
    v: &SteeringVector,
    input: &Path,
    f: f32,
    model: &str,
    neutral: Option<&Path>,
) -> Result<BTreeMap<usize, f32>> {
    if !(f.is_finite() && f > 0.0 && f <= crate::args::MAX_MULTIPLIER) {
        bail!("invalid --to-residual {f}: must be > 0 and finite");
    }
    let lm = bipo::load::load(model, &Default::default())?;
    crate::args::check_vector(v, input, &lm)?;
    let ids = bipo::eval::damage::neutral_ids(&lm.tokenizer, neutral)?;
    let layers: Vec<usize> = v.layers.keys().copied().collect();
    let norms = bipo::baselines::residual_norms(&lm.model, &ids, &layers)?;
    Ok(v.layers
        .iter()
        .map(|(l, d)| {
            let (n, target) = (layer_norm(d), f * norms[l]);
            crate::note!(
                "layer {l}: residual norm {:.3}, direction norm {n:.4} -> {target:.4}",
                norms[l]
            );
            (*l, if n == 0.0 { f32::INFINITY } else { target / n })
        })
        .collect())
}
