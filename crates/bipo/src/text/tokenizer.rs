//! Tokenizers: Hugging Face `tokenizer.json`, or built from GGUF metadata.
//!
//! GGUF vocabularies come in two kinds: `gpt2` (byte-level BPE, with the pre-tokenizer
//! regex named by `tokenizer.ggml.pre`) and `llama` (SentencePiece; merges are derived
//! from the token scores, with byte fallback). Control and user-defined tokens become
//! special added tokens, so `<|im_start|>` written in a prompt is one token, as in
//! llama.cpp.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::chat::ChatPrompt;
use crate::error::{Error, Result};
use crate::load::gguf::GgufFile;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// GPT-2's pre-tokenizer split (Hugging Face `ByteLevel(use_regex=true)`).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3 / tiktoken-style split.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split (single digits).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's word-boundary marker.
const SPM_SPACE: &str = "\u{2581}";

/// A tokenizer plus the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token parsing off: special-token strings in the
    /// text stay text (for message contents and training responses).
    plain: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    special: HashSet<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    Ok(Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?
    .into())
}

/// Pre-tokenizer for a `tokenizer.ggml.pre` name, matching the model's tokenizer.json.
fn gpt2_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |regex: bool| ByteLevel::new(false, true, regex);
    Ok(match pre {
        // StarCoder lineage (SmolLM, SmolLM2): single digits, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false).into()]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2_REGEX)?, byte_level(false).into()]).into(),
        "gpt2" | "default" | "gpt-2" => {
            Sequence::new(vec![split(GPT2_REGEX)?, byte_level(false).into()]).into()
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported; \
                 supported: smollm, starcoder, llama3, llama-bpe, qwen2, gpt2, default"
            )))
        }
    })
}

/// BPE merges implied by SentencePiece scores: every split of a token into two vocab
/// entries is a merge, ranked by the merged token's score (higher merges first).
fn spm_merges(tokens: &[String], scores: &[f64], skip: &HashSet<u32>) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if skip.contains(&(id as u32)) {
            continue;
        }
        for (cut, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(cut);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, ib));
            }
        }
    }
    // Stable order: by score, then by the ids of the parts (as Hugging Face's converter).
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.2, x.3).cmp(&(y.2, y.3))));
    merges
        .into_iter()
        .map(|(_, _, a, b)| (tokens[a].clone(), tokens[b].clone()))
        .collect()
}

