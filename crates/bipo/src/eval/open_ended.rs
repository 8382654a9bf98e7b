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

/// Mean judge score per vector and multiplier (unparsed replies left out), as JSON.
pub fn score_summary(answers: &[Answer]) -> serde_json::Value {
    let mut acc: BTreeMap<String, BTreeMap<String, (f64, usize)>> = BTreeMap::new();
    for a in answers {
        if let Some(s) = a.score {
            let e = acc
                .entry(a.vector.clone())
                .or_default()
                .entry(a.multiplier.to_string())
                .or_default();
            e.0 += s as f64;
            e.1 += 1;
        }
    }
    serde_json::to_value(
        acc.into_iter()
            .map(|(v, per)| {
                let per: BTreeMap<String, f64> = per
                    .into_iter()
                    .map(|(m, (s, n))| (m, s / n as f64))
                    .collect();
                (v, per)
            })
            .collect::<BTreeMap<_, _>>(),
    )
    .expect("scores serialise")
}
