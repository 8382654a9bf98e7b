//! `bipo eval`: measure steering vectors at several multipliers, write a report.
//! Also the shared evaluation flags and runner used by `compare`.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use bipo::eval::ab::{self, AbItem};
use bipo::eval::judge::{Judge, JudgeConfig};
use bipo::eval::open_ended::{self, Question};
use bipo::eval::report::{DataFile, Report};
use bipo::eval::{damage, EvalData, EvalOptions, DEFAULT_EVAL_BATCH};
use bipo::load::LoadedModel;
use bipo::SteeringVector;

use crate::args::ModelArgs;

/// Flags shared by `eval` and `compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalFlags {
    /// Positions steered: all, prompt tokens only, or response/generated tokens only
    /// (A/B answer letters are predicted from the prompt, so `generated` leaves A/B flat).
    #[arg(long, value_name = "all|prompt|generated", default_value = "all")]
    pub positions: bipo::steer::Positions,
    /// Test data, repeatable: A/B questions (test_infer.csv, CAA JSON) and/or free-text pairs (test.csv); detected by content.
    #[arg(long = "data", value_name = "FILE", required = true)]
    pub data: Vec<PathBuf>,
    /// Multipliers, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-2,-1,-0.5,0,0.5,1,2"
    )]
    pub multipliers: Vec<f32>,
    /// Output folder: report.json, report.md, plots (PNG + SVG), answers.jsonl.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Neutral text for the damage check (paragraphs separated by blank lines; default: bipo's own).
    #[arg(long, value_name = "FILE")]
    pub neutral: Option<PathBuf>,
    /// Skip the damage check.
    #[arg(long)]
    pub no_damage: bool,
    /// Greedy answers to this many test questions per vector and multiplier (0 = none).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub open_ended: usize,
    /// Longest open-ended answer, in tokens.
    #[arg(long, default_value_t = 48, value_name = "N")]
    pub max_tokens: usize,
    /// Examples per forward pass.
    #[arg(long, default_value_t = DEFAULT_EVAL_BATCH)]
    pub batch: usize,
    /// System prompt for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Built-in template (llama2, mistral) instead of the model's own.
    #[arg(long)]
    pub template: Option<String>,
    /// Use only the first N examples of each data file.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Judge endpoint (OpenAI-compatible; base URL or .../chat/completions). Env: BIPO_JUDGE_URL.
    #[arg(long, env = "BIPO_JUDGE_URL", value_name = "URL")]
    pub judge_url: Option<String>,
    /// Judge model name. Env: BIPO_JUDGE_MODEL.
    #[arg(long, env = "BIPO_JUDGE_MODEL", default_value = "gpt-4o-mini")]
    pub judge_model: String,
    /// Judge API key. Env: BIPO_JUDGE_API_KEY (or OPENAI_API_KEY).
    #[arg(long, env = "BIPO_JUDGE_API_KEY", hide_env_values = true)]
    pub judge_key: Option<String>,
    /// The behaviour, as the judge's rubric names it (e.g. "power-seeking").
    #[arg(long, default_value = "the target behaviour")]
    pub behaviour: String,
    /// Report title.
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Vector files to evaluate (any format), optionally labelled: `FILE:NAME` names the
    /// vector in the report (default: its metadata name; vectors that share a name are
    /// told apart by file name); repeatable.
    #[arg(
        long = "vector",
        short = 'v',
        value_name = "FILE[:NAME]",
        required = true
    )]
    vectors: Vec<String>,
    /// Layer for .pt vectors (which do not record it).
    #[arg(long)]
    layer: Option<usize>,
    /// Evaluate only the vectors' layers from START to END (inclusive), like
    /// llama.cpp's --control-vector-layer-range.
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    layer_range: Option<Vec<usize>>,
    #[command(flatten)]
    flags: EvalFlags,
}

/// Whether `eval` writes a file of this name into its output folder.
pub fn eval_writes(name: &str) -> bool {
    name.starts_with("report.")
        || name == "answers.jsonl"
        || name.ends_with(".png")
        || name.ends_with(".svg")
}

impl EvalFlags {
    /// Checks the flags and the output folder before any model is loaded: values in
    /// range, no input overwritten, the folder writable.
    pub fn check(&self, inputs: &[(&str, &Path)], written: impl Fn(&str) -> bool) -> Result<()> {
        if self.multipliers.is_empty() {
            bail!("invalid --multipliers: the list is empty");
        }
        for &m in &self.multipliers {
            crate::args::check_multiplier(m).context("--multipliers")?;
        }
        if self.batch == 0 {
            bail!("invalid --batch 0: must be >= 1");
        }
        if self.max_tokens == 0 && self.open_ended > 0 {
            bail!("invalid --max-tokens 0: must be >= 1 (or pass --open-ended 0)");
        }
        if self.limit == Some(0) {
            bail!("invalid --limit 0: must be >= 1");
        }
        let mut all: Vec<(&str, &Path)> = inputs.to_vec();
        all.extend(self.data.iter().map(|d| ("--data", d.as_path())));
        all.extend(self.neutral.iter().map(|d| ("--neutral", d.as_path())));
        bipo::util::fs::check_output_dir(&all, "--out", &self.out, written)?;
        bipo::util::fs::ensure_writable_dir(&self.out)?;
        Ok(())
    }
}

