//! A researcher's first hour: defaults that work on small data (and warnings when the
//! settings cannot), one layer syntax, a clear answer for a missing GPU backend, and
//! progress lines when stderr is a log rather than a terminal.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{model, root};

fn bipo_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bipo"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first `n` pairs of the project's optimism data.
fn small_data(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/optimism/train.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let p = dir.join("mine.csv");
    let mut w = csv::Writer::from_path(&p).unwrap();
    w.write_record(rdr.headers().unwrap()).unwrap();
    for r in rdr.records().take(n) {
        w.write_record(&r.unwrap()).unwrap();
    }
    w.flush().unwrap();
    p
}

#[test]
fn ineffective_settings_are_warned_about_and_defaults_pick_a_layer() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 12);
    let out = d.path().join("run");
    // The reported trap: 12 pairs, the old 100-step warm-up, 10 steps at the paper's lr.
    let o = bipo_env(
        &[
            "train",
            "-m",
            &model(),
            "--data",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--warmup-steps",
            "100",
            "--max-steps",
            "2",
            "--threads",
            "2",
        ],
        &[("BIPO_PROGRESS_SECS", "0")],
    );
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("warning: warm-up (100 steps) is not shorter than the whole schedule (60 steps"),
        "{e}"
    );
    assert!(e.contains("too small to steer"), "{e}");
    // No --layer: ~45% of SmolLM2's 30 layers, said once.
    assert!(
        e.contains("no --layer given: steering layer 14 of 30"),
        "{e}"
    );
    let v = bipo::io::read_vector(&out.join("vector.safetensors")).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), [14]);
    // stderr is a pipe here: progress came as lines, stage by stage, epoch lines too.
    assert!(e.contains("] caching layer 14 states (train)"), "{e}");
    assert!(e.contains("] training"), "{e}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(rec["config"]["layer"], 14, "{rec}");
    // The training arithmetic is recorded: the default for a quantized GGUF.
    assert_eq!(rec["model"]["train_weights"], "fast", "{rec}");
    assert_eq!(
        rec["model"]["train_arithmetic"],
        bipo::models::TrainWeights::Fast.arithmetic(),
        "{rec}"
    );
}

