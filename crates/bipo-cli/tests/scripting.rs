//! `--verbose`: the model as loaded and the full settings, on standard error; it and
//! `--quiet` exclude each other.

mod common;

use common::{bipo, model, root};

#[test]
fn verbose_shows_the_model_and_the_settings() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("data/optimism/train.csv")).unwrap();
    let data = d.path().join("p.csv");
    std::fs::write(
        &data,
        text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let out = d.path().join("run");
    let o = bipo(&[
        "--verbose",
        "train",
        "-m",
        &model(),
        "--data",
        data.to_str().unwrap(),
        "--layer",
        "3",
        "--max-steps",
        "1",
        "--warmup-steps",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let model_line = err
        .lines()
        .find(|l| l.starts_with("[verbose] model "))
        .expect(&err);
    assert!(
        model_line.contains("30 layers, width 576") && model_line.contains("kernels"),
        "{model_line}"
    );
    let settings = err
        .lines()
        .find_map(|l| l.strip_prefix("[verbose] settings: "))
        .expect(&err);
    let cfg: serde_json::Value = serde_json::from_str(settings).unwrap();
    assert_eq!(cfg["layer"], 3);
    assert_eq!(cfg["max_steps"], 1);
    // Without the flag, none of it.
    let o = bipo(&["generate", "-m", &model(), "-p", "Hi", "--max-tokens", "1"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("[verbose]"));
    let o = bipo(&["-q", "--verbose", "generate", "-m", &model(), "-p", "Hi"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_prints_one_json_object() {
    let happy = root().join("assets/happy-control-vector.gguf");
    let o = bipo(&[
        "bench",
        "-m",
        &model(),
        "-v",
        &format!("{}:2", happy.display()),
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "2",
        "--repeats",
        "1",
        "--batch",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["gen_tokens"], 2);
    assert!(v["unsteered"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["steered"]["layers"], 29);
    assert_eq!(v["batched_decode_tok_s"][0]["sequences"], 2);
}
