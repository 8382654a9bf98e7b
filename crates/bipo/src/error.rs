//! The library's one error type.
//!
//! Every variant that concerns a file names it, so a binary can print the error chain
//! as one clear line and map it to an exit code (see [`Error::exit_code`]).

use std::path::PathBuf;

/// Everything that can go wrong in bipo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written. (The I/O error is part of the
    /// message, not a separate source, so a printed chain does not repeat it.)
    #[error("{}: {}", path.display(), io_reason(cause))]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A file exists but its content is not what it should be (wrong magic, truncated,
    /// bad metadata, wrong dtype or rank, ...).
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// The model's architecture is not one bipo implements.
    #[error("unsupported architecture `{name}` (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },
    /// A steering vector does not fit the model it is applied to.
    #[error("steering vector {name}: {reason}")]
    VectorMismatch { name: String, reason: String },
    /// A value given by the user is out of range or malformed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A model id could not be resolved from the Hugging Face cache or the Hub.
    #[error("hub: {0}")]
    Hub(String),
    /// The LLM judge's endpoint failed or answered something unusable.
    #[error("judge: {0}")]
    Judge(String),
    /// A forward pass produced NaN or infinity (a vector or multiplier far too large, or
    /// corrupt weights): stopped rather than reporting garbage.
    #[error("non-finite values in {0}")]
    NonFinite(String),
    /// The caller asked to stop (a progress callback returned this error, e.g. on Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// A tensor operation failed (shape mismatch, device error).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A short lower-case reason for an I/O error, without the OS error number.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file or folder".into(),
        K::PermissionDenied => "permission denied".into(),
        K::IsADirectory => "is a folder, not a file".into(),
        K::NotADirectory => "a part of the path is not a folder".into(),
        K::AlreadyExists => "already exists".into(),
        K::StorageFull => "no space left on device".into(),
        K::ReadOnlyFilesystem => "read-only file system".into(),
        K::InvalidData => format!("invalid data ({e})"),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

/// `Result` with bipo's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::BadFile`].
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// Process exit code for this error: 2 for bad user input (arguments, files),
    /// 1 for failures inside bipo or its dependencies.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. }
            | Error::BadFile { .. }
            | Error::UnsupportedArchitecture { .. }
            | Error::VectorMismatch { .. }
            | Error::Invalid { .. }
            | Error::Template(_)
            | Error::NonFinite(_)
            | Error::Hub(_) => 2,
            Error::Tokenizer(_) | Error::Tensor(_) | Error::Judge(_) => 1,
            // The shell's convention for SIGINT.
            Error::Interrupted => 130,
        }
    }
}
