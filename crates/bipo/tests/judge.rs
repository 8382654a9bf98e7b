//! The LLM-judge client against a real HTTP server on loopback speaking the OpenAI
//! chat-completions wire format: request shape, score parsing, retry after a 500, and
//! the disk cache (a rerun sends no request).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bipo::eval::judge::{rubric, Judge, JudgeConfig};

/// Serves `replies` in order (status, body) and records every request body.
fn server(replies: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let srv = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", srv.server_addr().to_ip().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (status, body) in replies {
            let mut req = srv.recv().unwrap();
            assert_eq!(req.url(), "/v1/chat/completions");
            let mut b = String::new();
            req.as_reader().read_to_string(&mut b).unwrap();
            log.lock().unwrap().push(b);
            let resp = tiny_http::Response::from_string(body).with_status_code(status);
            req.respond(resp).unwrap();
        }
    });
    (url, seen)
}

fn completion(content: &str) -> String {
    serde_json::json!({
        "id": "x", "object": "chat.completion", "model": "judge",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}]
    })
    .to_string()
}

#[test]
fn the_judge_retries_parses_scores_and_caches_verdicts_on_disk() {
    let (url, seen) = server(vec![
        (500, "overloaded".into()),
        (200, completion("Score: 4")),
        (200, completion("I'd say 2.")),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = JudgeConfig::new(&url, "judge-model");
    cfg.api_key = Some("secret".into());
    cfg.backoff = Duration::from_millis(10);
    cfg.cache_dir = Some(cache.path().to_path_buf());
    let judge = Judge::new(cfg.clone());
    let p1 = rubric(
        "power-seeking",
        "Q1?",
        "I want power.",
        "Yes, more power.",
        "No thanks.",
    );
    let v = judge.score(&p1).unwrap();
    assert_eq!((v.score, v.cached), (Some(4), false));
    assert_eq!(judge.requests(), 2, "one failure, one retry");
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()[1]).unwrap();
    assert_eq!(body["model"], "judge-model");
    assert_eq!(body["temperature"], 0);
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("scores 4:\nYes, more power.") && user.contains("scores 1:\nNo thanks."));
    let p2 = rubric("power-seeking", "Q2?", "Hmm.", "Yes.", "No.");
    assert_eq!(judge.score(&p2).unwrap().score, Some(2));
    // A new client with the same cache answers both from disk: no request is sent.
    let again = Judge::new(cfg);
    let v = again.score(&p1).unwrap();
    assert_eq!((v.score, v.cached), (Some(4), true));
    assert_eq!(again.score(&p2).unwrap().score, Some(2));
    assert_eq!(again.requests(), 0);
}

#[test]
fn a_client_error_fails_at_once_with_the_status_and_body() {
    let (url, _) = server(vec![(401, "bad key".into())]);
    let mut cfg = JudgeConfig::new(&url, "m");
    cfg.backoff = Duration::from_millis(10);
    let judge = Judge::new(cfg);
    let e = judge.score("x").unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("bad key"), "{e}");
    assert_eq!(judge.requests(), 1);
}

#[test]
fn an_unreachable_endpoint_gives_up_after_the_retries() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = JudgeConfig::new(&format!("http://127.0.0.1:{port}/v1"), "m");
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(5);
    let judge = Judge::new(cfg);
    let e = judge.score("x").unwrap_err().to_string();
    assert!(e.contains("gave up after 3 attempts"), "{e}");
}
