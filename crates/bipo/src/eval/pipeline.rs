//! The whole evaluation as one call: read the data files, measure every vector at every
//! multiplier ([`super::evaluate`]), write greedy open-ended answers (optionally scored
//! by an LLM judge) and assemble the [`Report`]. `bipo eval`, `bipo compare` and the
//! Python package's `bipo.evaluate` all run this; writing the files is separate
//! ([`EvalOutput::write`]) so a caller can keep the results in memory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ab::{self, AbItem};
use super::damage;
use super::judge::{Judge, JudgeConfig};
use super::matching::{self, Match};
use super::mc;
use super::open_ended::{self, Answer, Question};
use super::prompting::{self, PromptBaseline};
use super::refusal::{self, RefusalStrings};
use super::report::{DataFile, Report};
use super::{EvalData, EvalOptions, DEFAULT_EVAL_BATCH, DEFAULT_MULTIPLIERS};
use crate::data::PreferencePair;
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::steer::Positions;
use crate::text::ChatTemplate;
use crate::vector::SteeringVector;

/// Largest multiplier magnitude accepted anywhere (beyond it activations overflow).
pub const MAX_MULTIPLIER: f32 = 1e4;

/// Checks one multiplier: finite and within [`MAX_MULTIPLIER`].
pub fn check_multiplier(x: f32) -> Result<()> {
    if !x.is_finite() || x.abs() > MAX_MULTIPLIER {
        return Err(Error::invalid(
            format!("multiplier {x}"),
            format!("must be finite and within ±{MAX_MULTIPLIER}"),
        ));
    }
    Ok(())
}

/// An OpenAI-compatible judge for the open-ended answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// Base URL (`http://host:port/v1`) or the full `.../chat/completions` URL.
    pub url: String,
    #[serde(default = "default_judge_model")]
    pub model: String,
    /// Never serialised (a run record must not hold secrets).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// The behaviour as the rubric names it (e.g. "power-seeking").
    #[serde(default = "default_behaviour")]
    pub behaviour: String,
    /// Verdicts are cached here (None: no cache).
    #[serde(skip)]
    pub cache_dir: Option<PathBuf>,
}

fn default_judge_model() -> String {
    "gpt-4o-mini".into()
}

fn default_behaviour() -> String {
    "the target behaviour".into()
}

/// What to evaluate on and how; every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Test data: A/B question files (test_infer.csv, CAA JSON) and/or free-text
    /// preference pairs, told apart by content.
    pub data: Vec<PathBuf>,
    pub multipliers: Vec<f32>,
    /// Positions steered in the A/B and held-out pair measurements.
    pub positions: Positions,
    /// Neutral text for the damage check (paragraphs separated by blank lines);
    /// None: bipo's own.
    pub neutral: Option<PathBuf>,
    /// Run the damage check (KL and perplexity on neutral text).
    pub damage: bool,
    /// Rescale every vector to the first one's norm or damage before measuring.
    #[serde(rename = "match")]
    pub match_by: Match,
    /// Greedy answers to this many test questions per vector and multiplier.
    pub open_ended: usize,
    /// Longest open-ended answer, in tokens.
    pub max_tokens: usize,
    /// Examples per forward pass.
    pub batch: usize,
    pub system: Option<String>,
    /// Built-in chat template (llama2, mistral) instead of the model's own.
    pub template: Option<String>,
    /// Use only the first N examples of each data file.
    pub limit: Option<usize>,
    pub judge: Option<JudgeSettings>,
    pub title: String,
    /// The prompting baseline: one instruction per direction, measured and reported as
    /// the pseudo-vector `prompting` at multipliers -1/0/+1 ([`prompting`]).
    pub prompts: Option<PromptBaseline>,
    /// Also measure every vector on top of each instruction (`NAME (prompt±)`).
    pub prompted: bool,
    /// Count refusals in the open-ended answers and report the attack success rate
    /// (answers without a refusal string) per vector and multiplier ([`refusal`]).
    pub refusal: bool,
    /// Refusal strings, one per line (None: the GCG paper's list).
    pub refusal_strings: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            multipliers: DEFAULT_MULTIPLIERS.to_vec(),
            positions: Positions::All,
            neutral: None,
            damage: true,
            match_by: Match::None,
            open_ended: 4,
            max_tokens: 48,
            batch: DEFAULT_EVAL_BATCH,
            system: None,
            template: None,
            limit: None,
            judge: None,
            title: "bipo eval".into(),
            prompts: None,
            prompted: false,
            refusal: false,
            refusal_strings: None,
        }
    }
}

