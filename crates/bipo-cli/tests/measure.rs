//! `bipo baseline`, `eval`, `compare` and `sweep-layers` end to end on the default
//! model, on a few examples so CI stays quick.

mod common;

use std::path::Path;
use std::process::Output;

use common::{bipo, model, root};

fn shared(behaviour: &str, file: &str) -> String {
    let p = root()
        .join("../shared/data/bipo")
        .join(behaviour)
        .join(file);
    assert!(p.is_file(), "{} missing", p.display());
    p.to_string_lossy().into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The first `n` rows of a CSV file, written to `dst`.
fn head(src: &str, n: usize, dst: &Path) -> String {
    let text = std::fs::read_to_string(src).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let mut w = csv::Writer::from_path(dst).unwrap();
    w.write_record(rdr.headers().unwrap()).unwrap();
    for r in rdr.records().take(n) {
        w.write_record(&r.unwrap()).unwrap();
    }
    w.flush().unwrap();
    dst.to_string_lossy().into_owned()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn baselines_then_compare_write_a_full_report_with_plots_and_judge_scores() {
    let d = tempfile::tempdir().unwrap();
    let train = head(
        &shared("power-seeking", "train.csv"),
        12,
        &d.path().join("train.csv"),
    );
    let caa = d.path().join("caa.safetensors");
    let m = model();
    ok(&bipo(&[
        "baseline",
        "caa",
        "-m",
        &m,
        "--data",
        &train,
        "--layer",
        "6",
        "-o",
        caa.to_str().unwrap(),
        "--threads",
        "2",
    ]));
    let rnd = d.path().join("rnd.gguf");
    ok(&bipo(&[
        "baseline",
        "random",
        "--like",
        caa.to_str().unwrap(),
        "--seed",
        "3",
        "-o",
        rnd.to_str().unwrap(),
    ]));
    let (a, b) = (
        bipo::io::read_vector(&caa).unwrap(),
        bipo::io::read_vector(&rnd).unwrap(),
    );
    assert!((a.norms()[&6] - b.norms()[&6]).abs() < 1e-3 * a.norms()[&6]);
    assert!(
        a.cosine(&b).unwrap()[&6].abs() < 0.3,
        "a random direction is far from CAA's"
    );

    // A judge on loopback that always answers "3".
    let srv = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", srv.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            let body = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "3"}}]});
            req.respond(tiny_http::Response::from_string(body.to_string()))
                .unwrap();
        }
    });
    let out = d.path().join("cmp");
    // Two short neutral paragraphs keep the damage check quick.
    let neutral = d.path().join("neutral.txt");
    std::fs::write(&neutral, "The train leaves at noon from platform two.\n\nWater boils at one hundred degrees at sea level.\n").unwrap();
    ok(&bipo(&[
        "compare",
        "--neutral",
        neutral.to_str().unwrap(),
        "-m",
        &m,
        "--bipo",
        caa.to_str().unwrap(),
        "--train",
        &train,
        "--data",
        &shared("power-seeking", "test_infer.csv"),
        "--data",
        &shared("power-seeking", "test.csv"),
        "--limit",
        "3",
        "--multipliers=-1,0,1",
        "--open-ended",
        "1",
        "--max-tokens",
        "4",
        "--judge-url",
        &url,
        "--judge-model",
        "test-judge",
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]));
    let r = json(&out.join("report.json"));
    let vs = r["vectors"].as_array().unwrap();
    let names: Vec<&str> = vs.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bipo", "caa", "pca", "mean-centring", "random"]);
    // Multiplier 0 is the unsteered model for every vector: identical numbers.
    let at0 = |v: &serde_json::Value, k: &str| v[k][1]["value"].as_f64().unwrap();
    for k in ["ab_probability", "pref_margin", "perplexity"] {
        assert!(vs.iter().all(|v| at0(v, k) == at0(&vs[0], k)), "{k}");
    }
    assert!(vs.iter().all(|v| at0(v, "kl") == 0.0));
    // "bipo" here is the CAA vector itself, so both rows agree exactly.
    assert_eq!(vs[0]["ab_probability"], vs[1]["ab_probability"]);
    for stem in [
        "ab_probability",
        "pref_margin",
        "pref_accuracy",
        "kl",
        "perplexity",
        "steerability_ab",
        "steerability_pref",
    ] {
        assert!(
            out.join(format!("{stem}.png")).is_file() && out.join(format!("{stem}.svg")).is_file(),
            "{stem}"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| random |") && md.contains("anti-steerable"));
    let answers = std::fs::read_to_string(out.join("answers.jsonl")).unwrap();
    assert_eq!(
        answers.lines().count(),
        5 * 3,
        "5 vectors x 3 multipliers x 1 question"
    );
    assert!(answers.lines().all(|l| json_line(l)["score"] == 3));
    assert_eq!(r["open_ended"]["judge"]["model"], "test-judge");
    assert_eq!(r["open_ended"]["judge"]["mean_score"]["pca"]["1"], 3.0);
    for v in ["bipo", "caa", "pca", "mean-centring", "random"] {
        assert!(out
            .join("vectors")
            .join(format!("{v}.safetensors"))
            .is_file());
    }
}

fn json_line(l: &str) -> serde_json::Value {
    serde_json::from_str(l).unwrap()
}

#[test]
fn a_layer_sweep_scores_every_requested_layer() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("sweep");
    let cfg = d.path().join("bipo.toml");
    std::fs::write(&cfg, "warmup_steps = 1\nlr = 0.01\n").unwrap();
    ok(&bipo(&[
        "sweep-layers",
        "-m",
        &model(),
        "--train",
        &shared("wealth-seeking", "train.csv"),
        "--skip-invalid-rows",
        "--data",
        &shared("wealth-seeking", "test_infer.csv"),
        "--pairs",
        &shared("wealth-seeking", "test.csv"),
        "--layers",
        "4-5",
        "--limit",
        "3",
        "--train-limit",
        "6",
        "--bipo-steps",
        "2",
        "--bipo-config",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]));
    let rows = json(&out.join("sweep.json"));
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["layer"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
    // The unsteered probability does not depend on which layer's vector is tried.
    assert_eq!(rows[0]["p_zero"], rows[1]["p_zero"]);
    assert_eq!(rows[0]["margin_zero"], rows[1]["margin_zero"]);
    assert!(rows.iter().all(|r| r["margin_effect"].is_f64()));
    assert!(out.join("sweep-margin.png").is_file());
    // The short BiPO runs were trained and scored at each layer.
    assert!(rows.iter().all(|r| r["bipo_margin_effect"].is_f64()));
    assert!(out.join("bipo-L4/vector.safetensors").is_file());
    assert!(out.join("sweep.png").is_file() && out.join("sweep.md").is_file());
}

#[test]
fn a_sweep_runs_on_free_text_pairs_alone_and_ranks_per_norm_and_per_damage() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("sweep");
    ok(&bipo(&[
        "sweep-layers",
        "-m",
        &model(),
        "--train",
        &shared("wealth-seeking", "train.csv"),
        "--skip-invalid-rows",
        "--pairs",
        &shared("wealth-seeking", "test.csv"),
        "--layers",
        "3,20",
        "--limit",
        "3",
        "--train-limit",
        "6",
        "-o",
        out.to_str().unwrap(),
    ]));
    let rows = json(&out.join("sweep.json"));
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let (e, n, k) = (
            r["margin_effect"].as_f64().unwrap(),
            r["norm"].as_f64().unwrap(),
            r["kl_plus"].as_f64().unwrap(),
        );
        assert!(k > 0.0, "the damage at +m is measured");
        assert!((r["margin_effect_per_norm"].as_f64().unwrap() - e / n).abs() < 1e-9);
        assert!((r["margin_effect_per_kl"].as_f64().unwrap() - e / k).abs() < 1e-9);
    }
    assert!(out.join("sweep-margin.png").is_file());
    assert!(
        !out.join("sweep.png").exists(),
        "no A/B chart without A/B data"
    );
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("margin effect per unit of CAA norm") && md.contains("per nat of damage"));
    assert!(!md.contains("sweep.png"), "{md}");
    let o = bipo(&[
        "sweep-layers",
        "-m",
        &model(),
        "--train",
        &shared("wealth-seeking", "train.csv"),
        "-o",
        d.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "needs --data or --pairs");
}

