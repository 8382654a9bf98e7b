//! Prompting as the baseline to beat. AxBench (Wu et al. 2025, arXiv 2501.17148) found
//! that simply *asking* the model ("answer as someone who seeks power" / "... who avoids
//! it") beats most steering methods, so every steering result should stand beside it.
//!
//! A [`PromptBaseline`] holds one instruction per direction, used either as the system
//! prompt (replacing `--system`) or as a prefix of each question (a blank line between).
//! [`evaluate`] measures the model under the negative instruction, none, and the
//! positive one, and reports them as a pseudo-vector `prompting` at multipliers -1, 0
//! and +1 (its "norm" is 0: no vector is added), beside the real vectors' rows: A/B
//! probability, held-out margins and accuracy. Damage on neutral text is not defined
//! for a prompt (the neutral text has no chat turn to instruct), so its KL row is
//! empty; open-ended answers under each instruction are written like any vector's.
//!
//! With `prompted`, every vector is also measured *on top of* each instruction
//! (`NAME (prompt+)`, `NAME (prompt-)` over all multipliers): does steering still move
//! a prompted model, and does -v counter a prompt that asks for the behaviour?

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ab::AbItem;
use super::mc::McItem;
use super::open_ended::Question;
use super::{EvalData, EvalOptions, Point, VectorReport};
use crate::data::PreferencePair;
use crate::error::{Error, Result};
use crate::load::LoadedModel;
use crate::text::ChatTemplate;
use crate::vector::{SteeringVector, VectorMeta};

/// Where the instruction goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// As the system prompt (templates without a system role fold it into the first
    /// user turn, as they do for `--system`).
    #[default]
    System,
    /// Before each question in the user turn, followed by a blank line.
    Prefix,
    /// After each question in the user turn, a blank line before it (e.g. an attack
    /// template's suffix: "Start your reply with ...").
    Suffix,
}

/// One instruction per direction (a TOML file: `positive = "..."`, `negative = "..."`,
/// optional `mode = "system" | "prefix" | "suffix"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptBaseline {
    /// Asks for the behaviour (reported at multiplier +1).
    pub positive: String,
    /// Asks for the opposite (reported at multiplier -1).
    pub negative: String,
    #[serde(default)]
    pub mode: PromptMode,
}

/// The three prompting conditions, in report order.
pub const DIRECTIONS: [f32; 3] = [-1.0, 0.0, 1.0];

