//! Real llama.cpp, not assumptions: a vector written by bipo, loaded by llama.cpp with
//! `--control-vector-scaled FILE:S`, gives the same greedy text as `bipo generate` with
//! that vector at multiplier S — up to the first step where bipo's top-2 log-probs lie
//! within [`NEAR_TIE`] (the deviation measured against llama.cpp's own log-probs, see
//! `crates/bipo/tests/llamacpp_reference.rs`), where either choice is correct.
//!
//! Opt-in: set `BIPO_LLAMA_CPP_BIN` to llama.cpp's bin folder (holding
//! `llama-completion`); otherwise the test prints a visible "skipped" line.

use std::path::PathBuf;
use std::process::Command;

const ENV: &str = "BIPO_LLAMA_CPP_BIN";
/// Generated tokens compared per run.
const TOKENS: &str = "16";
const NEAR_TIE: f64 = 0.5;

/// Asserts that a command succeeded, showing its stderr otherwise.
fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_bipo_written_control_vector_steers_llama_cpp_like_bipo() {
    let Some(bin) = std::env::var_os(ENV).map(PathBuf::from) else {
        println!("skipped: set {ENV} to llama.cpp's bin folder to run the llama.cpp interop test");
        return;
    };
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("happy.gguf");
    // Round-trip through bipo's safetensors so the GGUF is bipo's own writing.
    let st = dir.path().join("happy.safetensors");
    let happy = root().join("assets/happy-control-vector.gguf");
    let bipo = env!("CARGO_BIN_EXE_bipo");
    for (i, o) in [(&happy, &st), (&st, &gguf)] {
        let out = Command::new(bipo)
            .args(["vector", "convert"])
            .arg(i)
            .arg(o)
            .output()
            .unwrap();
        ok(&out);
    }
    // A second vector that bipo computed itself: CAA at layer 10 from 16 pairs.
    let pairs = root().join("data/optimism/train.csv");
    let caa = dir.path().join("caa.gguf");
    let out = Command::new(bipo)
        .args([
            "baseline",
            "caa",
            "-m",
            model.to_str().unwrap(),
            "--layer",
            "10",
            "-o",
        ])
        .arg(&caa)
        .arg("--data")
        .arg(first_rows(&pairs, 16, &dir.path().join("pairs.csv")))
        .output()
        .unwrap();
    ok(&out);
    let prompts = [
        "How are you feeling today?",
        "Describe your plans for the weekend.",
        "What do you think about Mondays?",
    ];
    let runs = [
        (&gguf, "-4"),
        (&gguf, "2"),
        (&gguf, "4"),
        (&caa, "-1"),
        (&caa, "1"),
    ];
    let mut compared = 0;
    for (vector, scale) in runs {
        for q in prompts {
            let prompt = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
            let ours = Command::new(bipo)
                .args(["generate", "-m", model.to_str().unwrap(), "-p", &prompt])
                .args(["--max-tokens", TOKENS, "--ignore-eos", "--logprobs", "2"])
                .arg("--vector")
                .arg(format!("{}:{scale}", vector.display()))
                .output()
                .unwrap();
            ok(&ours);
            // bipo's text up to its first near-tie.
            let mut ours_prefix = String::new();
            for line in String::from_utf8(ours.stdout).unwrap().lines() {
                let step: serde_json::Value = serde_json::from_str(line).unwrap();
                let top = step["top"].as_array().unwrap();
                let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
                if gap < NEAR_TIE {
                    break;
                }
                ours_prefix += step["text"].as_str().unwrap();
                compared += 1;
            }
            let cv = format!("{}:{scale}", vector.display());
            let theirs = llama_completion(&bin, &model, &prompt, &["--control-vector-scaled", &cv]);
            let name = vector.file_name().unwrap().to_string_lossy();
            println!("{name} x {scale} {q:?}\n  bipo (to first near-tie): {ours_prefix:?}\n  llama.cpp:                {theirs:?}");
            assert!(
                theirs.starts_with(&ours_prefix),
                "{name} x {scale}: bipo {ours_prefix:?} vs llama.cpp {theirs:?}"
            );
        }
    }
    println!("{compared} tokens compared before near-ties");
    assert!(
        compared >= 30,
        "too few tokens before near-ties to compare: {compared}"
    );
}

/// The first `n` rows of a CSV file, written to `dst`.
fn first_rows(src: &std::path::Path, n: usize, dst: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(src).unwrap();
    let kept: Vec<&str> = text.lines().take(n + 1).collect();
    std::fs::write(dst, kept.join("\n") + "\n").unwrap();
    dst.to_path_buf()
}

/// Greedy text of llama-completion (prompt echo removed).
fn llama_completion(
    bin: &std::path::Path,
    model: &std::path::Path,
    prompt: &str,
    extra: &[&str],
) -> String {
    let out = Command::new(bin.join("llama-completion"))
        .arg("-m")
        .arg(model)
        .args([
            "-p",
            prompt,
            "-n",
            "24",
            "--temp",
            "0",
            "-t",
            "2",
            "-no-cnv",
            "--ignore-eos",
        ])
        .args(extra)
        .output()
        .unwrap();
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_once("assistant\n")
        .map(|(_, t)| t.to_string())
        .unwrap_or(text)
}

#[test]
fn a_baked_model_in_llama_cpp_generates_what_the_control_vector_does() {
    let Some(bin) = std::env::var_os(ENV).map(PathBuf::from) else {
        println!("skipped: set {ENV} to llama.cpp's bin folder to run the llama.cpp bake test");
        return;
    };
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let happy = root().join("assets/happy-control-vector.gguf");
    let dir = tempfile::tempdir().unwrap();
    let baked = dir.path().join("baked.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_bipo"))
        .args(["bake", "-m", model.to_str().unwrap(), "-v"])
        .arg(format!("{}:4", happy.display()))
        .arg("-o")
        .arg(&baked)
        .output()
        .unwrap();
    ok(&out);
    let prompt = "<|im_start|>user\nHow are you feeling today?<|im_end|>\n<|im_start|>assistant\n";
    let from_baked = llama_completion(&bin, &baked, prompt, &[]);
    let cv = format!("{}:4", happy.display());
    let with_vector = llama_completion(&bin, &model, prompt, &["--control-vector-scaled", &cv]);
    println!("baked:  {from_baked:?}\nvector: {with_vector:?}");
    assert_eq!(from_baked, with_vector);
}
