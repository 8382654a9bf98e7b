//! Progress that works in a terminal and in a log.
//!
//! On a terminal, [`Progress`] is an indicatif bar. When stderr is not a terminal (a
//! log file, a pipe, CI) a bar draws nothing, so long commands looked dead for
//! minutes; there [`Progress`] writes plain lines instead: one when a stage starts
//! (its message changes), one at most every `BIPO_PROGRESS_SECS` seconds (default 30)
//! with position, elapsed time and an ETA, and one when the stage ends.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between log lines when stderr is not a terminal.
fn log_interval() -> Duration {
    let secs = std::env::var("BIPO_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// Line-mode state: the stage and when it started, the last line's time.
struct Lines {
    msg: String,
    len: u64,
    pos: u64,
    stage_start: Instant,
    last: Instant,
    every: Duration,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: Option<Mutex<Lines>>,
    start: Instant,
}

/// `1m05s`, `12s`, `1h02m`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// A bar of `len` steps drawn with the indicatif `template` on a terminal, or
    /// plain progress lines otherwise.
    pub fn new(len: u64, template: &str) -> Self {
        let now = Instant::now();
        if crate::out::quiet() {
            return Self {
                bar: None,
                lines: None,
                start: now,
            };
        }
        if std::io::stderr().is_terminal() {
            let pb = ProgressBar::new(len);
            pb.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            return Self {
                bar: Some(pb),
                lines: None,
                start: now,
            };
        }
        Self {
            bar: None,
            lines: Some(Mutex::new(Lines {
                msg: String::new(),
                len,
                pos: 0,
                stage_start: now,
                last: now,
                every: log_interval(),
            })),
            start: now,
        }
    }

    fn with_lines(&self, f: impl FnOnce(&mut Lines, Duration)) {
        if let Some(l) = &self.lines {
            let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut l, self.start.elapsed());
        }
    }

    /// Names the current stage; in a log, a new stage gets a line.
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(pb) = &self.bar {
            pb.set_message(msg.clone());
        }
        self.with_lines(|l, at| {
            if stage_of(&msg) != stage_of(&l.msg) {
                l.stage_start = Instant::now();
                l.last = l.stage_start;
                crate::note!("[{}] {}", hms(at), stage_of(&msg));
            }
            l.msg = msg;
        });
    }

    pub fn set_length(&self, len: u64) {
        if let Some(pb) = &self.bar {
            pb.set_length(len);
        }
        self.with_lines(|l, _| l.len = len);
    }

    pub fn set_position(&self, pos: u64) {
        if let Some(pb) = &self.bar {
            pb.set_position(pos);
        }
        self.with_lines(|l, at| {
            l.pos = pos;
            let now = Instant::now();
            if now.duration_since(l.last) >= l.every && pos > 0 {
                l.last = now;
                let spent = now.duration_since(l.stage_start);
                let eta = spent.mul_f64(l.len.saturating_sub(pos) as f64 / pos as f64);
                let msg = if l.msg.is_empty() { "working" } else { &l.msg };
                crate::note!("[{}] {msg}: {pos}/{} (ETA {})", hms(at), l.len, hms(eta));
            }
        });
    }

    /// A line that stays (above the bar on a terminal).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(pb) => pb.println(line.as_ref()),
            None => crate::note!("[{}] {}", hms(self.start.elapsed()), line.as_ref()),
        }
    }

    pub fn finish_and_clear(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
        self.with_lines(|l, at| {
            if l.len > 0 && l.pos > 0 {
                let msg = if l.msg.is_empty() { "done" } else { &l.msg };
                crate::note!("[{}] {msg}: {}/{} done", hms(at), l.pos, l.len);
            }
            l.msg.clear();
        });
    }
}

/// The stable part of a message (before a per-step detail like "loss 0.69"): messages
/// that differ only after "  " belong to one stage.
fn stage_of(msg: &str) -> &str {
    msg.split("  ").next().unwrap_or(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_clock_time() {
        assert_eq!(hms(Duration::from_secs(7)), "7s");
        assert_eq!(hms(Duration::from_secs(65)), "1m05s");
        assert_eq!(hms(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn per_step_details_do_not_start_a_stage() {
        assert_eq!(stage_of("training  epoch 1 loss 0.69"), "training");
        assert_eq!(stage_of("caching layer 3 states"), "caching layer 3 states");
    }
}