impl EvalConfig {
    /// Checks values before any model work: one-line errors naming the setting.
    pub fn check(&self) -> Result<()> {
        if self.data.is_empty() {
            return Err(Error::invalid("data", "no test data file given"));
        }
        if self.multipliers.is_empty() {
            return Err(Error::invalid("multipliers", "the list is empty"));
        }
        for &m in &self.multipliers {
            check_multiplier(m)?;
        }
        if self.batch == 0 {
            return Err(Error::invalid("batch 0", "must be >= 1"));
        }
        if self.max_tokens == 0 && self.open_ended > 0 {
            return Err(Error::invalid(
                "max_tokens 0",
                "must be >= 1 (or set open_ended to 0)",
            ));
        }
        if self.limit == Some(0) {
            return Err(Error::invalid("limit 0", "must be >= 1"));
        }
        match &self.prompts {
            Some(p) => {
                p.check()?;
                if let Some(m) = prompting::DIRECTIONS
                    .iter()
                    .find(|d| !self.multipliers.contains(d))
                {
                    return Err(Error::invalid(
                        "multipliers",
                        format!(
                            "the prompting baseline is reported at -1, 0 and +1, so the \
                             multipliers must include {m}"
                        ),
                    ));
                }
            }
            None if self.prompted => {
                return Err(Error::invalid(
                    "prompted",
                    "measuring vectors on top of prompts needs the prompts (a prompts file)",
                ))
            }
            None => {}
        }
        if self.refusal && self.open_ended == 0 {
            return Err(Error::invalid(
                "refusal",
                "counting refusals needs open-ended answers (open_ended >= 1)",
            ));
        }
        if self.refusal_strings.is_some() && !self.refusal {
            return Err(Error::invalid(
                "refusal_strings",
                "given without refusal = true",
            ));
        }
        Ok(())
    }
}

/// The model's chat template, or the built-in one named.
pub fn template_of(lm: &LoadedModel, builtin: Option<&str>) -> Result<ChatTemplate> {
    match builtin {
        Some(name) => ChatTemplate::builtin(name),
        None => lm.chat_template.clone().ok_or_else(|| {
            Error::invalid(
                "chat template",
                "the model has none: choose a built-in template (llama2 or mistral)",
            )
        }),
    }
}

/// A finished evaluation: the report and every open-ended answer.
#[derive(Clone, Debug, Serialize)]
pub struct EvalOutput {
    pub report: Report,
    pub answers: Vec<Answer>,
}

impl EvalOutput {
    /// Reads `dir/report.json` and, when present, `dir/answers.jsonl`.
    pub fn read(dir: &Path) -> Result<Self> {
        let report = Report::read(dir)?;
        let p = dir.join("answers.jsonl");
        let mut answers = Vec::new();
        if p.is_file() {
            for (i, line) in crate::util::read_text(&p)?.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                answers.push(serde_json::from_str(line).map_err(|e| {
                    Error::bad_file(&p, format!("line {}: not an answer: {e}", i + 1))
                })?);
            }
        }
        Ok(Self { report, answers })
    }

    /// Writes report.json, report.md, the plots and (if any) answers.jsonl into `dir`,
    /// each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.report.write(dir, &self.answers)?;
        if !self.answers.is_empty() {
            let mut jsonl = String::new();
            for a in &self.answers {
                jsonl += &serde_json::to_string(a).expect("answers serialise");
                jsonl.push('\n');
            }
            crate::util::write_atomic(&dir.join("answers.jsonl"), jsonl.as_bytes())?;
        }
        Ok(())
    }
}

/// Whether an evaluation writes a file of this name into its output folder.
pub fn writes_eval_file(name: &str) -> bool {
    name.starts_with("report.")
        || name == "answers.jsonl"
        || name.ends_with(".png")
        || name.ends_with(".svg")
}

fn data_file(path: &Path, kind: &str, n: usize) -> Result<DataFile> {
    Ok(DataFile {
        path: path.display().to_string(),
        sha256: crate::util::file_sha256(path)?,
        kind: kind.into(),
        examples: n,
    })
}

