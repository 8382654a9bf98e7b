//! Evaluation reports: `report.json` (everything), `report.md` (tables) and one
//! SVG + PNG plot per metric (metric vs multiplier, one line per vector).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

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
        "pref_accuracy",
        "Held-out pairs: accuracy (margin > 0)",
        "fraction",
        |r| &r.pref_accuracy,
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
        s += "## Vectors\n\n| vector | method | layers | norm |\n|---|---|---|---|\n";
        for v in &self.vectors {
            let layers: Vec<String> = v.norms.keys().map(|l| l.to_string()).collect();
            let norm = v.norms.values().map(|n| n * n).sum::<f32>().sqrt();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} |",
                v.name,
                v.method.as_deref().unwrap_or("-"),
                layers.join(","),
                norm
            );
        }
        for (stem, title, _, get) in METRICS {
            if self.vectors.iter().all(|v| get(v).is_empty()) {
                continue;
            }
            let _ = write!(s, "\n## {title}\n\n![{stem}]({stem}.png)\n\n| vector |");
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
            .flat_map(|v| [(v, &v.steerability_ab), (v, &v.steerability_pref)])
            .filter_map(|(v, s)| s.as_ref().map(|s| (v, s)))
            .collect();
        if !st.is_empty() {
            s += "\n## Per-sample steerability (slope of each sample's metric vs multiplier)\n\n\
                  ![steerability_pref](steerability_pref.png) ![steerability_ab](steerability_ab.png)\n\n\
                  | vector | metric | mean | std | p10 | median | p90 | anti-steerable |\n|---|---|---|---|---|---|---|---|\n";
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
        if let Some(o) = &self.open_ended {
            let _ = writeln!(
                s,
                "\n## Open-ended answers\n\n```json\n{}\n```",
                serde_json::to_string_pretty(o).unwrap_or_default()
            );
        }
        s
    }

    /// The charts: one per metric that has data.
    pub fn charts(&self) -> Vec<(&'static str, LineChart)> {
        let mut charts = self.metric_charts();
        type Get = fn(&VectorReport) -> Option<&Steerability>;
        let kinds: [(&str, &str, Get); 2] = [
            ("steerability_ab", "A/B", |v| v.steerability_ab.as_ref()),
            ("steerability_pref", "held-out pairs", |v| {
                v.steerability_pref.as_ref()
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

    /// Writes report.json, report.md and the plots into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (stem, chart) in self.charts() {
            chart.write(&dir.join(stem))?;
        }
        let json = serde_json::to_vec_pretty(self).expect("report serialises");
        crate::util::write_atomic(&dir.join("report.json"), &json)?;
        crate::util::write_atomic(&dir.join("report.md"), self.markdown().as_bytes())
    }
}
