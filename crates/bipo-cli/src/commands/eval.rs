//! `bipo eval`: measure steering vectors at several multipliers, write a report.
//! Also the shared evaluation flags and runner used by `compare`.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use anyhow::{bail, Context, Result};
use bipo::eval::pipeline::{self, EvalConfig, JudgeSettings};
use bipo::eval::report::{DataFile, Report};
use bipo::eval::DEFAULT_EVAL_BATCH;
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
    /// Make multipliers comparable: rescale every vector to the first one's L2 norm
    /// (`norm`) or to the damage it does at multiplier 1 (`kl`: KL per token on the
    /// neutral text) before measuring.
    #[arg(long = "match", value_name = "none|norm|kl", default_value = "none")]
    pub match_by: bipo::eval::matching::Match,
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
    /// Prompting baseline: a TOML file with `positive = "..."` and `negative = "..."`
    /// instructions (optional `mode = "system"`, `"prefix"` or `"suffix"`), measured as the row
    /// `prompting` at multipliers -1/0/+1 beside the vectors.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// With --prompts: also measure every vector on top of each instruction
    /// (`NAME (prompt+)`, `NAME (prompt-)`).
    #[arg(long, requires = "prompts")]
    pub prompted: bool,
    /// Count refusals in the open-ended answers and report the attack success rate
    /// (share of answers without a refusal string) per vector and multiplier.
    #[arg(long)]
    pub refusal: bool,
    /// Refusal strings, one per line (`#` starts a comment line), instead of the GCG
    /// paper's list (implies --refusal).
    #[arg(long, value_name = "FILE")]
    pub refusal_strings: Option<PathBuf>,
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
    pipeline::writes_eval_file(name)
}

impl EvalFlags {
    /// Checks the flags and the output folder before any model is loaded: values in
    /// range, no input overwritten, the folder writable.
    pub fn check(&self, inputs: &[(&str, &Path)], written: impl Fn(&str) -> bool) -> Result<()> {
        // The library checks these too (EvalConfig::check); here they name the flags.
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
        if self.counts_refusals() && self.open_ended == 0 {
            bail!("invalid --open-ended 0: --refusal counts refusals in the open-ended answers");
        }
        if let Some(p) = &self.refusal_strings {
            bipo::eval::refusal::RefusalStrings::read(p).context("--refusal-strings")?;
        }
        if let Some(p) = &self.prompts {
            bipo::eval::prompting::PromptBaseline::read(p).context("--prompts")?;
            if let Some(d) = bipo::eval::prompting::DIRECTIONS
                .iter()
                .find(|d| !self.multipliers.contains(d))
            {
                bail!("invalid --multipliers: --prompts reports the prompts at -1, 0 and +1, so include {d}");
            }
        }
        let mut all: Vec<(&str, &Path)> = inputs.to_vec();
        all.extend(self.data.iter().map(|d| ("--data", d.as_path())));
        all.extend(self.prompts.iter().map(|d| ("--prompts", d.as_path())));
        all.extend(self.neutral.iter().map(|d| ("--neutral", d.as_path())));
        all.extend(
            self.refusal_strings
                .iter()
                .map(|d| ("--refusal-strings", d.as_path())),
        );
        bipo::util::fs::check_output_dir(&all, "--out", &self.out, written)?;
        bipo::util::fs::ensure_writable_dir(&self.out)?;
        Ok(())
    }

    /// Whether refusals are counted (`--refusal`, or implied by `--refusal-strings`).
    fn counts_refusals(&self) -> bool {
        self.refusal || self.refusal_strings.is_some()
    }

    /// The library's evaluation settings for these flags.
    pub fn config(&self, title: String) -> Result<EvalConfig> {
        let judge = self.judge_url.as_ref().map(|url| JudgeSettings {
            url: url.clone(),
            model: self.judge_model.clone(),
            api_key: self
                .judge_key
                .clone()
                .or_else(|| std::env::var("OPENAI_API_KEY").ok()),
            behaviour: self.behaviour.clone(),
            cache_dir: Some(self.out.join("judge-cache")),
        });
        Ok(EvalConfig {
            data: self.data.clone(),
            multipliers: self.multipliers.clone(),
            positions: self.positions,
            neutral: self.neutral.clone(),
            damage: !self.no_damage,
            match_by: self.match_by,
            open_ended: self.open_ended,
            max_tokens: self.max_tokens,
            batch: self.batch,
            system: self.system.clone(),
            template: self.template.clone(),
            limit: self.limit,
            judge,
            title,
            prompts: self
                .prompts
                .as_deref()
                .map(bipo::eval::prompting::PromptBaseline::read)
                .transpose()?,
            prompted: self.prompted,
            refusal: self.counts_refusals(),
            refusal_strings: self.refusal_strings.clone(),
        })
    }
}

pub fn bar(len: u64) -> Progress {
    Progress::new(len, "{spinner} {msg} [{bar:30}] {pos}/{len} {eta}")
}

/// Runs the whole evaluation and writes the report into `flags.out`.
pub fn run_eval(
    lm: &LoadedModel,
    vectors: &[SteeringVector],
    flags: &EvalFlags,
    extra_data: Vec<DataFile>,
    title: &str,
) -> Result<Report> {
    // The CLI's hint for a model without a chat template.
    crate::args::chat_template(lm, flags.template.as_deref())?;
    let cfg = flags.config(title.into())?;
    if crate::out::verbose() {
        let mut shown = cfg.clone();
        if let Some(j) = shown.judge.as_mut() {
            j.url = bipo::util::redact::redact(&j.url);
        }
        crate::verbose!("settings: {}", serde_json::to_string(&shown)?);
    }
    let pb = bar(1);
    let out = pipeline::run(lm, vectors, &cfg, extra_data, |stage, done, total| {
        pb.set_message(stage.to_string());
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    out.write(&flags.out)?;
    Ok(out.report)
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
            crate::args::check_vector(&v, p, &lm)?;
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