#[test]
fn the_last_layer_and_a_fraction_of_depth_name_layers() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 4);
    let out = d.path().join("run");
    let o = bipo_env(
        &[
            "train",
            "-m",
            &model(),
            "--data",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--layer",
            "-2",
            "--max-steps",
            "1",
            "--lr",
            "0.01",
            "--threads",
            "2",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = bipo::io::read_vector(&out.join("vector.safetensors")).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), [28]);
    // Several layers: one direction each, trained jointly (BiPO); refused for RePS.
    let r2 = d.path().join("r2");
    let args = |method: &'static str| {
        vec![
            "train".to_string(),
            "-m".into(),
            model(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "-o".into(),
            r2.to_str().unwrap().into(),
            "--force".into(),
            "--layer".into(),
            "10,14".into(),
            "--max-steps".into(),
            "1".into(),
            "--lr".into(),
            "0.01".into(),
            "--method".into(),
            method.into(),
        ]
    };
    let o = bipo_env(
        &args("bipo").iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = bipo::io::read_vector(&r2.join("vector.safetensors")).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), [10, 14]);
    assert!(v.norms().values().all(|&n| n > 0.0), "a layer did not move");
    let o = bipo_env(
        &args("reps").iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("10,14") && stderr(&o).contains("RePS trains one layer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn baselines_take_ranges_lists_and_the_model_from_the_environment() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 6);
    let out = d.path().join("caa.safetensors");
    let o = bipo_env(
        &[
            "baseline",
            "caa",
            "--data",
            data.to_str().unwrap(),
            "--layer",
            "10-12",
            "--layer",
            "0.5,-1",
            "-o",
            out.to_str().unwrap(),
        ],
        &[("BIPO_MODEL", &model()), ("BIPO_THREADS", "2")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = bipo::io::read_vector(&out).unwrap();
    assert_eq!(
        v.layers.keys().copied().collect::<Vec<_>>(),
        [10, 11, 12, 15, 29]
    );
    let o = bipo_env(
        &[
            "baseline",
            "caa",
            "--data",
            data.to_str().unwrap(),
            "--layer",
            "12-10",
            "-o",
            d.path().join("x.safetensors").to_str().unwrap(),
        ],
        &[("BIPO_MODEL", &model())],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("runs backwards"), "{}", stderr(&o));
}

#[test]
fn a_gpu_backend_missing_from_the_build_is_one_clear_line() {
    for (dev, feature) in [("cuda", "cuda"), ("cuda:1", "cuda"), ("metal", "metal")] {
        let o = bipo_env(&["inspect", "-m", &model(), "--device", dev], &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(
            e.contains(&format!("built without {feature} support"))
                && e.contains(&format!("--features {feature}")),
            "{e}"
        );
    }
    let o = bipo_env(&["inspect", "-m", &model(), "--device", "tpu"], &[]);
    assert!(stderr(&o).contains("choose cpu, cuda"), "{}", stderr(&o));
    let o = bipo_env(&["inspect", "--device", "cpu"], &[("BIPO_MODEL", &model())]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn train_help_shows_every_default() {
    let o = bipo_env(&["train", "--help"], &[]);
    let h = String::from_utf8_lossy(&o.stdout);
    use bipo::train::config as c;
    for want in [
        format!("[default: {}, the paper's]", c::DEFAULT_EPOCHS),
        format!("[default: {}, the paper's]", c::DEFAULT_LR),
        format!("[default: {}]", c::DEFAULT_BETA),
        format!("[default: {}]", c::DEFAULT_BATCH_SIZE),
        format!("[default: {}, but at most 10%", c::DEFAULT_WARMUP_STEPS),
        format!("[default: {}]", c::DEFAULT_WEIGHT_DECAY),
        format!("[default: {:.1}]", c::DEFAULT_GRAD_CLIP),
        format!("[default: {}]", c::DEFAULT_SEED),
        format!("[default: {}]", c::DEFAULT_CACHE_MB),
        "[default: ~45% of the model's depth".to_string(),
    ] {
        // clap re-wraps long help; compare without line breaks.
        let flat = h.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&want), "`{want}` missing from:\n{h}");
    }
}

#[test]
fn vector_layers_are_selected_and_facts_print_as_json() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let happy = happy.to_str().unwrap();
    let out = d.path().join("mid.safetensors");
    let o = bipo_env(
        &[
            "vector",
            "select",
            happy,
            out.to_str().unwrap(),
            "--layers",
            "10-12,-1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let all = bipo::io::read_vector(Path::new(happy)).unwrap();
    let mid = bipo::io::read_vector(&out).unwrap();
    assert_eq!(
        mid.layers.keys().copied().collect::<Vec<_>>(),
        [10, 11, 12, 29]
    );
    assert_eq!(mid.layers[&11], all.layers[&11]);
    // --drop keeps the rest; dropping layer 0 of a vector without it names the layers.
    let rest = d.path().join("rest.gguf");
    let o = bipo_env(
        &[
            "vector",
            "select",
            happy,
            rest.to_str().unwrap(),
            "--layers",
            "1-28",
            "--drop",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rest_v = bipo::io::read_vector(&rest).unwrap();
    assert_eq!(rest_v.layers.keys().copied().collect::<Vec<_>>(), [29]);
    let o = bipo_env(
        &[
            "vector",
            "select",
            happy,
            d.path().join("x.gguf").to_str().unwrap(),
            "--layers",
            "0",
        ],
        &[],
    );
    assert!(stderr(&o).contains("layer 0 is not in"), "{}", stderr(&o));
    // --json parses and carries the same facts as the text.
    let o = bipo_env(&["vector", "info", out.to_str().unwrap(), "--json"], &[]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["layers"], serde_json::json!([10, 11, 12, 29]));
    assert_eq!(j["width"], 576);
    let n11 = j["norms"]["11"].as_f64().unwrap();
    assert!((n11 - mid.norms()[&11] as f64).abs() < 1e-5);
    let o = bipo_env(
        &["vector", "compare", happy, out.to_str().unwrap(), "--json"],
        &[],
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = j["cosines"][0]["cosine"]["11"].as_f64().unwrap();
    assert!((c - 1.0).abs() < 1e-5, "{j}");
    assert_eq!(j["vectors"].as_array().unwrap().len(), 2);
}

#[test]
fn training_on_response_positions_only_is_recorded_and_differs() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 4);
    let mut vs = Vec::new();
    for mode in ["all", "generated"] {
        let out = d.path().join(mode);
        let o = bipo_env(
            &[
                "train",
                "-m",
                &model(),
                "--data",
                data.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--layer",
                "20",
                "--max-steps",
                "2",
                "--lr",
                "0.01",
                "--positions",
                mode,
                "--threads",
                "2",
            ],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
        assert_eq!(rec["config"]["positions"], mode, "{rec}");
        vs.push(bipo::io::read_vector(&out.join("vector.safetensors")).unwrap());
    }
    assert_ne!(vs[0].layers, vs[1].layers);
}

#[test]
fn eval_in_generated_mode_leaves_ab_flat_and_moves_pair_margins_differently() {
    let d = tempfile::tempdir().unwrap();
    let shared = root().join("../shared/data/bipo/power-seeking");
    let happy = root().join("assets/happy-control-vector.gguf");
    let mut reports = Vec::new();
    for mode in ["all", "generated"] {
        let out = d.path().join(mode);
        let o = bipo_env(
            &[
                "eval",
                "-m",
                &model(),
                "-v",
                happy.to_str().unwrap(),
                "--data",
                shared.join("test_infer.csv").to_str().unwrap(),
                "--data",
                shared.join("test.csv").to_str().unwrap(),
                "--limit",
                "3",
                "--multipliers=-4,0,4",
                "--no-damage",
                "--open-ended",
                "0",
                "--positions",
                mode,
                "-o",
                out.to_str().unwrap(),
                "--threads",
                "2",
            ],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        reports.push(r["vectors"][0].clone());
    }
    let vals = |v: &serde_json::Value, k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].as_f64().unwrap())
            .collect()
    };
    // A/B letters are predicted at the prompt's last position: with only generated
    // positions steered, the A/B probability is the unsteered one at every multiplier.
    let ab = vals(&reports[1], "ab_probability");
    assert!(ab.iter().all(|&x| x == ab[1]), "{ab:?}");
    assert_ne!(vals(&reports[0], "ab_probability")[0], ab[1]);
    // Held-out pair margins move in both modes, differently.
    let (pa, pg) = (
        vals(&reports[0], "pref_margin"),
        vals(&reports[1], "pref_margin"),
    );
    assert_eq!(pa[1], pg[1], "multiplier 0 is unsteered in both");
    assert_ne!(pg[0], pg[1]);
    assert_ne!(pa[0], pg[0]);
}

#[test]
fn a_layer_range_limits_the_vector_and_completions_print() {
    let happy = root().join("assets/happy-control-vector.gguf");
    let spec = format!("{}:6", happy.display());
    let m = model();
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "-m",
            &m,
            "-p",
            "I feel",
            "--max-tokens",
            "12",
            "--threads",
            "2",
        ];
        a.extend_from_slice(extra);
        let o = bipo_env(&a, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plain = gen(&[]);
    let all = gen(&["-v", &spec]);
    // The happy vector has layers 1..29; a range outside them steers nothing.
    let none = gen(&["-v", &spec, "--layer-range", "0", "0"]);
    let part = gen(&["-v", &spec, "--layer-range", "10", "20"]);
    assert_ne!(all, plain);
    assert_eq!(none, plain);
    assert_ne!(part, plain);
    assert_ne!(part, all);
    let o = bipo_env(&["completions", "bash"], &[]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && s.contains("_bipo()") && s.contains("sweep-layers"),
        "{s}"
    );
}

#[test]
fn vectors_normalize_to_a_norm_whole_or_per_layer() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let (whole, per) = (
        d.path().join("w.safetensors"),
        d.path().join("p.safetensors"),
    );
    for (out, extra) in [(&whole, None), (&per, Some("--per-layer"))] {
        let mut a = vec![
            "vector",
            "normalize",
            happy.to_str().unwrap(),
            out.to_str().unwrap(),
            "--norm",
            "4",
        ];
        a.extend(extra);
        let o = bipo_env(&a, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let src = bipo::io::read_vector(&happy).unwrap();
    let w = bipo::io::read_vector(&whole).unwrap();
    let total = w.norms().values().map(|n| n * n).sum::<f32>().sqrt();
    assert!((total - 4.0).abs() < 1e-4, "{total}");
    // The whole-vector rescale keeps the ratios between layers.
    let r = src.norms()[&10] / src.norms()[&20];
    assert!((w.norms()[&10] / w.norms()[&20] - r).abs() < 1e-4);
    let p = bipo::io::read_vector(&per).unwrap();
    assert!(p.norms().values().all(|n| (n - 4.0).abs() < 1e-4));
    let o = bipo_env(
        &[
            "vector",
            "normalize",
            happy.to_str().unwrap(),
            whole.to_str().unwrap(),
            "--norm",
            "0",
        ],
        &[],
    );
    assert!(stderr(&o).contains("invalid --norm 0"), "{}", stderr(&o));
    // Normalising a file onto itself is refused before anything is written.
    let copy = d.path().join("copy.gguf");
    std::fs::copy(&happy, &copy).unwrap();
    let o = bipo_env(
        &[
            "vector",
            "normalize",
            copy.to_str().unwrap(),
            copy.to_str().unwrap(),
            "--norm",
            "2",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to overwrite an input"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&happy).unwrap()
    );
}

#[test]
fn quiet_keeps_warnings_and_results_and_drops_progress() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 4);
    let out = d.path().join("run");
    let o = bipo_env(
        &[
            "train",
            "-q",
            "-m",
            &model(),
            "--data",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--threads",
            "2",
        ],
        &[("BIPO_PROGRESS_SECS", "0")],
    );
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.lines().all(|l| l.starts_with("warning:")), "{e}");
    assert!(e.contains("warning:"), "the small-run warnings stay: {e}");
    assert!(out.join("vector.safetensors").is_file());
    // Errors still print under --quiet.
    let o = bipo_env(&["inspect", "-q", "-m", "/nonexistent.gguf"], &[]);
    assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));
}

#[test]
fn eval_labels_vectors_by_name_and_never_twice_the_same() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let (a, b) = (d.path().join("run-a.gguf"), d.path().join("run-b.gguf"));
    std::fs::copy(&happy, &a).unwrap();
    std::fs::copy(&happy, &b).unwrap();
    let ab = root().join("../shared/data/bipo/power-seeking/test_infer.csv");
    let out = d.path().join("ev");
    let spec = format!("{}:cheerful", happy.display());
    let o = bipo_env(
        &[
            "eval",
            "-m",
            &model(),
            "-v",
            &spec,
            "-v",
            a.to_str().unwrap(),
            "-v",
            b.to_str().unwrap(),
            "--data",
            ab.to_str().unwrap(),
            "--limit",
            "2",
            "--multipliers=0,1",
            "--no-damage",
            "--open-ended",
            "0",
            "-o",
            out.to_str().unwrap(),
            "--threads",
            "2",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = r["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cheerful", "run-a", "run-b"]);
}

#[test]
fn eval_takes_a_layer_range() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let ab = root().join("../shared/data/bipo/power-seeking/test_infer.csv");
    let run = |range: &[&str], out: &str| {
        let out = d.path().join(out);
        let mut a = vec![
            "eval",
            "-m",
            "",
            "-v",
            happy.to_str().unwrap(),
            "--data",
            ab.to_str().unwrap(),
            "--limit",
            "2",
            "--multipliers=0,4",
            "--no-damage",
            "--open-ended",
            "0",
            "-o",
            out.to_str().unwrap(),
            "--threads",
            "2",
        ];
        let m = model();
        a[2] = &m;
        a.extend_from_slice(range);
        let o = bipo_env(&a, &[]);
        (o.status.success(), stderr(&o), out)
    };
    let read = |out: &Path| -> (Vec<usize>, f64) {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let v = &r["vectors"][0];
        let layers = v["norms"]
            .as_object()
            .unwrap()
            .keys()
            .map(|l| l.parse::<usize>().unwrap())
            .collect();
        (layers, v["ab_probability"][1]["value"].as_f64().unwrap())
    };
    let (ok, e, full) = run(&[], "full");
    assert!(ok, "{e}");
    let (ok, e, part) = run(&["--layer-range", "10", "12"], "part");
    assert!(ok, "{e}");
    let ((lf, pf), (lp, pp)) = (read(&full), read(&part));
    assert_eq!(lp, [10, 11, 12], "{lf:?}");
    assert_ne!(pf, pp);
    let (ok, e, _) = run(&["--layer-range", "0", "0"], "none");
    assert!(!ok && e.contains("has no layer in it"), "{e}");
}

/// `bench-train` names the training arithmetic it timed, and each mode runs.
#[test]
fn bench_train_names_its_arithmetic() {
    let d = tempfile::tempdir().unwrap();
    let data = small_data(d.path(), 4);
    for (mode, says) in [
        ("stored", "training stored (f32 products)"),
        ("fast", "training fast ("),
    ] {
        let o = bipo_env(
            &[
                "bench-train",
                "-m",
                &model(),
                "--data",
                data.to_str().unwrap(),
                "--layer",
                "27",
                "--steps",
                "1",
                "--no-reference",
                "--train-dtype",
                mode,
            ],
            &[],
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        assert!(out.contains(says), "{mode}: {out}");
        assert!(
            out.contains("bipo: prepare (blocks 0..=27"),
            "{mode}: {out}"
        );
    }
}
