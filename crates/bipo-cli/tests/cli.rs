//! The `bipo` binary end to end: output on the default model, and one clear error line
//! with a non-zero exit code for bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{bipo, model, root};

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor};

fn happy() -> String {
    root()
        .join("../shared/reference/smollm2-135m-instruct-q4_1/happy-control-vector.gguf")
        .to_string_lossy()
        .into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a control-vector GGUF with the given layers and width.
fn write_control_vector(path: &Path, layers: &[usize], width: usize) {
    let tensors: Vec<(String, QTensor)> = layers
        .iter()
        .map(|&l| {
            let t = Tensor::from_vec(vec![0.5f32; width], width, &Device::Cpu).unwrap();
            (
                format!("direction.{l}"),
                QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let arch = gguf_file::Value::String("controlvector".into());
    let meta = [("general.architecture", &arch)];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &refs).unwrap();
}

fn assert_clear_error(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got success");
    let e = stderr(o);
    assert!(e.starts_with("error: "), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line expected: {e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
}

#[test]
fn a_missing_model_file_is_one_clear_error() {
    let o = bipo(&["inspect", "--model", "no/such/model.gguf"]);
    assert_clear_error(&o, &["no/such/model.gguf"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_file_that_is_not_a_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    let o = bipo(&["inspect", "--model", p.to_str().unwrap()]);
    assert_clear_error(&o, &["notes.txt", "not a GGUF"]);
}

#[test]
fn a_control_vector_passed_as_model_says_so() {
    let o = bipo(&["inspect", "--model", &happy()]);
    assert_clear_error(&o, &["control vector", "--vector"]);
}

#[test]
fn a_vector_of_the_wrong_width_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("narrow.gguf");
    write_control_vector(&p, &[3], 100);
    let o = bipo(&[
        "generate",
        "-m",
        &model(),
        "-p",
        "Hi",
        "--vector",
        p.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["narrow", "width 100", "576"]);
}

#[test]
fn a_vector_layer_beyond_the_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("deep.gguf");
    write_control_vector(&p, &[3, 30], 576);
    let o = bipo(&[
        "generate",
        "-m",
        &model(),
        "-p",
        "Hi",
        "--vector",
        p.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["deep", "layer 30", "30 layers"]);
}

#[test]
fn a_negative_temperature_is_refused_before_loading() {
    let o = bipo(&["generate", "-m", &model(), "-p", "Hi", "--temperature=-1"]);
    assert_clear_error(&o, &["temperature"]);
}

#[test]
fn inspect_reports_the_default_models_shape() {
    let o = bipo(&["inspect", "--model", &model()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        "layers:        30",
        "hidden size:   576",
        "9 query, 3 key/value",
        "vocabulary:    49152",
    ] {
        assert!(out.contains(line), "`{line}` not in:\n{out}");
    }
}

#[test]
fn generate_with_multiplier_zero_prints_the_unsteered_text_and_steering_changes_it() {
    let m = model();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "-m",
            m.as_str(),
            "-p",
            "I feel",
            "--max-tokens",
            "12",
            "--ignore-eos",
        ];
        a.extend_from_slice(extra);
        let o = bipo(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let hv0 = format!("{}:0", happy());
    let hv4 = format!("{}:4", happy());
    let plain = run(&[]);
    assert_eq!(plain, run(&["--vector", &hv0]));
    assert_ne!(plain, run(&["--vector", &hv4]));
}

#[test]
fn logprobs_mode_prints_one_json_object_per_token() {
    let o = bipo(&[
        "generate",
        "-m",
        &model(),
        "-p",
        "The capital of France is",
        "--max-tokens",
        "3",
        "--logprobs",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], 7042);
    assert_eq!(lines[0]["text"], " Paris");
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 2);
    assert!(lines[0]["logprob"].as_f64().unwrap() < 0.0);
}

#[test]
fn the_happy_vector_round_trips_through_gguf_and_safetensors_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (st, gg) = (dir.path().join("h.safetensors"), dir.path().join("h.gguf"));
    let ok = |o: Output| assert!(o.status.success(), "{}", stderr(&o));
    ok(bipo(&["vector", "convert", &happy(), st.to_str().unwrap()]));
    ok(bipo(&[
        "vector",
        "convert",
        st.to_str().unwrap(),
        gg.to_str().unwrap(),
    ]));
    let orig = bipo::io::read_vector(Path::new(&happy())).unwrap();
    for p in [&st, &gg] {
        assert_eq!(
            bipo::io::read_vector(p).unwrap().layers,
            orig.layers,
            "{}",
            p.display()
        );
    }
    // Metadata survives GGUF too (bipo.* keys), and the tensors are llama.cpp's.
    assert_eq!(
        bipo::io::read_vector(&gg).unwrap().meta,
        bipo::io::read_vector(&st).unwrap().meta
    );
}

#[test]
fn combine_scale_and_compare_agree_with_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    let (two, sum) = (
        dir.path().join("two.safetensors"),
        dir.path().join("sum.gguf"),
    );
    assert!(
        bipo(&["vector", "scale", &happy(), "-2", two.to_str().unwrap()])
            .status
            .success()
    );
    let spec = format!("{}:3", happy());
    let o = bipo(&[
        "vector",
        "combine",
        "-o",
        sum.to_str().unwrap(),
        &spec,
        two.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (h, s) = (
        bipo::io::read_vector(Path::new(&happy())).unwrap(),
        bipo::io::read_vector(&sum).unwrap(),
    );
    for (l, d) in &h.layers {
        for (a, b) in d.iter().zip(&s.layers[l]) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "layer {l}: 3h - 2h = {b}, h = {a}"
            );
        }
    }
    let o = bipo(&["vector", "compare", &happy(), two.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1:-1.000"), "{out}");
}

#[test]
fn a_vector_steering_block_zero_is_not_written_as_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.gguf");
    write_control_vector(&p, &[0, 3], 576);
    let out = dir.path().join("out.gguf");
    let o = bipo(&[
        "vector",
        "convert",
        p.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["direction.0"]);
    assert!(!out.exists(), "nothing half-written");
}

#[test]
fn a_paper_pt_vector_converts_once_its_layer_is_named() {
    let pt = root().join("crates/bipo/tests/fixtures/arange8.pt");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.safetensors");
    let o = bipo(&[
        "vector",
        "convert",
        pt.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["--layer"]);
    let o = bipo(&[
        "vector",
        "convert",
        pt.to_str().unwrap(),
        out.to_str().unwrap(),
        "--layer",
        "15",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = bipo::io::read_vector(&out).unwrap();
    assert_eq!(v.layers.keys().copied().collect::<Vec<_>>(), vec![15]);
    assert_eq!(v.layers[&15][2], 0.0);
}

#[test]
fn a_baked_model_generates_what_the_vector_does() {
    let dir = tempfile::tempdir().unwrap();
    let baked = dir.path().join("baked.gguf");
    let spec = format!("{}:4", happy());
    let o = bipo(&[
        "bake",
        "-m",
        &model(),
        "-v",
        &spec,
        "-o",
        baked.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Per generated token: (id, [(id, logprob)] top 5).
    let run = |m: &str, prompt: &str, extra: &[&str]| -> Vec<(u64, Vec<(u64, f64)>)> {
        let mut a = vec![
            "generate",
            "-m",
            m,
            "-p",
            prompt,
            "--max-tokens",
            "12",
            "--ignore-eos",
            "--logprobs",
            "5",
        ];
        a.extend_from_slice(extra);
        let o = bipo(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let top = v["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                    .collect();
                (v["id"].as_u64().unwrap(), top)
            })
            .collect()
    };
    // The bias is added before the residual add, steering after it: the same sum in
    // another order. With 8-bit activations and this strong vector (x4), a rounding
    // difference can move a log-probability by a tenth or more: two builds that differ
    // only in f32 summation order inside attention (online vs two-pass softmax) gave
    // top-5 log-probs 0.156 apart on "The capital of France is" (2026-11-29). So: the
    // first step's top-5 agree within TOL, the tokens agree until the first near-tie
    // (top-2 within TOL), and steering changes the tokens.
    const TOL: f64 = 0.25;
    let mut compared = 0;
    for prompt in [
        "I feel",
        "The capital of France is",
        "Once upon a time",
        "My favourite food is",
    ] {
        let steered = run(&model(), prompt, &["--vector", &spec]);
        let from_bake = run(baked.to_str().unwrap(), prompt, &[]);
        let (a, b) = (&steered[0].1, &from_bake[0].1);
        let shared: Vec<(f64, f64)> = a
            .iter()
            .filter_map(|(i, la)| b.iter().find(|(j, _)| j == i).map(|(_, lb)| (*la, *lb)))
            .collect();
        assert!(shared.len() >= 4, "{prompt}: {a:?} vs {b:?}");
        assert!(
            shared.iter().all(|(x, y)| (x - y).abs() < TOL),
            "{prompt}: {shared:?}"
        );
        for ((ta, top), (tb, _)) in steered.iter().zip(&from_bake) {
            if top[0].1 - top[1].1 < TOL {
                break;
            }
            assert_eq!(ta, tb, "{prompt}");
            compared += 1;
        }
        assert_ne!(
            run(&model(), prompt, &[])
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>(),
            steered.iter().map(|t| t.0).collect::<Vec<_>>(),
            "{prompt}: the vector changes nothing"
        );
    }
    assert!(compared >= 6, "only {compared} tokens before near-ties");
}

#[test]
fn baking_refuses_non_llama_files_and_wrong_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let o = bipo(&[
        "bake",
        "-m",
        &happy(),
        "-v",
        &happy(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["controlvector", "llama"]);
    let narrow = dir.path().join("narrow.gguf");
    write_control_vector(&narrow, &[3], 100);
    let o = bipo(&[
        "bake",
        "-m",
        &model(),
        "-v",
        narrow.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&o, &["width 100"]);
    assert!(!out.exists());
}
