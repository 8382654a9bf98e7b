//! Comparable strength and readable reports: `eval --match norm|kl` rescales vectors to
//! the first one's norm or damage, `vector normalize --to-residual` scales layers to the
//! model's residual stream, and report.md links only plots that exist, shows per-token
//! margins, the effect-vs-damage plot and the answers inline.

mod common;

use std::path::{Path, PathBuf};

use common::{bipo, model, root};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = bipo(args);
    assert!(
        o.status.success(),
        "bipo {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn test_pairs(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/optimism/test.csv")).unwrap();
    let p = dir.join("test.csv");
    let lines: Vec<&str> = text.lines().take(n + 1).collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

fn at(v: &serde_json::Value, metric: &str, m: f64) -> f64 {
    v[metric]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["multiplier"].as_f64() == Some(m))
        .and_then(|p| p["value"].as_f64())
        .unwrap_or_else(|| panic!("no {metric} at {m}"))
}

#[test]
fn eval_matches_vectors_in_norm_and_in_damage() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let big = d.path().join("big.safetensors");
    let rnd = d.path().join("rnd.safetensors");
    ok(&["vector", "scale", s(&happy), "3", s(&big)]);
    ok(&[
        "baseline",
        "random",
        "--like",
        s(&happy),
        "--seed",
        "1",
        "-o",
        s(&rnd),
    ]);
    let data = test_pairs(d.path(), 3);
    let run = |how: &str, out: &Path, damage: bool| {
        let (m, hv, bv, rv) = (
            model(),
            format!("{}:happy", s(&happy)),
            format!("{}:big", s(&big)),
            format!("{}:rnd", s(&rnd)),
        );
        let mut args = vec![
            "eval",
            "-m",
            &m,
            "-v",
            &hv,
            "-v",
            &bv,
            "-v",
            &rv,
            "--data",
            s(&data),
            "--multipliers",
            "0,1",
            "--open-ended",
            "0",
            "--match",
            how,
            "-o",
            s(out),
        ];
        if !damage {
            args.push("--no-damage");
        }
        ok(&args);
        report(out)
    };
    let norm = run("norm", &d.path().join("norm"), false);
    let vs = norm["vectors"].as_array().unwrap();
    assert_eq!(vs[0]["scale"].as_f64(), Some(1.0));
    let big_scale = vs[1]["scale"].as_f64().unwrap();
    assert!((big_scale - 1.0 / 3.0).abs() < 1e-6, "{big_scale}");
    // Matched in norm, 3 x happy measures as happy.
    let (m0, m1) = (
        at(&vs[0], "pref_margin", 1.0),
        at(&vs[1], "pref_margin", 1.0),
    );
    assert!((m0 - m1).abs() < 1e-3 * m0.abs().max(1.0), "{m0} vs {m1}");
    let total = |v: &serde_json::Value| {
        v["norms"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt()
    };
    assert!((total(&vs[2]) - total(&vs[0])).abs() < 1e-3 * total(&vs[0]));

    let kl = run("kl", &d.path().join("kl"), true);
    let vs = kl["vectors"].as_array().unwrap();
    let target = at(&vs[0], "kl", 1.0);
    assert!(target > 0.0);
    for v in &vs[1..] {
        let got = at(v, "kl", 1.0);
        assert!(
            (got - target).abs() < 5e-3 * target,
            "{}: KL {got} vs {target}",
            v["name"]
        );
    }
    assert!((vs[1]["scale"].as_f64().unwrap() - 1.0 / 3.0).abs() < 5e-3);
    // A random direction needs a different scale than happy for the same damage.
    assert!((vs[2]["scale"].as_f64().unwrap() - 1.0).abs() > 1e-3);
    let md = std::fs::read_to_string(d.path().join("kl/report.md")).unwrap();
    assert!(md.contains("matched scale"), "{md}");

    let o = bipo(&[
        "eval",
        "-m",
        &model(),
        "-v",
        s(&happy),
        "--data",
        s(&data),
        "--match",
        "damage",
        "-o",
        s(&d.path().join("x")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose none, norm or kl"));
}

#[test]
fn reports_link_only_written_plots_and_show_per_token_margins_and_answers() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let data = test_pairs(d.path(), 3);
    let out = d.path().join("ev");
    ok(&[
        "eval",
        "-m",
        &model(),
        "-v",
        s(&happy),
        "--data",
        s(&data),
        "--multipliers=-1,0,2",
        "--open-ended",
        "1",
        "--max-tokens",
        "5",
        "-o",
        s(&out),
    ]);
    let check = |md: &str| {
        let mut links = 0;
        for part in md.split("](").skip(1) {
            let target = &part[..part.find(')').unwrap()];
            if target.ends_with(".png") {
                links += 1;
                assert!(
                    out.join(target).is_file(),
                    "report.md links {target}, which was not written"
                );
            }
        }
        assert!(links >= 4, "{md}");
        assert!(md.contains("pref_margin_vs_kl.png") && md.contains("Effect against damage"));
        assert!(md.contains("margin per token"));
        assert!(
            md.contains("| vector | multiplier | question | answer |"),
            "{md}"
        );
    };
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    check(&md);
    // One question x three multipliers, answers inline.
    assert!(md.matches("| happy-control-vector | ").count() >= 3, "{md}");
    let r = report(&out);
    let v = &r["vectors"][0];
    let per_token = at(v, "pref_margin_per_token", 2.0) - at(v, "pref_margin_per_token", -1.0);
    assert!(per_token > 0.0, "happy raises the per-token margin");
    assert!(at(v, "pref_margin_per_token", 0.0).abs() < at(v, "pref_margin", 0.0).abs());
    // Re-rendering keeps the answers.
    std::fs::remove_file(out.join("report.md")).unwrap();
    ok(&["report", s(&out)]);
    check(&std::fs::read_to_string(out.join("report.md")).unwrap());
}

#[test]
fn vectors_normalize_to_a_fraction_of_the_residual_stream() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let (a, b) = (
        d.path().join("a.safetensors"),
        d.path().join("b.safetensors"),
    );
    let m = model();
    let notes = ok(&[
        "vector",
        "normalize",
        s(&happy),
        s(&a),
        "--to-residual",
        "0.2",
        "-m",
        &m,
    ]);
    assert!(notes.contains("residual norm"), "{notes}");
    ok(&[
        "vector",
        "normalize",
        s(&happy),
        s(&b),
        "--to-residual",
        "0.1",
        "-m",
        &m,
    ]);
    let (va, vb) = (
        bipo::io::read_vector(&a).unwrap(),
        bipo::io::read_vector(&b).unwrap(),
    );
    let (na, nb) = (va.norms(), vb.norms());
    for l in na.keys() {
        assert!((na[l] - 2.0 * nb[l]).abs() < 1e-4 * na[l], "layer {l}");
    }
    // Residual norms grow with depth: so do the layers' norms now.
    assert!(na[&25] > 1.5 * na[&2], "{} vs {}", na[&25], na[&2]);
    // The printed residual norm times the fraction is the layer's norm.
    let line = notes.lines().find(|l| l.starts_with("layer 10:")).unwrap();
    let res: f32 = line
        .split("residual norm ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((na[&10] - 0.2 * res).abs() < 1e-2 * na[&10], "{line}");
    let o = bipo(&[
        "vector",
        "normalize",
        s(&happy),
        s(&a),
        "--to-residual",
        "0.2",
    ]);
    assert_eq!(o.status.code(), Some(2), "needs -m");
    let o = bipo(&[
        "vector",
        "normalize",
        s(&happy),
        s(&a),
        "--norm",
        "2",
        "--to-residual",
        "0.2",
        "-m",
        &m,
    ]);
    assert_eq!(o.status.code(), Some(2), "one or the other");
    // The neutral text is an input too: writing the output over it is refused.
    let text = d.path().join("n.gguf");
    std::fs::write(&text, "Plain neutral text.\n\nA second paragraph of it.\n").unwrap();
    let o = bipo(&[
        "vector",
        "normalize",
        s(&happy),
        s(&text),
        "--to-residual",
        "0.2",
        "-m",
        &m,
        "--neutral",
        s(&text),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("n.gguf"));
    assert!(std::fs::read_to_string(&text)
        .unwrap()
        .starts_with("Plain neutral text."));
}

#[test]
fn combine_takes_out_like_every_other_command() {
    let d = tempfile::tempdir().unwrap();
    let happy = root().join("assets/happy-control-vector.gguf");
    let out = d.path().join("c.safetensors");
    ok(&[
        "vector",
        "combine",
        "--out",
        s(&out),
        &format!("{}:2", s(&happy)),
    ]);
    let (v, h) = (
        bipo::io::read_vector(&out).unwrap(),
        bipo::io::read_vector(&happy).unwrap(),
    );
    assert!((v.norms()[&10] - 2.0 * h.norms()[&10]).abs() < 1e-5);
}
