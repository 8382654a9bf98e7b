//! Training output folders: existing runs, locks, concurrent runs, resume with other
//! inputs or settings, and `kill -9` at random points followed by `--resume`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Arguments of a short run: layer 27 (two blocks after it), batch 1, 2 epochs (12
/// steps on 6 pairs), a checkpoint after every step.
fn train_args<'a>(m: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "-m",
        m,
        "--data",
        data,
        "-o",
        out,
        "--layer",
        "27",
        "--epochs",
        "2",
        "--batch-size",
        "1",
        "--warmup-steps",
        "2",
        "--lr",
        "0.01",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
    ]
}

fn setup(n: usize) -> (tempfile::TempDir, String, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let data = pairs(d.path(), n);
    (d, model(), data)
}

/// Step rows of metrics.jsonl, as step numbers, and whether every line is valid JSON.
fn step_rows(out: &Path) -> Vec<u64> {
    let text = std::fs::read(out.join("metrics.jsonl")).unwrap();
    assert!(!text.contains(&0u8), "NUL bytes in metrics.jsonl");
    String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a whole JSON line"))
        .filter(|v| v["type"] == "step")
        .map(|v| v["metrics"]["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_folder_holding_a_run_is_not_replaced_without_force() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let mut a = train_args(&m, s(&data), s(&out));
    a.extend(["--max-steps", "2"]);
    succeeds(&bipo(&a));
    let v = out.join("vector.safetensors");
    let before = Inputs::of(&[&v, &out.join("run.json"), &out.join("metrics.jsonl")]);
    fails(
        &bipo(&a),
        2,
        &["already holds a training run", "--resume", "--force"],
    );
    before.unchanged();
}

#[test]
fn force_replaces_a_run_and_leaves_none_of_its_epoch_files() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    std::fs::create_dir(&out).unwrap();
    for f in ["epoch-7.safetensors", "vector.safetensors", "run.json"] {
        std::fs::write(out.join(f), b"old").unwrap();
    }
    let mut a = train_args(&m, s(&data), s(&out));
    a.extend(["--max-steps", "1", "--force"]);
    succeeds(&bipo(&a));
    assert!(
        !out.join("epoch-7.safetensors").exists(),
        "an old epoch file survived --force"
    );
    assert_ne!(
        std::fs::read(out.join("vector.safetensors")).unwrap(),
        b"old"
    );
    no_leftovers(&out);
}

#[test]
fn a_locked_output_folder_is_refused() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let _held = bipo::util::fs::DirLock::acquire(&out).unwrap();
    fails(
        &bipo(&train_args(&m, s(&data), s(&out))),
        2,
        &["another bipo process", "run"],
    );
    assert!(!out.join("run.json").exists());
}

#[test]
fn two_runs_into_one_folder_at_once_one_wins_and_the_log_stays_whole() {
    let (d, m, data) = setup(3);
    let out = d.path().join("run");
    let args = train_args(&m, s(&data), s(&out));
    let spawn = || {
        Command::new(exe())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        ok,
        1,
        "exactly one run wins: {} | {}",
        stderr(&a),
        stderr(&b)
    );
    let loser = if a.status.success() { &b } else { &a };
    let e = stderr(loser);
    // It lost either the lock, or (started after the winner wrote its files) the
    // existing-run check; both name the folder.
    assert!(
        e.contains("another bipo process") || e.contains("already holds"),
        "{e}"
    );
    let steps = step_rows(&out);
    assert_eq!(steps, (0..steps.len() as u64).collect::<Vec<_>>());
}

#[test]
fn resume_with_other_data_is_refused_and_the_record_stays_true() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let mut a = train_args(&m, s(&data), s(&out));
    a.extend(["--max-steps", "2"]);
    succeeds(&bipo(&a));
    let other = d.path().join("other.csv");
    std::fs::write(&other, "question,matching,not_matching\nq,a,b\nq2,c,d\n").unwrap();
    let record = Inputs::of(&[&out.join("run.json"), &out.join("checkpoint.json")]);
    let mut r = train_args(&m, s(&other), s(&out));
    r.push("--resume");
    fails(&bipo(&r), 2, &["checkpoint.json", "--data", "sha256"]);
    record.unchanged();
}

