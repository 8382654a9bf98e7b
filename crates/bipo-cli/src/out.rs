//! Writing to the terminal without panicking.
//!
//! `println!` panics when standard output is a closed pipe (`bipo vector info F | head -1`)
//! or a full disk (`> /dev/full`). [`outln!`] returns the error instead, tagged as
//! [`StdoutError`], and `main` ends quietly on a closed pipe or with one line otherwise.
//! [`note!`] writes to standard error and ignores failures (progress and notes are
//! never worth a crash).

use std::fmt;
use std::io::Write;

/// A failed write to standard output.
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl fmt::Display for StdoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writing to standard output: {}",
            bipo::error::io_reason(&self.0)
        )
    }
}

impl std::error::Error for StdoutError {}

/// Path under which a failed stdout write travels through the library's callbacks.
pub const STDOUT: &str = "<standard output>";

impl From<StdoutError> for bipo::Error {
    fn from(e: StdoutError) -> Self {
        bipo::Error::io(STDOUT, e.0)
    }
}

/// The I/O error of a failed write to standard output anywhere in `e`'s chain.
pub fn stdout_failure(e: &anyhow::Error) -> Option<&std::io::Error> {
    e.chain().find_map(|c| {
        if let Some(s) = c.downcast_ref::<StdoutError>() {
            return Some(&s.0);
        }
        match c.downcast_ref::<bipo::Error>() {
            Some(bipo::Error::Io { path, cause }) if path.as_os_str() == STDOUT => Some(cause),
            _ => None,
        }
    })
}

/// Writes formatted text to standard output and flushes it.
pub fn write_stdout(args: fmt::Arguments) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|_| out.flush())
        .map_err(StdoutError)
}

/// `println!` that returns a [`StdoutError`] instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that returns a [`StdoutError`] instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write_stdout(format_args!($($arg)*)) };
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quiet`: from now on notes and progress are not written (warnings and errors are).
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--verbose`: from now on [`verbose!`] lines are written too.
pub fn set_verbose(v: bool) {
    VERBOSE.store(v, std::sync::atomic::Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes one line to standard error, ignoring failures; under `--quiet` only lines
/// that start with `warning:` or `error:`.
pub fn write_note(line: fmt::Arguments) {
    let line = line.to_string();
    if quiet() && !(line.starts_with("warning:") || line.starts_with("error:")) {
        return;
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `eprintln!` that never panics (and is silent under `--quiet`, except warnings and
/// errors).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        $crate::out::write_note(format_args!($($arg)*));
    }};
}

/// A detail line on standard error, written only under `--verbose`.
#[macro_export]
macro_rules! verbose {
    ($($arg:tt)*) => {{
        if $crate::out::verbose() {
            $crate::out::write_note(format_args!("[verbose] {}", format_args!($($arg)*)));
        }
    }};
}