pub fn bar(len: u64) -> Progress {
    Progress::new(len, "{spinner} {msg} [{bar:30}] {pos}/{len} {eta}")
}

fn data_file(path: &Path, kind: &str, n: usize) -> Result<DataFile> {
    Ok(DataFile {
        path: path.display().to_string(),
        sha256: bipo::util::file_sha256(path)?,
        kind: kind.into(),
        examples: n,
    })
}

/// Runs the whole evaluation and writes the report into `flags.out`.
pub fn run_eval(
    lm: &LoadedModel,
    vectors: &[SteeringVector],
    flags: &EvalFlags,
    mut extra_data: Vec<DataFile>,
    title: &str,
) -> Result<Report> {
    let template = crate::args::chat_template(lm, flags.template.as_deref())?;
    let cut = |n: usize| flags.limit.map_or(n, |l| l.min(n));
    let (mut ab_items, mut pairs): (Option<Vec<AbItem>>, Option<Vec<_>>) = (None, None);
    let mut files = Vec::new();
    for p in &flags.data {
        if ab::is_ab_file(p) {
            let mut items = ab::load_ab(p)?;
            items.truncate(cut(items.len()));
            files.push(data_file(p, "ab", items.len())?);
            ab_items.get_or_insert_with(Vec::new).extend(items);
        } else {
            let mut d = bipo::data::load_pairs(p)?.pairs;
            d.truncate(cut(d.len()));
            files.push(data_file(p, "pairs", d.len())?);
            pairs.get_or_insert_with(Vec::new).extend(d);
        }
    }
    let neutral = if flags.no_damage {
        Vec::new()
    } else if let Some(p) = &flags.neutral {
        let text = bipo::util::read_text(p)?;
        let paras = damage::paragraphs(&text);
        files.push(data_file(p, "neutral", paras.len())?);
        paras
    } else {
        damage::paragraphs(damage::NEUTRAL_TEXT)
    };
    files.append(&mut extra_data);
    let opts = EvalOptions {
        multipliers: flags.multipliers.clone(),
        batch: flags.batch,
        system: flags.system.clone(),
        positions: flags.positions,
    };
    let data = EvalData {
        ab: ab_items.as_deref(),
        pairs: pairs.as_deref(),
        neutral: &neutral,
    };
    let pb = bar(1);
    let reports = bipo::eval::evaluate(
        lm,
        &template,
        vectors,
        &data,
        &opts,
        |stage, done, total| {
            pb.set_message(stage.to_string());
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&flags.out).with_context(|| flags.out.display().to_string())?;
    let open = open_ended_answers(
        lm,
        &template,
        vectors,
        flags,
        ab_items.as_deref(),
        pairs.as_deref(),
    )?;
    let model_sha = lm
        .path
        .is_file()
        .then(|| bipo::util::file_sha256(&lm.path))
        .transpose()?;
    let report = Report {
        title: title.into(),
        tool: format!("bipo {}", env!("CARGO_PKG_VERSION")),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: lm.model.info.source.clone(),
        model_sha256: model_sha,
        command: bipo::util::redact::this_command_line(),
        data: files,
        multipliers: flags.multipliers.clone(),
        vectors: reports,
        open_ended: open,
        extra: serde_json::Value::Null,
    };
    report.write(&flags.out)?;
    Ok(report)
}

/// Greedy answers (and judge scores) written to OUT/answers.jsonl; returns a summary.
fn open_ended_answers(
    lm: &LoadedModel,
    template: &bipo::text::ChatTemplate,
    vectors: &[SteeringVector],
    flags: &EvalFlags,
    ab_items: Option<&[AbItem]>,
    pairs: Option<&[bipo::data::PreferencePair]>,
) -> Result<Option<serde_json::Value>> {
    if flags.open_ended == 0 {
        return Ok(None);
    }
    let questions: Vec<Question> = match (pairs, ab_items) {
        (Some(p), _) => p
            .iter()
            .map(|p| Question {
                question: p.question.clone(),
                matching: p.matching.clone(),
                opposite: p.not_matching.clone(),
            })
            .collect(),
        (None, Some(items)) => items
            .iter()
            .map(|it| {
                let (m, o) = if it.matching_is_b {
                    (&it.b, &it.a)
                } else {
                    (&it.a, &it.b)
                };
                Question {
                    question: it.question.clone(),
                    matching: m.clone(),
                    opposite: o.clone(),
                }
            })
            .collect(),
        (None, None) => return Ok(None),
    };
    let questions = &questions[..flags.open_ended.min(questions.len())];
    let pb = bar(0);
    pb.set_message("open-ended answers");
    let mut answers = open_ended::answers(
        lm,
        template,
        flags.system.as_deref(),
        vectors,
        &flags.multipliers,
        questions,
        flags.max_tokens,
        flags.positions,
        |d, n| {
            pb.set_length(n as u64);
            pb.set_position(d as u64);
        },
    )?;
    pb.finish_and_clear();
    let mut summary = serde_json::json!({ "answers": "answers.jsonl", "questions": questions.len(), "max_tokens": flags.max_tokens });
    if let Some(url) = &flags.judge_url {
        let mut cfg = JudgeConfig::new(url, &flags.judge_model);
        cfg.api_key = flags
            .judge_key
            .clone()
            .or_else(|| std::env::var("OPENAI_API_KEY").ok());
        cfg.cache_dir = Some(flags.out.join("judge-cache"));
        let judge = Judge::new(cfg);
        let pb = bar(answers.len() as u64);
        pb.set_message(format!("judging with {}", flags.judge_model));
        open_ended::judge_all(&judge, &flags.behaviour, questions, &mut answers, |d, _| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        summary["judge"] = serde_json::json!({
            "url": bipo::util::redact::redact(url), "model": flags.judge_model, "requests": judge.requests(),
            "mean_score": open_ended::score_summary(&answers),
        });
    }
    let mut jsonl = String::new();
    for a in &answers {
        jsonl += &serde_json::to_string(a)?;
        jsonl.push('\n');
    }
    bipo::util::write_atomic(&flags.out.join("answers.jsonl"), jsonl.as_bytes())?;
    Ok(Some(summary))
}

/// Splits `FILE[:NAME]`: the suffix is a label unless the whole spec names a file.
fn labelled(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once(':') {
        Some((file, name))
            if !file.is_empty()
                && !name.is_empty()
                && !name.contains(['/', '\\'])
                && !Path::new(spec).exists() =>
        {
            (PathBuf::from(file), Some(name.to_string()))
        }
        _ => (PathBuf::from(spec), None),
    }
}

/// Gives vectors that share a name their file stem (then a number) instead.
fn distinct_names(vectors: &mut [SteeringVector], paths: &[PathBuf], labelled: &[bool]) {
    let count = |vs: &[SteeringVector], n: &str| vs.iter().filter(|v| v.meta.name == n).count();
    for i in 0..vectors.len() {
        if !labelled[i] && count(vectors, &vectors[i].meta.name.clone()) > 1 {
            vectors[i].meta.name = paths[i]
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
    }
    for i in 0..vectors.len() {
        let name = vectors[i].meta.name.clone();
        if vectors[..i].iter().any(|v| v.meta.name == name) {
            let mut k = 2;
            while count(vectors, &format!("{name}-{k}")) > 0 {
                k += 1;
            }
            vectors[i].meta.name = format!("{name}-{k}");
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let specs: Vec<(PathBuf, Option<String>)> = a.vectors.iter().map(|s| labelled(s)).collect();
    let mut inputs = vec![("--model", Path::new(&a.model.model))];
    inputs.extend(specs.iter().map(|(p, _)| ("--vector", p.as_path())));
    a.flags.check(&inputs, eval_writes)?;
    let lm = a.model.load()?;
    let mut vectors = specs
        .iter()
        .map(|(p, name)| {
            let mut v = bipo::io::read_vector_at(p, a.layer)?;
            v.check_fits(lm.model.hidden_size(), lm.model.num_layers())
                .with_context(|| p.display().to_string())?;
            if let Some(n) = name {
                v.meta.name = n.clone();
            }
            if let Some(r) = a.layer_range.as_deref() {
                if !crate::args::keep_layer_range(&mut v, r)? {
                    bail!(
                        "invalid --layer-range {} {}: {} has no layer in it",
                        r[0],
                        r[1],
                        p.display()
                    );
                }
            }
            Ok(v)
        })
        .collect::<Result<Vec<_>>>()?;
    let paths: Vec<PathBuf> = specs.iter().map(|(p, _)| p.clone()).collect();
    let named: Vec<bool> = specs.iter().map(|(_, n)| n.is_some()).collect();
    distinct_names(&mut vectors, &paths, &named);
    let title = a.flags.title.clone().unwrap_or_else(|| "bipo eval".into());
    let r = run_eval(&lm, &vectors, &a.flags, Vec::new(), &title)?;
    crate::outln!("{}", r.markdown())?;
    crate::note!("report: {}", a.flags.out.join("report.md").display());
    Ok(())
}
