//! Numeric flags out of range, absurd multipliers, and NaN/inf arising inside the
//! forward pass: refused up front or stopped with a clear error, never reported as
//! results.

use crate::support::*;

fn gen(args: &[&str]) -> std::process::Output {
    let m = model();
    let mut a = vec!["generate", "-m", m.as_str(), "-p", "Hello"];
    a.extend_from_slice(args);
    bipo(&a)
}

#[test]
fn an_absurd_multiplier_is_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    fails(
        &gen(&["-v", &format!("{}:1e20", s(&v))]),
        2,
        &["invalid multiplier", "1e20"],
    );
}

#[test]
fn a_nan_multiplier_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    fails(
        &gen(&["-v", &format!("{}:NaN", s(&v))]),
        2,
        &["invalid multiplier"],
    );
}

#[test]
fn eval_multipliers_beyond_the_bound_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let out = d.path().join("ev");
    fails(
        &bipo(&[
            "eval",
            "-m",
            &model(),
            "-v",
            s(&v),
            "--data",
            s(&data),
            "--multipliers",
            "0,1e30",
            "-o",
            s(&out),
        ]),
        2,
        &["--multipliers", "invalid multiplier"],
    );
    assert!(!out.join("report.json").exists());
}

#[test]
fn vector_scale_by_infinity_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    let out = d.path().join("x.gguf");
    fails(
        &bipo(&["vector", "scale", s(&v), "inf", s(&out)]),
        2,
        &["vector scale K"],
    );
    assert!(!out.exists());
}

#[test]
fn activations_overflowing_inside_the_forward_pass_stop_generation() {
    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("huge.safetensors");
    flat_vector(&v, 10, 576, 3e38);
    fails(&gen(&["-v", s(&v)]), 2, &["non-finite", "residual stream"]);
}

#[test]
fn activations_overflowing_inside_eval_stop_the_report() {
    let d = tempfile::tempdir().unwrap();
    let v = d.path().join("huge.safetensors");
    flat_vector(&v, 10, 576, 1e30);
    let data = pairs(d.path(), 2);
    let out = d.path().join("ev");
    fails(
        &bipo(&[
            "eval",
            "-m",
            &model(),
            "-v",
            s(&v),
            "--data",
            s(&data),
            "--multipliers",
            "0,1",
            "--no-damage",
            "--open-ended",
            "0",
            "-o",
            s(&out),
        ]),
        2,
        &["non-finite"],
    );
    assert!(!out.join("report.json").exists(), "no report from garbage");
}

#[test]
fn max_tokens_zero_is_refused() {
    fails(&gen(&["--max-tokens", "0"]), 2, &["--max-tokens 0"]);
}

#[test]
fn top_p_above_one_is_refused() {
    fails(
        &gen(&["--top-p", "2", "--temperature", "1"]),
        2,
        &["top-p", "2"],
    );
}

#[test]
fn a_huge_logprobs_count_is_refused() {
    fails(&gen(&["--logprobs", "1000000"]), 2, &["--logprobs 1000000"]);
}

#[test]
fn zero_threads_is_refused() {
    fails(&gen(&["--threads", "0"]), 2, &["--threads", "must be >= 1"]);
}

#[test]
fn a_zero_repetition_penalty_is_refused() {
    fails(
        &gen(&["--repetition-penalty", "0"]),
        2,
        &["repetition penalty"],
    );
}

#[test]
fn bench_with_zero_repeats_is_refused() {
    fails(
        &bipo(&["bench", "-m", &model(), "--repeats", "0"]),
        2,
        &["--repeats", "must be >= 1"],
    );
}

#[test]
fn eval_batch_zero_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    fails(
        &bipo(&[
            "eval",
            "-m",
            &model(),
            "-v",
            s(&v),
            "--data",
            s(&data),
            "--batch",
            "0",
            "-o",
            s(&d.path().join("e")),
        ]),
        2,
        &["--batch 0"],
    );
}

#[test]
fn eval_refusal_needs_answers_and_a_readable_strings_file() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let out = d.path().join("e");
    let run = |extra: &[&str]| {
        let m = model();
        let mut a = vec!["eval", "-m", m.as_str(), "-v", s(&v), "--data", s(&data)];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["-o", s(&out)]);
        bipo(&a)
    };
    fails(
        &run(&["--refusal", "--open-ended", "0"]),
        2,
        &["--open-ended 0", "--refusal"],
    );
    let missing = d.path().join("no-such-strings.txt");
    fails(
        &run(&["--refusal-strings", s(&missing)]),
        2,
        &["--refusal-strings", "no-such-strings.txt"],
    );
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "\n \n").unwrap();
    fails(
        &run(&["--refusal-strings", s(&empty)]),
        2,
        &["empty.txt", "no refusal strings"],
    );
    assert!(!out.join("report.json").exists());
}

#[test]
fn sweep_multiplier_zero_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = pairs(d.path(), 2);
    fails(
        &bipo(&[
            "sweep-layers",
            "-m",
            &model(),
            "--train",
            s(&data),
            "--data",
            s(&data),
            "--multiplier",
            "0",
            "-o",
            s(&d.path().join("s")),
        ]),
        2,
        &["--multiplier 0"],
    );
}

/// Training flags: each bad value is named.
fn train_fails(extra: &[&str], needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let data = pairs(d.path(), 2);
    let out = d.path().join("run");
    let m = model();
    let mut a = vec!["train", "-m", m.as_str(), "--data", s(&data), "-o", s(&out)];
    a.extend_from_slice(extra);
    fails(&bipo(&a), 2, needles);
    assert!(
        !out.join("vector.safetensors").exists(),
        "no vector from a refused run"
    );
}

#[test]
fn max_steps_zero_writes_no_zero_vector() {
    train_fails(&["--max-steps", "0"], &["max_steps", "0"]);
}

#[test]
fn zero_epochs_is_named() {
    train_fails(&["--epochs", "0"], &["epochs"]);
}

#[test]
fn zero_batch_size_is_named() {
    train_fails(&["--batch-size", "0"], &["batch_size"]);
}

#[test]
fn a_nan_learning_rate_is_named() {
    train_fails(&["--lr", "NaN"], &["lr", "NaN"]);
}

#[test]
fn a_negative_beta_is_named() {
    train_fails(&["--beta=-1"], &["beta", "-1"]);
}

#[test]
fn a_layer_beyond_the_model_is_named() {
    train_fails(&["--layer", "99"], &["--layer 99", "30 layers"]);
}

#[test]
fn an_absurd_cache_size_is_named() {
    train_fails(&["--cache-mb", "18446744073709551615"], &["cache_mb"]);
}