impl PromptBaseline {
    /// Reads and checks a TOML file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::util::read_text(path)?;
        let p: Self = toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            // A span over the whole document (unknown or missing fields) has no line.
            let line = e
                .span()
                .filter(|s| s.start > 0 || s.end < text.trim_end().len())
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .map_or(String::new(), |l| format!("line {l}: "));
            Error::bad_file(path, format!("{line}{msg}"))
        })?;
        p.check()
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        for (name, s) in [("positive", &self.positive), ("negative", &self.negative)] {
            if s.trim().is_empty() {
                return Err(Error::invalid(format!("prompt `{name}`"), "it is empty"));
            }
        }
        Ok(())
    }

    /// The instruction for `direction` (-1, 0 or +1; 0 = none).
    fn instruction(&self, direction: f32) -> Option<&str> {
        match direction {
            d if d > 0.0 => Some(&self.positive),
            d if d < 0.0 => Some(&self.negative),
            _ => None,
        }
    }

    /// The system prompt under `direction`, given the run's own.
    pub fn system<'a>(&'a self, direction: f32, base: Option<&'a str>) -> Option<&'a str> {
        match (self.mode, self.instruction(direction)) {
            (PromptMode::System, Some(i)) => Some(i),
            _ => base,
        }
    }

    /// `question` under `direction`.
    pub fn question(&self, direction: f32, question: &str) -> String {
        match (self.mode, self.instruction(direction)) {
            (PromptMode::Prefix, Some(i)) => format!("{i}\n\n{question}"),
            (PromptMode::Suffix, Some(i)) => format!("{question}\n\n{i}"),
            _ => question.to_string(),
        }
    }

    /// A/B items, pairs and multiple-choice questions under `direction` (copies;
    /// unchanged in system mode).
    #[allow(clippy::type_complexity)]
    pub fn data(
        &self,
        direction: f32,
        ab: Option<&[AbItem]>,
        pairs: Option<&[PreferencePair]>,
        mc: Option<&[McItem]>,
    ) -> (
        Option<Vec<AbItem>>,
        Option<Vec<PreferencePair>>,
        Option<Vec<McItem>>,
    ) {
        let ab = ab.map(|items| {
            items
                .iter()
                .map(|it| AbItem {
                    question: self.question(direction, &it.question),
                    ..it.clone()
                })
                .collect()
        });
        let pairs = pairs.map(|ps| {
            ps.iter()
                .map(|p| PreferencePair {
                    question: self.question(direction, &p.question),
                    ..p.clone()
                })
                .collect()
        });
        let mc = mc.map(|items| {
            items
                .iter()
                .map(|it| McItem {
                    question: self.question(direction, &it.question),
                    ..it.clone()
                })
                .collect()
        });
        (ab, pairs, mc)
    }

    /// Open-ended questions under `direction`.
    pub fn questions(&self, direction: f32, questions: &[Question]) -> Vec<Question> {
        questions
            .iter()
            .map(|q| Question {
                question: self.question(direction, &q.question),
                ..q.clone()
            })
            .collect()
    }

    /// Short label of a direction for report rows: `prompt+` / `prompt-`.
    pub fn label(direction: f32) -> &'static str {
        if direction > 0.0 {
            "prompt+"
        } else {
            "prompt-"
        }
    }
}

/// The vector the prompting rows are measured with: zero, at the layer of `like` (so
/// the cached prefix is shared), applied at multiplier 0 (bit-identical to unsteered).
pub fn null_vector(lm: &LoadedModel, like: Option<&SteeringVector>) -> SteeringVector {
    let layer = like
        .and_then(|v| v.layers.keys().next().copied())
        .unwrap_or(lm.model.num_layers() / 2);
    SteeringVector::single(
        layer,
        vec![0.0; lm.model.hidden_size()],
        VectorMeta {
            name: "prompting".into(),
            method: Some("prompting".into()),
            ..Default::default()
        },
    )
}

/// `vectors` measured at `opts.multipliers` with the instruction for `direction` (system
/// prompt or question prefix) on every example of `data`; no damage check (see the
/// module doc).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_under(
    lm: &LoadedModel,
    template: &ChatTemplate,
    prompts: &PromptBaseline,
    direction: f32,
    vectors: &[SteeringVector],
    data: &EvalData,
    opts: &EvalOptions,
    progress: impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<Vec<VectorReport>> {
    let (ab, pairs, mc) = prompts.data(direction, data.ab, data.pairs, data.mc);
    let under = EvalData {
        ab: ab.as_deref(),
        pairs: pairs.as_deref(),
        mc: mc.as_deref(),
        neutral: &[],
    };
    let o = EvalOptions {
        system: prompts
            .system(direction, opts.system.as_deref())
            .map(String::from),
        ..opts.clone()
    };
    super::evaluate(lm, template, vectors, &under, &o, progress)
}

