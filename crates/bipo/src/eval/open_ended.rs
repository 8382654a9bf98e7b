//! Open-ended answers: greedy answers to test questions per vector and multiplier,
//! optionally scored by an LLM judge ([`super::judge`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::judge::{rubric, Judge};
use crate::error::Result;
use crate::generate::{generate, GenerateOptions, SamplingParams};
use crate::load::LoadedModel;
use crate::steer::Steering;
use crate::text::ChatTemplate;
use crate::vector::SteeringVector;

/// A question with examples of a matching and an opposite answer (for the rubric).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Question {
    pub question: String,
    pub matching: String,
    pub opposite: String,
}

/// One generated answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub vector: String,
    pub multiplier: f32,
    pub question: String,
    pub answer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_reply: Option<String>,
    /// Whether it contains a refusal string (when refusals are counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<bool>,
}

/// Greedy answers (at most `max_tokens` each) for every vector x multiplier x question.
#[allow(clippy::too_many_arguments)]
pub fn answers(
    lm: &LoadedModel,
    template: &ChatTemplate,
    system: Option<&str>,
    vectors: &[SteeringVector],
    multipliers: &[f32],
    questions: &[Question],
    max_tokens: usize,
    positions: crate::steer::Positions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Answer>> {
    let m = &lm.model;
    let opts = GenerateOptions {
        max_tokens,
        positions,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let total = vectors.len() * multipliers.len() * questions.len();
    let mut out = Vec::with_capacity(total);
    for v in vectors {
        for &k in multipliers {
            let steering = Steering::from_vectors(&[(v.clone(), k)], m.device(), m.dtype())?;
            for q in questions {
                let ids = lm
                    .tokenizer
                    .encode_chat(&template.question_prompt(system, &q.question)?, true)?;
                let g = generate(m, &lm.tokenizer, &ids, &steering, &opts, |_| Ok(()))?;
                out.push(Answer {
                    vector: v.meta.name.clone(),
                    multiplier: k,
                    question: q.question.clone(),
                    answer: g.text.trim().to_string(),
                    score: None,
                    judge_reply: None,
                    refusal: None,
                });
                progress(out.len(), total);
            }
        }
    }
    Ok(out)
}

/// Scores every answer with the judge (cached verdicts cost nothing).
pub fn judge_all(
    judge: &Judge,
    behaviour: &str,
    questions: &[Question],
    answers: &mut [Answer],
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let by_q: BTreeMap<&str, &Question> =
        questions.iter().map(|q| (q.question.as_str(), q)).collect();
    let n = answers.len();
    for (i, a) in answers.iter_mut().enumerate() {
        let q = by_q[a.question.as_str()];
        let v = judge.score(&rubric(
            behaviour,
            &q.question,
            &a.answer,
            &q.matching,
            &q.opposite,
        ))?;
        a.score = v.score;
        a.judge_reply = Some(v.reply);
        progress(i + 1, n);
    }
    Ok(())
}

/// How well the judge tells the behaviour apart, measured on the data's own answers:
/// each held-out question's matching and opposite answers are scored with the rubric,
/// whose examples come from the *next* question (so the answer under test is never
/// the rubric's own example). A judge that cannot order these cannot score steering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Questions whose two answers both got a score.
    pub questions: usize,
    /// Mean score of the matching answers (should be near 4).
    pub matching_mean: f64,
    /// Mean score of the opposite answers (should be near 1).
    pub opposite_mean: f64,
    /// Share of questions where the matching answer scored higher.
    pub ordered: f64,
    /// Share where both scored the same.
    pub tied: f64,
    /// Replies that held no score.
    pub unparsed: usize,
}

/// Scores the data's matching and opposite answers (see [`Calibration`]); needs at
/// least two questions (None otherwise).
pub fn calibrate(
    judge: &Judge,
    behaviour: &str,
    questions: &[Question],
    mut progress: impl FnMut(usize, usize),
) -> Result<Option<Calibration>> {
    let n = questions.len();
    if n < 2 {
        return Ok(None);
    }
    let (mut sm, mut so, mut ordered, mut tied, mut k, mut unparsed) = (0.0, 0.0, 0, 0, 0, 0);
    for (i, q) in questions.iter().enumerate() {
        let ex = &questions[(i + 1) % n];
        let mut score = |answer: &str| -> Result<Option<u8>> {
            let v = judge.score(&rubric(
                behaviour,
                &q.question,
                answer,
                &ex.matching,
                &ex.opposite,
            ))?;
            unparsed += v.score.is_none() as usize;
            Ok(v.score)
        };
        let (m, o) = (score(&q.matching)?, score(&q.opposite)?);
        progress(i + 1, n);
        let (Some(m), Some(o)) = (m, o) else { continue };
        k += 1;
        sm += m as f64;
        so += o as f64;
        ordered += (m > o) as usize;
        tied += (m == o) as usize;
    }
    let kf = k.max(1) as f64;
    Ok(Some(Calibration {
        questions: k,
        matching_mean: sm / kf,
        opposite_mean: so / kf,
        ordered: ordered as f64 / kf,
        tied: tied as f64 / kf,
        unparsed,
    }))
}

/// Mean judge score per vector and multiplier (unparsed replies left out), as JSON.
pub fn score_summary(answers: &[Answer]) -> serde_json::Value {
    score_stat(answers, mean)
}

/// [`score_summary`] and [`score_stderr`] over the answers without a refusal string
/// only (after refusals were counted), with how many there were: a judge may score a
/// refusal as "the opposite behaviour", which is not the persona shift it is asked about.
pub fn score_summary_answered(answers: &[Answer]) -> serde_json::Value {
    let answered: Vec<Answer> = answers
        .iter()
        .filter(|a| a.refusal == Some(false))
        .cloned()
        .collect();
    serde_json::json!({
        "mean_score": score_summary(&answered),
        "score_stderr": score_stderr(&answered),
        "answers": score_stat(&answered, |s| s.len() as f64),
    })
}

fn mean(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len() as f64
}

/// Standard error of [`score_summary`]'s means (sample std / sqrt(n); 0 for one score).
pub fn score_stderr(answers: &[Answer]) -> serde_json::Value {
    score_stat(answers, |s| {
        let n = s.len() as f64;
        if s.len() < 2 {
            return 0.0;
        }
        let mean = mean(s);
        let var = s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    })
}

/// `stat` of the scores per vector and multiplier, as JSON {vector: {multiplier: x}}.
fn score_stat(answers: &[Answer], stat: impl Fn(&[f64]) -> f64) -> serde_json::Value {
    let mut acc: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for a in answers {
        if let Some(s) = a.score {
            acc.entry(a.vector.clone())
                .or_default()
                .entry(a.multiplier.to_string())
                .or_default()
                .push(s as f64);
        }
    }
    let per: BTreeMap<String, BTreeMap<String, f64>> = acc
        .into_iter()
        .map(|(v, per)| (v, per.into_iter().map(|(m, s)| (m, stat(&s))).collect()))
        .collect();
    serde_json::to_value(per).expect("scores serialise")
}

/// The judge's part of the open-ended summary as Markdown: mean score (± standard
/// error, when given) per vector (rows, in `order` first) and multiplier (columns);
/// the same over answers without a refusal when refusals were counted; then the
/// calibration line.
pub fn judge_markdown(judge: &serde_json::Value, order: &[&str]) -> String {
    use std::fmt::Write as _;
    let model = judge.get("model").and_then(|m| m.as_str()).unwrap_or("?");
    let mut s = format!("\n## Judge scores (1-4, mean ± s.e.; judge: {model})\n");
    s += &score_table(judge, order, None);
    if let Some(a) = judge.get("answered") {
        s += "\nOver the answers without a refusal string only (their number in brackets):\n";
        s += &score_table(a, order, a.get("answers"));
    }
    if let Some(c) = judge
        .get("calibration")
        .and_then(|c| serde_json::from_value::<Calibration>(c.clone()).ok())
    {
        let _ = writeln!(
            s,
            "\nCalibration on the data's own answers ({} questions): matching {:.2}, \
             opposite {:.2}; matching scored higher on {:.0}%, tied on {:.0}%.",
            c.questions,
            c.matching_mean,
            c.opposite_mean,
            100.0 * c.ordered,
            100.0 * c.tied
        );
    }
    s
}

/// One table of `t["mean_score"]` (± `t["score_stderr"]`, and `[n]` from `counts`).
fn score_table(
    t: &serde_json::Value,
    order: &[&str],
    counts: Option<&serde_json::Value>,
) -> String {
    use std::fmt::Write as _;
    let Some(scores) = t.get("mean_score").and_then(|m| m.as_object()) else {
        return String::new();
    };
    let mults = super::report::multiplier_columns(
        scores
            .values()
            .filter_map(|per| per.as_object())
            .flat_map(|per| per.keys().map(|k| k.as_str())),
    );
    let rows = super::report::rows_in_order(scores.keys().map(|k| k.as_str()), order);
    let mut s = "\n| vector |".to_string();
    for m in &mults {
        let _ = write!(s, " x{m} |");
    }
    s += "\n|---|";
    s += &"---|".repeat(mults.len());
    for v in rows {
        let _ = write!(s, "\n| {v} |");
        for m in &mults {
            let get =
                |root: Option<&serde_json::Value>| root.and_then(|r| r.get(v)?.get(*m)?.as_f64());
            let Some(x) = get(t.get("mean_score")) else {
                s += " - |";
                continue;
            };
            let _ = write!(s, " {x:.2}");
            if let Some(e) = get(t.get("score_stderr")) {
                let _ = write!(s, " ± {e:.2}");
            }
            if let Some(n) = get(counts) {
                let _ = write!(s, " [{n}]");
            }
            s += " |";
        }
    }
    s + "\n"
}
