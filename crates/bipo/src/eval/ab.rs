//! A/B behaviour questions (CAA-style, Rimsky et al. 2024): the probability the model
//! gives the matching letter, normalised over the two letters.
//!
//! Formats: the BiPO paper's `test_infer.csv` (`question, A, B, matching` with
//! `matching` = `A` or `B`), and Anthropic/CAA JSON or JSONL whose `question` already
//! lists the choices and whose `answer_matching_behavior` is `(A)` or `(B)`.
//!
//! Prompt: the chat template applied to the question (with the choices), then the
//! answer prefix [`AB_ANSWER_PREFIX`], as in CAA; the two "responses" are the letters.
//! These are ordinary [`Example`]s (matching letter first), so the prefix-cached
//! [`crate::activations::Prepared`] evaluates them at every multiplier.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::activations::Example;
use crate::error::{Error, Result};
use crate::text::{ChatTemplate, Tokenizer};

/// Text the assistant's answer starts with, so the next token is the letter.
pub const AB_ANSWER_PREFIX: &str = "(";

/// One A/B question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbItem {
    /// The question; for CAA files it already lists the choices.
    pub question: String,
    /// Choice texts (empty when the question lists them itself).
    pub a: String,
    pub b: String,
    /// Whether `B` (rather than `A`) is the answer showing the behaviour.
    pub matching_is_b: bool,
}

impl AbItem {
    /// The user message: the question followed by the choices, as in CAA.
    pub fn user_text(&self) -> String {
        if self.a.is_empty() && self.b.is_empty() {
            self.question.clone()
        } else {
            format!(
                "{}\n\nChoices:\n(A) {}\n(B) {}",
                self.question, self.a, self.b
            )
        }
    }
}

/// Whether `path` holds A/B questions (rather than free-text pairs): a CSV with columns
/// `A`, `B` and `matching`, or JSON(L) whose matching answer is a bracketed letter.
pub fn is_ab_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let first = text.lines().next().unwrap_or("");
    if path.extension().and_then(|e| e.to_str()) == Some("csv") {
        let cols: Vec<&str> = first.split(',').map(str::trim).collect();
        return ["A", "B", "matching"].iter().all(|c| cols.contains(c));
    }
    load_ab(path).is_ok()
}

fn bad(path: &Path, where_: impl std::fmt::Display, reason: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("{where_}: {reason}"))
}

/// Loads A/B questions; errors name the file and line.
pub fn load_ab(path: &Path) -> Result<Vec<AbItem>> {
    let text = crate::util::read_text(path)?;
    let items = if path.extension().and_then(|e| e.to_str()) == Some("csv") {
        load_csv(path, &text)?
    } else {
        load_json(path, &text)?
    };
    if items.is_empty() {
        return Err(Error::bad_file(path, "no A/B questions"));
    }
    Ok(items)
}

fn load_csv(path: &Path, text: &str) -> Result<Vec<AbItem>> {
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| bad(path, "header", e))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(path, "line 1", format!("missing column `{name}`")))
    };
    let (q, a, b, m) = (col("question")?, col("A")?, col("B")?, col("matching")?);
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            bad(path, format!("line {line}"), e)
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let get = |i: usize| rec.get(i).unwrap_or("").trim().to_string();
        let matching_is_b = match get(m).as_str() {
            "A" | "(A)" => false,
            "B" | "(B)" => true,
            other => {
                return Err(bad(
                    path,
                    format!("line {line}"),
                    format!("`matching` is `{other}`, expected A or B"),
                ))
            }
        };
        if get(q).is_empty() {
            return Err(bad(path, format!("line {line}"), "empty `question`"));
        }
        out.push(AbItem {
            question: get(q),
            a: get(a),
            b: get(b),
            matching_is_b,
        });
    }
    Ok(out)
}