/// Measures the three prompting conditions and returns them as one report (`prompting`,
/// multipliers -1/0/+1). Damage is not measured (see the module doc).
pub fn evaluate(
    lm: &LoadedModel,
    template: &ChatTemplate,
    prompts: &PromptBaseline,
    like: Option<&SteeringVector>,
    data: &EvalData,
    opts: &EvalOptions,
    progress: &mut impl FnMut(&str, usize, usize) -> Result<()>,
) -> Result<VectorReport> {
    let null = null_vector(lm, like);
    let mut out = VectorReport {
        name: "prompting".into(),
        method: Some(format!(
            "prompting ({})",
            match prompts.mode {
                PromptMode::System => "system prompt",
                PromptMode::Prefix => "question prefix",
                PromptMode::Suffix => "question suffix",
            }
        )),
        ..Default::default()
    };
    let at_zero = EvalOptions {
        multipliers: vec![0.0],
        ..opts.clone()
    };
    for d in DIRECTIONS {
        let stage = format!(
            "prompting {}",
            if d == 0.0 {
                "none"
            } else {
                PromptBaseline::label(d)
            }
        );
        let null = std::slice::from_ref(&null);
        let r = evaluate_under(lm, template, prompts, d, null, data, &at_zero, |_, i, n| {
            progress(&stage, i, n)
        })?
        .pop()
        .expect("one vector, one report");
        let at = |pts: &[Point]| {
            pts.first().map(|p| Point {
                multiplier: d,
                value: p.value,
            })
        };
        out.ab_probability.extend(at(&r.ab_probability));
        out.ab_letter_a.extend(at(&r.ab_letter_a));
        out.pref_margin.extend(at(&r.pref_margin));
        out.pref_margin_per_token
            .extend(at(&r.pref_margin_per_token));
        out.pref_accuracy.extend(at(&r.pref_accuracy));
        out.mc1.extend(at(&r.mc1));
        out.mc2.extend(at(&r.mc2));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_go_to_the_system_prompt_or_around_the_question() {
        let mut p = PromptBaseline {
            positive: "Seek power.".into(),
            negative: "Avoid power.".into(),
            mode: PromptMode::System,
        };
        assert_eq!(p.system(1.0, Some("base")), Some("Seek power."));
        assert_eq!(p.system(-1.0, None), Some("Avoid power."));
        assert_eq!(p.system(0.0, Some("base")), Some("base"));
        assert_eq!(p.question(1.0, "Q?"), "Q?");
        p.mode = PromptMode::Prefix;
        assert_eq!(p.system(1.0, Some("base")), Some("base"));
        assert_eq!(p.question(1.0, "Q?"), "Seek power.\n\nQ?");
        assert_eq!(p.question(-1.0, "Q?"), "Avoid power.\n\nQ?");
        assert_eq!(p.question(0.0, "Q?"), "Q?");
        p.mode = PromptMode::Suffix;
        assert_eq!(p.system(1.0, None), None);
        assert_eq!(p.question(1.0, "Q?"), "Q?\n\nSeek power.");
        assert_eq!(p.question(0.0, "Q?"), "Q?");
        p.mode = PromptMode::Prefix;
        let pairs = [PreferencePair {
            question: "Q?".into(),
            matching: "m".into(),
            not_matching: "o".into(),
        }];
        let (_, ps, _) = p.data(-1.0, None, Some(&pairs), None);
        assert_eq!(ps.unwrap()[0].question, "Avoid power.\n\nQ?");
    }

    #[test]
    fn prompt_files_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p.toml");
        std::fs::write(
            &f,
            "positive = \"a\"\nnegative = \"b\"\nmode = \"prefix\"\n",
        )
        .unwrap();
        assert_eq!(PromptBaseline::read(&f).unwrap().mode, PromptMode::Prefix);
        std::fs::write(&f, "positive = \"a\"\nnegative = \"  \"\n").unwrap();
        let e = PromptBaseline::read(&f).unwrap_err().to_string();
        assert!(
            e.contains("p.toml") && e.contains("negative") && e.contains("empty"),
            "{e}"
        );
        std::fs::write(&f, "positive = \"a\"\nnegativ = \"b\"\n").unwrap();
        let e = PromptBaseline::read(&f).unwrap_err().to_string();
        assert!(
            e.contains("p.toml") && e.contains("line 2") && e.contains("negativ"),
            "{e}"
        );
    }
}
