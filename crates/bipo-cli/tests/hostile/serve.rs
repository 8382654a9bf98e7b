//! `bipo serve` refuses bad settings before it listens: missing or misfit vector files,
//! duplicate names, zero limits, a port already taken.

use crate::common;
use crate::support::*;

fn serve(extra: &[&str]) -> std::process::Output {
    let m = common::model();
    let mut a = vec!["serve", "-m", m.as_str(), "--port", "0"];
    a.extend_from_slice(extra);
    bipo(&a)
}

#[test]
fn serve_names_a_missing_or_misfit_vector_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    fails(
        &serve(&["--vector", &format!("x={}", s(&missing))]),
        2,
        &["nope.gguf"],
    );
    let wide = dir.path().join("wide.safetensors");
    flat_vector(&wide, 3, 100, 0.5);
    fails(
        &serve(&["--vector", &format!("w={}", s(&wide))]),
        2,
        &["vector `w`", "100"],
    );
    let h = happy(dir.path());
    let spec = format!("a={}", s(&h));
    fails(
        &serve(&["--vector", &spec, "--vector", &spec]),
        2,
        &["`a`", "twice"],
    );
}

#[test]
fn serve_refuses_zero_limits_and_a_taken_port() {
    fails(&serve(&["--max-batch", "0"]), 2, &["--max-batch 0"]);
    fails(
        &serve(&["--max-multiplier", "nan"]),
        2,
        &["--max-multiplier"],
    );
    fails(&serve(&["--api-key", ""]), 2, &["--api-key"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let m = common::model();
    let o = bipo(&["serve", "-m", m.as_str(), "--port", &port]);
    fails(&o, 2, &[&format!("127.0.0.1:{port}"), "in use"]);
}