fn load_json(path: &Path, text: &str) -> Result<Vec<AbItem>> {
    let records: Vec<(usize, serde_json::Value)> = if text.trim_start().starts_with('[') {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| bad(path, format!("line {}", e.line()), e))?;
        v.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map(|v| (i + 1, v))
                    .map_err(|e| bad(path, format!("line {}", i + 1), e))
            })
            .collect::<Result<_>>()?
    };
    records
        .into_iter()
        .map(|(n, r)| {
            let s = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::trim);
            let (Some(q), Some(m)) = (s("question"), s("answer_matching_behavior")) else {
                return Err(bad(
                    path,
                    format!("record {n}"),
                    "needs `question` and `answer_matching_behavior`",
                ));
            };
            let matching_is_b = match m {
                "(A)" | "A" => false,
                "(B)" | "B" => true,
                other => {
                    return Err(bad(
                        path,
                        format!("record {n}"),
                        format!("answer_matching_behavior `{other}` is not (A) or (B)"),
                    ))
                }
            };
            Ok(AbItem {
                question: q.to_string(),
                a: String::new(),
                b: String::new(),
                matching_is_b,
            })
        })
        .collect()
}

/// Tokenizes A/B questions as examples whose responses are the matching letter and
/// the other letter (no end-of-sequence token: only the letter is scored).
pub fn examples(
    items: &[AbItem],
    tok: &Tokenizer,
    template: &ChatTemplate,
    system: Option<&str>,
) -> Result<Vec<Example>> {
    let letter = |l: &str| tok.encode(l, false);
    let (a, b) = (letter("A")?, letter("B")?);
    items
        .iter()
        .map(|it| {
            let mut prompt = template.question_prompt(system, &it.user_text())?;
            prompt.text += AB_ANSWER_PREFIX;
            let prompt = tok.encode_chat(&prompt, true)?;
            let responses = if it.matching_is_b {
                [b.clone(), a.clone()]
            } else {
                [a.clone(), b.clone()]
            };
            Ok(Example { prompt, responses })
        })
        .collect()
}

/// Probability of the matching letter normalised over the two letters, from the
/// (matching, other) log-probabilities: `sigmoid(lp_match - lp_other)`.
pub fn matching_probability(lp: [f32; 2]) -> f32 {
    1.0 / (1.0 + (lp[1] - lp[0]).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ab_formats_load_with_the_right_matching_letter() {
        let d = tempfile::tempdir().unwrap();
        let csv = d.path().join("t.csv");
        std::fs::write(&csv, "question,A,B,matching\nQ1?,yes,no,A\n\"Q2?\",x,y,B\n").unwrap();
        let items = load_ab(&csv).unwrap();
        assert!(is_ab_file(&csv));
        assert_eq!(items.len(), 2);
        assert!(!items[0].matching_is_b && items[1].matching_is_b);
        assert_eq!(items[0].user_text(), "Q1?\n\nChoices:\n(A) yes\n(B) no");
        let js = d.path().join("t.json");
        std::fs::write(
            &js,
            r#"[{"question":"Q (A) a (B) b","answer_matching_behavior":" (B)","answer_not_matching_behavior":"(A)"}]"#,
        )
        .unwrap();
        let items = load_ab(&js).unwrap();
        assert!(items[0].matching_is_b && items[0].a.is_empty());
        let pairs = d.path().join("p.csv");
        std::fs::write(&pairs, "question,matching,not_matching\nq,a,b\n").unwrap();
        assert!(!is_ab_file(&pairs));
    }

    #[test]
    fn a_bad_matching_letter_names_the_line() {
        let d = tempfile::tempdir().unwrap();
        let csv = d.path().join("t.csv");
        std::fs::write(&csv, "question,A,B,matching\nQ1?,yes,no,C\n").unwrap();
        let e = load_ab(&csv).unwrap_err().to_string();
        assert!(
            e.contains("t.csv") && e.contains("line 2") && e.contains("`C`"),
            "{e}"
        );
    }

    #[test]
    fn matching_probability_is_a_two_way_softmax() {
        assert!((matching_probability([-1.0, -1.0]) - 0.5).abs() < 1e-6);
        let p = matching_probability([0.0f32.ln_1p(), (0.25f32).ln()]);
        assert!((p - 0.8).abs() < 1e-6, "{p}");
    }
}
