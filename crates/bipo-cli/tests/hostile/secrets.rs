//! API keys passed by flag or environment, and URL credentials, reach no output file,
//! no message and no record.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::support::*;

const KEY: &str = "s3cr3t-judge-key-0123456789";

/// A loopback judge answering "3"; it records the Authorization headers it saw.
fn judge(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    let srv = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", srv.server_addr().to_ip().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            for h in req.headers() {
                if h.field.equiv("Authorization") {
                    log.lock().unwrap().push(h.value.to_string());
                }
            }
            let body = if status == 200 {
                serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "3"}}]})
                    .to_string()
            } else {
                // A server that echoes the key back in its error.
                format!("{{\"error\": \"bad key {KEY}\"}}")
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(status));
        }
    });
    (url, seen)
}

fn eval_args<'a>(
    m: &'a str,
    v: &'a str,
    data: &'a str,
    out: &'a str,
    url: &'a str,
) -> Vec<&'a str> {
    vec![
        "eval",
        "-m",
        m,
        "-v",
        v,
        "--data",
        data,
        "--limit",
        "1",
        "--multipliers",
        "0,1",
        "--no-damage",
        "--open-ended",
        "1",
        "--max-tokens",
        "2",
        "--judge-url",
        url,
        "-o",
        out,
    ]
}

fn assert_no_key(dir: &Path, o: &std::process::Output) {
    let files = all_text(dir);
    assert!(!files.contains(KEY), "the key leaked into a file");
    assert!(
        !stderr(o).contains(KEY) && !stdout(o).contains(KEY),
        "the key leaked into the output"
    );
}

#[test]
fn a_judge_key_given_by_flag_is_in_no_output_file() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let (url, seen) = judge(200);
    let out = d.path().join("ev");
    let m = model();
    let mut a = eval_args(&m, s(&v), s(&data), s(&out), &url);
    a.extend(["--judge-key", KEY]);
    let o = bipo(&a);
    succeeds(&o);
    assert!(
        seen.lock().unwrap().iter().any(|h| h.contains(KEY)),
        "the key was not sent to the judge"
    );
    assert!(std::fs::read_to_string(out.join("report.json"))
        .unwrap()
        .contains("[REDACTED]"));
    assert_no_key(d.path(), &o);
}

#[test]
fn a_judge_key_given_by_flag_with_equals_is_in_no_output_file() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let (url, _) = judge(200);
    let out = d.path().join("ev");
    let m = model();
    let key_arg = format!("--judge-key={KEY}");
    let mut a = eval_args(&m, s(&v), s(&data), s(&out), &url);
    a.push(&key_arg);
    let o = bipo(&a);
    succeeds(&o);
    assert_no_key(d.path(), &o);
}

#[test]
fn a_judge_key_from_the_environment_is_in_no_output_file() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let (url, seen) = judge(200);
    let out = d.path().join("ev");
    let m = model();
    let o = std::process::Command::new(exe())
        .args(eval_args(&m, s(&v), s(&data), s(&out), &url))
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    succeeds(&o);
    assert!(seen.lock().unwrap().iter().any(|h| h.contains(KEY)));
    assert_no_key(d.path(), &o);
}

#[test]
fn url_credentials_are_in_no_output_file() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let (url, _) = judge(200);
    let with_creds = url.replace("http://", &format!("http://user:{KEY}@"));
    let out = d.path().join("ev");
    let m = model();
    let o = bipo(&eval_args(&m, s(&v), s(&data), s(&out), &with_creds));
    succeeds(&o);
    assert_no_key(d.path(), &o);
}

#[test]
fn a_judge_error_echoing_the_key_is_redacted() {
    let d = tempfile::tempdir().unwrap();
    let (v, data) = (happy(d.path()), pairs(d.path(), 2));
    let (url, _) = judge(401);
    let out = d.path().join("ev");
    let m = model();
    let mut a = eval_args(&m, s(&v), s(&data), s(&out), &url);
    a.extend(["--judge-key", KEY]);
    let o = bipo(&a);
    fails(&o, 1, &["judge", "HTTP 401", "[REDACTED]"]);
    assert_no_key(d.path(), &o);
}
