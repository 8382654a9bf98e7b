//! Preference data: (question, matching answer, opposite answer) pairs, from every
//! format the BiPO ecosystem uses. Errors name the file and the line or record.
//!
//! - BiPO CSV: columns `question, matching, not_matching`.
//! - Anthropic model-written-evals / CAA JSON (array) or JSONL: `question`,
//!   `answer_matching_behavior`, `answer_not_matching_behavior`.
//! - `{positive, negative}` JSONL: two full texts sharing a prompt; split at their
//!   longest common prefix (moved back to a word boundary).
//! - DPO JSONL: `prompt, chosen, rejected`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One preference pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub question: String,
    /// The answer showing the target behaviour.
    pub matching: String,
    /// The answer showing the opposite.
    pub not_matching: String,
}

/// A loaded dataset with its provenance.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub pairs: Vec<PreferencePair>,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    pub format: &'static str,
    /// Records dropped under `skip_invalid`, each as "line N: reason".
    pub skipped: Vec<String>,
}

impl Dataset {
    /// Pairs made in code (not read from a file): each field must be non-empty; the
    /// hash is of the pairs as a JSON array of [question, matching, not_matching].
    pub fn from_pairs(pairs: Vec<PreferencePair>) -> Result<Self> {
        for (i, p) in pairs.iter().enumerate() {
            if [&p.question, &p.matching, &p.not_matching]
                .iter()
                .any(|f| f.trim().is_empty())
            {
                return Err(Error::invalid(format!("pair {i}"), "a field is empty"));
            }
        }
        let rows: Vec<[&String; 3]> = pairs
            .iter()
            .map(|p| [&p.question, &p.matching, &p.not_matching])
            .collect();
        let json = serde_json::to_vec(&rows).expect("strings serialise");
        Ok(Self {
            pairs,
            sha256: crate::util::sha256_hex(&json),
            format: "in-memory",
            skipped: Vec::new(),
        })
    }
}

fn bad(path: &Path, where_: String, reason: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("{where_}: {reason}"))
}

/// Loads pairs from `path`, choosing the format by extension and columns. Any empty
/// field is an error naming its line.
pub fn load_pairs(path: &Path) -> Result<Dataset> {
    load_pairs_with(path, false)
}

/// Like [`load_pairs`]; with `skip_invalid`, records with an empty field are dropped
/// and listed in [`Dataset::skipped`] instead (the BiPO paper's power-seeking and
/// wealth-seeking train files hold a few rows with an empty question).
pub fn load_pairs_with(path: &Path, skip_invalid: bool) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let text = crate::util::text_of(path, bytes)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_lowercase();
    let mut skipped = Vec::new();
    let (pairs, format) = match ext.as_str() {
        "csv" => (
            parse_csv(path, &text, skip_invalid.then_some(&mut skipped))?,
            "bipo-csv",
        ),
        "json" | "jsonl" => parse_json(path, &text, skip_invalid.then_some(&mut skipped))?,
        other => {
            return Err(Error::bad_file(
                path,
                format!("unknown extension `.{other}` (expected .csv, .json or .jsonl)"),
            ))
        }
    };
    if pairs.is_empty() {
        return Err(Error::bad_file(path, "the dataset is empty"));
    }
    Ok(Dataset {
        pairs,
        sha256,
        format,
        skipped,
    })
}

/// Records an invalid record in `skipped` when skipping, else returns the error.
fn skip_or_fail(err: Error, skipped: &mut Option<&mut Vec<String>>) -> Result<()> {
    match (skipped.as_deref_mut(), err) {
        (Some(list), Error::BadFile { reason, .. }) => {
            list.push(reason);
            Ok(())
        }
        (_, e) => Err(e),
    }
}

/// A pair whose two answers are the same teaches nothing (its BiPO margin is always 0).
fn check_distinct(path: &Path, where_: &str, p: &PreferencePair) -> Result<()> {
    if p.matching == p.not_matching {
        return Err(bad(
            path,
            where_.to_string(),
            "the matching and opposite answers are identical",
        ));
    }
    Ok(())
}