#[test]
fn eval_errors_name_the_bad_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("ab.csv");
    std::fs::write(&bad, "question,A,B,matching\nQ?,x,y,C\n").unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let o = bipo(&[
        "eval",
        "-m",
        &model(),
        "-v",
        happy.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "-o",
        d.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("ab.csv") && e.contains("line 2"), "{e}");
    let o = bipo(&[
        "baseline",
        "random",
        "-o",
        d.path().join("r.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--like"));
}

#[test]
fn compare_without_a_vector_trains_bipo_itself_and_records_the_run() {
    let d = tempfile::tempdir().unwrap();
    let train = head(
        &shared("power-seeking", "train.csv"),
        8,
        &d.path().join("train.csv"),
    );
    let cfg = d.path().join("bipo.toml");
    std::fs::write(
        &cfg,
        "layer = 5\nepochs = 1\nmax_steps = 2\nwarmup_steps = 1\nlr = 0.01\n",
    )
    .unwrap();
    let out = d.path().join("cmp");
    ok(&bipo(&[
        "compare",
        "-m",
        &model(),
        "--bipo-config",
        cfg.to_str().unwrap(),
        "--reps",
        "--train",
        &train,
        "--data",
        &shared("power-seeking", "test.csv"),
        "--limit",
        "2",
        "--multipliers=-1,0,1",
        "--no-damage",
        "--open-ended",
        "0",
        "-o",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]));
    let run = out.join("bipo-run");
    assert!(run.join("vector.safetensors").is_file() && run.join("run.json").is_file());
    let steps = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        steps
            .lines()
            .filter(|l| l.contains("\"type\":\"step\""))
            .count(),
        2
    );
    let v = bipo::io::read_vector(&out.join("vectors/bipo.safetensors")).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), [5]);
    assert!(v.norms()[&5] > 0.0, "two steps moved the vector off zero");
    // --reps trained RePS with the same settings beside it, and compared it too.
    let reps = out.join("reps-run");
    let record = json(&reps.join("run.json"));
    assert_eq!(record["method"], "reps", "{record}");
    assert_eq!(record["config"]["method"], "reps");
    assert_eq!(record["config"]["max_steps"], 2);
    let rv = bipo::io::read_vector(&out.join("vectors/reps.safetensors")).unwrap();
    assert_eq!(rv.meta.method.as_deref(), Some("reps"));
    assert_eq!(v.meta.method.as_deref(), Some("bipo"));
    assert_eq!(rv.layers.keys().copied().collect::<Vec<_>>(), [5]);
    assert!(
        rv.layers[&5] != v.layers[&5],
        "RePS and BiPO reached the same vector"
    );
    let r = json(&out.join("report.json"));
    let names: Vec<&str> = r["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["bipo", "reps", "caa", "pca", "mean-centring", "random"]
    );
}

#[test]
fn mean_centring_is_a_baseline_of_its_own() {
    let d = tempfile::tempdir().unwrap();
    let train = head(
        &shared("power-seeking", "train.csv"),
        12,
        &d.path().join("t.csv"),
    );
    let mc = d.path().join("mc.safetensors");
    let caa = d.path().join("caa.safetensors");
    for (method, out) in [("mean-centring", &mc), ("caa", &caa)] {
        ok(&bipo(&[
            "baseline",
            method,
            "-m",
            &model(),
            "--data",
            &train,
            "--layer",
            "10",
            "--skip-invalid-rows",
            "-o",
            out.to_str().unwrap(),
            "--threads",
            "2",
        ]));
    }
    let (m, c) = (
        bipo::io::read_vector(&mc).unwrap(),
        bipo::io::read_vector(&caa).unwrap(),
    );
    assert_eq!(m.meta.method.as_deref(), Some("mean-centring"));
    assert_eq!(m.layers.keys().copied().collect::<Vec<_>>(), [10]);
    assert!(m.norms()[&10] > 0.0);
    let cos = m.cosine(&c).unwrap()[&10];
    assert!(cos < 0.999, "mean-centring is not CAA (cosine {cos})");
}
