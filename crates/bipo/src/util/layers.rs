//! One layer syntax for every command: `N`, `A-B` (inclusive), `A,B,C`, negative
//! indices counted from the end (`-1` = the last block), and fractions of depth
//! (`0.5` = the block at half the model's depth). Parts combine: `0-3,10,-1`.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// One comma-separated part of a layer list.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Index(i64),
    Range(i64, i64),
    Fraction(f64),
}

/// A parsed layer list, resolved against a model's depth with [`LayerSpec::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    text: String,
    parts: Vec<Part>,
}

fn bad(text: &str, why: &str) -> Error {
    Error::invalid(
        "layers",
        format!("`{text}`: {why} (use N, A-B, A,B,C, -1 for the last, or 0.5 for half depth)"),
    )
}

fn int(text: &str, s: &str) -> Result<i64> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| bad(text, &format!("`{s}` is not a layer number")))
}

impl std::str::FromStr for LayerSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        for p in text.split(',').map(str::trim) {
            if p.is_empty() {
                return Err(bad(text, "empty part"));
            }
            if p.contains('.') {
                let f: f64 = p
                    .parse()
                    .map_err(|_| bad(text, &format!("`{p}` is not a fraction")))?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad(text, &format!("fraction {p} is outside 0..1")));
                }
                parts.push(Part::Fraction(f));
                continue;
            }
            // A range's '-' follows a digit: "10-14", "-3--1"; a leading '-' is a sign.
            let dash = p
                .char_indices()
                .skip(1)
                .find(|&(i, c)| c == '-' && p.as_bytes()[i - 1].is_ascii_digit())
                .map(|(i, _)| i);
            parts.push(match dash {
                Some(i) => Part::Range(int(text, &p[..i])?, int(text, &p[i + 1..])?),
                None => Part::Index(int(text, p)?),
            });
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }
}

impl std::fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl LayerSpec {
    /// The 0-based layers of a model with `n` blocks, ascending and without repeats.
    pub fn resolve(&self, n: usize) -> Result<Vec<usize>> {
        let n_i = n as i64;
        let at = |i: i64| -> Result<usize> {
            let j = if i < 0 { n_i + i } else { i };
            if (0..n_i).contains(&j) {
                Ok(j as usize)
            } else {
                Err(bad(
                    &self.text,
                    &format!(
                        "layer {i} is outside the model's {n} layers (0..{})",
                        n_i - 1
                    ),
                ))
            }
        };
        let mut out = BTreeSet::new();
        for p in &self.parts {
            match *p {
                Part::Index(i) => {
                    out.insert(at(i)?);
                }
                Part::Range(a, b) => {
                    let (a, b) = (at(a)?, at(b)?);
                    if a > b {
                        return Err(bad(&self.text, &format!("range {a}-{b} runs backwards")));
                    }
                    out.extend(a..=b);
                }
                Part::Fraction(f) => {
                    out.insert(((f * n as f64).round() as usize).min(n.saturating_sub(1)));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Exactly one layer (for commands that steer or train a single layer).
    pub fn resolve_one(&self, n: usize) -> Result<usize> {
        match self.resolve(n)?.as_slice() {
            [l] => Ok(*l),
            many => Err(bad(
                &self.text,
                &format!("names {} layers {many:?}; this takes one", many.len()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, n: usize) -> Result<Vec<usize>> {
        s.parse::<LayerSpec>()?.resolve(n)
    }

    #[test]
    fn every_form_resolves() {
        assert_eq!(r("12", 30).unwrap(), [12]);
        assert_eq!(r("10-14", 30).unwrap(), [10, 11, 12, 13, 14]);
        assert_eq!(r("10,11", 30).unwrap(), [10, 11]);
        assert_eq!(r("-1", 30).unwrap(), [29]);
        assert_eq!(r("-3--1", 30).unwrap(), [27, 28, 29]);
        assert_eq!(r("0.5", 30).unwrap(), [15]);
        assert_eq!(r("1.0", 30).unwrap(), [29]);
        assert_eq!(r("0-2, 1, -1", 30).unwrap(), [0, 1, 2, 29]);
    }

    #[test]
    fn bad_lists_name_the_part() {
        for (s, want) in [
            ("30", "outside the model's 30 layers"),
            ("-31", "outside"),
            ("14-10", "runs backwards"),
            ("a", "`a` is not a layer number"),
            ("1,,2", "empty part"),
            ("1.5", "outside 0..1"),
            ("3-x", "`x` is not a layer number"),
        ] {
            let e = r(s, 30).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(s), "{s}: {e}");
        }
        let e = "1-2"
            .parse::<LayerSpec>()
            .unwrap()
            .resolve_one(30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("this takes one"), "{e}");
    }
}
