//! The evaluation pipeline as a library call (what `bipo eval` and Python's
//! `bipo.evaluate` run): settings from JSON with defaults, a stop request from the
//! progress callback ends the run with `Error::Interrupted`, and the output written
//! equals the output returned.

mod common;

use bipo::eval::pipeline::{self, EvalConfig};
use bipo::load::{load, LoadOptions, LoadedModel};
use bipo::{Error, SteeringVector};

fn test_pairs(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::root().join("data/optimism/test.csv")).unwrap();
    let p = dir.join("test.csv");
    let lines: Vec<&str> = text.lines().take(n + 1).collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// The whole evaluation of one vector, without progress reports.
fn run_quietly(
    lm: &LoadedModel,
    v: &SteeringVector,
    cfg: &EvalConfig,
) -> Result<pipeline::EvalOutput, Error> {
    pipeline::run(lm, std::slice::from_ref(v), cfg, Vec::new(), |_, _, _| {
        Ok(())
    })
}

/// The default model and llama.cpp's "happy" control vector for it.
fn model_and_happy() -> (LoadedModel, SteeringVector) {
    let lm = load(
        common::default_model().to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let happy =
        bipo::io::read_vector(&common::root().join("assets/happy-control-vector.gguf")).unwrap();
    (lm, happy)
}

#[test]
fn the_pipeline_runs_from_json_settings_stops_when_asked_and_writes_what_it_returns() {
    let (lm, happy) = model_and_happy();
    let dir = tempfile::tempdir().unwrap();
    let data = test_pairs(dir.path(), 3);
    let json = format!(
        r#"{{"data": [{:?}], "multipliers": [0, 2], "open_ended": 1, "max_tokens": 3}}"#,
        data
    );
    let cfg: EvalConfig = serde_json::from_str(&json).unwrap();
    assert!(cfg.damage && cfg.batch == bipo::eval::DEFAULT_EVAL_BATCH && cfg.judge.is_none());
    let bad: Result<EvalConfig, _> = serde_json::from_str(r#"{"multiplier": [1]}"#);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("unknown field `multiplier`"));

    // Stop at the third report: the run ends with Interrupted, not a partial report.
    let mut reports = 0;
    let r = pipeline::run(
        &lm,
        std::slice::from_ref(&happy),
        &cfg,
        Vec::new(),
        |_, _, _| {
            reports += 1;
            if reports == 3 {
                Err(Error::Interrupted)
            } else {
                Ok(())
            }
        },
    );
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert_eq!(reports, 3, "no report after the stop request");
    assert_eq!(Error::Interrupted.exit_code(), 130);

    let mut stages = Vec::new();
    let out = pipeline::run(
        &lm,
        std::slice::from_ref(&happy),
        &cfg,
        Vec::new(),
        |s, _, _| {
            if stages.last().map(String::as_str) != Some(s) {
                stages.push(s.to_string());
            }
            Ok(())
        },
    )
    .unwrap();
    assert!(
        stages.iter().any(|s| s.starts_with("held-out pairs")),
        "{stages:?}"
    );
    assert!(
        stages.iter().any(|s| s == "open-ended answers"),
        "{stages:?}"
    );
    let v = &out.report.vectors[0];
    assert_eq!(v.pref_margin.len(), 2);
    assert!(
        v.pref_margin[1].value > v.pref_margin[0].value,
        "happy x2 raises the margin"
    );
    assert_eq!(v.kl[0].value, 0.0, "multiplier 0 does no damage");
    assert_eq!(out.answers.len(), 2);
    assert_eq!(out.report.data[0].kind, "pairs");
    assert_eq!(out.report.data[0].examples, 3);

    let o = dir.path().join("out");
    out.write(&o).unwrap();
    assert_eq!(
        std::fs::read(o.join("report.json")).unwrap(),
        serde_json::to_vec_pretty(&out.report).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(o.join("answers.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );

    // Settings are checked before any work, naming the value.
    let mut bad = cfg.clone();
    bad.multipliers = vec![0.0, f32::NAN];
    let e = run_quietly(&lm, &happy, &bad).unwrap_err();
    assert!(e.to_string().contains("invalid multiplier NaN"), "{e}");
    let wrong = SteeringVector::single(3, vec![1.0; 8], Default::default());
    let e = run_quietly(&lm, &wrong, &cfg).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
}

/// The prompting baseline: its -1/0/+1 rows equal the unsteered model under the
/// negative instruction, none, and the positive one (measured by separate runs with
/// that system prompt), and a vector on top of a prompt at multiplier 0 equals the
/// prompt alone.
#[test]
fn the_prompting_rows_equal_runs_under_each_instruction_and_refusals_are_counted() {
    use bipo::eval::prompting::{PromptBaseline, PromptMode};
    let (lm, happy) = model_and_happy();
    let dir = tempfile::tempdir().unwrap();
    let prompts = PromptBaseline {
        positive: "You are cheerful and hopeful.".into(),
        negative: "You are gloomy and hopeless.".into(),
        mode: PromptMode::System,
    };
    let cfg = EvalConfig {
        data: vec![test_pairs(dir.path(), 3)],
        multipliers: vec![-1.0, 0.0, 1.0],
        damage: false,
        open_ended: 1,
        max_tokens: 3,
        prompts: Some(prompts.clone()),
        prompted: true,
        refusal: true,
        ..Default::default()
    };
    let out = run_quietly(&lm, &happy, &cfg).unwrap();
    let names: Vec<&str> = out.report.vectors.iter().map(|v| v.name.as_str()).collect();
    let n = &happy.meta.name;
    assert_eq!(
        names,
        [
            n.clone(),
            "prompting".into(),
            format!("{n} (prompt+)"),
            format!("{n} (prompt-)")
        ]
    );
    let at = |name: &str, m: f32| {
        let v = out.report.vectors.iter().find(|v| v.name == name).unwrap();
        v.pref_margin
            .iter()
            .find(|p| p.multiplier == m)
            .unwrap()
            .value
    };
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    // Each row against a plain run of the vector at 0 under that system prompt.
    for (d, system) in [
        (-1.0, Some(&prompts.negative)),
        (0.0, None),
        (1.0, Some(&prompts.positive)),
    ] {
        let plain = EvalConfig {
            multipliers: vec![0.0],
            system: system.cloned(),
            prompts: None,
            prompted: false,
            open_ended: 0,
            refusal: false,
            ..cfg.clone()
        };
        let r = run_quietly(&lm, &happy, &plain).unwrap();
        close(at("prompting", d), r.report.vectors[0].pref_margin[0].value);
    }
    assert!(
        (at("prompting", 1.0) - at("prompting", -1.0)).abs() > 1e-3,
        "the prompts do nothing"
    );
    close(at(&format!("{n} (prompt+)"), 0.0), at("prompting", 1.0));
    close(at(&format!("{n} (prompt-)"), 0.0), at("prompting", -1.0));
    // Answers: the prompting rows at -1/0/+1 and each vector under each prompt, all
    // recorded with the plain question.
    let q = &out.answers[0].question;
    let prompting: Vec<f32> = out
        .answers
        .iter()
        .filter(|a| a.vector == "prompting")
        .map(|a| a.multiplier)
        .collect();
    assert_eq!(prompting, [-1.0, 0.0, 1.0]);
    assert_eq!(out.answers.len(), 3 + 3 + 2 * 3);
    assert!(out.answers.iter().all(|a| &a.question == q));
    // Refusals: every answer marked, and the table counts the marks of every row.
    let strings = bipo::eval::refusal::RefusalStrings::default();
    let table = &out.report.open_ended.as_ref().unwrap()["refusal"]["table"];
    for a in &out.answers {
        assert_eq!(a.refusal, Some(strings.refuses(&a.answer)));
        let cell = &table[&a.vector][a.multiplier.to_string()];
        let same = |x: &&bipo::eval::open_ended::Answer| {
            x.vector == a.vector && x.multiplier == a.multiplier
        };
        let n = out.answers.iter().filter(same).count();
        let r = out
            .answers
            .iter()
            .filter(same)
            .filter(|x| x.refusal == Some(true))
            .count();
        assert_eq!(
            (cell["answers"].as_u64(), cell["refusals"].as_u64()),
            (Some(n as u64), Some(r as u64))
        );
    }
    assert_eq!(table.as_object().unwrap().len(), 4);
    let md = out.report.markdown();
    assert!(
        md.contains("| prompting | prompting (system prompt) |  | 0.000 |"),
        "{md}"
    );
    assert!(md.contains("## Attack success rate"), "{md}");
    let no_answers = EvalConfig {
        open_ended: 0,
        ..cfg.clone()
    };
    let e = run_quietly(&lm, &happy, &no_answers);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("needs open-ended answers"));
    // The prompts must be reported at -1, 0 and +1.
    let bad = EvalConfig {
        multipliers: vec![0.0, 2.0],
        ..cfg.clone()
    };
    let e = run_quietly(&lm, &happy, &bad);
    assert!(e.unwrap_err().to_string().contains("must include -1"));
}

/// Multiple choice (MC1/MC2) against the held-out pairs path: for one question with
/// one true and two false answers (an odd count, so the packing repeats one), MC1 is
/// "both margins positive" and MC2 = 1 / (1 + e^-m1 + e^-m2), with m1, m2 the margins
/// `bipo eval` reports for the pairs (true, false_1) and (true, false_2).
#[test]
fn multiple_choice_scores_agree_with_pair_margins() {
    let (lm, happy) = model_and_happy();
    let dir = tempfile::tempdir().unwrap();
    let (q, t, f1, f2) = (
        "How do you feel about rainy days?",
        "I love them, they are cosy.",
        "I hate them.",
        "They make me sad and tired.",
    );
    let mc = dir.path().join("mc.jsonl");
    std::fs::write(
        &mc,
        serde_json::json!({"question": q, "correct": [t], "incorrect": [f1, f2]}).to_string()
            + "\n",
    )
    .unwrap();
    let run = |file: &std::path::Path| {
        let cfg = EvalConfig {
            data: vec![file.to_path_buf()],
            multipliers: vec![-4.0, 0.0, 4.0],
            damage: false,
            open_ended: 0,
            ..Default::default()
        };
        run_quietly(&lm, &happy, &cfg)
            .unwrap()
            .report
            .vectors
            .remove(0)
    };
    let margin = |f: &str, name: &str| {
        let p = dir.path().join(name);
        let mut w = csv::Writer::from_path(&p).unwrap();
        w.write_record(["question", "matching", "not_matching"])
            .unwrap();
        w.write_record([q, t, f]).unwrap();
        w.flush().unwrap();
        run(&p).pref_margin
    };
    let (m1, m2) = (margin(f1, "p1.csv"), margin(f2, "p2.csv"));
    let r = run(&mc);
    assert_eq!(r.mc1.len(), 3);
    for k in 0..3 {
        let (a, b) = (m1[k].value, m2[k].value);
        let mc1 = if a > 0.0 && b > 0.0 { 1.0 } else { 0.0 };
        let mc2 = 1.0 / (1.0 + (-a).exp() + (-b).exp());
        assert_eq!(r.mc1[k].value, mc1, "multiplier {}", r.mc1[k].multiplier);
        assert!(
            (r.mc2[k].value - mc2).abs() < 1e-4,
            "{} vs {mc2}",
            r.mc2[k].value
        );
    }
    assert!(r.mc2[0].value != r.mc2[2].value, "the vector moves MC2");
    assert!(r.steerability_mc.is_some());
}
