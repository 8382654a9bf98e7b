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

#[test]
fn calibration_scores_the_datas_own_answers_against_another_questions_examples() {
    use bipo::eval::open_ended::{calibrate, Question};
    // A judge that reads the answer under test: "seek" scores 4, "avoid" 1, else 2.
    let srv = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", srv.server_addr().to_ip().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut req in srv.incoming_requests() {
            let mut b = String::new();
            req.as_reader().read_to_string(&mut b).unwrap();
            let body: serde_json::Value = serde_json::from_str(&b).unwrap();
            let user = body["messages"][1]["content"].as_str().unwrap().to_string();
            let answer = user.split("Answer to score:\n").nth(1).unwrap().to_string();
            let score = if answer.starts_with("seek") {
                "4"
            } else if answer.starts_with("avoid") {
                "1"
            } else {
                "2"
            };
            log.lock().unwrap().push(user);
            req.respond(tiny_http::Response::from_string(completion(score)))
                .unwrap();
        }
    });
    let q = |i: usize, m: &str, o: &str| Question {
        question: format!("Q{i}?"),
        matching: m.into(),
        opposite: o.into(),
    };
    let qs = [
        q(0, "seek 0", "avoid 0"),
        q(1, "seek 1", "avoid 1"),
        q(2, "unclear 2", "unclear 2b"),
        q(3, "avoid 3", "seek 3"),
    ];
    let judge = Judge::new(JudgeConfig::new(&url, "m"));
    let mut calls = 0;
    let c = calibrate(&judge, "power-seeking", &qs, |_, _| calls += 1)
        .unwrap()
        .unwrap();
    assert_eq!((c.questions, c.unparsed, calls), (4, 0, 4));
    assert_eq!((c.ordered, c.tied), (0.5, 0.25));
    assert_eq!(c.matching_mean, (4.0 + 4.0 + 2.0 + 1.0) / 4.0);
    assert_eq!(c.opposite_mean, (1.0 + 1.0 + 2.0 + 4.0) / 4.0);
    // Question 0's answers were shown with question 1's examples, never their own.
    let prompts = seen.lock().unwrap();
    assert_eq!(prompts.len(), 8);
    assert!(prompts[0].contains("Question:\nQ0?") && prompts[0].contains("scores 4:\nseek 1"));
    assert!(prompts[7].contains("Question:\nQ3?") && prompts[7].contains("scores 4:\nseek 0"));
    // One question is not enough to borrow examples from.
    assert!(calibrate(&judge, "x", &qs[..1], |_, _| ())
        .unwrap()
        .is_none());
}

#[test]
fn the_judge_table_lists_vectors_in_report_order_and_multipliers_numerically() {
    let j = serde_json::json!({
        "model": "qwen",
        "mean_score": {
            "caa": {"-1": 1.5, "0": 2.0, "1": 3.25, "10": 4.0},
            "bipo": {"-1": 1.0, "1": 3.5},
            "prompting": {"0": 2.0},
        },
        "score_stderr": {"caa": {"-1": 0.25}},
        "answered": {
            "mean_score": {"bipo": {"-1": 3.0}},
            "score_stderr": {"bipo": {"-1": 0.5}},
            "answers": {"bipo": {"-1": 4.0}},
        },
        "calibration": {"questions": 20, "matching_mean": 3.6, "opposite_mean": 1.2,
                        "ordered": 0.9, "tied": 0.05, "unparsed": 0},
    });
    let md = bipo::eval::open_ended::judge_markdown(&j, &["bipo", "caa"]);
    assert!(md.contains("judge: qwen"), "{md}");
    assert!(md.contains("| vector | x-1 | x0 | x1 | x10 |"), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows[1], "| bipo | 1.00 | - | 3.50 | - |");
    assert_eq!(rows[2], "| caa | 1.50 ± 0.25 | 2.00 | 3.25 | 4.00 |");
    assert_eq!(rows[3], "| prompting | - | 2.00 | - | - |");
    assert_eq!(rows[4], "| vector | x-1 |", "the answered table: {md}");
    assert_eq!(rows[5], "| bipo | 3.00 ± 0.50 [4] |");
    assert!(md.contains("(20 questions): matching 3.60, opposite 1.20; matching scored higher on 90%, tied on 5%."), "{md}");
}

#[test]
fn score_means_and_standard_errors_group_by_vector_and_multiplier() {
    use bipo::eval::open_ended::{score_stderr, score_summary, Answer};
    let a = |v: &str, k: f32, s: Option<u8>| Answer {
        vector: v.into(),
        multiplier: k,
        question: "Q?".into(),
        answer: "A.".into(),
        score: s,
        judge_reply: None,
        refusal: None,
    };
    let mut xs = [
        a("bipo", 1.0, Some(4)),
        a("bipo", 1.0, Some(2)),
        a("bipo", 1.0, None),
        a("bipo", -1.0, Some(1)),
    ];
    let (m, e) = (score_summary(&xs), score_stderr(&xs));
    assert_eq!(m["bipo"]["1"], 3.0);
    assert_eq!(m["bipo"]["-1"], 1.0);
    // Scores 4 and 2: sample std sqrt(2), over sqrt(2) -> 1; one score -> 0.
    assert!((e["bipo"]["1"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(e["bipo"]["-1"], 0.0);
    // Refusals counted: the answered summary leaves them (and uncounted answers) out.
    xs[1].refusal = Some(true);
    xs[0].refusal = Some(false);
    xs[3].refusal = Some(true);
    let s = bipo::eval::open_ended::score_summary_answered(&xs);
    assert_eq!(s["mean_score"]["bipo"]["1"], 4.0);
    assert_eq!(s["answers"]["bipo"]["1"], 1.0);
    assert!(s["mean_score"]["bipo"].get("-1").is_none());
}