/// Finds a quoted CSV field that never closes; returns the line where it opens. (The csv
/// crate reads such a field to the end of the file and reports a field count instead.)
pub fn unterminated_csv_quote(text: &str) -> Option<usize> {
    let (mut line, mut open_at, mut in_quote, mut field_start) = (1, 0, false, true);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quote {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    in_quote = false;
                }
            }
        } else if c == '"' && field_start {
            in_quote = true;
            open_at = line;
        }
        field_start = matches!(c, ',' | '\n' | '\r') && !in_quote;
        if c == '\n' {
            line += 1;
        }
    }
    in_quote.then_some(open_at)
}

fn parse_csv(
    path: &Path,
    text: &str,
    mut skipped: Option<&mut Vec<String>>,
) -> Result<Vec<PreferencePair>> {
    if let Some(line) = unterminated_csv_quote(text) {
        return Err(bad(
            path,
            format!("line {line}"),
            "a quoted field opens here and never closes (missing `\"`)",
        ));
    }
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| bad(path, "header".into(), e))?
        .clone();
    let col = |name: &str| -> Result<usize> {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                bad(
                    path,
                    "line 1".into(),
                    format!(
                        "missing column `{name}` (have: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    };
    let (q, m, n) = (col("question")?, col("matching")?, col("not_matching")?);
    let mut pairs = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            bad(path, format!("line {line}"), e)
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: usize, name: &str| -> Result<String> {
            let v = rec.get(i).unwrap_or("").trim();
            if v.is_empty() {
                return Err(bad(path, format!("line {line}"), format!("empty `{name}`")));
            }
            Ok(v.to_string())
        };
        let pair = (|| {
            let p = PreferencePair {
                question: field(q, "question")?,
                matching: field(m, "matching")?,
                not_matching: field(n, "not_matching")?,
            };
            check_distinct(path, &format!("line {line}"), &p)?;
            Ok(p)
        })();
        match pair {
            Ok(p) => pairs.push(p),
            Err(e) => skip_or_fail(e, &mut skipped)?,
        }
    }
    Ok(pairs)
}

fn parse_json(
    path: &Path,
    text: &str,
    mut skipped: Option<&mut Vec<String>>,
) -> Result<(Vec<PreferencePair>, &'static str)> {
    // A JSON array, or one object per line.
    let records: Vec<(String, serde_json::Value)> = if text.trim_start().starts_with('[') {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| bad(path, format!("line {}", e.line()), e))?;
        v.into_iter()
            .enumerate()
            .map(|(i, r)| (format!("record {}", i + 1), r))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map(|v| (format!("line {}", i + 1), v))
                    .map_err(|e| bad(path, format!("line {}", i + 1), e))
            })
            .collect::<Result<_>>()?
    };
    let mut pairs = Vec::with_capacity(records.len());
    let mut format = "";
    for (where_, r) in records {
        let get = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::trim);
        let need = |k: &str| -> Result<String> {
            match get(k) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                Some(_) => Err(bad(path, where_.clone(), format!("empty `{k}`"))),
                None => Err(bad(path, where_.clone(), format!("missing `{k}`"))),
            }
        };
        let parsed = (|| -> Result<(PreferencePair, &'static str)> {
            Ok(if r.get("answer_matching_behavior").is_some() {
                (
                    PreferencePair {
                        question: need("question")?,
                        matching: need("answer_matching_behavior")?,
                        not_matching: need("answer_not_matching_behavior")?,
                    },
                    "caa-json",
                )
            } else if r.get("chosen").is_some() {
                (
                    PreferencePair {
                        question: need("prompt")?,
                        matching: need("chosen")?,
                        not_matching: need("rejected")?,
                    },
                    "dpo-jsonl",
                )
            } else if r.get("positive").is_some() {
                let (p, n) = (need("positive")?, need("negative")?);
                if let Some(why) = shared_suffix_problem(&p, &n) {
                    return Err(bad(path, where_.clone(), why));
                }
                let (q, a, b) = split_common_prefix(&p, &n).ok_or_else(|| {
                    bad(
                        path,
                        where_.clone(),
                        "`positive` and `negative` share no prompt or are identical",
                    )
                })?;
                (
                    PreferencePair {
                        question: q,
                        matching: a,
                        not_matching: b,
                    },
                    "positive-negative-jsonl",
                )
            } else if r.get("matching").is_some() {
                (
                    PreferencePair {
                        question: need("question")?,
                        matching: need("matching")?,
                        not_matching: need("not_matching")?,
                    },
                    "bipo-json",
                )
            } else {
                return Err(bad(
                path,
                where_.clone(),
                "unknown record: expected answer_matching_behavior, chosen/rejected, positive/negative or matching/not_matching",
            ));
            })
        })();
        let parsed = parsed.and_then(|(p, f)| {
            check_distinct(path, &where_, &p)?;
            Ok((p, f))
        });
        let (pair, f) = match parsed {
            Ok(x) => x,
            Err(e) => {
                skip_or_fail(e, &mut skipped)?;
                continue;
            }
        };
        if !format.is_empty() && format != f {
            return Err(bad(
                path,
                where_,
                format!("mixes formats ({format} and {f})"),
            ));
        }
        format = f;
        pairs.push(pair);
    }
    Ok((pairs, format))
}

