//! Multiple-choice questions with several true and several false answers, scored the
//! way TruthfulQA is (Lin et al. 2022): each answer is a chat response to the question,
//! scored by its summed log-probability, and
//!
//! - **MC1**: the best answer (the first true one) has the highest log-probability among
//!   itself and the false answers (accuracy, 0 or 1 per question);
//! - **MC2**: the normalised probability mass of the true answers,
//!   `sum_true p / (sum_true p + sum_false p)` with `p = exp(log p)`.
//!
//! The file format is JSON Lines, one question per line:
//! `{"question": "...", "correct": ["best", ...], "incorrect": ["...", ...]}`; `bipo
//! eval --data` recognises it by its first line. Answers are packed two per example
//! into the same prefix-cached engine as held-out pairs (a question with an odd number
//! of answers repeats its last one), so only blocks after the vector's layer run per
//! multiplier.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::activations::Example;
use crate::data::PreferencePair;
use crate::error::{Error, Result};
use crate::text::{ChatTemplate, Tokenizer};

/// One question with its true and false answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McItem {
    pub question: String,
    /// True answers, the best first.
    pub correct: Vec<String>,
    pub incorrect: Vec<String>,
}

impl McItem {
    /// Every answer, true ones first.
    pub fn answers(&self) -> impl Iterator<Item = &String> {
        self.correct.iter().chain(&self.incorrect)
    }
}

/// Whether `path` is a multiple-choice file: JSON Lines whose first object has
/// `correct` and `incorrect` lists.
pub fn is_mc_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(first)
        .map(|v| v.get("correct").is_some_and(|c| c.is_array()) && v.get("incorrect").is_some())
        .unwrap_or(false)
}

/// Reads a multiple-choice file; errors name the line.
pub fn load_mc(path: &Path) -> Result<Vec<McItem>> {
    let text = crate::util::read_text(path)?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |r: String| Error::bad_file(path, format!("line {}: {r}", i + 1));
        let it: McItem =
            serde_json::from_str(line).map_err(|e| bad(format!("not a question: {e}")))?;
        if it.question.trim().is_empty() {
            return Err(bad("empty question".into()));
        }
        if it.correct.is_empty() || it.incorrect.is_empty() {
            return Err(bad(
                "needs at least one correct and one incorrect answer".into()
            ));
        }
        if let Some(a) = it.answers().find(|a| a.trim().is_empty()) {
            return Err(bad(format!("empty answer {a:?}")));
        }
        items.push(it);
    }
    if items.is_empty() {
        return Err(Error::bad_file(path, "no questions"));
    }
    Ok(items)
}

/// Where each question's answers land: `slots[q]` = (example, response) per answer, in
/// [`McItem::answers`] order.
pub struct Layout {
    pub slots: Vec<Vec<(usize, usize)>>,
}

/// Packs every answer of every question, two per example, with the chat template.
pub fn examples(
    items: &[McItem],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    system: Option<&str>,
) -> Result<(Vec<Example>, Layout)> {
    let mut pairs = Vec::new();
    let mut slots = Vec::with_capacity(items.len());
    for it in items {
        let answers: Vec<&String> = it.answers().collect();
        let mut mine = Vec::with_capacity(answers.len());
        for two in answers.chunks(2) {
            let second = two.get(1).unwrap_or(&two[0]);
            pairs.push(PreferencePair {
                question: it.question.clone(),
                matching: two[0].clone(),
                not_matching: (*second).clone(),
            });
            let e = pairs.len() - 1;
            mine.push((e, 0));
            if two.len() == 2 {
                mine.push((e, 1));
            }
        }
        slots.push(mine);
    }
    let ex = crate::activations::tokenize(&pairs, tokenizer, template, system)?;
    Ok((ex, Layout { slots }))
}

/// Per question: (MC1 0/1, MC2) from the examples' response log-probabilities.
pub fn scores(items: &[McItem], layout: &Layout, lps: &[[f32; 2]]) -> Vec<(f64, f64)> {
    items
        .iter()
        .zip(&layout.slots)
        .map(|(it, slots)| {
            let lp: Vec<f64> = slots.iter().map(|&(e, r)| lps[e][r] as f64).collect();
            let (tru, fal) = lp.split_at(it.correct.len());
            let best = tru[0];
            let mc1 = if fal.iter().all(|&f| best > f) {
                1.0
            } else {
                0.0
            };
            // Normalised mass, computed stably from the largest log-prob.
            let max = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mass = |xs: &[f64]| xs.iter().map(|x| (x - max).exp()).sum::<f64>();
            let (t, f) = (mass(tru), mass(fal));
            (mc1, t / (t + f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(c: usize, i: usize) -> McItem {
        McItem {
            question: "q".into(),
            correct: (0..c).map(|k| format!("t{k}")).collect(),
            incorrect: (0..i).map(|k| format!("f{k}")).collect(),
        }
    }

    #[test]
    fn mc1_and_mc2_follow_truthfulqa() {
        // Question 0: answers t0 t1 | f0 (3 answers: examples [t0,t1], [f0,f0]).
        // Question 1: t0 | f0 f1 (examples [t0,f0], [f1,f1]).
        let items = [item(2, 1), item(1, 2)];
        let layout = Layout {
            slots: vec![vec![(0, 0), (0, 1), (1, 0)], vec![(2, 0), (2, 1), (3, 0)]],
        };
        let ln = |p: f64| p.ln() as f32;
        let lps = [
            [ln(0.2), ln(0.5)],
            [ln(0.3), ln(0.3)],
            [ln(0.1), ln(0.6)],
            [ln(0.05), ln(0.05)],
        ];
        let s = scores(&items, &layout, &lps);
        // q0: best t0 = 0.2 < f0 = 0.3 -> MC1 0; MC2 = 0.7 / 1.0.
        assert_eq!(s[0].0, 0.0);
        assert!((s[0].1 - 0.7).abs() < 1e-6, "{}", s[0].1);
        // q1: t0 = 0.1 vs f0 = 0.6, f1 = 0.05 -> MC1 0; MC2 = 0.1 / 0.75.
        assert_eq!(s[1].0, 0.0);
        assert!((s[1].1 - 0.1 / 0.75).abs() < 1e-6);
        let s = scores(
            &items[..1],
            &layout,
            &[[ln(0.5), ln(0.1)], [ln(0.2), ln(0.2)]],
        );
        assert_eq!(s[0].0, 1.0);
    }

    #[test]
    fn files_are_recognised_and_checked_by_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("mc.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"Q?\", \"correct\": [\"a\"], \"incorrect\": [\"b\", \"c\"]}\n\n",
        )
        .unwrap();
        assert!(is_mc_file(&p));
        assert_eq!(
            load_mc(&p).unwrap(),
            vec![McItem {
                question: "Q?".into(),
                correct: vec!["a".into()],
                incorrect: vec!["b".into(), "c".into()],
            }]
        );
        std::fs::write(
            &p,
            "{\"question\": \"Q?\", \"correct\": [\"a\"], \"incorrect\": [\"b\"]}\n\
             {\"question\": \"Q?\", \"correct\": [], \"incorrect\": [\"b\"]}\n",
        )
        .unwrap();
        let e = load_mc(&p).unwrap_err().to_string();
        assert!(e.contains("mc.jsonl") && e.contains("line 2"), "{e}");
        let csv = tmp.path().join("pairs.csv");
        std::fs::write(&csv, "question,matching,not_matching\nq,a,b\n").unwrap();
        assert!(!is_mc_file(&csv));
    }
}