/// Runs the whole evaluation of `vectors` (each checked against the model) as `cfg`
/// says. `extra_data` lists further files the report should name (e.g. the training
/// pairs of a comparison). `progress(stage, done, total)` reports as it goes; an error
/// it returns (e.g. [`Error::Interrupted`]) stops the run soon after and is returned.
pub fn run(
    lm: &LoadedModel,
    vectors: &[SteeringVector],
    cfg: &EvalConfig,
    extra_data: Vec<DataFile>,
    mut progress: impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<EvalOutput> {
    cfg.check()?;
    if vectors.is_empty() {
        return Err(Error::invalid("vectors", "none given"));
    }
    let template = template_of(lm, cfg.template.as_deref())?;
    let cut = |n: usize| cfg.limit.map_or(n, |l| l.min(n));
    let (mut ab_items, mut pairs): (Option<Vec<AbItem>>, Option<Vec<_>>) = (None, None);
    let mut mc_items: Option<Vec<mc::McItem>> = None;
    let mut files = Vec::new();
    for p in &cfg.data {
        if mc::is_mc_file(p) {
            let mut items = mc::load_mc(p)?;
            items.truncate(cut(items.len()));
            files.push(data_file(p, "multiple choice", items.len())?);
            mc_items.get_or_insert_with(Vec::new).extend(items);
        } else if ab::is_ab_file(p) {
            let mut items = ab::load_ab(p)?;
            items.truncate(cut(items.len()));
            files.push(data_file(p, "ab", items.len())?);
            ab_items.get_or_insert_with(Vec::new).extend(items);
        } else {
            let mut d = crate::data::load_pairs(p)?.pairs;
            d.truncate(cut(d.len()));
            files.push(data_file(p, "pairs", d.len())?);
            pairs.get_or_insert_with(Vec::new).extend(d);
        }
    }
    let refusals = match (&cfg.refusal_strings, cfg.refusal) {
        (Some(p), true) => {
            let r = RefusalStrings::read(p)?;
            files.push(data_file(p, "refusal strings", r.0.len())?);
            Some(r)
        }
        (None, true) => Some(RefusalStrings::default()),
        (_, false) => None,
    };
    // Neutral text: for the damage check, and to match vectors in KL.
    let wants_neutral = cfg.damage || cfg.match_by == Match::Kl;
    let neutral = match (&cfg.neutral, wants_neutral) {
        (_, false) => Vec::new(),
        (Some(p), true) => {
            let paras = damage::paragraphs(&crate::util::read_text(p)?);
            files.push(data_file(p, "neutral", paras.len())?);
            paras
        }
        (None, true) => damage::paragraphs(damage::NEUTRAL_TEXT),
    };
    if cfg.match_by != Match::None {
        progress(
            &format!("matching in {:?}", cfg.match_by).to_lowercase(),
            0,
            1,
        )?;
    }
    let (matched, scales) = matching::matched(lm, vectors, cfg.match_by, &neutral)?;
    let vectors = matched.as_slice();
    files.extend(extra_data);
    let opts = EvalOptions {
        multipliers: cfg.multipliers.clone(),
        batch: cfg.batch,
        system: cfg.system.clone(),
        positions: cfg.positions,
    };
    let data = EvalData {
        ab: ab_items.as_deref(),
        pairs: pairs.as_deref(),
        mc: mc_items.as_deref(),
        neutral: if cfg.damage { &neutral } else { &[] },
    };
    let mut reports = super::evaluate(lm, &template, vectors, &data, &opts, &mut progress)?;
    if cfg.match_by != Match::None {
        for (r, s) in reports.iter_mut().zip(&scales) {
            r.scale = Some(*s);
        }
    }
    if let Some(pb) = &cfg.prompts {
        let r = prompting::evaluate(
            lm,
            &template,
            pb,
            vectors.first(),
            &data,
            &opts,
            &mut progress,
        )?;
        reports.push(r);
        if cfg.prompted {
            for d in [1.0, -1.0] {
                let mut rs = prompting::evaluate_under(
                    lm,
                    &template,
                    pb,
                    d,
                    vectors,
                    &data,
                    &opts,
                    &mut progress,
                )?;
                for (i, r) in rs.iter_mut().enumerate() {
                    r.name = format!("{} ({})", r.name, PromptBaseline::label(d));
                    r.scale = (cfg.match_by != Match::None).then(|| scales[i]);
                }
                reports.extend(rs);
            }
        }
    }
    let questions = questions(ab_items.as_deref(), pairs.as_deref(), cfg.open_ended);
    let (mut answers, open) = if questions.is_empty() {
        (Vec::new(), None)
    } else {
        open_ended(lm, &template, vectors, cfg, &questions, &mut progress)?
    };
    let open = match (open, &refusals) {
        (Some(mut o), Some(r)) => {
            o["refusal"] = serde_json::json!({
                "strings": cfg.refusal_strings.as_ref().map_or(
                    "GCG (Zou et al. 2023, test_prefixes)".to_string(),
                    |p| p.display().to_string()),
                "table": refusal::summary(&mut answers, r),
            });
            if o.get("judge").is_some() {
                o["judge"]["answered"] = open_ended::score_summary_answered(&answers);
            }
            Some(o)
        }
        (o, _) => o,
    };
    let model_sha256 = crate::load::model_sha256(lm)?;
    let report = Report {
        title: cfg.title.clone(),
        tool: format!("bipo {}", env!("CARGO_PKG_VERSION")),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: lm.describe(),
        model_sha256,
        command: crate::util::redact::this_command_line(),
        data: files,
        multipliers: cfg.multipliers.clone(),
        vectors: reports,
        open_ended: open,
        extra: serde_json::Value::Null,
    };
    Ok(EvalOutput { report, answers })
}

/// The first `n` test questions with their matching and opposite answers (free-text
/// pairs preferred over A/B items).
fn questions(
    ab_items: Option<&[AbItem]>,
    pairs: Option<&[PreferencePair]>,
    n: usize,
) -> Vec<Question> {
    match (pairs, ab_items) {
        (Some(p), _) => p
            .iter()
            .take(n)
            .map(|p| Question {
                question: p.question.clone(),
                matching: p.matching.clone(),
                opposite: p.not_matching.clone(),
            })
            .collect(),
        (None, Some(items)) => items
            .iter()
            .take(n)
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
        (None, None) => Vec::new(),
    }
}

/// Greedy answers (and judge scores); returns them with the report's summary.
fn open_ended(
    lm: &LoadedModel,
    template: &ChatTemplate,
    vectors: &[SteeringVector],
    cfg: &EvalConfig,
    questions: &[Question],
    progress: &mut impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<(Vec<Answer>, Option<serde_json::Value>)> {
    // These loops report without stopping: a stop request is returned after each.
    let stopped = std::cell::Cell::new(None);
    let mut report = |stage: &str, d, n| {
        let first = stopped.take();
        stopped.set(first.or_else(|| progress(stage, d, n).err()));
    };
    let mut answers = open_ended::answers(
        lm,
        template,
        cfg.system.as_deref(),
        vectors,
        &cfg.multipliers,
        questions,
        cfg.max_tokens,
        cfg.positions,
        |d, n| report("open-ended answers", d, n),
    )?;
    if let Some(e) = stopped.take() {
        return Err(e);
    }
    if let Some(pb) = &cfg.prompts {
        // The prompting rows (-1/0/+1) and, with `prompted`, every vector under each
        // instruction; answers keep the plain question, which the judge is asked about.
        let null = [prompting::null_vector(lm, vectors.first())];
        let mut runs: Vec<(f32, &[SteeringVector], Vec<f32>, String)> = prompting::DIRECTIONS
            .iter()
            .map(|&d| (d, &null[..], vec![0.0], String::new()))
            .collect();
        if cfg.prompted {
            for d in [1.0, -1.0] {
                let suffix = format!(" ({})", PromptBaseline::label(d));
                runs.push((d, vectors, cfg.multipliers.clone(), suffix));
            }
        }
        for (d, vs, ms, suffix) in runs {
            let qs = pb.questions(d, questions);
            let stage = format!(
                "open-ended answers, {}",
                if d == 0.0 {
                    "no prompt"
                } else {
                    PromptBaseline::label(d)
                }
            );
            let mut more = open_ended::answers(
                lm,
                template,
                pb.system(d, cfg.system.as_deref()),
                vs,
                &ms,
                &qs,
                cfg.max_tokens,
                cfg.positions,
                |i, n| report(&stage, i, n),
            )?;
            if let Some(e) = stopped.take() {
                return Err(e);
            }
            for (i, a) in more.iter_mut().enumerate() {
                a.question = questions[i % questions.len()].question.clone();
                if suffix.is_empty() {
                    a.multiplier = d;
                } else {
                    a.vector.push_str(&suffix);
                }
            }
            answers.extend(more);
        }
    }
    let mut summary = serde_json::json!({
        "answers": "answers.jsonl",
        "questions": questions.len(),
        "max_tokens": cfg.max_tokens,
    });
    if let Some(j) = &cfg.judge {
        let mut jc = JudgeConfig::new(&j.url, &j.model);
        jc.api_key = j.api_key.clone();
        jc.cache_dir = j.cache_dir.clone();
        let judge = Judge::new(jc);
        let stage = format!("judging with {}", j.model);
        open_ended::judge_all(&judge, &j.behaviour, questions, &mut answers, |d, n| {
            report(&stage, d, n)
        })?;
        if let Some(e) = stopped.take() {
            return Err(e);
        }
        let stage = format!("calibrating {} on the data's answers", j.model);
        let calibration =
            open_ended::calibrate(&judge, &j.behaviour, questions, |d, n| report(&stage, d, n))?;
        if let Some(e) = stopped.take() {
            return Err(e);
        }
        summary["judge"] = serde_json::json!({
            "url": crate::util::redact::redact(&j.url),
            "model": j.model,
            "requests": judge.requests(),
            "mean_score": open_ended::score_summary(&answers),
            "score_stderr": open_ended::score_stderr(&answers),
            "calibration": calibration,
        });
    }
    Ok((answers, Some(summary)))
}
