//! Evaluation reports: `report.json` (everything), `report.md` (tables) and one
//! SVG + PNG plot per metric (metric vs multiplier, one line per vector).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::open_ended::Answer;
use super::plot::{LineChart, Series};
use super::{Point, Steerability, VectorReport};
use crate::error::{Error, Result};

/// A data file the report was made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataFile {
    pub path: String,
    pub sha256: String,
    /// "ab", "pairs", "neutral" or "train".
    pub kind: String,
    pub examples: usize,
}

/// A whole evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    pub tool: String,
    pub created_unix: u64,
    pub model: String,
    pub model_sha256: Option<String>,
    pub command: String,
    pub data: Vec<DataFile>,
    pub multipliers: Vec<f32>,
    pub vectors: Vec<VectorReport>,
    /// Open-ended answers (JSONL, relative to the report) and judge summary, if any.
    pub open_ended: Option<serde_json::Value>,
    /// Anything else worth keeping (e.g. a layer sweep's per-layer results).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

/// (file stem, title, y label, accessor) of every per-multiplier metric.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&VectorReport) -> &Vec<Point>,
);
const METRICS: &[Metric] = &[
    (
        "ab_probability",
        "A/B: probability of the matching answer",
        "p(matching)",
        |r| &r.ab_probability,
    ),
    (
        "ab_letter_a",
        "A/B: probability of the letter A (letter bias)",
        "p(A)",
        |r| &r.ab_letter_a,
    ),
    (
        "pref_margin",
        "Held-out pairs: mean log-prob margin",
        "logp(matching) - logp(opposite)",
        |r| &r.pref_margin,
    ),
    (
        "pref_margin_per_token",
        "Held-out pairs: mean log-prob margin per token",
        "logp(matching)/tokens - logp(opposite)/tokens",
        |r| &r.pref_margin_per_token,
    ),
    (
        "pref_accuracy",
        "Held-out pairs: accuracy (margin > 0)",
        "fraction",
        |r| &r.pref_accuracy,
    ),
    (
        "mc1",
        "Multiple choice: MC1 (best true answer most likely)",
        "fraction of questions",
        |r| &r.mc1,
    ),
    (
        "mc2",
        "Multiple choice: MC2 (probability mass of true answers)",
        "mean mass",
        |r| &r.mc2,
    ),
    (
        "kl",
        "Damage: KL(unsteered || steered) on neutral text",
        "nats per token",
        |r| &r.kl,
    ),
    (
        "perplexity",
        "Damage: perplexity on neutral text",
        "perplexity",
        |r| &r.perplexity,
    ),
];

/// Longest answer shown in report.md (answers.jsonl has them whole).
const ANSWER_CHARS: usize = 300;

/// Text as one Markdown table cell: pipes escaped, line breaks as <br>, cut to
/// [`ANSWER_CHARS`] characters.
/// The columns of a vector x multiplier table: the multiplier keys (as `f32::to_string`
/// wrote them) in numeric order, each once.
pub(crate) fn multiplier_columns<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut mults: Vec<(f32, &str)> = keys.map(|k| (k.parse().unwrap_or(f32::NAN), k)).collect();
    mults.sort_by(|a, b| a.0.total_cmp(&b.0));
    mults.dedup_by(|a, b| a.1 == b.1);
    mults.into_iter().map(|(_, k)| k).collect()
}

/// The rows of such a table: the vectors named in `order` first, in that order, then
/// the others as given.
pub(crate) fn rows_in_order<'a>(
    names: impl Iterator<Item = &'a str>,
    order: &[&str],
) -> Vec<&'a str> {
    let mut rows: Vec<&str> = names.collect();
    rows.sort_by_key(|v| order.iter().position(|o| o == v).unwrap_or(usize::MAX));
    rows
}