/// Why a `{positive, negative}` record whose texts share more at their end than at
/// their start cannot be split as prompt + two responses: then the texts differ inside
/// the prompt (repeng-style persona pairs: "Act as if you are happy. <shared text>") and
/// a prefix split would train on a "response" that holds the persona and the shared text.
fn shared_suffix_problem(a: &str, b: &str) -> Option<String> {
    let prefix = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let suffix = a
        .bytes()
        .rev()
        .zip(b.bytes().rev())
        .take_while(|(x, y)| x == y)
        .count()
        .min(a.len().min(b.len()) - prefix);
    let mut start = a.len() - suffix;
    while !a.is_char_boundary(start) {
        start += 1; // a byte match that ends inside a character
    }
    let shared_end = a[start..].trim();
    if shared_end.contains(char::is_whitespace) && suffix > prefix {
        Some(format!(
            "`positive` and `negative` share their last {suffix} characters but only their \
             first {prefix}: they differ inside the prompt (persona pairs with a shared \
             continuation?), which cannot be split into one prompt and two responses; give \
             {{\"question\", \"matching\", \"not_matching\"}} records instead"
        ))
    } else {
        None
    }
}

/// Splits two texts at their longest common prefix, moved back to the last whitespace
/// so no word is cut (tokens then split the same way as in the full texts).
pub fn split_common_prefix(a: &str, b: &str) -> Option<(String, String, String)> {
    let common = a
        .char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .last()?
        .0
         .0;
    let common = common + a[common..].chars().next()?.len_utf8();
    let cut = a[..common]
        .rfind(char::is_whitespace)
        .map(|i| i + 1)
        .unwrap_or(0);
    let (q, ra, rb) = (&a[..cut], &a[cut..], &b[cut..]);
    if q.trim().is_empty() || ra.trim().is_empty() || rb.trim().is_empty() {
        return None;
    }
    Some((q.trim_end().to_string(), ra.to_string(), rb.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unterminated_quote_is_found_at_its_line() {
        assert_eq!(unterminated_csv_quote("a,b\n\"x,y\n1,2\n"), Some(2));
        assert_eq!(unterminated_csv_quote("a,b\n\"x \"\"q\"\" y\",2\n"), None);
        assert_eq!(unterminated_csv_quote("a,b\nit's \"fine\",2\n"), None);
        let (_d, p) = write(
            "u.csv",
            "question,matching,not_matching\nq,\"open,b\nq2,a,b\n",
        );
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("never closes"), "{e}");
    }

    #[test]
    fn identical_answers_are_refused_or_skipped() {
        let (_d, p) = write(
            "i.csv",
            "question,matching,not_matching\nq,same,same\nq2,a,b\n",
        );
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("identical"), "{e}");
        let d = load_pairs_with(&p, true).unwrap();
        assert_eq!((d.pairs.len(), d.skipped.len()), (1, 1));
    }

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn bipo_csv_with_quoted_multiline_fields_loads() {
        let (_d, p) = write(
            "a.csv",
            "question,matching,not_matching\n\"Q1, with comma\nand newline\",Yes,No\nQ2,A2,B2\n",
        );
        let ds = load_pairs(&p).unwrap();
        assert_eq!(ds.pairs.len(), 2);
        assert_eq!(ds.pairs[0].question, "Q1, with comma\nand newline");
        assert_eq!(ds.format, "bipo-csv");
    }

    #[test]
    fn csv_errors_name_the_file_line_and_column() {
        let (_d, p) = write("b.csv", "question,matching\nQ,A\n");
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(e.contains("b.csv") && e.contains("not_matching"), "{e}");
        let (_d, p) = write("c.csv", "question,matching,not_matching\nQ,A,B\nQ2,,B\n");
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("empty `matching`"),
            "{e}"
        );
        let (_d, p) = write("d.csv", "question,matching,not_matching\n");
        assert!(load_pairs(&p).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn caa_dpo_and_positive_negative_json_load() {
        let (_d, p) = write(
            "caa.json",
            r#"[{"question":"Q? Choices: (A) x (B) y","answer_matching_behavior":"(A)","answer_not_matching_behavior":"(B)"}]"#,
        );
        assert_eq!(load_pairs(&p).unwrap().pairs[0].matching, "(A)");
        let (_d, p) = write("dpo.jsonl", "{\"prompt\":\"P\",\"chosen\":\"C\",\"rejected\":\"R\"}\n\n{\"prompt\":\"P2\",\"chosen\":\"C2\",\"rejected\":\"R2\"}\n");
        assert_eq!(load_pairs(&p).unwrap().pairs.len(), 2);
        let (_d, p) = write(
            "pn.jsonl",
            "{\"positive\":\"I am so happy today\",\"negative\":\"I am so sad today\"}\n",
        );
        let pair = &load_pairs(&p).unwrap().pairs[0];
        assert_eq!(
            (
                pair.question.as_str(),
                pair.matching.as_str(),
                pair.not_matching.as_str()
            ),
            ("I am so", "happy today", "sad today")
        );
        // Persona pairs that share a long ending differ inside the prompt: refused,
        // naming the record (they used to split into "responses" holding the persona).
        let (_d, p) = write(
            "persona.jsonl",
            "{\"positive\":\"[INST] Act as if you are happy. [/INST] I went for a walk in the park today.\",\"negative\":\"[INST] Act as if you are sad. [/INST] I went for a walk in the park today.\"}\n",
        );
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(
            e.contains("persona.jsonl") && e.contains("differ inside the prompt"),
            "{e}"
        );
    }

    #[test]
    fn invalid_rows_are_skipped_and_listed_only_when_asked() {
        let (_d, p) = write("s.csv", "question,matching,not_matching\nQ,A,B\n,A2,B2\n");
        assert!(load_pairs(&p).is_err());
        let ds = load_pairs_with(&p, true).unwrap();
        assert_eq!(ds.pairs.len(), 1);
        assert_eq!(ds.skipped.len(), 1);
        assert!(ds.skipped[0].contains("line 3"), "{:?}", ds.skipped);
    }

    #[test]
    fn json_errors_name_the_line() {
        let (_d, p) = write("x.jsonl", "{\"prompt\":\"P\",\"chosen\":\"C\",\"rejected\":\"R\"}\n{\"prompt\":\"P\",\"chosen\":\"C\"}\n");
        let e = load_pairs(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("rejected"), "{e}");
    }
}
