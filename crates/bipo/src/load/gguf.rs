//! GGUF files: metadata access and tensors, with errors that name the file.
//!
//! The header is parsed by bipo's strict [`super::gguf_header`] into candle's
//! `gguf_file::Content`; tensor reads are candle's. This wrapper adds typed metadata getters, keeps the
//! file handle for lazy tensor reads, and turns every failure into [`Error::BadFile`].

use std::borrow::Cow;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;

use crate::error::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// An opened GGUF file: parsed header plus a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

/// True when the file at `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == GGUF_MAGIC)
        .unwrap_or(false)
}

impl GgufFile {
    /// Opens and parses the header of a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        if !is_gguf(&path) {
            return Err(Error::bad_file(&path, "not a GGUF file (bad magic)"));
        }
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut reader = BufReader::new(file);
        // bipo's own strict parser: every count and offset is checked against the file.
        let content = super::gguf_header::parse(&mut reader, len)
            .map_err(|e| Error::bad_file(&path, format!("malformed GGUF header: {e}")))?;
        Ok(Self {
            path,
            content,
            reader,
        })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// All metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    fn wrong_type(&self, key: &str, want: &str) -> Error {
        Error::bad_file(&self.path, format!("metadata `{key}` is not {want}"))
    }

    fn missing(&self, key: &str) -> Error {
        Error::bad_file(&self.path, format!("metadata `{key}` is missing"))
    }

    /// A string value, or an error naming the key.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.wrong_type(key, "a string")),
            None => Err(self.missing(key)),
        }
    }

    /// An optional string value.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.str(key)).transpose()
    }

    /// Any integer value as `u64`.
    pub fn uint(&self, key: &str) -> Result<u64> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        let n = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            _ => return Err(self.wrong_type(key, "an integer")),
        };
        u64::try_from(n).map_err(|_| self.wrong_type(key, "a non-negative integer"))
    }

    /// An optional integer value.
    pub fn opt_uint(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|_| self.uint(key)).transpose()
    }

    /// An integer that must fit `usize` and be positive.
    pub fn size(&self, key: &str) -> Result<usize> {
        let n = self.uint(key)?;
        if n == 0 {
            return Err(self.wrong_type(key, "positive"));
        }
        usize::try_from(n).map_err(|_| self.wrong_type(key, "a size"))
    }

    /// A float value (f32 or f64).
    pub fn float(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(_) => Err(self.wrong_type(key, "a float")),
            None => Err(self.missing(key)),
        }
    }

    /// An optional float value.
    pub fn opt_float(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.float(key)).transpose()
    }

    /// An optional boolean value.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
            None => Ok(None),
        }
    }

    /// An array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.wrong_type(key, "an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.wrong_type(key, "an array")),
            None => Err(self.missing(key)),
        }
    }

    /// An array of numbers converted to f32 (token scores) or integers (token types).
    pub fn num_array(&self, key: &str) -> Result<Vec<f64>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::F32(x) => Ok(*x as f64),
                    Value::F64(x) => Ok(*x),
                    Value::I32(x) => Ok(*x as f64),
                    Value::U32(x) => Ok(*x as f64),
                    Value::I8(x) => Ok(*x as f64),
                    Value::U8(x) => Ok(*x as f64),
                    Value::I64(x) => Ok(*x as f64),
                    Value::U64(x) => Ok(*x as f64),
                    _ => Err(self.wrong_type(key, "an array of numbers")),
                })
                .collect(),
            Some(_) => Err(self.wrong_type(key, "an array")),
            None => Err(self.missing(key)),
        }
    }

    /// Names of all tensors, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(|s| s.as_str())
            .collect();
        v.sort();
        v
    }

    /// Whether a tensor is present.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape (candle order, outermost first) and dtype of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<(Vec<usize>, GgmlDType)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| (i.shape.dims().to_vec(), i.ggml_dtype))
    }

    /// Reads one tensor onto `device`, keeping its quantization.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::bad_file(
                &self.path,
                format!("tensor `{name}` is missing"),
            ));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::bad_file(&self.path, format!("tensor `{name}`: {e}")))
    }
}

/// Undoes llama.cpp's row permutation of Q/K projection weights.
///
/// llama.cpp's converter permutes the rows of `q_proj`/`k_proj` for llama-architecture
/// models so that rotary pairs are interleaved (x0,x1),(x2,x3)... instead of Hugging
/// Face's half split (x0,x_{d/2}),... bipo keeps the Hugging Face convention everywhere,
/// so rows are moved back here. Rows are whole quantization blocks (blocks run along
/// the input dimension), so this moves bytes and never dequantizes.
pub fn unpermute_rope_rows(t: &QTensor, n_heads: usize, device: &Device) -> Result<QTensor> {
    let (rows, cols) = t.shape().dims2()?;
    if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(Error::invalid(
            "rope permutation",
            format!("{rows} rows cannot be split into {n_heads} heads of even size"),
        ));
    }
    let dtype = t.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds Hugging Face row (h, j, i).
                let src = h * head_dim + i * 2 + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), device, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// llama.cpp's converter permutation (convert_hf_to_gguf.py `permute`).
    fn permute_rows(rows: &[Vec<f32>], n_heads: usize) -> Vec<Vec<f32>> {
        let hd = rows.len() / n_heads;
        let mut out = vec![Vec::new(); rows.len()];
        for h in 0..n_heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    // reshape(n_head, 2, hd/2).swapaxes(1, 2): HF row (h, j, i) -> (h, i, j)
                    out[h * hd + i * 2 + j] = rows[h * hd + j * (hd / 2) + i].clone();
                }
            }
        }
        out
    }

    #[test]
    fn unpermuting_undoes_llama_cpp_rope_permutation() {
        let (n_heads, hd, cols) = (3, 8, 32);
        let hf: Vec<Vec<f32>> = (0..n_heads * hd).map(|r| vec![r as f32; cols]).collect();
        let gguf = permute_rows(&hf, n_heads);
        let t = Tensor::new(gguf, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let back = unpermute_rope_rows(&q, n_heads, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = back.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
        // Q8_0 keeps each row close enough to recover its index by rounding.
        let firsts: Vec<f32> = rows.iter().map(|r| r[0].round()).collect();
        assert_eq!(
            firsts,
            (0..n_heads * hd).map(|r| r as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn opening_a_non_gguf_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"not a gguf at all").unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("x.gguf") && e.contains("not a GGUF"), "{e}");
    }

    #[test]
    fn a_truncated_gguf_is_refused_at_open() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/reference/smollm2-135m-instruct-q4_1/happy-control-vector.gguf");
        let bytes = std::fs::read(&src).expect("shared reference control vector");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.gguf");
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}
