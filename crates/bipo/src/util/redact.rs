//! Secrets never reach a file, a log or an error message: recorded command lines, URLs
//! and texts pass through [`redact`] first.
//!
//! What counts as a secret: the value of a secret-bearing flag (`--judge-key`,
//! `--api-key`, ...), credentials inside a URL (`https://user:pass@host`, `?api_key=`),
//! bearer tokens, OpenAI/Hugging Face-style keys (`sk-...`, `hf_...`), and the value of
//! any secret environment variable set in this process.

use std::sync::OnceLock;

/// Flags whose value is a secret (`--flag VALUE` and `--flag=VALUE`).
pub const SECRET_FLAGS: &[&str] = &[
    "--judge-key",
    "--api-key",
    "--key",
    "--token",
    "--hf-token",
    "--password",
];

/// Environment variables whose value is a secret.
pub const SECRET_ENV: &[&str] = &[
    "BIPO_JUDGE_API_KEY",
    "BIPO_API_KEY",
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
];

/// What a secret is replaced with.
pub const MASK: &str = "[REDACTED]";

/// Shortest environment value treated as a secret (shorter values would mask common words).
const MIN_ENV_SECRET: usize = 6;

fn patterns() -> &'static [regex::Regex] {
    static P: OnceLock<Vec<regex::Regex>> = OnceLock::new();
    P.get_or_init(|| {
        [
            // scheme://user:password@host or scheme://token@host
            r"(?i)([a-z][a-z0-9+.-]*://)[^/\s@]+@",
            // key-like query parameters
            r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|password|secret|sig)=)[^&\s]+",
            // Authorization headers
            r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+",
            // OpenAI / Anthropic / Hugging Face style keys
            r"()\b(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,})",
        ]
        .iter()
        .map(|p| regex::Regex::new(p).expect("valid pattern"))
        .collect()
    })
}

/// `text` with every secret replaced by [`MASK`].
pub fn redact(text: &str) -> String {
    let mut s = text.to_string();
    for p in patterns() {
        s = p.replace_all(&s, format!("${{1}}{MASK}")).into_owned();
    }
    for var in SECRET_ENV {
        if let Ok(v) = std::env::var(var) {
            if v.len() >= MIN_ENV_SECRET {
                s = s.replace(&v, MASK);
            }
        }
    }
    s
}

/// A command line for records: secret flag values masked, then [`redact`] applied.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut mask_next = false;
    for a in args {
        if mask_next {
            out.push(MASK.into());
            mask_next = false;
            continue;
        }
        match a.split_once('=') {
            Some((flag, _)) if SECRET_FLAGS.contains(&flag) => out.push(format!("{flag}={MASK}")),
            _ => {
                mask_next = SECRET_FLAGS.contains(&a.as_str());
                out.push(a);
            }
        }
    }
    redact(&out.join(" "))
}

/// This process's command line, redacted.
pub fn this_command_line() -> String {
    command_line(std::env::args_os().map(|a| a.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_flags_urls_and_tokens_are_masked() {
        let c = command_line(
            [
                "bipo",
                "eval",
                "--judge-key",
                "abc123secret",
                "--api-key=zzz999",
                "--judge-url",
                "https://me:pw@example.org/v1?api_key=Q1&x=2",
            ]
            .map(String::from),
        );
        for leaked in ["abc123secret", "zzz999", "me:pw", "Q1"] {
            assert!(!c.contains(leaked), "{leaked} in {c}");
        }
        assert!(c.contains("&x=2") && c.contains("example.org/v1"), "{c}");
        assert_eq!(
            redact("Authorization: Bearer tok.en-1 and sk-abcdefghijkl"),
            format!("Authorization: Bearer {MASK} and {MASK}")
        );
        assert_eq!(redact("a plain sentence"), "a plain sentence");
    }
}