#[test]
fn resume_with_another_model_is_refused() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let mut a = train_args(&m, s(&data), s(&out));
    a.extend(["--max-steps", "2"]);
    succeeds(&bipo(&a));
    // The same architecture with one steering vector baked in: a different file.
    let baked = d.path().join("baked.gguf");
    let v = happy(d.path());
    succeeds(&bipo(&["bake", "-m", &m, "-v", s(&v), "-o", s(&baked)]));
    let mut r = train_args(s(&baked), s(&data), s(&out));
    r.push("--resume");
    fails(&bipo(&r), 2, &["trained with model"]);
}

#[test]
fn resume_with_other_settings_names_the_setting() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let mut a = train_args(&m, s(&data), s(&out));
    a.extend(["--max-steps", "2"]);
    succeeds(&bipo(&a));
    let mut r = train_args(&m, s(&data), s(&out));
    r.extend(["--resume", "--beta", "0.5"]);
    fails(&bipo(&r), 2, &["different training config", "beta"]);
}

#[test]
fn resume_without_a_checkpoint_is_refused() {
    let (d, m, data) = setup(4);
    let out = d.path().join("empty");
    let mut r = train_args(&m, s(&data), s(&out));
    r.push("--resume");
    fails(&bipo(&r), 2, &["no checkpoint.json"]);
}

#[test]
fn resume_and_force_together_are_refused() {
    let (d, m, data) = setup(4);
    let out = d.path().join("run");
    let mut r = train_args(&m, s(&data), s(&out));
    r.extend(["--resume", "--force"]);
    fails(&bipo(&r), 2, &["--resume", "--force"]);
}

/// Step rows written so far (0 while the file is absent or being cut back).
fn rows_now(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"type\":\"step\""))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn kill_9_at_random_points_then_resume_equals_an_uninterrupted_run() {
    let (d, m, data) = setup(6);
    let full = d.path().join("full");
    succeeds(&bipo(&train_args(&m, s(&data), s(&full))));
    let want = std::fs::read(full.join("vector.safetensors")).unwrap();
    assert_eq!(step_rows(&full), (0..12).collect::<Vec<_>>());

    // Three kills at seeded random moments: one while loading and caching, two at a
    // random delay after the run has logged 3 and then 8 steps (so they land between
    // steps, inside a step, or during a checkpoint write). Then resume to the end.
    let out = d.path().join("killed");
    let mut seed: u64 = 0x5eed_0001;
    let mut rand_ms = |lo: u64, hi: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (seed >> 33) % (hi - lo)
    };
    let plans = [
        (0, rand_ms(200, 2500)),
        (3, rand_ms(0, 500)),
        (8, rand_ms(0, 500)),
    ];
    let started = Instant::now();
    let run = |resume: bool| {
        let mut args = train_args(&m, s(&data), s(&out));
        args.push(if resume { "--resume" } else { "--force" });
        Command::new(exe())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (rows, delay) in plans {
        let mut child = run(out.join("checkpoint.json").is_file());
        while rows_now(&out) < rows && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(180), "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its kill"
        );
        child.kill().unwrap(); // SIGKILL: no handler runs
        child.wait().unwrap();
    }
    let last = run(out.join("checkpoint.json").is_file())
        .wait_with_output()
        .unwrap();
    assert!(last.status.success(), "{}", stderr(&last));
    assert_eq!(std::fs::read(out.join("vector.safetensors")).unwrap(), want);
    assert_eq!(
        step_rows(&out),
        (0..12).collect::<Vec<_>>(),
        "each step once"
    );
    no_leftovers(&out);
}
