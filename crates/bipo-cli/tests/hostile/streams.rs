//! Standard output closed or full, and interactive sessions that must survive bad lines.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn a_closed_pipe_ends_quietly() {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    // `bipo vector info FILE | head -1`: the reader is gone after one line.
    let mut child = Command::new(exe())
        .args(["vector", "info", s(&v)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the read end before bipo writes
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn a_closed_pipe_during_generation_ends_quietly() {
    let mut child = Command::new(exe())
        .args([
            "generate",
            "-m",
            &model(),
            "-p",
            "Once upon a time",
            "--max-tokens",
            "8",
            "--logprobs",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

fn to_dev_full(args: &[&str]) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(exe())
        .args(args)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_on_stdout_is_one_line() {
    fails(
        &to_dev_full(&["inspect", "-m", &model()]),
        1,
        &["writing to standard output", "no space left"],
    );
}

#[test]
fn a_full_disk_while_generating_is_one_line() {
    fails(
        &to_dev_full(&["generate", "-m", &model(), "-p", "Hi", "--max-tokens", "3"]),
        1,
        &["standard output", "no space left"],
    );
}

#[test]
fn an_over_long_chat_line_is_reported_and_the_chat_goes_on() {
    // 12,000 words exceed SmolLM2's 8,192-token context; the next line is answered.
    let long = "word ".repeat(12_000);
    let input = format!("{long}\nSay hi.\n/quit\n");
    let o = bipo_stdin(
        &["chat", "-m", &model(), "--max-tokens", "3"],
        input.as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("error:") && e.contains("context"), "{e}");
    assert!(
        !stdout(&o).trim().is_empty(),
        "the second line got no answer"
    );
}

#[test]
fn a_non_utf8_chat_line_is_skipped_and_the_chat_goes_on() {
    let mut input = b"\xff\xfe bad bytes\n".to_vec();
    input.extend_from_slice(b"Say hi.\n/quit\n");
    let o = bipo_stdin(&["chat", "-m", &model(), "--max-tokens", "3"], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not UTF-8"), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn an_absurd_chat_multiplier_is_refused_and_the_chat_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let v = happy(d.path());
    let o = bipo_stdin(
        &["chat", "-m", &model(), "-v", s(&v), "--max-tokens", "3"],
        b"/m 1e30\nHi\n/quit\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid multiplier"), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}