fn cell(text: &str) -> String {
    let mut t: String = text.chars().take(ANSWER_CHARS).collect();
    if text.chars().count() > ANSWER_CHARS {
        t.push('…');
    }
    t.replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut s = format!("# {}\n\n", self.title);
        let _ = writeln!(
            s,
            "- model: `{}`{}",
            self.model,
            self.model_sha256
                .as_ref()
                .map(|h| format!(" (sha256 {h})"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "- command: `{}`", self.command);
        for d in &self.data {
            let _ = writeln!(
                s,
                "- {} data: `{}` ({} examples, sha256 {})",
                d.kind,
                d.path,
                d.examples,
                &d.sha256[..16.min(d.sha256.len())]
            );
        }
        let _ = writeln!(s, "- tool: {}\n", self.tool);
        let scaled = self.vectors.iter().any(|v| v.scale.is_some());
        s += "## Vectors\n\n| vector | method | layers | norm |";
        s += if scaled {
            " matched scale |\n|---|---|---|---|---|\n"
        } else {
            "\n|---|---|---|---|\n"
        };
        for v in &self.vectors {
            let layers: Vec<String> = v.norms.keys().map(|l| l.to_string()).collect();
            // A fold from +0: an empty sum (the prompting row has no vector) is +0, not -0.
            let norm = v.norms.values().fold(0.0f32, |a, n| a + n * n).sqrt();
            let _ = write!(
                s,
                "| {} | {} | {} | {:.3} |",
                v.name,
                v.method.as_deref().unwrap_or("-"),
                layers.join(","),
                norm
            );
            if scaled {
                let _ = write!(
                    s,
                    " {} |",
                    v.scale.map_or("-".into(), |x| format!("{x:.4}"))
                );
            }
            s += "\n";
        }
        if scaled {
            s += "\nVectors were rescaled to match the first one before measuring (the \
                  norm column is after scaling).\n";
        }
        let charts: Vec<&str> = self.charts().into_iter().map(|(stem, _)| stem).collect();
        let img = |stem: &str| {
            if charts.contains(&stem) {
                format!("![{stem}]({stem}.{})", super::plot::IMAGE_EXT)
            } else {
                String::new()
            }
        };
        for (stem, title, _, get) in METRICS {
            if self.vectors.iter().all(|v| get(v).is_empty()) {
                continue;
            }
            let _ = write!(s, "\n## {title}\n\n{}\n\n| vector |", img(stem));
            self.multipliers.iter().for_each(|m| {
                let _ = write!(s, " {m} |");
            });
            s += "\n|---|";
            s += &"---|".repeat(self.multipliers.len());
            s += "\n";
            for v in self.vectors.iter().filter(|v| !get(v).is_empty()) {
                let _ = write!(s, "| {} |", v.name);
                for m in &self.multipliers {
                    let cell = get(v)
                        .iter()
                        .find(|p| p.multiplier == *m)
                        .map_or("-".into(), |p| fmt(p.value));
                    let _ = write!(s, " {cell} |");
                }
                s += "\n";
            }
        }
        let st: Vec<_> = self
            .vectors
            .iter()
            .flat_map(|v| {
                [
                    (v, &v.steerability_ab),
                    (v, &v.steerability_pref),
                    (v, &v.steerability_mc),
                ]
            })
            .filter_map(|(v, s)| s.as_ref().map(|s| (v, s)))
            .collect();
        if !st.is_empty() {
            let _ = write!(
                s,
                "\n## Per-sample steerability (slope of each sample's metric vs multiplier)\n\n\
                 {} {} {}\n\n\
                 | vector | metric | mean | std | p10 | median | p90 | anti-steerable |\n\
                 |---|---|---|---|---|---|---|---|\n",
                img("steerability_pref"),
                img("steerability_ab"),
                img("steerability_mc")
            );
            for (v, x) in st {
                let q = |i: usize| x.quantiles.get(i).copied().map_or("-".into(), fmt);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.1}% |",
                    v.name,
                    x.metric,
                    fmt(x.mean),
                    fmt(x.std),
                    q(1),
                    q(3),
                    q(5),
                    100.0 * x.anti_steerable
                );
            }
        }
        let tradeoffs: Vec<&str> = charts
            .iter()
            .copied()
            .filter(|c| c.ends_with("_vs_kl"))
            .collect();
        if !tradeoffs.is_empty() {
            s += "\n## Effect against damage\n\nEach point is one multiplier: the effect it \
                  buys (y) for the damage it does (x, KL per token on neutral text). At equal \
                  damage, higher is better.\n\n";
            for c in tradeoffs {
                let _ = writeln!(s, "{}", img(c));
            }
        }
        if let Some(o) = &self.open_ended {
            let table = o.get("refusal").and_then(|r| {
                serde_json::from_value::<super::refusal::RefusalTable>(r.get("table")?.clone()).ok()
            });
            let mut shown = o.clone();
            if let Some(t) = table {
                let order: Vec<&str> = self.vectors.iter().map(|v| v.name.as_str()).collect();
                s += &super::refusal::markdown(&t, &order);
                // The table above says it; the JSON keeps the rest.
                shown["refusal"]["table"] = "above".into();
            }
            if let Some(j) = o.get("judge") {
                let order: Vec<&str> = self.vectors.iter().map(|v| v.name.as_str()).collect();
                s += &super::open_ended::judge_markdown(j, &order);
            }
            let _ = writeln!(
                s,
                "\n## Open-ended answers\n\n```json\n{}\n```",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
        }
        s
    }

    /// The Markdown summary with the open-ended answers as a table (each cut to
    /// `ANSWER_CHARS` characters).
    pub fn markdown_with_answers(&self, answers: &[Answer]) -> String {
        let mut s = self.markdown();
        if answers.is_empty() {
            return s;
        }
        let judged = answers.iter().any(|a| a.score.is_some());
        s += "\n| vector | multiplier | question | answer |";
        s += if judged {
            " score |\n|---|---|---|---|---|\n"
        } else {
            "\n|---|---|---|---|\n"
        };
        for a in answers {
            let _ = write!(
                s,
                "| {} | {} | {} | {} |",
                cell(&a.vector),
                a.multiplier,
                cell(&a.question),
                cell(&a.answer)
            );
            if judged {
                let _ = write!(s, " {} |", a.score.map_or("-".into(), |x| x.to_string()));
            }
            s += "\n";
        }
        s
    }

    /// The charts: one per metric that has data.
    pub fn charts(&self) -> Vec<(&'static str, LineChart)> {
        let mut charts = self.metric_charts();
        charts.extend(self.tradeoff_charts());
        type Get = fn(&VectorReport) -> Option<&Steerability>;
        let kinds: [(&str, &str, Get); 3] = [
            ("steerability_ab", "A/B", |v| v.steerability_ab.as_ref()),
            ("steerability_pref", "held-out pairs", |v| {
                v.steerability_pref.as_ref()
            }),
            ("steerability_mc", "multiple choice (MC2)", |v| {
                v.steerability_mc.as_ref()
            }),
        ];
        for (stem, what, get) in kinds {
            // The distribution as a quantile curve: sorted slopes against their rank.
            let series: Vec<Series> = self
                .vectors
                .iter()
                .filter_map(|v| get(v).map(|s| (v, s)))
                .filter(|(_, s)| s.slopes.len() > 1)
                .map(|(v, s)| {
                    let mut sorted = s.slopes.clone();
                    sorted.sort_by(f64::total_cmp);
                    let n = (sorted.len() - 1) as f64;
                    Series {
                        name: v.name.clone(),
                        points: sorted
                            .iter()
                            .enumerate()
                            .map(|(i, y)| (i as f64 / n, *y))
                            .collect(),
                    }
                })
                .collect();
            if !series.is_empty() {
                charts.push((
                    stem,
                    LineChart {
                        title: format!(
                            "Per-sample steerability, {what}: slopes sorted ({})",
                            self.title
                        ),
                        x_label: "fraction of samples".into(),
                        y_label: "slope of the sample's metric per unit multiplier".into(),
                        series,
                    },
                ));
            }
        }
        charts
    }

    /// Effect against damage: per vector, (KL, effect) at each multiplier.
    fn tradeoff_charts(&self) -> Vec<(&'static str, LineChart)> {
        type Get = fn(&VectorReport) -> &Vec<Point>;
        let effects: [(&str, &str, &str, Get); 4] = [
            (
                "ab_probability_vs_kl",
                "A/B p(matching)",
                "p(matching)",
                |r| &r.ab_probability,
            ),
            (
                "pref_margin_vs_kl",
                "held-out margin",
                "logp(matching) - logp(opposite)",
                |r| &r.pref_margin,
            ),
            (
                "pref_margin_per_token_vs_kl",
                "held-out margin per token",
                "per-token margin",
                |r| &r.pref_margin_per_token,
            ),
            ("mc2_vs_kl", "MC2", "MC2", |r| &r.mc2),
        ];
        let mut out = Vec::new();
        for (stem, what, y, get) in effects {
            let series: Vec<Series> = self
                .vectors
                .iter()
                .filter(|v| !get(v).is_empty() && !v.kl.is_empty())
                .map(|v| Series {
                    name: v.name.clone(),
                    points: get(v)
                        .iter()
                        .filter_map(|p| {
                            let kl = v.kl.iter().find(|k| k.multiplier == p.multiplier)?;
                            Some((kl.value, p.value))
                        })
                        .collect(),
                })
                .filter(|s| s.points.len() > 1)
                .collect();
            if !series.is_empty() {
                out.push((
                    stem,
                    LineChart {
                        title: format!(
                            "{what} against damage, one point per multiplier ({})",
                            self.title
                        ),
                        x_label: "KL(unsteered || steered) per token, neutral text".into(),
                        y_label: y.into(),
                        series,
                    },
                ));
            }
        }
        out
    }

    fn metric_charts(&self) -> Vec<(&'static str, LineChart)> {
        METRICS
            .iter()
            .filter(|(_, _, _, get)| self.vectors.iter().any(|v| !get(v).is_empty()))
            .map(|(stem, title, y, get)| {
                let series = self
                    .vectors
                    .iter()
                    .filter(|v| !get(v).is_empty())
                    .map(|v| Series {
                        name: v.name.clone(),
                        points: get(v)
                            .iter()
                            .map(|p| (p.multiplier as f64, p.value))
                            .collect(),
                    })
                    .collect();
                (
                    *stem,
                    LineChart {
                        title: format!("{title} ({})", self.title),
                        x_label: "multiplier".into(),
                        y_label: (*y).into(),
                        series,
                    },
                )
            })
            .collect()
    }

    /// Reads `dir/report.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join("report.json");
        let text = crate::util::read_text(&p)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&p, format!("not a bipo report: {e}")))
    }

    /// Writes report.json, report.md (with `answers` inline) and the plots into `dir`
    /// (created if needed).
    pub fn write(&self, dir: &Path, answers: &[Answer]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (stem, chart) in self.charts() {
            chart.write(&dir.join(stem))?;
        }
        let json = serde_json::to_vec_pretty(self).expect("report serialises");
        crate::util::write_atomic(&dir.join("report.json"), &json)?;
        let md = self.markdown_with_answers(answers);
        crate::util::write_atomic(&dir.join("report.md"), md.as_bytes())
    }
}