/// A copy of `t` that treats special-token strings as ordinary text.
fn plain_of(t: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut p = t.clone();
    p.set_encode_special_tokens(true);
    p
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let bad = |reason: String| Error::bad_file(path, reason);
        let kind = g.str("tokenizer.ggml.model")?;
        let tokens = g.str_array("tokenizer.ggml.tokens")?;
        let types: Vec<u32> = match g.get("tokenizer.ggml.token_type") {
            Some(_) => g
                .num_array("tokenizer.ggml.token_type")?
                .into_iter()
                .map(|x| x as u32)
                .collect(),
            None => vec![1; tokens.len()],
        };
        let special: HashSet<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(i, _)| i as u32)
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let id = |key: &str| -> Result<Option<u32>> {
            Ok(g.opt_uint(key)?
                .map(|n| n as u32)
                .filter(|&n| (n as usize) < tokens.len()))
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let mut inner = match kind {
            "gpt2" => {
                let merges = g
                    .str_array("tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| bad(format!("bad merge `{m}` in tokenizer.ggml.merges")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .build()
                    .map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
                t.with_pre_tokenizer(Some(gpt2_pre_tokenizer(pre)?));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
            "llama" => {
                let scores = g.num_array("tokenizer.ggml.scores")?;
                let mut skip = special.clone();
                skip.extend(
                    types
                        .iter()
                        .enumerate()
                        .filter(|(_, &t)| t != 1)
                        .map(|(i, _)| i as u32),
                );
                let merges = spm_merges(&tokens, &scores, &skip);
                let mut b = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(u) = unk {
                    b = b.unk_token(tokens[u as usize].clone());
                }
                let mut t = tokenizers::Tokenizer::new(b.build().map_err(tok_err)?);
                let add_space = g
                    .opt_bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                let mut norms: Vec<NormalizerWrapper> = Vec::new();
                if add_space {
                    norms.push(Prepend::new(SPM_SPACE.into()).into());
                }
                norms.push(Replace::new(" ", SPM_SPACE).map_err(tok_err)?.into());
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)))
                    .map_err(tok_err)?;
                let mut decs: Vec<DecoderWrapper> = vec![
                    Replace::new(SPM_SPACE, " ").map_err(tok_err)?.into(),
                    ByteFallback::default().into(),
                    Fuse::default().into(),
                ];
                if add_space {
                    decs.push(Strip::new(' ', 1, 0).into());
                }
                t.with_decoder(Some(DecoderSequence::new(decs)));
                t
            }
            other => {
                return Err(bad(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
                )))
            }
        };
        let added: Vec<AddedToken> = special
            .iter()
            .map(|&i| AddedToken::from(tokens[i as usize].clone(), true))
            .collect();
        inner.add_special_tokens(added).map_err(tok_err)?;
        let add_bos = g
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(kind == "llama");
        let mut special = special;
        special.extend(bos.iter().chain(eos.iter()).chain(eot.iter()));
        Ok(Self {
            plain: plain_of(&inner),
            inner,
            bos,
            eos: eos.into_iter().chain(eot).collect(),
            add_bos,
            special,
        })
    }

    /// Loads `tokenizer.json`; BOS/EOS from `tokenizer_config.json` when present, plus
    /// any extra end tokens (`generation_config.json` `eos_token_id`).
    pub fn from_files(
        tokenizer_json: &Path,
        config: Option<&serde_json::Value>,
        extra_eos: &[u32],
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::bad_file(tokenizer_json, e.to_string()))?;
        let token_of = |key: &str| -> Option<u32> {
            let v = config?.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos = token_of("bos_token");
        let mut eos: Vec<u32> = token_of("eos_token").into_iter().collect();
        eos.extend(
            extra_eos
                .iter()
                .filter(|e| !eos.contains(e))
                .copied()
                .collect::<Vec<_>>(),
        );
        // BOS is added exactly when the tokenizer's own post-processor adds it.
        let with = inner.encode("a", true).map_err(tok_err)?;
        let add_bos = bos.is_some() && with.get_ids().first().copied() == bos;
        let special = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&i, _)| i)
            .collect();
        Ok(Self {
            plain: plain_of(&inner),
            inner,
            bos,
            eos,
            add_bos,
            special,
        })
    }

    /// Token ids of `text`. Special-token strings in the text become special tokens;
    /// BOS is prepended when `add_bos` is set and the model's metadata asks for it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` with special-token strings kept as text (never control
    /// tokens): for user-supplied text such as training responses.
    pub fn encode_plain(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.plain.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of a rendered chat prompt: special-token strings written by the
    /// template become special tokens, those inside message contents stay text, so a
    /// message cannot forge roles (`<|im_end|><|im_start|>system`). When no message
    /// holds special-token text, this equals [`Self::encode`] of the text.
    pub fn encode_chat(&self, prompt: &ChatPrompt, add_bos: bool) -> Result<Vec<u32>> {
        let text = prompt.text.as_str();
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let overlaps = |(s, e): (usize, usize)| -> bool {
            match &prompt.content {
                Some(ranges) => ranges.iter().any(|r| s < r.end && r.start < e),
                None => true,
            }
        };
        let tokens: Vec<(u32, (usize, usize))> = enc
            .get_ids()
            .iter()
            .copied()
            .zip(enc.get_offsets().iter().copied())
            .collect();
        let injected = tokens
            .iter()
            .any(|(id, off)| self.special.contains(id) && overlaps(*off));
        let mut ids = Vec::with_capacity(tokens.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        if !injected {
            ids.extend(tokens.iter().map(|(id, _)| *id));
            return Ok(ids);
        }
        if prompt.content.is_none() {
            return Err(Error::Template(
                "a message holds special-token text and the chat template changes message \
                 text, so it cannot be kept apart from the template's own tokens; remove the \
                 special-token text from the message"
                    .into(),
            ));
        }
        // Split at the template's own special tokens; encode the text between them with
        // special-token parsing off, as the tokenizer would encode it without them.
        let mut cursor = 0;
        for (id, (s, e)) in tokens {
            if self.special.contains(&id) && !overlaps((s, e)) {
                if s > cursor {
                    ids.extend(self.encode_plain(&text[cursor..s], false)?);
                }
                ids.push(id);
                cursor = e;
            }
        }
        if cursor < text.len() {
            ids.extend(self.encode_plain(&text[cursor..], false)?);
        }
        Ok(ids)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = if skip_special {
            ids.iter()
                .copied()
                .filter(|i| !self.special.contains(i))
                .collect()
        } else {
            ids.to_vec()
        };
        self.inner.decode(&ids, false).map_err(tok_err)
    }

    /// The vocabulary entry of one token, as text (special tokens included).
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.decode(&[id], false)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// Tokens that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Token string of an id (for chat-template variables).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether the model's metadata asks for BOS at the start of a prompt.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{self, Value};

    /// A SentencePiece ("llama") vocabulary small enough to reason about by hand.
    fn spm_gguf(dir: &Path) -> GgufFile {
        let pieces: [(&str, f32, i32); 19] = [
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<0x0A>", 0.0, 6),
            ("\u{2581}", -10.0, 1),
            ("h", -11.0, 1),
            ("e", -11.0, 1),
            ("l", -11.0, 1),
            ("o", -11.0, 1),
            ("w", -11.0, 1),
            ("r", -11.0, 1),
            ("d", -11.0, 1),
            ("\u{2581}h", -1.0, 1),
            ("ll", -2.0, 1),
            ("\u{2581}he", -3.0, 1),
            ("\u{2581}hell", -4.0, 1),
            ("\u{2581}hello", -5.0, 1),
            ("\u{2581}w", -6.0, 1),
            ("or", -7.0, 1),
        ];
        let arr =
            |f: &dyn Fn(&(&str, f32, i32)) -> Value| Value::Array(pieces.iter().map(f).collect());
        let meta: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", arr(&|p| Value::String(p.0.into()))),
            ("tokenizer.ggml.scores", arr(&|p| Value::F32(p.1))),
            ("tokenizer.ggml.token_type", arr(&|p| Value::I32(p.2))),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ];
        let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let p = dir.join("spm.gguf");
        let mut f = std::fs::File::create(&p).unwrap();
        gguf_file::write(&mut f, &refs, &[]).unwrap();
        GgufFile::open(&p).unwrap()
    }

    #[test]
    fn sentencepiece_vocabularies_merge_by_score_with_byte_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokenizer::from_gguf(&spm_gguf(dir.path())).unwrap();
        // "hello" merges all the way by score; "world" has no whole-word piece.
        let ids = t.encode("hello world\n", true).unwrap();
        assert_eq!(ids, vec![1, 16, 17, 18, 7, 11, 3]);
        assert_eq!(t.decode(&ids, true).unwrap(), "hello world\n");
        assert!(t.adds_bos());
        assert_eq!(t.eos_token_ids(), &[2]);
        // Special tokens written in the text are parsed.
        assert_eq!(t.encode("</s>", false).unwrap(), vec![2]);
    }
}
